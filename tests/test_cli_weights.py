"""`nst-jax convert | download | info` through the real command-line entry point."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from collections import OrderedDict
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
import pytest

from nst_jax import cli
from nst_jax.weights import load_decoder, load_npz, load_vgg
from nst_jax.weights.download import weights_dir
from nst_jax.weights.registry import REGISTRY, with_overrides

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run(monkeypatch, capsys):
    """Run `nst-jax ARGS` in-process with only the weights subcommands registered (isolated from the rest)."""
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("weights",))

    def _run(*args: str) -> tuple[int, str, str]:
        code = cli.main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return _run


def _assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nst-jax: error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def _conv(cin, cout, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(cout, cin, k, k, generator=g) * 0.1, torch.randn(cout, generator=g) * 0.1


def _torchvision_sd() -> OrderedDict:
    # torchvision VGG19 up to conv2_1 (a truncated features stack) plus a classifier that must be ignored
    sd = OrderedDict()
    for idx, (cin, cout) in {0: (3, 64), 2: (64, 64), 5: (64, 128)}.items():
        sd[f"features.{idx}.weight"], sd[f"features.{idx}.bias"] = _conv(cin, cout, seed=idx)
    sd["classifier.0.weight"] = torch.zeros(4, 8)
    return sd


def _adain_sd() -> OrderedDict:
    sd = OrderedDict()
    sd["0.weight"], sd["0.bias"] = _conv(3, 3, k=1)
    sd["2.weight"], sd["2.bias"] = _conv(3, 64, seed=2)
    return sd


def _decoder_sd() -> OrderedDict:
    from nst_jax.models.decoder import DECODER_CONVS, TORCH_INDEX

    sd = OrderedDict()
    for name, cin, cout, _ in DECODER_CONVS:
        sd[f"{TORCH_INDEX[name]}.weight"], sd[f"{TORCH_INDEX[name]}.bias"] = _conv(cin, cout)
    return sd


def _keras_h5(path: Path) -> Path:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"input_1", b"block1_conv1", b"block1_conv2"]
        f.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S1")
        for name, cin in (("block1_conv1", 3), ("block1_conv2", 64)):
            g = f.create_group(name)
            g.attrs["weight_names"] = [f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()]
            g[f"{name}/kernel:0"] = rng.normal(size=(3, 3, cin, 64)).astype(np.float32)
            g[f"{name}/bias:0"] = rng.normal(size=64).astype(np.float32)
    return path


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_convert_torchvision_both_serialisations(run, tmp_path, zip_format):
    src = tmp_path / "vgg19.pth"
    torch.save(_torchvision_sd(), src, _use_new_zipfile_serialization=zip_format)
    code, out, err = run("convert", src)
    assert code == 0, err
    npz = tmp_path / "vgg19.npz"
    assert out.strip().startswith(f"{npz}: VGG19 (torchvision, up to relu2_1) from vgg19.pth")
    params, meta = load_npz(npz)
    assert meta["kind"] == "vgg19" and meta["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    ref, spec = load_vgg(src)
    p2, s2 = load_vgg(npz)
    assert s2 == spec
    for name in ref:
        np.testing.assert_array_equal(p2[name]["kernel"], ref[name]["kernel"])

    # the output exists now: refused without --overwrite, replaced with it
    code, _, err = run("convert", src, "--from", "torchvision")
    _assert_one_line_error(code, err, str(npz), "--overwrite")
    code, _, err = run("convert", src, "--from", "torchvision", "--overwrite")
    assert code == 0, err


def test_convert_adain_decoder_and_keras(run, tmp_path):
    torch.save(_adain_sd(), tmp_path / "vgg_normalised.pth", _use_new_zipfile_serialization=False)
    torch.save(_decoder_sd(), tmp_path / "decoder.pth", _use_new_zipfile_serialization=False)
    _keras_h5(tmp_path / "vgg19_notop.h5")

    code, out, err = run("convert", tmp_path / "vgg_normalised.pth", "--from", "adain",
                         "-o", tmp_path / "a.npz")
    assert code == 0, err
    assert "VGG19 (adain, up to relu1_1)" in out
    assert load_vgg(tmp_path / "a.npz")[1].preconv

    code, out, err = run("convert", tmp_path / "decoder.pth", "-o", tmp_path / "d.npz")
    assert code == 0, err
    assert "AdaIN decoder from decoder.pth" in out
    np.testing.assert_array_equal(load_decoder(tmp_path / "d.npz")["conv1_1"]["bias"],
                                  _decoder_sd()["28.bias"].numpy())

    code, out, err = run("convert", tmp_path / "vgg19_notop.h5", "--from", "keras")
    assert code == 0, err
    params, spec = load_vgg(tmp_path / "vgg19_notop.npz")
    assert spec.source == "keras" and set(params) == {"conv1_1", "conv1_2"}


def test_convert_errors_are_one_line(run, tmp_path):
    code, _, err = run("convert", tmp_path / "missing.pth")
    _assert_one_line_error(code, err, "no such weights file", "missing.pth")

    torch.save(_torchvision_sd(), tmp_path / "tv.pth")
    code, _, err = run("convert", tmp_path / "tv.pth", "--from", "adain")
    _assert_one_line_error(code, err, "is a torchvision VGG19 state_dict", "read it as torchvision")
    code, _, err = run("convert", tmp_path / "tv.pth", "--from", "adain-decoder")
    _assert_one_line_error(code, err, "not an AdaIN decoder")

    (tmp_path / "cat.jpg").write_bytes(b"\xff\xd8\xff\xe0 not weights")
    code, _, err = run("convert", tmp_path / "cat.jpg")
    _assert_one_line_error(code, err, "not a weights file")

    torch.save(torch.nn.Conv2d(3, 3, 1), tmp_path / "model.pth")
    code, _, err = run("convert", tmp_path / "model.pth")
    _assert_one_line_error(code, err, "whole pickled model", "state_dict()")

    code, _, err = run("convert", "adain")  # a registry name, but offline (conftest) and not cached
    _assert_one_line_error(code, err, "offline", REGISTRY["adain"].url,
                           str(weights_dir() / "vgg_normalised.pth"))


def test_info_lists_registry_and_cache(run):
    code, out, err = run("info")
    assert code == 0, err
    assert f"weights cache: {weights_dir()}" in out
    for name, source in REGISTRY.items():
        assert f"\n{name}  [" in out and source.url in out
    assert "md5 253f8cb515780f3b799900260a226db6" in out and "sha256 prefix dcbb9e9d" in out
    assert out.count("not cached") == len(REGISTRY)

    weights_dir().mkdir(parents=True)
    (weights_dir() / "vgg19-dcbb9e9d.pth").write_bytes(b"\0" * 2048)
    (weights_dir() / "mine.npz").write_bytes(b"x")
    code, out, _ = run("info")
    assert "cached:    " + str(weights_dir() / "vgg19-dcbb9e9d.pth") + " (2.0 KiB)" in out
    assert "placed by hand" in out and "mine.npz" in out
    code, out, _ = run("info", "--verify")
    assert code == 0 and "BAD: sha256" in out


@pytest.fixture
def file_server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = partial(Quiet, directory=str(root))
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_download_from_local_server(run, file_server, monkeypatch):
    root, url = file_server
    data = np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    (root / "keras.h5").write_bytes(data)
    monkeypatch.setenv("NST_JAX_REGISTRY_URL_KERAS", url + "/keras.h5")

    code, _, err = run("download", "keras")  # offline (conftest)
    _assert_one_line_error(code, err, "offline", url + "/keras.h5",
                           str(weights_dir() / REGISTRY["keras"].filename))

    monkeypatch.delenv("NST_JAX_OFFLINE")
    code, _, err = run("download", "keras")  # our bytes are not Keras': the published md5 refuses them
    _assert_one_line_error(code, err, "md5", "is not the published 253f8cb515780f3b799900260a226db6")
    assert not weights_dir().exists() or not any(weights_dir().iterdir())

    entry = with_overrides(REGISTRY["keras"], md5=hashlib.md5(data).hexdigest())
    monkeypatch.setitem(REGISTRY, "keras", entry)
    code, out, err = run("download", "keras")
    assert code == 0, err
    cached = weights_dir() / REGISTRY["keras"].filename
    assert out.strip() == f"keras: {cached} (48.8 KiB)" and cached.read_bytes() == data

    code, _, err = run("download", "nope")
    _assert_one_line_error(code, err, "unknown weights name 'nope'",
                           "adain, adain-decoder, torchvision, keras")


def test_error_in_a_real_process(tmp_path):
    """A real process running the CLI's main exits 2 with exactly one line on stderr (no traceback)."""
    env = {"PYTHONPATH": str(ROOT), "NST_JAX_HOME": str(tmp_path), "NST_JAX_OFFLINE": "1",
           "PATH": "/usr/bin:/bin"}
    code = ("import sys, nst_jax.cli as c; c.COMMAND_MODULES = ('weights',); "
            "raise SystemExit(c.main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "convert", str(tmp_path / "nope.pth")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"nst-jax: error: no such weights file: {tmp_path / 'nope.pth'} (or use a registry name: adain, "
        "adain-decoder, torchvision, keras)"]
