"""The safe .pth reader: both torch.save serialisations, views, strides, dtypes; anything unsafe refused."""

from __future__ import annotations

import builtins
import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nst_jax.errors import WeightsError  # noqa: E402
from nst_jax.weights.pth import MAGIC_NUMBER, PROTOCOL_VERSION, is_pth, load_pth, load_state_dict  # noqa: E402

FORMATS = [pytest.param(True, id="zip"), pytest.param(False, id="legacy")]


def _save(obj, path, zip_format: bool):
    torch.save(obj, path, _use_new_zipfile_serialization=zip_format)
    return path


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


@pytest.fixture
def tricky_state_dict() -> OrderedDict:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(100, dtype=torch.float64, generator=g)
    shared = torch.randn(6, 8, generator=g)
    sd = OrderedDict()
    sd["conv.weight"] = torch.randn(4, 3, 3, 3, generator=g)
    sd["transposed"] = torch.randn(4, 6, generator=g).t()                # non-contiguous
    sd["offset_view"] = base[10:40].view(5, 6)[1:4, ::2]                # offset and strides, float64
    sd["shared_a"] = shared[2:]                                          # two tensors on one storage
    sd["shared_b"] = shared[:, 3]
    sd["half"] = torch.randn(3, 5, generator=g).half()
    sd["bfloat16"] = torch.randn(7, generator=g).bfloat16()
    sd["int64"] = torch.tensor(12345678901, dtype=torch.int64)          # 0-d, like num_batches_tracked
    sd["empty"] = torch.zeros(0, 3)
    sd["expanded"] = torch.randn(1, 4, generator=g).expand(3, 4)        # stride 0
    return sd


@pytest.mark.parametrize("zip_format", FORMATS)
def test_reads_torch_save_exactly(tmp_path, tricky_state_dict, zip_format):
    path = _save(tricky_state_dict, tmp_path / "sd.pth", zip_format)
    assert is_pth(path)
    out = load_state_dict(path)
    assert list(out) == list(tricky_state_dict)
    for k, t in tricky_state_dict.items():
        got, ref = out[k], _as_numpy(t)
        if t.dtype == torch.bfloat16:
            assert got.dtype.name == "bfloat16"
            got = got.astype(np.float32)
        else:
            assert got.dtype == ref.dtype, k
        assert got.shape == ref.shape, k
        np.testing.assert_array_equal(got, ref, err_msg=k)
        assert got.flags.c_contiguous and got.flags.writeable


@pytest.mark.parametrize("zip_format", FORMATS)
def test_parameters_and_nested_containers(tmp_path, zip_format):
    p = torch.nn.Parameter(torch.arange(6.0).reshape(2, 3))
    obj = {"state_dict": OrderedDict(w=p), "epoch": 3, "lst": [torch.ones(2), (torch.zeros(1), "x")]}
    path = _save(obj, tmp_path / "ckpt.pth", zip_format)
    out = load_pth(path)
    np.testing.assert_array_equal(out["state_dict"]["w"], p.detach().numpy())
    assert out["epoch"] == 3 and out["lst"][1][1] == "x"
    np.testing.assert_array_equal(out["lst"][0], np.ones(2, np.float32))
    # load_state_dict unwraps a checkpoint's "state_dict"
    assert set(load_state_dict(path)) == {"w"}


@pytest.mark.parametrize("zip_format", FORMATS)
def test_select_keeps_only_requested_keys(tmp_path, zip_format):
    sd = OrderedDict([("features.0.weight", torch.ones(2)), ("classifier.0.weight", torch.zeros(3))])
    path = _save(sd, tmp_path / "sd.pth", zip_format)
    out = load_state_dict(path, select=lambda k: not k.startswith("classifier."))
    assert set(out) == {"features.0.weight"}


# -- a 2017-style legacy stream, written by hand: Python 2 str keys, torch._utils._rebuild_tensor (4
# arguments, PyTorch < 0.4) and a storage view (view_metadata), which PyTorch >= 1.0 never writes any more.

class _Global:
    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self):  # pickle insists that a reduce function is callable
        raise AssertionError


class _Reduce:
    def __init__(self, func: _Global, args: tuple):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class _Py2Str(str):
    """Pickled as SHORT_BINSTRING, like a Python 2 `str`."""


class _Storage:
    def __init__(self, key, stype, numel, view=None):
        self.key, self.stype, self.numel, self.view = key, stype, numel, view


class _LegacyWriter(pickle._Pickler):
    dispatch = dict(pickle._Pickler.dispatch)

    def _global(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    def _py2str(self, obj):
        data = obj.encode("ascii")
        self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)

    dispatch[_Global] = _global
    dispatch[_Py2Str] = _py2str

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            stype = _Global("torch", obj.stype)
            return ("storage", stype, _Py2Str(obj.key), _Py2Str("cpu"), obj.numel, obj.view)
        return None


def _dumps(obj) -> bytes:
    buf = io.BytesIO()
    _LegacyWriter(buf, protocol=2).dump(obj)
    return buf.getvalue()


def test_legacy_2017_style_stream(tmp_path):
    root = np.arange(30, dtype="<f4")
    half = np.array([1.5, -2.0, 0.25, 8.0], dtype="<f2")
    rebuild = _Global("torch._utils", "_rebuild_tensor")
    view = _Storage("140", "FloatStorage", 30, view=(_Py2Str("141"), 6, 20))
    hstore = _Storage("150", "HalfStorage", 4)
    items = [[_Py2Str("features.0.weight"), _Reduce(rebuild, (view, 2, (3, 4), (1, 3)))],
             [_Py2Str("features.0.bias"), _Reduce(rebuild, (hstore, 0, (2, 2), (2, 1)))]]
    obj = _Reduce(_Global("collections", "OrderedDict"), (items,))
    sys_info = {"protocol_version": PROTOCOL_VERSION, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 8}}
    blob = b"".join(pickle.dumps(x, protocol=2) for x in (MAGIC_NUMBER, PROTOCOL_VERSION, sys_info))
    blob += _dumps(obj) + pickle.dumps(["140", "150"], protocol=2)
    blob += struct.pack("<q", 30) + root.tobytes() + struct.pack("<q", 4) + half.tobytes()
    path = tmp_path / "old.pth"
    path.write_bytes(blob)
    out = load_state_dict(path)
    expected = np.lib.stride_tricks.as_strided(root[6 + 2:], (3, 4), (4, 12))
    np.testing.assert_array_equal(out["features.0.weight"], expected)
    np.testing.assert_array_equal(out["features.0.bias"], half.reshape(2, 2))
    assert out["features.0.bias"].dtype == np.float16

    # the same file cut short is reported as truncated, not misread
    path.write_bytes(blob[:-6])
    with pytest.raises(WeightsError, match="truncated"):
        load_state_dict(path)


# -- refusals


@pytest.mark.parametrize("zip_format", FORMATS)
def test_whole_pickled_model_is_refused(tmp_path, zip_format):
    path = _save(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1)), tmp_path / "model.pth", zip_format)
    with pytest.raises(WeightsError, match=r"whole pickled model .*torch\.nn\.modules\.container\."
                                           r"Sequential.*state_dict\(\)"):
        load_pth(path)


class _Exec:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return builtins.exec, (self.code,)


class _Eval(_Exec):
    def __reduce__(self):
        return builtins.eval, (self.code,)


class _System:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return os.system, (self.cmd,)


def _payloads(marker):
    py = f"open({str(marker)!r}, 'w').close()"
    return {
        "builtins.exec": _Exec(py),
        "builtins.eval": _Eval(f"__import__('builtins').exec({py!r})"),
        "system": _System(f"touch '{marker}'"),  # pickled as posix.system on Linux
    }


def _malicious_file(path, payload, zip_format: bool):
    obj_pickle = pickle.dumps(OrderedDict(weight=payload), protocol=2)
    if zip_format:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", obj_pickle)
            z.writestr("archive/byteorder", "little")
            z.writestr("archive/version", "3\n")
    else:
        sys_info = {"protocol_version": PROTOCOL_VERSION, "little_endian": True}
        head = b"".join(pickle.dumps(x, protocol=2) for x in (MAGIC_NUMBER, PROTOCOL_VERSION, sys_info))
        path.write_bytes(head + obj_pickle + pickle.dumps([], protocol=2))
    return path


@pytest.mark.parametrize("zip_format", FORMATS)
@pytest.mark.parametrize("which", ["builtins.exec", "builtins.eval", "system"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, which, zip_format):
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[which]
    # The payload is live: plain pickle would run it (checked with the harmless Python variant).
    if which == "builtins.exec":
        pickle.loads(pickle.dumps(payload))
        assert marker.exists()
        marker.unlink()
    path = _malicious_file(tmp_path / "evil.pth", payload, zip_format)
    # protocol 2 spells builtins as __builtin__ and os.system as posix.system: match the function's name
    with pytest.raises(WeightsError, match=r"global \S*\." + which.split(".")[-1]) as err:
        load_pth(path)
    assert "nothing from the file was run" in str(err.value)
    assert "\n" not in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("zip_format", FORMATS)
def test_build_cannot_tamper_with_the_allow_list(tmp_path, zip_format):
    # GLOBAL torch.FloatStorage, then BUILD {"name": "HalfStorage"}: tries to rewrite a shared stand-in so
    # that a later, honest file would be misread.
    evil = (b"\x80\x02ctorch\nFloatStorage\n}X\x04\x00\x00\x00nameX\x0b\x00\x00\x00HalfStorages" + b"b.")
    if zip_format:
        path = tmp_path / "evil.pth"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", evil)
    else:
        head = b"".join(pickle.dumps(x, protocol=2) for x in (MAGIC_NUMBER, PROTOCOL_VERSION, {}))
        path = tmp_path / "evil.pth"
        path.write_bytes(head + evil + pickle.dumps([], protocol=2))
    with pytest.raises(WeightsError):
        load_pth(path)
    honest = _save(OrderedDict(w=torch.arange(4.0)), tmp_path / "ok.pth", zip_format)
    out = load_state_dict(honest)
    assert out["w"].dtype == np.float32
    np.testing.assert_array_equal(out["w"], np.arange(4.0, dtype=np.float32))


def test_not_a_torch_file(tmp_path):
    (tmp_path / "a.pth").write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(WeightsError, match="not a PyTorch file"):
        load_pth(tmp_path / "a.pth")
    with zipfile.ZipFile(tmp_path / "b.pth", "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(WeightsError, match="without data.pkl"):
        load_pth(tmp_path / "b.pth")
    with pytest.raises(WeightsError, match="no such file"):
        load_pth(tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match="directory"):
        load_pth(tmp_path)


@pytest.mark.parametrize("zip_format", FORMATS)
def test_truncated_file(tmp_path, zip_format):
    path = _save(OrderedDict(w=torch.randn(64, 64)), tmp_path / "t.pth", zip_format)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError):
        load_state_dict(path)


def test_non_state_dict_content(tmp_path):
    path = _save([torch.ones(2)], tmp_path / "list.pth", True)
    with pytest.raises(WeightsError, match="holds a list, not a state_dict"):
        load_state_dict(path)
