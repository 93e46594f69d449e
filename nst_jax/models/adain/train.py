"""AdaIN's training contract (pytorch-AdaIN's `net.Net.forward` + Adam) and its encoder setup."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from nst_jax import losses, ops, vgg
from nst_jax.errors import NstError
from nst_jax.models import decoder as dec
from nst_jax.models.adain.net import ENCODER, EPS, TAP, style_statistics, stylize
from nst_jax.stability import StabilityTerm
from nst_jax.typing import Array, Params
from nst_jax.vgg import VGGSpec, encode

# ----------------------------------------------------------------------------------------------------
# The family contract: training

CONTENT_LAYER = TAP


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The static (hashable) part of the loss: weights, layers, compute dtype and the encoder's identity."""

    content_weight: float = 1.0
    style_weight: float = 10.0
    style_layers: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
    style_layer_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    dtype: str = "float32"  # compute dtype; configs allow float32 and bfloat16 (tests also use float64)
    spec: VGGSpec | None = None
    stability: StabilityTerm = StabilityTerm()  # off by default: the loss is then exactly the one above
    convolutions: str = "winograd"  # "winograd" (ops.conv_for_training) or "direct" (ops.conv_plain)

    @property
    def conv(self) -> ops.ConvFn:
        """The convolution strategy of the encoder and decoder walks."""
        return ops.conv_for_training if self.convolutions == "winograd" else ops.conv_plain

    @property
    def wants_step(self) -> bool:
        """Whether the loss needs `batch["step"]` (the stability term's random warps come from it)."""
        return self.stability.on

    @classmethod
    def from_config(cls, config) -> LossConfig:
        """Pick the loss fields out of a training config."""
        layers = tuple(config.style_layers)
        weights = tuple(float(w) for w in config.style_layer_weights)
        if len(weights) != len(layers):
            raise NstError(f"config.style_layer_weights has {len(weights)} values for {len(layers)} style_layers")
        for layer in layers:
            if layer not in vgg.LAYERS:
                raise NstError(f"unknown style layer {layer!r} in config.style_layers; known: "
                               f"{', '.join(vgg.RELU_TAPS)}")
        if config.dtype not in ("float32", "bfloat16"):
            raise NstError(f"config.dtype must be float32 or bfloat16, got {config.dtype!r}")
        convolutions = str(config.get("convolutions", "winograd"))
        if convolutions not in ("winograd", "direct"):
            raise NstError(f"config.convolutions must be winograd or direct, got {convolutions!r}")
        return cls(float(config.content_weight), float(config.style_weight), layers, weights,
                   str(config.dtype), stability=StabilityTerm.from_config(config), convolutions=convolutions)


def compute_loss(params: Mapping, vgg_params: Mapping, content: Array, style: Array, spec: VGGSpec,
                 lc: LossConfig, step: Array | None = None) -> tuple[Array, dict[str, Array]]:
    """The AdaIN training loss of one batch and its terms.

    Args:
      params: decoder parameters (the only thing differentiated).
      vgg_params: frozen encoder parameters (up to relu4_1).
      content, style: (N, S, S, 3) images in [0, 1].
      spec: the encoder's identity.
      lc: weights, layers and compute dtype.
      step: the training step (the stability term's warps; needed when `lc.stability` is on).

    Returns:
      (loss, {"loss", "loss_content", "loss_style" [, "loss_stability"] (weighted, summing to loss),
              "style/<layer>" [, "stability"] (unweighted)}).
    """
    dt = jnp.dtype(lc.dtype)
    # Statistics and losses in float32 at least (bfloat16 compute), float64 when the tests ask for it.
    f32 = jnp.dtype(jnp.float64) if dt == jnp.float64 else jnp.dtype(jnp.float32)
    n = content.shape[0]
    taps = tuple(sorted(set(lc.style_layers) | {CONTENT_LAYER}, key=vgg.LAYERS.index))
    # One encoder pass over content and style together: the same kernels run once on twice the batch.
    both = encode(vgg_params, jnp.concatenate([content, style]).astype(dt), spec, taps, conv=lc.conv)
    content_feat = both[CONTENT_LAYER][:n].astype(f32)
    style_feats = {k: both[k][n:].astype(f32) for k in taps}
    t = jax.lax.stop_gradient(ops.adain(content_feat, style_feats[CONTENT_LAYER], EPS))
    g = dec.decode(params, t.astype(dt), conv=lc.conv)
    g_feats = encode(vgg_params, g, spec, taps, conv=lc.conv)
    loss_c = losses.content_loss(g_feats[CONTENT_LAYER].astype(f32), t)
    per_layer = {k: losses.mean_std_style_loss(g_feats[k].astype(f32), style_feats[k], EPS)
                 for k in lc.style_layers}
    loss_s = sum(w * per_layer[k] for k, w in zip(lc.style_layers, lc.style_layer_weights, strict=True))
    weighted_c = lc.content_weight * loss_c
    weighted_s = lc.style_weight * loss_s
    loss = weighted_c + weighted_s
    metrics = {"loss": loss, "loss_content": weighted_c, "loss_style": weighted_s}
    metrics.update({f"style/{k}": v for k, v in per_layer.items()})
    if lc.stability.on:
        def forward(x: Array) -> Array:  # the same style statistics for the perturbed content
            f = encode(vgg_params, x.astype(dt), spec, (CONTENT_LAYER,), conv=lc.conv)[CONTENT_LAYER].astype(f32)
            t2 = jax.lax.stop_gradient(ops.adain(f, style_feats[CONTENT_LAYER], EPS))
            return dec.decode(params, t2.astype(dt), conv=lc.conv)

        loss, metrics = lc.stability.add(loss, metrics, forward, content, g, step)
    return loss, metrics


def init_params(key: Array, config: Any = None) -> dict:
    """A fresh decoder (PyTorch's default conv initialisation); `config` is not needed."""
    return dec.init_params(key)


def inference_setup(config) -> tuple[dict, VGGSpec]:
    """The frozen encoder {"vgg"} and its `VGGSpec` a trained decoder runs with (its config's `vgg_weights`)."""
    return encoder_setup(config, None, "the decoder")


def encoder_setup(config: Mapping[str, Any], given: Any, origin: str) -> tuple[dict, VGGSpec]:
    """The encoder a decoder runs with: the one its `config["vgg_weights"]` names, or `given` (`--vgg`) if that has
    the same identity; `origin` names the decoder in errors.

    Raises:
      WeightsError: unreadable weights, or an encoder of another identity than the decoder was trained with.
    """
    from nst_jax.weights.resolve import paired_encoder

    # Runs from before configs recorded `vgg_weights`, and pytorch-AdaIN's decoder, used AdaIN's vgg_normalised.
    pairs_with = str(config.get("vgg_weights") or ENCODER)
    vgg_params, spec = paired_encoder(pairs_with, given, origin, TAP)
    return {"vgg": _encoder_trees(vgg_params, spec)}, spec


def _encoder_trees(vgg_params: Params, spec: VGGSpec) -> dict:
    """The encoder's layers up to relu4_1, checked, as float32 arrays (an explicit file may hold more)."""
    vgg.check_vgg_params(vgg_params, spec, TAP)
    return {k: {leaf: jnp.asarray(v, jnp.float32) for leaf, v in vgg_params[k].items()}
            for k in vgg.expected_shapes(spec, TAP)}


def validate_config(config) -> None:
    """Raise `NstError` naming the key of any AdaIN-specific value the trainer cannot use."""
    if int(config.image_size) % 8:
        raise NstError(f"config.image_size must be a multiple of 8 (the decoder upsamples 3 times), "
                       f"got {config.image_size}")


def setup(config) -> tuple[dict, LossConfig]:
    """The frozen encoder {"vgg": params} named by `config.vgg_weights` and the static loss configuration."""
    from nst_jax.weights.resolve import load_encoder

    lc = LossConfig.from_config(config)
    deepest = vgg.deepest(tuple(lc.style_layers) + (CONTENT_LAYER,))
    vgg_params, spec = load_encoder(config.vgg_weights, deepest)
    return {"vgg": vgg_params}, dataclasses.replace(lc, spec=spec)


def loss_fn(params: Mapping, frozen: Mapping, batch: Mapping[str, Array], lc: LossConfig):
    """`compute_loss` on the family contract: batch {"content", "style"}."""
    return compute_loss(params, frozen["vgg"], batch["content"], batch["style"], lc.spec, lc, batch.get("step"))


def sample(params: Mapping, frozen: Mapping, samples: Mapping[str, Array], lc: LossConfig) -> Array:
    """Each sample content image stylized with the sample style image of the same index."""
    return stylize_samples(params, frozen["vgg"], samples["content"], samples["style"], lc.spec)


@partial(jax.jit, static_argnames=("spec",))
def stylize_samples(params: Mapping, vgg_params: Mapping, content: Array, style: Array,
                    spec: VGGSpec) -> Array:
    """Each content image stylized with the style image of the same index, in [0, 1] (sample grids)."""
    s_mean, s_std = style_statistics(vgg_params, style, spec)
    alpha = jnp.ones((content.shape[0],), jnp.float32)
    return stylize(vgg_params, params, content, s_mean, s_std, alpha, spec)


def open_streams(config, on_skip: Callable) -> tuple[dict, dict]:
    """This process's content and style streams (random pairs) and the fixed sample images."""
    from nst_jax.training import open_image_streams

    return open_image_streams(config, ("content", "style"), on_skip)
