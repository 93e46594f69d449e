"""`nst-jax stylize`: style transfer of image files and folders with any model family, one forward pass each."""

from __future__ import annotations

import argparse
import textwrap
from dataclasses import dataclass
from pathlib import Path

COLOR_MODES = ("luminance", "histogram")
# Output types Pillow writes (checked before any work so a bad -o / --ext fails early).
_SAVE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

EXAMPLES = """\
examples:
  nst-jax stylize photo.jpg --style starry.jpg -o out.png
  nst-jax stylize photos/ --style styles/ --out-dir output            # every content x every style
  nst-jax stylize photo.jpg --style a.jpg --style b.jpg --style-weights 0.7,0.3
  nst-jax stylize photo.jpg --style sky.jpg --style ground.jpg --mask sky_mask.png --mask ground_mask.png
  nst-jax stylize photo.jpg --style starry.jpg --alpha 0.6 --preserve-color luminance
  nst-jax stylize photo.jpg --style starry.jpg --strength-map vignette.png  # white = full style, black = none
  nst-jax stylize photo.jpg --style starry.jpg --content-size 0        # keep the photo's full resolution
  nst-jax stylize photo.jpg --style starry.jpg --checkpoint runs/adain # a decoder you trained
  nst-jax stylize photo.jpg --model multistyle26 --style 7 -o out.png  # Magenta's 26-style CIN network
  nst-jax stylize photo.jpg --model multistyle26 --style 3 --style 12 --style-weights 0.5,0.5
  nst-jax stylize photo.jpg --model magenta-arbitrary --style starry.jpg --content-size 0
  nst-jax stylize big.tif --style starry.jpg --content-size 0 --max-pixels 200e6 --verbose  # tiled (docs/tiling.md)
  nst-jax stylize photo.jpg --style starry.jpg --content-size 0 --tile 1024 --tile-stats thumbnail
  nst-jax stylize big.jpg --style starry.jpg --content-size 0 --strength-map map.png  # the map in tiles too
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `stylize` subcommand."""
    p = subparsers.add_parser(
        "stylize", help="fast style transfer, one forward pass: AdaIN, CIN (multistyle26) or magenta-arbitrary",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Stylize content images in one forward pass with any of the three feed-forward families: AdaIN "
            "(Huang & Belongie 2017; any style image; the default), conditional instance norm (a fixed table "
            "of styles, given by index: Magenta's 26-style network --model multistyle26, or any CIN you "
            "trained or load) and Magenta's arbitrary-style network (--model magenta-arbitrary; any style "
            "image). For the slow Gatys et al. optimisation, see nst-jax gatys. Folders stand "
            "for all their images. Several --style options give every content x style pair, unless "
            "--style-weights blends them into one style or --mask places them. Outputs are named "
            "CONTENT_stylized_STYLE.EXT in --out-dir (or -o for a single output) and never overwrite "
            "existing files unless --overwrite. Without --model or weight options, pytorch-AdaIN's "
            "released encoder and decoder are used from the cache (downloaded once); where they cannot be "
            "fetched, magenta-arbitrary (installed with nst-jax[models], offline) stands in and a line "
            "says so.", width=88),
        epilog=EXAMPLES)
    p.add_argument("content", nargs="+", metavar="CONTENT", help="content image files or folders of images")
    add_style_options(p, "content")
    p.add_argument("--strength-map", metavar="MAP",
                   help="per-pixel style strength: a grey image, white = full style, black = the content (the "
                        "alpha-0 picture), in one pass; same aspect ratio as the content (resized to it); works "
                        "with --style-weights, --mask, --alpha and --preserve-color")
    p.add_argument("--crop", action="store_true",
                   help="centre-crop contents and styles to N x N after resizing")
    o = p.add_argument_group("output")
    o.add_argument("-o", "--output", metavar="OUT", help="output file, when there is exactly one output")
    o.add_argument("--out-dir", metavar="DIR", help="output folder (default: ./output)")
    o.add_argument("--ext", default="png", metavar="EXT",
                   help="output file type for --out-dir: png (default, lossless) or jpg")
    o.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--max-pixels", type=float, default=None, metavar="N",
                   help="read images of up to N pixels (default: Pillow's decompression-bomb guard, 89.5 million)")
    p.add_argument("--verbose", action="store_true", help="print the tile plan and the peak memory")
    p.set_defaults(func=run)


def add_style_options(p: argparse.ArgumentParser, subject: str = "content") -> None:
    """The style options `nst-jax stylize` and `nst-jax video` share (one copy of each flag and its help).

    Args:
      p: the subcommand's parser.
      subject: what is stylized, for the help texts ("content" or "video").
    """
    p.add_argument("-s", "--style", action="append", required=True, metavar="STYLE",
                   help=("style image file or folder" if subject == "content" else "style image file")
                        + " (repeat for several styles); with a model of a fixed table of styles (CIN), the "
                          "style's index")
    p.add_argument("--model", metavar="MODEL",
                   help="the network: adain (default: the weight options below), multistyle26, "
                        "magenta-arbitrary, a CIN .onnx, a fast_neural_style .pth, or a training folder")
    p.add_argument("--style-weights", metavar="W1,W2,...",
                   help="blend the styles with these weights (floats, normalised to sum to 1)")
    p.add_argument("--alpha", type=float, default=1.0,
                   help=f"stylization strength: 1 = full style, 0 = the {subject} (default 1)")
    p.add_argument("--preserve-color", choices=COLOR_MODES,
                   help=f"keep the {subject}'s colours: luminance (stylize, then restore the {subject}'s chroma) "
                        f"or histogram (recolour the style image to the {subject}'s colours first"
                        + ("; a video's first frame" if subject == "video" else "") + ")")
    p.add_argument("--mask", action="append", metavar="MASK",
                   help=f"spatial control: one mask image per --style, white where that style goes (or one "
                        f"mask for two styles: white = first, black = second); same aspect ratio as the "
                        f"{subject}" + (" (a static mask over every frame)" if subject == "video" else ""))
    p.add_argument("--content-size", type=int, default=512, metavar="N",
                   help=f"resize the {subject} so the shorter side is N (0 = keep the original size; default 512)"
                        + ("; sides are made even" if subject == "video" else ""))
    p.add_argument("--style-size", type=int, default=512, metavar="N",
                   help="resize styles so the shorter side is N (0 = keep the original size; default 512)")
    add_tile_options(p, subject)
    w = p.add_argument_group("weights (default: pytorch-AdaIN's released vgg_normalised + decoder)")
    w.add_argument("--vgg", metavar="FILE",
                   help="VGG19 encoder weights (registry name or file); must be the encoder the decoder was "
                        "trained with")
    dec = w.add_mutually_exclusive_group()
    dec.add_argument("--decoder", metavar="FILE", help="decoder weights: pytorch-AdaIN decoder.pth or a .npz")
    dec.add_argument("--checkpoint", metavar="DIR",
                     help="a training --workdir (latest step) or checkpoint step directory")


def add_tile_options(p: argparse.ArgumentParser, subject: str = "content") -> None:
    """--tile, --tile-stats, --memory-budget (`nst-jax stylize`, `video`, `sheet`; docs/tiling.md)."""
    t = p.add_argument_group("tiles (any resolution in bounded memory; docs/tiling.md)")
    t.add_argument("--tile", default="auto", metavar="auto|N",
                   help=f"stylize in tiles of N x N pixels; auto (default): only where the {subject} would not fit "
                        f"--memory-budget")
    t.add_argument("--tile-stats", choices=("exact", "thumbnail"), default=None,
                   help="where tiles' normalisation statistics come from: exact (accumulated over the tiles at "
                        "full resolution) or thumbnail (the whole image at 1024 px, one pass); default: the "
                        "model's own (docs/tiling.md)")
    t.add_argument("--memory-budget", default=None, metavar="SIZE",
                   help="working memory for one pass, e.g. 2G or 500M (default: a quarter of the available "
                        "memory, at most 2 GiB)")


def tile_args(args: argparse.Namespace) -> dict:
    """The Stylizer keywords of the tile flags, checked: {"tile", "tile_stats", "memory_budget"}."""
    from nst_jax.tiling import check_tile, parse_size

    tile = check_tile(str(getattr(args, "tile", "auto")))
    budget = getattr(args, "memory_budget", None)
    return {"tile": tile, "tile_stats": getattr(args, "tile_stats", None),
            "memory_budget": None if budget is None else parse_size(budget)}


@dataclass(frozen=True)
class Job:
    """One output: a content image stylized with one style, a blend, or masked styles."""

    content: Path
    styles: tuple[Path | int, ...]
    out: Path


def _parse_weights(text: str | None) -> list[float] | None:
    from nst_jax.checks import check_weights
    from nst_jax.errors import NstError

    if text is None:
        return None
    try:
        weights = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise NstError(f"--style-weights must be comma-separated numbers, got {text!r}") from None
    return check_weights(weights, what="--style-weights")


def _expand(items: list[str], what: str) -> list[Path]:
    from nst_jax.errors import ImageError
    from nst_jax.image import list_images

    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            paths += list_images(p)
        elif p.is_file():
            paths.append(p)
        else:
            raise ImageError(f"no such {what} image or folder: {p}")
    return paths


def _fmt_weight(w: float) -> str:
    return f"{w:.3g}"


def _stem(style: Path | int) -> str:
    return f"style{style}" if isinstance(style, int) else style.stem


def _style_index(text: str) -> int | None:
    """A --style that is a non-negative integer and no file: an index into a model's table of styles."""
    t = text.strip()
    if t.isdigit() and not Path(text).exists():
        return int(t)
    return None


def _output_name(content: Path, styles: tuple[Path | int, ...], mode: str, weights: list[float] | None,
                 ext: str) -> str:
    if mode == "blend":
        total = sum(weights)
        style = "_".join(f"{_stem(s)}{_fmt_weight(w / total)}" for s, w in zip(styles, weights, strict=True))
    elif mode == "mask":
        style = "_".join(_stem(s) for s in styles) + "_masked"
    else:
        style = _stem(styles[0])
    return f"{content.stem}_stylized_{style}.{ext}"


def plan(args: argparse.Namespace) -> tuple[list[Job], str, list[float] | None]:
    """Validate the arguments and list every output, before any image is decoded or any weight loaded.

    Returns:
      (jobs, mode, weights): mode is "pairs", "blend" or "mask".
    """
    from nst_jax.checks import check_weights
    from nst_jax.errors import ImageError, NstError

    if not 0.0 <= args.alpha <= 1.0:
        raise NstError(f"--alpha must be in [0, 1], got {args.alpha}")
    tile_args(args)
    if args.max_pixels is not None and not 1 <= args.max_pixels < float("inf"):
        raise NstError(f"--max-pixels must be a positive, finite number of pixels, got {args.max_pixels:g}")
    for flag, size in (("--content-size", args.content_size), ("--style-size", args.style_size)):
        if size < 0:
            raise NstError(f"{flag} must be >= 0, got {size}")
        if args.crop and size == 0:
            raise NstError(f"--crop needs a size to crop to; {flag} is 0")
    weights = _parse_weights(args.style_weights)
    if weights is not None and args.mask:
        raise NstError("--style-weights blends styles everywhere and --mask places them: give one or the "
                       "other")
    mode = "blend" if weights is not None else "mask" if args.mask else "pairs"
    contents = _expand(args.content, "content")
    indices = [_style_index(t) for t in args.style]
    if any(i is not None for i in indices):
        if not all(i is not None for i in indices):
            raise NstError("--style mixes style indices and style images; a model takes one or the other")
        styles = list(indices)
    elif mode == "pairs":
        styles = _expand(args.style, "style")
    else:
        styles = []
        for s in args.style:
            p = Path(s)
            if p.is_dir():
                raise NstError(f"--style {p} is a folder; with --style-weights or --mask, list the style "
                               f"files")
            if not p.is_file():
                raise ImageError(f"no such style image: {p}")
            styles.append(p)
    if mode == "blend":
        check_weights(weights, len(styles), what="--style-weights")
    if mode == "mask":
        for m in args.mask:
            if not Path(m).is_file():
                raise ImageError(f"no such mask image: {m}")
        if not (len(args.mask) == len(styles) or (len(args.mask) == 1 and len(styles) == 2)):
            raise NstError(f"got {len(args.mask)} --mask for {len(styles)} --style: give one mask per style"
                           + (" (or one mask for two styles)" if len(styles) == 2 else ""))
    if args.strength_map is not None and not Path(args.strength_map).is_file():
        if Path(args.strength_map).is_dir():
            raise ImageError(f"--strength-map takes an image file, got a directory: {args.strength_map}")
        raise ImageError(f"no such strength map: {args.strength_map}")
    groups = [(s,) for s in styles] if mode == "pairs" else [tuple(styles)]

    ext = args.ext.lower().lstrip(".")
    if f".{ext}" not in _SAVE_EXTENSIONS:
        raise NstError(f"--ext must be an image type such as png or jpg, got {args.ext!r}")
    n = len(contents) * len(groups)
    if args.output is not None:
        if args.out_dir is not None:
            raise NstError("give -o OUT for one output or --out-dir DIR, not both")
        if n != 1:
            raise NstError(f"-o names one output but this run makes {n}; use --out-dir")
        if Path(args.output).suffix.lower() not in _SAVE_EXTENSIONS:
            raise NstError(f"-o {args.output}: unknown image extension; use .png or .jpg")
        jobs = [Job(contents[0], groups[0], Path(args.output))]
    else:
        out_dir = Path(args.out_dir or "output")
        jobs = [Job(c, g, out_dir / _output_name(c, g, mode, weights, ext)) for c in contents for g in groups]
    seen: dict[Path, Job] = {}
    for job in jobs:
        if job.out in seen:
            raise NstError(f"two outputs would both be named {job.out} ({seen[job.out].content} and "
                           f"{job.content} share a name); stylize them into different --out-dir")
        seen[job.out] = job
        if job.out.exists() and not args.overwrite:
            raise ImageError(f"{job.out} exists; pass --overwrite to replace it")
    return jobs, mode, weights


def _load_content(path: Path, args: argparse.Namespace):
    """(content (1, H, W, 3) float32, or at full size (H, W, 3) uint8 (read once, tiled if big), (h, w) before
    cropping)."""
    from nst_jax.image import center_crop, load_image, load_uint8

    size = args.content_size or None
    max_pixels = None if args.max_pixels is None else int(args.max_pixels)
    if size is None and not args.crop:
        img = load_uint8(path, max_pixels=max_pixels)
        return img, img.shape[:2]
    img = load_image(path, size=size, max_pixels=max_pixels)
    before = img.shape[1:3]
    if args.crop:
        img = center_crop(img, args.content_size)
    return img, before


def _fit_masks(masks: list, content_path: Path, mask_paths: list[str], before: tuple[int, int],
               args: argparse.Namespace, what: str = "mask") -> list:
    """Resize the masks (or a strength map: `what`) to the content (as loaded, before cropping), then crop them
    the same way."""
    from nst_jax.errors import ImageError
    from nst_jax.image import aspect_ratios_differ, center_crop, fit_mask

    h, w = before
    out = []
    for m, mp in zip(masks, mask_paths, strict=True):
        if aspect_ratios_differ(m.shape, (h, w)):
            mh, mw = m.shape
            raise ImageError(f"{what} {mp} is {mw}x{mh}, content {content_path} is {w}x{h} after resizing: "
                             f"their aspect ratios differ ({what}s must have the content's shape)")
        m = fit_mask(m, (h, w))
        if args.crop:
            m = center_crop(m[None, :, :, None], args.content_size)[0, :, :, 0]
        out.append(m)
    return out


def load_stylizer(args: argparse.Namespace):
    """The model the flags ask for (`nst_jax.models.open.open_model`, with its offline fallback: when it stands in
    for AdaIN's weights, one line says so and `args.model` names it)."""
    import sys

    from nst_jax.models.open import open_model
    from nst_jax.stylize import Stylizer

    loaded = open_model(args.model, vgg=args.vgg, decoder=args.decoder, checkpoint=args.checkpoint, fallback=True)
    if loaded.note:
        print(loaded.note, file=sys.stderr)
        args.model = loaded.origin
    return Stylizer(loaded)


def check_styles(stylizer, styles: list, args: argparse.Namespace) -> None:
    """Refuse styles and options the model cannot take, before anything is written."""
    from nst_jax.errors import NstError

    caps = stylizer.caps
    what = args.model or "this model"
    indices = [s for s in styles if isinstance(s, int)]
    if caps.style_table and not caps.style_images:
        n = stylizer.num_styles
        if len(indices) != len(styles):
            raise NstError(f"{what} has a fixed table of {n} styles: --style takes an index 0-{n - 1}, not an "
                           f"image (nst-jax sheet shows them all)")
        bad = [i for i in indices if i >= n]
        if bad:
            raise NstError(f"--style {bad[0]} is out of range: {what} has {n} styles (0-{n - 1})")
    elif indices:
        raise NstError(f"{what} takes style images; --style {indices[0]} is not a file")
    if args.preserve_color and args.preserve_color not in caps.color_modes:
        raise NstError(f"--preserve-color {args.preserve_color} is not available for {what} (it supports "
                       f"{', '.join(caps.color_modes) or 'none'})")
    if args.mask and not caps.masks:
        raise NstError(f"{what} cannot place styles with --mask")
    if getattr(args, "strength_map", None) is not None and not caps.strength_map:
        raise NstError(f"{what} cannot take a --strength-map")


def run(args: argparse.Namespace) -> int:
    """Stylize every planned output; returns 0, or raises NstError (printed as one line by the dispatcher)."""
    jobs, mode, weights = plan(args)

    import numpy as np
    from tqdm import tqdm

    from nst_jax.image import load_image, load_mask, save_image
    from nst_jax.runtime import tune_allocator

    tune_allocator()
    # Decode every input once before loading weights or writing anything, so a bad file stops the run early.
    style_size = args.style_size or None
    styles = {p: load_image(p, size=style_size, crop=args.crop) if isinstance(p, Path) else p
              for p in dict.fromkeys(s for job in jobs for s in job.styles)}
    masks = [load_mask(m) for m in args.mask] if mode == "mask" else []
    smap = [load_mask(args.strength_map)] if args.strength_map is not None else []
    contents = list(dict.fromkeys(job.content for job in jobs))
    loaded: dict = {}
    for c in contents:
        image_and_size = _load_content(c, args)
        if masks:
            _fit_masks(masks, c, args.mask, image_and_size[1], args)
        if smap:
            _fit_masks(smap, c, [args.strength_map], image_and_size[1], args, "strength map")
        if len(contents) == 1:  # keep it; a folder's images are decoded again one at a time, to spare memory
            loaded[c] = image_and_size

    stylizer = load_stylizer(args)
    check_styles(stylizer, list(styles), args)
    bar = tqdm(total=len(jobs), unit="img", desc="stylize", disable=len(jobs) < 2, dynamic_ncols=True)
    try:
        for job in jobs:
            if job.content not in loaded:
                loaded = {job.content: _load_content(job.content, args)}
            content, before = loaded[job.content]
            kw = {"alpha": args.alpha, "preserve_color": args.preserve_color, **tile_args(args)}
            if mode == "mask":
                kw["masks"] = _fit_masks(masks, job.content, args.mask, before, args)
            elif mode == "blend":
                kw["weights"] = weights
            job_styles = [styles[s] for s in job.styles]
            if smap:
                kw["strength_map"] = _fit_masks(smap, job.content, [args.strength_map], before, args,
                                                "strength map")[0]
            if content.dtype == np.uint8:  # full size (--content-size 0): tiled where it would not fit
                out = stylizer.stylize_image(content, job_styles, progress=True, verbose=args.verbose, **kw)
            else:
                out = stylizer.stylize(content, job_styles, **kw)[0]
            save_image(job.out, out, overwrite=args.overwrite)
            if len(jobs) < 2:
                print(job.out)
            else:
                bar.write(str(job.out))
            bar.update(1)
    finally:
        bar.close()
    return 0
