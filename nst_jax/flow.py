"""Optical flow for video, host side (NumPy; OpenCV for DIS flow and the blending remap).

`as_frame` checks an (H, W, C) frame. `warp` is the backward warp of Lai et al., "Learning Blind Video Temporal
Consistency" (ECCV 2018): bilinear, coordinates clamped at the border, so integer flows move pixels exactly.
`occlusion_mask` is their forward-backward check (`compute_flow_occlusion.py`, after Sundaram et al. 2010: flow
inconsistency and motion boundaries) and `valid_mask` the pixels a warping error counts (not occluded and, by
default, flowing inside the next frame). Flow is exact for `nst_jax.synthetic` clips; for anything else it is
OpenCV's DIS flow (`dis_flow`, `clip_flows`), and `endpoint_error` measures one flow against another.
Flow-guided blending with the previous output (`blend_weight`, `flow_blend`, `FlowBlender`) stabilises a
stylized video after the fact and costs one DIS flow per frame.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from nst_jax.errors import NstError

# Lai et al.'s occlusion thresholds (compute_flow_occlusion.py), on flows in pixels.
_FB_RELATIVE, _FB_ABSOLUTE = 0.01, 0.5
_MB_RELATIVE, _MB_ABSOLUTE = 0.01, 0.002


# ----------------------------------------------------------------------------------------------------
# Warping and occlusion (NumPy)


def as_frame(x: Any, what: str, channels: int | None = None) -> np.ndarray:
    """`x` as an (H, W, C) array (C == `channels` if given); `what` names it in the NstError otherwise."""
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
    img = as_frame(image, "image")
    f = as_frame(flow, "flow", 2).astype(np.float64)
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
    fw = as_frame(fw, "forward flow", 2).astype(np.float64)
    bw = as_frame(bw, "backward flow", 2).astype(np.float64)
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
    fw = as_frame(fw, "forward flow", 2)
    valid = ~occlusion_mask(fw, bw)
    if mask_outside:
        _, inside = warp(np.zeros(fw.shape[:2] + (1,), np.float32), fw, return_inside=True)
        valid &= inside
    return valid.astype(np.float32)


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
    a = as_frame(x, "frame", 3)
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


__all__ = [
    "FlowBlender", "as_frame", "blend_weight", "clip_flows", "dis_flow", "endpoint_error", "flow_blend",
    "occlusion_mask", "valid_mask", "warp",
]
