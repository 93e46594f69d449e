"""Colour: colour spaces, colour preservation (luminance and CORAL transfer) and colour jitter.

Colour preservation (Gatys et al. 2016, "Preserving color in neural artistic style transfer"):
- `luminance_transfer(stylized, content)`: the stylized image's luminance with the content's chroma (YIQ).
- `coral(source, target)`: recolour `source` so its RGB mean and covariance match `target`'s; with
  source=style and target=content before stylizing, this is pytorch-AdaIN's `--preserve_color`.
Colour-space and transfer functions accept NumPy or JAX arrays (channels last, any leading shape) and return the
same kind. `rgb_to_hsv`, `hsv_to_rgb` and `color_jitter` are NumPy only (training augmentation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax.resample import resize
from nst_jax.typing import ArrayLike

# ----------------------------------------------------------------------------------------------------
# Colour spaces (NumPy or JAX, any leading shape, channels last)

# NTSC YIQ (FCC) and full-range BT.601 YCbCr (JPEG, offsets 0.5 for [0, 1] images). The inverses are the exact
# matrix inverses, so round trips are exact up to float rounding.
_RGB2YIQ = np.array([[0.299, 0.587, 0.114],
                     [0.595716, -0.274453, -0.321263],
                     [0.211456, -0.522591, 0.311135]], np.float64)
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)
_RGB2YCC = np.array([[0.299, 0.587, 0.114],
                     [-0.168735892, -0.331264108, 0.5],
                     [0.5, -0.418687589, -0.081312411]], np.float64)
_YCC2RGB = np.linalg.inv(_RGB2YCC)
_YCC_OFFSET = np.array([0.0, 0.5, 0.5], np.float64)


def _xp(x: ArrayLike):
    return jnp if isinstance(x, jax.Array) else np


def _apply_matrix(x: ArrayLike, m: np.ndarray) -> ArrayLike:
    if isinstance(x, jax.Array):
        return jnp.einsum("...c,dc->...d", x, jnp.asarray(m, x.dtype), precision=jax.lax.Precision.HIGHEST)
    x = np.asarray(x)
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
    return (x.astype(np.float64) @ m.T).astype(dtype)


def _const(x: ArrayLike, v: np.ndarray) -> ArrayLike:
    """`v` (per channel) in `x`'s kind and dtype, with `x`'s rank (explicit broadcasting for strict JAX)."""
    v = v.reshape((1,) * (np.ndim(x) - 1) + v.shape)
    return jnp.asarray(v, x.dtype) if isinstance(x, jax.Array) else v.astype(np.asarray(x).dtype)


def rgb_to_yiq(img: ArrayLike) -> ArrayLike:
    """RGB -> YIQ (Y luminance in [0, 1], I and Q chroma), channels last."""
    return _apply_matrix(img, _RGB2YIQ)


def yiq_to_rgb(img: ArrayLike) -> ArrayLike:
    """YIQ -> RGB, the inverse of `rgb_to_yiq` (not clipped)."""
    return _apply_matrix(img, _YIQ2RGB)


def rgb_to_ycbcr(img: ArrayLike) -> ArrayLike:
    """RGB -> full-range YCbCr (JPEG's BT.601), all three in [0, 1] for RGB in [0, 1]."""
    y = _apply_matrix(img, _RGB2YCC)
    return y + _const(y, _YCC_OFFSET)


def ycbcr_to_rgb(img: ArrayLike) -> ArrayLike:
    """Full-range YCbCr -> RGB, the inverse of `rgb_to_ycbcr` (not clipped)."""
    if not isinstance(img, jax.Array):
        img = np.asarray(img)
    return _apply_matrix(img - _const(img, _YCC_OFFSET), _YCC2RGB)


def rgb_to_hsv(x: np.ndarray) -> np.ndarray:
    """RGB -> HSV (all three in [0, 1], hue in turns), channels last; as `colorsys.rgb_to_hsv` per pixel."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = x.max(-1)
    c = v - x.min(-1)
    s = np.where(v > 0, c / np.where(v > 0, v, 1), 0)
    safe = np.where(c > 0, c, 1)
    h = np.where(v == r, (g - b) / safe, np.where(v == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = np.where(c > 0, (h / 6.0) % 1.0, 0)
    return np.stack([h, s, v], -1)


def hsv_to_rgb(x: np.ndarray) -> np.ndarray:
    """HSV -> RGB, the inverse of `rgb_to_hsv`; as `colorsys.hsv_to_rgb` per pixel."""
    h, s, v = x[..., 0], x[..., 1], x[..., 2]
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.astype(np.int32) % 6
    choices = [np.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))]
    out = np.zeros_like(x)
    for k, c in enumerate(choices):
        out = np.where((i == k)[..., None], c, out)
    return out


# ----------------------------------------------------------------------------------------------------
# Colour jitter (training augmentation)


def color_jitter(a: np.ndarray, rng: np.random.Generator, *, brightness: float = 0.8,
                 saturation: tuple[float, float] = (0.5, 1.5), hue: float = 0.2) -> np.ndarray:
    """Random brightness, saturation and hue of a uint8 image, as tf.image's random_* functions in that order.

    The defaults are Magenta's `arbitrary_style_image_inputs(augment_style_images=True)`: random_brightness(0.8),
    random_saturation(0.5, 1.5), random_hue(0.2). Three uniform draws from `rng`, in that order.

    Args:
      a: (H, W, 3) uint8 RGB.
      rng: the random generator.
      brightness: a shift drawn from [-brightness, brightness] is added (on [0, 1] values, then clipped).
      saturation: the saturation is scaled by a factor drawn from this range (then clipped).
      hue: a shift drawn from [-hue, hue] (in turns) is added to the hue.

    Returns:
      (H, W, 3) uint8.
    """
    x = a.astype(np.float32) / np.float32(255)
    x = np.clip(x + np.float32(rng.uniform(-brightness, brightness)), 0, 1)
    hsv = rgb_to_hsv(x)
    hsv[..., 1] = np.clip(hsv[..., 1] * np.float32(rng.uniform(*saturation)), 0, 1)
    hsv[..., 0] = (hsv[..., 0] + np.float32(rng.uniform(-hue, hue))) % 1.0
    x = hsv_to_rgb(hsv)
    return np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------
# Colour preservation


def luminance_transfer(stylized: ArrayLike, content: ArrayLike) -> ArrayLike:
    """Luminance-only colour preservation: the stylized image's luminance with the content's chroma (YIQ).

    Args:
      stylized: (N, H, W, 3) in [0, 1].
      content: (N or 1, h, w, 3); resized (bilinear) to (H, W) if needed.

    Returns:
      (N, H, W, 3) in [0, 1], same array kind as `stylized`.
    """
    xp = _xp(stylized)
    if content.shape[1:3] != stylized.shape[1:3]:
        content = resize(content, stylized.shape[1:3], "bilinear")
    if xp is jnp:
        content = jnp.asarray(content, stylized.dtype)
    s = rgb_to_yiq(stylized)
    c = rgb_to_yiq(content)
    c = xp.broadcast_to(c, s.shape)
    yiq = xp.concatenate([s[..., :1], c[..., 1:]], axis=-1)
    return xp.clip(yiq_to_rgb(yiq), 0.0, 1.0)


def _sym_sqrt(xp, cov, inverse: bool):
    w, v = xp.linalg.eigh(cov)
    w = xp.maximum(w, 1e-12)
    d = 1.0 / xp.sqrt(w) if inverse else xp.sqrt(w)
    return (v * d[..., None, :]) @ xp.swapaxes(v, -1, -2)


def coral(source: ArrayLike, target: ArrayLike, eps: float = 1e-5) -> ArrayLike:
    """CORAL colour transfer: recolour `source` so its RGB mean and covariance match `target`'s.

    As pytorch-AdaIN's `util.coral` (standardise per channel, whiten with the inverse square root of the
    channel correlation matrix, colour with the target's), except that correlations are averaged over pixels
    rather than summed, so images of different sizes match too. `coral(style, content)` before stylizing is
    colour preservation by histogram matching.

    Args:
      source: (N, H, W, 3) images to recolour.
      target: (N or 1, h, w, 3) images whose colour statistics to take (any spatial size).
      eps: added to variances and to the correlation diagonals for stability on flat images.

    Returns:
      (N, H, W, 3) in [0, 1], same array kind as `source`.
    """
    xp = _xp(source)
    if xp is np:
        s = np.asarray(source, np.float64)
        t = np.asarray(target, np.float64)
    else:
        s = source
        t = jnp.asarray(target, source.dtype)

    def stats(x):
        f = x.reshape(x.shape[0], -1, 3)
        mean = xp.mean(f, axis=1, keepdims=True)
        std = xp.sqrt(xp.var(f, axis=1, keepdims=True) + eps)
        z = (f - mean) / std
        corr = xp.swapaxes(z, 1, 2) @ z / z.shape[1] + eps * xp.eye(3, dtype=z.dtype)[None]
        return z, mean, std, corr

    zs, _, _, cs = stats(s)
    _, mt, st, ct = stats(t)
    a = _sym_sqrt(xp, ct, False) @ _sym_sqrt(xp, cs, True)
    out = (zs @ xp.swapaxes(a, 1, 2)) * st + mt
    out = xp.clip(out.reshape(s.shape), 0.0, 1.0)
    if xp is np:
        dtype = source.dtype if np.issubdtype(np.asarray(source).dtype, np.floating) else np.float32
        return out.astype(dtype)
    return out
