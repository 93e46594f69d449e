"""What tiled stylization (`nst_jax.tiling`) needs from the arbitrary network: its `Tiling` record."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax.models import Moments, Tiling
from nst_jax.models.arbitrary.net import _alpha, mix_strength, stats_forward
from nst_jax.models.arbitrary.predictor import _vector
from nst_jax.typing import Array, Params


def moments(params: Params, frozen: Any, content: Array, condition: Mapping[str, Array], masks: Array | None,
            alpha: Array, norm_stats: Any, weight: Array, static: Any = None) -> dict[str, Moments]:
    """Every style norm's `Moments` over the pixels `weight` selects, in network order (`Tiling.moments`)."""
    return dict(stats_forward(params, frozen, content, condition, masks, alpha, norm_stats, static,
                              stats_weight=weight)[1])


def finish(moments: Mapping[str, Moments]) -> dict:
    """The statistics `stats_forward` takes: {layer: (mean, biased var)}."""
    return {k: (jnp.asarray(m.mean, jnp.float32),
                jnp.asarray(np.asarray(m.m2) / np.maximum(np.asarray(m.count), 1e-30), jnp.float32))
            for k, m in moments.items()}


@partial(jax.jit, static_argnames="static")
def _fold(params: Params, frozen: Any, image: Array, vector: Array, alpha: Array, static: Any) -> Array:
    return mix_strength(vector, _vector(params, frozen, image, static), _alpha(alpha, vector.shape[0]))


def prepare(params: Params, frozen: Any, image: Array, condition: Mapping[str, Array], masks: Any, alpha: Array,
            static: Any = None) -> tuple[dict, Array]:
    """Strength below 1 mixes in the content image's own style vector, a property of the whole image: fold it
    into the condition (from `image`, the whole image or its thumbnail) and run the tiles at strength 1.
    With masks, pixels no mask covers still take each tile's own vector (cover the image to avoid it)."""
    del masks
    a = np.asarray(alpha, np.float32).reshape(-1)
    if np.all(a == 1.0):
        return dict(condition), alpha
    v = jnp.asarray(condition["vector"], jnp.float32)
    return {"vector": _fold(params, frozen, jnp.asarray(image, jnp.float32), v, jnp.asarray(a), static)}, \
        jnp.ones_like(jnp.asarray(a))


# halo: the receptive-field radius measured by perturbation is 57 px (tests/test_tiling.py), plus one
# alignment step, a multiple of 4.
# bytes_per_pixel: XLA's memory_analysis (benchmarks/tiling.py --measure) x 1.5 headroom.
TILING = Tiling(halo=64, align=4, bytes_per_pixel=180.0, moments=moments, finish=finish, prepare=prepare,
                default_stats="thumbnail")
