"""Winograd F(4x4, 3x3) convolutions for the wide 3x3 layers (>= `WINOGRAD_MIN_CHANNELS` channels), and the
trainer's strategy `conv_for_training` built on them. Rounding differs from `convs.conv_plain` by ~1e-5 of the
output's scale (benchmarks/RESULTS.md). Every name here is also importable from `nst_jax.ops`.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nst_jax.convs import (
    DN,
    MATMUL_WEIGHT_GRAD_MIN_CHANNELS,
    Padding,
    conv_input_grad,
    conv_matmul_weight_grad,
    conv_plain,
    matmul_kernel_grad,
    transposed_kernel,
)
from nst_jax.runtime import train_eigen_convolutions
from nst_jax.typing import Array

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


__all__ = ["WINOGRAD_MIN_CHANNELS", "conv3x3_winograd", "conv_for_training", "conv_input_grad_winograd",
           "conv_winograd", "winograd_conv3x3_valid", "winograd_kernel", "with_transposed_kernels"]
