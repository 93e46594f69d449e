"""Trained networks to start fine-tuning from (`config.init_from`): a packaged model or a training workdir.

Kept apart from the families so that a family module never imports a port of its own weights (the ports import
the family for its layout): the loop loads the base here and hands it to `family.start_params(config, base)`.
"""

from __future__ import annotations

from typing import Any

from nst_jax.errors import NstError
from nst_jax.models.open import PACKAGED, open_model

# Packaged models that can seed fine-tuning, and their family (the names `nst_jax.models.open` knows).
PACKAGED_BASES = {name: family for name, (family, _) in PACKAGED.items()}


def load_base(init_from: str) -> tuple[str, Any]:
    """(family name, parameters as NumPy arrays) of `init_from`: "multistyle26", "magenta-arbitrary" or a
    `train.py --workdir`.

    Raises:
      NstError: naming `config.init_from` when it is neither.
    """
    name = str(init_from)
    if name in PACKAGED_BASES:
        loaded = open_model(name)
        return loaded.family.name, loaded.params
    from nst_jax.models.trained import load_trained

    try:
        family, params, _ = load_trained(name)
    except NstError as e:
        raise NstError(f"config.init_from: {name} is neither {' nor '.join(PACKAGED_BASES)} nor a training "
                       f"workdir ({e})") from None
    return family.name, params


__all__ = ["PACKAGED_BASES", "load_base"]
