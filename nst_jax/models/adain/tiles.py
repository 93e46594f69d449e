"""What tiled stylization (`nst_jax.tiling`) needs from AdaIN: its `Tiling` record (one normalisation, relu4_1,
so exact statistics cost one encoder pass over the tiles before the stylizing pass)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax.convs import area, weighted_moments
from nst_jax.models import MeanVar, Moments, Tiling
from nst_jax.models.adain.net import CHANNELS, EPS, SCALE, TAP, _region_weights, _regions, content_features
from nst_jax.typing import Array, Params


def moments(params: Params, frozen: Mapping[str, Any], content: Array, cond: Mapping[str, Array],
            masks: Array | None, alpha: Array, norm_stats: Any, weight: Array, static: Any) -> dict[str, Moments]:
    """relu4_1's `Moments` over the pixels `weight` selects ((N, 1, 1, 512)), or with masks per region
    ((N, K, 512), each position weighted as `region_stats` weighs it). The decoder is dead code here."""
    del params, alpha, norm_stats  # the encoder has no normalisation before relu4_1
    f = content_features(frozen["vgg"], content, static).astype(jnp.float32)
    wg = area(weight.astype(jnp.float32), SCALE)
    if masks is None:
        return {TAP: Moments(*weighted_moments(f, wg))}
    grid, _, _ = _regions(content, cond, masks, static)
    w = _region_weights(grid)[0] * wg  # (N, h, w, K)
    hi = jax.lax.Precision.HIGHEST
    count = jnp.sum(w, axis=(1, 2))[..., None]  # (N, K, 1)
    g = f - jnp.mean(f, axis=(1, 2), keepdims=True)  # centred first: the one-pass sums below then keep precision
    s1 = jnp.einsum("nhwk,nhwc->nkc", w, g, precision=hi)
    s2 = jnp.einsum("nhwk,nhwc->nkc", w, jnp.square(g), precision=hi)
    mu = s1 / jnp.maximum(count, 1e-30)
    m2 = jnp.maximum(s2 - count * jnp.square(mu), 0.0)
    return {TAP: Moments(count, mu + jnp.mean(f, axis=(1, 2))[:, None, :], m2)}


def finish(moments: Mapping[str, Moments]) -> MeanVar:
    """The `MeanVar` `stats_forward` takes: mean, unbiased variance + eps (pytorch-AdaIN's `calc_mean_std`)."""
    m = moments[TAP]
    var = np.asarray(m.m2) / np.maximum(np.asarray(m.count) - 1.0, 1.0) + EPS
    return MeanVar(jnp.asarray(m.mean, jnp.float32), jnp.asarray(var, jnp.float32))


def own_condition(norm_stats: MeanVar) -> dict[str, Array]:
    """A strength map's own condition from the per-region statistics the tiles run with (`Tiling.own_condition`):
    the last region's mean and std, as `net.own_condition` measures them, so its AdaIN is the identity."""
    n = norm_stats.mean.shape[0]
    shape = (n, 1, 1, CHANNELS)
    return {"mean": jnp.reshape(norm_stats.mean[:, -1], shape), "std": jnp.sqrt(norm_stats.var[:, -1]).reshape(shape)}


# halo: the receptive-field radius of the encoder to relu4_1 and the decoder, measured by perturbation: 101 px
# (tests/test_tiling.py), plus one alignment step, a multiple of 8. bytes_per_pixel: XLA's memory_analysis
# (benchmarks/tiling.py --measure) x 1.5 headroom.
TILING = Tiling(halo=112, align=8, bytes_per_pixel=1200.0, moments=moments, finish=finish, default_stats="exact",
                own_condition=own_condition)
