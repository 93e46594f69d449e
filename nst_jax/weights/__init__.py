"""Weights: ports of every public VGG19 format (and the AdaIN decoder) to nst-jax trees, fetched safely.

- `load_vgg(src, fmt=None, pooling=None) -> (params, VGGSpec)`: registry name or local .pth / .h5 / .npz.
- `load_decoder(src) -> params`: "adain", pytorch-AdaIN's decoder.pth, or a converted .npz.
- `fetch(name) -> Path`, `cache_dir() -> Path`: verified, atomic, resumable downloads into the cache.
- `save_npz(path, params, meta)`, `load_npz(path) -> (params, meta)`: the converted format (no pickle).
- `load_pth(path)`: the safe PyTorch reader (no torch, nothing from the file executed).

See docs/weights.md for the sources, their identities and the hash policy. Names are imported on first use, so
`nst_jax.weights.registry` (what `nst-jax --help` needs) does not pull in JAX.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "cache_dir": "download", "cache_status": "ports", "cached_path": "download", "fetch": "ports",
    "weights_dir": "download",
    "read_keras_h5": "keras_h5",
    "load_npz": "npz", "save_npz": "npz",
    "convert": "ports", "load_decoder": "ports", "load_vgg": "ports", "read_weights": "ports",
    "load_pth": "pth", "load_state_dict": "pth",
    "REGISTRY": "registry", "Source": "registry", "get_source": "registry",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from nst_jax.weights.download import cache_dir, cached_path, weights_dir  # noqa: F401
    from nst_jax.weights.keras_h5 import read_keras_h5  # noqa: F401
    from nst_jax.weights.npz import load_npz, save_npz  # noqa: F401
    from nst_jax.weights.ports import cache_status, convert, fetch, load_decoder, load_vgg, read_weights  # noqa: F401
    from nst_jax.weights.pth import load_pth, load_state_dict  # noqa: F401
    from nst_jax.weights.registry import REGISTRY, Source, get_source  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nst_jax.weights' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"nst_jax.weights.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
