"""Property-based fuzzing of every reader of untrusted input (hypothesis, seeded).

Each reader gets mutated real files (byte flips, overwrites, insertions, truncations) and hand-built files whose
headers lie (sizes, offsets, shapes, declared dimensions). The property everywhere: the reader returns, or raises
an `NstError` subclass with a one-line message; it never raises anything else, never hangs past the deadline,
and never allocates what a header claims before checking it against what the file holds.

The suite runs a short seeded pass (`derandomize=True`); a long run is

    NST_FUZZ_EXAMPLES=100000 python -m pytest -q tests/test_fuzz.py -p no:cacheprovider -s

(`-s` prints the counts: cases per reader, distinct failure messages, time; NST_FUZZ_REPORT=FILE.json writes
them too).
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from nst_jax.errors import NstError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LONG = int(os.environ.get("NST_FUZZ_EXAMPLES", "0"))
STATS: dict[str, dict] = {}


def fuzz(examples: int):
    """Seeded hypothesis settings: `examples` cases (or NST_FUZZ_EXAMPLES), a per-case time bound."""
    return settings(max_examples=LONG or examples, derandomize=True, database=None,
                    deadline=timedelta(seconds=10), print_blob=True,
                    suppress_health_check=list(HealthCheck))


def _normalise(msg: str) -> str:
    msg = re.sub(r"/\S*/fuzz\w*\.\w+", "FILE", msg)
    return re.sub(r"\d+", "N", msg)[:90]


def expect(reader: str, fn, *args):
    """Call `fn(*args)`: it may return or raise an NstError with one short line; count the outcome."""
    s = STATS.setdefault(reader, {"cases": 0, "accepted": 0, "messages": set(), "seconds": 0.0})
    s["cases"] += 1
    t0 = time.perf_counter()
    try:
        out = fn(*args)
    except NstError as e:
        s["seconds"] += time.perf_counter() - t0
        msg = str(e)
        assert msg and "\n" not in msg and len(msg) < 1000, repr(msg)
        s["messages"].add(_normalise(msg))
        return None
    s["seconds"] += time.perf_counter() - t0
    s["accepted"] += 1
    return out


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    rows = {k: {"cases": v["cases"], "accepted": v["accepted"], "distinct_errors": len(v["messages"]),
                "seconds_in_reader": round(v["seconds"], 2)} for k, v in STATS.items()}
    import resource

    rows["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print("\nfuzz counts:", json.dumps(rows, indent=1))
    if os.environ.get("NST_FUZZ_REPORT"):
        Path(os.environ["NST_FUZZ_REPORT"]).write_text(json.dumps(
            {k: {**rows[k], "messages": sorted(STATS[k]["messages"])} if k in STATS else rows[k] for k in rows},
            indent=1))


@st.composite
def mutated(draw, seed: bytes, max_ops: int = 4) -> bytes:
    """`seed` with a few byte-level edits: flip, overwrite, insert, delete, truncate."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[pos:pos + len(chunk)] = chunk
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


def _write(tmp: Path, name: str, data: bytes) -> Path:
    p = tmp / name
    p.write_bytes(data)
    return p


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# ------------------------------------------------------------------------------------------------------------
# .pth

torch = None


def _torch():
    global torch
    if torch is None:
        torch = pytest.importorskip("torch")
    return torch


@pytest.fixture(scope="module")
def pth_seeds(tmp) -> dict[str, bytes]:
    t = _torch()
    g = t.Generator().manual_seed(0)
    base = t.randn(20, generator=g)
    sd = collections.OrderedDict(w=t.randn(2, 3, generator=g), b=t.arange(4), v=base[5:11].view(2, 3),
                                 h=t.randn(3, generator=g).half(), tr=t.randn(3, 2, generator=g).t())
    out = {}
    for name, new in (("zip", True), ("legacy", False)):
        buf = io.BytesIO()
        t.save(sd, buf, _use_new_zipfile_serialization=new)
        out[name] = buf.getvalue()
    return out


def _load_pth(path):
    from nst_jax.weights.pth import load_state_dict

    return load_state_dict(path)


def _rezip(zip_bytes: bytes, fn) -> bytes:
    """A copy of a torch zip with member contents replaced by fn(name, data) (CRCs recomputed)."""
    src = zipfile.ZipFile(io.BytesIO(zip_bytes))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for info in src.infolist():
            z.writestr(info.filename, fn(info.filename, src.read(info)))
    return buf.getvalue()


def test_fuzz_pth_legacy_stream(pth_seeds, tmp):
    @fuzz(300)
    @given(data=mutated(pth_seeds["legacy"]))
    def run(data):
        expect("pth legacy (mutated stream)", _load_pth, _write(tmp, "fuzz.pth", data))

    run()


def test_fuzz_pth_zip_archive(pth_seeds, tmp):
    @fuzz(150)
    @given(data=mutated(pth_seeds["zip"]))
    def whole(data):
        expect("pth zip (mutated archive)", _load_pth, _write(tmp, "fuzz.pth", data))

    pkl = next(d for n, d in _members(pth_seeds["zip"]) if n.endswith("data.pkl"))

    @fuzz(300)
    @given(new=mutated(pkl, max_ops=3))
    def inner(new):
        data = _rezip(pth_seeds["zip"], lambda n, d: new if n.endswith("data.pkl") else d)
        expect("pth zip (mutated pickle)", _load_pth, _write(tmp, "fuzz.pth", data))

    whole()
    inner()


def _members(zip_bytes: bytes):
    z = zipfile.ZipFile(io.BytesIO(zip_bytes))
    return [(i.filename, z.read(i)) for i in z.infolist()]


class _Storage:
    def __init__(self, key: str, numel: int):
        self.key, self.numel = key, numel


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        t = _torch()
        return (t._utils._rebuild_tensor_v2,
                (self.storage, self.offset, tuple(self.size), tuple(self.stride), False, collections.OrderedDict()))


class _Pickler(pickle.Pickler):
    def __init__(self, f, legacy: bool, view=None):
        super().__init__(f, protocol=2)
        self.legacy, self.view = legacy, view

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            t = _torch()
            pid = ("storage", t.FloatStorage, obj.key, "cpu", obj.numel)
            return pid + (self.view,) if self.legacy else pid
        return None


big = st.one_of(st.integers(-3, 40), st.integers(-(1 << 70), 1 << 70), st.sampled_from([1 << 31, 1 << 62, 2**63 - 1]))


@st.composite
def lying_tensor(draw):
    rank = draw(st.integers(0, 4))
    return dict(numel=draw(big), offset=draw(big), size=[draw(big) for _ in range(rank)],
                stride=[draw(big) for _ in range(rank)], data_len=draw(st.integers(0, 200)),
                count=draw(big), view=draw(st.one_of(st.none(), st.tuples(st.just("0"), big, big))))


def _crafted_pth(spec: dict, legacy: bool) -> bytes:
    storage = _Storage("0", spec["numel"])
    obj = collections.OrderedDict(x=_Tensor(storage, spec["offset"], spec["size"], spec["stride"]))
    body = io.BytesIO()
    try:
        _Pickler(body, legacy, spec["view"]).dump(obj)
    except (OverflowError, struct.error):  # numbers pickle cannot write: nothing to test
        return b""
    raw = bytes(spec["data_len"])
    if not legacy:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("archive/data.pkl", body.getvalue())
            z.writestr("archive/byteorder", "little")
            z.writestr("archive/data/0", raw)
        return buf.getvalue()
    from nst_jax.weights.pth import MAGIC_NUMBER, PROTOCOL_VERSION

    head = b"".join(pickle.dumps(v, protocol=2) for v in
                    (MAGIC_NUMBER, PROTOCOL_VERSION, {"protocol_version": PROTOCOL_VERSION, "little_endian": True}))
    try:
        count = struct.pack("<q", spec["count"])
    except struct.error:
        count = struct.pack("<q", -1)
    return head + body.getvalue() + pickle.dumps(["0"], protocol=2) + count + raw


def test_fuzz_pth_lying_sizes_and_offsets(tmp):
    _torch()

    @fuzz(400)
    @given(spec=lying_tensor(), legacy=st.booleans())
    def run(spec, legacy):
        data = _crafted_pth(spec, legacy)
        if not data:
            return
        out = expect("pth (lying sizes/offsets)", _load_pth, _write(tmp, "fuzz.pth", data))
        if out is not None:  # whatever is accepted fits in the bytes the file holds (or a bounded expand)
            assert out["x"].size <= max(spec["data_len"], 1 << 26)

    run()


# ------------------------------------------------------------------------------------------------------------
# Keras HDF5


@pytest.fixture(scope="module")
def h5_seed(tmp) -> bytes:
    h5py = pytest.importorskip("h5py")
    p = tmp / "seed.h5"
    with h5py.File(p, "w") as f:
        f.attrs["layer_names"] = [b"block1_conv1", b"block1_conv2"]
        for name in ("block1_conv1", "block1_conv2"):
            g = f.create_group(name)
            g.attrs["weight_names"] = [f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()]
            g.create_dataset(f"{name}/kernel:0", data=np.ones((3, 3, 2, 2), np.float32))
            g.create_dataset(f"{name}/bias:0", data=np.zeros((2,), np.float32))
    return p.read_bytes()


def _read_h5(path):
    from nst_jax.weights.keras_h5 import read_keras_h5

    return read_keras_h5(path)


def test_fuzz_keras_h5_mutated(h5_seed, tmp):
    # Mutations land anywhere; most of an HDF5 file is its metadata (the datasets are a few hundred bytes).
    @fuzz(250)
    @given(data=mutated(h5_seed))
    def run(data):
        expect("keras h5 (mutated)", _read_h5, _write(tmp, "fuzz.h5", data))

    run()


def test_fuzz_keras_h5_lying_shapes_and_types(tmp):
    h5py = pytest.importorskip("h5py")

    @fuzz(60)
    @given(shape=st.lists(st.integers(0, 1 << 20), min_size=0, max_size=4),
           dtype=st.sampled_from(["f4", "f2", "i8", "u1", "S5", "c8", "?"]),
           layout=st.sampled_from(["legacy", "keras3", "group as dataset", "dataset as layer"]))
    def run(shape, dtype, layout):
        p = tmp / "fuzz_crafted.h5"
        with h5py.File(p, "w") as f:
            def dataset(g, name):
                if layout == "group as dataset":
                    return g.create_group(name)
                # chunked and never written: any declared shape costs the file nothing
                return g.create_dataset(name, shape=tuple(shape), dtype=dtype,
                                        chunks=tuple(min(s, 64) for s in shape) if shape and all(shape) else None)
            if layout == "keras3":
                dataset(f.create_group("layers/conv2d/vars"), "0")
            elif layout == "dataset as layer":
                f.attrs["layer_names"] = [b"c"]
                f.create_dataset("c", data=np.zeros(3))
            else:
                f.attrs["layer_names"] = [b"c"]
                g = f.create_group("c")
                g.attrs["weight_names"] = [b"c/kernel:0"]
                dataset(g, "c/kernel:0")
        out = expect("keras h5 (lying shapes/types)", _read_h5, p)
        if out is not None:
            assert sum(a.nbytes for v in out.values() for a in v) <= max(p.stat().st_size * 8, 64 << 20)

    run()


# ------------------------------------------------------------------------------------------------------------
# .npz


@pytest.fixture(scope="module")
def npz_seed(tmp) -> bytes:
    from nst_jax.weights.npz import save_npz

    p = save_npz(tmp / "seed.npz", {"conv1_1": {"kernel": np.ones((3, 3, 3, 4)), "bias": np.zeros(4)}},
                 {"kind": "vgg19"}, overwrite=True)
    return p.read_bytes()


def _read_npz(path):
    from nst_jax.weights.npz import load_npz

    return load_npz(path)


def test_fuzz_npz_mutated(npz_seed, tmp):
    @fuzz(200)
    @given(data=mutated(npz_seed))
    def whole(data):
        expect("npz (mutated archive)", _read_npz, _write(tmp, "fuzz.npz", data))

    members = _members(npz_seed)

    @fuzz(200)
    @given(which=st.integers(0, len(members) - 1), data=st.data())
    def inner(which, data):
        name, seed = members[which]
        new = data.draw(mutated(seed))
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for n, d in members:
                z.writestr(n, new if n == name else d)
        expect("npz (mutated member)", _read_npz, _write(tmp, "fuzz.npz", buf.getvalue()))

    whole()
    inner()


def test_fuzz_npz_lying_headers(tmp):
    @fuzz(150)
    @given(shape=st.lists(st.integers(0, 1 << 40), max_size=3),
           descr=st.sampled_from(["<f4", "<f8", "|u1", "<c8", "|O"]),
           body=st.integers(0, 64), meta=st.sampled_from(['{"kind": "vgg19"}', "[" * 5000, '"x"', "{}"]),
           deflate=st.booleans())
    def run(shape, descr, body, meta, deflate):
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False,
                                                       "shape": tuple(shape)})
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as z:
            m = io.BytesIO()
            np.save(m, np.array(meta))
            z.writestr("__meta__.npy", m.getvalue())
            z.writestr("conv1_1/kernel.npy", header.getvalue() + bytes(body))
        out = expect("npz (lying headers)", _read_npz, _write(tmp, "fuzz.npz", buf.getvalue()))
        if out is not None:
            assert out[0]["conv1_1"]["kernel"].nbytes <= 4 * body

    run()


def test_npz_zip_bomb_member_is_refused_before_decompressing(tmp):
    # Regression: the declared uncompressed size is checked before NumPy allocates the shape in the header.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                   "shape": (1 << 28,)})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        m = io.BytesIO()
        np.save(m, np.array('{"kind": "vgg19"}'))
        z.writestr("__meta__.npy", m.getvalue())
        z.writestr("a/b.npy", header.getvalue())  # declares 1 GB, holds nothing
    from nst_jax.errors import WeightsError

    with pytest.raises(WeightsError, match="declares shape"):
        _read_npz(_write(tmp, "bomb.npz", buf.getvalue()))


# ------------------------------------------------------------------------------------------------------------
# ONNX


@pytest.fixture(scope="module")
def onnx_seed() -> bytes:
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], name="conv")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    return helper.make_model(graph).SerializeToString()


def _read_onnx(path):
    from nst_jax.weights.onnx import read_onnx

    return read_onnx(path)


def test_fuzz_onnx_mutated(onnx_seed, tmp):
    @fuzz(300)
    @given(data=mutated(onnx_seed))
    def run(data):
        expect("onnx (mutated)", _read_onnx, _write(tmp, "fuzz.onnx", data))

    run()


def test_fuzz_onnx_lying_tensors(tmp):
    onnx = pytest.importorskip("onnx")
    from onnx import helper

    @fuzz(150)
    @given(dims=st.lists(st.integers(-2, 1 << 40), max_size=4), dtype=st.integers(0, 30),
           raw=st.binary(max_size=64), external=st.sampled_from([None, "../x", "/etc/passwd", "w.bin", ""]),
           offset=st.sampled_from(["0", "-1", "99999999999", "x", "4"]), length=st.sampled_from(["", "8", "-3", "1e3"]))
    def run(dims, dtype, raw, external, offset, length):
        t = onnx.TensorProto(name="w", data_type=dtype, dims=dims, raw_data=raw)
        if external is not None:
            t.data_location = onnx.TensorProto.EXTERNAL
            for k, v in (("location", external), ("offset", offset), ("length", length)):
                e = t.external_data.add()
                e.key, e.value = k, v
            (tmp / "w.bin").write_bytes(bytes(16))
        node = helper.make_node("Identity", ["w"], ["y"])
        graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", 1, None)], [t])
        data = helper.make_model(graph).SerializeToString()
        expect("onnx (lying tensors)", _read_onnx, _write(tmp, "fuzz.onnx", data))

    run()


# ------------------------------------------------------------------------------------------------------------
# Images


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png(w: int, h: int, idat: bytes, bit_depth: int = 8, colour: int = 2) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def image_seeds() -> dict[str, bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    im = Image.fromarray((rng.random((12, 16, 3)) * 255).astype(np.uint8), "RGB")
    out = {}
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM"):
        buf = io.BytesIO()
        im.save(buf, fmt)
        out[fmt] = buf.getvalue()
    return out


def _load_image(path):
    from nst_jax.image import load_image

    return load_image(path, max_side=64)


def _decode_bytes(label: str, data: bytes) -> None:
    from nst_jax.serve import codec

    expect(f"live frame ({label})", codec.decode_frame, data, 16)
    expect(f"live upload ({label})", codec.decode_upload, data, 16)


def test_fuzz_image_decoding_mutated(image_seeds, tmp):
    names = sorted(image_seeds)

    @fuzz(400)
    @given(fmt=st.sampled_from(names), data=st.data())
    def run(fmt, data):
        raw = data.draw(mutated(image_seeds[fmt]))
        expect("image file (mutated)", _load_image, _write(tmp, f"fuzz.{fmt.lower()}", raw))
        _decode_bytes("mutated", raw)

    run()


def test_fuzz_image_wrong_magic_huge_sizes_and_bombs(image_seeds, tmp):
    side = st.one_of(st.integers(0, 64), st.integers(0, 2**32 - 1))

    @fuzz(200)
    @given(w=side, h=side,
           depth=st.sampled_from([1, 8, 16]), colour=st.sampled_from([0, 2, 6]),
           idat=st.sampled_from([b"", b"garbage", zlib.compress(bytes(4096)), zlib.compress(bytes(1 << 20), 9)]),
           magic=st.sampled_from([None, b"\x89PNH", b"GIF8", b"\xff\xd8\xff", b"BM"]))
    def run(w, h, depth, colour, idat, magic):
        raw = _png(w, h, idat, depth, colour)
        if magic is not None:
            raw = magic + raw[len(magic):]
        t0 = time.perf_counter()
        out = expect("image (huge sizes, bombs, wrong magic)", _load_image, _write(tmp, "fuzz_bomb.png", raw))
        _decode_bytes("huge sizes", raw)
        assert time.perf_counter() - t0 < 5
        if out is not None:
            assert out.size <= 64 * 64 * 3

    run()


def test_decompression_bomb_is_an_image_error(tmp):
    from PIL import Image

    from nst_jax.errors import ImageError

    # 20000 x 20000 1-bit: 50 MB of pixels from a file of a few KB.
    raw = _png(20000, 20000, zlib.compress(bytes(2501 * 20000), 9), 1, 0)
    with pytest.raises(ImageError, match="refusing"):
        _load_image(_write(tmp, "bomb.png", raw))
    assert Image.MAX_IMAGE_PIXELS is not None


# ------------------------------------------------------------------------------------------------------------
# The live protocol


def test_fuzz_protocol_binary_messages():
    from nst_jax.serve import protocol

    @fuzz(2000)
    @given(msg=st.one_of(st.binary(max_size=40),
                         st.builds(lambda k, rest: bytes([k]) + rest, st.sampled_from([0, 1, 2, 3, 255]),
                                   st.binary(max_size=300))))
    def run(msg):
        out = expect("protocol (binary)", protocol.unpack_client, msg)
        if out is not None:
            kind, seq, name, payload = out
            assert kind in (protocol.FRAME, protocol.UPLOAD) and 0 <= seq < 2**32
            assert len(payload) <= len(msg) and isinstance(name, str)

    run()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats(allow_nan=True) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6)


@pytest.mark.slow
def test_fuzz_protocol_settings_messages():
    from nst_jax.serve.settings import Settings, parse_settings
    from nst_jax.serve.styles import StyleLibrary

    lib = StyleLibrary()
    sid = lib.add("a", "builtin", np.zeros(3), b"", "d0").id
    current = Settings(0, ((sid, 1.0),))

    weight = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 3), st.booleans(), st.none())
    styles = st.lists(st.one_of(st.tuples(st.sampled_from([sid, "s999", ""]), weight).map(list), json_values),
                      max_size=10)
    fields = {"version": st.integers(-1, 2**33) | json_values, "styles": styles | json_values,
              "alpha": weight | json_values, "preserve_color": st.sampled_from(
                  ["none", "luminance", "histogram", "histogram_output", "x", ""]) | json_values,
              "size": st.sampled_from([16, 32, 33, True, "16"]) | json_values,
              "side_by_side": st.booleans() | json_values, "type": st.just("settings")}

    @fuzz(600)
    @given(obj=st.fixed_dictionaries({}, optional=fields))
    def run(obj):
        out = expect("protocol (settings JSON)", parse_settings, obj, current, lib, (16, 32))
        if out is not None:
            assert 0.0 <= out.alpha <= 1.0 and out.size in (16, 32)
            assert all(w >= 0 and np.isfinite(w) for _, w in out.styles)

    run()


# ------------------------------------------------------------------------------------------------------------
# --config.KEY=VALUE overrides (train.py's parser, in a subprocess: absl parses flags once per process)

_DRIVER = """
import runpy, sys
m = runpy.run_path("train.py", run_name="train_script")
m["_parse_flags"](sys.argv)
print("PARSED")
"""


@pytest.mark.slow
def test_fuzz_config_overrides(tmp):
    keys = ["batch_size", "learning_rate", "model", "model.x", "", ".x", "num_steps[0]", "image_size.y",
            "nokey", "style_data", "seed", "trainable"]
    values = st.one_of(st.sampled_from(["1", "-1", "abc", "1e999", "nan", "[", "{}", "None", "True", "'x'",
                                        "99999999999999999999999", "", "1,2", "()", "\x1e"]),
                       # (a newline in the value is echoed as given by absl's own message)
                       st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00\n\r"), max_size=12))

    @fuzz(12)
    @given(key=st.sampled_from(keys), value=values, eq=st.booleans())
    def run(key, value, eq):
        arg = f"--config.{key}={value}" if eq else f"--config.{key}"
        argv = [sys.executable, "-c", _DRIVER, "--config", "configs/tiny.py", "--workdir", str(tmp / "wd"), arg]
        t0 = time.perf_counter()
        p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
        s = STATS.setdefault("--config overrides", {"cases": 0, "accepted": 0, "messages": set(),
                                                    "seconds": 0.0})
        s["cases"] += 1
        s["seconds"] += time.perf_counter() - t0
        assert "Traceback" not in p.stderr, p.stderr[-2000:]
        if p.returncode == 0:
            assert "PARSED" in p.stdout
            s["accepted"] += 1
            return
        lines = [ln for ln in p.stderr.split("\n") if ln.strip()]
        # ours: one line; absl's flag errors: its line plus "Pass --helpshort or --helpfull ..."
        assert lines and (len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("Pass --help"))), lines
        assert lines[0].startswith(("train.py: error:", "FATAL Flags parsing error:")), lines
        s["messages"].add(_normalise(lines[0]))

    run()


@pytest.mark.parametrize("arg", ["--config.=1", "--config..x=1", "--config.model.x=1"])
def test_unparsable_override_paths_are_one_line(arg, tmp):
    # Regression: these reached ml_collections' path parser and ended in a traceback.
    p = subprocess.run([sys.executable, "-c", _DRIVER, "--config", "configs/tiny.py", "--workdir",
                        str(tmp / "wd"), arg], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().startswith("train.py: error: bad --config override") and \
        len(p.stderr.strip().splitlines()) == 1


def test_npz_with_an_unterminated_npy_header_is_a_weights_error(npz_seed, tmp):
    # Regression (found by test_fuzz_npz_mutated): NumPy's header parser raised tokenize.TokenError.
    members = _members(npz_seed)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, d in members:
            z.writestr(n, d.replace(b"{'descr'", b"z'descr'", 1) if n == members[0][0] else d)
    from nst_jax.errors import WeightsError

    with pytest.raises(WeightsError, match="not a readable"):
        _read_npz(_write(tmp, "token.npz", buf.getvalue()))


def test_npz_complex_arrays_are_refused_not_silently_cast(tmp):
    # Regression (found by test_fuzz_npz_lying_headers): complex values were cast to float32, imaginary part lost.
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.array('{"kind": "vgg19"}'), **{"a/b": np.ones(3, np.complex64)})
    from nst_jax.errors import WeightsError

    with pytest.raises(WeightsError, match="complex64"):
        _read_npz(_write(tmp, "complex.npz", buf.getvalue()))


# Regressions found by test_fuzz_pth_lying_sizes_and_offsets (the reader before: the exception it raised)
PTH_REGRESSIONS = {
    # ValueError escaped: read(-8)
    "legacy negative storage count": (dict(numel=4, offset=0, size=[2], stride=[1], data_len=16, count=-1,
                                           view=None), True, "claims -1 elements"),
    # MemoryError: read() of 8 TB allocated before reading
    "legacy huge storage count": (dict(numel=4, offset=0, size=[2], stride=[1], data_len=16, count=1 << 40,
                                       view=None), True, "beyond the end of the file"),
    # MemoryError (or an OOM kill for sizes that fit in virtual memory): a stride-0 view of 10^12 elements
    "stride-0 expansion": (dict(numel=4, offset=0, size=[10**6, 10**6], stride=[0, 0], data_len=16, count=4,
                                view=None), False, "more elements than its storage"),
    # OverflowError escaped from as_strided
    "huge stride on a size-1 axis": (dict(numel=4, offset=0, size=[1, 2], stride=[1 << 70, 1], data_len=16,
                                          count=4, view=None), False, "malformed tensor"),
    # a negative view offset read from the end of the storage
    "negative storage view offset": (dict(numel=4, offset=0, size=[2], stride=[1], data_len=16, count=4,
                                          view=("0", -2, 2)), True, "outside its storage"),
    # accepted: a storage of -5 elements
    "negative storage numel": (dict(numel=-5, offset=0, size=[0], stride=[1], data_len=16, count=4, view=None),
                               False, "malformed storage id"),
}


@pytest.mark.parametrize("case", sorted(PTH_REGRESSIONS))
def test_pth_lying_headers_are_weights_errors(case, tmp):
    from nst_jax.errors import WeightsError

    _torch()
    spec, legacy, message = PTH_REGRESSIONS[case]
    with pytest.raises(WeightsError, match=message):
        _load_pth(_write(tmp, "regression.pth", _crafted_pth(spec, legacy)))


def test_pth_zip_bomb_storage_is_refused_before_decompressing(tmp, monkeypatch):
    from nst_jax.errors import WeightsError
    from nst_jax.weights import pth

    _torch()
    monkeypatch.setattr(pth, "MAX_DEFLATED_BYTES", 4 << 20)  # the same check, on a test-sized bomb
    body = io.BytesIO()
    _Pickler(body, legacy=False).dump(collections.OrderedDict(x=_Tensor(_Storage("0", 2 << 20), 0, [4], [1])))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", body.getvalue())
        # zeros that deflate a thousandfold: a storage torch.save would have stored uncompressed
        z.writestr("archive/data/0", bytes(8 << 20), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    with pytest.raises(WeightsError, match="refused"):
        _load_pth(_write(tmp, "bomb.pth", buf.getvalue()))


@pytest.mark.parametrize("dtype, message", [("f4", "more than the file can hold"), ("S8", "not numbers")])
def test_keras_h5_dataset_declaring_more_than_the_file_holds_is_refused_before_reading(dtype, message, tmp):
    # Regression (found by test_fuzz_keras_h5_lying_shapes_and_types): the reader called np.asarray on a chunked,
    # never-written dataset and allocated its declared shape; 16 GB here, from a file of a few KB.
    h5py = pytest.importorskip("h5py")
    from nst_jax.errors import WeightsError

    p = tmp / "lying.h5"
    with h5py.File(p, "w") as f:
        f.attrs["layer_names"] = [b"c"]
        g = f.create_group("c")
        g.attrs["weight_names"] = [b"c/kernel:0"]
        shape = (1 << 16, 1 << 16) if dtype == "f4" else (4,)
        g.create_dataset("c/kernel:0", shape=shape, dtype=dtype, chunks=(64, 64) if dtype == "f4" else None)
    assert p.stat().st_size < 1 << 20
    with pytest.raises(WeightsError, match=message):
        _read_h5(p)


@pytest.mark.parametrize("legacy", [True, False])
def test_pth_pickle_memo_index_does_not_allocate(legacy, tmp):
    # Regression (found by the long fuzz run of test_fuzz_pth_legacy_stream: the process was OOM-killed at 20 GB):
    # the C unpickler sizes its memo by the index a LONG_BINPUT names; 2**30 here would allocate 8 GB.
    from nst_jax.errors import WeightsError
    from nst_jax.weights.pth import MAGIC_NUMBER, PROTOCOL_VERSION

    obj = b"\x80\x02}r\x00\x00\x00\x40."  # PROTO 2, EMPTY_DICT, LONG_BINPUT 0x40000000, STOP
    if legacy:
        head = b"".join(pickle.dumps(v, protocol=2) for v in (MAGIC_NUMBER, PROTOCOL_VERSION, {}))
        data = head + obj + pickle.dumps([], protocol=2)
    else:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("archive/data.pkl", obj)
        data = buf.getvalue()
    t0 = time.perf_counter()
    with pytest.raises(WeightsError, match="holds no tensors"):
        _load_pth(_write(tmp, "memo.pth", data))
    assert time.perf_counter() - t0 < 5
