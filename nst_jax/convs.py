"""Primitives the CIN and arbitrary families share (issue 23 item 2): the data layout of every convolution,
space-to-depth and its inverse, block-mean pooling of masks and maps onto a layer's grid, and instance-norm
moments. Each one replaced a private copy only where the family's compiled forward (StableHLO text) stayed
byte-identical; the copies that would change it stay private (see the families' modules).
"""

from __future__ import annotations

import jax.numpy as jnp

from nst_jax.ops import DN
from nst_jax.typing import Array


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


__all__ = ["DN", "area", "depth_to_space", "moments", "space_to_depth"]
