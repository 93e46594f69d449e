"""The live page's smoothed frame: three calls (analyse, `smooth_frame` per stream, render) against one program
(`StatForward.smooth_streams`), for AdaIN on random weights.

The three-call path runs the encoder twice per frame (`analyse`'s program, then `render`'s); the fused program
lets XLA share it. Interleaved rounds, medians (`benchmarks/common.py`); the machine is shared, so read the load
note printed with the numbers.

    python benchmarks/live_smoothing.py                 # 256 px, 1 and 4 streams
    python benchmarks/live_smoothing.py --quick         # a smoke run: 64 px, few rounds
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import interleave, machine_note, median, reexec_with_allocator_env, summarize  # noqa: E402


def contenders(size: int, streams: int) -> dict:
    """name -> one smoothed frame per stream, blocking until its images are ready."""
    from nst_jax.demo import sample_image
    from nst_jax.smoothing import StatForward, smooth_frame
    from nst_jax.testing import random_adain

    st = random_adain(0)
    sf = StatForward(st)
    rng = np.random.default_rng(0)
    still = sample_image("astronaut", size)
    cond = jax.tree.map(lambda v: np.repeat(np.asarray(v), streams, 0), st.condition(sample_image("hubble", size)))
    alpha = np.ones((streams,), np.float32)
    strengths = np.full((streams,), 0.6, np.float32)

    def frame() -> np.ndarray:
        return np.clip(np.repeat(still, streams, 0) * (1 + rng.normal(0, 0.02, (streams, 1, 1, 1))), 0, 1
                       ).astype(np.float32)

    separate_states: list = [None] * streams
    fused_states: list = [None] * streams

    def separate() -> None:
        x = frame()
        aux, own = sf.analyse(x, cond, alpha)
        own = jax.tree.map(np.asarray, own)
        outs = []
        for i in range(streams):
            o, separate_states[i] = smooth_frame(separate_states[i], jax.tree.map(lambda v, i=i: v[i], own),
                                                 float(strengths[i]))
            outs.append(jax.tree.map(np.asarray, o))
        stats = jax.tree.map(lambda *fs: np.stack(fs), *outs)
        np.asarray(sf.render(aux, cond, alpha, stats))

    def fused() -> None:
        nonlocal fused_states
        out, fused_states = sf.smooth_streams(frame(), cond, alpha, fused_states, strengths)
        np.asarray(out)

    return {"analyse + smooth + render": separate, "one program": fused}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--streams", type=int, nargs="+", default=[1, 4])
    p.add_argument("--repeats", type=int, default=12)
    p.add_argument("--quick", action="store_true", help="64 px, 1 stream, 3 rounds (a smoke run)")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.streams, args.repeats = 64, [1], 3
    else:
        reexec_with_allocator_env()
    print(machine_note())
    results = {}
    for n in args.streams:
        times = interleave(contenders(args.size, n), repeats=args.repeats, warmup=2)
        sep, one = median(times["analyse + smooth + render"]), median(times["one program"])
        results[n] = {"separate_s": sep, "fused_s": one, "ratio": sep / one}
        print(f"\n{args.size} px, {n} stream(s): per batch")
        print(summarize(times))
        print(f"three calls / one program = {sep / one:.2f}x; per frame {sep / n * 1e3:.1f} ms -> "
              f"{one / n * 1e3:.1f} ms")
    return results


if __name__ == "__main__":
    main()
