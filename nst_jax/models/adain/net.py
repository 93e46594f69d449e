"""AdaIN's network: VGG19 up to relu4_1 -> AdaIN -> the mirrored decoder, and the inference contract."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import ops, vgg
from nst_jax.models import MeanVar
from nst_jax.models import decoder as dec
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


def own_condition(params: Params, frozen: Mapping[str, Any], content: Array, masks: Array | None, static: VGGSpec
                  ) -> dict[str, Array]:
    """The content's own condition (`nst_jax.models`): relu4_1 mean/std that leave the content's features unchanged.

    With masks (N, H, W, K), the statistics `region_adain` measures over the last region, so that region's AdaIN
    is the identity (scale std / std = 1, shift 0) and `stylize_masked` decodes the content's own features
    wherever the last mask is 1: the alpha-0 output there. Without masks, the whole image's (N, 1, 1, 512) each.
    """
    f = content_features(frozen["vgg"], content, static)
    if masks is None:
        mean, std = ops.mean_std(f.astype(jnp.float32), EPS)
        return {"mean": mean, "std": std}
    n = masks.shape[0]
    stats = region_stats(_broadcast(f, n), _mask_grid(content, masks, static))
    shape = (n, 1, 1, CHANNELS)
    return {"mean": stats.mean[:, -1].reshape(shape), "std": jnp.sqrt(stats.var[:, -1]).reshape(shape)}


def _regions(content: Array, conds: Mapping[str, Array], masks: Array, static: VGGSpec
             ) -> tuple[Array, Array, Array]:
    """Masks (N, H, W, K) averaged onto the relu4_1 grid, and the K styles' statistics as (N, K, 512) each."""
    n = conds["mean"].shape[0]
    grid = _mask_grid(content, masks, static)
    return grid, conds["mean"].reshape(n, -1, CHANNELS), conds["std"].reshape(n, -1, CHANNELS)


def _mask_grid(content: Array, masks: Array, static: VGGSpec) -> Array:
    """Masks (N, H, W, K) at the content's resolution averaged onto its relu4_1 grid (adaptive-average bins)."""
    h, w = content.shape[1], content.shape[2]
    gh, gw = feature_grid(h, w, static)
    hi = jax.lax.Precision.HIGHEST
    return jnp.einsum("ih,nhwk,jw->nijk", _bins(h, gh), masks.astype(jnp.float32), _bins(w, gw), precision=hi)


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
