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
    config["step"] = step
    return family, jax.tree.map(lambda a: np.asarray(a, np.float32), params), config


def load_decoder_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """Load the AdaIN decoder parameters and the training configuration from a training checkpoint.

    Args:
      path: a `train.py --workdir` (its latest checkpoint is used), its `checkpoints/` folder, or one
        `checkpoints/<step>` folder.

    Returns:
      (decoder params as {layer: {"kernel", "bias"}} float32 NumPy arrays, config as a plain dict holding at
      least "vgg_weights", plus "step": the checkpoint's step).

    Raises:
      WeightsError: `path` is not a checkpoint, not an AdaIN one, or its parameters do not fit the decoder.
    """
    from nst_jax.models.decoder import check_decoder_params

    # Restored into the structure its own family gives, then judged by that structure (not by the family's
    # name): any family whose trained part is the AdaIN decoder fits.
    family, params, config = load_trained(path)
    try:
        check_decoder_params(params)
    except WeightsError:
        raise WeightsError(f"{path} holds a trained {family.name} model, not an AdaIN decoder") from None
    config.setdefault("vgg_weights", "adain")  # runs from before configs recorded it used AdaIN's encoder
    return params, config


def export_decoder(checkpoint: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write a checkpoint's decoder to our `.npz` format (`nst-jax stylize --decoder FILE` reads it).

    Returns:
      the path written.
    """
    from nst_jax.weights.npz import save_npz

    params, config = load_decoder_checkpoint(checkpoint)
    meta = {"kind": "adain_decoder", "step": config["step"], "vgg_weights": config["vgg_weights"],
            "source": f"nst-jax training checkpoint {Path(checkpoint).name} step {config['step']}"}
    return save_npz(out, params, meta, overwrite=overwrite)


__all__ = ["config_from_dict", "expected_tree", "export_decoder", "load_decoder_checkpoint", "load_trained"]
