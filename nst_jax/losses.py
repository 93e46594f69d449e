"""Loss terms for style transfer: pure functions of features (NHWC float32).

Normalisations (documented because the peers differ):
- `content_loss`: mean squared error over all elements (torch nn.MSELoss, as pytorch-AdaIN).
- `mean_std_style_loss`: pytorch-AdaIN's calc_style_loss, MSE between per-channel means plus MSE between
  per-channel stds (unbiased variance + 1e-5), for one layer; sum it over layers yourself or use
  `mean_std_style_losses`.
- `gram_style_loss`: MSE between Gram matrices normalised by C*H*W (neural-style's StyleLoss uses a sum-of-squares
  criterion on Gram/(C*H*W); we use the mean so the value does not scale with C*C; see `gram_normalize`).
- `tv_loss`: total variation (squared neighbour differences, summed), as neural-style's TVLoss up to its 1/2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from nst_jax import ops

Array = jax.Array


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
