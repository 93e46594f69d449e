"""A picture of video stylization where both the content and the flicker can be seen: the README's and
docs/video.md's strips.

A synthetic hand-held clip of skimage's astronaut (`nst_jax.synthetic`, exact optical flow) is stylized through
`nst-jax video`'s own frame functions (`nst_jax.commands.video.frame_function`, `nst_jax.flow.FlowBlender`).
Rows: the input, per-frame stylization, `--stabilize S` and `--flow-blend B`; columns: consecutive frames, then
the row's flicker map: |out(t) - out(t+1) warped back along the exact flow| averaged over the clip's pairs and
over channels, times `--gain`, on valid (unoccluded) pixels (the per-pixel form of the warping error of
`nst_jax.flicker`, whose value each row's label gives). The input row's map is what the camera noise alone
leaves.

    python benchmarks/video_strip.py -o docs/img/video_strip.jpg      # magenta-arbitrary, coffee, alpha 0.8
    python benchmarks/video_strip.py --model multistyle26 --style 3 --alpha 0.6 \
        -o docs/img/video_strip_multistyle26.jpg
    python benchmarks/video_strip.py --quick                          # 64 px, 3 frames, to a temp file
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _style(st, text: str, size: int):
    """A table index, a `nst_jax.demo` sample name, or an image file."""
    from nst_jax.demo import CONTENTS, STYLES, sample_image
    from nst_jax.image import load_image

    if text.isdigit():
        return int(text)
    if text in CONTENTS or text in STYLES:
        return sample_image(text, size)
    return load_image(text, size=size)


def flicker_map(frames, fw, bw):
    """(H, W) mean over pairs of the masked |out(t) - warp(out(t+1), fw)|, and the clip's warping error."""
    import numpy as np

    from nst_jax.flicker import warping_error
    from nst_jax.flow import valid_mask, warp

    masks = [valid_mask(fw[t], bw[t]) for t in range(len(fw))]
    maps = [m * np.abs(warp(frames[t + 1], fw[t]) - frames[t]).mean(-1) for t, m in enumerate(masks)]
    return np.mean(maps, 0), warping_error(frames, fw, masks)[0]


def render(model: str, style: str, alpha: float, size: int, frames: int, stabilize: float, blend: float,
           gain: float, preset: str = "shake", style_size: int = 256):
    """The strip as (H, W, 3) float32, and {row name: warping error}."""
    import numpy as np

    from nst_jax.commands.sheet import label_tile
    from nst_jax.commands.video import frame_function
    from nst_jax.demo import sample_image
    from nst_jax.flow import FlowBlender
    from nst_jax.smoothing import CUT_RATIO
    from nst_jax.stylize import Stylizer
    from nst_jax.synthetic import synthetic_clip

    st = Stylizer.load_model(model)
    styles = [_style(st, style, style_size)]
    clip = synthetic_clip(sample_image("astronaut", 2 * size)[0], frames, (size, size), preset)
    x, valid, hw = clip.frames, np.ones(frames, bool), (size, size)

    def run(strength: float):
        args = SimpleNamespace(alpha=alpha, preserve_color=None, stabilize=strength, scene_cut=CUT_RATIO)
        return np.asarray(frame_function(st, args, styles, None, None, hw, False)(x, valid)[0], np.float32)

    per_frame = run(0.0)
    rows = {"input": x, "per-frame": per_frame}
    if stabilize > 0:
        rows[f"--stabilize {stabilize:g}"] = run(stabilize)
    if blend > 0:
        rows[f"--flow-blend {blend:g}"] = FlowBlender(blend)(x, per_frame)
    pad, errors, tiles = 2, {}, []
    for name, out in rows.items():
        fmap, errors[name] = flicker_map(out, clip.fw, clip.bw)
        row = [np.clip(f, 0, 1) for f in out]
        row[0] = label_tile(row[0], name)
        change = np.repeat(np.clip(gain * fmap, 0, 1)[..., None], 3, -1)
        tiles.append(row + [label_tile(change, f"change x{gain:g}; warping error {errors[name]:.2g}")])
    cols = frames + 1
    grid = np.ones((len(tiles) * (size + pad) + pad, cols * (size + pad) + pad, 3), np.float32)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            y, x0 = pad + r * (size + pad), pad + c * (size + pad)
            grid[y:y + size, x0:x0 + size] = tile
    return grid, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="magenta-arbitrary", help="any --model of nst-jax video")
    parser.add_argument("--style", default="coffee", help="a style index, an nst_jax.demo sample name or a file")
    parser.add_argument("--alpha", type=float, default=0.8, help="stylization strength (default 0.8)")
    parser.add_argument("--size", type=int, default=256, help="frame side in pixels (default 256)")
    parser.add_argument("--frames", type=int, default=4, help="consecutive frames shown (default 4)")
    parser.add_argument("--stabilize", type=float, default=0.5, help="the smoothed row's strength (0: no row)")
    parser.add_argument("--flow-blend", type=float, default=0.5, help="the blended row's weight (0: no row)")
    parser.add_argument("--gain", type=float, default=6.0, help="brightness gain of the flicker maps")
    parser.add_argument("-o", "--output", help="the JPEG to write")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 64 px, 3 frames, a temporary file")
    args = parser.parse_args(argv)
    import numpy as np
    from PIL import Image

    size, frames = (64, 3) if args.quick else (args.size, args.frames)
    out = Path(args.output) if args.output else Path(tempfile.mkdtemp()) / "video_strip.jpg"
    grid, errors = render(args.model, args.style, args.alpha, size, frames, args.stabilize, args.flow_blend,
                          args.gain, style_size=64 if args.quick else 256)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.rint(grid * 255).astype(np.uint8)).save(out, quality=80)
    print(f"{out}: {args.model}, style {args.style}, alpha {args.alpha:g}, {frames} frames of {size} px; "
          "warping error " + ", ".join(f"{k} {v:.4g}" for k, v in errors.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
