"""Pure, jit-able building blocks. Every image/feature tensor is NHWC float32.

Normalisation conventions follow the peers so that ports agree number for number:
- `mean_std` defaults to pytorch-AdaIN's `calc_mean_std`: unbiased variance over H*W, plus eps, then sqrt.
- `gram` defaults to neural-style's GramMatrix divided by the number of elements (C*H*W).

Convolution strategies: every network walk (`vgg.encode`, `models.decoder.decode`) calls its convolutions through
a `ConvFn`, `conv(x, layer, padding)` with `layer = {"kernel": HWIO, "bias": (O,), ...}`, so a speed trick is an
argument, not a copy of the walk:
- `conv_plain`: `conv2d` with XLA's own gradients.
- `conv_input_grad`: frozen weights, only the input gradient, with kernels flipped and transposed once outside
  the loop (`with_transposed_kernels`); Gatys' optimisation loops use it.
- `conv_matmul_weight_grad`: the kernel gradient as matrix products; `conv_for_training` (Winograd for the wide
  layers, matrix-product kernel gradients from 128 output channels on CPU) is the trainer's strategy.
- `upsample_conv`: nearest x2 upsampling followed by a reflect-padded 3x3 convolution, computed at low resolution.
- `conv_winograd`: Winograd F(4x4, 3x3) for 3x3 layers of >= 256 channels (rounding differs from `conv_plain` by
  ~1e-5 of the output's scale; benchmarks/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nst_jax.runtime import train_eigen_convolutions
from nst_jax.typing import Array

Padding = Literal["zero", "reflect", "valid"]


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


def _pool_padding(x: Array, window: int, stride: int, ceil_mode: bool) -> list[tuple[int, int]]:
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
    pads = _pool_padding(x, window, stride, ceil_mode)
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
    pads = _pool_padding(x, window, stride, ceil_mode)
    dims, strides = (1, window, window, 1), (1, stride, stride, 1)
    total = lax.reduce_window(x, 0.0, lax.add, dims, strides, pads)
    if all(p == (0, 0) for p in pads):
        return total / (window * window)
    ones = jnp.ones((1, x.shape[1], x.shape[2], 1), x.dtype)
    count = lax.reduce_window(ones, 0.0, lax.add, dims, strides, pads)
    return total / count


# ----------------------------------------------------------------------------------------------------
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


def with_transposed_kernels(params: Mapping[str, Mapping[str, Array]],
                            winograd: bool = False) -> dict[str, dict[str, Array]]:
    """A copy of a {layer: {"kernel", "bias"}} tree with each layer's `kernel_t` added (for `conv_input_grad`),
    and with `winograd`, each wide 3x3 layer's Winograd kernels `kernel_w` and `kernel_tw` (for
    `conv_input_grad_winograd`).

    Compute it once, outside any loop: inside a `while_loop` XLA does not hoist the transposes.
    """
    out = {}
    for k, v in params.items():
        kernel = jnp.asarray(v["kernel"])
        layer = dict(v, kernel_t=transposed_kernel(kernel))
        if winograd and _winograd_wide(kernel, "zero"):
            layer.update(kernel_w=winograd_kernel(kernel), kernel_tw=winograd_kernel(layer["kernel_t"]))
        out[k] = layer
    return out


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


# ----------------------------------------------------------------------------------------------------
# Winograd F(4x4, 3x3) for wide 3x3 layers

# Lavin & Gray (2016): y = A^T [(G g G^T) * (B^T d B)] A on 6x6 input tiles (stride 4) giving 4x4 outputs, with
# the interpolation points 0, +-1, +-2 and infinity: 36 products per tile and channel pair instead of 144. Each
# 2-D transform is one matrix product with a Kronecker matrix (tile positions flattened row-major), which XLA
# runs faster than the same sums written out as strided slices.
_WINO_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                     [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
_WINO_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                    [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)
_WINO_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                    np.float64)
_WINO_B2 = np.kron(_WINO_BT, _WINO_BT).astype(np.float32)  # (36, 36)
_WINO_G2 = np.kron(_WINO_G, _WINO_G).astype(np.float32)  # (36, 9)
_WINO_A2 = np.kron(_WINO_AT, _WINO_AT).astype(np.float32)  # (16, 36)
# Measured (benchmarks/RESULTS.md): the transforms cost more than they save below 256 channels.
WINOGRAD_MIN_CHANNELS = 256


def winograd_kernel(kernel: Array) -> Array:
    """The transformed kernel G g G^T of a (3, 3, Cin, Cout) HWIO kernel: (36, Cin, Cout), tile position major."""
    cin, cout = kernel.shape[2], kernel.shape[3]
    u = jnp.dot(jnp.asarray(_WINO_G2, kernel.dtype), kernel.reshape(9, cin * cout), precision=lax.Precision.HIGHEST)
    return u.reshape(36, cin, cout)


def _winograd_valid_impl(xp: Array, kernel: Array) -> Array:
    return _winograd_valid_transformed(xp, winograd_kernel(kernel))


def _winograd_valid_transformed(xp: Array, u: Array) -> Array:
    # u: the transformed kernel (36, Cin, Cout)
    n, hp, wp, cin = xp.shape
    h, w, cout = hp - 2, wp - 2, u.shape[-1]
    th, tw = -(-h // 4), -(-w // 4)
    # sizes that are not multiples of 4: zero rows/columns whose outputs are cropped
    xp = jnp.pad(xp, ((0, 0), (0, 4 * th + 2 - hp), (0, 4 * tw + 2 - wp), (0, 0)))
    tiles = jnp.stack([xp[:, a:a + 4 * th:4, b:b + 4 * tw:4, :] for a in range(6) for b in range(6)])
    v = jnp.dot(jnp.asarray(_WINO_B2, xp.dtype), tiles.reshape(36, -1)).reshape(36, n * th * tw, cin)
    m = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))))  # (36, P, Cout)
    y = jnp.dot(jnp.asarray(_WINO_A2, m.dtype), m.reshape(36, -1)).reshape(4, 4, n, th, tw, cout)
    y = y.transpose(2, 3, 0, 4, 1, 5).reshape(n, 4 * th, 4 * tw, cout)
    return y[:, :h, :w, :]


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def winograd_conv3x3_valid(xp: Array, kernel: Array, kernel_grad: str = "xla") -> Array:
    """The VALID 3x3 convolution of an already padded input, (N, H+2, W+2, Cin) -> (N, H, W, Cout), by Winograd.

    Same values as `lax.conv_general_dilated(xp, kernel, (1, 1), "VALID")` up to rounding (~1e-5 of the output's
    maximum in float32). The input gradient is itself a Winograd convolution (of the zero-padded cotangent with
    the flipped, transposed kernel); the kernel gradient is XLA's own (`kernel_grad="xla"`) or
    `matmul_kernel_grad` (`"matmul"`).
    """
    return _winograd_valid_impl(xp, kernel)


def _wino_fwd(xp: Array, kernel: Array, kernel_grad: str) -> tuple[Array, tuple[Array, Array]]:
    return _winograd_valid_impl(xp, kernel), (xp, kernel)


def _wino_bwd(kernel_grad: str, res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    xp, kernel = res
    dxp = _winograd_valid_impl(jnp.pad(g, ((0, 0), (2, 2), (2, 2), (0, 0))), transposed_kernel(kernel))
    if kernel_grad == "matmul":
        return dxp, matmul_kernel_grad(xp, g, 3, 3).astype(kernel.dtype)
    _, kernel_vjp = jax.vjp(lambda k: lax.conv_general_dilated(xp, k, (1, 1), "VALID", dimension_numbers=DN),
                            kernel)
    return dxp, kernel_vjp(g)[0]


winograd_conv3x3_valid.defvjp(_wino_fwd, _wino_bwd)


# Frozen weights (Gatys' loops): the transformed kernels of the layer and of its input gradient come in with the
# layer (`with_transposed_kernels(..., winograd=True)`), so no compiled loop recomputes them.
@jax.custom_vjp
def _winograd_frozen(xp: Array, u: Array, u_t: Array) -> Array:
    return _winograd_valid_transformed(xp, u)


def _winograd_frozen_fwd(xp: Array, u: Array, u_t: Array) -> tuple[Array, Array]:
    return _winograd_valid_transformed(xp, u), u_t


def _winograd_frozen_bwd(u_t: Array, g: Array) -> tuple[Array, None, None]:
    return _winograd_valid_transformed(jnp.pad(g, ((0, 0), (2, 2), (2, 2), (0, 0))), u_t), None, None


_winograd_frozen.defvjp(_winograd_frozen_fwd, _winograd_frozen_bwd)


def _winograd_wide(kernel: Array, padding: Padding) -> bool:
    # CPU only: GPU and TPU convolution libraries pick their own algorithms (cuDNN has its own Winograd).
    return (jax.default_backend() == "cpu" and kernel.shape[:2] == (3, 3) and padding in ("zero", "reflect")
            and min(kernel.shape[2], kernel.shape[3]) >= WINOGRAD_MIN_CHANNELS)


def conv_input_grad_winograd(x: Array, layer: Mapping[str, Array], padding: Padding = "zero") -> Array:
    """`conv_input_grad` with Winograd F(4x4, 3x3) for the wide 3x3 layers that carry `kernel_w` and `kernel_tw`
    (`with_transposed_kernels(params, winograd=True)`); differentiable in `x` only."""
    kernel = layer["kernel"]
    if "kernel_w" not in layer or not _winograd_wide(kernel, padding):
        return conv_input_grad(x, layer, padding)
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect" if padding == "reflect" else "constant")
    y = _winograd_frozen(xp, lax.stop_gradient(layer["kernel_w"]), lax.stop_gradient(layer["kernel_tw"]))
    bias = layer.get("bias")
    return y if bias is None else y + jnp.reshape(lax.stop_gradient(bias), (1, 1, 1, -1))


def conv3x3_winograd(x: Array, kernel: Array, bias: Array | None = None, padding: Padding = "zero",
                     kernel_grad: str = "xla") -> Array:
    """`conv2d(x, kernel, bias, padding)` for a 3x3 kernel by Winograd F(4x4, 3x3) (same values up to rounding).

    Args:
      x: (N, H, W, Cin); kernel: (3, 3, Cin, Cout) HWIO; bias: (Cout,) or None; padding: "zero" or "reflect".
      kernel_grad: "xla" or "matmul" (`winograd_conv3x3_valid`).

    Returns:
      (N, H, W, Cout).
    """
    if kernel.shape[:2] != (3, 3) or padding not in ("zero", "reflect"):
        raise ValueError("conv3x3_winograd takes 3x3 kernels with zero or reflect padding")
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect" if padding == "reflect" else "constant")
    y = winograd_conv3x3_valid(xp, kernel, kernel_grad)
    return y if bias is None else y + jnp.reshape(bias, (1, 1, 1, -1))


def conv_winograd(x: Array, layer: Mapping[str, Array], padding: Padding = "zero") -> Array:
    """Strategy: `conv3x3_winograd` for 3x3 layers with >= `WINOGRAD_MIN_CHANNELS` input and output channels,
    `conv_plain` elsewhere (bitwise). Differentiable in the input and the kernel; rounding differs from
    `conv_plain` by ~1e-5 of the output's scale."""
    kernel = layer["kernel"]
    if _winograd_wide(kernel, padding):
        return conv3x3_winograd(x, kernel, layer.get("bias"), padding)
    return conv_plain(x, layer, padding)


def conv_for_training(x: Array, layer: Mapping[str, Array], padding: Padding = "zero") -> Array:
    """The trainer's strategy. On CPU: Winograd for the wide 3x3 layers, and kernel gradients as matrix products
    (`matmul_kernel_grad`) for layers of >= `MATMUL_WEIGHT_GRAD_MIN_CHANNELS` output channels, unless the train
    step is compiled with XLA's own convolutions (`runtime.train_eigen_convolutions()`), whose kernel gradients are
    faster still. Elsewhere (GPU, TPU) XLA's own convolutions and gradients."""
    kernel, bias = layer["kernel"], layer.get("bias")
    matmul = jax.default_backend() == "cpu" and not train_eigen_convolutions()
    if _winograd_wide(kernel, padding):
        return conv3x3_winograd(x, kernel, bias, padding, "matmul" if matmul else "xla")
    if matmul and kernel.shape[-1] >= MATMUL_WEIGHT_GRAD_MIN_CHANNELS and bias is not None:
        return conv_matmul_weight_grad(x, layer, padding)
    return conv_plain(x, layer, padding)
