"""AdaIN stylization: nst-jax's `Stylizer` against pytorch-AdaIN's network in plain PyTorch (CPU).

Both sides get the same random weights (PyTorch `state_dict`s saved as pytorch-AdaIN's .pth files and read by
nst-jax's weight loader), the same content and style images, 256 and 512 px, batch 1 and 8 (a batch of
contents against one style). Per configuration four contenders run interleaved (one call of each per round,
the order rotating):
- torch full:   pytorch-AdaIN's `style_transfer` (NCHW, as its test.py): encode content and style, AdaIN,
                decode;
- ours full:    `Stylizer.stylize` with an empty style cache (host arrays in, host arrays out);
- torch cached: the style's relu4_1 statistics precomputed: content encode + AdaIN + decode;
- ours cached:  `Stylizer.stylize` with the style's statistics cached.
Then the webcam case: warm per-frame latency of `Stylizer.stylize_stats` at 256x256 (style cached, result
copied to the host), the call the live server makes.

The script re-execs itself under `benchmarks/common.py`'s allocator environment (PyTorch's best setting; glibc
reads it only at start-up) and also applies `nst_jax.runtime.tune_allocator()` (what `nst-jax stylize` does),
so both sides run under the same malloc configuration. The LAST line is the median over all rounds and
configurations of (ours full / torch full).

    python benchmarks/adain.py                          # 256 and 512 px, batch 1 and 8
    python benchmarks/adain.py --sizes 512 --batches 1 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the plain-PyTorch reference lives with the tests

from benchmarks.common import (  # noqa: E402
    allocator_note,
    interleave,
    machine_note,
    paired_ratio,
    reexec_with_allocator_env,
    summarize,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per configuration")
    parser.add_argument("--budget-s", type=float, default=240.0,
                        help="time budget per configuration (at least 3 rounds run)")
    parser.add_argument("--frames", type=int, default=30, help="frames timed for the webcam latency")
    parser.add_argument("--allocator", choices=("tuned", "default"), default="tuned")
    args = parser.parse_args()
    reexec_with_allocator_env(args.allocator == "tuned")

    from nst_jax.runtime import tune_allocator

    tuned = args.allocator == "tuned" and tune_allocator()

    import jax
    import numpy as np
    import torch

    import adain_reference as R
    from nst_jax.models.adain import flops
    from nst_jax.stylize import Stylizer

    torch.set_grad_enabled(False)
    print(machine_note())
    print(allocator_note() + (" + nst_jax.runtime.tune_allocator() (one arena)" if tuned else ""))
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")

    with tempfile.TemporaryDirectory() as d:
        vgg_path, dec_path, (vgg, decoder) = R.save_random_weights(d, 0)
        stylizer = Stylizer.load(vgg=vgg_path, decoder=dec_path)
    enc = R.encoder_to_relu4_1(vgg)

    def torch_full(c, s, alpha=1.0):
        if c.shape[0] == 1:
            return R.style_transfer(enc, decoder, c, s, alpha)
        return torch_from_stats(c, *R.calc_mean_std(enc(s)), alpha)

    def torch_from_stats(c, s_mean, s_std, alpha=1.0):
        cf = enc(c)
        c_mean, c_std = R.calc_mean_std(cf)
        t = (cf - c_mean) / c_std * s_std + s_mean  # adaptive_instance_normalization, statistics given
        return decoder(t * alpha + cf * (1 - alpha))

    rng = np.random.default_rng(0)
    all_ratios: list[float] = []
    def contenders(content, style) -> dict:
        tc, ts = R.to_torch(content), R.to_torch(style)
        s_mean, s_std = R.calc_mean_std(enc(ts))

        def ours_full():
            stylizer.clear_cache()
            return stylizer.stylize(content, [style])

        return {
            "torch full": lambda: torch_full(tc, ts),
            "ours full": ours_full,
            "torch cached": lambda: torch_from_stats(tc, s_mean, s_std),
            "ours cached": lambda: stylizer.stylize(content, [style]),
        }

    for size in args.sizes:
        for batch in args.batches:
            content = rng.random((batch, size, size, 3), dtype=np.float32)
            style = rng.random((1, size, size, 3), dtype=np.float32)
            fns = contenders(content, style)
            t0 = time.perf_counter()
            fns["ours full"]()
            compile_s = time.perf_counter() - t0
            # one correctness check per configuration: same weights, same picture
            diff = np.abs(fns["ours cached"]() - np.clip(R.to_numpy(fns["torch full"]()), 0, 1)).max()
            cpu: dict[str, list[float]] = {}
            times = interleave(fns, args.repeats, warmup=1, budget_s=args.budget_s, cpu_times=cpu)
            all_ratios += [a / b for a, b in zip(times["ours full"], times["torch full"], strict=True)]
            gf_full = flops(size, size, stylizer.spec) * batch / 1e9
            gf_cached = flops(size, size, stylizer.spec, with_style=False) * batch / 1e9
            print(f"\n== {size}x{size}, batch {batch}: {gf_full:.0f} GFLOP full, {gf_cached:.0f} cached; "
                  f"first call (compile) {compile_s:.1f} s; max |ours - torch| {diff:.1e}; {machine_note()}")
            print(summarize(times))
            print("CPU s (all threads), median: " + ", ".join(
                f"{k} {statistics.median(v):.2f}" for k, v in cpu.items()))
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"achieved: ours full {gf_full / med['ours full']:.0f} GFLOP/s, ours cached "
                  f"{gf_cached / med['ours cached']:.0f} GFLOP/s, "
                  f"torch full {gf_full / med['torch full']:.0f} GFLOP/s")
            print(f"ratio ours/torch: full {paired_ratio(times, 'ours full', 'torch full'):.3f}, cached "
                  f"{paired_ratio(times, 'ours cached', 'torch cached'):.3f}")

    # Webcam: one 256x256 frame at a time, style statistics cached, result on the host.
    frame = rng.random((1, 256, 256, 3), dtype=np.float32)
    st = stylizer.style_stats(rng.random((1, 256, 256, 3), dtype=np.float32))
    alpha = np.ones((1,), np.float32)
    for _ in range(3):
        np.asarray(stylizer.stylize_stats(frame, st.mean, st.std, alpha))
    lat = []
    for _ in range(args.frames):
        t0 = time.perf_counter()
        np.asarray(stylizer.stylize_stats(frame, st.mean, st.std, alpha))
        lat.append(time.perf_counter() - t0)
    lat.sort()
    print(f"\nwebcam 256x256 warm per-frame latency: median {statistics.median(lat) * 1e3:.0f} ms, "
          f"min {lat[0] * 1e3:.0f} ms, p90 {lat[int(0.9 * (len(lat) - 1))] * 1e3:.0f} ms "
          f"over {len(lat)} frames; "
          f"{machine_note()}")
    print(f"median ratio (nst-jax / pytorch-AdaIN, full stylization, all configurations): "
          f"{statistics.median(all_ratios):.3f}")


if __name__ == "__main__":
    main()
