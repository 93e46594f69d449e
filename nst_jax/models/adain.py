"""AdaIN arbitrary style transfer (Huang & Belongie 2017): the first model family (see `nst_jax.models`).

The network: VGG19 (AdaIN's `vgg_normalised` identity) up to relu4_1 -> AdaIN -> the mirrored decoder. Every
function here is pure and jit-able; `nst_jax.stylize.Stylizer` jits them once per input shape and adds
caching, blending, masks and colour control around them, and `nst_jax.train` runs `loss_fn`.

Statistics follow pytorch-AdaIN's `calc_mean_std` (unbiased variance over the spatial positions, eps 1e-5), so
a port of its released weights reproduces its pictures number for number.

Training (pytorch-AdaIN's `net.Net.forward` + Adam), for content images c and style images s:
  t = AdaIN(enc(c).relu4_1, enc(s).relu4_1)            (no gradient flows into t, as in pytorch-AdaIN)
  g = decoder(t)
  loss = content_weight * MSE(enc(g).relu4_1, t)
       + style_weight * sum_l w_l * [MSE(mean enc(g).l, mean enc(s).l) + MSE(std enc(g).l, std enc(s).l)]
over l in relu1_1..relu4_1, then an Adam update of the decoder with lr / (1 + lr_decay * step).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import losses, ops, vgg
from nst_jax.errors import NstError
from nst_jax.models import Caps, Export, Family, MeanVar
from nst_jax.models import decoder as dec
from nst_jax.stability import StabilityTerm
from nst_jax.typing import Array, Params
from nst_jax.vgg import VGGSpec, encode

TAP = "relu4_1"
CHANNELS = 512
# The registry name of the encoder pytorch-AdaIN's released decoder was trained with (`vgg_normalised`).
ENCODER = "adain"
# The decoder upsamples three times by 2: its output is 8x the relu4_1 grid.
SCALE = 8
EPS = 1e-5


def feature_grid(height: int, width: int, spec: VGGSpec) -> tuple[int, int]:
    """Size of the relu4_1 grid for an input of `height` x `width` (three 2x2/2 poolings).

    Ceil-mode pooling (AdaIN's encoder) keeps a last partial window, so the grid is ceil(size / 8) and the
    decoded image (8x the grid) is at least as large as the input; floor mode loses up to 7 pixels.
    """
    return vgg.grid_size(height, width, spec, TAP)


def content_features(vgg_params: Params, x: Array, spec: VGGSpec) -> Array:
    """relu4_1 features of images `x` (N, H, W, 3) in [0, 1]: (N, h, w, 512)."""
    return encode(vgg_params, x, spec, (TAP,))[TAP]


def style_statistics(vgg_params: Params, x: Array, spec: VGGSpec) -> tuple[Array, Array]:
    """Per-image relu4_1 mean and std of style images (N, H, W, 3): each (N, 1, 1, 512), float32."""
    f = content_features(vgg_params, x, spec).astype(jnp.float32)
    return ops.mean_std(f, EPS)


def mix_alpha(t: Array, f: Array, alpha: Array) -> Array:
    """The content/style trade-off of the paper: alpha * t + (1 - alpha) * f, one alpha per image (N,)."""
    a = jnp.asarray(alpha, t.dtype).reshape(-1, 1, 1, 1)
    return t * a + f * (1 - a)


def blend_statistics(means: Array, stds: Array, weights: Array) -> tuple[Array, Array]:
    """Convex mix of K styles' statistics, (K, ..., C) each, with weights (K,) summing to 1.

    Mixing the statistics is exactly pytorch-AdaIN's interpolation (a weighted sum of the K AdaIN outputs),
    because AdaIN is affine in the style mean and std for a fixed content.
    """
    w = jnp.asarray(weights, means.dtype).reshape((-1,) + (1,) * (means.ndim - 1))
    return jnp.sum(means * w, axis=0), jnp.sum(stds * w, axis=0)


def region_adain(f: Array, masks: Array, s_mean: Array, s_std: Array, eps: float = EPS) -> Array:
    """AdaIN per region: spatial control with K (soft) masks and K styles (the Lua original's `-mask`, any K).

    The Lua original gathers each region's content features, normalises them with that region's own mean and
    std and gives them its style's statistics. Here region k's statistics are weighted by w_k = mask_k / sum_j
    mask_j, so binary masks reproduce the Lua result exactly (with pytorch-AdaIN's unbiased variance) and soft
    masks blend smoothly at the borders. Positions that no mask covers keep their content features.

    Args:
      f: content features (N, h, w, C).
      masks: (N, h, w, K) non-negative weights on the feature grid.
      s_mean, s_std: style statistics (N, K, C).
      eps: added to each region's variance.

    Returns:
      target features (N, h, w, C).
    """
    return region_apply(f, masks, region_stats(f, masks, eps), s_mean, s_std)


def _region_weights(masks: Array) -> tuple[Array, Array]:
    masks = masks.astype(jnp.float32)
    cover = jnp.sum(masks, axis=-1, keepdims=True)
    covered = cover > 0
    return jnp.where(covered, masks / jnp.where(covered, cover, 1.0), 0.0), covered


def region_stats(f: Array, masks: Array, eps: float = EPS) -> MeanVar:
    """Each region's content statistics as `region_adain` weighs them: `MeanVar` of (N, K, C) each (the
    unbiased weighted variance plus `eps`). Args as `region_adain`."""
    f32 = f.astype(jnp.float32)
    w, _ = _region_weights(masks)
    n = jnp.sum(w, axis=(1, 2))  # (N, K): region sizes in positions
    hi = jax.lax.Precision.HIGHEST
    # Centre on the image mean first so the one-pass variance below does not cancel catastrophically.
    g = f32 - jnp.mean(f32, axis=(1, 2), keepdims=True)
    s1 = jnp.einsum("nhwk,nhwc->nkc", w, g, precision=hi)
    s2 = jnp.einsum("nhwk,nhwc->nkc", w, jnp.square(g), precision=hi)
    n_ = n[..., None]
    mu_g = s1 / jnp.maximum(n_, 1e-12)
    ssd = jnp.maximum(s2 - n_ * jnp.square(mu_g), 0.0)
    var = ssd / jnp.maximum(n_ - 1.0, 1.0) + eps
    return MeanVar(mu_g + jnp.mean(f32, axis=(1, 2))[:, None, :], var)


def region_apply(f: Array, masks: Array, stats: MeanVar, s_mean: Array, s_std: Array) -> Array:
    """`region_adain` with given per-region content statistics `stats` ((N, K, C) each, e.g. smoothed)."""
    f32 = f.astype(jnp.float32)
    w, covered = _region_weights(masks)
    hi = jax.lax.Precision.HIGHEST
    # AdaIN of region k is f * a_k + b_k; mix the affine maps per position.
    a = s_std.astype(jnp.float32) / jnp.sqrt(stats.var)
    b = s_mean.astype(jnp.float32) - stats.mean * a
    scale = jnp.einsum("nhwk,nkc->nhwc", w, a, precision=hi)
    shift = jnp.einsum("nhwk,nkc->nhwc", w, b, precision=hi)
    t = jnp.where(covered, f32 * scale + shift, f32)
    return t.astype(f.dtype)


# Kept under its historical name: the fused upsample-convolution lives in `ops`.
upsample_conv = ops.upsample_conv


def decode(decoder_params: Params, t: Array) -> Array:
    """The AdaIN decoder for inference: `nst_jax.models.decoder.decode` with each upsampling and the conv after it
    fused (`ops.upsample_conv`: same result, fewer operations).

    Runs in `t.dtype`; returns (N, 8h, 8w, 3), unclipped.
    """
    return dec.decode(decoder_params, t, fused_upsample=True)


def _finish(img: Array, height: int, width: int) -> Array:
    # Ceil-mode pooling pads at the bottom/right, so the input's pixels are the top-left corner of the output.
    return jnp.clip(img[:, :height, :width, :].astype(jnp.float32), 0.0, 1.0)


def _broadcast(f: Array, n: int) -> Array:
    return f if f.shape[0] == n else jnp.broadcast_to(f, (n,) + f.shape[1:])


def stylize(vgg_params: Params, decoder_params: Params, content: Array, s_mean: Array, s_std: Array,
            alpha: Array, spec: VGGSpec) -> Array:
    """One forward pass: encode, AdaIN with given style statistics, mix by alpha, decode, crop, clip.

    Args:
      vgg_params, decoder_params: parameter trees.
      content: (N, H, W, 3) or (1, H, W, 3) images in [0, 1], in the compute dtype (float32, or bfloat16 with
        bf16 parameters: convolutions in bf16, AdaIN's statistics in float32).
      s_mean, s_std: (N, 1, 1, 512) style statistics (a batch of 1 content is broadcast to N styles).
      alpha: (N,) stylization strength in [0, 1].
      spec: the encoder's identity.

    Returns:
      (N, H, W, 3) float32 images in [0, 1], cropped to the content's size.
    """
    n = s_mean.shape[0]
    f = _broadcast(content_features(vgg_params, content, spec), n)
    # The statistics in float32 whatever the compute dtype: bf16's 8-bit mantissa would round means and variances.
    f32 = jnp.float32
    t = ops.adain_with_stats(f.astype(f32), s_mean.astype(f32), s_std.astype(f32), EPS).astype(f.dtype)
    out = decode(decoder_params, mix_alpha(t, f, alpha))
    return _finish(out, content.shape[1], content.shape[2])


def stylize_regions(vgg_params: Params, decoder_params: Params, content: Array, masks: Array, s_mean: Array,
                    s_std: Array, alpha: Array, spec: VGGSpec) -> Array:
    """Like `stylize`, with spatial control: masks (N, h, w, K) on the relu4_1 grid, statistics (N, K, 512).
    """
    n = s_mean.shape[0]
    f = _broadcast(content_features(vgg_params, content, spec), n)
    t = region_adain(f, masks, s_mean, s_std)
    out = decode(decoder_params, mix_alpha(t, f, alpha))
    return _finish(out, content.shape[1], content.shape[2])


def flops(height: int, width: int, spec: VGGSpec, with_style: bool = True) -> float:
    """Nominal FLOPs (2 x multiply-adds of the convolutions) of one stylization at `height` x `width`.

    Counted as pytorch-AdaIN computes it: content encoder, the style encoder at the same size if `with_style`,
    and the decoder convolving its upsampled maps (`decode` does fewer operations for the same result).
    """
    enc = vgg.flops(height, width, spec, TAP)
    hh, ww = feature_grid(height, width, spec)
    total = enc * (2 if with_style else 1)
    for _, cin, cout, up in dec.DECODER_CONVS:
        total += 2.0 * hh * ww * 9 * cin * cout
        if up:
            hh, ww = 2 * hh, 2 * ww
    return total


# ----------------------------------------------------------------------------------------------------
# The family contract: conditions


def condition(params: Params, frozen: Mapping[str, Any], style: Array, static: VGGSpec) -> dict[str, Array]:
    """A style image batch (N, H, W, 3) -> its condition {"mean", "std"}: relu4_1 statistics, (N, 1, 1, 512).

    `static` is the encoder's `VGGSpec`; `frozen` is {"vgg": encoder params}; `params` (the decoder) is unused.
    """
    mean, std = style_statistics(frozen["vgg"], style, static)
    return {"mean": mean, "std": std}


def stylize_condition(params: Params, frozen: Mapping[str, Any], content: Array, cond: Mapping[str, Array],
                      alpha: Array, static: VGGSpec) -> Array:
    """`stylize` on the family contract: decoder `params`, frozen {"vgg"}, condition {"mean", "std"}."""
    return stylize(frozen["vgg"], params, content, cond["mean"], cond["std"], alpha, static)


def stylize_masked(params: Params, frozen: Mapping[str, Any], content: Array, conds: Mapping[str, Array],
                   masks: Array, alpha: Array, static: VGGSpec) -> Array:
    """K styles placed by masks (N, H, W, K) at the content's resolution, in one pass.

    The masks are averaged onto the relu4_1 grid with adaptive-average bins (torch's adaptive_avg_pool2d, as
    `nst_jax.image.masks_to_grid`) and AdaIN runs per region (`region_adain`). `conds` leaves are
    (N, K, 1, 1, 512).
    """
    grid, s_mean, s_std = _regions(content, conds, masks, static)
    return stylize_regions(frozen["vgg"], params, content, grid, s_mean, s_std, alpha, static)


def _regions(content: Array, conds: Mapping[str, Array], masks: Array, static: VGGSpec
             ) -> tuple[Array, Array, Array]:
    """Masks (N, H, W, K) averaged onto the relu4_1 grid, and the K styles' statistics as (N, K, 512) each."""
    h, w = content.shape[1], content.shape[2]
    gh, gw = feature_grid(h, w, static)
    hi = jax.lax.Precision.HIGHEST
    grid = jnp.einsum("ih,nhwk,jw->nijk", _bins(h, gh), masks.astype(jnp.float32), _bins(w, gw), precision=hi)
    n = conds["mean"].shape[0]
    return grid, conds["mean"].reshape(n, -1, CHANNELS), conds["std"].reshape(n, -1, CHANNELS)


def stats_forward(params: Params, frozen: Mapping[str, Any], content: Array, cond: Mapping[str, Array],
                  masks: Array | None, alpha: Array, norm_stats: MeanVar | None, static: VGGSpec
                  ) -> tuple[Array, MeanVar]:
    """The statistics seam (`nst_jax.models`): `stylize_condition`, or with masks `stylize_masked`, with the
    content's relu4_1 statistics given or returned.

    Args:
      params, frozen, content, alpha, static: as `stylize_condition`; cond: {"mean", "std"} (N, 1, 1, 512), or
        with masks (N, K, 1, 1, 512).
      masks: None, or (N, H, W, K) at the content's resolution (as `stylize_masked`).
      norm_stats: None (the frames' own), or a `MeanVar` as returned: the content mean and var = std^2 that
        AdaIN divides by (unbiased variance plus `EPS`), (N, 1, 1, 512) each, or per region (N, K, 512).

    Returns:
      ((N, H, W, 3) float32 in [0, 1], the `MeanVar` used).
    """
    f = _broadcast(content_features(frozen["vgg"], content, static), cond["mean"].shape[0])
    if masks is None:
        if norm_stats is None:
            mean, std = ops.mean_std(f.astype(jnp.float32), EPS)
            norm_stats = MeanVar(mean, jnp.square(std))
        # AdaIN with the given content statistics: (f - mean) / std * s_std + s_mean.
        std = jnp.sqrt(norm_stats.var).astype(f.dtype)
        t = (f - norm_stats.mean.astype(f.dtype)) / std * cond["std"].astype(f.dtype) + cond["mean"].astype(f.dtype)
    else:
        grid, s_mean, s_std = _regions(content, cond, masks, static)
        if norm_stats is None:
            norm_stats = region_stats(f, grid)
        t = region_apply(f, grid, norm_stats, s_mean, s_std)
    out = decode(params, mix_alpha(t, f, alpha))
    return _finish(out, content.shape[1], content.shape[2]), norm_stats


def _bins(size: int, out: int) -> np.ndarray:
    # Row i averages [floor(i * size / out), ceil((i + 1) * size / out)): adaptive average pooling's bins.
    m = np.zeros((out, size), np.float32)
    for i in range(out):
        a, b = i * size // out, -(-(i + 1) * size // out)
        m[i, a:b] = 1.0 / (b - a)
    return m


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


# ----------------------------------------------------------------------------------------------------
# Parameter trees and the statistics API (`Stylizer.style_stats` and friends, from before conditions)


def loaded(vgg_params: Params, vgg_spec: VGGSpec, decoder_params: Params, origin: str = "parameter trees") -> Any:
    """A `nst_jax.models.open.Loaded` AdaIN model from parameter trees (`Stylizer(vgg, spec, decoder)`).

    Raises:
      WeightsError: the trees do not fit the networks.
    """
    from nst_jax.models.open import Loaded

    dec.check_decoder_params(decoder_params)
    params = {k: {leaf: jnp.asarray(v, jnp.float32) for leaf, v in p.items()} for k, p in decoder_params.items()}
    return Loaded(FAMILY, params, {"vgg": _encoder_trees(vgg_params, vgg_spec)}, vgg_spec, origin)


class StyleStats(NamedTuple):
    """relu4_1 statistics of a style: per-channel mean and std, each (1, 1, 1, 512) float32 (AdaIN's condition)."""

    mean: Array
    std: Array


def stats_condition(mean: Any, std: Any) -> dict[str, Array]:
    """The condition {"mean", "std"} of statistics (N, 1, 1, 512) each, checked.

    Raises:
      NstError: other shapes.
    """
    mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
    if mean.ndim != 4 or mean.shape[1:] != (1, 1, CHANNELS) or std.shape != mean.shape:
        raise NstError(f"style statistics must be (N, 1, 1, {CHANNELS}), got {mean.shape} and {std.shape}")
    return {"mean": mean, "std": std}


def blend_stats(stats: Sequence[StyleStats], weights: Sequence[float] | None = None) -> StyleStats:
    """Interpolate styles: a convex mix of their statistics (weights are normalised to sum to 1).

    Equal to pytorch-AdaIN's interpolation (the weighted sum of the styles' AdaIN outputs), which is affine in
    the style statistics.

    Args:
      stats: K `StyleStats` (each (1, 1, 1, 512), or all (N, 1, 1, 512)).
      weights: K non-negative floats with a positive sum; None = equal weights.
    """
    from nst_jax.checks import normalise_weights

    if len(stats) == 0:
        raise NstError("blend_stats needs at least one style")
    w = normalise_weights(weights, len(stats), what="style weights")
    means = jnp.stack([jnp.asarray(s.mean, jnp.float32) for s in stats])
    stds = jnp.stack([jnp.asarray(s.std, jnp.float32) for s in stats])
    return StyleStats(*blend_statistics(means, stds, jnp.asarray(w)))


NAME = "adain"
CAPS = Caps(style_images=True, style_table=False, alpha=True, masks=True, color_modes=("luminance", "histogram"))

FAMILY = Family(
    name=NAME, caps=CAPS, init_params=init_params, setup=setup, open_streams=open_streams, loss_fn=loss_fn,
    sample=sample, condition=condition, stylize=stylize_condition, stylize_masked=stylize_masked,
    inference_setup=inference_setup, encoder_setup=encoder_setup, stats_type=StyleStats,
    validate_config=validate_config,
    # bf16 weights and activations, float32 statistics: measured within tolerance (tests/test_ops.py)
    dtypes=("float32", "bfloat16"),
    # no LiteRT: onnx2tf was not tried on the VGG graph
    export=Export("nst_jax.export.families:adain_export"),
    # Smoothing relu4_1 is free (one encoder and one decoder pass) and lowered flicker (docs/video.md).
    stats_forward=stats_forward, video_strength=0.5,
)


__all__ = [
    "CAPS", "CHANNELS", "ENCODER", "EPS", "FAMILY", "SCALE", "TAP", "LossConfig", "StyleStats", "blend_statistics",
    "blend_stats", "compute_loss", "condition", "content_features", "decode", "encoder_setup", "feature_grid",
    "flops", "init_params", "loaded", "loss_fn", "mix_alpha", "region_adain", "region_apply", "region_stats",
    "sample", "setup", "stats_condition", "stats_forward", "style_statistics",
    "stylize", "stylize_condition", "stylize_masked", "stylize_regions", "stylize_samples", "upsample_conv",
]
