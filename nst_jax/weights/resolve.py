"""Which encoder goes with which model: loading the encoder a config, a decoder file or a checkpoint names.

The pairing rules live here and only here:
- a config's `vgg_weights` (training, and a checkpoint's saved config) is a registry name, a weights file, or
  "random" / "random:SPEC" (seeded random weights with that identity, for tests only);
- a decoder file pairs with the encoder named in its `.npz` metadata (`vgg_weights`), else with AdaIN's
  `vgg_normalised` (pytorch-AdaIN's released decoder was trained on it);
- an encoder given explicitly must have the identity (`VGGSpec.source`) of the one the decoder was trained with.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import vgg
from nst_jax.errors import WeightsError
from nst_jax.weights.ports import decoder_from_content, load_decoder, load_vgg, read_weights, state_dict_kind
from nst_jax.weights.registry import REGISTRY

# A config's vgg_weights "random[:SPEC]" builds a seeded random encoder (tests only).
RANDOM_VGG = "random"


def load_encoder(name: str, last: str = "relu4_1") -> tuple[dict, vgg.VGGSpec]:
    """The encoder named by a config's `vgg_weights`, trimmed to the layers up to tap `last`.

    Args:
      name: a registry name or weights file (`nst_jax.weights.load_vgg`), or "random" / "random:SPEC"
        (SPEC one of `nst_jax.vgg.SPECS`): seeded random weights with that identity, for tests only.
      last: the deepest tap that will be used.

    Returns:
      (params as float32 JAX arrays, VGGSpec).
    """
    kind, _, spec_name = str(name).partition(":")
    if kind == RANDOM_VGG:
        spec_name = spec_name or "random"
        if spec_name not in vgg.SPECS:
            raise WeightsError(f"unknown VGG identity {spec_name!r} in {name!r}; "
                               f"known: {', '.join(vgg.SPECS)}")
        return random_encoder(spec_name, last), vgg.SPECS[spec_name]
    params, spec = load_vgg(name)
    vgg.check_vgg_params(params, spec, last)
    needed = vgg.expected_shapes(spec, last)
    return {k: {leaf: jnp.asarray(v, jnp.float32) for leaf, v in p.items()} for k, p in params.items()
            if k in needed}, spec


@functools.lru_cache(maxsize=4)
def random_encoder(spec_name: str, last: str) -> dict:
    """Seeded (key 0) He-normal VGG19 weights with identity `vgg.SPECS[spec_name]`, up to `last` (NumPy)."""
    spec = vgg.SPECS[spec_name]
    # jitted: eager jax.random would compile one program per layer shape
    params = jax.jit(lambda key: vgg.init_params(key, spec, last))(jax.random.PRNGKey(0))
    return jax.tree.map(np.asarray, params)


def decoder_pairs_with(src: str | Path) -> str:
    """The encoder a decoder file pairs with: the one named in a converted export's metadata, else AdaIN's."""
    path = Path(src)
    if path.is_file():
        try:
            what, content = read_weights(path)
        except WeightsError:
            return "adain"  # the decoder loader has already accepted the file; let it be judged there
        return _pairs_with(what, content)
    return "adain"


def _pairs_with(what: str, content: Any) -> str:
    if what == "npz-adain_decoder":
        meta = content[1] if isinstance(content, tuple) else {}
        if isinstance(meta, dict) and meta.get("vgg_weights"):
            return str(meta["vgg_weights"])
    return "adain"


def read_decoder(src: str | Path, state_dict: Any = None) -> tuple[Any, dict]:
    """AdaIN decoder weights and the training config they imply, each file read once.

    Args:
      src: "adain" (pytorch-AdaIN's released decoder), a registry name, `decoder.pth` or a converted `.npz`.
      state_dict: the file's state_dict when the caller has already read it (`read_state_dict`).

    Returns:
      (params, {"model": "adain", "vgg_weights": the encoder they pair with}).

    Raises:
      WeightsError: as `load_decoder`.
      DownloadError: a registry file is not cached and cannot be fetched.
    """
    path = Path(src)
    if not path.is_file():  # a registry name (a missing file: the loader says so)
        return load_decoder(src), {"model": "adain", "vgg_weights": "adain"}
    what, content = ((state_dict_kind(path, state_dict), state_dict) if state_dict is not None
                     else read_weights(path))
    return decoder_from_content(path, what, content), {"model": "adain", "vgg_weights": _pairs_with(what, content)}


def encoder_identity(name: str) -> str | None:
    """The `VGGSpec.source` of the encoder a name refers to; None if it cannot be known without the file."""
    kind, _, spec_name = name.partition(":")
    if kind == RANDOM_VGG:
        return vgg.SPECS[spec_name or "random"].source if (spec_name or "random") in vgg.SPECS else None
    if name in REGISTRY and REGISTRY[name].spec:
        return vgg.SPECS[REGISTRY[name].spec].source
    path = Path(name)
    if path.is_file():
        return load_vgg(path)[1].source
    return None


def paired_encoder(pairs_with: str, given: str | Path | None, origin: str,
                   last: str = "relu4_1") -> tuple[Any, vgg.VGGSpec]:
    """The encoder for a model trained with encoder `pairs_with`: that one, or `given` if it has its identity.

    Args:
      pairs_with: the encoder the model was trained with (a `load_encoder` name).
      given: an explicit encoder (registry name or file), or None to load `pairs_with`.
      origin: how to name the model in messages ("decoder X", "the decoder in checkpoint Y").
      last: the deepest tap the model needs.

    Raises:
      WeightsError: unreadable weights, or an explicit encoder of another identity (e.g. torchvision's VGG19
        with AdaIN's decoder).
    """
    if given is None:
        try:
            return load_encoder(pairs_with, last)
        except WeightsError as e:
            raise WeightsError(f"{e} (the encoder {origin} was trained with; give another copy of it "
                               f"with --vgg)") from None
    params, spec = load_vgg(given)
    expected = encoder_identity(pairs_with)
    if expected is not None and spec.source != expected:
        named = "" if pairs_with == expected else f" ({pairs_with})"
        raise WeightsError(
            f"{given} is a {spec.source} VGG19, but {origin} was trained on the {expected} "
            f"encoder{named}; a decoder only works with the encoder it was trained with")
    return params, spec


__all__ = ["RANDOM_VGG", "decoder_pairs_with", "encoder_identity", "load_encoder", "paired_encoder",
           "random_encoder", "read_decoder"]
