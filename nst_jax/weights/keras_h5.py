"""Reading Keras HDF5 weight files (no Keras needed).

Two layouts are read:

- the legacy `save_weights` layout of Keras 1/2 (the published
  `vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5`) and of Keras 3's
  `keras.src.legacy.saving.legacy_h5_format.save_weights_to_hdf5_group`: the root attribute `layer_names`
  (possibly chunked as `layer_names0`, `layer_names1`, ...) lists the layers; each layer group's attribute
  `weight_names` lists its datasets in order (`block1_conv1/kernel:0` in Keras 2, `block1_conv1/kernel` in
  Keras 3); a whole-model `.h5` holds the same under `model_weights`;
- Keras 3's `.weights.h5`: `layers/<name>/vars/0`, `1`, ... (layers named by class: `conv2d`, `conv2d_1`,
  ...).

Either way the result is {layer name: [arrays in the layer's weight order]}, which is what Keras itself loads
by.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from nst_jax.errors import WeightsError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# A dataset may declare any shape (HDF5 fills unwritten chunks with a fill value): the bytes a file may make us
# allocate are bounded by its own size times this, or 64 MB for tiny files.
MAX_EXPANSION = 8


def is_hdf5(path: str | Path) -> bool:
    """Whether the file carries the HDF5 signature (at 0 or after a user block of 512 * 2**k bytes)."""
    with open(path, "rb") as f:
        for offset in (0, 512, 1024, 2048, 4096, 8192):
            f.seek(offset)
            head = f.read(8)
            if len(head) < 8:
                return False
            if head == HDF5_SIGNATURE:
                return True
    return False


def _attr_list(group, name: str) -> list[str]:
    """A string-list attribute, joining the chunks Keras splits large ones into."""
    if name in group.attrs:
        raw = list(group.attrs[name])
    else:
        raw, i = [], 0
        while f"{name}{i}" in group.attrs:
            raw += list(group.attrs[f"{name}{i}"])
            i += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in raw]


def _read_dataset(obj, where: str, path: Path, budget: int) -> np.ndarray:
    """A numeric dataset as NumPy, its declared size checked before anything is read."""
    import h5py

    if not isinstance(obj, h5py.Dataset):
        raise WeightsError(f"{path}: {where} is not a dataset")
    dtype = obj.dtype
    if dtype.kind not in "fiub" or dtype.fields is not None or dtype.subdtype is not None:
        raise WeightsError(f"{path}: {where} holds {dtype}, not numbers")
    nbytes = int(np.prod(obj.shape, dtype=np.float64) * dtype.itemsize) if obj.shape is not None else 0
    if nbytes > budget:
        raise WeightsError(f"{path}: {where} declares {obj.shape} ({nbytes} bytes), more than the file can hold")
    return np.asarray(obj[()] if obj.shape is not None else np.zeros((0,), dtype))


def _natural(name: str) -> tuple[str, int]:
    m = re.fullmatch(r"(.*?)(?:_(\d+))?", name)
    return (m.group(1), int(m.group(2) or 0)) if m else (name, 0)


def read_keras_h5(path: str | Path) -> dict[str, list[np.ndarray]]:
    """Read every layer's weights from a Keras HDF5 weights file.

    Args:
      path: a legacy `.h5` (Keras 1/2/3 `save_weights` or whole-model) or a Keras 3 `.weights.h5`.

    Returns:
      {layer name: [weight arrays in order]}, layers without weights omitted.

    Raises:
      WeightsError: not HDF5, or no Keras layer weights in it, or a listed dataset is missing.
    """
    import h5py

    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise WeightsError(f"no such file: {path}") from None
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        raise WeightsError(f"{path}: not a readable HDF5 file ({' '.join(str(e).split())[:160]})") from None
    budget = max(path.stat().st_size * MAX_EXPANSION, 64 << 20)
    try:
        with f:
            return _read_layers(f, path, budget)
    except WeightsError:
        raise
    except RecursionError:
        raise WeightsError(f"{path}: HDF5 groups nested too deeply") from None
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError, IndexError,
            UnicodeDecodeError) as e:
        # h5py raises these for corrupt headers, links and datasets; its messages can be long
        detail = " ".join(str(e).split())[:160]
        raise WeightsError(f"{path}: corrupt HDF5 file ({type(e).__name__}: {detail})") from None


def _read_layers(f, path: Path, budget: int) -> dict[str, list[np.ndarray]]:
    import h5py

    out: dict[str, list[np.ndarray]] = {}
    root = f
    if not _attr_list(f, "layer_names") and "model_weights" in f:
        root = f["model_weights"]
    names = _attr_list(root, "layer_names")
    if names:
        for name in names:
            if name not in root:
                raise WeightsError(f"{path}: layer {name} is listed but has no group")
            group = root[name]
            if not isinstance(group, h5py.Group):
                raise WeightsError(f"{path}: layer {name} is not a group")
            arrays = []
            for w in _attr_list(group, "weight_names"):
                if w not in group:
                    raise WeightsError(f"{path}: dataset {name}/{w} is listed but missing")
                arrays.append(_read_dataset(group[w], f"{name}/{w}", path, budget))
                budget -= arrays[-1].nbytes
            if arrays:
                out[name] = arrays
    elif "layers" in f and isinstance(f["layers"], h5py.Group):
        # Keras 3 names these groups by class (conv2d, conv2d_1, ..., conv2d_10): creation order is
        # numeric.
        for name in sorted(f["layers"], key=_natural):
            group = f["layers"][name]
            if isinstance(group, h5py.Group) and "vars" in group and len(group["vars"]):
                v = group["vars"]
                if not isinstance(v, h5py.Group) or not all(k.isdigit() for k in v):
                    raise WeightsError(f"{path}: layers/{name}/vars is not a list of datasets")
                out[name] = []
                for k in sorted(v, key=int):
                    out[name].append(_read_dataset(v[k], f"layers/{name}/vars/{k}", path, budget))
                    budget -= out[name][-1].nbytes
    else:
        raise WeightsError(f"{path}: an HDF5 file without Keras layer weights (no layer_names attribute)")
    if not out:
        raise WeightsError(f"{path}: the Keras file holds no layer weights")
    return out
