"""Synthetic clips with exact optical flow, for measuring flicker without a flow estimator (NumPy).

`synthetic_clip` films a still photo with a moving camera (`Motion`: pan, zoom, rotation, hand-held shake, an
object crossing the frame), adds sensor noise and a lighting drift, and returns the frames with their exact
forward and backward flows (`SyntheticClip`). `PRESETS` are the benchmark's clips (a slow pan, a zoom, a shake
with more noise, a moving object); the photo is blurred first (`_gaussian_blur`, the lens) so frames are
band-limited as a camera's are.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np

from nst_jax.errors import NstError
from nst_jax.flow import as_frame, warp

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
    img = as_frame(img, "photo", 3)
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


__all__ = [
    "Motion", "PRESETS", "SyntheticClip", "synthetic_clip",
]
