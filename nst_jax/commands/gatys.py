"""`nst-jax gatys`: Gatys et al. style transfer by optimising the pixels (L-BFGS or Adam), neural-style's controls."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

EXAMPLES = """\
examples:
  nst-jax gatys photo.jpg --style starry.jpg -o out.png
  nst-jax gatys photo.jpg --style starry.jpg --scales 256,512,1024 --iterations 500,200,100 -o big.png
  nst-jax gatys photo.jpg --style a.jpg --style b.jpg --style-weights 0.7,0.3 --init noise --seed 3
  nst-jax gatys photo.jpg --style sky.jpg --style ground.jpg --mask sky_mask.png --mask ground_mask.png
  nst-jax gatys photo.jpg --style starry.jpg --preserve-color luminance --pooling avg --save-every 100
  nst-jax gatys photo.jpg --style starry.jpg --weights keras        # Caffe's VGG19: neural-style's defaults
  nst-jax gatys photo.jpg --style starry.jpg --optimizer adam --lr 0.02 --iterations 1000
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `gatys` subcommand."""
    p = subparsers.add_parser(
        "gatys", help="Gatys et al. style transfer by optimisation (slow, the quality reference; no network)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Optimise an image so its VGG19 features match the content image's and its Gram matrices the "
            "style images' (Gatys, Ecker & Bethge 2015; the controls of jcjohnson/neural-style). Loss "
            "weights default to values tuned for the chosen --weights (see docs/gatys.md). The output "
            "(default output/CONTENT_gatys_STYLE.png) is never overwritten unless --overwrite. No trained "
            "network is involved; for one forward pass with AdaIN, conditional instance norm (Magenta's "
            "26-style multistyle26) or Magenta's arbitrary network (magenta-arbitrary), see nst-jax "
            "stylize.", width=88),
        epilog=EXAMPLES)
    p.add_argument("content", metavar="CONTENT", help="content image file")
    p.add_argument("-s", "--style", action="append", required=True, metavar="STYLE",
                   help="style image file (repeat for several styles)")
    p.add_argument("--style-weights", metavar="W1,W2,...",
                   help="blend weights, one per style (normalised; with --mask: each region's strength)")
    p.add_argument("--style-scale", type=float, default=1.0, metavar="F",
                   help="style images' longer side = F x the content's at each scale (default 1)")
    p.add_argument("--mask", action="append", metavar="MASK",
                   help="spatial control: one mask per --style over the content, white where that style goes "
                        "(or one mask for two styles: white = first, black = second)")
    p.add_argument("--style-mask", action="append", metavar="MASK",
                   help="optional: one mask per --style over that style image; only its white part is copied")
    p.add_argument("--preserve-color", choices=("luminance", "histogram"),
                   help="keep the content's colours: luminance (the result's luminance with the content's "
                        "colours) or histogram (recolour the styles to the content's colours first)")

    loss = p.add_argument_group("loss (defaults depend on --weights; see docs/gatys.md)")
    loss.add_argument("--content-weight", type=float, metavar="W")
    loss.add_argument("--style-weight", type=float, metavar="W")
    loss.add_argument("--tv-weight", type=float, metavar="W", help="total-variation smoothing")
    loss.add_argument("--content-layers", metavar="L1,...", help="VGG19 taps for content (default relu4_2)")
    loss.add_argument("--style-layers", metavar="L1,...",
                      help="VGG19 taps for style (default relu1_1,relu2_1,relu3_1,relu4_1,relu5_1)")
    loss.add_argument("--layer-weights", metavar="equal|channels|W1,...",
                      help="per style layer: equal (neural-style), channels (C^2/L: Gram normalised by H*W, as "
                           "pystiche) or one number per style layer")

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--optimizer", choices=("lbfgs", "adam"), default="lbfgs")
    opt.add_argument("--lr", type=float, help="Adam's learning rate (default 0.02); L-BFGS: first trial step")
    opt.add_argument("--iterations", default="500", metavar="N[,N...]",
                     help="optimiser steps, one number or one per scale (default 500)")
    opt.add_argument("--lbfgs-memory", type=int, default=100, metavar="M",
                     help="L-BFGS history length (default 100, as neural-style)")
    opt.add_argument("--linesearch", choices=("armijo", "none", "zoom", "optax-zoom"), default="armijo",
                     help="L-BFGS's step: armijo (default: the quasi-Newton step, halved while the loss does not "
                          "drop enough), none (neural-style's: the step as it is), zoom (strong Wolfe), "
                          "optax-zoom (optax's own L-BFGS)")
    opt.add_argument("--init", choices=("content", "noise", "style"), default="content",
                     help="start from the content (default), seeded noise, or the first style")
    opt.add_argument("--init-image", metavar="FILE", help="start from this image (overrides --init)")
    opt.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    size = opt.add_mutually_exclusive_group()
    size.add_argument("--image-size", type=int, default=None, metavar="N",
                      help="longer side of the result in pixels (default 512)")
    size.add_argument("--scales", metavar="N1,N2,...",
                      help="coarse to fine: optimise at each longer side in turn, upsampling between them")

    net = p.add_argument_group("network")
    net.add_argument("--weights", default="torchvision", metavar="NAME|FILE",
                     help="VGG19 weights: torchvision (default), keras, adain, or a .pth/.h5/.npz file")
    net.add_argument("--pooling", choices=("max", "avg"), help="override the weights' pooling (Gatys et al.: avg)")

    out = p.add_argument_group("output")
    out.add_argument("-o", "--output", metavar="OUT", help="output image file")
    out.add_argument("--out-dir", metavar="DIR", help="folder for the default output name (default: ./output)")
    out.add_argument("--save-every", type=int, metavar="N",
                     help="also save the image every N iterations as OUT_iterN.EXT")
    out.add_argument("--overwrite", action="store_true", help="replace existing output files")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


# `GatysConfig` fields and `gatys.stylize` arguments -> the flags that set them, for the library's errors.
FLAGS = {
    "content_layers": "--content-layers",
    "style_layers": "--style-layers",
    "layer_weights": "--layer-weights",
    "content_weight": "--content-weight",
    "style_weight": "--style-weight",
    "tv_weight": "--tv-weight",
    "optimizer": "--optimizer",
    "iterations": "--iterations",
    "lr": "--lr",
    "lbfgs_memory": "--lbfgs-memory",
    "linesearch": "--linesearch",
    "init": "--init",
    "seed": "--seed",
    "scales": "--scales",
    "style_scale": "--style-scale",
    "preserve_color": "--preserve-color",
    "style_blend": "--style-weights",
    "masks": "--mask",
    "style_masks": "--style-mask",
    "init_image": "--init-image",
}
# A snake_case name is a parameter wherever it stands; a one-word name ("iterations", "scales") only where it opens
# the message, as the library's messages put the parameter first.
_SNAKE = re.compile(r"\b(" + "|".join(k for k in FLAGS if "_" in k) + r")\b")
_FIRST = re.compile(r"^(" + "|".join(k for k in FLAGS if "_" not in k) + r")\b")


def flag_message(message: str) -> str:
    """A library error message with its parameter names replaced by the flags that set them."""
    message = _SNAKE.sub(lambda m: FLAGS[m.group(1)], message)
    return _FIRST.sub(lambda m: FLAGS[m.group(1)], message)


@contextlib.contextmanager
def _in_flag_names() -> Iterator[None]:
    """Re-raise the library's argument errors (same class) with flags in place of parameter names.

    File errors (`ImageError`, ...) name paths, which are left as they are.
    """
    from nst_jax.errors import NstError, WeightsError

    try:
        yield
    except NstError as e:
        if type(e) not in (NstError, WeightsError):
            raise
        raise type(e)(flag_message(str(e))) from e


def _floats(text: str | None, flag: str) -> list[float] | None:
    from nst_jax.errors import NstError

    if text is None:
        return None
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise NstError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise NstError(f"{flag} is empty")
    return values


def _ints(text: str, flag: str) -> tuple[int, ...]:
    from nst_jax.errors import NstError

    try:
        values = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise NstError(f"{flag} must be comma-separated whole numbers, got {text!r}") from None
    if not values:
        raise NstError(f"{flag} is empty")
    return values


def _layers(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(t.strip() for t in text.split(",") if t.strip())


def build_config(args: argparse.Namespace):
    """The `GatysConfig` the flags describe (validated; raises NstError naming the flag)."""
    from nst_jax.errors import NstError
    from nst_jax.gatys import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, GatysConfig

    if args.scales is not None:
        scales = _ints(args.scales, "--scales")
    else:
        scales = (512 if args.image_size is None else args.image_size,)
        if scales[0] < 16:
            raise NstError(f"--image-size must be at least 16 pixels, got {scales[0]}")
    lw: str | tuple[float, ...] | None = args.layer_weights
    if lw is not None and lw not in ("equal", "channels"):
        lw = tuple(_floats(lw, "--layer-weights"))
    iterations = _ints(args.iterations, "--iterations")
    if args.save_every is not None and args.save_every < 1:
        raise NstError(f"--save-every must be >= 1, got {args.save_every}")
    config = GatysConfig(
        content_layers=_layers(args.content_layers) or DEFAULT_CONTENT_LAYERS,
        style_layers=_layers(args.style_layers) or DEFAULT_STYLE_LAYERS,
        layer_weights=lw,
        content_weight=args.content_weight,
        style_weight=args.style_weight,
        tv_weight=args.tv_weight,
        optimizer=args.optimizer,
        iterations=iterations[0] if len(iterations) == 1 else iterations,
        lr=args.lr,
        lbfgs_memory=args.lbfgs_memory,
        linesearch=args.linesearch,
        init=args.init,
        seed=args.seed,
        scales=scales,
        style_scale=args.style_scale,
        preserve_color=args.preserve_color,
    )
    with _in_flag_names():
        config.validate()
        config.iterations_per_scale()
    return config


def _output_path(args: argparse.Namespace) -> Path:
    if args.output is not None:
        if args.out_dir is not None:
            raise _err("give -o OUT or --out-dir DIR, not both")
        return Path(args.output)
    style = "_".join(Path(s).stem for s in args.style)
    return Path(args.out_dir or "output") / f"{Path(args.content).stem}_gatys_{style}.png"


def _err(msg: str):
    from nst_jax.errors import NstError

    return NstError(msg)


def intermediate_path(out: Path, iteration: int) -> Path:
    """Where --save-every writes the image after `iteration` iterations (counted over all scales)."""
    return out.with_name(f"{out.stem}_iter{iteration}{out.suffix}")


def plan(args: argparse.Namespace):
    """Check every flag and path before any image is decoded or weight loaded.

    Returns:
      (config, output path, intermediate paths, style blend weights or None, masks paths or None).
    """
    from PIL import Image

    from nst_jax.checks import check_weights
    from nst_jax.errors import ImageError, NstError

    config = build_config(args)
    inputs = (("content", [args.content]), ("style", args.style), ("mask", args.mask or []),
              ("style mask", args.style_mask or []), ("init", [args.init_image] if args.init_image else []))
    for what, paths in inputs:
        for path in paths:
            if not Path(path).is_file():
                raise ImageError(f"no such {what} image: {path}")
    n_styles = len(args.style)
    blend = _floats(args.style_weights, "--style-weights")
    if blend is not None:
        check_weights(blend, n_styles, what="--style-weights")
    if args.mask and not (len(args.mask) == n_styles or (len(args.mask) == 1 and n_styles == 2)):
        raise NstError(f"got {len(args.mask)} --mask for {n_styles} --style: give one mask per style"
                       + (" (or one mask for two styles)" if n_styles == 2 else ""))
    if args.style_mask and len(args.style_mask) != n_styles:
        raise NstError(f"got {len(args.style_mask)} --style-mask for {n_styles} --style: give one per style")

    out = _output_path(args)
    if out.suffix.lower() not in {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}:
        raise NstError(f"cannot tell the image type of output {out}: use an extension such as .png or .jpg")
    total = sum(config.iterations_per_scale())
    saves = []
    if args.save_every:
        saves = [intermediate_path(out, i) for i in range(args.save_every, total, args.save_every)]
    for path in [out, *saves]:
        if path.exists() and not args.overwrite:
            raise ImageError(f"{path} exists; pass --overwrite to replace it")
    return config, out, saves, blend


def _load_masks(args: argparse.Namespace, content_hw: tuple[int, int]):
    """Masks over the content (checked for its aspect ratio), expanding one mask for two styles."""
    from nst_jax.errors import ImageError
    from nst_jax.image import aspect_ratios_differ, expand_masks, load_mask

    h, w = content_hw
    masks = []
    for path in args.mask:
        m = load_mask(path)
        mh, mw = m.shape
        if aspect_ratios_differ((mh, mw), (h, w)):
            raise ImageError(f"mask {path} is {mw}x{mh} but the content {args.content} is {w}x{h}: their aspect "
                             f"ratios differ (masks must have the content's shape)")
        masks.append(m)
    return expand_masks(masks, len(args.style))


def run(args: argparse.Namespace) -> int:
    """Stylize one content image; returns 0, or raises NstError (printed as one line by the dispatcher)."""
    config, out, _, blend = plan(args)

    from nst_jax import gatys
    from nst_jax.image import load_image, load_mask, save_image
    from nst_jax.runtime import tune_allocator
    from nst_jax.weights import load_vgg

    tune_allocator()
    content = load_image(args.content)
    styles = [load_image(s) for s in args.style]
    masks = _load_masks(args, content.shape[1:3]) if args.mask else None
    style_masks = [load_mask(m, s.shape[1:3]) for m, s in zip(args.style_mask, styles, strict=True)] \
        if args.style_mask else None
    init_image = load_image(args.init_image) if args.init_image else None
    params, spec = load_vgg(args.weights, pooling=args.pooling)

    def save_intermediate(step: gatys.GatysStep) -> None:
        if args.save_every and step.total_iteration % args.save_every == 0 \
                and step.total_iteration < sum(config.iterations_per_scale()):
            out.parent.mkdir(parents=True, exist_ok=True)
            save_image(intermediate_path(out, step.total_iteration), step.image[0], overwrite=args.overwrite)

    with _in_flag_names():
        result = gatys.stylize(content, styles, params, spec, config, style_blend=blend, masks=masks,
                               style_masks=style_masks, init_image=init_image,
                               callback=save_intermediate if args.save_every else None,
                               save_every=args.save_every, progress=not args.quiet)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(out, result.image[0], overwrite=args.overwrite)
    if not args.quiet:
        terms = ", ".join(f"{k} {v:.4g}" for k, v in result.losses.items())
        print(f"loss: {terms} ({result.evaluations} evaluations)", file=sys.stderr)
    print(out)
    return 0
