"""A safe reader for PyTorch `.pth` files that needs neither torch nor trust in the file.

`torch.load` is `pickle.load`: a file can name any Python callable and have it run. This reader unpickles with
an allow-list of the few globals a `state_dict` needs, each mapped to a local stand-in (never to torch, never
to the named object), and refuses anything else with a `WeightsError` naming the global; nothing from the file
runs.

Both serialisations that `torch.save` has produced are read:

- the zip archive (PyTorch >= 1.6): `<name>/data.pkl` pickles the object with persistent ids `('storage',
  StorageType, key, location, numel)`; storage `key` lives in `<name>/data/<key>`, its byte order in
  `<name>/byteorder`;
- the legacy stream (PyTorch < 1.6, e.g. torchvision's `vgg19-dcbb9e9d.pth` of 2017 and pytorch-AdaIN's 2018
  release): five consecutive pickles (magic number, protocol version, system info, the object with persistent
  ids `('storage', StorageType, key, location, numel, view_metadata)`, the sorted list of storage keys)
  followed, for each key, by a little-endian int64 element count and the raw little-endian bytes.

Tensors are rebuilt from (storage, offset, size, stride) with NumPy, so non-contiguous and offset views come
out right. Only the storages of the tensors asked for are read (torchvision's classifier is 80% of its file).
The unpickler, its allow-list and the tensor rebuild are in `nst_jax.weights.pth_pickle`; this module reads the
two containers and bounds what they may make the reader decompress.
"""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nst_jax.errors import WeightsError
from nst_jax.weights.pth_pickle import (  # noqa: F401 - MAX_VIEW_ELEMENTS: re-exported, importable from here
    MAX_VIEW_ELEMENTS,
    _Bounded,
    _materialize,
    _needed_keys,
    _select,
    _StorageRef,
    _unpickle,
    _walk,
)

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001


def _is_zip(head: bytes) -> bool:
    return head[:4] == b"PK\x03\x04"


def _is_legacy(head: bytes) -> bool:
    # A pickle (PROTO opcode) whose first object is the magic number, a 10-byte LONG1 (after a FRAME for
    # protocol >= 4).
    return head[:1] == b"\x80" and MAGIC_NUMBER.to_bytes(10, "little") in head[:32]


def is_pth(path: str | Path) -> bool:
    """Whether the file looks like a torch.save file (zip with data.pkl, or the legacy magic number)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if _is_legacy(head):
        return True
    if _is_zip(head):
        try:
            with zipfile.ZipFile(path) as z:
                return any(n.endswith("data.pkl") for n in z.namelist())
        except zipfile.BadZipFile:
            return False
    return False


# A state_dict's pickle is a few KB per tensor; a bigger one is not a state_dict (or a zip bomb).
MAX_PICKLE_BYTES = 64 << 20
MAX_DEFLATED_BYTES = 256 << 20


def _read_member(z: zipfile.ZipFile, name: str, limit: int, path: Path) -> bytes:
    """At most `limit` bytes of a zip member, refusing members whose declared size is not plausible."""
    info = z.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED and (info.file_size > 1100 * max(info.compress_size, 1)
                                                     or info.file_size > MAX_DEFLATED_BYTES):
        # deflate cannot expand more than about 1032 times (a larger claim is a lie), and torch.save stores its
        # members uncompressed: a big compressed one is a zip bomb, not a checkpoint
        raise WeightsError(f"{path}: zip member {name} declares {info.file_size} bytes from "
                           f"{info.compress_size} compressed: refused")
    if name.endswith("data.pkl") and info.file_size > limit:
        raise WeightsError(f"{path}: {name} is {info.file_size} bytes; a state_dict's pickle is far smaller")
    try:
        with z.open(info) as f:
            return f.read(min(limit, info.file_size))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError,
            RuntimeError) as e:
        raise WeightsError(f"{path}: zip member {name} cannot be read ({type(e).__name__})") from None


def _load_zip(path: Path, select: Callable[[str], bool] | None) -> Any:
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        detail = " ".join(str(e).split())[:120]
        raise WeightsError(f"{path}: not a readable PyTorch zip archive ({detail})") from None
    with z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise WeightsError(f"{path}: a zip archive without data.pkl is not a torch.save file")
        prefix = min(pkl, key=len)[: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = _read_member(z, prefix + "byteorder", 16, path).decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise WeightsError(f"{path}: unknown byte order {byteorder!r}")
        storages: dict[str, _StorageRef] = {}
        obj = _unpickle(io.BytesIO(_read_member(z, prefix + "data.pkl", MAX_PICKLE_BYTES, path)), path,
                        storages=storages)
        obj = _select(obj, select)
        arrays = {}
        for key in _needed_keys(obj):
            ref = storages[key]
            name = f"{prefix}data/{key}"
            if name not in names:
                raise WeightsError(f"{path}: storage {name} is missing from the archive")
            nbytes = ref.numel * ref.dtype.itemsize
            size = z.getinfo(name).file_size
            if size < nbytes:
                raise WeightsError(f"{path}: storage {name} has {size} bytes, expected {nbytes}")
            raw = _read_member(z, name, nbytes, path)
            swap = byteorder == "big" and ref.dtype.itemsize > 1
            dtype = ref.dtype.newbyteorder(">") if swap else ref.dtype
            arrays[key] = np.frombuffer(raw, dtype, count=ref.numel)
    return _walk(obj, lambda r: _materialize(r, arrays, path))


def _load_legacy(path: Path, select: Callable[[str], bool] | None) -> Any:
    with open(path, "rb") as raw_file:
        f = _Bounded(raw_file, path.stat().st_size)
        magic = _unpickle(f, path)
        if magic != MAGIC_NUMBER:
            raise WeightsError(f"{path}: wrong magic number; not a PyTorch file")
        version = _unpickle(f, path)
        if version != PROTOCOL_VERSION:
            raise WeightsError(f"{path}: unsupported PyTorch serialisation protocol {version!r}")
        sys_info = _unpickle(f, path)
        if isinstance(sys_info, Mapping) and sys_info.get("little_endian") is False:
            # Writers convert to little-endian since PyTorch 0.4; older big-endian files are unheard of.
            raise WeightsError(f"{path}: written on a big-endian machine, which this reader does not support")
        storages: dict[str, _StorageRef] = {}
        obj = _unpickle(f, path, storages=storages, legacy=True)
        keys = _unpickle(f, path)
        if not isinstance(keys, list):
            raise WeightsError(f"{path}: malformed storage key list")
        obj = _select(obj, select)
        needed = _needed_keys(obj)
        size = path.stat().st_size
        arrays: dict[str, np.ndarray] = {}
        for key in (str(k) for k in keys):
            header = f.read(8)
            if len(header) != 8:
                raise WeightsError(f"{path}: the file ends before storage {key}: truncated download?")
            (numel,) = struct.unpack("<q", header)
            ref = storages.get(key)
            if ref is None:
                raise WeightsError(f"{path}: storage {key} is listed but never used")
            nbytes = numel * ref.dtype.itemsize
            if numel < ref.numel or f.tell() + nbytes > size:
                # checked before reading: a lying count must not make us allocate (or read) beyond the file
                raise WeightsError(f"{path}: storage {key} claims {numel} elements ({ref.numel} used), beyond "
                                   "the end of the file: truncated or corrupt")
            if key in needed:
                raw = f.read(nbytes)
                if len(raw) != nbytes:
                    raise WeightsError(f"{path}: the file ends inside storage {key}: truncated download?")
                arrays[key] = np.frombuffer(raw, ref.dtype, count=numel)
            else:
                f.seek(nbytes, io.SEEK_CUR)
        missing = needed - set(arrays)
        if missing:
            raise WeightsError(f"{path}: storages {sorted(missing)[:3]} have no data in the file")
        end = f.tell()
        if end > path.stat().st_size:
            raise WeightsError(f"{path}: the file is shorter than its storages: truncated download?")
    return _walk(obj, lambda r: _materialize(r, arrays, path))


def load_pth(path: str | Path, select: Callable[[str], bool] | None = None) -> Any:
    """Read a torch.save file into plain Python containers of NumPy arrays, without torch and without trust.

    Args:
      path: a .pth/.pt file written by `torch.save` (zip or legacy serialisation).
      select: for a top-level dict, keep only the keys for which this returns True; the others' data is never
        read.

    Returns:
      The saved object with every tensor replaced by a NumPy array of its dtype (float16 stays float16).

    Raises:
      WeightsError: the file is not a torch.save file, is truncated, or names a Python global outside the
        allow-list (a pickled model object, or a malicious payload); nothing from the file is executed.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except FileNotFoundError:
        raise WeightsError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise WeightsError(f"{path} is a directory, not a weights file") from None
    except OSError as e:
        raise WeightsError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        if _is_zip(head):
            return _load_zip(path, select)
        if _is_legacy(head):
            return _load_legacy(path, select)
    except RecursionError:
        raise WeightsError(f"{path}: containers nested too deeply for a state_dict") from None
    if len(head) >= 262 and head[257:262] == b"ustar":
        raise WeightsError(f"{path}: a tar-format torch file (PyTorch before 0.1.10) is not supported; "
                           "re-save it with a newer PyTorch")
    raise WeightsError(f"{path}: not a PyTorch file (neither a zip archive nor the legacy magic number)")


def load_state_dict(path: str | Path, select: Callable[[str], bool] | None = None) -> dict[str, np.ndarray]:
    """Read a torch.save'd `state_dict` (name -> tensor) as name -> NumPy array.

    A checkpoint that wraps the state_dict under "state_dict" or "model" is unwrapped.

    Raises:
      WeightsError: as `load_pth`, or if the file holds something other than a flat dict of tensors.
    """
    path = Path(path)
    obj = load_pth(path, select)
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state_dict (a dict of tensors)")
    out: dict[str, np.ndarray] = {}
    for k, v in obj.items():
        if isinstance(v, np.ndarray):
            out[str(k)] = v
        elif not (isinstance(v, (int, float, str)) or v is None):
            raise WeightsError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor; not a state_dict")
    if not out:
        raise WeightsError(f"{path} holds no tensors")
    return out
