"""Tiled stylization at 12000 x 8000 (issue 24): peak memory, wall time and time per megapixel, every family.

For each family, in its own process (so its peak RSS is its own): a photo built from `skimage.data` (96 MP,
uint8, as `nst-jax stylize --content-size 0` reads it) stylized with one style through `Stylizer.stylize_image`
(tiles fitted to the default memory budget, the family's default statistics), against the untiled run at
1024 px (compiled first, median of 3); the tiled run is timed warm too (a photo of half the size compiles its
tiles and thumbnail first). Targets: peak RSS under 3 GB, time per megapixel within 1.3x the
untiled run's. AdaIN runs on random weights in pytorch-AdaIN's format when the released ones are absent (the
table says so: the timing and memory do not depend on the values).

    python benchmarks/tiling.py                  # the full run (long: minutes per family on 2 cores)
    python benchmarks/tiling.py --quick          # small sizes, a smoke test
    python benchmarks/tiling.py --models adain --size 4000x3000   # another size
    python benchmarks/tiling.py --measure        # bytes per pixel of one pass (`Tiling.bytes_per_pixel`)

Results go to benchmarks/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import ALLOCATOR_ENV, machine_note  # noqa: E402

FAMILIES = ("adain", "multistyle26", "magenta-arbitrary")


def photo(height: int, width: int):
    """A (height, width, 3) uint8 photo: skimage's coffee and chelsea side by side, resized."""
    import numpy as np
    from PIL import Image
    from skimage import data

    both = np.concatenate([data.coffee(), np.asarray(Image.fromarray(data.chelsea()).resize((600, 400)))], axis=1)
    return np.asarray(Image.fromarray(both).resize((width, height), Image.Resampling.BICUBIC))


def _stylizer(model: str):
    """(Stylizer, note): AdaIN's released weights if they are here, else random ones in their format."""
    from nst_jax.stylize import Stylizer

    if model != "adain":
        return Stylizer.load_model(model), ""
    try:
        from nst_jax.models.open import open_model

        return Stylizer(open_model(None)), ""
    except Exception:  # noqa: BLE001 - no released weights offline: random ones of the same shapes
        from nst_jax.testing import random_adain

        return random_adain(0), " (random weights)"


def worker(model: str, height: int, width: int, small: int, budget: str | None) -> dict:
    """One family: untiled at `small` px, then the big photo tiled. Returns the row."""
    import numpy as np

    st, note = _stylizer(model)
    style = 3 if st.caps.style_table and not st.caps.style_images else \
        photo(256, 256).astype(np.float32) / 255
    big = photo(height, width)
    x = photo(small, int(small * width / height)).astype(np.float32)[None] / 255
    st.stylize(x, [style])  # compile
    times = []
    for _ in range(3):
        t = time.perf_counter()
        st.stylize(x, [style])
        times.append(time.perf_counter() - t)
    untiled = statistics.median(times)
    if budget == "halves":  # quick mode: tiles whose cores are about half the image's shorter side
        rec = st.family.tiling
        budget = int((2 * rec.halo + height // 2 + rec.align) ** 2 * rec.bytes_per_pixel)
    plan = st.tile_plan(height, width, "auto", budget)
    # compile first: a photo of half the size and the same shape has the same tiles and thumbnail
    st.stylize_image(photo(height // 2, width // 2), [style], tile="auto", memory_budget=budget)
    t = time.perf_counter()
    out = st.stylize_image(big, [style], tile="auto", memory_budget=budget)
    wall = time.perf_counter() - t
    assert out.shape == big.shape and out.dtype == np.uint8
    mp_small, mp_big = x.shape[1] * x.shape[2] / 1e6, height * width / 1e6
    return {"model": model + note, "size": f"{width}x{height}", "tiles": 0 if plan is None else plan.count,
            "tile": None if plan is None else list(plan.shape),
            "stats": st.family.tiling.default_stats, "peak_rss_gb": resource.getrusage(
                resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, "wall_s": wall, "s_per_mp": wall / mp_big,
            "untiled_s_per_mp": untiled / mp_small, "ratio": (wall / mp_big) / (untiled / mp_small)}


def measure(model: str) -> str:
    """XLA's estimate of one pass's memory per pixel (slope between 256 and 512 px)."""
    import jax.numpy as jnp
    import numpy as np

    from nst_jax import runtime

    st, note = _stylizer(model)
    fam = st.family
    style = 3 if st.caps.style_table and not st.caps.style_images else np.zeros((64, 64, 3), np.float32)
    cond = st.condition(style)
    a = jnp.ones((1,))

    def f(x, ns):
        return fam.stats_forward(st.params, st.frozen, x, cond, None, a, ns, st.static)[0]

    size = {}
    for s in (256, 512):
        x = jnp.zeros((1, s, s, 3))
        ns = fam.norm_stats(st.params, st.frozen, x, cond, None, a, st.static)
        m = runtime.jit(f, fam.compiler_options).lower(x, ns).compile().memory_analysis()
        size[s] = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
    slope = (size[512] - size[256]) / (512 ** 2 - 256 ** 2)
    return f"{model}{note}: {slope:.0f} bytes/pixel (declared {fam.tiling.bytes_per_pixel:.0f})"


def table(rows: list[dict]) -> str:
    lines = ["| model | size | tiles | statistics | peak RSS (GB) | wall (s) | s/MP tiled | s/MP untiled | ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tiles = f"{r['tiles']} of {r['tile'][0]}x{r['tile'][1]}" if r["tiles"] else "untiled"
        lines.append(f"| {r['model']} | {r['size']} | {tiles} | {r['stats']} | {r['peak_rss_gb']:.2f} | "
                     f"{r['wall_s']:.1f} | {r['s_per_mp']:.3f} | {r['untiled_s_per_mp']:.3f} | {r['ratio']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    p.add_argument("--models", default=",".join(FAMILIES))
    p.add_argument("--measure", action="store_true", help="print bytes per pixel of one pass and exit")
    p.add_argument("--size", metavar="WxH", default="12000x8000",
                   help="the photo's size (default 12000x8000; AdaIN on 2 CPU cores takes about 20 minutes there)")
    p.add_argument("--worker", nargs=5, metavar=("MODEL", "H", "W", "SMALL", "BUDGET"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    if args.worker:
        model, h, w, small, budget = args.worker
        print(json.dumps(worker(model, int(h), int(w), int(small), None if budget == "-" else budget)))
        return []
    if args.measure:
        for m in models:
            print(measure(m))
        return []
    # quick: tiles forced by a small budget on a small photo
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--size: expected WxH, got {args.size!r}") from None
    h, w, small, budget = (400, 600, 256, "halves") if args.quick else (h, w, 1024, "-")
    print(machine_note())
    # every family in its own process (its own peak RSS), under the benchmarks' allocator settings
    env = {**os.environ, **ALLOCATOR_ENV, "PYTHONPATH": str(ROOT)}
    print("allocator (workers): glibc, " + " ".join(f"{k}={v}" for k, v in ALLOCATOR_ENV.items()))
    rows = []
    for m in models:
        r = subprocess.run([sys.executable, __file__, "--worker", m, str(h), str(w), str(small), budget],
                           capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise SystemExit(f"{m} failed:\n{r.stderr[-2000:]}")
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
