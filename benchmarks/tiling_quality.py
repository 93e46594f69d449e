"""Thumbnail statistics against the untiled picture at 2048 px (issue 24): mean and max abs difference and SSIM
per family, and a picture strip (untiled, tiled, difference x10) per family in docs/img/.

    python benchmarks/tiling_quality.py --models multistyle26,magenta-arbitrary
    python benchmarks/tiling_quality.py --size 512 --out /tmp/strips      # small, a smoke test
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.tiling import _stylizer, photo  # noqa: E402


def compare(model: str, size: int, tile: int, out_dir: Path) -> dict:
    """One family: untiled and tiled with thumbnail statistics; writes the strip, returns the numbers."""
    import numpy as np
    from PIL import Image
    from skimage.metrics import structural_similarity

    st, note = _stylizer(model)
    style = 3 if st.caps.style_table and not st.caps.style_images else photo(256, 256).astype(np.float32) / 255
    x = photo(size * 2 // 3, size).astype(np.float32)[None] / 255
    untiled = st.stylize(x, [style])[0]
    tiled = st.stylize(x, [style], tile=tile, tile_stats="thumbnail")[0]
    d = np.abs(tiled - untiled)
    ssim = structural_similarity(untiled, tiled, channel_axis=2, data_range=1.0)
    strip = np.concatenate([untiled, tiled, np.clip(d * 10, 0, 1)], axis=1)
    img = Image.fromarray((strip * 255).round().astype(np.uint8))
    img = img.resize((1536, round(1536 * img.height / img.width)), Image.Resampling.LANCZOS)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"tiling_{model}.jpg"
    img.save(path, quality=88)
    plan = st.tile_plan(x.shape[1], x.shape[2], tile)
    return {"model": model + note, "size": f"{x.shape[2]}x{x.shape[1]}", "tiles": plan.count,
            "mean": float(d.mean()), "max": float(d.max()), "ssim": float(ssim), "strip": str(path)}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="adain,multistyle26,magenta-arbitrary")
    p.add_argument("--size", type=int, default=2048, help="the long side (default 2048)")
    p.add_argument("--tile", type=int, default=768)
    p.add_argument("--out", default=str(ROOT / "docs" / "img"))
    args = p.parse_args(argv)
    rows = [compare(m, args.size, args.tile, Path(args.out)) for m in args.models.split(",") if m]
    print("| model | size | tiles | mean abs diff | max abs diff | SSIM | strip |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['size']} | {r['tiles']} | {r['mean']:.4f} | {r['max']:.3f} | {r['ssim']:.3f} | "
              f"{r['strip']} |")
    return rows


if __name__ == "__main__":
    main()
