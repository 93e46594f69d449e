"""Trained networks to start fine-tuning from (`config.init_from`): a packaged model or a training workdir.

Kept apart from the families so that a family module never imports a port of its own weights (the ports import
the family for its layout): the loop loads the base here and hands it to `family.start_params(config, base)`.
"""

from __future__ import annotations

from typing import Any

from nst_jax.errors import NstError

# Packaged models that can seed fine-tuning, and their family.
PACKAGED_BASES = {"multistyle26": "cin", "magenta-arbitrary": "arbitrary"}


def load_base(init_from: str) -> tuple[str, Any]:
    """(family name, parameters as NumPy arrays) of `init_from`: "multistyle26", "magenta-arbitrary" or a
    `train.py --workdir`.

    Raises:
      NstError: naming `config.init_from` when it is neither.
    """
    name = str(init_from)
    if name == "multistyle26":
        from nst_jax.weights.cin_ports import load_multistyle26

        return "cin", load_multistyle26()[0]
    if name == "magenta-arbitrary":
        from nst_jax.weights.magenta_arbitrary import load_magenta_arbitrary

        return "arbitrary", load_magenta_arbitrary()
    from nst_jax.models.trained import load_trained

    try:
        family, params, _ = load_trained(name)
    except NstError as e:
        raise NstError(f"config.init_from: {name} is neither {' nor '.join(PACKAGED_BASES)} nor a training "
                       f"workdir ({e})") from None
    return family.name, params


__all__ = ["PACKAGED_BASES", "load_base"]
