"""The safe unpickler under `nst_jax.weights.pth`: the allow-list of globals a `state_dict` needs, each mapped
to a local stand-in (never to torch, never to the named object), the stand-ins for storages and tensors, and the
NumPy rebuild of a tensor from (storage, offset, size, stride).

Nothing named by the file runs: any other global is refused with a `WeightsError` naming it. The container
formats (zip archive, legacy stream) and their size limits are `nst_jax.weights.pth`'s.
"""

from __future__ import annotations

import io
import math
import pickle
import struct
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nst_jax.errors import WeightsError

# A tensor may hold more elements than its storage (stride-0 views of `expand`), but never more than this: a
# lying size cannot make the reader allocate more than a bound.
MAX_VIEW_ELEMENTS = 1 << 26


def _bfloat16() -> np.dtype:
    import ml_dtypes  # a dependency of jax; numpy has no bfloat16

    return np.dtype(ml_dtypes.bfloat16)


# Storage class name -> little-endian element type.
_STORAGE_DTYPES: dict[str, Callable[[], np.dtype]] = {
    "FloatStorage": lambda: np.dtype("<f4"),
    "DoubleStorage": lambda: np.dtype("<f8"),
    "HalfStorage": lambda: np.dtype("<f2"),
    "BFloat16Storage": _bfloat16,
    "LongStorage": lambda: np.dtype("<i8"),
    "IntStorage": lambda: np.dtype("<i4"),
    "ShortStorage": lambda: np.dtype("<i2"),
    "CharStorage": lambda: np.dtype("i1"),
    "ByteStorage": lambda: np.dtype("u1"),
    "BoolStorage": lambda: np.dtype("?"),
    "UntypedStorage": lambda: np.dtype("u1"),
}


class _Refused(Exception):
    """Raised from inside the unpickler; turned into a WeightsError that names the file."""


def _no_setstate(self: Any, state: Any) -> None:
    raise _Refused(f"the pickle tries to modify {type(self).__name__.lstrip('_')} (a BUILD on an allowed "
                   "object); refused, nothing from the file was run")


# Every object the pickle can reach is immutable (frozen, slotted, and an explicit __setstate__ that refuses,
# since the one dataclasses generates for frozen slotted classes would assign fields): a BUILD opcode cannot
# alter a stand-in and so cannot change how a later file in the same process is read.
@dataclass(frozen=True, slots=True)
class _StorageType:
    name: str
    __setstate__ = _no_setstate

    @property
    def dtype(self) -> np.dtype:
        return _STORAGE_DTYPES[self.name]()


@dataclass(frozen=True, slots=True)
class _StorageRef:
    """A storage named by a persistent id; its bytes are read after unpickling (legacy files: at the end)."""

    key: str
    dtype: np.dtype
    numel: int
    view_offset: int = 0  # legacy storage views: elements into the root storage
    view_numel: int | None = None
    __setstate__ = _no_setstate


@dataclass(frozen=True, slots=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    __setstate__ = _no_setstate


@dataclass(frozen=True, slots=True)
class _Token:
    """Stand-in for a harmless torch object that only appears as an argument (torch.strided, torch.Tensor)."""

    name: str
    __setstate__ = _no_setstate


_TENSOR_TYPES = (_Token("torch.Tensor"), _Token("torch.nn.parameter.Parameter"))


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) for v in value):
        raise WeightsError(f"malformed tensor record: {what} is {value!r}")
    return tuple(int(v) for v in value)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *_: Any) -> _TensorRef:
    # torch._utils._rebuild_tensor (PyTorch < 0.4) and the first four arguments of _rebuild_tensor_v2.
    if not isinstance(storage, _StorageRef):
        raise WeightsError(f"malformed tensor record: storage is {type(storage).__name__}")
    if not isinstance(storage_offset, int):
        raise WeightsError(f"malformed tensor record: offset is {storage_offset!r}")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride):
        raise WeightsError(f"malformed tensor record: size {size} and stride {stride} differ in rank")
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    if new_type not in _TENSOR_TYPES or func not in (_REBUILD_TENSOR, _REBUILD_PARAMETER):
        raise WeightsError(f"unsupported tensor subclass {new_type!r} in the pickle")
    return func(*args)


def _get_layout(name: Any) -> _Token:
    return _Token(f"layout {name}")


@dataclass(frozen=True, slots=True)
class _Call:
    """A read-only callable: a function has a writable __dict__ and __defaults__; this has neither."""

    fn: Callable[..., Any]

    __setstate__ = _no_setstate

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


_REBUILD_TENSOR = _Call(_rebuild_tensor)
_REBUILD_PARAMETER = _Call(_rebuild_parameter)


def _build_allowed() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): OrderedDict,
        ("torch._utils", "_rebuild_tensor"): _REBUILD_TENSOR,
        ("torch._utils", "_rebuild_tensor_v2"): _REBUILD_TENSOR,
        ("torch._utils", "_rebuild_parameter"): _REBUILD_PARAMETER,
        ("torch._utils", "_rebuild_parameter_with_state"): _REBUILD_PARAMETER,
        ("torch._tensor", "_rebuild_from_type_v2"): _Call(_rebuild_from_type_v2),
        ("torch.serialization", "_get_layout"): _Call(_get_layout),
        ("torch", "Tensor"): _TENSOR_TYPES[0],
        ("torch.nn.parameter", "Parameter"): _TENSOR_TYPES[1],
        ("torch", "Size"): tuple,
        ("torch", "strided"): _Token("torch.strided"),
    }
    for name in _STORAGE_DTYPES:
        allowed[("torch", name)] = _StorageType(name)
        allowed[("torch.cuda", name)] = _StorageType(name)  # saved from a GPU: the bytes are the same
    return allowed


_ALLOWED = _build_allowed()


class _Bounded:
    """A read-only view of a file that never asks for more bytes than the file has left.

    The unpickler reads a length from the stream and then that many bytes; `file.read(n)` allocates `n` bytes
    before reading, so a lying length would allocate gigabytes.
    """

    def __init__(self, f: Any, size: int):
        self._f, self._size = f, size

    def _left(self) -> int:
        return max(self._size - self._f.tell(), 0)

    def read(self, n: int = -1) -> bytes:
        return self._f.read(self._left() if n is None or n < 0 else min(n, self._left()))

    def readline(self, limit: int = -1) -> bytes:
        return self._f.readline(min(1 << 16, self._left()) if limit < 0 else min(limit, self._left()))

    def readinto(self, b: Any) -> int:
        view = memoryview(b)
        return self._f.readinto(view[: min(len(view), self._left())])

    def tell(self) -> int:
        return self._f.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._f.seek(offset, whence)


# The pure-Python unpickler, not the C one: the C unpickler sizes its memo by the largest index a PUT opcode
# names, so one LONG_BINPUT of 2**30 in a file allocates (and zeroes) gigabytes; here the memo is a dict.
class _SafeUnpickler(pickle._Unpickler):
    """Unpickler that resolves only allow-listed globals, to local stand-ins."""

    def __init__(self, file: Any, storages: dict[str, _StorageRef] | None = None, legacy: bool = False):
        super().__init__(file, encoding="utf-8")  # Python 2 pickles (2017 files) hold byte-string keys
        self._storages = storages if storages is not None else {}
        self._legacy = legacy

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            pass
        if module.startswith(("torch.nn", "torchvision")) or module in ("__main__", "net"):
            raise _Refused(f"it holds a whole pickled model ({module}.{name}), not a state_dict: in PyTorch, "
                           "save model.state_dict() and use that file")
        raise _Refused(f"it asks for the Python global {module}.{name}, which a state_dict never needs; "
                       "refused, nothing from the file was run")

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise _Refused(f"unknown persistent id {pid!r}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module":
            raise _Refused("it holds a whole pickled model, not a state_dict: in PyTorch, save "
                           "model.state_dict() and use that file")
        if kind != "storage":
            raise _Refused(f"unknown persistent id type {kind!r}")
        if self._legacy:
            if len(pid) != 6:
                raise _Refused(f"malformed legacy storage id {pid!r}")
            _, stype, key, _location, numel, view = pid
        else:
            if len(pid) != 5:
                raise _Refused(f"malformed storage id {pid!r}")
            _, stype, key, _location, numel = pid
            view = None
        if not isinstance(stype, _StorageType) or not isinstance(numel, int) or numel < 0:
            raise _Refused(f"malformed storage id {str(pid)[:200]}")
        key = str(key)
        root = self._storages.get(key)
        if root is None:
            root = self._storages[key] = _StorageRef(key, stype.dtype, numel)
        if view is None:
            return root
        if not (isinstance(view, tuple) and len(view) == 3):
            raise _Refused("malformed legacy storage view")
        _view_key, offset, view_numel = view
        if not (isinstance(offset, int) and isinstance(view_numel, int)
                and 0 <= offset and 0 <= view_numel and offset + view_numel <= root.numel):
            raise _Refused(f"a storage view ({offset}, {view_numel}) outside its storage of {root.numel}")
        return _StorageRef(root.key, root.dtype, root.numel, offset, view_numel)


def _unpickle(f: Any, path: Path, **kw: Any) -> Any:
    try:
        return _SafeUnpickler(f, **kw).load()
    except _Refused as e:
        raise WeightsError(f"{path}: {e}") from None
    except WeightsError as e:
        raise WeightsError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            UnicodeDecodeError, struct.error, OverflowError, MemoryError) as e:
        # The message can quote the file's bytes: keep one short line.
        detail = " ".join(str(e).split())[:120]
        raise WeightsError(f"{path}: not a readable PyTorch file ({type(e).__name__}: {detail})") from None


def _walk(obj: Any, fn: Callable[[Any], Any]) -> Any:
    """Rebuild containers, replacing each `_TensorRef` by fn(ref)."""
    if isinstance(obj, _TensorRef):
        return fn(obj)
    if isinstance(obj, OrderedDict):
        return OrderedDict((k, _walk(v, fn)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _walk(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_walk(v, fn) for v in obj)
    return obj


def _select(obj: Any, select: Callable[[str], bool] | None) -> Any:
    """Drop top-level entries whose key `select` rejects (their storages are then never read)."""
    if select is None or not isinstance(obj, Mapping):
        return obj
    return type(obj)((k, v) for k, v in obj.items() if not isinstance(k, str) or select(k))


def _needed_keys(obj: Any) -> set[str]:
    keys: set[str] = set()

    def note(ref: _TensorRef) -> _TensorRef:
        keys.add(ref.storage.key)
        return ref

    _walk(obj, note)
    return keys


def _materialize(ref: _TensorRef, storages: Mapping[str, np.ndarray], path: Path) -> np.ndarray:
    data = storages[ref.storage.key]
    if ref.storage.view_numel is not None:
        data = data[ref.storage.view_offset: ref.storage.view_offset + ref.storage.view_numel]
    size, stride, offset = ref.size, ref.stride, ref.offset
    if (any(not 0 <= s < 1 << 48 for s in size) or any(not 0 <= s < 1 << 48 for s in stride)
            or not 0 <= offset < 1 << 48):
        raise WeightsError(f"{path}: malformed tensor (size {size}, stride {stride}, offset {offset})")
    elements = math.prod(size)
    if elements > max(data.size, MAX_VIEW_ELEMENTS):
        raise WeightsError(f"{path}: a tensor of size {size} has more elements than its storage of {data.size}")
    if elements == 0:
        return np.zeros(size, data.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= data.size:
        raise WeightsError(f"{path}: a tensor of size {size} reaches element {last} of a storage of "
                           f"{data.size}: the file is truncated or corrupt")
    view = np.lib.stride_tricks.as_strided(data[offset:], shape=size,
                                           strides=tuple(s * data.itemsize for s in stride), writeable=False)
    return np.array(view, dtype=data.dtype.newbyteorder("=") if data.dtype.byteorder == ">" else data.dtype,
                    order="C")
