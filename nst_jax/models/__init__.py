"""Model families, looked up by name: `MODELS[config.model]` (a plain dict, as flax picks `config.model`).

A family is one module of this package. What the rest of nst-jax needs from it is a `Family` record, either
defined by the module as `FAMILY` or assembled from module-level functions of the same names:

Inference (pure, jit-able; NHWC float32 RGB in [0, 1] at every boundary; `static` is the hashable identity the
family's functions are specialised on, e.g. the encoder's `VGGSpec` for AdaIN):
- `condition(params, frozen, style, static) -> Condition`: what a style becomes. AdaIN: style images ->
  {"mean", "std"} of relu4_1, (N, 1, 1, 512) each; CIN: weights over its table of styles (N, S);
  arbitrary: the predicted style vector.
- `blend(conditions, weights) -> Condition`: conditions stacked on a leading K axis, a convex mix of every leaf
  (`blend_conditions`, the same for every family: each family's stylization is affine in its condition).
- `stylize(params, frozen, content, condition, alpha, static) -> images`: (N, H, W, 3), cropped to the content.
- `stylize_masked(params, frozen, content, conditions, masks, alpha, static) -> images`: conditions (N, K, ...),
  masks (N, H, W, K) at the content's resolution, mixed per position in one pass.
- `caps`: what it can do (style images or a fixed table, alpha, masks, colour modes), so the command line and
  the live page check requests against it.
- `inference_setup(config) -> (frozen, static)`: what a model trained with `config` runs with.
- `num_styles(params) -> int`: the size of the style table (families with one).
- `compiler_options`: XLA options for the inference programs on the CPU (`nst_jax.runtime.jit`), e.g.
  `runtime.EIGEN_CONVOLUTIONS` for networks of narrow layers.

Training (the family-neutral loop in `nst_jax.train`):
- `init_params(key, config) -> Params`: the trainable tree; `jax.eval_shape` of it checks and restores
  checkpoints.
- `setup(config) -> (frozen, static)`: the frozen arrays the loss needs (e.g. the loss network) and the hashable
  static part of the loss (weights, layers, dtype, identities), validated with errors naming `config.<key>`.
- `open_streams(config, on_skip) -> (streams, samples)`: resumable host iterators (`next`, `get_state`,
  `set_state`) whose batches form the `batch` dict, and fixed sample inputs for the grids.
- `loss_fn(params, frozen, batch, static) -> (loss, metrics)`: pure; the loop jits one step with donation.
- `sample(params, frozen, samples, static) -> images`: rows of the sample grids.
- `trainable_mask(params, config) -> tree of bool arrays | None`: only True elements change (fine-tuning).
- `start_params(config, base) -> Params`: the parameters fine-tuning starts from, given the trained `base` the
  loop loaded for `config.init_from` (`nst_jax.models.pretrained`).
- `validate_config(config)`: family-specific checks, errors naming `config.<key>`.

Parameters are plain pytrees throughout (no NNX modules): frozen ported weights are arrays passed in, trainable
ones are the optimiser's tree.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

from nst_jax.errors import NstError

# name -> module path (imported on first use, so `nst-jax --help` stays fast)
MODELS: dict[str, str] = {
    "adain": "nst_jax.models.adain",
    "cin": "nst_jax.models.cin",
    "arbitrary": "nst_jax.models.arbitrary",
}


@dataclasses.dataclass(frozen=True)
class Caps:
    """What a family can do, for the command line and the live page to check requests against.

    Attributes:
      style_images: a style is an image (AdaIN, arbitrary).
      style_table: a style is an index into (weights over) a trained table (CIN).
      alpha: a content/style trade-off is meaningful.
      masks: styles can be placed per pixel.
      color_modes: supported `preserve_color` modes.
    """

    style_images: bool
    style_table: bool = False
    alpha: bool = True
    masks: bool = True
    color_modes: tuple[str, ...] = ("luminance", "histogram")

    def to_dict(self) -> dict:
        """JSON-friendly form (the live page's `hello`)."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Family:
    """The functions and capabilities of one model family (see the module docstring)."""

    name: str
    caps: Caps
    init_params: Callable[..., Any]
    setup: Callable[..., Any] | None
    open_streams: Callable[..., Any] | None
    loss_fn: Callable[..., Any] | None
    sample: Callable[..., Any] | None
    condition: Callable[..., Any]
    stylize: Callable[..., Any]
    stylize_masked: Callable[..., Any] | None = None
    blend: Callable[..., Any] | None = None
    trainable_mask: Callable[..., Any] | None = None
    start_params: Callable[..., Any] | None = None
    validate_config: Callable[..., Any] | None = None
    inference_setup: Callable[..., Any] | None = None
    num_styles: Callable[..., Any] | None = None
    compiler_options: dict[str, str] | None = None

    def mix(self, conditions: Any, weights: Any) -> Any:
        """`blend` if the family has its own, else the generic convex mix."""
        return (self.blend or blend_conditions)(conditions, weights)


def blend_conditions(conditions: Any, weights: Any) -> Any:
    """Convex mix of K conditions stacked on a leading axis: sum_k w_k * c_k for every leaf.

    Exact for every family: AdaIN's output is affine in the style statistics, CIN's gamma/beta are linear in the
    style weights, the arbitrary network's in its style vector.
    """
    import jax
    import jax.numpy as jnp

    def mix(leaf):
        w = jnp.asarray(weights, leaf.dtype).reshape((-1,) + (1,) * (leaf.ndim - 1))
        return jnp.sum(leaf * w, axis=0)

    return jax.tree.map(mix, conditions)


_CACHE: dict[str, Family] = {}


def get(name: str) -> Family:
    """The family called `name` (a key of `MODELS`).

    Raises:
      NstError: an unknown name (the message lists the known ones).
    """
    if name in _CACHE:
        return _CACHE[name]
    path = MODELS.get(str(name))
    if path is None:
        raise NstError(f"unknown model family {name!r}; known: {', '.join(MODELS)}")
    module = importlib.import_module(path)
    family = getattr(module, "FAMILY", None)
    if family is None:
        family = _from_module(module, name)
    _CACHE[name] = family
    return family


def _from_module(module: Any, name: str) -> Family:
    fields = {f.name for f in dataclasses.fields(Family)} - {"name", "caps"}
    found = {f: getattr(module, f, None) for f in fields}
    caps = getattr(module, "CAPS", None) or Caps(style_images=True)
    return Family(name=name, caps=caps, **found)


__all__ = ["MODELS", "Caps", "Family", "blend_conditions", "get"]
