"""`nst-jax sheet`: one photo in every style of a model (or of given style images), labelled, on one image."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

EXAMPLES = """\
examples:
  nst-jax sheet photo.jpg --model multistyle26 -o sheet.png          # all 26 styles, labelled 0-25
  nst-jax sheet photo.jpg --model multistyle26 --style 3 --style 7 -o two.png
  nst-jax sheet photo.jpg --model magenta-arbitrary --style styles/ -o sheet.png
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `sheet` subcommand."""
    from nst_jax.commands.stylize import add_tile_options

    p = subparsers.add_parser(
        "sheet", help="a contact sheet: one photo in every style of a model (multistyle26's 26, or style images)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Render one content image in every style of a model with a fixed table of styles (conditional "
            "instance norm: Magenta's 26-style network multistyle26 or any CIN; each tile labelled with its "
            "index, for --style), or in each given style image (AdaIN, or Magenta's arbitrary network "
            "magenta-arbitrary: labelled with the file name), one batched pass per row, and write the tiles "
            "with the content first as one image. (Gatys et al. optimises one picture at a time: nst-jax "
            "gatys.)", width=88),
        epilog=EXAMPLES)
    p.add_argument("content", metavar="CONTENT", help="the content image")
    p.add_argument("--model", metavar="MODEL", default=None,
                   help="as for nst-jax stylize (default adain: needs --style images)")
    p.add_argument("-s", "--style", action="append", metavar="STYLE",
                   help="style indices (table models; default: all) or style image files / folders")
    p.add_argument("--alpha", type=float, default=1.0, help="stylization strength in [0, 1] (default 1)")
    p.add_argument("--content-size", type=int, default=256, metavar="N",
                   help="shorter side of the content (default 256; 0 = as is)")
    p.add_argument("--style-size", type=int, default=256, metavar="N",
                   help="shorter side of style images (default 256; 0 = as is)")
    p.add_argument("--columns", type=int, default=0, metavar="N", help="tiles per row (default: about square)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the sheet image (.png, .jpg)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_tile_options(p)
    p.set_defaults(func=run)


def label_tile(img, text: str):
    """`img` (H, W, 3) in [0, 1] with `text` on a dark band along its bottom edge."""
    import numpy as np
    from PIL import Image, ImageDraw

    from nst_jax.image import from_uint8, to_uint8

    im = Image.fromarray(to_uint8(np.asarray(img)))
    draw = ImageDraw.Draw(im)
    left, top, right, bottom = draw.textbbox((0, 0), text)
    h = bottom - top + 6
    draw.rectangle((0, im.height - h, min(im.width, right - left + 8), im.height), fill=(0, 0, 0))
    draw.text((4, im.height - h + 3 - top), text, fill=(255, 255, 255))
    return from_uint8(np.asarray(im))


def run(args: argparse.Namespace) -> int:
    """Render and write the sheet; returns 0 or raises NstError."""
    import math

    import numpy as np
    from tqdm import tqdm

    from nst_jax.commands.stylize import _SAVE_EXTENSIONS, _expand, _style_index, tile_args
    from nst_jax.errors import ImageError, NstError
    from nst_jax.image import image_grid, load_image, save_image
    from nst_jax.models.open import open_model
    from nst_jax.runtime import tune_allocator
    from nst_jax.stylize import Stylizer

    out = Path(args.output)
    if out.suffix.lower() not in _SAVE_EXTENSIONS:
        raise NstError(f"-o {out}: unknown image extension; use .png or .jpg")
    if out.exists() and not args.overwrite:
        raise ImageError(f"{out} exists; pass --overwrite to replace it")
    if not 0.0 <= args.alpha <= 1.0:
        raise NstError(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.columns < 0 or args.content_size < 0 or args.style_size < 0:
        raise NstError("--columns, --content-size and --style-size must be >= 0")
    tile_kw = tile_args(args)
    given = args.style or []
    indices = [_style_index(t) for t in given]
    if any(i is None for i in indices) and any(i is not None for i in indices):
        raise NstError("--style mixes style indices and style images; a model takes one or the other")
    use_indices = bool(given) and all(i is not None for i in indices)
    paths = [] if use_indices or not given else _expand(given, "style")
    content = load_image(Path(args.content), size=args.content_size or None)
    style_images = [load_image(p, size=args.style_size or None) for p in paths]

    tune_allocator()
    stylizer = Stylizer(open_model(args.model))
    caps = stylizer.caps
    if caps.style_table and not caps.style_images:
        n = stylizer.num_styles
        if paths:
            raise NstError(f"{args.model} has a fixed table of {n} styles; --style takes indices 0-{n - 1}")
        styles = [int(i) for i in indices] if use_indices else list(range(n))
        bad = [i for i in styles if i >= n]
        if bad:
            raise NstError(f"--style {bad[0]} is out of range: {args.model} has {n} styles (0-{n - 1})")
        labels = [str(i) for i in styles]
    else:
        if use_indices:
            raise NstError(f"{args.model or 'adain'} takes style images, not indices")
        if not paths:
            raise NstError(f"{args.model or 'adain'} needs --style images for a sheet")
        styles, labels = style_images, [p.stem for p in paths]

    cols = args.columns or max(1, math.ceil(math.sqrt(len(styles) + 1)))
    tiles = [label_tile(content[0], "content")]
    batch = max(1, cols)
    for start in tqdm(range(0, len(styles), batch), desc="sheet", unit="row", disable=len(styles) <= batch):
        chunk = styles[start:start + batch]
        if stylizer.tile_plan(*content.shape[1:3], tile_kw["tile"], tile_kw["memory_budget"]) is None:
            outs = stylizer.stylize_each(content, chunk, alpha=args.alpha)
        else:  # a content over the memory budget: one style at a time, in tiles
            outs = [stylizer.stylize(content, [s], alpha=args.alpha, **tile_kw)[0] for s in chunk]
        tiles += [label_tile(o, lab) for o, lab in zip(outs, labels[start:start + batch], strict=True)]
    rows = [tiles[i:i + cols] for i in range(0, len(tiles), cols)]
    sheet = image_grid(rows, pad=4)
    save_image(out, np.clip(sheet, 0.0, 1.0), overwrite=args.overwrite)
    print(out)
    return 0
