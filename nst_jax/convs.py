"""Convolution primitives and strategies, the one copy every network uses.

- The data layout (`DN`), `conv2d` (zero, reflect or valid padding), and the pieces the CIN and arbitrary families
  share: space-to-depth and its inverse, block-mean pooling of masks and maps onto a layer's grid (`area`), and
  instance-norm `moments` (each replaced a family's private copy only where the family's compiled forward, its
  StableHLO text, stayed byte-identical; the copies that would change it stay private in the families).
- Convolution strategies: every network walk (`vgg.encode`, `models.decoder.decode`) calls its convolutions
  through a `ConvFn`, `conv(x, layer, padding)` with `layer = {"kernel": HWIO, "bias": (O,), ...}`, so a speed
  trick is an argument, not a copy of the walk: `conv_plain` (XLA's own gradients), `conv_input_grad` (frozen
  weights, input gradient only, kernels flipped once outside the loop), `conv_matmul_weight_grad` (kernel
  gradients as matrix products), `upsample_conv` (nearest x2 then a reflect-padded 3x3, at low resolution). The
  Winograd strategies are in `nst_jax.winograd`.

Every name here is also importable from `nst_jax.ops`, its historical home.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

from nst_jax.typing import Array

Padding = Literal["zero", "reflect", "valid"]

DN = ("NHWC", "HWIO", "NHWC")


def conv2d(x: Array, kernel: Array, bias: Array | None = None, padding: Padding = "zero") -> Array:
    """Stride-1 2-D convolution with an HWIO kernel.

    padding="reflect" is implemented as reflect-pad, SAME convolution, crop: numerically the VALID convolution of the
    reflected input (the border outputs that saw zeros are cropped away), but XLA's CPU backend runs SAME
    convolutions about 2x faster than VALID ones (measured in DESIGN.md and benchmarks/encoder.py --explore).
    """
    kh, kw = kernel.shape[0], kernel.shape[1]
    if padding == "valid" or (kh == 1 and kw == 1):
        pad = "VALID"
        y = lax.conv_general_dilated(x, kernel, (1, 1), pad, dimension_numbers=DN)
    elif padding == "zero":
        y = lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=DN)
    elif padding == "reflect":
        ph, pw = kh // 2, kw // 2
        xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), mode="reflect")
        y = lax.conv_general_dilated(xp, kernel, (1, 1), "SAME", dimension_numbers=DN)
        y = y[:, ph:y.shape[1] - ph, pw:y.shape[2] - pw, :]
    else:
        raise ValueError(f"unknown padding {padding!r}")
    if bias is not None:
        y = y + jnp.reshape(bias, (1, 1, 1, -1))
    return y


def space_to_depth(x: Array, s: int) -> Array:
    """(N, H, W, C) -> (N, H/s, W/s, s*s*C), channel index (row phase * s + column phase) * C + c."""
    n, h, w, c = x.shape
    return x.reshape(n, h // s, s, w // s, s, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h // s, w // s, s * s * c)


def depth_to_space(x: Array, s: int) -> Array:
    """The inverse of `space_to_depth`."""
    n, h, w, cs = x.shape
    c = cs // (s * s)
    return x.reshape(n, h, w, s, s, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h * s, w * s, c)


def area(x: Array, factor: int) -> Array:
    """Mean over factor x factor blocks (sizes are multiples of `factor`): a mask or map on a layer's grid."""
    if factor == 1:
        return x
    n, h, w, c = x.shape
    return jnp.mean(x.reshape(n, h // factor, factor, w // factor, factor, c), axis=(2, 4))


def moments(x: Array) -> tuple[Array, Array]:
    """Per-image, per-channel mean and biased variance over the spatial axes (tf.nn.moments): (N, 1, 1, C) each."""
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
    return mean, var


# Convolution strategies: conv(x, layer, padding) -> y

ConvFn = Callable[[Array, Mapping[str, Array], Padding], Array]


def conv_plain(x: Array, layer: Mapping[str, Array], padding: Padding = "zero") -> Array:
    """`conv2d(x, layer["kernel"], layer["bias"], padding)`: the reference strategy."""
    return conv2d(x, layer["kernel"], layer.get("bias"), padding)


def _pad_widths(kernel: Array, padding: Padding) -> tuple[int, int]:
    kh, kw = kernel.shape[0], kernel.shape[1]
    if padding == "valid" or (kh == 1 and kw == 1):
        return 0, 0
    return kh // 2, kw // 2


def transposed_kernel(kernel: Array) -> Array:
    """The kernel of a SAME convolution's input gradient: flipped spatially, in/out axes swapped (HWIO)."""
    return jnp.flip(kernel, (0, 1)).swapaxes(2, 3)


# XLA's CPU backend runs a convolution through its fast library kernel only in canonical form (NHWC input, HWIO
# kernel). Autodiff's input gradient is a convolution with the kernel reversed and its in/out axes swapped through
# the dimension numbers; outside loops XLA adds the transposes that make it canonical again, but inside a
# `while_loop` body (Gatys' compiled chunks and the zoom line search) it does not, and VGG19's backward pass ran
# several times slower. This VJP uses kernels flipped and transposed once, outside the loop.
@jax.custom_vjp
def _same_conv_input_grad(x: Array, kernel: Array, kernel_t: Array) -> Array:
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=DN)


def _same_conv_fwd(x: Array, kernel: Array, kernel_t: Array) -> tuple[Array, Array]:
    return _same_conv_input_grad(x, kernel, kernel_t), kernel_t


def _same_conv_bwd(kernel_t: Array, g: Array) -> tuple[Array, None, None]:
    # Frozen weights: only the input gradient is needed.
    return lax.conv_general_dilated(g, kernel_t, (1, 1), "SAME", dimension_numbers=DN), None, None


_same_conv_input_grad.defvjp(_same_conv_fwd, _same_conv_bwd)


def conv_input_grad(x: Array, layer: Mapping[str, Array], padding: Padding = "zero") -> Array:
    """Same values as `conv_plain` (bitwise); differentiable in `x` only, through canonical convolutions.

    `layer` may carry `kernel_t` (`with_transposed_kernels`); it is computed here otherwise. Odd square kernels
    with "zero" or "reflect" padding (the VGG encoders), or 1x1 kernels.
    """
    kernel, bias = layer["kernel"], layer.get("bias")
    kernel_t = layer.get("kernel_t")
    kernel_t = transposed_kernel(kernel) if kernel_t is None else kernel_t
    kernel, kernel_t = lax.stop_gradient(kernel), lax.stop_gradient(kernel_t)
    ph, pw = _pad_widths(kernel, padding)
    if padding == "reflect" and (ph or pw):
        # pad-reflect, SAME convolution, crop: the numerics of conv2d(..., "reflect")
        xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), mode="reflect")
        y = _same_conv_input_grad(xp, kernel, kernel_t)[:, ph:xp.shape[1] - ph, pw:xp.shape[2] - pw, :]
    elif padding == "valid" and (kernel.shape[0] > 1 or kernel.shape[1] > 1):
        raise ValueError("conv_input_grad supports zero and reflect padding (or 1x1 kernels)")
    else:
        y = _same_conv_input_grad(x, kernel, kernel_t)
    return y if bias is None else y + jnp.reshape(lax.stop_gradient(bias), (1, 1, 1, -1))


def matmul_kernel_grad(xp: Array, dy: Array, kh: int, kw: int) -> Array:
    """The kernel gradient of the VALID (kh, kw) convolution of the padded input `xp` with cotangent `dy`, as kh
    matrix products over the kw-shifted input, (N*H*W, kw*Cin)^T @ (N*H*W, Cout).

    XLA's CPU backend (YNNPACK) runs the kernel-gradient ("backward filter") convolution of the wide 3x3 layers at
    batch 8 at a third of its forward speed or less; these products run up to 3x faster (benchmarks/RESULTS.md).
    """
    n, h, w, cout = dy.shape
    cin = xp.shape[-1]
    cols = jnp.concatenate([xp[:, :, j:j + w, :] for j in range(kw)], axis=-1)  # (N, H + kh - 1, W, kw*Cin)
    d2 = dy.reshape(n * h * w, cout)
    rows = [jnp.dot(cols[:, i:i + h].reshape(n * h * w, kw * cin).T, d2, preferred_element_type=jnp.float32)
            for i in range(kh)]
    return jnp.stack(rows).reshape(kh, kw, cin, cout)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def conv2d_matmul_weight_grad(x: Array, kernel: Array, bias: Array, padding: Padding) -> Array:
    """`conv2d` (same forward, same gradients) whose kernel gradient is `matmul_kernel_grad`; the input gradient
    stays XLA's own transposed convolution."""
    return conv2d(x, kernel, bias, padding)


def _mm_fwd(x, kernel, bias, padding):
    return conv2d(x, kernel, bias, padding), (x, kernel)


def _mm_bwd(padding, res, dy):
    x, kernel = res
    _, input_vjp = jax.vjp(lambda v: conv2d(v, kernel, None, padding), x)
    (dx,) = input_vjp(dy)
    kh, kw = kernel.shape[0], kernel.shape[1]
    ph, pw = _pad_widths(kernel, padding)
    widths = ((0, 0), (ph, ph), (pw, pw), (0, 0))
    xp = jnp.pad(x, widths, mode="reflect") if padding == "reflect" and (ph or pw) else jnp.pad(x, widths)
    dk = matmul_kernel_grad(xp, dy, kh, kw).astype(kernel.dtype)
    db = jnp.sum(dy, axis=(0, 1, 2), dtype=jnp.float32).astype(dy.dtype)
    return dx, dk, db


conv2d_matmul_weight_grad.defvjp(_mm_fwd, _mm_bwd)


def conv_matmul_weight_grad(x: Array, layer: Mapping[str, Array], padding: Padding = "zero") -> Array:
    """`conv2d_matmul_weight_grad` as a strategy (the layer needs a bias)."""
    return conv2d_matmul_weight_grad(x, layer["kernel"], layer["bias"], padding)


# Measured per layer (benchmarks/RESULTS.md): the products win from 128 output channels on; below, XLA's own
# kernel gradient is as fast or faster.
MATMUL_WEIGHT_GRAD_MIN_CHANNELS = 128


def _phase_taps(k: Array, axis: int) -> tuple[Array, Array]:
    # Along one axis, nearest x2 upsampling then a reflect-padded 3-tap filter (k0, k1, k2) is, at low
    # resolution and with edge padding: even outputs = k0 * x[i-1] + (k1 + k2) * x[i]; odd outputs =
    # (k0 + k1) * x[i] + k2 * x[i+1].
    k0, k1, k2 = jnp.split(k, 3, axis=axis)
    return jnp.concatenate([k0, k1 + k2], axis=axis), jnp.concatenate([k0 + k1, k2], axis=axis)


def upsample_conv(x: Array, kernel: Array, bias: Array | None) -> Array:
    """`conv2d(upsample_nearest(x, 2), kernel, bias, "reflect")` for a 3x3 kernel, computed at low resolution.

    The reflection of a nearest-upsampled image is the upsampled edge-padded image, so each of the four output
    phases is a 2x2 convolution of the edge-padded input: one convolution with 4x the output channels, then an
    interleave. That is 16/36 of the multiply-adds of convolving the upsampled image.

    Args:
      x: (N, h, w, Cin) features; kernel: (3, 3, Cin, Cout) HWIO; bias: (Cout,) or None.

    Returns:
      (N, 2h, 2w, Cout).
    """
    n, h, w, _ = x.shape
    cout = kernel.shape[-1]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    kernels = [c for r in _phase_taps(kernel, 0) for c in _phase_taps(r, 1)]  # phases 00, 01, 10, 11
    # SAME with an even kernel pads only at the end: z[i] sees xp[i], xp[i + 1]; the last row/col is unused.
    k4 = jnp.concatenate(kernels, axis=-1)
    z = lax.conv_general_dilated(xp, k4, (1, 1), "SAME", dimension_numbers=DN)
    if bias is not None:
        z = z + jnp.reshape(jnp.tile(bias, 4), (1, 1, 1, -1))

    def phase(a: int, b: int) -> Array:
        return z[:, a:a + h, b:b + w, (2 * a + b) * cout:(2 * a + b + 1) * cout]

    rows = [jnp.stack([phase(a, 0), phase(a, 1)], axis=3) for a in (0, 1)]
    return jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * w, cout)


def weighted_moments(x: Array, weight: Array, groups: int = 1) -> tuple[Array, Array, Array]:
    """Per-image, per-channel weighted moments over the spatial axes (tiled statistics, `nst_jax.tiling`).

    Args:
      x: (N, H, W, G * C) (G = `groups`: CIN's phase-space maps hold G positions per channel).
      weight: (N or 1, H, W, G) or (N or 1, H, W, 1) non-negative weights of the positions.

    Returns:
      (count (N, 1, 1, 1), mean (N, 1, 1, C), m2 (N, 1, 1, C)): the total weight, the weighted mean and the
      weighted sum of squared deviations from it, float32 (two passes, so no cancellation).
    """
    n, h, w, c = x.shape
    x5 = x.astype(jnp.float32).reshape(n, h, w, groups, c // groups)
    w5 = jnp.broadcast_to(weight.astype(jnp.float32).reshape(weight.shape[0], h, w, -1, 1), (n, h, w, groups, 1))
    count = jnp.sum(w5, axis=(1, 2, 3), keepdims=True)
    mean = jnp.sum(w5 * x5, axis=(1, 2, 3), keepdims=True) / jnp.maximum(count, 1e-30)
    m2 = jnp.sum(w5 * jnp.square(x5 - mean), axis=(1, 2, 3), keepdims=True)
    return count.reshape(n, 1, 1, 1), mean.reshape(n, 1, 1, c // groups), m2.reshape(n, 1, 1, c // groups)


__all__ = [
    "DN", "MATMUL_WEIGHT_GRAD_MIN_CHANNELS", "ConvFn", "Padding", "area", "conv2d", "conv2d_matmul_weight_grad",
    "conv_input_grad", "conv_matmul_weight_grad", "conv_plain", "depth_to_space", "matmul_kernel_grad", "moments",
    "space_to_depth", "transposed_kernel", "upsample_conv", "weighted_moments",
]
