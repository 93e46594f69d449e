"""The arbitrary family's training contract: Ghiasi et al.'s recipe and fine-tuning (`nst_jax.models.arbitrary`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax.models.arbitrary.net import transform
from nst_jax.models.arbitrary.params import (
    MULTIPLE,
    PREDICTORS,
    STYLE_SIZE,
    VGG_STATS_LAYERS,
    _arch,
    _cfg,
    init_params,
    transformer_channels,
    tree_shapes,
)
from nst_jax.models.arbitrary.predictor import Net, predict, predict_from_stats, predict_vector, vgg_stats_features
from nst_jax.models.magenta_loss import GramLossTerms
from nst_jax.stability import StabilityTerm
from nst_jax.typing import Array, Params

# ---------------------------------------------------------------------------------------------------------------
# The family contract: training (Ghiasi et al.'s recipe, Magenta's arbitrary_image_stylization_train.py)
#
# For content images c and style images s (one per example, drawn independently):
#   v = predictor(s);  g = transform(c, v)
#   loss = sum_l cw_l * mean (phi_l(g) - phi_l(c))^2 + sum_l sw_l * mean (gram_l(g) - gram_l(s))^2
#          + tv_weight * (mean dy(g)^2 + mean dx(g)^2) / 2
# with phi the VGG16 loss network (average pooling) and gram(f) = f^T f / (H * W) (nst_jax.models.magenta_loss).

TRAIN_ONLY = {"all": ("predictor", "bottleneck", "style_params", "transformer"),
              "predictor": ("predictor", "bottleneck"),  # style image -> style vector
              "transformer": ("style_params", "transformer")}  # style vector and content -> image


@dataclasses.dataclass(frozen=True)
class ArbitraryLoss(GramLossTerms):
    """The static (hashable) part of the arbitrary network's training loss.

    Attributes:
      content_layers, content_weights, style_layers, style_weights: the VGG16 taps (`magenta_loss.GramLossTerms`,
        with `taps`, read on the stylized and content images, and `wants_step`).
      tv_weight: the total-variation weight.
      vgg: the loss network's identity (VGGSpec, average pooling).
      net: the network's static identity (which predictor).
      dtype: compute dtype of the loss network.
      train_only: which parts train (`TRAIN_ONLY`): the others are held with `stop_gradient`, so no gradient is
        computed for them (the loop's mask keeps them bit-identical either way).
      stability: the training-time stability term (`nst_jax.stability`; off unless `config.stability_weight`).
    """

    tv_weight: float
    vgg: Any
    net: Net
    dtype: str = "float32"
    train_only: str = "all"
    stability: StabilityTerm = StabilityTerm()

    @property
    def style_taps(self) -> tuple[str, ...]:
        """The taps read on the style images (the Gram targets, and the predictor's statistics)."""
        from nst_jax.models import magenta_loss

        stats = VGG_STATS_LAYERS if self.net.predictor == "vgg_stats" else ()
        return magenta_loss.in_order(self.style_layers, stats)


def _train_only(config: Any) -> str:
    return str(_cfg(_cfg(config, "arbitrary", None), "train_only", "all"))


def validate_config(config: Any) -> None:
    """Raise `NstError` naming the key of any arbitrary-specific value the trainer cannot use."""
    from nst_jax.errors import NstError
    from nst_jax.models import magenta_loss

    if int(config.image_size) % MULTIPLE:
        raise NstError(f"config.image_size must be a multiple of {MULTIPLE} (the transformer downsamples twice), "
                       f"got {config.image_size}")
    width, dim, predictor = _arch(config)
    if predictor not in PREDICTORS:
        raise NstError(f"config.arbitrary.predictor must be one of {', '.join(PREDICTORS)}, got {predictor!r}")
    if _train_only(config) not in TRAIN_ONLY:
        raise NstError(f"config.arbitrary.train_only must be one of {', '.join(TRAIN_ONLY)}, got "
                       f"{_train_only(config)!r}")
    if min(transformer_channels(width)) < 1:
        raise NstError(f"config.arbitrary.width must give at least one channel per layer, got {width}")
    if dim < 1:
        raise NstError(f"config.arbitrary.bottleneck must be positive, got {dim}")
    if not float(config.total_variation_weight) >= 0:
        raise NstError(f"config.total_variation_weight must be >= 0, got {config.total_variation_weight}")
    magenta_loss.parse_layers(config)


def _loss_static(config: Any, vgg_spec: Any) -> ArbitraryLoss:
    from nst_jax.models import magenta_loss

    content, style = magenta_loss.parse_layers(config)
    _, _, predictor = _arch(config)
    net = Net(predictor, vgg_spec if predictor == "vgg_stats" else None, int(config.image_size))
    return ArbitraryLoss(content[0], content[1], style[0], style[1], float(config.total_variation_weight),
                         vgg_spec, net, str(config.dtype), _train_only(config), StabilityTerm.from_config(config))


def setup(config: Any) -> tuple[dict[str, Any], ArbitraryLoss]:
    """The frozen loss network and the static loss configuration.

    Returns:
      ({"vgg": VGG16 params up to the deepest tap}, ArbitraryLoss).
    """
    from nst_jax import vgg as vgg_mod
    from nst_jax.models import magenta_loss

    static = _loss_static(config, None)
    last = vgg_mod.deepest(static.taps + static.style_taps, "vgg16")
    vgg_params, vgg_spec = magenta_loss.load_loss_network(config.vgg_weights, last)
    return {"vgg": vgg_params}, _loss_static(config, vgg_spec)


def compute_loss(params: Params, vgg_params: Mapping, content: Array, style: Array, static: ArbitraryLoss,
                 step: Array | None = None) -> tuple[Array, dict[str, Array]]:
    """Ghiasi et al.'s training loss of one batch (see the comment above `ArbitraryLoss`).

    Args:
      params: the network (differentiated).
      vgg_params: the frozen VGG16.
      content: (N, H, W, 3) in [0, 1].
      style: (N, H', W', 3) in [0, 1], one style per content image (the predictor sees them as they are).
      static: the loss configuration.
      step: the training step (the stability term's warps; needed when `static.stability` is on).

    Returns:
      (loss, {"loss", "loss_content", "loss_style", "loss_tv" [, "loss_stability"] (weighted, summing to loss),
      "tv", "style/<layer>" [, "stability"] (unweighted)}).
    """
    from nst_jax import vgg as vgg_mod
    from nst_jax.models import magenta_loss

    dt = jnp.dtype(static.dtype)
    trained = TRAIN_ONLY.get(static.train_only, TRAIN_ONLY["all"])
    params = {k: v if k in trained else jax.lax.stop_gradient(v) for k, v in params.items()}
    fs = vgg_mod.encode(vgg_params, style.astype(dt), static.vgg, static.style_taps)
    if static.net.predictor == "vgg_stats":
        v = predict_from_stats(params, vgg_stats_features(fs))
    else:
        v = predict(params, style.astype(jnp.float32))
    g = transform(params, content.astype(jnp.float32), v)
    n = content.shape[0]
    feats = vgg_mod.encode(vgg_params, jnp.concatenate([g, content.astype(jnp.float32)]).astype(dt), static.vgg,
                           static.taps)
    fg = {k: f[:n] for k, f in feats.items()}
    loss_c = magenta_loss.content_loss(fg, {k: f[n:] for k, f in feats.items()},
                                       (static.content_layers, static.content_weights))
    targets = {k: magenta_loss.gram(fs[k]) for k in static.style_layers}
    loss_s, per_layer = magenta_loss.style_loss(fg, targets, (static.style_layers, static.style_weights))
    tv = magenta_loss.total_variation(g)
    loss_tv = jnp.float32(static.tv_weight) * tv
    loss = loss_c + loss_s + loss_tv
    metrics = {"loss": loss, "loss_content": loss_c, "loss_style": loss_s, "loss_tv": loss_tv, "tv": tv}
    metrics.update({f"style/{k}": x for k, x in per_layer.items()})
    return static.stability.add(loss, metrics, lambda x: transform(params, x, v), content.astype(jnp.float32), g,
                                step)


def loss_fn(params: Params, frozen: Mapping, batch: Mapping[str, Array], static: ArbitraryLoss):
    """`compute_loss` on the family contract: batch {"content", "style"} (and "step" for the stability term)."""
    return compute_loss(params, frozen["vgg"], batch["content"], batch["style"], static, batch.get("step"))


@partial(jax.jit, static_argnames="static")
def _sample_jit(params: Params, frozen: Any, content: Array, style: Array, static: ArbitraryLoss) -> Array:
    return transform(params, content, predict_vector(params, frozen, style, static))


def sample(params: Params, frozen: Mapping, samples: Mapping[str, Array], static: ArbitraryLoss) -> Array:
    """Each sample content image stylized with the sample style image of the same index (as in training)."""
    return _sample_jit(params, frozen, samples["content"], samples["style"], static)


def open_streams(config: Any, on_skip: Any) -> tuple[dict, dict]:
    """The content and style image streams and the sample inputs.

    Content images get `config.augment`, style images `config.style_augment` (Magenta augments only the style
    images: "magenta" = its brightness/saturation/hue jitter, flips and random size); each stream has its own seed.

    Returns:
      ({"content": ImageStream, "style": ImageStream}, {"content", "style"}).
    """
    from nst_jax.training import open_image_streams

    streams, samples = open_image_streams(config, ("content",), on_skip)
    style_config = config.copy_and_resolve_references()
    with style_config.unlocked():
        style_config.augment = str(_cfg(config, "style_augment", config.augment) or config.augment)
        # its own seed, apart from the content stream's
        style_config.seed = int(np.random.SeedSequence([int(config.seed), 2]).generate_state(1)[0])
    style_streams, style_samples = open_image_streams(style_config, ("style",), on_skip)
    streams.update(style_streams)
    samples.update(style_samples)
    return streams, samples


def _base_predictor(base: Mapping[str, Any]) -> str:
    return "vgg_stats" if "hidden" in base.get("predictor", {}) else "mobilenet"


def start_params(config: Any, base: Params) -> Params:
    """The network fine-tuning starts from: `base` (the ported `magenta-arbitrary` or a trained workdir, loaded by
    the loop through `nst_jax.models.pretrained`). When `config.arbitrary.predictor` differs from the base's, the
    predictor and bottleneck start fresh (seeded by `config.seed`) and the rest comes from the base.

    Raises:
      NstError: the base does not fit `config.arbitrary` (width, bottleneck), or a fresh predictor would stay
        frozen (`config.arbitrary.train_only` = "transformer").
    """
    from nst_jax.errors import NstError

    _, _, kind = _arch(config)
    same = _base_predictor(base) == kind
    if not same and _train_only(config) == "transformer":
        raise NstError(f"config.arbitrary.train_only: 'transformer' would keep a fresh {kind} predictor untrained "
                       f"(the base has a {_base_predictor(base)} one); use 'predictor' or 'all'")
    # shapes only (nothing is computed) unless a fresh predictor is needed
    shapes = jax.eval_shape(lambda k: init_params(k, config), jax.random.PRNGKey(0))
    fresh = None if same else jax.tree.map(np.asarray, init_params(jax.random.PRNGKey(int(config.seed)), config))
    out = {}
    for part, tree in shapes.items():
        if part in ("predictor", "bottleneck") and not same:
            out[part] = fresh[part]
            continue
        want, got = tree_shapes(tree), tree_shapes(base.get(part, {}))
        bad = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        if bad:
            shown = "; ".join(f"{part}/{k}: {got.get(k)} vs {want.get(k)}" for k in bad[:4])
            raise NstError(f"config.init_from: the base does not fit config.arbitrary (width, bottleneck): "
                           f"{shown} (base vs config)")
        out[part] = jax.tree.map(lambda a: np.array(a, np.float32), base[part])
    return out


def trainable_mask(params: Params, config: Any) -> Any:
    """True on the parts `config.arbitrary.train_only` names ("predictor": predictor + bottleneck;
    "transformer": style projections + transformer); None (everything) for "all"."""
    only = _train_only(config)
    if only == "all":
        return None
    on = TRAIN_ONLY[only]
    return {part: jax.tree.map(lambda a, t=part in on: jnp.full(np.shape(a), t, bool), tree)
            for part, tree in params.items()}


def inference_setup(config: Any) -> tuple[dict[str, Any], Net]:
    """(frozen, static) of a network trained with `config`: the VGG16 for a "vgg_stats" predictor."""
    _, _, kind = _arch(config)
    size = int(_cfg(config, "image_size", STYLE_SIZE))
    if kind != "vgg_stats":
        return {}, Net("mobilenet", None, size)
    from nst_jax.models import magenta_loss

    vgg_params, vgg_spec = magenta_loss.load_loss_network(config.vgg_weights, VGG_STATS_LAYERS[-1])
    return {"vgg": vgg_params}, Net("vgg_stats", vgg_spec, size)
