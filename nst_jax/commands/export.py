"""`nst-jax export`: a model of any family to ONNX, with its input convention in the file's metadata."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

EXAMPLES = """\
examples:
  nst-jax export multistyle26 -o multistyle26.onnx                  # image + style_weights (N, 26) inputs
  nst-jax export multistyle26 --style 7 -o style7.onnx              # one style baked in
  nst-jax export multistyle26 --style 3 --style 12 --style-weights 0.5,0.5 -o blend.onnx
  nst-jax export magenta-arbitrary -o arb.onnx                      # arb.onnx (transformer) + arb_style.onnx
  nst-jax export magenta-arbitrary --style starry.jpg -o starry.onnx
  nst-jax export runs/adain -o adain.onnx                           # adain.onnx + adain_style.onnx (statistics)
  nst-jax export multistyle26 --size 480 640 --layout nhwc -o fixed.onnx
  nst-jax export multistyle26 --style 7 --size 480 640 --format tflite -o style7.tflite
  nst-jax info multistyle26.onnx                                    # prints the input convention
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `export` subcommand."""
    p = subparsers.add_parser(
        "export", help="export AdaIN, CIN (multistyle26) or magenta-arbitrary to ONNX (style as an input, or "
                       "baked in)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Export a feed-forward model to ONNX for onnxruntime (C++, mobile, web): AdaIN, conditional "
            "instance norm (Magenta's 26-style network or any CIN) or Magenta's arbitrary network (Gatys et "
            "al. is an optimisation, not a network: nothing to export). MODEL is multistyle26, "
            "magenta-arbitrary, adain, a weights file (.onnx CIN, fast_neural_style .pth, AdaIN decoder) or a "
            "training folder. Without --style the style is an input: CIN takes style weights, the arbitrary "
            "network a style vector and AdaIN style statistics, and the style encoder of the last two is "
            "written beside OUT as OUT's name + _style.onnx. With --style it is baked in. Images are float32 "
            "RGB in [0, 1], NCHW unless --layout nhwc; height and width are symbolic unless --size fixes "
            "them. Nothing is written on an error; existing files are kept unless --overwrite.", width=88),
        epilog=EXAMPLES)
    p.add_argument("model", metavar="MODEL", help="registry name, weights file or training folder")
    p.add_argument("--format", dest="fmt", default="onnx", metavar="FORMAT",
                   help="onnx (the default) or tflite (CIN and arbitrary; needs --size and the [litert] extra)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the output file (.onnx)")
    p.add_argument("-s", "--style", action="append", metavar="STYLE",
                   help="bake a style in: a table index (CIN) or a style image (AdaIN, arbitrary); repeat to "
                        "blend with --style-weights")
    p.add_argument("--style-weights", metavar="W1,W2,...", help="blend weights of several --style (normalised)")
    p.add_argument("--style-size", type=int, default=512, metavar="N",
                   help="resize style images so the shorter side is N before encoding (0 = as they are; "
                        "default 512, as nst-jax stylize)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   help="fix the image size (default: symbolic height and width)")
    p.add_argument("--layout", default="nchw", metavar="LAYOUT", help="nchw (default) or nhwc image tensors")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=run)


def _styles(items: list[str] | None, size: int) -> list:
    from nst_jax.errors import NstError

    out: list = []
    for item in items or []:
        text = item.strip()
        if text.lstrip("-").isdigit():
            out.append(int(text))
            continue
        path = Path(item)
        if not path.is_file():
            raise NstError(f"--style {item}: neither a style index nor an image file")
        from nst_jax.image import load_image

        out.append(load_image(path, size=size or None))
    return out


def run(args: argparse.Namespace) -> int:
    """Export and print what was written."""
    from nst_jax.commands.stylize import _parse_weights
    from nst_jax.errors import NstError
    from nst_jax.export import _check, export_stylizer
    from nst_jax.models.open import open_model
    from nst_jax.stylize import Stylizer

    layout, size = _check(args.fmt, args.layout, args.size)
    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise NstError(f"{out} exists (use --overwrite to replace it)")
    if out.exists() and not out.is_file():
        raise NstError(f"{out} exists and is not a file")
    weights = _parse_weights(args.style_weights)
    if weights is not None:
        weights = [w / sum(weights) for w in weights]
    styles = _styles(args.style, args.style_size)
    if weights is not None and len(weights) != len(styles):
        raise NstError(f"--style-weights has {len(weights)} values for {len(styles)} --style")
    st = Stylizer(open_model(args.model))
    n = st.num_styles if st.caps.style_table else None
    for s in styles:
        if isinstance(s, int) and n is not None and not 0 <= s < n:
            raise NstError(f"style index {s} is out of range: this model has {n} styles (0-{n - 1})")
    written = export_stylizer(st, out, fmt=args.fmt, styles=styles, style_weights=weights, layout=layout, size=size,
                              overwrite=args.overwrite)
    for e in written:
        m = e.metadata
        what = f"ONNX opset {m['nst_jax.opset']}"
        if m.get("nst_jax.format") == "tflite":
            what = f"LiteRT, output {m['nst_jax.output_layout']}"
        print(f"{e.path}: {m['nst_jax.family']} {e.role}, {what}, {m['nst_jax.layout']} RGB [0, 1], style "
              f"{m['nst_jax.style']}")
    return 0
