"""One compiled copy of each family function (and of programs composed over them) per process.

`Stylizer`, `nst_jax.smoothing`, `nst_jax.strength` and `nst_jax.tiling` share these programs, so a model
opened twice, or a feature on top of a model, never compiles the same pass again.
"""

from __future__ import annotations

import weakref
from typing import Any

from nst_jax import models, runtime

# (id(family), what) -> program. Keyed by the family object, not its name: a family registered again under the same
# name (`models.register(..., replace=True)`) gets its own programs. An entry lives as long as its family does.
_JITTED: dict[tuple[int, str], Any] = {}


def jitted(family: models.Family, what: str, build: Any = None) -> Any:
    """One jitted copy of each family function per process (static identity as a static argument); with
    `build`, the program `build(family)` composed over the family's functions, cached under `what` (e.g.
    `nst_jax.smoothing`'s smoothed pass)."""
    key = (id(family), what)
    if key not in _JITTED:
        if not any(k[0] == key[0] for k in _JITTED):
            # ids are reused after collection: drop the family's programs with it
            weakref.finalize(family, _forget, key[0])
        fn = getattr(family, what) if build is None else build(family)
        _JITTED[key] = runtime.jit(fn, family.compiler_options, static_argnames="static")
    return _JITTED[key]


def _forget(family_id: int) -> None:
    for k in [k for k in _JITTED if k[0] == family_id]:
        del _JITTED[k]


__all__ = ["jitted"]
