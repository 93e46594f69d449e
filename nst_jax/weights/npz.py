"""The converted weights format: a NumPy `.npz` readable with `allow_pickle=False`.

Arrays are stored as `"<layer>/<leaf>"` (e.g. `conv1_1/kernel`, HWIO float32) beside a `__meta__` entry: a
JSON string with at least `kind` ("vgg19" or "adain_decoder"), and for VGG19 the `spec` (a
`VGGSpec.to_dict()`), plus where it came from (`source` file name and its `sha256`).
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nst_jax.errors import WeightsError

META_KEY = "__meta__"
FORMAT_NAME = "nst-jax-weights"
FORMAT_VERSION = 1


def is_npz(path: str | Path) -> bool:
    """Whether the file is a zip archive holding our `__meta__.npy` entry."""
    try:
        with zipfile.ZipFile(path) as z:
            return f"{META_KEY}.npy" in z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def save_npz(path: str | Path, params: Mapping[str, Mapping[str, Any]], meta: Mapping[str, Any], *,
             overwrite: bool = False) -> Path:
    """Write a parameter tree and its metadata atomically (temp file in the same folder, then rename).

    Args:
      path: destination `.npz`.
      params: {layer: {leaf: array}}; leaves are stored as float32.
      meta: JSON-serialisable; must hold "kind".
      overwrite: replace an existing file.

    Returns:
      The path written.
    """
    path = Path(path)
    if "kind" not in meta:
        raise ValueError("meta needs a 'kind'")
    if path.exists() and not overwrite:
        raise WeightsError(f"{path} already exists (pass --overwrite to replace it)")
    arrays: dict[str, np.ndarray] = {}
    for layer, leaves in params.items():
        for leaf, value in leaves.items():
            if "/" in layer or "/" in leaf:
                raise ValueError(f"parameter names may not contain '/': {layer}/{leaf}")
            arrays[f"{layer}/{leaf}"] = np.asarray(value, np.float32)
    full_meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **dict(meta)}
    arrays[META_KEY] = np.array(json.dumps(full_meta, sort_keys=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_npz(path: str | Path) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """Read a converted `.npz` (no pickle is ever unpickled).

    Returns:
      (params as {layer: {leaf: float32 array}}, meta dict).

    Raises:
      WeightsError: missing file, not one of our `.npz` files, or malformed metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"no such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if META_KEY not in z.files:
                raise WeightsError(f"{path}: an .npz without {META_KEY}; not converted by nst-jax")
            meta = json.loads(str(z[META_KEY][()]))
            params: dict[str, dict[str, np.ndarray]] = {}
            for key in z.files:
                if key == META_KEY:
                    continue
                layer, sep, leaf = key.partition("/")
                if not sep:
                    raise WeightsError(f"{path}: unexpected array {key!r} (expected layer/leaf)")
                params.setdefault(layer, {})[leaf] = np.asarray(z[key], np.float32)
    except (ValueError, OSError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise WeightsError(f"{path}: not a readable nst-jax .npz ({e})") from None
    if not isinstance(meta, dict) or "kind" not in meta:
        raise WeightsError(f"{path}: {META_KEY} lacks 'kind'")
    return params, meta
