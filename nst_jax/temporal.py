"""Temporal consistency for video: the flicker metric and the stabilisation maths.

Flicker metric (host side, NumPy; OpenCV only for DIS flow)
- `warp`, `occlusion_mask`, `valid_mask`, `warping_error`: the warping error of Lai et al., "Learning Blind Video
  Temporal Consistency" (ECCV 2018), as their `evaluate_WarpError.py` computes it: stylized frame t+1 is warped
  back onto frame t with the *input* video's forward flow t -> t+1 (bilinear, coordinates clamped at the border),
  occluded pixels are masked by the forward-backward check of their `compute_flow_occlusion.py` (Sundaram et
  al. 2010: flow inconsistency and motion boundaries), and the pair's error is sum(mask * diff^2) / sum(mask)
  over pixels and channels (the mask repeated over the 3 channels, so: the mean squared difference over valid
  pixel-channels), averaged over the pairs. Images are float RGB in [0, 1] (Lai et al. read 8-bit frames).
  One deliberate difference: pixels whose flow leaves the frame are masked too (`mask_outside`), because they
  have no counterpart in frame t+1; Lai et al.'s border clamping compares them with an edge pixel.
- `ssim`: structural similarity (Wang et al. 2004: 11-tap Gaussian window, sigma 1.5, K1 0.01, K2 0.03,
  population covariances, "valid" windows only), per channel, averaged.
- `flicker_report` / `FlickerMeter`: the warping error of a stabilised output always together with its per-frame
  SSIM to the unstabilised per-frame output, so a frozen or blurred video cannot score well on flicker alone.
- Flow: exact for `synthetic_clip` (a still photo moved by a known camera: pan, zoom, rotation, hand-held shake,
  with sensor noise and a lighting drift), OpenCV's DIS flow (`dis_flow`) for anything else.

Stabilisation (JAX, pure and jit-able)
- Statistic smoothing (`smooth_step`, `smooth_sequence`, `StatSmoother`): an exponential moving average across
  frames of the content-side normalisation statistics, over any pytree of per-layer (mean, var) pairs (AdaIN:
  relu4_1; instance-norm networks: every layer; `stat_pairs` lists the accepted forms), reset at scene cuts,
  which are detected from a jump of those statistics. Strength 0 returns each frame's own statistics, bit for
  bit.
- Any family with smoothed statistics (`StatForward`, over the family contract's `stats_forward`): AdaIN's
  content relu4_1 mean and std, every instance norm of CIN and the arbitrary network.
- Flow-guided blending with the previous output (`flow_blend`, `FlowBlender`): costs one DIS flow per frame.

Scene cuts: `cut_score` is a standardised distance between two frames' statistics (per channel, the mean's jump
in units of the channel's standard deviation and the log-std ratio; RMS over channels, mean over layers). Its
scale depends on the family and the frame size, so a cut is a score `CUT_RATIO` times above the shot's typical
consecutive-frame score. The ratio was chosen from random-weight AdaIN, CIN and arbitrary networks on the
synthetic clips of `PRESETS`, each shot followed by a shot of another photo (docs/video.md has the table): it sits
between the largest within-shot ratio and the smallest ratio at a cut, nearer the within-shot side, because a
missed cut costs more (several frames normalised with the previous shot's statistics) than a false one (one
frame normalised with its own).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax.errors import NstError
from nst_jax.models import MeanVar
from nst_jax.typing import Array

# Lai et al.'s occlusion thresholds (compute_flow_occlusion.py), on flows in pixels.
_FB_RELATIVE, _FB_ABSOLUTE = 0.01, 0.5
_MB_RELATIVE, _MB_ABSOLUTE = 0.01, 0.002
# SSIM constants of Wang et al. 2004.
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
# Scene cut when `cut_score` of two consecutive frames exceeds this many times the shot's typical jump (see the
# module docstring), and how much of the past that typical jump keeps per frame.
CUT_RATIO = 2.2
_TYPICAL_DECAY = 0.8
# Default EMA strength of `nst-jax video --stabilize` (weight of the past; about 1 / (1 - s) frames of memory).
DEFAULT_STRENGTH = 0.5


# ----------------------------------------------------------------------------------------------------
# Warping and occlusion (NumPy)


def _as_frame(x: Any, what: str, channels: int | None = None) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 3 or (channels is not None and a.shape[-1] != channels):
        want = f"(H, W, {channels})" if channels else "(H, W, C)"
        raise NstError(f"{what} must be {want}, got shape {a.shape}")
    return a


def warp(image: Any, flow: Any, *, return_inside: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Backward warp: out[y, x] = image[y + flow[y, x, 1], x + flow[y, x, 0]], bilinear.

    Coordinates outside the image are clamped to the border (as Lai et al.'s Resample2d); integer flows move
    pixels exactly.

    Args:
      image: (H, W, C) float array.
      flow: (H, W, 2) displacements (dx, dy) in pixels, defined on the output grid.
      return_inside: also return where the sampled point lies inside the image.

    Returns:
      (H, W, C) float32 array, and with `return_inside` an (H, W) bool array.
    """
    img = _as_frame(image, "image")
    f = _as_frame(flow, "flow", 2).astype(np.float64)
    H, W = f.shape[:2]
    h, w, c = img.shape
    x = np.arange(W, dtype=np.float64)[None, :] + f[..., 0]
    y = np.arange(H, dtype=np.float64)[:, None] + f[..., 1]
    x0 = np.floor(x)
    y0 = np.floor(y)
    # Weights in float32: integer flows give weights of exactly 0 and 1, so pixels move exactly.
    ax = (x - x0).astype(np.float32)[..., None]
    ay = (y - y0).astype(np.float32)[..., None]
    x0i, y0i = x0.astype(np.int64), y0.astype(np.int64)
    xl, xr = np.clip(x0i, 0, w - 1), np.clip(x0i + 1, 0, w - 1)
    yt, yb = np.clip(y0i, 0, h - 1) * w, np.clip(y0i + 1, 0, h - 1) * w
    src = np.asarray(img, np.float32).reshape(h * w, c)
    top = src[yt + xl] * (1 - ax) + src[yt + xr] * ax
    bottom = src[yb + xl] * (1 - ax) + src[yb + xr] * ax
    out = top * (1 - ay) + bottom * ay
    if not return_inside:
        return out
    tol = 1e-6
    inside = (x >= -tol) & (x <= w - 1 + tol) & (y >= -tol) & (y <= h - 1 + tol)
    return out, inside


def occlusion_mask(fw: Any, bw: Any) -> np.ndarray:
    """Occluded pixels of frame t by Lai et al.'s forward-backward check (Sundaram et al. 2010).

    A pixel is occluded where the forward flow and the backward flow taken at its destination do not cancel,
    |fw + bw(x + fw)|^2 > 0.01 (|fw|^2 + |bw(x + fw)|^2) + 0.5, or on a motion boundary, where the forward flow's
    gradient is large: |grad fw|^2 > 0.01 |fw|^2 + 0.002.

    Args:
      fw: (H, W, 2) flow from frame t to frame t+1, on frame t's grid.
      bw: (H, W, 2) flow from frame t+1 to frame t, on frame t+1's grid.

    Returns:
      (H, W) bool, True where occluded.
    """
    fw = _as_frame(fw, "forward flow", 2).astype(np.float64)
    bw = _as_frame(bw, "backward flow", 2).astype(np.float64)
    bw_at = warp(bw, fw).astype(np.float64)
    total = fw + bw_at
    inconsistent = (np.sum(total ** 2, -1)
                    > _FB_RELATIVE * (np.sum(bw_at ** 2, -1) + np.sum(fw ** 2, -1)) + _FB_ABSOLUTE)
    # Forward differences, zero on the last row / column, as Lai et al.'s compute_flow_gradients.
    du = np.zeros_like(fw)
    dv = np.zeros_like(fw)
    du[:, :-1] = fw[:, :-1] - fw[:, 1:]
    dv[:-1, :] = fw[:-1, :] - fw[1:, :]
    grad = np.sum(du ** 2 + dv ** 2, -1)
    boundary = grad > _MB_RELATIVE * np.sum(fw ** 2, -1) + _MB_ABSOLUTE
    return inconsistent | boundary


def valid_mask(fw: Any, bw: Any, *, mask_outside: bool = True) -> np.ndarray:
    """Pixels of frame t that the warping error counts: not occluded and (by default) flowing inside frame t+1.

    Returns:
      (H, W) float32, 1 where valid.
    """
    fw = _as_frame(fw, "forward flow", 2)
    valid = ~occlusion_mask(fw, bw)
    if mask_outside:
        _, inside = warp(np.zeros(fw.shape[:2] + (1,), np.float32), fw, return_inside=True)
        valid &= inside
    return valid.astype(np.float32)


def pair_warping_error(out_t: Any, out_next: Any, fw: Any, mask: Any) -> float:
    """Warping error of one pair: sum(mask * (warp(out_{t+1}, fw) - out_t)^2) / sum(mask), mask over channels.

    Returns 0 when no pixel is valid (as Lai et al., whose masked difference is then all zeros).
    """
    a = _as_frame(out_t, "frame").astype(np.float64)
    warped = warp(out_next, fw).astype(np.float64)
    m = np.asarray(mask, np.float64)[..., None]
    n = float(np.sum(m)) * a.shape[-1]
    if n == 0.0:
        return 0.0
    return float(np.sum(m * np.square(warped - a)) / n)


def warping_error(frames: Any, fw_flows: Any, masks: Any) -> tuple[float, np.ndarray]:
    """Warping error of a clip (Lai et al.): the mean over consecutive pairs of `pair_warping_error`.

    Args:
      frames: (T, H, W, 3) stylized frames in [0, 1].
      fw_flows: (T-1, H, W, 2) forward flows of the INPUT video.
      masks: (T-1, H, W) valid pixels (`valid_mask`).

    Returns:
      (mean, per-pair errors (T-1,)).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or len(frames) < 2:
        raise NstError(f"the warping error needs (T >= 2, H, W, 3) frames, got shape {frames.shape}")
    if len(fw_flows) != len(frames) - 1 or len(masks) != len(frames) - 1:
        raise NstError(f"{len(frames)} frames need {len(frames) - 1} flows and masks, got {len(fw_flows)} "
                       f"and {len(masks)}")
    errs = np.array([pair_warping_error(frames[t], frames[t + 1], fw_flows[t], masks[t])
                     for t in range(len(frames) - 1)])
    return float(errs.mean()), errs


# ----------------------------------------------------------------------------------------------------
# SSIM


def _gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    k = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-0.5 * (k / sigma) ** 2)
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of (N, H, W, C) with the 1-D window g along H and W."""
    n = len(g)
    h, w = x.shape[1] - n + 1, x.shape[2] - n + 1
    rows = sum(g[i] * x[:, i:i + h] for i in range(n))
    return sum(g[i] * rows[:, :, i:i + w] for i in range(n))


def ssim(a: Any, b: Any, *, data_range: float = 1.0) -> float | np.ndarray:
    """Structural similarity of Wang et al. 2004 (Gaussian window 11, sigma 1.5), mean over pixels and channels.

    Equal to `skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=..., channel_axis=-1)`.

    Args:
      a, b: (H, W, C) or (N, H, W, C) images, H and W at least 11.
      data_range: the images' value range (1 for [0, 1]).

    Returns:
      a float for one image pair, else (N,) float64.
    """
    x = np.asarray(a, np.float64)
    y = np.asarray(b, np.float64)
    if x.shape != y.shape:
        raise NstError(f"SSIM needs images of one shape, got {x.shape} and {y.shape}")
    single = x.ndim == 3
    if single:
        x, y = x[None], y[None]
    if x.ndim != 4 or min(x.shape[1:3]) < SSIM_WINDOW:
        raise NstError(f"SSIM needs (N, H, W, C) images of at least {SSIM_WINDOW} x {SSIM_WINDOW}, got {x.shape}")
    g = _gaussian_window()
    mx, my = _filter_valid(x, g), _filter_valid(y, g)
    sxx = _filter_valid(x * x, g) - mx * mx
    syy = _filter_valid(y * y, g) - my * my
    sxy = _filter_valid(x * y, g) - mx * my
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    per_image = s.mean(axis=(1, 2, 3))
    return float(per_image[0]) if single else per_image


# ----------------------------------------------------------------------------------------------------
# Synthetic clips with exact flow


@dataclasses.dataclass(frozen=True)
class Motion:
    """A camera moving over a still photo, and what the sensor adds.

    Attributes:
      pan: (dx, dy) camera motion in frame pixels per frame (the picture moves the other way).
      zoom: relative magnification per frame (0.01: 1% closer each frame).
      rotate: camera roll in degrees per frame.
      shake: hand-held jitter, RMS in frame pixels (a smoothed random walk).
      shake_rotate: hand-held roll jitter, RMS in degrees.
      noise: sensor noise, the standard deviation of independent Gaussian noise per pixel and frame.
      drift: lighting drift, the relative brightening over the clip (warmer: red 1x, green 0.85x, blue 0.7x).
      object_speed: a round object (textured with the photo turned upside down, radius 0.3 x the frame's height)
        crosses the frame from the left at this many frame widths per frame (0: none). It occludes and
        uncovers the background: local content change, the case where per-frame statistics jump.
      seed: random seed of the shake and the noise.
    """

    pan: tuple[float, float] = (0.0, 0.0)
    zoom: float = 0.0
    rotate: float = 0.0
    shake: float = 0.0
    shake_rotate: float = 0.0
    noise: float = 0.0
    drift: float = 0.0
    object_speed: float = 0.0
    seed: int = 0


# The benchmark's clips: a slow pan, a slow zoom, and a hand-held shake with more noise.
PRESETS: dict[str, Motion] = {
    "static": Motion(),
    "pan": Motion(pan=(0.75, 0.25), noise=0.01, drift=0.05),
    "zoom": Motion(zoom=0.01, rotate=0.1, noise=0.01, drift=0.05),
    "shake": Motion(shake=1.5, shake_rotate=0.3, noise=0.02, drift=0.05),
    "object": Motion(pan=(0.25, 0.0), object_speed=0.04, noise=0.01),
}


class SyntheticClip(NamedTuple):
    """A clip with its exact flows.

    Attributes:
      frames: (T, H, W, 3) float32 in [0, 1].
      fw: (T-1, H, W, 2) flows t -> t+1 on frame t's grid.
      bw: (T-1, H, W, 2) flows t+1 -> t on frame t+1's grid.
      clean: (T, H, W, 3) the frames without noise and drift.
    """

    frames: np.ndarray
    fw: np.ndarray
    bw: np.ndarray
    clean: np.ndarray


def _smoothed_walk(rng: np.random.Generator, n: int, dims: int, rms: float) -> np.ndarray:
    # A random walk pulled back to the origin, so the camera wobbles around its rest position.
    steps = rng.standard_normal((n, dims))
    walk = np.zeros((n, dims))
    for t in range(1, n):
        walk[t] = 0.8 * walk[t - 1] + steps[t]
    walk -= walk.mean(axis=0)
    scale = np.sqrt(np.mean(walk ** 2)) or 1.0
    return walk * (rms / scale)


def _camera(motion: Motion, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per frame t: the 2x2 linear map M_t (photo pixels per frame pixel, before the base scale) and offset o_t.

    Frame pixel x maps to photo point c_photo + s0 * (M_t (x - c_frame) + o_t).
    """
    rng = np.random.default_rng(motion.seed)
    shake = _smoothed_walk(rng, n, 2, motion.shake) if motion.shake else np.zeros((n, 2))
    roll = _smoothed_walk(rng, n, 1, motion.shake_rotate)[:, 0] if motion.shake_rotate else np.zeros(n)
    t = np.arange(n, dtype=np.float64)
    theta = np.deg2rad(motion.rotate * t + roll)
    scale = (1.0 + motion.zoom) ** (-t)
    cos, sin = np.cos(theta), np.sin(theta)
    m = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2) * scale[:, None, None]
    offset = np.asarray(motion.pan, np.float64)[None, :] * t[:, None] + shake
    return m, offset


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (H, W, C), edges extended."""
    if sigma <= 0:
        return img
    r = max(1, int(np.ceil(3.0 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    x = np.pad(img.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="edge")
    h, w = img.shape[:2]
    x = sum(k[i] * x[i:i + h] for i in range(2 * r + 1))
    x = sum(k[i] * x[:, i:i + w] for i in range(2 * r + 1))
    return x.astype(np.float32)


def synthetic_clip(photo: Any, n_frames: int, size: tuple[int, int], motion: Motion | str = "pan", *,
                   scale: float | None = None, blur: float = 0.7) -> SyntheticClip:
    """A video of a still photo filmed by a moving camera, with its exact optical flow.

    Each frame samples the photo (bilinear) through the camera of `motion`; flows are exact (the background is a
    plane; only points leaving the frame, and with `object_speed` the background the object covers and uncovers,
    lack a counterpart). Noise and drift are added after sampling,
    so `clean` holds the geometry alone.

    Args:
      photo: (H, W, 3) (or (1, H, W, 3)) float RGB in [0, 1], larger than the frames.
      n_frames: T >= 2.
      size: (height, width) of the frames.
      motion: a `Motion` or a name in `PRESETS`.
      scale: photo pixels per frame pixel at the first frame; default: 90% of the largest that keeps every
        frame inside the photo. With scale 1 and an integer pan, frames are exact integer shifts of each other.
      blur: the lens: a Gaussian blur of this many frame pixels (sigma) applied to the photo before sampling,
        so frames are band-limited as a camera's are (without it, downsampling aliases and even a perfect
        video's bilinear warping error is large). 0: none.

    Returns:
      a `SyntheticClip`.

    Raises:
      NstError: an unknown preset, or a camera that would leave the photo.
    """
    if isinstance(motion, str):
        if motion not in PRESETS:
            raise NstError(f"unknown motion preset {motion!r}; known: {', '.join(PRESETS)}")
        motion = PRESETS[motion]
    img = np.asarray(photo, np.float32)
    if img.ndim == 4 and img.shape[0] == 1:
        img = img[0]
    img = _as_frame(img, "photo", 3)
    if n_frames < 2:
        raise NstError(f"a clip needs at least 2 frames, got {n_frames}")
    h, w = int(size[0]), int(size[1])
    ph, pw = img.shape[:2]
    m, o = _camera(motion, n_frames)
    cf = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    cp = np.array([(pw - 1) / 2.0, (ph - 1) / 2.0])
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float64)
    rel = np.stack([gx - cf[0], gy - cf[1]], -1)  # (h, w, 2)
    q = np.einsum("tij,hwj->thwi", m, rel) + o[:, None, None, :]  # photo offsets / s0
    corners = q[:, [0, 0, -1, -1], [0, -1, 0, -1], :].reshape(-1, 2)
    reach = np.max(np.abs(corners), axis=0)
    fit = min(cp[0] / max(reach[0], 1e-9), cp[1] / max(reach[1], 1e-9))
    s0 = 0.9 * fit if scale is None else float(scale)
    if s0 > fit * (1 + 1e-9):
        raise NstError(f"the camera leaves the {pw}x{ph} photo at scale {s0:.3g} (at most {fit:.3g} fits)")
    img = _gaussian_blur(img, blur * s0)
    clean = np.empty((n_frames, h, w, 3), np.float32)
    for t in range(n_frames):
        p = cp + s0 * q[t]
        clean[t] = warp(img, np.stack([p[..., 0] - gx, p[..., 1] - gy], -1))
    inside_object = np.zeros((n_frames, h, w), bool)
    speed = motion.object_speed * w
    if motion.object_speed:
        radius = 0.3 * h
        flipped = img[::-1, ::-1]
        for t in range(n_frames):
            cx = -0.5 * radius + speed * t
            inside_object[t] = (gx - cx) ** 2 + (gy - cf[1]) ** 2 <= radius ** 2
            # The object's texture travels with it: its pixel x shows the flipped photo at s0 (x - centre).
            tex = warp(flipped, np.stack([cp[0] + s0 * (gx - cx) - gx, cp[1] + s0 * (gy - cf[1]) - gy], -1))
            clean[t] = np.where(inside_object[t][..., None], tex, clean[t])
    # Exact flow: x in frame t shows photo point P = M_t (x - c) + o_t (in units of s0); frame t+1 shows it at
    # x' = M_{t+1}^{-1} (P - o_{t+1}) + c.
    inv = np.linalg.inv(m)
    fw = np.empty((n_frames - 1, h, w, 2), np.float32)
    bw = np.empty((n_frames - 1, h, w, 2), np.float32)
    for t in range(n_frames - 1):
        dst = np.einsum("ij,hwj->hwi", inv[t + 1], q[t] - o[t + 1]) + cf
        fw[t] = dst - np.stack([gx, gy], -1)
        src = np.einsum("ij,hwj->hwi", inv[t], q[t + 1] - o[t]) + cf
        bw[t] = src - np.stack([gx, gy], -1)
        fw[t][inside_object[t]] = (speed, 0.0)
        bw[t][inside_object[t + 1]] = (-speed, 0.0)
    rng = np.random.default_rng(motion.seed + 1)
    ramp = np.linspace(0.0, 1.0, n_frames, dtype=np.float32)[:, None, None, None]
    tint = np.asarray([1.0, 0.85, 0.7], np.float32)
    frames = clean * (np.float32(1.0) + np.float32(motion.drift) * ramp * tint)
    if motion.noise:
        frames = frames + rng.standard_normal(frames.shape).astype(np.float32) * np.float32(motion.noise)
    frames = np.clip(frames, 0.0, 1.0).astype(np.float32)
    return SyntheticClip(frames, fw, bw, clean)


# ----------------------------------------------------------------------------------------------------
# DIS optical flow


_DIS_PRESETS = {"ultrafast": 0, "fast": 1, "medium": 2}


def dis_flow(a: Any, b: Any, preset: str = "medium") -> np.ndarray:
    """Optical flow from frame a to frame b with OpenCV's DIS (Kroeger et al. 2016): a(x) ~ b(x + flow(x)).

    Args:
      a, b: (H, W, 3) float RGB in [0, 1] (or uint8); the flow is computed on their luminance.
      preset: "ultrafast", "fast" or "medium" (OpenCV's DISOpticalFlow presets; medium for measuring).

    Returns:
      (H, W, 2) float32 (dx, dy).
    """
    try:
        import cv2
    except ImportError:
        raise NstError("optical flow needs OpenCV: pip install opencv-python-headless") from None
    if preset not in _DIS_PRESETS:
        raise NstError(f"unknown DIS preset {preset!r}; use {', '.join(_DIS_PRESETS)}")
    dis = cv2.DISOpticalFlow_create(_DIS_PRESETS[preset])
    return dis.calc(_gray_u8(a), _gray_u8(b), None).astype(np.float32)


def _gray_u8(x: Any) -> np.ndarray:
    a = _as_frame(x, "frame", 3)
    if a.dtype != np.uint8:
        a = np.rint(np.clip(np.asarray(a, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    # ITU-R BT.601 luma, as cv2.COLOR_RGB2GRAY.
    y = a[..., 0] * 0.299 + a[..., 1] * 0.587 + a[..., 2] * 0.114
    return np.ascontiguousarray(np.rint(y).astype(np.uint8))


def clip_flows(frames: Any, preset: str = "medium") -> tuple[np.ndarray, np.ndarray]:
    """Forward and backward DIS flows of every consecutive pair: ((T-1, H, W, 2), (T-1, H, W, 2))."""
    frames = np.asarray(frames)
    fw = np.stack([dis_flow(frames[t], frames[t + 1], preset) for t in range(len(frames) - 1)])
    bw = np.stack([dis_flow(frames[t + 1], frames[t], preset) for t in range(len(frames) - 1)])
    return fw, bw


def endpoint_error(flow: Any, reference: Any, mask: Any | None = None) -> float:
    """Mean end-point error |flow - reference| in pixels, over `mask` (default: every pixel)."""
    e = np.sqrt(np.sum(np.square(np.asarray(flow, np.float64) - np.asarray(reference, np.float64)), -1))
    if mask is None:
        return float(e.mean())
    m = np.asarray(mask, bool)
    return float(e[m].mean()) if m.any() else 0.0


# ----------------------------------------------------------------------------------------------------
# The report


class FlickerMeter:
    """Streams a clip frame by frame into the flicker report (memory: one previous frame of each kind).

    Feed every frame in order with `add(input, output, reference)`; `report()` gives the numbers. Without
    `flows`, the input video's flows are DIS flows (forward and backward per pair, for the occlusion check).

    Args:
      flow_preset: DIS preset for the input's flow.
      mask_outside: also mask pixels whose flow leaves the frame (see the module docstring).
    """

    def __init__(self, flow_preset: str = "medium", *, mask_outside: bool = True):
        self.flow_preset = flow_preset
        self.mask_outside = mask_outside
        self._prev: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None
        self._errors: list[float] = []
        self._reference_errors: list[float] = []
        self._valid: list[float] = []
        self._ssim: list[float] = []
        self._exact = False
        self.frames = 0

    def add(self, input_frame: Any, output: Any, reference: Any | None = None,
            flows: tuple[Any, Any] | None = None) -> None:
        """Add the next frame.

        Args:
          input_frame: (H, W, 3) the input video's frame (what the flow is computed on).
          output: (H, W, 3) the (stabilised) stylized frame in [0, 1].
          reference: (H, W, 3) the unstabilised per-frame stylization of the same frame, or None when the output
            is per-frame itself (its SSIM is then 1).
          flows: the exact (forward, backward) flows from the previous frame to this one, if known.
        """
        inp = _as_frame(input_frame, "input frame", 3)
        out = _as_frame(output, "output frame", 3).astype(np.float32)
        ref = None if reference is None else _as_frame(reference, "reference frame", 3).astype(np.float32)
        if inp.shape[:2] != out.shape[:2] or (ref is not None and ref.shape != out.shape):
            raise NstError(f"input {inp.shape}, output {out.shape} and reference frames must share a size")
        self._ssim.append(1.0 if ref is None else float(ssim(out, ref)))
        if self._prev is not None:
            p_inp, p_out, p_ref = self._prev
            if flows is None:
                fw = dis_flow(p_inp, inp, self.flow_preset)
                bw = dis_flow(inp, p_inp, self.flow_preset)
            else:
                fw, bw = (np.asarray(f, np.float32) for f in flows)
                self._exact = True
            mask = valid_mask(fw, bw, mask_outside=self.mask_outside)
            self._valid.append(float(mask.mean()))
            self._errors.append(pair_warping_error(p_out, out, fw, mask))
            if ref is not None and p_ref is not None:
                self._reference_errors.append(pair_warping_error(p_ref, ref, fw, mask))
        self._prev = (inp, out, ref)
        self.frames += 1

    def report(self) -> dict[str, Any]:
        """The numbers, JSON-able.

        Returns:
          {"warping_error", "warping_error_per_frame" (the reference's, or null), "ssim_to_per_frame" (mean),
           "ssim_to_per_frame_min", "frames", "pairs", "valid_fraction" (mean share of pixels counted),
           "flow" ("exact" or "dis-<preset>")}.
        """
        if self.frames < 2:
            raise NstError(f"a flicker report needs at least 2 frames, got {self.frames}")
        return {
            "warping_error": float(np.mean(self._errors)),
            "warping_error_per_frame": (float(np.mean(self._reference_errors)) if self._reference_errors
                                        else None),
            "ssim_to_per_frame": float(np.mean(self._ssim)),
            "ssim_to_per_frame_min": float(np.min(self._ssim)),
            "frames": int(self.frames),
            "pairs": len(self._errors),
            "valid_fraction": float(np.mean(self._valid)),
            "flow": "exact" if self._exact else f"dis-{self.flow_preset}",
        }


def flicker_report(outputs: Any, inputs: Any, reference: Any | None = None, *,
                   flows: tuple[Any, Any] | None = None, flow_preset: str = "medium") -> dict[str, Any]:
    """Warping error of `outputs` and their per-frame SSIM to `reference`, as one JSON-able dict.

    Args:
      outputs: (T, H, W, 3) stylized (stabilised) frames in [0, 1].
      inputs: (T, H, W, 3) the input frames (the flow is the input video's).
      reference: (T, H, W, 3) the unstabilised per-frame stylization, or None (outputs are per-frame).
      flows: exact (fw (T-1, H, W, 2), bw (T-1, H, W, 2)) flows (e.g. `SyntheticClip.fw, .bw`); default DIS.
      flow_preset: DIS preset when `flows` is None.

    Returns:
      `FlickerMeter.report()`.
    """
    outputs = np.asarray(outputs)
    inputs = np.asarray(inputs)
    if outputs.shape[0] != inputs.shape[0]:
        raise NstError(f"{len(outputs)} output frames for {len(inputs)} input frames")
    meter = FlickerMeter(flow_preset)
    for t in range(len(outputs)):
        f = None if flows is None or t == 0 else (flows[0][t - 1], flows[1][t - 1])
        meter.add(inputs[t], outputs[t], None if reference is None else reference[t], f)
    return meter.report()


# ----------------------------------------------------------------------------------------------------
# Statistic smoothing (JAX)


class SmoothState(NamedTuple):
    """What the smoother carries from frame to frame (leaves shaped like one frame's statistics).

    Attributes:
      smoothed: the smoothed statistics of the last frame.
      previous: the last frame's own statistics (scene cuts are jumps between consecutive frames).
      started: () bool, False before the first frame.
      typical: () float32, the shot's typical `cut_score` between consecutive frames (a moving average).
      pairs: () int32, how many consecutive pairs the current shot has had (0: no typical jump known yet).
    """

    smoothed: Any
    previous: Any
    started: Array
    typical: Array
    pairs: Array


def _is_pair(x: Any) -> bool:
    if isinstance(x, MeanVar):
        return True
    if isinstance(x, dict) and set(x) == {"mean", "var"}:
        return all(hasattr(v, "shape") for v in x.values())
    return (isinstance(x, tuple) and not hasattr(x, "_fields") and len(x) == 2
            and all(hasattr(v, "shape") for v in x))


def stat_pairs(stats: Any) -> list[tuple[Array, Array]]:
    """The (mean, var) pairs of a statistics pytree, in order.

    A layer's pair is a `MeanVar`, a plain (mean, var) tuple (the arbitrary network's `norm_stats`) or a
    {"mean", "var"} dict (CIN's).
    """
    pairs = jax.tree.leaves(stats, is_leaf=_is_pair)
    if not pairs or not all(_is_pair(p) for p in pairs):
        raise NstError("statistics must be a pytree of per-layer MeanVar(mean, var), (mean, var) tuples or "
                       "{'mean', 'var'} dicts")
    return [(p["mean"], p["var"]) if isinstance(p, dict) else (p[0], p[1]) for p in pairs]


def init_state(stats: Any, batched: bool = True) -> SmoothState:
    """An empty smoother state shaped like one frame of `stats` (drop the leading frame axis if `batched`)."""
    def zero(x: Array) -> Array:
        return jnp.zeros(x.shape[1:] if batched else x.shape, x.dtype)

    z = jax.tree.map(zero, stats)
    return SmoothState(z, z, jnp.zeros((), bool), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))


def cut_score(previous: Any, current: Any, rel_eps: float = 1e-3) -> Array:
    """How far one frame's statistics jumped from the previous frame's: a standardised distance.

    Per layer, the RMS over channels of sqrt(z^2 + r^2), with z the jump of the channel mean in units of the
    channel's standard deviation (the two frames' variances averaged) and r half the log variance ratio; layers
    are averaged. Variances are floored at `rel_eps` times the layer's mean variance so that dead channels do
    not dominate. Scale-free; still, its typical size depends on the family and the frame size (larger frames
    average more positions), which is why scene cuts are judged relative to the shot's own typical jump.

    Args:
      previous, current: statistics pytrees of one frame each (same structure and shapes).

    Returns:
      () float32.
    """
    scores = []
    for (m0, v0), (m1, v1) in zip(stat_pairs(previous), stat_pairs(current), strict=True):
        m0, v0, m1, v1 = (jnp.asarray(a, jnp.float32) for a in (m0, v0, m1, v1))
        avg = 0.5 * (v0 + v1)
        floor = rel_eps * jnp.mean(avg) + 1e-12
        z2 = jnp.square(m1 - m0) / (avg + floor)
        r2 = jnp.square(0.5 * jnp.log((v1 + floor) / (v0 + floor)))
        scores.append(jnp.sqrt(jnp.mean(z2 + r2)))
    return jnp.mean(jnp.stack(scores))


def smooth_step(state: SmoothState, stats: Any, strength: float | Array, cut_ratio: float | Array = CUT_RATIO,
                valid: bool | Array = True) -> tuple[Any, SmoothState, Array]:
    """One frame of statistic smoothing: an exponential moving average, reset at scene cuts.

    smoothed_t = strength * smoothed_{t-1} + (1 - strength) * stats_t, except on the first frame, at a scene cut
    and at strength 0, where it is stats_t itself (bit for bit: selected, not computed).

    A scene cut is a jump `cut_score(stats_{t-1}, stats_t)` larger than `cut_ratio` times the shot's typical
    jump (a moving average of its earlier consecutive-frame scores, weight 0.8 on the past); a shot's first
    pair only sets the typical jump. Relative, because the scores' scale differs between families and frame
    sizes while the ratio of a cut to the usual change does not (docs/video.md has the measurements).

    Args:
      state: the carried `SmoothState`.
      stats: this frame's statistics pytree (leaves shaped like the state's).
      strength: in [0, 1): the weight of the past.
      cut_ratio: scene-cut threshold, relative to the typical jump.
      valid: False for a padding frame: the state is kept and stats returned unchanged.

    Returns:
      (smoothed statistics, new state, cut: () bool).
    """
    score = cut_score(state.previous, stats)
    cut = state.started & (state.pairs > 0) & (score > cut_ratio * state.typical + 1e-6)
    strength = jnp.asarray(strength, jnp.float32)
    keep = state.started & ~cut & (strength > 0)

    def ema(past: Array, x: Array) -> Array:
        s = strength.astype(x.dtype)
        return jnp.where(keep, s * past + (1 - s) * x, x)

    out = jax.tree.map(ema, state.smoothed, stats)
    # The typical jump: restarted by a cut (the cut's own jump is not typical of either shot).
    pairs = jnp.where(cut | ~state.started, 0, state.pairs + 1).astype(jnp.int32)
    typical = jnp.where(state.pairs > 0, _TYPICAL_DECAY * state.typical + (1 - _TYPICAL_DECAY) * score, score)
    typical = jnp.where(cut | ~state.started, 0.0, typical).astype(jnp.float32)
    valid = jnp.asarray(valid, bool)
    new = SmoothState(out, stats, jnp.ones((), bool), typical, pairs)
    new = jax.tree.map(lambda n, o: jnp.where(valid, n, o), new, state)
    return out, new, cut & valid


def smooth_sequence(state: SmoothState, stats: Any, strength: float | Array, cut_ratio: float | Array = CUT_RATIO,
                    valid: Array | None = None) -> tuple[Any, SmoothState, Array]:
    """`smooth_step` over consecutive frames: statistics with a leading frame axis N, in order (`lax.scan`).

    Args:
      state: the carried state (from `init_state` or a previous batch).
      stats: statistics pytree, leaves (N, ...).
      strength, cut_ratio: as `smooth_step`.
      valid: (N,) bool, False for padding frames at the end of a batch (default all True).

    Returns:
      (smoothed statistics (N, ...), new state, cuts (N,) bool).
    """
    n = jax.tree.leaves(stats)[0].shape[0]
    valid = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid, bool)

    def step(carry: SmoothState, xs: tuple[Any, Array]) -> tuple[SmoothState, tuple[Any, Array]]:
        x, v = xs
        out, carry, cut = smooth_step(carry, x, strength, cut_ratio, v)
        return carry, (out, cut)

    state, (out, cuts) = jax.lax.scan(step, state, (stats, valid))
    return out, state, cuts


_SMOOTH_SEQUENCE = jax.jit(smooth_sequence)


class StatSmoother:
    """Statistic smoothing over a stream of frame batches (the state lives between calls).

    Args:
      strength: EMA weight of the past in [0, 1) (0: per-frame statistics).
      cut_ratio: scene-cut threshold relative to the shot's typical jump (`smooth_step`).

    Attributes:
      cuts: frame indices (counted from the first frame fed) where a scene cut was detected.
      last_cuts: (N,) bool, the cuts of the last batch.
    """

    def __init__(self, strength: float = DEFAULT_STRENGTH, cut_ratio: float = CUT_RATIO):
        if not 0.0 <= strength < 1.0:
            raise NstError(f"stabilisation strength must be in [0, 1), got {strength}")
        if not cut_ratio > 1:
            raise NstError(f"the scene-cut ratio must be above 1, got {cut_ratio}")
        self.strength = float(strength)
        self.cut_ratio = float(cut_ratio)
        self.state: SmoothState | None = None
        self.cuts: list[int] = []
        self.last_cuts = np.zeros((0,), bool)
        self.frames = 0

    def __call__(self, stats: Any, valid: Any | None = None) -> Any:
        """Smooth one batch of consecutive frames' statistics (leaves (N, ...)); returns the same structure.

        Args:
          stats: the batch's statistics.
          valid: (N,) bool, False for padding frames (they neither move the state nor count as frames).
        """
        if self.state is None:
            self.state = init_state(stats)
        n = jax.tree.leaves(stats)[0].shape[0]
        v = np.ones((n,), bool) if valid is None else np.asarray(valid, bool)
        out, self.state, cuts = _SMOOTH_SEQUENCE(self.state, stats, np.float32(self.strength),
                                                 np.float32(self.cut_ratio), v)
        self._record(cuts, v)
        return out

    def _record(self, cuts: Any, valid: np.ndarray) -> None:
        self.last_cuts = np.asarray(cuts, bool)
        self.cuts += [self.frames + int(i) for i in np.flatnonzero(self.last_cuts)]
        self.frames += int(valid.sum())

    def reset(self) -> None:
        """Forget the past (the next frame starts a new scene)."""
        self.state = None


# ----------------------------------------------------------------------------------------------------
# Any family with the statistics seam (`Family.stats_forward`)


class StatForward:
    """A `Stylizer`'s stylization split at its normalisation statistics, through its family's `stats_forward`:
    `analyse` gives the frames' own statistics, `render` runs with given (e.g. smoothed) ones.

    Conditions have a leading axis N (with masks (N, K, ...)), alpha is (N,), masks None or (N, H, W, K) at the
    content's resolution. `analyse` is the network up to its last statistics (AdaIN: the encoder; the rest is
    dead code in its program), `forward` the whole pass with its image (the per-frame output when `stats` is
    None), `render` the whole pass with given statistics. The programs are the Stylizer's own jit cache.

    Args:
      stylizer: a `nst_jax.stylize.Stylizer`.

    Raises:
      NstError: its family has no statistics seam (`stats_forward` None).
    """

    def __init__(self, stylizer: Any):
        family = stylizer.family
        if family.stats_forward is None:
            raise NstError(f"statistic smoothing is not available for a {family.name} model")
        self.st = stylizer
        self._forward = _jitted_pass(stylizer, "stats_forward", None)
        self._stats = _jitted_pass(stylizer, "norm_stats", None)

    def _args(self, content: Any, condition: Any, alpha: Any, masks: Any) -> tuple:
        st = self.st
        return (st.params, st.frozen, jnp.asarray(content, st.dtype),
                jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), condition),
                None if masks is None else jnp.asarray(masks, jnp.float32), jnp.asarray(alpha, jnp.float32))

    def forward(self, content: Any, condition: Any, alpha: Any, stats: Any = None, masks: Any = None
                ) -> tuple[Array, Any]:
        """(images (N, H, W, 3) float32 in [0, 1], the statistics used): the frames' own if `stats` is None."""
        return self._forward(*self._args(content, condition, alpha, masks), stats)

    def analyse(self, content: Any, condition: Any, alpha: Any, masks: Any = None) -> tuple[Any, Any]:
        """(what `render` needs, the frames' own statistics: a pytree with leading axis N)."""
        x = jnp.asarray(content, self.st.dtype)
        return x, self._stats(*self._args(x, condition, alpha, masks))

    def render(self, aux: Any, condition: Any, alpha: Any, stats: Any, masks: Any = None) -> Array:
        """(N, H, W, 3) float32 in [0, 1] with `stats` in place of the frames' own."""
        return self.forward(aux, condition, alpha, stats, masks)[0]

    def smooth(self, smoother: StatSmoother, content: Any, condition: Any, alpha: Any, masks: Any = None,
               valid: Any = None, reference: bool = False) -> tuple[Array, Array | None]:
        """A batch of consecutive frames with statistics smoothed by `smoother` (its state, cuts and
        `last_cuts` advance as in `smoother(stats, valid)`), in one program: the passes share what does not
        depend on the statistics (XLA merges it: AdaIN encodes once).

        Returns:
          (images, the per-frame images (the frames' own statistics) if `reference`, else None).
        """
        args = self._args(content, condition, alpha, masks)
        n = args[2].shape[0]
        v = np.ones((n,), bool) if valid is None else np.asarray(valid, bool)
        if smoother.state is None:
            # (shapes only: eval_shape of the plain function, a jitted one with compiler options cannot nest)
            own = jax.eval_shape(partial(self.st.family.norm_stats, static=self.st.static), *args)
            smoother.state = init_state(own)
        what = "smoothed_sequence_reference" if reference else "smoothed_sequence"
        run = _jitted_pass(self.st, what, partial(_sequence_pass, reference=reference))
        out, ref, smoother.state, cuts = run(*args, smoother.state, np.float32(smoother.strength),
                                             np.float32(smoother.cut_ratio), v)
        smoother._record(cuts, v)
        return out, ref


def _jitted_pass(stylizer: Any, what: str, build: Any) -> Any:
    from nst_jax.stylize import _jitted

    return partial(_jitted(stylizer.family, what, build), static=stylizer.static)


def _sequence_pass(family: Any, reference: bool) -> Any:
    """`StatForward.smooth`'s program for `family`: own statistics, `smooth_sequence`, the pass with them."""
    def run(params: Any, frozen: Any, content: Array, condition: Any, masks: Any, alpha: Array,
            state: SmoothState, strength: Array, cut_ratio: Array, valid: Array, static: Any
            ) -> tuple[Array, Array | None, SmoothState, Array]:
        ref, own = family.stats_forward(params, frozen, content, condition, masks, alpha, None, static)
        smoothed, state, cuts = smooth_sequence(state, own, strength, cut_ratio, valid)
        out, _ = family.stats_forward(params, frozen, content, condition, masks, alpha, smoothed, static)
        return out, ref if reference else None, state, cuts

    return run


_SMOOTH_STEP = jax.jit(smooth_step)


def smooth_frame(state: SmoothState | None, stats: Any, strength: float, cut_ratio: float = CUT_RATIO
                 ) -> tuple[Any, SmoothState]:
    """One frame of one stream (e.g. one client of the live page): `smooth_step` without a batch axis.

    Args:
      state: the stream's state, or None for its first frame.
      stats: the frame's statistics (leaves without a leading axis).
      strength, cut_ratio: as `smooth_step`.

    Returns:
      (the smoothed statistics, the new state).
    """
    if state is None:
        state = init_state(stats, batched=False)
    out, state, _ = _SMOOTH_STEP(state, stats, np.float32(strength), np.float32(cut_ratio), True)
    return out, state


# ----------------------------------------------------------------------------------------------------
# Flow-guided blending


def _remap(image: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`warp` by OpenCV's remap (bilinear, 1/32-pixel weights: fast, for blending, not for measuring)."""
    import cv2

    h, w = flow.shape[:2]
    gx = np.arange(w, dtype=np.float32)[None, :] + flow[..., 0]
    gy = np.arange(h, dtype=np.float32)[:, None] + flow[..., 1]
    out = cv2.remap(np.ascontiguousarray(image, np.float32), gx, gy, cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE)
    inside = (gx >= 0) & (gx <= w - 1) & (gy >= 0) & (gy <= h - 1)
    return out.reshape(image.shape), inside


def blend_weight(current_input: Any, previous_input: Any, flow: Any, strength: float,
                 sigma: float = 0.05) -> np.ndarray:
    """Per-pixel weight of the previous output: `strength` where the input frames agree along the flow.

    The weight falls off as exp(-(d / sigma)^2) with d the mean absolute colour difference between the current
    input and the previous input warped onto it (occlusions and flow errors show up there), and is 0 where the
    flow leaves the frame.

    Args:
      current_input, previous_input: (H, W, 3) float in [0, 1].
      flow: (H, W, 2) flow from the current frame to the previous one, on the current grid.
      strength: the largest weight, in [0, 1).
      sigma: colour tolerance.

    Returns:
      (H, W) float32 in [0, strength].
    """
    warped, inside = _remap(np.asarray(previous_input, np.float32), np.asarray(flow, np.float32))
    d = np.mean(np.abs(warped - np.asarray(current_input, np.float32)), axis=-1)
    return (strength * np.exp(-np.square(d / sigma)) * inside).astype(np.float32)


def flow_blend(current_output: Any, previous_output: Any, flow: Any, weight: Any) -> np.ndarray:
    """out = current + weight * (warp(previous, flow) - current): the previous output carried along the flow.

    Args:
      current_output, previous_output: (H, W, 3) float; flow: (H, W, 2) current -> previous; weight: (H, W).

    Returns:
      (H, W, 3) float32.
    """
    cur = np.asarray(current_output, np.float32)
    w = np.asarray(weight, np.float32)[..., None]
    prev, _ = _remap(np.asarray(previous_output, np.float32), np.asarray(flow, np.float32))
    return (cur + w * (prev - cur)).astype(np.float32)


class FlowBlender:
    """Flow-guided blending over a stream: each output frame is blended with the previous (blended) output.

    Recursive, so the blend is a temporal low-pass along the motion; scene cuts (passed in) restart it.

    Args:
      strength: the largest weight of the previous output, in [0, 1).
      sigma: colour tolerance of `blend_weight`.
      preset: DIS preset (one flow per frame: current -> previous).
    """

    def __init__(self, strength: float = 0.5, sigma: float = 0.05, preset: str = "fast"):
        if not 0.0 <= strength < 1.0:
            raise NstError(f"flow blending strength must be in [0, 1), got {strength}")
        self.strength, self.sigma, self.preset = float(strength), float(sigma), preset
        self._prev: tuple[np.ndarray, np.ndarray] | None = None

    def __call__(self, inputs: Any, outputs: Any, cuts: Iterable[bool] | None = None) -> np.ndarray:
        """Blend a batch of consecutive frames.

        Args:
          inputs: (N, H, W, 3) input frames in [0, 1] (what the flow is computed on).
          outputs: (N, H, W, 3) stylized frames.
          cuts: (N,) True where a frame starts a new scene.

        Returns:
          (N, H, W, 3) float32 blended frames.
        """
        inputs = np.asarray(inputs, np.float32)
        outputs = np.asarray(outputs, np.float32)
        cut_flags = [False] * len(outputs) if cuts is None else [bool(c) for c in cuts]
        result = np.empty_like(outputs)
        for i in range(len(outputs)):
            out = outputs[i]
            if self._prev is not None and not cut_flags[i] and self.strength > 0:
                p_in, p_out = self._prev
                flow = dis_flow(inputs[i], p_in, self.preset)
                out = flow_blend(out, p_out, flow, blend_weight(inputs[i], p_in, flow, self.strength,
                                                                self.sigma))
            result[i] = out
            self._prev = (inputs[i], out)
        return result


def describe(report: dict[str, Any]) -> str:
    """One line for people: the flicker numbers of a report."""
    ref = report.get("warping_error_per_frame")
    ratio = f" ({report['warping_error'] / ref:.2f}x per-frame {ref:.3g})" if ref else ""
    return (f"warping error {report['warping_error']:.3g}{ratio}, SSIM to per-frame "
            f"{report['ssim_to_per_frame']:.3f} (min {report['ssim_to_per_frame_min']:.3f}) over "
            f"{report['frames']} frames, {report['flow']} flow")


__all__ = [
    "CUT_RATIO", "DEFAULT_STRENGTH", "FlickerMeter", "FlowBlender", "MeanVar", "Motion", "PRESETS", "SmoothState",
    "StatForward", "StatSmoother", "SyntheticClip", "blend_weight", "clip_flows", "cut_score", "describe",
    "dis_flow", "endpoint_error", "flicker_report", "flow_blend", "init_state", "occlusion_mask",
    "pair_warping_error", "smooth_frame", "smooth_sequence", "smooth_step", "ssim", "stat_pairs", "synthetic_clip",
    "valid_mask", "warp", "warping_error",
]
