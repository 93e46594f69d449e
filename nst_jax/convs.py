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


__all__ = ["DN", "area", "depth_to_space", "moments", "space_to_depth", "weighted_moments"]
