"""Loss terms for style transfer: pure functions of features (NHWC float32).

Normalisations (documented because the peers differ):
- `content_loss`: mean squared error over all elements (torch nn.MSELoss, as pytorch-AdaIN).
- `mean_std_style_loss`: pytorch-AdaIN's calc_style_loss, MSE between per-channel means plus MSE between
  per-channel stds (unbiased variance + 1e-5), for one layer; sum it over layers yourself or use
  `mean_std_style_losses`.
- `gram_style_loss`: MSE between Gram matrices normalised by C*H*W (neural-style's StyleLoss uses a sum-of-squares
  criterion on Gram/(C*H*W); we use the mean so the value does not scale with C*C; see `gram_normalize`).
- `tv_loss`: total variation (squared neighbour differences, summed), as neural-style's TVLoss up to its 1/2.
- `gram` / `guided_gram`: one image's Gram matrix normalised by C*H*W (`ops.gram`'s default) and its masked
  variant, with a one-matmul gradient (the Gatys optimisation differentiates them at every step).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nst_jax import ops
from nst_jax.typing import Array


def mse(a: Array, b: Array) -> Array:
    """Mean squared error over all elements."""
    return jnp.mean(jnp.square(a - b))


def content_loss(features: Array, target: Array) -> Array:
    """Content loss: MSE between generated features and target features."""
    return mse(features, target)


def mean_std_style_loss(features: Array, target: Array, eps: float = 1e-5) -> Array:
    """Style loss of one layer from per-channel statistics (pytorch-AdaIN's calc_style_loss).

    Args:
      features: generated features (N, H, W, C).
      target: style features (N, h, w, C); only their statistics are compared.
    """
    m1, s1 = ops.mean_std(features, eps)
    m2, s2 = ops.mean_std(target, eps)
    return mse(m1, m2) + mse(s1, s2)


def mean_std_style_losses(features: Mapping[str, Array], targets: Mapping[str, Array],
                          layers: Sequence[str], eps: float = 1e-5) -> Array:
    """Sum over `layers` of `mean_std_style_loss`."""
    return sum(mean_std_style_loss(features[k], targets[k], eps) for k in layers)


def gram_style_loss(features: Array, target_gram: Array, normalize: str = "chw") -> Array:
    """Gram style loss of one layer: MSE between the Gram matrix of `features` and a target Gram matrix.

    Args:
      features: (N, H, W, C) generated features.
      target_gram: (N or 1, C, C) target Gram matrix computed with the same `normalize`.
    """
    return mse(ops.gram(features, normalize), target_gram)


def tv_loss(image: Array) -> Array:
    """Total-variation loss of an image batch (sum of squared neighbour differences)."""
    return ops.total_variation(image, "sum", 2.0)


@jax.custom_vjp
def _gram_sum(f: Array) -> Array:
    """f^T f for f (P, C): the unnormalised Gram matrix, with a one-matmul gradient."""
    return jnp.dot(f.T, f, precision=lax.Precision.HIGHEST)


def _gram_sum_fwd(f: Array) -> tuple[Array, Array]:
    return _gram_sum(f), f


def _gram_sum_bwd(f: Array, g: Array) -> tuple[Array]:
    # d(f^T f) = f (g + g^T): one (P, C) x (C, C) product, where autodiff emits two and adds them (and through
    # `ops.gram`'s batched einsum its backward is several times slower on XLA CPU).
    return (jnp.dot(f, g + g.T, precision=lax.Precision.HIGHEST),)


_gram_sum.defvjp(_gram_sum_fwd, _gram_sum_bwd)


def gram(features: Array) -> Array:
    """Gram matrix of one image's features normalised by C*H*W: `ops.gram` with a cheaper gradient.

    Args:
      features: (1, H, W, C).

    Returns:
      (1, C, C).
    """
    _, h, w, c = features.shape
    return (_gram_sum(features.reshape(h * w, c)) / np.float32(c * h * w))[None]


def guided_gram(features: Array, masks: Array) -> Array:
    """Gram matrices of features restricted to soft regions, normalised by C times the region's area.

    G_s = sum_p m_s(p) f(p) f(p)^T / (C * sum_p m_s(p)).

    Args:
      features: (1, H, W, C).
      masks: (S, H, W, 1) weights in [0, 1], one region per row (constants: no gradient flows into them).

    Returns:
      (S, C, C); for an all-ones mask this is `gram(features)` (C*H*W normalisation).
    """
    _, h, w, c = features.shape
    f = features.reshape(h * w, c)
    m = lax.stop_gradient(masks).reshape(masks.shape[0], h * w, 1)
    area = jnp.maximum(jnp.sum(m, axis=(1, 2)), np.float32(1e-8))
    # sqrt(m) on both sides of the product puts m once in the sum.
    grams = [_gram_sum(jnp.sqrt(m[i]) * f) for i in range(m.shape[0])]
    return jnp.stack(grams) / (np.float32(c) * area)[:, None, None]
