"""The typed family contract: one `Protocol` per callable field of `nst_jax.models.Family`, in two groups.

`INFERENCE` is what stylization, video, the live page and export call (pure and jit-able where they run inside a
program: NHWC float32 RGB in [0, 1] at every boundary; `static` the hashable identity the functions are specialised
on, passed by keyword because the programs take it as a static argument). `TRAINING` is what the family-neutral
loop (`nst_jax.train`) calls (`static` positional there: the loop binds it with `partial`). The record keeps its
fields flat (`family.stylize`, ...); the groups name them, and `check_family` holds a family's functions to these
signatures when it is registered (`nst_jax.models.register`), so a wrong arity fails there, with the field's
name, instead of inside a trace.

Arguments before the `/` are positional: families name them as they like.
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol

from nst_jax.errors import NstError

# Readable names for the trees that flow through the contract (all are pytrees of arrays).
Params = Any      # the trainable tree
Frozen = Any      # frozen arrays (ported encoders, loss networks)
Static = Any      # hashable identity (specs, loss settings)
Condition = Any   # what a style becomes (per family; leading axis N)
NormStats = Any   # per-layer (mean, var) statistics of the normalisation layers, leading axis N
Images = Any      # (N, H, W, 3) float32 in [0, 1]
Config = Any      # an ml_collections.ConfigDict (or a dict read from a run's config.json)


# ----------------------------------------------------------------------------------------------------
# Inference


class ConditionFn(Protocol):
    """Style images (N, H, W, 3), or weights over a style table (N, S), -> the family's `Condition`."""

    def __call__(self, params: Params, frozen: Frozen, style: Any, /, static: Static) -> Condition: ...


class BlendFn(Protocol):
    """K conditions stacked on a leading axis, and K weights summing to 1 -> their convex mix."""

    def __call__(self, conditions: Condition, weights: Any, /) -> Condition: ...


class StylizeFn(Protocol):
    """content (N, H, W, 3), condition (leading N), alpha (N,) -> images (N, H, W, 3) cropped to the content."""

    def __call__(self, params: Params, frozen: Frozen, content: Images, condition: Condition, alpha: Any, /,
                 static: Static) -> Images: ...


class StylizeMaskedFn(Protocol):
    """conditions (N, K, ...) placed by masks (N, H, W, K) at the content's resolution, in one pass."""

    def __call__(self, params: Params, frozen: Frozen, content: Images, conditions: Condition, masks: Any,
                 alpha: Any, /, static: Static) -> Images: ...


class StatsForwardFn(Protocol):
    """The statistics seam: the pass with the given `norm_stats` (None: its own) -> (images, the own stats)."""

    def __call__(self, params: Params, frozen: Frozen, content: Images, condition: Condition, masks: Any | None,
                 alpha: Any, norm_stats: NormStats | None, /, static: Static) -> tuple[Images, NormStats]: ...


class OwnConditionFn(Protocol):
    """The content's own condition (a strength map's second "style"): weighted by the last of `masks`
    (N, H, W, K + 1), or None -> the condition whose `stylize` is the alpha-0 output."""

    def __call__(self, params: Params, frozen: Frozen, content: Images, masks: Any | None, /,
                 static: Static) -> Condition: ...


class InferenceSetupFn(Protocol):
    """A trained model's `config` -> (frozen, static) it runs with."""

    def __call__(self, config: Config, /) -> tuple[Frozen, Static]: ...


class EncoderSetupFn(Protocol):
    """(config, the encoder the user gave or None, the model's name for errors) -> (frozen, static)."""

    def __call__(self, config: Config, given: Any, origin: str, /) -> tuple[Frozen, Static]: ...


class NumStylesFn(Protocol):
    """The rows of a style table."""

    def __call__(self, params: Params, /) -> int: ...


# ----------------------------------------------------------------------------------------------------
# Training


class InitParamsFn(Protocol):
    """A PRNG key and the config -> fresh trainable parameters."""

    def __call__(self, key: Any, config: Config, /) -> Params: ...


class SetupFn(Protocol):
    """The config -> (frozen arrays of the loss, hashable static part of the loss)."""

    def __call__(self, config: Config, /) -> tuple[Frozen, Static]: ...


class OpenStreamsFn(Protocol):
    """The config and a skip reporter -> (resumable host iterators by batch key, fixed sample inputs)."""

    def __call__(self, config: Config, on_skip: Any, /) -> tuple[dict[str, Any], Any]: ...


class LossFn(Protocol):
    """One batch -> (scalar loss, metrics dict); pure, differentiated in `params`."""

    def __call__(self, params: Params, frozen: Frozen, batch: dict[str, Any], static: Static, /
                 ) -> tuple[Any, dict[str, Any]]: ...


class SampleFn(Protocol):
    """The fixed samples -> rows of the sample grid."""

    def __call__(self, params: Params, frozen: Frozen, samples: Any, static: Static, /) -> Images: ...


class TrainableMaskFn(Protocol):
    """Which parameter elements train (fine-tuning), or None for all."""

    def __call__(self, params: Params, config: Config, /) -> Any | None: ...


class StartParamsFn(Protocol):
    """The parameters fine-tuning starts from, given the loaded base model's."""

    def __call__(self, config: Config, base: Params, /) -> Params: ...


class ValidateConfigFn(Protocol):
    """Raise `NstError` naming `config.<key>` for a value the family cannot use."""

    def __call__(self, config: Config, /) -> None: ...


INFERENCE: dict[str, type] = {
    "condition": ConditionFn, "blend": BlendFn, "stylize": StylizeFn, "stylize_masked": StylizeMaskedFn,
    "stats_forward": StatsForwardFn, "inference_setup": InferenceSetupFn, "encoder_setup": EncoderSetupFn,
    "num_styles": NumStylesFn, "own_condition": OwnConditionFn,
}
TRAINING: dict[str, type] = {
    "init_params": InitParamsFn, "setup": SetupFn, "open_streams": OpenStreamsFn, "loss_fn": LossFn,
    "sample": SampleFn, "trainable_mask": TrainableMaskFn, "start_params": StartParamsFn,
    "validate_config": ValidateConfigFn,
}
CONTRACT: dict[str, type] = {**INFERENCE, **TRAINING}


def _call_shape(protocol: type) -> tuple[int, tuple[str, ...]]:
    """(how many positional arguments, the keyword ones) a caller passes to a function of `protocol`."""
    params = list(inspect.signature(protocol.__call__).parameters.values())[1:]  # drop self
    positional = sum(p.kind is p.POSITIONAL_ONLY for p in params)
    return positional, tuple(p.name for p in params if p.kind is not p.POSITIONAL_ONLY)


def conforms(fn: Any, protocol: type) -> bool:
    """Whether `fn` accepts the calls `protocol` describes (positional arguments, then `static=` etc. by name)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check
        return True
    positional, keywords = _call_shape(protocol)
    try:
        sig.bind(*range(positional), **{k: None for k in keywords})
    except TypeError:
        return False
    return True


def check_family(family: Any) -> None:
    """Raise `NstError` naming each callable field of `family` whose signature does not fit its Protocol."""
    bad = []
    for name, protocol in CONTRACT.items():
        fn = getattr(family, name, None)
        if fn is None:
            continue
        if not callable(fn) or not conforms(fn, protocol):
            bad.append(f"{name} (expected {protocol.__name__}: {_describe(protocol)})")
    if bad:
        raise NstError(f"model family {getattr(family, 'name', '?')!r} does not fit the contract: "
                       + "; ".join(bad))


def _describe(protocol: type) -> str:
    params = list(inspect.signature(protocol.__call__).parameters.values())[1:]
    return "(" + ", ".join(p.name if p.kind is p.POSITIONAL_ONLY else f"{p.name}=" for p in params) + ")"


__all__ = [
    "CONTRACT", "INFERENCE", "TRAINING", "BlendFn", "ConditionFn", "EncoderSetupFn", "InferenceSetupFn",
    "InitParamsFn", "LossFn", "NumStylesFn", "OpenStreamsFn", "OwnConditionFn", "SampleFn", "SetupFn", "StartParamsFn",
    "StatsForwardFn", "StylizeFn", "StylizeMaskedFn", "TrainableMaskFn", "ValidateConfigFn", "check_family",
    "conforms",
]
