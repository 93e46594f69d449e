"""What tiled stylization (`nst_jax.tiling`) needs from the CIN transformer: its `Tiling` record."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from nst_jax.models import Moments, Tiling
from nst_jax.models.cin.net import _spec_for, stats_forward
from nst_jax.models.cin.spec import _get, _set, layers
from nst_jax.typing import Array, Params


def moments(params: Params, frozen: Any, content: Array, condition: Mapping[str, Array], masks: Array | None,
            alpha: Array, norm_stats: Any, weight: Array, static: Any = None) -> dict[str, Moments]:
    """Every instance norm's `Moments` over the pixels `weight` selects, keyed "contract/0", ... in network
    order (`Tiling.moments`)."""
    _, tree = stats_forward(params, frozen, content, condition, masks, alpha, norm_stats, static,
                            stats_weight=weight)
    return {"/".join(layer.path): _get(tree, layer.path) for layer in layers(_spec_for(frozen, static))
            if layer.norm}


def finish(moments: Mapping[str, Moments]) -> dict:
    """The statistics tree `stats_forward` takes: {path: {"mean", "var"}} with the biased variance."""
    tree: dict = {}
    for key, m in moments.items():
        var = np.asarray(m.m2) / np.maximum(np.asarray(m.count), 1e-30)
        _set(tree, key.split("/"), {"mean": jnp.asarray(m.mean, jnp.float32), "var": jnp.asarray(var, jnp.float32)})
    return tree


# halo: the receptive-field radius of multistyle26 (the deepest preset: 9x9, two stride-2 3x3, six residual
# blocks at 1/4, two upsampling 3x3, 9x9) measured by perturbation is 65 px (tests/test_tiling.py checks every
# preset), plus one alignment step, a multiple of 4.
# bytes_per_pixel: XLA's memory_analysis (benchmarks/tiling.py --measure) x 1.5 headroom.
TILING = Tiling(halo=72, align=4, bytes_per_pixel=420.0, moments=moments, finish=finish,
                default_stats="thumbnail")
