"""AdaIN's statistics API (`Stylizer.style_stats` and friends, from before conditions)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp

from nst_jax.errors import NstError
from nst_jax.models.adain.net import CHANNELS, blend_statistics
from nst_jax.typing import Array

# ----------------------------------------------------------------------------------------------------
# Parameter trees and the statistics API (`Stylizer.style_stats` and friends, from before conditions)


class StyleStats(NamedTuple):
    """relu4_1 statistics of a style: per-channel mean and std, each (1, 1, 1, 512) float32 (AdaIN's condition)."""

    mean: Array
    std: Array


def stats_condition(mean: Any, std: Any) -> dict[str, Array]:
    """The condition {"mean", "std"} of statistics (N, 1, 1, 512) each, checked.

    Raises:
      NstError: other shapes.
    """
    mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
    if mean.ndim != 4 or mean.shape[1:] != (1, 1, CHANNELS) or std.shape != mean.shape:
        raise NstError(f"style statistics must be (N, 1, 1, {CHANNELS}), got {mean.shape} and {std.shape}")
    return {"mean": mean, "std": std}


def blend_stats(stats: Sequence[StyleStats], weights: Sequence[float] | None = None) -> StyleStats:
    """Interpolate styles: a convex mix of their statistics (weights are normalised to sum to 1).

    Equal to pytorch-AdaIN's interpolation (the weighted sum of the styles' AdaIN outputs), which is affine in
    the style statistics.

    Args:
      stats: K `StyleStats` (each (1, 1, 1, 512), or all (N, 1, 1, 512)).
      weights: K non-negative floats with a positive sum; None = equal weights.
    """
    from nst_jax.checks import normalise_weights

    if len(stats) == 0:
        raise NstError("blend_stats needs at least one style")
    w = normalise_weights(weights, len(stats), what="style weights")
    means = jnp.stack([jnp.asarray(s.mean, jnp.float32) for s in stats])
    stds = jnp.stack([jnp.asarray(s.std, jnp.float32) for s in stats])
    return StyleStats(*blend_statistics(means, stds, jnp.asarray(w)))
