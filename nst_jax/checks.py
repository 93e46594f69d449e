"""Argument checks the library APIs share, worded in parameter names (the command lines translate to flags)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from nst_jax.errors import NstError


def check_weights(weights: Sequence[float], n: int | None = None, *, what: str = "weights") -> list[float]:
    """Check blend weights: one per style (if `n` is given), each finite and >= 0, with a positive sum.

    Args:
      weights: the weights as given.
      n: how many there must be (None: any number, at least one).
      what: how messages name them: the caller's parameter ("weights", "style_blend"); a command line passes
        its flag ("--style-weights").

    Returns:
      the weights as floats, unnormalised.

    Raises:
      NstError: a wrong count, or a negative, non-finite or all-zero set.
    """
    w = [float(x) for x in weights]
    if n is not None and len(w) != n:
        raise NstError(f"{what} has {len(w)} values for {n} styles")
    if not w or not all(math.isfinite(x) and x >= 0 for x in w) or sum(w) <= 0:
        raise NstError(f"{what} must be non-negative numbers with a positive sum, got {w}")
    return w


def normalise_weights(weights: Sequence[float] | None, n: int, *, what: str = "weights") -> np.ndarray:
    """`check_weights`, then scale them to sum to 1; None means equal weights.

    Args:
      weights: n weights, or None.
      n: the number of styles.
      what: how messages name them.

    Returns:
      (n,) float32 summing to 1.

    Raises:
      NstError: as `check_weights`.
    """
    if weights is None:
        return np.full((n,), 1.0 / n, np.float32)
    w = np.asarray(check_weights(weights, n, what=what), np.float64)
    return (w / w.sum()).astype(np.float32)


def image_batch(img: Any, what: str) -> np.ndarray:
    """(H, W, 3) or (N, H, W, 3) float images -> (N, H, W, 3) float32."""
    a = np.asarray(img)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3 or a.shape[1] < 1 or a.shape[2] < 1:
        raise NstError(f"{what} must be (H, W, 3) or (N, H, W, 3) RGB, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise NstError(f"{what} must be float RGB in [0, 1], got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():  # NaN would run through the network into a silently black or grey picture
        raise NstError(f"{what} holds NaN or infinite values; images are float RGB in [0, 1]")
    return a


def alpha_values(alpha: float | Sequence[float], n: int) -> np.ndarray:
    """One alpha per image (a single value is repeated), each in [0, 1], as float32."""
    a = np.asarray(alpha, np.float64).reshape(-1)
    if a.size == 1:
        a = np.full((n,), a[0])
    if a.shape != (n,):
        raise NstError(f"got {a.size} alpha values for {n} images")
    if not np.all((a >= 0) & (a <= 1)):
        raise NstError(f"alpha must be in [0, 1], got {a.tolist() if a.size > 1 else float(a[0])}")
    return a.astype(np.float32)
