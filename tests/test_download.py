"""fetch(): verified, atomic, resumable downloads from a local HTTP server; one-line errors otherwise."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from nst_jax.errors import DownloadError
from nst_jax.weights import download
from nst_jax.weights.download import cache_dir, weights_dir
from nst_jax.weights.ports import cache_status, fetch
from nst_jax.weights.registry import REGISTRY, Source, with_overrides


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and srv.ranges:
            start = int(m.group(1))
            if start >= len(data):
                self.send_error(416, "Range Not Satisfiable")
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut.pop(self.path, False):  # promise everything, send half, hang up
            body = body[: len(body) // 2]
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.cut, srv.ranges = {}, [], {}, True
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def online(monkeypatch):
    monkeypatch.delenv("NST_JAX_OFFLINE", raising=False)


def _payload(n=300_000, seed=0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _source(server, data: bytes, **hashes) -> Source:
    server.files["/w/file.bin"] = data
    return Source(name="test", url=server.url + "/w/file.bin", filename="file.bin", kind="vgg19",
                  fmt="torchvision", spec="torchvision", **hashes)


def _leftovers() -> list[str]:
    d = weights_dir()
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("which", ["sha256", "sha256_prefix", "md5"])
def test_good_file_is_cached_once(server, online, which):
    data = _payload()
    sha = hashlib.sha256(data).hexdigest()
    digest = {"sha256": sha, "sha256_prefix": sha[:8], "md5": hashlib.md5(data).hexdigest()}[which]
    source = _source(server, data, **{which: digest})
    path = fetch("test", source=source, progress=False)
    assert path == weights_dir() / "file.bin" and path.read_bytes() == data
    assert _leftovers() == ["file.bin", "file.bin.sha256"]
    assert download.recorded_sha256(path) == hashlib.sha256(data).hexdigest()
    assert fetch("test", source=source) == path
    assert len(server.requests) == 1  # the second call used the cache

    server.files["/w/file.bin"] = _payload(seed=1)
    with pytest.raises(DownloadError):  # --force downloads again (and the new bytes fail the hash)
        fetch("test", source=source, force=True)
    assert path.read_bytes() == data and _leftovers() == ["file.bin", "file.bin.sha256"]


@pytest.mark.parametrize("which", ["sha256", "sha256_prefix", "md5"])
def test_wrong_hash_is_refused_and_removed(server, online, which):
    data = _payload()
    wrong = {"sha256": "0" * 64, "sha256_prefix": "dcbb9e9d",
             "md5": "253f8cb515780f3b799900260a226db6"}[which]
    source = _source(server, data, **{which: wrong})
    with pytest.raises(DownloadError) as e:
        fetch("test", source=source, progress=False)
    msg = _one_line(e)
    assert source.url in msg and str(weights_dir() / "file.bin") in msg
    assert re.search(r"(sha256|md5) \w+", msg)
    assert _leftovers() == []


def test_no_published_hash_is_checked_by_content(server, online, tmp_path):
    torch = pytest.importorskip("torch")
    # a small pytorch-AdaIN encoder (conv0 and conv1_1: a truncated vgg_normalised is accepted by the port)
    sd = {"0.weight": torch.randn(3, 3, 1, 1), "0.bias": torch.randn(3), "2.weight": torch.randn(64, 3, 3, 3),
          "2.bias": torch.randn(64)}
    torch.save(sd, tmp_path / "vgg.pth", _use_new_zipfile_serialization=False)
    good = (tmp_path / "vgg.pth").read_bytes()
    entry = with_overrides(REGISTRY["adain"], url=server.url + "/w/vgg_normalised.pth")

    server.files["/w/vgg_normalised.pth"] = b"<html>rate limited</html>"
    with pytest.raises(DownloadError, match="is not adain's weights") as e:
        fetch("adain", source=entry, progress=False)
    assert entry.url in _one_line(e)
    assert _leftovers() == []

    server.files["/w/vgg_normalised.pth"] = good
    path = fetch("adain", source=entry, progress=False)
    assert path.read_bytes() == good
    assert download.recorded_sha256(path) == hashlib.sha256(good).hexdigest()


def test_server_down(online):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    source = Source(name="test", url=f"http://127.0.0.1:{port}/x.pth", filename="x.pth", kind="vgg19",
                    fmt="torchvision", spec="torchvision", sha256_prefix="00000000")
    with pytest.raises(DownloadError, match="cannot connect") as e:
        fetch("test", source=source, progress=False)
    msg = _one_line(e)
    assert source.url in msg and str(weights_dir() / "x.pth") in msg
    assert _leftovers() == []


def test_http_error(server, online):
    source = _source(server, b"x", sha256_prefix="00000000")
    source = with_overrides(source, url=server.url + "/nothing-here.pth")
    with pytest.raises(DownloadError, match="HTTP 404") as e:
        fetch("test", source=source, progress=False)
    assert source.url in _one_line(e)
    assert _leftovers() == []


def test_offline_makes_no_request(server):
    # conftest sets NST_JAX_OFFLINE=1
    data = _payload(1000)
    source = _source(server, data, md5=hashlib.md5(data).hexdigest())
    with pytest.raises(DownloadError, match="offline") as e:
        fetch("test", source=source)
    assert source.url in _one_line(e) and str(weights_dir() / "file.bin") in str(e.value)
    assert server.requests == [] and _leftovers() == []


def test_interrupted_download_resumes_with_range(server, online):
    data = _payload()
    source = _source(server, data, sha256=hashlib.sha256(data).hexdigest())
    server.cut["/w/file.bin"] = True
    with pytest.raises(DownloadError, match="run again to resume") as e:
        fetch("test", source=source, progress=False)
    _one_line(e)
    part = weights_dir() / "file.bin.part"
    assert part.read_bytes() == data[: len(data) // 2]
    assert not (weights_dir() / "file.bin").exists()

    path = fetch("test", source=source, progress=False)
    assert path.read_bytes() == data
    assert server.requests[-1] == ("/w/file.bin", f"bytes={len(data) // 2}-")
    assert _leftovers() == ["file.bin", "file.bin.sha256"]


def test_file_url_mirror(online, tmp_path):
    data = _payload(5000)
    (tmp_path / "mirror.bin").write_bytes(data)
    source = Source(name="test", url=(tmp_path / "mirror.bin").as_uri(), filename="file.bin", kind="vgg19",
                    fmt="torchvision", spec="torchvision", md5=hashlib.md5(data).hexdigest())
    assert fetch("test", source=source, progress=False).read_bytes() == data


def test_concurrent_fetches_download_once(server, online, monkeypatch):
    data = _payload()
    source = _source(server, data, sha256=hashlib.sha256(data).hexdigest())
    real = download._transfer

    def slow(*args, **kwargs):  # hold the lock long enough for the other thread to queue on it
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(download, "_transfer", slow)
    results = []
    threads = [threading.Thread(target=lambda: results.append(fetch("test", source=source, progress=False)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1] and results[0].read_bytes() == data
    assert len(server.requests) == 1
    assert _leftovers() == ["file.bin", "file.bin.sha256"]


def test_stale_part_is_restarted_when_range_is_ignored(server, online):
    data = _payload()
    source = _source(server, data, sha256=hashlib.sha256(data).hexdigest())
    server.ranges = False
    weights_dir().mkdir(parents=True)
    (weights_dir() / "file.bin.part").write_bytes(b"garbage" * 10)
    assert fetch("test", source=source, progress=False).read_bytes() == data


def test_registry_url_override_by_environment(server, online, monkeypatch):
    data = _payload()
    server.files["/mirror/vgg19-dcbb9e9d.pth"] = data
    monkeypatch.setenv("NST_JAX_REGISTRY_URL_TORCHVISION", server.url + "/mirror/vgg19-dcbb9e9d.pth")
    # our bytes are not torchvision's: give the entry their digest, as a private mirror would
    monkeypatch.setitem(REGISTRY, "torchvision", with_overrides(REGISTRY["torchvision"],
                                                               sha256_prefix=hashlib.sha256(data).hexdigest()[:8]))
    path = fetch("torchvision", progress=False)
    assert path == weights_dir() / "vgg19-dcbb9e9d.pth" and path.read_bytes() == data
    assert server.requests == [("/mirror/vgg19-dcbb9e9d.pth", None)]


def test_cache_dir_default_and_override(monkeypatch, tmp_path):
    monkeypatch.setenv("NST_JAX_HOME", str(tmp_path / "h"))
    assert cache_dir() == tmp_path / "h" and weights_dir() == tmp_path / "h" / "weights"
    monkeypatch.delenv("NST_JAX_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "nst_jax"


def test_cache_status(server, online, monkeypatch):
    data = _payload()
    monkeypatch.setitem(REGISTRY, "keras", with_overrides(REGISTRY["keras"], url=server.url + "/k.h5",
                                                         md5=hashlib.md5(data).hexdigest()))
    server.files["/k.h5"] = data
    assert cache_status("keras").status == "not cached"
    fetch("keras", progress=False)
    st = cache_status("keras")
    assert st.cached and st.size == len(data)
    assert st.status.startswith("md5 ") and "checked at download" in st.status
    assert cache_status("keras", verify=True).status.endswith("verified now")
    path = weights_dir() / REGISTRY["keras"].filename
    path.write_bytes(data[:-1] + b"\x00")
    assert cache_status("keras", verify=True).status.startswith("BAD: md5")

    Path(str(path) + ".sha256").unlink()
    path.write_bytes(data)
    assert "placed by hand" in cache_status("keras").status
