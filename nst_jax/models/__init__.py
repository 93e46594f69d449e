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
- `own_condition(params, frozen, content, masks, static) -> Condition`: the content's own condition, what a strength
  map (`Stylizer.stylize(strength_map=)`) places as the last of K conditions where the style is to be weaker: with
  `masks` (N, H, W, K) as `stylize_masked` takes them, the condition that makes `stylize_masked` give the family's
  alpha-0 output wherever the last mask is 1 (masks None: for `stylize`, i.e. `stylize(own_condition) == stylize
  (alpha=0)`). AdaIN: the content's relu4_1 mean/std over the region of the last mask (so its features pass
  unchanged there); arbitrary: the content image's own style vector. None: the family has no such condition
  (CIN: no row of its table reproduces the content).
- `alpha_pixels`: the family's alpha mixes output pixels with the content's (its alpha-0 output is the content
  itself, CIN): a strength map then runs one pass at full strength and mixes the pixels per position.
- `stats_forward(params, frozen, content, condition, masks, alpha, norm_stats, static) -> (images, stats)`: the
  statistics seam, `stylize` (masks None) or `stylize_masked` split at the normalisation statistics. With
  `norm_stats` None it computes the content-side statistics of every normalisation layer and returns them with
  the image it makes with them (the per-frame output, to float32 rounding); given `norm_stats` (a tree as it
  returns, e.g. smoothed across video frames) it uses them instead of its own. Stats are a pytree of per-layer
  `MeanVar`s, (mean, var) tuples or {"mean", "var"} dicts with a leading axis N (AdaIN: the content's relu4_1
  `MeanVar`, (N, 1, 1, 512) each, or (N, K, 512) per region with masks; CIN and arbitrary: every instance norm).
  Video stabilisation and the live page's smoothing are written once on top of it (`nst_jax.smoothing`). None:
  the family cannot smooth its statistics (`nst-jax video --stabilize` then asks for 0).
- `video_strength`: `nst-jax video --stabilize`'s default for the family (0: per-frame unless asked).
- `caps`: what it can do (style images or a fixed table, alpha, masks, colour modes), so the command line and
  the live page check requests against it.
- `inference_setup(config) -> (frozen, static)`: what a model trained with `config` runs with.
- `encoder_setup(config, given, origin) -> (frozen, static)`: families whose frozen part is an encoder the user
  may choose (`--vgg`): the one the model was trained with (named by `config`), or `given` if it has that
  identity (`origin` names the model in errors). `nst_jax.models.open` calls it instead of `inference_setup`;
  None: the family takes no encoder.
- `dtypes`: the compute dtypes its inference supports ("float32", and "bfloat16" where it was measured to work).
- `stats_type`: the NamedTuple a condition reads as under the statistics API (`stats_type(**condition)`; AdaIN's
  `StyleStats`), or None where conditions are not a style's statistics.
- `num_styles(params) -> int`: the size of the style table (families with one).
- `compiler_options`: XLA options for the inference programs on the CPU (`nst_jax.runtime.jit`), e.g.
  `runtime.EIGEN_CONVOLUTIONS` for networks of narrow layers.
- `tiling`: a `Tiling` (`nst_jax.tiling`): what tiled stylization needs to know about the network (halo,
  alignment, per-pixel memory, window moments of its normalisation layers, its default statistics source).
  None: the family is never tiled (`--tile` asks for 0).
- `export`: an `Export` (`nst-jax export`): which `ExportBuilder` makes the family's ONNX graphs, named as
  "module:function" so that no model imports the export code, and whether onnx2tf converts them to LiteRT.
  None: the family cannot be exported.

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

The signatures are `Protocol`s in `nst_jax.models.protocols`, grouped there as `INFERENCE` and `TRAINING` (the
record stays flat: `family.stylize`, ...). A family defined elsewhere joins at run time with
`register(family)` (checked against those signatures) and leaves with `unregister(name)`.

Parameters are plain pytrees throughout (no NNX modules): frozen ported weights are arrays passed in, trainable
ones are the optimiser's tree.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from nst_jax.errors import NstError
from nst_jax.models import protocols as P

# name -> module path (imported on first use, so `nst-jax --help` stays fast)
MODELS: dict[str, str] = {
    "adain": "nst_jax.models.adain",
    "cin": "nst_jax.models.cin",
    "arbitrary": "nst_jax.models.arbitrary",
}


class MeanVar(NamedTuple):
    """One normalisation layer's content statistics: per-channel mean and the variance it divides by."""

    mean: Any
    var: Any


@dataclasses.dataclass(frozen=True)
class Caps:
    """What a family can do, for the command line and the live page to check requests against.

    Attributes:
      style_images: a style is an image (AdaIN, arbitrary).
      style_table: a style is an index into (weights over) a trained table (CIN).
      alpha: a content/style trade-off is meaningful.
      masks: styles can be placed per pixel.
      color_modes: supported `preserve_color` modes.
      strength_map: per-pixel style strength (`Stylizer.stylize(strength_map=)`, `--strength-map`): the family has
        an `own_condition` or mixes pixels by alpha (`alpha_pixels`).
    """

    style_images: bool
    style_table: bool = False
    alpha: bool = True
    masks: bool = True
    color_modes: tuple[str, ...] = ("luminance", "histogram")
    strength_map: bool = False

    def to_dict(self) -> dict:
        """JSON-friendly form (the live page's `hello`)."""
        return dataclasses.asdict(self)


class ExportBuilder(Protocol):
    """A family's exporter (`nst_jax.export.families`): the ONNX graphs of a loaded model.

    `stylizer` is a `nst_jax.stylize.Stylizer` of the family; `condition` is None for a style input, else the
    style to bake in. Returns [(role, `nst_jax.export.graph.Graph`, metadata)], the "stylizer" first, then a
    "style_encoder" made at `encoder_size` (None: symbolic) if the family has one.
    """

    def __call__(self, stylizer: Any, condition: Any | None, *, layout: str, size: tuple[int, int] | None,
                 style_desc: str | None = None, encoder_size: tuple[int, int] | None = None
                 ) -> list[tuple[str, Any, dict[str, str]]]: ...


@dataclasses.dataclass(frozen=True)
class Export:
    """What `nst-jax export` does with a family.

    Attributes:
      builder: "module:function" of its `ExportBuilder`, imported on first use (the models never import the
        export code, which imports them).
      tflite: onnx2tf converts its graphs to LiteRT (measured, not assumed).
      tflite_encoder_size: the fixed (H, W) its style encoder is made at for LiteRT (None: it has none).
    """

    builder: str
    tflite: bool = False
    tflite_encoder_size: tuple[int, int] | None = None

    def load(self) -> ExportBuilder:
        """The builder function."""
        module, _, name = self.builder.partition(":")
        return getattr(importlib.import_module(module), name)


class Moments(NamedTuple):
    """Weighted moments of one normalisation layer over a window: the total weight (count), the weighted mean and
    the weighted sum of squared deviations from it (m2). Tiles' moments combine exactly (Chan et al.)."""

    count: Any
    mean: Any
    m2: Any


@dataclasses.dataclass(frozen=True)
class Tiling:
    """What tiled stylization (`nst_jax.tiling`) needs from a family.

    A tile of one fixed shape runs the network with the whole image's normalisation statistics (the statistics
    seam); its outer `halo` pixels are thrown away and the cores partition the image, so tiles join exactly.

    Attributes:
      halo: pixels of context each side of a tile's core, >= the network's receptive-field radius (every output
        pixel depends only on inputs within `halo` of it, once the statistics are fixed), a multiple of `align`.
        Checked by perturbation in tests/test_tiling.py.
      align: tile offsets and sizes are multiples of this, so every strided or pooled layer's grid in a tile
        coincides with the whole image's (AdaIN: three 2x2 poolings, 8; CIN and arbitrary: two stride-2
        convolutions, 4). The image is reflect-padded at the bottom/right to a multiple of it first (what CIN and
        arbitrary do themselves; AdaIN's ceil-mode pooling does not, so there the last < 8 rows and columns of an
        unaligned image differ slightly from the untiled picture).
      bytes_per_pixel: measured peak working memory of one forward pass per input pixel
        (`compile().memory_analysis()`, benchmarks/tiling.py), used to fit tiles to a memory budget.
      moments: `moments(params, frozen, content, condition, masks, alpha, norm_stats, weight, static) ->
        {layer: Moments}`, each normalisation layer's content-side moments over the pixels `weight` (N, H, W, 1)
        selects (averaged onto the layer's grid), the network run with `norm_stats` (None: its own), keys in
        network order. Arrays shaped as the layer's statistics ((N, 1, 1, C), or AdaIN's per-region (N, K, C)).
      finish: `finish({layer: Moments of float64 arrays}) -> norm_stats`, the statistics tree `stats_forward`
        takes (biased or unbiased variance, epsilon, structure: the family's own convention).
      prepare: None, or `prepare(params, frozen, image, condition, masks, alpha, static) -> (condition, alpha)`:
        fold what depends on the whole image into the condition before tiling (the arbitrary network's strength
        mixes in the content image's own style vector), `image` the whole image or its thumbnail.
      default_stats: "exact" or "thumbnail", the `--tile-stats` default (chosen by measurement, docs/tiling.md).
      own_condition: None, or `own_condition(norm_stats) -> Condition`: a strength map's content-own condition
        (`Family.own_condition`, leaves with a leading axis N) read off the statistics the tiles run with, the
        strength weights being the masks and the own condition the last of them (AdaIN: the last region's
        relu4_1 mean/std, so that region's AdaIN is exactly the identity whichever statistics the tiles use).
        None: `nst_jax.strength` computes `Family.own_condition` once from the whole image (or its thumbnail).
    """

    halo: int
    align: int
    bytes_per_pixel: float
    moments: Callable[..., Any]
    finish: Callable[..., Any]
    prepare: Callable[..., Any] | None = None
    default_stats: str = "exact"
    own_condition: Callable[..., Any] | None = None


@dataclasses.dataclass(frozen=True)
class Family:
    """The functions and capabilities of one model family (see the module docstring).

    Each callable field has its `Protocol` in `nst_jax.models.protocols`, which groups them: `INFERENCE`
    (condition, blend, stylize, stylize_masked, stats_forward, inference_setup, encoder_setup, num_styles) and
    `TRAINING` (init_params, setup, open_streams, loss_fn, sample, trainable_mask, start_params,
    validate_config); `inference_fields()` / `training_fields()` give a family's own. The rest are data.
    """

    name: str
    caps: Caps
    # (fields in their historical order; the groups are protocols.INFERENCE and protocols.TRAINING)
    init_params: P.InitParamsFn
    setup: P.SetupFn | None
    open_streams: P.OpenStreamsFn | None
    loss_fn: P.LossFn | None
    sample: P.SampleFn | None
    condition: P.ConditionFn
    stylize: P.StylizeFn
    stylize_masked: P.StylizeMaskedFn | None = None
    blend: P.BlendFn | None = None
    trainable_mask: P.TrainableMaskFn | None = None
    start_params: P.StartParamsFn | None = None
    validate_config: P.ValidateConfigFn | None = None
    inference_setup: P.InferenceSetupFn | None = None
    num_styles: P.NumStylesFn | None = None
    compiler_options: dict[str, str] | None = None
    export: Export | None = None
    stats_forward: P.StatsForwardFn | None = None
    video_strength: float = 0.0
    dtypes: tuple[str, ...] = ("float32",)
    encoder_setup: P.EncoderSetupFn | None = None
    stats_type: type | None = None
    own_condition: P.OwnConditionFn | None = None
    alpha_pixels: bool = False
    tiling: Tiling | None = None

    def inference_fields(self) -> dict[str, Any]:
        """The inference part: {field: function} for the fields of `protocols.INFERENCE` this family has."""
        return {k: getattr(self, k) for k in P.INFERENCE if getattr(self, k) is not None}

    def training_fields(self) -> dict[str, Any]:
        """The training part: {field: function} for the fields of `protocols.TRAINING` this family has."""
        return {k: getattr(self, k) for k in P.TRAINING if getattr(self, k) is not None}

    def mix(self, conditions: Any, weights: Any) -> Any:
        """`blend` if the family has its own, else the generic convex mix."""
        return (self.blend or blend_conditions)(conditions, weights)

    def norm_stats(self, params: Any, frozen: Any, content: Any, condition: Any, masks: Any, alpha: Any,
                   static: Any) -> Any:
        """`stats_forward`'s own statistics alone: jitted, the layers after the last normalisation are dead code
        (AdaIN: the decoder), so analysing a frame costs only the network up to its last statistics."""
        return self.stats_forward(params, frozen, content, condition, masks, alpha, None, static)[1]


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


def register(family: Family, *, replace: bool = False) -> Family:
    """Make `family` available by its name at run time (a family defined outside nst_jax, e.g. a test's).

    Its functions are checked against the contract's signatures first (`protocols.check_family`). Compiled
    programs are cached per family object (`nst_jax.stylize`), so a family registered again under the same name
    never runs the previous one's programs.

    Args:
      family: the record; `family.name` becomes a key of `MODELS` (valued with the module that defines its
        `condition`, for messages).
      replace: allow taking over a name that is already registered.

    Returns:
      `family`.

    Raises:
      NstError: the name is taken (and not `replace`), or a function does not fit its Protocol.
    """
    P.check_family(family)
    if family.name in MODELS and not replace:
        raise NstError(f"a model family called {family.name!r} is already registered (pass replace=True)")
    MODELS[family.name] = getattr(family.condition, "__module__", None) or "<registered>"
    _CACHE[family.name] = family
    return family


def unregister(name: str) -> None:
    """Forget the family called `name` (`register`'s inverse; a later `get(name)` fails unless it is
    registered again). Unknown names are ignored."""
    MODELS.pop(name, None)
    _CACHE.pop(name, None)


def _from_module(module: Any, name: str) -> Family:
    # A field the module does not define takes its default (None for the required ones).
    found = {f.name: getattr(module, f.name, None if f.default is dataclasses.MISSING else f.default)
             for f in dataclasses.fields(Family) if f.name not in ("name", "caps")}
    caps = getattr(module, "CAPS", None) or Caps(style_images=True)
    return Family(name=name, caps=caps, **found)


__all__ = ["MODELS", "Caps", "Export", "ExportBuilder", "Family", "MeanVar", "Moments", "Tiling", "blend_conditions",
           "get", "register", "unregister"]
