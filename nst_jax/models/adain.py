"""AdaIN arbitrary style transfer (Huang & Belongie 2017) as pure functions, plus a thin NNX module.

The network: VGG19 (AdaIN's `vgg_normalised` identity) up to relu4_1 -> AdaIN -> the mirrored decoder. Every
function here is pure and jit-able; `nst_jax.stylize.Stylizer` jits them once per input shape and adds
caching, blending, masks and colour control around them.

Statistics follow pytorch-AdaIN's `calc_mean_std` (unbiased variance over the spatial positions, eps 1e-5), so
a port of its released weights reproduces its pictures number for number.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from nst_jax import ops
from nst_jax.models import decoder as dec
from nst_jax.vgg import VGG19, VGGSpec, encode

Array = jax.Array
Params = Mapping[str, Mapping[str, Array]]

TAP = "relu4_1"
CHANNELS = 512
# The decoder upsamples three times by 2: its output is 8x the relu4_1 grid.
SCALE = 8
EPS = 1e-5


def feature_grid(height: int, width: int, spec: VGGSpec) -> tuple[int, int]:
    """Size of the relu4_1 grid for an input of `height` x `width` (three 2x2/2 poolings).

    Ceil-mode pooling (AdaIN's encoder) keeps a last partial window, so the grid is ceil(size / 8) and the
    decoded image (8x the grid) is at least as large as the input; floor mode loses up to 7 pixels.
    """
    def down(n: int) -> int:
        for _ in range(3):
            n = -(-n // 2) if spec.ceil_mode else n // 2
        return n

    return down(height), down(width)


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
    f32 = f.astype(jnp.float32)
    masks = masks.astype(jnp.float32)
    cover = jnp.sum(masks, axis=-1, keepdims=True)
    covered = cover > 0
    w = jnp.where(covered, masks / jnp.where(covered, cover, 1.0), 0.0)
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
    mu = mu_g + jnp.mean(f32, axis=(1, 2))[:, None, :]
    # AdaIN of region k is f * a_k + b_k; mix the affine maps per position.
    a = s_std.astype(jnp.float32) / jnp.sqrt(var)
    b = s_mean.astype(jnp.float32) - mu * a
    scale = jnp.einsum("nhwk,nkc->nhwc", w, a, precision=hi)
    shift = jnp.einsum("nhwk,nkc->nhwc", w, b, precision=hi)
    t = jnp.where(covered, f32 * scale + shift, f32)
    return t.astype(f.dtype)


_DN = ("NHWC", "HWIO", "NHWC")


def _phase_taps(k: Array, axis: int) -> tuple[Array, Array]:
    # Along one axis, nearest x2 upsampling then a reflect-padded 3-tap filter (k0, k1, k2) is, at low
    # resolution and with edge padding: even outputs = k0 * x[i-1] + (k1 + k2) * x[i]; odd outputs =
    # (k0 + k1) * x[i] + k2 * x[i+1].
    k0, k1, k2 = jnp.split(k, 3, axis=axis)
    return jnp.concatenate([k0, k1 + k2], axis=axis), jnp.concatenate([k0 + k1, k2], axis=axis)


def upsample_conv(x: Array, kernel: Array, bias: Array) -> Array:
    """`conv3x3(reflect_pad(upsample_nearest(x, 2)))` computed at the low resolution, exactly.

    The reflection of a nearest-upsampled image is the upsampled edge-padded image, so each of the four output
    phases is a 2x2 convolution of the edge-padded input: one convolution with 4x the output channels, then an
    interleave. That is 16/36 of the multiply-adds of convolving the upsampled image (the decoder's three
    convs after an upsampling, a quarter of its work, become 2.25x cheaper).

    Args:
      x: (N, h, w, Cin) features; kernel: (3, 3, Cin, Cout) HWIO; bias: (Cout,).

    Returns:
      (N, 2h, 2w, Cout).
    """
    n, h, w, _ = x.shape
    cout = kernel.shape[-1]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    kernels = [c for r in _phase_taps(kernel, 0) for c in _phase_taps(r, 1)]  # phases 00, 01, 10, 11
    # SAME with an even kernel pads only at the end: z[i] sees xp[i], xp[i + 1]; the last row/col is unused.
    k4 = jnp.concatenate(kernels, axis=-1)
    z = jax.lax.conv_general_dilated(xp, k4, (1, 1), "SAME", dimension_numbers=_DN) + jnp.tile(bias, 4)

    def phase(a: int, b: int) -> Array:
        return z[:, a:a + h, b:b + w, (2 * a + b) * cout:(2 * a + b + 1) * cout]

    rows = [jnp.stack([phase(a, 0), phase(a, 1)], axis=3) for a in (0, 1)]
    return jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * w, cout)


def decode(decoder_params: Params, t: Array) -> Array:
    """The AdaIN decoder for inference: `nst_jax.models.decoder.decode`, each conv after an upsampling done by
    `upsample_conv` (same result, fewer operations).

    Runs in `t.dtype`; returns (N, 8h, 8w, 3), unclipped.
    """
    h, dtype, upsampled = t, t.dtype, False
    last = len(dec.DECODER_CONVS) - 1
    for i, (name, _, _, up) in enumerate(dec.DECODER_CONVS):
        k, b = decoder_params[name]["kernel"].astype(dtype), decoder_params[name]["bias"].astype(dtype)
        h = upsample_conv(h, k, b) if upsampled else ops.conv2d(h, k, b, "reflect")
        if i < last:
            h = jax.nn.relu(h)
        upsampled = up
    return h


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
      content: (N, H, W, 3) or (1, H, W, 3) images in [0, 1], in the compute dtype.
      s_mean, s_std: (N, 1, 1, 512) style statistics (a batch of 1 content is broadcast to N styles).
      alpha: (N,) stylization strength in [0, 1].
      spec: the encoder's identity.

    Returns:
      (N, H, W, 3) float32 images in [0, 1], cropped to the content's size.
    """
    n = s_mean.shape[0]
    f = _broadcast(content_features(vgg_params, content, spec), n)
    t = ops.adain_with_stats(f, s_mean.astype(f.dtype), s_std.astype(f.dtype), EPS)
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


class AdaIN(nnx.Module):
    """Encoder (frozen VGG19 to relu4_1) + trainable decoder as one NNX module.

    Example:
      >>> model = AdaIN(vgg_params, SPECS["adain"], rngs=nnx.Rngs(0))
      >>> images = model(content, style, alpha=0.8)
    """

    def __init__(self, vgg_params: Params, spec: VGGSpec, decoder_params: Params | None = None, *,
                 rngs: nnx.Rngs | None = None):
        self.encoder = VGG19(vgg_params, spec, last=TAP)
        self.decoder = dec.Decoder(decoder_params, rngs=rngs)

    def __call__(self, content: Array, style: Array, alpha: float | Array = 1.0) -> Array:
        """Stylize `content` (N, H, W, 3) with `style` (N or 1, h, w, 3); returns (N, H, W, 3) in [0, 1]."""
        f = self.encoder(content, (TAP,))[TAP]
        s_mean, s_std = ops.mean_std(self.encoder(style, (TAP,))[TAP], EPS)
        t = ops.adain_with_stats(f, s_mean, s_std, EPS)
        alpha = jnp.broadcast_to(jnp.asarray(alpha, f.dtype), (f.shape[0],))
        out = self.decoder(mix_alpha(t, f, alpha))
        return _finish(out, content.shape[1], content.shape[2])


def flops(height: int, width: int, spec: VGGSpec, with_style: bool = True) -> float:
    """Nominal FLOPs (2 x multiply-adds of the convolutions) of one stylization at `height` x `width`.

    Counted as pytorch-AdaIN computes it: content encoder, the style encoder at the same size if `with_style`,
    and the decoder convolving its upsampled maps (`decode` does fewer operations for the same result).
    """
    from nst_jax.vgg import CONVS

    def down(n: int, times: int) -> int:
        for _ in range(times):
            n = -(-n // 2) if spec.ceil_mode else n // 2
        return n

    enc = 0.0
    for name, cin, cout in CONVS[:9]:  # conv1_1 ... conv4_1
        block = int(name[4])
        enc += 2.0 * down(height, block - 1) * down(width, block - 1) * 9 * cin * cout
    hh, ww = feature_grid(height, width, spec)
    total = enc * (2 if with_style else 1)
    for _, cin, cout, up in dec.DECODER_CONVS:
        total += 2.0 * hh * ww * 9 * cin * cout
        if up:
            hh, ww = 2 * hh, 2 * ww
    return total


__all__ = [
    "AdaIN", "CHANNELS", "EPS", "SCALE", "TAP", "blend_statistics", "content_features", "decode",
    "feature_grid", "flops", "mix_alpha", "region_adain", "style_statistics", "stylize", "stylize_regions",
    "upsample_conv",
]
