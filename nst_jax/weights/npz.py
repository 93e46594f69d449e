"""The converted weights format: a NumPy `.npz` readable with `allow_pickle=False`.

Arrays are stored under their tree paths joined by "/" (`conv1_1/kernel`, HWIO float32; trees of any depth, e.g.
`residual/3/norm1/gamma`) beside a `__meta__` entry: a
JSON string with at least `kind` ("vgg19" or "adain_decoder"), and for VGG19 the `spec` (a
`VGGSpec.to_dict()`), plus where it came from (`source` file name and its `sha256`).
"""

from __future__ import annotations

import json
import math
import tokenize
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nst_jax.errors import WeightsError
from nst_jax.files import atomic_write

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
    """Write a parameter tree and its metadata atomically (`nst_jax.files.atomic_write`).

    Args:
      path: destination `.npz`.
      params: a nested mapping of arrays ({layer: {leaf: array}}, or deeper); leaves are stored as float32.
      meta: JSON-serialisable; must hold "kind".
      overwrite: replace an existing file.

    Returns:
      The path written.

    Raises:
      WeightsError: `path` exists and not `overwrite`.
    """
    path = Path(path)
    if "kind" not in meta:
        raise ValueError("meta needs a 'kind'")
    if path.exists() and not overwrite:
        raise WeightsError(f"{path} already exists (pass overwrite=True to replace it)")
    arrays = flatten_tree(params)
    full_meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **dict(meta)}
    arrays[META_KEY] = np.array(json.dumps(full_meta, sort_keys=True))
    return atomic_write(path, lambda f: np.savez(f, **arrays), overwrite=True)


def flatten_tree(params: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """{"a/b/c": float32 array} for a nested mapping of arrays (names may not contain "/")."""
    out: dict[str, np.ndarray] = {}
    for key, value in params.items():
        key = str(key)
        if "/" in key or not key:
            raise ValueError(f"parameter names may not be empty or contain '/': {prefix}{key!r}")
        if isinstance(value, Mapping):
            out.update(flatten_tree(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = np.asarray(value, np.float32)
    return out


def _check_members(z: Any, path: Path) -> None:
    """Check every member's declared sizes before NumPy reads it (it allocates the declared shape first)."""
    zf = z.zip
    for info in zf.infolist():
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > 1100 * max(info.compress_size, 1):
            raise WeightsError(f"{path}: member {info.filename} declares {info.file_size} bytes from "
                               f"{info.compress_size} (a zip bomb?)")
        if not info.filename.endswith(".npy"):
            continue
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise WeightsError(f"{path}: member {info.filename} has .npy version {version}")
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes > info.file_size:
                raise WeightsError(f"{path}: member {info.filename} declares shape {shape} ({nbytes} bytes) "
                                   f"but holds {info.file_size}: corrupt")


def load_npz(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a converted `.npz` (no pickle is ever unpickled).

    Returns:
      (params as a nested dict of float32 arrays ({layer: {leaf: array}} for the VGG and decoder), meta dict).

    Raises:
      WeightsError: missing file, not one of our `.npz` files, or malformed metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"no such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "zip"):
                raise WeightsError(f"{path}: a bare .npy array, not an nst-jax .npz")
            _check_members(z, path)
            if META_KEY not in z.files:
                raise WeightsError(f"{path}: an .npz without {META_KEY}; not converted by nst-jax")
            raw_meta = z[META_KEY]
            if raw_meta.shape != () or raw_meta.dtype.kind != "U":
                raise WeightsError(f"{path}: {META_KEY} is not a JSON string")
            meta = json.loads(str(raw_meta[()]))
            params: dict[str, Any] = {}
            for key in z.files:
                if key == META_KEY:
                    continue
                parts = key.split("/")
                if len(parts) < 2 or not all(parts):
                    raise WeightsError(f"{path}: unexpected array {key!r} (expected layer/leaf)")
                node = params
                for part in parts[:-1]:
                    node = node.setdefault(part, {})
                    if not isinstance(node, dict):
                        raise WeightsError(f"{path}: array {key!r} clashes with another entry")
                if parts[-1] in node:
                    raise WeightsError(f"{path}: array {key!r} clashes with another entry")
                arr = z[key]
                if arr.dtype.kind not in "fiub":  # complex or strings would be cast (or fail) silently
                    raise WeightsError(f"{path}: array {key!r} holds {arr.dtype}, not real numbers")
                node[parts[-1]] = np.asarray(arr, np.float32)
    except (ValueError, OSError, zipfile.BadZipFile, zipfile.LargeZipFile, json.JSONDecodeError, TypeError,
            EOFError, KeyError, NotImplementedError, RecursionError, UnicodeDecodeError, OverflowError,
            SyntaxError, MemoryError, RuntimeError, tokenize.TokenError) as e:
        # NumPy's messages can quote the file's header: keep one short line
        detail = " ".join(str(e).split())[:160]
        raise WeightsError(f"{path}: not a readable nst-jax .npz ({type(e).__name__}: {detail})") from None
    if not isinstance(meta, dict) or "kind" not in meta:
        raise WeightsError(f"{path}: {META_KEY} lacks 'kind'")
    return params, meta
