"""The type aliases every module shares (one place for them; shapes are in each function's docstring)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

import jax
import numpy as np

Array: TypeAlias = jax.Array
"""A JAX array."""

ArrayLike: TypeAlias = np.ndarray | jax.Array
"""A NumPy or a JAX array: functions typed with it return the kind they were given."""

Params: TypeAlias = Mapping[str, Any]
"""A network's parameters as plain nested mappings of JAX arrays: {layer: {leaf: array}} for the VGG encoders
and the AdaIN decoder (e.g. {"conv1_1": {"kernel": ..., "bias": ...}}), deeper for other families."""

NumpyParams: TypeAlias = dict[str, Any]
"""The same trees as nested dicts of NumPy arrays, as the weight readers and ports (`nst_jax.weights`) make them."""

Images: TypeAlias = ArrayLike
"""(N, H, W, 3) float32 RGB in [0, 1]: the one image convention of the project."""

Features: TypeAlias = Array
"""(N, h, w, C) encoder features (NHWC)."""

Condition: TypeAlias = Any
"""What a style becomes for a model family, as a pytree (AdaIN: relu4_1 mean and std of a style image)."""
