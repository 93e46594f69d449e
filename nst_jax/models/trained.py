"""Loading a model trained here, whatever its family: `load_trained(workdir) -> (family, params, config)`.

The checkpoint's saved config names the family (`model`; runs from before families existed are AdaIN); the
parameters are restored into `jax.eval_shape` of that family's `init_params` for that config, so a checkpoint of
another structure is refused with the names and shapes that differ. `nst-jax stylize --checkpoint`, `serve.py
--checkpoint` and export go through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from nst_jax import checkpoints, models
from nst_jax.errors import WeightsError
from nst_jax.params import check_tree


def config_from_dict(d: dict) -> Any:
    """A saved (JSON) config back as an ml_collections ConfigDict (lists become tuples, as configs write them)."""
    import ml_collections

    def fix(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return tuple(fix(x) for x in v)
        return v

    return ml_collections.ConfigDict(fix(dict(d)))


def expected_tree(family: models.Family, config: Any) -> Any:
    """The structure, shapes and dtypes of `family`'s trainable tree for `config` (nothing is computed)."""
    return jax.eval_shape(lambda key: family.init_params(key, config), jax.random.PRNGKey(0))


def load_trained(path: str | Path) -> tuple[models.Family, Any, dict]:
    """The family, parameters and config of a model trained with `train.py`.

    Args:
      path: a `train.py --workdir` (its latest checkpoint), its `checkpoints/` folder or one step folder.

    Returns:
      (family, params as float32 NumPy arrays, the saved config as a plain dict with "model" and "step").

    Raises:
      WeightsError: not a checkpoint, an unknown family, or parameters that do not fit the family.
      NstError: the saved config no longer builds the family's network.
    """
    saved, _ = checkpoints.latest_config(path)
    name = str(saved.get("model", "adain"))
    try:
        family = models.get(name)
    except Exception as e:
        raise WeightsError(f"{path}: {e}") from None
    like = expected_tree(family, config_from_dict(saved))
    params, config, step = checkpoints.restore_params(path, like)
    check_tree(params, jax.tree.map(lambda s: tuple(s.shape), like), f"the {name} model in {path}")
    config.setdefault("model", name)
    if name == "adain":
        config.setdefault("vgg_weights", "adain")
    config["step"] = step
    return family, jax.tree.map(lambda a: np.asarray(a, np.float32), params), config


__all__ = ["config_from_dict", "expected_tree", "load_trained"]
