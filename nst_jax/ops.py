"""Pure, jit-able building blocks. Every image/feature tensor is NHWC float32.

Normalisation conventions follow the peers so that ports agree number for number:
- `mean_std` defaults to pytorch-AdaIN's `calc_mean_std`: unbiased variance over H*W, plus eps, then sqrt.
- `gram` defaults to neural-style's GramMatrix divided by the number of elements (C*H*W).

Convolutions: `conv2d`, the convolution strategies (`ConvFn`: `conv_plain`, `conv_input_grad`,
`conv_matmul_weight_grad`, `upsample_conv`) and the primitives the families share live in `nst_jax.convs`, the
Winograd strategies (`conv_winograd`, `conv_input_grad_winograd`, `conv_for_training`) in `nst_jax.winograd`;
every one of their names is importable from here as well.
"""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp
from jax import lax

# Re-exported: `nst_jax.ops` is where callers and users have always found them.
from nst_jax.convs import (  # noqa: F401
    DN,
    MATMUL_WEIGHT_GRAD_MIN_CHANNELS,
    ConvFn,
    Padding,
    area,
    conv2d,
    conv2d_matmul_weight_grad,
    conv_input_grad,
    conv_matmul_weight_grad,
    conv_plain,
    depth_to_space,
    matmul_kernel_grad,
    moments,
    space_to_depth,
    transposed_kernel,
    upsample_conv,
    weighted_moments,
)
from nst_jax.typing import Array
from nst_jax.winograd import (  # noqa: F401
    WINOGRAD_MIN_CHANNELS,
    conv3x3_winograd,
    conv_for_training,
    conv_input_grad_winograd,
    conv_winograd,
    winograd_conv3x3_valid,
    winograd_kernel,
    with_transposed_kernels,
)


def mean_std(x: Array, eps: float = 1e-5, unbiased: bool = True) -> tuple[Array, Array]:
    """Per-image, per-channel mean and standard deviation over the spatial axes.

    Args:
      x: features (N, H, W, C).
      eps: added to the variance before the square root (pytorch-AdaIN: 1e-5).
      unbiased: divide the squared deviations by H*W - 1 (torch.var's default, as pytorch-AdaIN) or by H*W.

    Returns:
      (mean, std), each (N, 1, 1, C).
    """
    n = x.shape[1] * x.shape[2]
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    ssd = jnp.sum(jnp.square(x - mean), axis=(1, 2), keepdims=True)
    denom = max(n - 1, 1) if unbiased else n
    return mean, jnp.sqrt(ssd / denom + eps)


def adain_with_stats(content: Array, style_mean: Array, style_std: Array, eps: float = 1e-5,
                     unbiased: bool = True) -> Array:
    """AdaIN with precomputed style statistics: normalise `content` per channel, then scale and shift.

    Args:
      content: (N, H, W, C) features.
      style_mean, style_std: broadcastable to (N, 1, 1, C); a per-pixel (N, H, W, C) map also works (masks).
    """
    c_mean, c_std = mean_std(content, eps, unbiased)
    return (content - c_mean) / c_std * style_std + style_mean


def adain(content: Array, style: Array, eps: float = 1e-5, unbiased: bool = True) -> Array:
    """Adaptive instance normalisation (Huang & Belongie 2017), as pytorch-AdaIN's function.py.

    Args:
      content: (N, H, W, C) content features.
      style: (N, h, w, C) or (1, h, w, C) style features; spatial sizes may differ from content.

    Returns:
      content features renormalised to the style's per-channel mean and std, (N, H, W, C).
    """
    s_mean, s_std = mean_std(style, eps, unbiased)
    return adain_with_stats(content, s_mean, s_std, eps, unbiased)


def instance_norm(x: Array, eps: float = 1e-5) -> Array:
    """Instance normalisation with biased variance (tf.nn.moments, as Magenta's CIN)."""
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
    return (x - mean) * lax.rsqrt(var + eps)


def cin(x: Array, gamma: Array, beta: Array, eps: float = 1e-5) -> Array:
    """Conditional instance norm (Dumoulin et al. 2017): instance norm, then a per-style scale and shift.

    Args:
      x: (N, H, W, C) features.
      gamma, beta: (C,) for one style, or (N, C) one row per image (e.g. a convex mix of styles).
    """
    gamma = jnp.asarray(gamma)
    beta = jnp.asarray(beta)
    if gamma.ndim == 2:
        gamma = gamma[:, None, None, :]
        beta = beta[:, None, None, :]
    else:
        gamma = gamma.reshape(1, 1, 1, -1)
        beta = beta.reshape(1, 1, 1, -1)
    return instance_norm(x, eps) * gamma + beta


def gram(x: Array, normalize: Literal["chw", "hw", "c", "none"] = "chw") -> Array:
    """Gram matrix of features, (N, C, C).

    Args:
      x: (N, H, W, C) features.
      normalize: divide the sum over pixels by C*H*W (neural-style, fast-neural-style), H*W (Magenta), C, or
        nothing.
    """
    n, h, w, c = x.shape
    f = x.reshape(n, h * w, c)
    g = jnp.einsum("npc,npd->ncd", f, f, precision=lax.Precision.HIGHEST)
    div = {"chw": c * h * w, "hw": h * w, "c": c, "none": 1}[normalize]
    return g / div


def total_variation(x: Array, reduction: Literal["sum", "mean"] = "sum", power: float = 2.0) -> Array:
    """Total variation of an image batch: sum (or mean) of |neighbour differences|**power, per batch (scalar).

    power=2 is the squared form used by neural-style and fast-neural-style; power=1 is anisotropic L1 TV.
    """
    dy = x[:, 1:, :, :] - x[:, :-1, :, :]
    dx = x[:, :, 1:, :] - x[:, :, :-1, :]
    if power == 2.0:
        ay, ax = jnp.square(dy), jnp.square(dx)
    else:
        ay, ax = jnp.abs(dy) ** power, jnp.abs(dx) ** power
    if reduction == "sum":
        return jnp.sum(ay) + jnp.sum(ax)
    return jnp.mean(ay) + jnp.mean(ax)


def upsample_nearest(x: Array, factor: int = 2) -> Array:
    """Nearest-neighbour upsampling by an integer factor (torch nn.Upsample(mode='nearest'))."""
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def reflect_pad(x: Array, pad: int = 1) -> Array:
    """Reflection padding of the spatial axes (torch nn.ReflectionPad2d: the edge pixel is not repeated)."""
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


def pool_padding(x: Array, window: int, stride: int, ceil_mode: bool) -> list[tuple[int, int]]:
    """`lax.reduce_window` padding of a pooling layer, torch's floor or ceil mode (NHWC, spatial axes)."""
    pads = [(0, 0)]
    for size in x.shape[1:3]:
        if ceil_mode:
            out = -(-(size - window) // stride) + 1
            # torch drops a last window that would start entirely in the (right) padding
            if (out - 1) * stride >= size:
                out -= 1
        else:
            out = (size - window) // stride + 1
        needed = (out - 1) * stride + window - size
        pads.append((0, max(needed, 0)))
    pads.append((0, 0))
    return pads


def max_pool(x: Array, window: int = 2, stride: int = 2, ceil_mode: bool = False) -> Array:
    """Max pooling (torch MaxPool2d(window, stride, ceil_mode=...)); ceil mode keeps the odd last row/column."""
    pads = pool_padding(x, window, stride, ceil_mode)
    if window == stride == 2:
        # VGG's pooling as the maximum of four strided slices (the same values): XLA then fuses the
        # producer's crop, bias and ReLU with the pool into one loop. As reduce_window, XLA CPU hands it to
        # YNNPACK, which for the reflect-padded encoder added a separate crop and a materialised zero tensor
        # per pool (relu4_1 at 512 px: 1.47 s -> 1.36 s CPU time on one core; zero padding unchanged;
        # benchmarks/encoder.py --explore).
        if any(p != (0, 0) for p in pads):
            x = jnp.pad(x, pads, constant_values=-jnp.inf)
        h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
        return jnp.maximum(jnp.maximum(x[:, 0:h:2, 0:w:2], x[:, 0:h:2, 1:w:2]),
                           jnp.maximum(x[:, 1:h:2, 0:w:2], x[:, 1:h:2, 1:w:2]))
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1), pads)


def avg_pool(x: Array, window: int = 2, stride: int = 2, ceil_mode: bool = False) -> Array:
    """Average pooling (torch AvgPool2d); in ceil mode a clipped window averages only its in-bounds pixels."""
    pads = pool_padding(x, window, stride, ceil_mode)
    dims, strides = (1, window, window, 1), (1, stride, stride, 1)
    total = lax.reduce_window(x, 0.0, lax.add, dims, strides, pads)
    if all(p == (0, 0) for p in pads):
        return total / (window * window)
    ones = jnp.ones((1, x.shape[1], x.shape[2], 1), x.dtype)
    count = lax.reduce_window(ones, 0.0, lax.add, dims, strides, pads)
    return total / count


# ----------------------------------------------------------------------------------------------------


_pool_padding = pool_padding  # its old private name (benchmarks read it)
