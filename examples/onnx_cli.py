"""Stylize a photo with a model exported by `nst-jax export`, using only onnxruntime, NumPy and Pillow.

The exported file says in its metadata how to feed it (layout, inputs, the style encoder beside it), so this
script works for every family and both export modes:

    python examples/onnx_cli.py multistyle26.onnx photo.jpg -o out.png --style 7
    python examples/onnx_cli.py multistyle26.onnx photo.jpg -o out.png --style 3 --style 12   # an even blend
    python examples/onnx_cli.py style7.onnx photo.jpg -o out.png                            # style baked in
    python examples/onnx_cli.py arb.onnx photo.jpg -o out.png --style starry.jpg            # + arb_style.onnx
    python examples/onnx_cli.py adain.onnx photo.jpg -o out.png --style starry.jpg --alpha 0.8

No nst-jax import: copy this file next to an exported model and it runs wherever onnxruntime does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

PREFIX = "nst_jax."


def metadata(session: ort.InferenceSession) -> dict:
    """The nst-jax metadata of a session's model, without the key prefix."""
    props = session.get_modelmeta().custom_metadata_map
    return {k[len(PREFIX):]: v for k, v in props.items() if k.startswith(PREFIX)}


def load_rgb(path: str, shorter_side: int = 0) -> np.ndarray:
    """An image file as (H, W, 3) float32 RGB in [0, 1], optionally resized so its shorter side is given."""
    im = Image.open(path).convert("RGB")
    if shorter_side:
        w, h = im.size
        s = shorter_side / min(w, h)
        im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)
    return np.asarray(im, np.float32) / 255.0


def to_layout(img: np.ndarray, layout: str) -> np.ndarray:
    """(H, W, 3) -> a batch of one in the model's layout."""
    x = img[None]
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if layout == "NCHW" else x)


def from_layout(y: np.ndarray, layout: str) -> np.ndarray:
    """The first image of a batch in the model's layout as (H, W, 3)."""
    return y[0].transpose(1, 2, 0) if layout == "NCHW" else y[0]


def square_crop_resize(img: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square and resize to size x size with Lanczos (the arbitrary predictor's input)."""
    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    im = Image.fromarray(np.uint8(np.clip(img[top:top + s, left:left + s] * 255.0 + 0.5, 0, 255)))
    return np.asarray(im.resize((size, size), Image.LANCZOS), np.float32) / 255.0


def session(path: Path, threads: int) -> ort.InferenceSession:
    """A CPU session with `threads` intra-op threads (0 = onnxruntime's default)."""
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def style_condition(model: Path, meta: dict, styles: list[str], threads: int, style_size: int) -> dict:
    """Run the style encoder beside `model` on each style image and average the results (an even blend)."""
    enc_path = model.with_name(meta["style_encoder"])
    enc = session(enc_path, threads)
    emeta = metadata(enc)
    prep = emeta.get("style_preprocess", "")
    outs: list[list[np.ndarray]] = []
    for s in styles:
        img = load_rgb(s)
        if "Lanczos" in prep:
            img = square_crop_resize(img, int(prep.split("resize to ")[1].split(" ")[0]))
        elif style_size:
            img = load_rgb(s, style_size)
        outs.append(enc.run(None, {enc.get_inputs()[0].name: to_layout(img, emeta["layout"])}))
    names = [o.name for o in enc.get_outputs()]
    return {n: np.mean([o[i] for o in outs], axis=0).astype(np.float32) for i, n in enumerate(names)}


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, stylize, save; returns the exit code."""
    p = argparse.ArgumentParser(description="Stylize a photo with an nst-jax ONNX export (onnxruntime only).")
    p.add_argument("model", help="the exported .onnx (its style encoder, if any, beside it)")
    p.add_argument("content", help="the photo")
    p.add_argument("-o", "--output", required=True, help="output image file")
    p.add_argument("--style", action="append", default=[],
                   help="a table index (CIN) or a style image (arbitrary, AdaIN); repeat for an even blend")
    p.add_argument("--alpha", type=float, default=1.0, help="AdaIN strength in [0, 1]")
    p.add_argument("--content-size", type=int, default=0, help="resize the photo's shorter side first (0 = keep)")
    p.add_argument("--style-size", type=int, default=512, help="AdaIN style images' shorter side (default 512)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = default)")
    args = p.parse_args(argv)

    model = Path(args.model)
    sess = session(model, args.threads)
    meta = metadata(sess)
    if "layout" not in meta:
        print(f"{model}: no nst-jax metadata (not exported by nst-jax export)", file=sys.stderr)
        return 2
    layout = meta["layout"]
    names = {i.name for i in sess.get_inputs()}
    content = load_rgb(args.content, args.content_size)
    feeds = {"image": to_layout(content, layout)}
    if "style_weights" in names:
        n = int(meta["num_styles"])
        if not args.style:
            print(f"{model}: give --style INDEX (0-{n - 1}); repeat to blend", file=sys.stderr)
            return 2
        w = np.zeros((1, n), np.float32)
        for s in args.style:
            w[0, int(s)] += 1.0 / len(args.style)
        feeds["style_weights"] = w
    elif "style_vector" in names or "style_mean" in names:
        if not args.style:
            print(f"{model}: give --style IMAGE", file=sys.stderr)
            return 2
        feeds.update(style_condition(model, meta, args.style, args.threads, args.style_size))
    if "alpha" in names:
        feeds["alpha"] = np.full((1,), args.alpha, np.float32)
    y = sess.run(["stylized"], feeds)[0]
    out = np.clip(from_layout(y, layout) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    Image.fromarray(out).save(args.output)
    print(f"{args.output}: {out.shape[1]} x {out.shape[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
