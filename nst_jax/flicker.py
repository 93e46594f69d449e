"""The flicker metric of a stylized video (host side, NumPy; flow from `nst_jax.flow`).

`warping_error` is the warping error of Lai et al., "Learning Blind Video Temporal Consistency" (ECCV 2018), as
their `evaluate_WarpError.py` computes it: stylized frame t+1 is warped back onto frame t with the *input*
video's forward flow t -> t+1 (`nst_jax.flow.warp`), occluded pixels are masked (`nst_jax.flow.valid_mask`), and
the pair's error is sum(mask * diff^2) / sum(mask) over pixels and channels (the mask repeated over the 3
channels, so: the mean squared difference over valid pixel-channels), averaged over the pairs. Images are float
RGB in [0, 1] (Lai et al. read 8-bit frames). One deliberate difference: pixels whose flow leaves the frame are
masked too (`mask_outside`), because they have no counterpart in frame t+1; Lai et al.'s border clamping
compares them with an edge pixel. `ssim` is the structural similarity of Wang et al. 2004 (11-tap Gaussian
window, sigma 1.5, K1 0.01, K2 0.03, population covariances, "valid" windows only), per channel, averaged.
`flicker_report` / `FlickerMeter` give the warping error of a stabilised output always together with its
per-frame SSIM to the unstabilised per-frame output, so a frozen or blurred video cannot score well on flicker
alone; `describe` puts a report in one line.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nst_jax.errors import NstError
from nst_jax.flow import as_frame, dis_flow, valid_mask, warp

# SSIM constants of Wang et al. 2004.
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


# ----------------------------------------------------------------------------------------------------
# The warping error (NumPy)


def pair_warping_error(out_t: Any, out_next: Any, fw: Any, mask: Any) -> float:
    """Warping error of one pair: sum(mask * (warp(out_{t+1}, fw) - out_t)^2) / sum(mask), mask over channels.

    Returns 0 when no pixel is valid (as Lai et al., whose masked difference is then all zeros).
    """
    a = as_frame(out_t, "frame").astype(np.float64)
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
        inp = as_frame(input_frame, "input frame", 3)
        out = as_frame(output, "output frame", 3).astype(np.float32)
        ref = None if reference is None else as_frame(reference, "reference frame", 3).astype(np.float32)
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


def describe(report: dict[str, Any]) -> str:
    """One line for people: the flicker numbers of a report."""
    ref = report.get("warping_error_per_frame")
    ratio = f" ({report['warping_error'] / ref:.2f}x per-frame {ref:.3g})" if ref else ""
    return (f"warping error {report['warping_error']:.3g}{ratio}, SSIM to per-frame "
            f"{report['ssim_to_per_frame']:.3f} (min {report['ssim_to_per_frame_min']:.3f}) over "
            f"{report['frames']} frames, {report['flow']} flow")


__all__ = [
    "FlickerMeter", "describe", "flicker_report", "pair_warping_error", "ssim", "warping_error",
]
