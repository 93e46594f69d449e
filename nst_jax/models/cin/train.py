"""The CIN family's training contract: Magenta's image_stylization recipe and fine-tuning new styles
(`nst_jax.models.cin`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax.models import magenta_loss
from nst_jax.models.cin.net import apply
from nst_jax.models.cin.spec import NAME, TransformerSpec, check_params, init_params, preset, spec_from_config
from nst_jax.stability import StabilityTerm
from nst_jax.typing import Array, Params

# ----------------------------------------------------------------------------------------------------
# The family contract: training (Magenta's image_stylization recipe) and fine-tuning new styles
#
# For content images c, style labels y (one per example) and the style set's Gram targets G_y:
#   g = apply(params, c, one_hot(y))
#   loss = sum_l cw_l * mean_{n,h,w,c} (phi_l(g) - phi_l(c))^2 + sum_l sw_l * mean_{n,i,j} (gram_l(g) - G_y,l)^2
# with phi the VGG16 loss network (average pooling) and gram(f) = f^T f / (H * W) (not divided by C), as
# Magenta's learning.py defines them; no total-variation term.


@dataclasses.dataclass(frozen=True)
class CINLoss(magenta_loss.GramLossTerms):
    """The static (hashable) part of the CIN training loss.

    Attributes:
      content_layers, content_weights, style_layers, style_weights: the VGG16 taps (`magenta_loss.GramLossTerms`,
        with `taps` and `wants_step`).
      vgg: the loss network's identity.
      spec: the transformer's layout (its `num_styles` is the table size, grown rows included).
      dtype: compute dtype.
      num_styles: S, the number of images in the style set (Gram targets).
      style_offset: the table row of style image 0 (the first new row when fine-tuning, else 0).
      stability: the training-time stability term (`nst_jax.stability`; off unless `config.stability_weight`).
    """

    vgg: Any
    spec: TransformerSpec
    dtype: str = "float32"
    num_styles: int = 1
    style_offset: int = 0
    stability: StabilityTerm = StabilityTerm()


def _cfg(config: Any, key: str, default: Any = None) -> Any:
    try:
        return config.get(key, default)
    except (AttributeError, KeyError):
        return default


def _base_spec(init_from: str) -> TransformerSpec:
    """The layout of the network fine-tuning starts from (no weights are read for a workdir)."""
    from nst_jax.errors import NstError

    if init_from == "multistyle26":
        return preset("multistyle26")
    from nst_jax import checkpoints
    from nst_jax.models.trained import config_from_dict

    try:
        saved, _ = checkpoints.latest_config(init_from)
    except Exception as e:  # noqa: BLE001 - reported as a config error with the reason
        raise NstError(f"config.init_from: {init_from} is neither 'multistyle26' nor a training workdir ({e})"
                       ) from None
    if str(saved.get("model", "adain")) != NAME:
        raise NstError(f"config.init_from: {init_from} holds a {saved.get('model', 'adain')} model, not cin")
    return train_spec(config_from_dict(saved))


def train_spec(config: Any) -> TransformerSpec:
    """The transformer a training config builds: `spec_from_config`, or with `config.init_from` the base
    network's layout with its table grown by `config.cin.num_styles` (K new styles) rows."""
    init_from = str(_cfg(config, "init_from", "") or "")
    if not init_from:
        return spec_from_config(config)
    recorded = _cfg(config.cin, "init_spec", None)
    if recorded:
        base = TransformerSpec.from_dict(recorded.to_dict() if hasattr(recorded, "to_dict") else dict(recorded))
    else:
        base = _base_spec(init_from)
    k = int(config.cin.num_styles)
    return base.with_styles(base.num_styles + k)


def record_base_layout(config: Any) -> None:
    """Write the layout of `config.init_from` into `config.cin.init_spec` (a `TransformerSpec.to_dict()`).

    The fine-tuned run's saved config then rebuilds its grown table by itself: loading it needs neither the base
    workdir nor its config. A config that already records a layout keeps it.
    """
    import contextlib

    if not str(_cfg(config, "init_from", "") or "") or _cfg(config.cin, "init_spec", None):
        return
    layout = _base_spec(str(config.init_from)).to_dict()
    unlocked = config.unlocked() if hasattr(config, "unlocked") else contextlib.nullcontext()
    with unlocked:
        config.cin.init_spec = layout


def _init_params(key: Array, config: Any) -> Params:
    """`init_params` at the trained shape: the grown table for a fine-tuning config."""
    return init_params(key, train_spec(config) if not isinstance(config, TransformerSpec) else config)


def inference_setup_trained(config: Any) -> tuple[dict[str, Any], TransformerSpec]:
    """(frozen, static) of a model trained or fine-tuned with `config` (the grown table when fine-tuned)."""
    return {}, train_spec(config)


def _loss_static(config: Any, vgg_spec: Any = None) -> CINLoss:
    content, style = magenta_loss.parse_layers(config)
    spec = train_spec(config)
    k = int(config.cin.num_styles)
    offset = spec.num_styles - k if _cfg(config, "init_from", "") else 0
    return CINLoss(content[0], content[1], style[0], style[1], vgg_spec, spec, str(config.dtype), k, offset,
                   StabilityTerm.from_config(config))


# Magenta's Gram matrix (shared with the arbitrary family; kept under its old name here)
magenta_gram = magenta_loss.gram


def validate_config(config: Any) -> None:
    """Raise `NstError` naming the key of any CIN-specific value the trainer cannot use."""
    from nst_jax.errors import NstError

    if int(config.image_size) % 4:
        raise NstError(f"config.image_size must be a multiple of 4 (the transformer downsamples twice), "
                       f"got {config.image_size}")
    if int(config.cin.num_styles) < 1:
        raise NstError(f"config.cin.num_styles must be positive, got {config.cin.num_styles}")
    try:
        train_spec(config)
    except ValueError as e:
        raise NstError(f"config.cin: {e}") from None
    # the loop saves the config after validation: the run's own config.json then holds the base's layout
    record_base_layout(config)
    from nst_jax import data

    src = data.open_source(config.style_images, split=_cfg(config, "style_images_split", "train") or "train",
                           image_key=config.image_key, data_dir=config.tfds_data_dir or None)
    if len(src.items) != int(config.cin.num_styles):
        raise NstError(f"config.cin.num_styles is {config.cin.num_styles} but config.style_images ({src.name}) "
                       f"holds {len(src.items)} images")
    _loss_static(config)


def setup(config: Any) -> tuple[dict[str, Any], CINLoss]:
    """The frozen loss network and style Gram targets, and the static loss configuration.

    Returns:
      ({"vgg": VGG16 params, "style_grams": {layer: (S, C, C)}}, CINLoss).
    """
    from nst_jax import vgg as vgg_mod
    from nst_jax.training import load_image_set

    static = _loss_static(config)
    last = vgg_mod.deepest(static.taps, "vgg16")
    vgg_params, vgg_spec = magenta_loss.load_loss_network(config.vgg_weights, last)
    static = dataclasses.replace(static, vgg=vgg_spec)
    styles, _ = load_image_set(config, "style_images")
    grams = _style_grams(vgg_params, jnp.asarray(styles), vgg_spec, static.style_layers)
    return {"vgg": vgg_params, "style_grams": grams}, static


def _style_grams(vgg_params: Mapping, styles: Array, vgg_spec: Any, layers_: tuple[str, ...]) -> dict:
    from nst_jax import vgg as vgg_mod

    # one image at a time: a large style set at 256 px need not fit in memory at once
    fn = jax.jit(lambda p, x: {k: magenta_gram(v) for k, v in vgg_mod.encode(p, x, vgg_spec, layers_).items()})
    per = [fn(vgg_params, styles[i:i + 1]) for i in range(styles.shape[0])]
    return {k: jnp.concatenate([g[k] for g in per]) for k in layers_}


def compute_loss(params: Mapping, vgg_params: Mapping, style_grams: Mapping[str, Array], content: Array,
                 style_id: Array, static: CINLoss, step: Array | None = None) -> tuple[Array, dict[str, Array]]:
    """Magenta's CIN training loss of one batch.

    Args:
      params: the transformer (differentiated).
      vgg_params: the frozen VGG16.
      style_grams: {layer: (S, C, C)} Gram targets of the style set.
      content: (N, H, W, 3) in [0, 1].
      style_id: (N,) int table rows (style image `style_id - static.style_offset`).
      static: the loss configuration.
      step: the training step (the stability term's warps; needed when `static.stability` is on).

    Returns:
      (loss, {"loss", "loss_content", "loss_style" [, "loss_stability"] (weighted, summing to loss),
              "style/<layer>" [, "stability"] (unweighted)}).
    """
    from nst_jax import vgg as vgg_mod

    dt = jnp.dtype(static.dtype)
    w = jax.nn.one_hot(style_id, static.spec.num_styles, dtype=jnp.float32)
    g = apply(params, content.astype(jnp.float32), w, static.spec)
    n = content.shape[0]
    feats = vgg_mod.encode(vgg_params, jnp.concatenate([g, content.astype(jnp.float32)]).astype(dt), static.vgg,
                           static.taps)
    loss_c = magenta_loss.content_loss({k: v[:n] for k, v in feats.items()},
                                       {k: v[n:] for k, v in feats.items()},
                                       (static.content_layers, static.content_weights))
    idx = style_id - static.style_offset
    targets = {layer: jnp.take(style_grams[layer], idx, axis=0) for layer in static.style_layers}
    loss_s, per_layer = magenta_loss.style_loss({k: v[:n] for k, v in feats.items()}, targets,
                                                (static.style_layers, static.style_weights))
    loss = loss_c + loss_s
    metrics = {"loss": loss, "loss_content": loss_c, "loss_style": loss_s}
    metrics.update({f"style/{k}": v for k, v in per_layer.items()})
    return static.stability.add(loss, metrics, lambda x: apply(params, x, w, static.spec), content.astype(jnp.float32),
                                g, step)


def loss_fn(params: Mapping, frozen: Mapping, batch: Mapping[str, Array], static: CINLoss):
    """`compute_loss` on the family contract: batch {"content", "style_id"} (and "step" for the stability term)."""
    return compute_loss(params, frozen["vgg"], frozen["style_grams"], batch["content"], batch["style_id"], static,
                        batch.get("step"))


@dataclasses.dataclass(frozen=True)
class _Sampler:
    spec: TransformerSpec


@jax.jit
def _sample_jit(params: Mapping, content: Array, style_id: Array, sampler: _Sampler) -> Array:
    w = jax.nn.one_hot(style_id, sampler.spec.num_styles, dtype=jnp.float32)
    return apply(params, content, w, sampler.spec)


jax.tree_util.register_static(_Sampler)


def sample(params: Mapping, frozen: Mapping, samples: Mapping[str, Array], static: CINLoss) -> Array:
    """Each sample content image stylized with the table row `samples["style_id"]` of the same index."""
    del frozen
    return _sample_jit(params, samples["content"], samples["style_id"], _Sampler(static.spec))


class OffsetIndexStream:
    """An `IndexStream` over the K style images whose indices are shifted to their table rows."""

    def __init__(self, inner: Any, offset: int):
        self.inner = inner
        self.offset = int(offset)
        self.skipped = 0

    def __iter__(self) -> OffsetIndexStream:
        return self

    def __next__(self) -> np.ndarray:
        return (next(self.inner) + np.int32(self.offset)).astype(np.int32)

    def get_state(self) -> dict:
        """The inner stream's position (JSON-able)."""
        return self.inner.get_state()

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continue exactly where `get_state` was taken."""
        self.inner.set_state(state)


def open_streams(config: Any, on_skip: Any) -> tuple[dict, dict]:
    """The content image stream, a "style_id" stream (a random style per example) and the sample inputs.

    Returns:
      ({"content": ImageStream, "style_id": index stream}, {"content", "style" (the sampled rows' style
      images), "style_id"}).
    """
    from nst_jax.training import IndexStream, load_image_set, open_image_streams

    streams, samples = open_image_streams(config, ("content",), on_skip)
    k = int(config.cin.num_styles)
    offset = train_spec(config).num_styles - k if _cfg(config, "init_from", "") else 0
    shards = jax.process_count()
    # its own seed, apart from the content stream's
    seed = int(np.random.SeedSequence([int(config.seed), 1]).generate_state(1)[0])
    streams["style_id"] = OffsetIndexStream(
        IndexStream(k, int(config.batch_size) // shards, seed, jax.process_index()), offset)
    styles, _ = load_image_set(config, "style_images")
    n = samples["content"].shape[0]
    ids = np.arange(n) % k
    return streams, {"content": samples["content"], "style": styles[ids],
                     "style_id": (ids + offset).astype(np.int32)}


def _grow(params: Mapping[str, Any], k: int) -> dict:
    """Every gamma/beta table with K more rows, each the mean of the existing rows (a start inside the span
    of the trained styles converges faster than gamma = 1, beta = 0)."""
    def walk(node: Any, key: str = "") -> Any:
        if isinstance(node, Mapping):
            return {kk: walk(v, kk) for kk, v in node.items()}
        a = np.asarray(node, np.float32)
        if key in ("gamma", "beta"):
            new = np.repeat(a.mean(axis=0, keepdims=True), k, axis=0)
            return np.concatenate([a, new], axis=0)
        return a
    return walk(params)


def start_params(config: Any, base: Params) -> Params:
    """The network fine-tuning starts from: `base` (the trained `config.init_from`, loaded by the loop through
    `nst_jax.models.pretrained`) with its tables grown by K = `config.cin.num_styles` rows."""
    grown = _grow(base, int(config.cin.num_styles))
    check_params(grown, train_spec(config), "fine-tuning start")
    return grown


def trainable_mask(params: Mapping[str, Any], config: Any) -> Any:
    """Fine-tuning: True only on the K new rows of every gamma/beta table; None (everything) for a fresh run."""
    if not _cfg(config, "init_from", ""):
        return None
    k = int(config.cin.num_styles)

    def walk(node: Any, key: str = "") -> Any:
        if isinstance(node, Mapping):
            return {kk: walk(v, kk) for kk, v in node.items()}
        m = np.zeros(np.shape(node), bool)
        if key in ("gamma", "beta"):
            m[-k:] = True
        return jnp.asarray(m)
    return walk(params)
