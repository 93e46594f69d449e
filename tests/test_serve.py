"""The live server without a browser: codec limits, batching, settings, real WebSocket clients on loopback."""

from __future__ import annotations

import asyncio
import io
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import cv2
import jax
import numpy as np
import pytest
from PIL import Image

from nst_jax import models
from nst_jax.checks import normalise_weights
from nst_jax.errors import ImageError, NstError
from nst_jax.models import Caps
from nst_jax.serve import codec, protocol
from nst_jax.serve.app import LiveServer, ServerConfig
from nst_jax.serve.batcher import Batcher, Job, bucket_sizes, stack_conditions
from nst_jax.serve.cli import main as serve_main
from nst_jax.serve.settings import Settings, parse_settings, postprocess
from nst_jax.serve.styles import StyleLibrary, builtin_patterns, fill_library, fill_table
from nst_jax.serve.testing import ServerThread, StalledClient, jpeg

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32


@pytest.fixture(scope="module")
def model(random_model):
    return random_model


@pytest.fixture(scope="module")
def library(model):
    lib = StyleLibrary()
    fill_library(lib, [(n, "builtin", img) for n, img in builtin_patterns(SIZE)], model.style_stats)
    return lib


def frame(seed: int, size: int = SIZE) -> np.ndarray:
    """A smooth random colour frame (H, W, 3) float32, different per seed."""
    rng = np.random.default_rng(seed)
    small = rng.random((4, 4, 3)).astype(np.float32)
    im = Image.fromarray((small * 255).astype(np.uint8), "RGB").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(im, np.float32) / np.float32(255.0)


# ----------------------------------------------------------------------------------------------------------
# Decoding with limits


@pytest.fixture(scope="module")
def huge_jpeg() -> bytes:
    """A real 10000 x 10000 JPEG (grey, so it is small on the wire)."""
    buf = io.BytesIO()
    Image.new("L", (10000, 10000), 128).save(buf, "JPEG", quality=50)
    return buf.getvalue()


def test_decode_frame_accepts_any_jpeg_within_limits():
    img = (np.random.default_rng(0).random((48, 80, 3)) * 255).astype(np.uint8)
    out = codec.decode_frame(jpeg(img), 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decode_rejects_garbage_truncated_huge_and_wrong_format(huge_jpeg):
    good = jpeg((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    with pytest.raises(ImageError, match="not a JPEG"):
        codec.decode_frame(b"\x00garbage" * 10, 32)
    with pytest.raises(ImageError, match="frame"):
        codec.decode_frame(good[: len(good) // 2], 32)
    with pytest.raises(ImageError, match="10000x10000"):
        codec.decode_frame(huge_jpeg, 32)
    with pytest.raises(ImageError, match="bytes; the limit"):
        codec.decode_frame(good, 32, codec.Limits(frame_bytes=100))
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    with pytest.raises(ImageError, match="not a JPEG"):
        codec.decode_frame(png.getvalue(), 32)
    with pytest.raises(ImageError, match="not a"):
        codec.decode_upload(b"%PDF-1.4 this is not an image", 32)
    with pytest.raises(ImageError, match="10000x10000"):
        codec.decode_upload(huge_jpeg, 32)
    with pytest.raises(ImageError, match="empty"):
        codec.decode_upload(b"", 32)


def test_decode_upload_composites_alpha_on_white_and_crops_square():
    rgba = np.zeros((40, 60, 4), np.uint8)  # fully transparent
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    img, pil = codec.decode_upload(buf.getvalue(), 16)
    assert img.shape == (1, 16, 16, 3) and pil.size == (16, 16)
    np.testing.assert_allclose(img, 1.0)


def test_style_library_bounds_uploads_and_finds_duplicates():
    lib = StyleLibrary(max_uploads=2)
    gallery = lib.add("painting", "gallery", None, b"", "d0")
    ups = [lib.add(f"u{i}", "upload", None, b"", f"d{i + 1}") for i in range(3)]
    assert gallery.id in lib and ups[0].id not in lib and ups[1].id in lib and ups[2].id in lib
    assert lib.find("d3") is ups[2] and lib.find("d1") is None
    assert len({gallery.id, *(u.id for u in ups)}) == 4  # ids are never reused
    assert [d["name"] for d in lib.describe()] == ["painting", "u1", "u2"]


def test_recorder_keeps_real_time_and_renames_into_place(tmp_path):
    from nst_jax.serve.sources import Recorder

    target = tmp_path / "rec.avi"
    rec = Recorder(target, 16, fps=10.0)
    img = np.full((16, 16, 3), 200, np.uint8)
    assert [rec.write(img, now=t) for t in (5.0, 5.35, 5.36, 5.61)] == [1, 3, 0, 3]
    assert not target.exists()  # still being written to a temporary name
    assert rec.close() == target and rec.frames == 7
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    cap = cv2.VideoCapture(str(target))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == 7
    with pytest.raises(NstError, match="exists"):
        Recorder(target, 16)
    with pytest.raises(NstError, match="unsupported extension"):
        Recorder(tmp_path / "rec.gif", 16)


# ----------------------------------------------------------------------------------------------------------
# Batcher


class SpyModel:
    """Records the shape of every stylize_conditions call, then runs the real model."""

    def __init__(self, model):
        self.model = model
        self.calls: list[tuple[int, ...]] = []

    def stylize_conditions(self, content, condition, alpha):
        self.calls.append(tuple(np.shape(content)))
        return self.model.stylize_conditions(content, condition, alpha)


def test_bucket_sizes():
    assert bucket_sizes(1) == (1,)
    assert bucket_sizes(8) == (1, 2, 4, 8)
    assert bucket_sizes(6) == (1, 2, 4, 6)
    with pytest.raises(ValueError):
        bucket_sizes(0)


@pytest.mark.slow
def test_batcher_makes_one_padded_call_per_tick_with_per_frame_style_and_alpha(model, library):
    spy = SpyModel(model)
    batcher = Batcher(spy, [SIZE], max_batch=4)
    styles = [library.get(sid["id"]).condition for sid in library.describe()]
    frames = [frame(i) for i in range(4)]
    jobs_args = [(frames[0], styles[0], 1.0), (frames[1], styles[1], 0.5), (frames[2], styles[2], 0.0)]
    got: dict[int, np.ndarray] = {}

    async def main():
        for key, (f, st, a) in enumerate(jobs_args):
            batcher.submit(key, Job(f, st, a, deliver=lambda out, k=key: got.__setitem__(k, out)))
        # Latest frame wins: key 0's first frame is replaced before the tick runs.
        replaced = batcher.submit(0, Job(frames[3], styles[0], 1.0, deliver=lambda out: got.__setitem__(0, out)))
        assert replaced
        task = asyncio.ensure_future(batcher.run())
        for _ in range(2000):
            if len(got) == 3:
                break
            await asyncio.sleep(0.005)
        batcher.close()
        await task

    asyncio.run(main())
    assert spy.calls == [(4, SIZE, SIZE, 3)]  # 3 frames, one call, padded to the bucket of 4
    assert batcher.stats.replaced == 1 and batcher.stats.frames == 3
    # Each frame's result equals stylizing it alone (padding and neighbours change nothing).
    for key, (f, st, a) in enumerate(jobs_args):
        if key == 0:
            f = frames[3]
        alone = np.asarray(model.stylize_conditions(f[None], st, np.array([a], np.float32)))[0]
        np.testing.assert_allclose(got[key], alone, atol=2e-5)
    assert np.abs(got[1] - got[2]).mean() > 1e-3  # different style and alpha -> different frames


@pytest.mark.slow
def test_nothing_compiles_after_warm_up(model, library):
    compiles = []
    listening = [False]

    def listener(event, duration, **kwargs):
        if listening[0] and event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        batcher = Batcher(model, [SIZE, 2 * SIZE], max_batch=4)
        batcher.warm()
        st = library.get(library.first_id()).condition
        listening[0] = True
        for size in (SIZE, 2 * SIZE):
            for n in (1, 2, 3, 4):
                out = batcher._call([Job(frame(i, size), st, 0.3 * i, lambda o: None) for i in range(n)])
                assert out.shape == (n, size, size, 3)
                for preserve in protocol.PRESERVE_COLOR:
                    assert postprocess(out[0], frame(0, size), preserve).dtype == np.uint8
    finally:
        listening[0] = False
    assert compiles == []


# ----------------------------------------------------------------------------------------------------------
# Settings


def test_parse_settings_validates_and_keeps_unsent_fields(library):
    ids = [s["id"] for s in library.describe()]
    cur = Settings(1, ((ids[0], 1.0),), 1.0, "none", SIZE, False)
    new = parse_settings({"version": 2, "styles": [[ids[0], 0.25], [ids[1], 0.75]], "alpha": 7}, cur, library,
                         [SIZE])
    assert new.styles == ((ids[0], 0.25), (ids[1], 0.75)) and new.alpha == 1.0 and new.size == SIZE
    for bad in ({"styles": [["nope", 1]]}, {"styles": [[ids[0], -1]]}, {"styles": [[ids[0], 0]]},
                {"styles": []}, {"styles": [[ids[0], 1]] * 9}, {"alpha": float("nan")}, {"alpha": "1"},
                {"size": 33}, {"preserve_color": "sepia"}, {"side_by_side": 1}, {"version": -1}):
        with pytest.raises(protocol.ProtocolError):
            parse_settings(bad, cur, library, [SIZE])


def test_live_histogram_is_named_for_the_output_and_the_old_name_still_works(library):
    ids = [s["id"] for s in library.describe()]
    cur = Settings(1, ((ids[0], 1.0),), 1.0, "none", SIZE, False)
    assert "histogram_output" in protocol.PRESERVE_COLOR and "histogram" not in protocol.PRESERVE_COLOR
    old = parse_settings({"preserve_color": "histogram"}, cur, library, [SIZE])
    assert old.preserve_color == "histogram_output" and old.describe()["preserve_color"] == "histogram_output"
    out, content = frame(1), frame(2)
    recoloured = postprocess(out, content, "histogram_output")
    np.testing.assert_array_equal(postprocess(out, content, "histogram"), recoloured)
    assert np.abs(recoloured.astype(np.float32) - postprocess(out, content, "none")).mean() > 1.0
    with pytest.raises(protocol.ProtocolError, match="histogram_output"):
        parse_settings({"preserve_color": ["histogram"]}, cur, library, [SIZE])


def test_strength_control_settings_and_batcher(model, library):
    """The page's strength control: validated settings, a gradient map per frame size, one pass in the batcher
    equal to `Stylizer.stylize(strength_map=)`."""
    from nst_jax.serve.settings import StrengthControl

    ids = [s["id"] for s in library.describe()]
    cur = Settings(1, ((ids[0], 1.0),), 1.0, "none", SIZE, False)
    assert cur.strength is None and cur.describe()["strength"] is None
    new = parse_settings({"strength": {"kind": "linear", "x": 2, "angle": 450, "invert": True}}, cur, library,
                         [SIZE])
    assert new.strength == StrengthControl("linear", 1.0, 0.5, 0.3, 90.0, 0.3, True)
    assert new.describe()["strength"]["kind"] == "linear"
    assert parse_settings({"alpha": 0.5}, new, library, [SIZE]).strength == new.strength  # kept when unsent
    assert parse_settings({"strength": None}, new, library, [SIZE]).strength is None
    for bad in ({"strength": 1}, {"strength": {"kind": "spiral"}}, {"strength": {"invert": 1}},
                {"strength": {"x": "1"}}, {"strength": {"softness": float("nan")}}):
        with pytest.raises(protocol.ProtocolError):
            parse_settings(bad, cur, library, [SIZE])
    smap = StrengthControl("radial", 0.3, 0.6, 0.2, 0.0, 0.3).map((SIZE, SIZE))
    assert smap.shape == (SIZE, SIZE) and smap.max() == 1.0 and smap.min() == 0.0
    cond = library.get(ids[0]).condition
    f = frame(3)
    batcher = Batcher(model, [SIZE], max_batch=2)
    got = batcher._call([Job(f, cond, 0.8, lambda o: None, strength=smap)])[0]
    one = jax.tree.map(lambda v: v[:, None], stack_conditions([cond], 1))
    want = model.stylize_strength_conditions(f[None], one, None, smap[None], np.full((1,), 0.8, np.float32))
    np.testing.assert_allclose(got, np.asarray(want)[0], atol=1e-6)
    plain = batcher._call([Job(f, cond, 0.8, lambda o: None)])[0]
    assert np.abs(got - plain).mean() > 1e-3


def test_postprocess_rounds_as_the_image_module():
    from nst_jax import image

    # Exact halves (k + 0.5) / 255 are where rounding conventions differ; out-of-range values are clipped.
    halves = (np.arange(SIZE * SIZE * 3 // 2, dtype=np.float32) % 256 + np.float32(0.5)) / np.float32(255.0)
    spread = np.linspace(-0.1, 1.1, SIZE * SIZE * 3 // 2, dtype=np.float32)
    out = np.concatenate([halves, spread]).reshape(SIZE, SIZE, 3)
    np.testing.assert_array_equal(postprocess(out, frame(0), "none"), image.to_uint8(out))


def test_one_loopback_check_for_the_flag_and_the_host_header():
    from nst_jax.serve import security

    for host in ("localhost", "LocalHost", "127.0.0.1", "127.3.4.5", "::1", "[::1]"):
        assert security.is_loopback(host), host
    for host in ("0.0.0.0", "192.168.1.2", "::", "attacker.example", "localhost.attacker.example", ""):
        assert not security.is_loopback(host), host
    assert security.host_allowed("127.0.0.1:8000", True) and security.host_allowed("[::1]:8000", True)
    assert security.host_allowed("localhost", True)
    assert not security.host_allowed("attacker.example:8000", True) and not security.host_allowed(None, True)
    assert security.host_allowed("attacker.example:8000", False)


def test_importing_the_server_modules_does_not_load_the_command_line():
    code = ("import sys, nst_jax.serve.batcher, nst_jax.serve.app; "
            "assert 'nst_jax.serve.cli' not in sys.modules, 'cli loaded'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ----------------------------------------------------------------------------------------------------------
# The server over real sockets


@pytest.fixture(scope="module")
def server(model, library):
    """One in-process server for the socket tests (size 32, batches of up to 4, tiny send buffers)."""
    config = ServerConfig(sizes=(SIZE,), size=SIZE, style_size=SIZE, max_batch=4, send_buffer=4096,
                          heartbeat=60.0, stats_interval=0.2)
    srv = LiveServer(model, library, config)
    srv.batcher.warm()
    with ServerThread(srv, port=0) as st:
        yield st


def ws_url(st: ServerThread) -> str:
    return st.url.replace("http://", "ws://") + "ws"


async def recv_json(ws, kind: str, timeout: float = 30.0) -> dict:
    """The next JSON message of this type (binary frames in between are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await ws.receive(timeout=max(deadline - time.monotonic(), 0.01))
        if msg.type == aiohttp.WSMsgType.TEXT:
            obj = json.loads(msg.data)
            if obj["type"] == kind:
                return obj
        elif msg.type != aiohttp.WSMsgType.BINARY:
            raise AssertionError(f"socket closed while waiting for {kind}: {msg}")


async def recv_result(ws, timeout: float = 30.0) -> tuple[int, int, np.ndarray]:
    """(seq, version, image) of the next stylized frame; errors fail the test."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await ws.receive(timeout=max(deadline - time.monotonic(), 0.01))
        if msg.type == aiohttp.WSMsgType.BINARY:
            kind, seq, version, data = protocol.unpack_result(msg.data)
            assert kind == protocol.RESULT
            return seq, version, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        if msg.type == aiohttp.WSMsgType.TEXT:
            obj = json.loads(msg.data)
            assert obj["type"] != "error", obj
            continue
        raise AssertionError(f"socket closed while waiting for a frame: {msg}")


class Streamer:
    """A well-behaved client: sends a frame, waits for its result, repeats; counts results."""

    def __init__(self, session, url: str, seed: int):
        self.session, self.url, self.seed = session, url, seed
        self.results = 0
        self.errors: list[str] = []
        self.frame = jpeg(frame(seed))
        self._task = None
        self.ws = None

    async def start(self) -> Streamer:
        self.ws = await self.session.ws_connect(self.url)
        await recv_json(self.ws, "hello")
        self._task = asyncio.ensure_future(self._run())
        return self

    async def _run(self) -> None:
        seq = 0
        while True:
            seq += 1
            await self.ws.send_bytes(protocol.pack_frame(seq, self.frame))
            while True:
                msg = await self.ws.receive()
                if msg.type == aiohttp.WSMsgType.BINARY:
                    self.results += 1
                    break
                if msg.type == aiohttp.WSMsgType.TEXT:
                    obj = json.loads(msg.data)
                    if obj["type"] == "error":
                        self.errors.append(obj["message"])
                        break
                    continue
                return

    async def wait_for(self, n: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.results < n:
            assert time.monotonic() < deadline, f"client {self.seed}: {self.results}/{n} results"
            assert not self._task.done(), "client stopped"
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.ws.close()


def test_page_static_files_and_headers(server):
    async def main():
        async with aiohttp.ClientSession() as s:
            async with s.get(server.url) as r:
                assert r.status == 200 and "text/html" in r.headers["Content-Type"]
                assert "script-src 'self'" in r.headers["Content-Security-Policy"]
                assert '<script src="/static/app.js"' in await r.text()
            for name in ("app.js", "style.css"):
                async with s.get(server.url + "static/" + name) as r:
                    assert r.status == 200 and len(await r.read()) > 500
            async with s.get(server.url + "static/../app.py") as r:
                assert r.status == 404
            async with s.get(server.url + "styles/s0.jpg") as r:
                assert r.status == 200 and (await r.read())[:2] == b"\xff\xd8"
            async with s.get(server.url + "styles/nope.jpg") as r:
                assert r.status == 404
            # DNS rebinding: a page served from another name that resolves here is refused.
            async with s.get(server.url, headers={"Host": "attacker.example:80"}) as r:
                assert r.status == 403

    asyncio.run(main())


def test_websocket_origin_is_checked(server):
    port = server.url.rsplit(":", 1)[1].strip("/")

    async def main():
        async with aiohttp.ClientSession() as s:
            for bad in ("http://attacker.example", f"http://127.0.0.1:{int(port) + 1}", "null",
                        f"https://127.0.0.1:{port}"):
                with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                    await s.ws_connect(ws_url(server), headers={"Origin": bad})
                assert e.value.status == 403
            ws = await s.ws_connect(ws_url(server), headers={"Origin": f"http://127.0.0.1:{port}"})
            hello = await recv_json(ws, "hello")
            assert hello["source"] == "browser" and hello["sizes"] == [SIZE]
            assert [st["name"] for st in hello["styles"]] == ["stripes", "tiles", "rings", "clouds"]
            await ws.close()

    asyncio.run(main())


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bad_messages_get_errors_and_everyone_keeps_being_served(server, huge_jpeg):
    truncated = jpeg((np.random.default_rng(1).random((SIZE, SIZE, 3)) * 255).astype(np.uint8))[:200]
    bad_messages = [
        ("garbage", b"\x07\x00garbage", "unknown binary message kind"),
        ("short", b"\x01", "too short"),
        ("not JPEG", protocol.pack_frame(1, b"\x00\x01garbage" * 50), "not a JPEG"),
        ("truncated JPEG", protocol.pack_frame(2, truncated), "frame"),
        ("10000x10000", protocol.pack_frame(3, huge_jpeg), "10000x10000"),
        ("non-image upload", protocol.pack_upload(4, "notes.txt", b"just some text, not an image"), "not a"),
        ("huge upload", protocol.pack_upload(5, "big.jpg", huge_jpeg), "10000x10000"),
        ("text", "this is not json", "not JSON"),
        ("nested", "[" * 60000, "not JSON"),
        ("too long", json.dumps({"type": "settings", "pad": "x" * 70000}), "exceeds"),
        ("json", json.dumps({"type": "settings", "styles": [["s999", 1]]}), "unknown style"),
        ("json kind", json.dumps({"type": "launch"}), "unknown control message"),
    ]

    async def main():
        async with aiohttp.ClientSession() as s:
            good = await Streamer(s, ws_url(server), 0).start()
            await good.wait_for(2)
            bad = await s.ws_connect(ws_url(server))
            await recv_json(bad, "hello")
            for label, payload, expect in bad_messages:
                before = good.results
                if isinstance(payload, str):
                    await bad.send_str(payload)
                else:
                    await bad.send_bytes(payload)
                err = await recv_json(bad, "error")
                assert expect in err["message"], (label, err)
                await good.wait_for(before + 2)
            # The misbehaving socket itself is still served.
            await bad.send_bytes(protocol.pack_frame(99, jpeg(frame(3))))
            seq, _, img = await recv_result(bad)
            assert seq == 99 and img.shape == (SIZE, SIZE, 3)
            assert good.errors == []
            await good.stop()
            await bad.close()

    asyncio.run(main())


def test_upload_adds_a_style_for_everyone_and_settings_change_the_output(server):
    style_png = io.BytesIO()
    pixels = (np.random.default_rng(5).random((50, 70, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(style_png, "PNG")
    content = jpeg(frame(7))

    async def main():
        async with aiohttp.ClientSession() as s:
            a = await s.ws_connect(ws_url(server))
            b = await s.ws_connect(ws_url(server))
            hello = await recv_json(a, "hello")
            await recv_json(b, "hello")
            first = hello["styles"][0]["id"]
            await a.send_bytes(protocol.pack_frame(1, content))
            _, _, out_first = await recv_result(a)

            await a.send_bytes(protocol.pack_upload(7, "my style.png", style_png.getvalue()))
            up = await recv_json(a, "uploaded")
            assert up["seq"] == 7 and up["style"]["name"] == "my style" and up["style"]["origin"] == "upload"
            listed = await recv_json(b, "styles")  # the other page's gallery grows too
            assert up["style"]["id"] in [st["id"] for st in listed["styles"]]
            # The same image again is recognised, not added twice.
            await a.send_bytes(protocol.pack_upload(8, "again.png", style_png.getvalue()))
            assert (await recv_json(a, "uploaded"))["style"]["id"] == up["style"]["id"]

            async def out_with(**settings):
                await a.send_str(json.dumps({"type": "settings", **settings}))
                await a.send_bytes(protocol.pack_frame(settings["version"], content))
                seq, version, img = await recv_result(a)
                assert (seq, version) == (settings["version"], settings["version"])
                return img.astype(np.float32) / 255

            out_up = await out_with(version=2, styles=[[up["style"]["id"], 1]])
            out_blend = await out_with(version=3, styles=[[first, 1], [up["style"]["id"], 1]])
            out_alpha0 = await out_with(version=4, styles=[[first, 1]], alpha=0.0)
            out_lum = await out_with(version=5, alpha=1.0, preserve_color="luminance")
            out_back = await out_with(version=6, preserve_color="none")
            first_f = out_first.astype(np.float32) / 255
            assert np.abs(out_up - first_f).mean() > 0.01
            assert np.abs(out_blend - first_f).mean() > 0.005 and np.abs(out_blend - out_up).mean() > 0.005
            assert np.abs(out_alpha0 - first_f).mean() > 0.01
            assert np.abs(out_lum - first_f).mean() > 0.01
            # Deterministic: the same settings and frame give the same output.
            np.testing.assert_allclose(out_back, first_f, atol=2 / 255)
            await a.close()
            await b.close()

    asyncio.run(main())


@pytest.mark.slow
def test_eight_clients_are_served_and_a_stalled_client_stops_no_one(server):
    host, port = "127.0.0.1", int(server.url.rsplit(":", 1)[1].strip("/"))
    big = jpeg((np.random.default_rng(9).random((SIZE, SIZE, 3)) * 255).astype(np.uint8), quality=100)

    def stalled_state(cid):
        return next((c for c in server.server.snapshot()["clients"] if c["id"] == cid), None)

    async def main():
        async with aiohttp.ClientSession() as s:
            clients = [await Streamer(s, ws_url(server), i).start() for i in range(8)]
            await asyncio.gather(*(c.wait_for(3) for c in clients))

            known = {c["id"] for c in server.call(server.server.snapshot)["clients"]}
            stalled = await asyncio.get_running_loop().run_in_executor(None, StalledClient, host, port)
            cid = None
            deadline = time.monotonic() + 60
            seq = 0
            # The stalled client sends frames and never reads, until its socket backs up on the server.
            while True:
                assert time.monotonic() < deadline, "the stalled client's socket never backed up"
                seq += 1
                stalled.send_binary(protocol.pack_frame(seq, big))
                await asyncio.sleep(0.02)
                if cid is None:
                    ids = {c["id"] for c in server.call(server.server.snapshot)["clients"]} - known
                    cid = next(iter(ids), None)
                    continue
                st = server.call(lambda cid=cid: stalled_state(cid))
                if st is not None and st["blocked_s"] > 0.5:
                    break
            before = [c.results for c in clients]
            await asyncio.gather(*(c.wait_for(b + 5) for c, b in zip(clients, before, strict=True)))
            st = server.call(lambda: stalled_state(cid))
            assert st["blocked_s"] > 0.5  # still stuck, while everyone else got 5 more frames
            snap = server.call(server.server.snapshot)
            assert max(snap["batch_sizes"]) > 1  # frames from several clients shared model calls
            assert all(c.errors == [] for c in clients)
            stalled.close()
            for c in clients:
                await c.stop()

    asyncio.run(main())


@pytest.mark.slow
def test_tls_and_client_limit(model, library, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (needed to make a test certificate)")
    import ssl

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    srv = LiveServer(model, library, ServerConfig(sizes=(SIZE,), size=SIZE, style_size=SIZE, max_batch=1,
                                                  max_clients=1))
    with ServerThread(srv, port=0, ssl_context=ctx) as st:
        assert st.url.startswith("https://")
        port = st.url.rsplit(":", 1)[1].strip("/")

        async def main():
            async with aiohttp.ClientSession() as s:
                url = st.url.replace("https://", "wss://") + "ws"
                with pytest.raises(aiohttp.WSServerHandshakeError):  # http origin on an https page
                    await s.ws_connect(url, ssl=False, headers={"Origin": f"http://127.0.0.1:{port}"})
                ws = await s.ws_connect(url, ssl=False, headers={"Origin": f"https://127.0.0.1:{port}"})
                await recv_json(ws, "hello")
                await ws.send_bytes(protocol.pack_frame(1, jpeg(frame(1))))
                seq, _, img = await recv_result(ws)
                assert seq == 1 and img.shape == (SIZE, SIZE, 3)
                with pytest.raises(aiohttp.WSServerHandshakeError) as e:  # max_clients=1
                    await s.ws_connect(url, ssl=False)
                assert e.value.status == 503
                await ws.close()

        asyncio.run(main())


class TableModel:
    """A CIN-like model for the tests: AdaIN with a fixed table of three styles' statistics, a style being a row
    of weights over the table (its condition {"weights": (N, S)}, as CIN's)."""

    caps = Caps(style_images=False, style_table=True, alpha=True, masks=False, color_modes=("luminance",))
    style_names = ("stripes", "tiles", "rings")
    num_styles = 3

    def __init__(self, stylizer):
        self.stylizer = stylizer
        stats = [stylizer.style_stats(img) for _, img in builtin_patterns(SIZE)[:3]]
        self.mean = np.concatenate([np.asarray(s.mean).reshape(1, -1) for s in stats])
        self.std = np.concatenate([np.asarray(s.std).reshape(1, -1) for s in stats])

    def condition(self, style):
        return {"weights": np.eye(3, dtype=np.float32)[[style]]}

    def blend(self, conditions, weights):
        stacked = jax.tree.map(lambda *xs: np.stack(xs), *conditions)
        return models.blend_conditions(stacked, normalise_weights(weights, len(conditions)))

    def stylize_conditions(self, content, condition, alpha):
        w = np.asarray(condition["weights"], np.float32)
        shape = (w.shape[0], 1, 1, -1)
        return self.stylizer.stylize_stats(content, (w @ self.mean).reshape(shape), (w @ self.std).reshape(shape),
                                           alpha)


def test_stack_conditions_pads_any_pytree_and_the_batcher_keeps_each_frames_condition():
    conds = [{"vector": np.full((1, 100), i, np.float32), "inner": {"gain": np.full((1, 2, 3), 10 * i, np.int32)}}
             for i in (1, 2, 3)]
    stacked = stack_conditions(conds, 4)
    assert stacked["vector"].shape == (4, 100) and stacked["inner"]["gain"].shape == (4, 2, 3)
    assert stacked["inner"]["gain"].dtype == np.int32
    assert stacked["vector"][:, 0].tolist() == [1, 2, 3, 1]  # padded with the first
    with pytest.raises(ValueError):
        stack_conditions([conds[0], {"vector": conds[1]["vector"]}], 2)  # another structure
    with pytest.raises(ValueError, match="must all be"):
        stack_conditions([{"vector": np.zeros((100,), np.float32)}], 2)  # no leading style axis

    class VectorModel:  # an "arbitrary"-like model: the output is the content times its vector's mean
        caps = Caps(style_images=True)
        calls = []

        def stylize_conditions(self, content, condition, alpha):
            self.calls.append(jax.tree.map(np.shape, condition))
            return content * condition["vector"].mean(axis=1)[:, None, None, None]

    vm = VectorModel()
    batcher = Batcher(vm, [8], max_batch=4)
    content = np.full((8, 8, 3), 0.1, np.float32)
    out = batcher._call([Job(content, c, 1.0, lambda o: None) for c in conds])
    np.testing.assert_allclose(out[:, 0, 0, 0], [0.1, 0.2, 0.3], rtol=1e-6)
    assert vm.calls == [{"vector": (4, 100), "inner": {"gain": (4, 2, 3)}}]


def test_a_table_model_serves_its_own_styles_and_takes_no_uploads(model, server):
    table = TableModel(model)
    library = StyleLibrary()
    fill_table(library, table, SIZE)
    srv = LiveServer(table, library, ServerConfig(sizes=(SIZE,), size=SIZE, style_size=SIZE, max_batch=1))
    srv.batcher.warm()
    content = frame(11)
    decoded = codec.decode_frame(jpeg(content), SIZE)

    def expected(weights):  # what the server should send: the model's frame, JPEG-encoded as the server does
        cond = {"weights": np.asarray([weights], np.float32)}
        out = np.asarray(table.stylize_conditions(decoded[None], cond, np.ones((1,), np.float32)))[0]
        sent = codec.encode_jpeg(postprocess(out, decoded, "none"), srv.config.jpeg_quality)
        return np.asarray(Image.open(io.BytesIO(sent)).convert("RGB"), np.float32) / 255

    with ServerThread(srv, port=0) as st:
        async def main():
            async with aiohttp.ClientSession() as s:
                adain = await s.ws_connect(ws_url(server))
                caps = (await recv_json(adain, "hello"))["caps"]
                assert caps["style_images"] and not caps["style_table"]
                await adain.close()

                ws = await s.ws_connect(ws_url(st))
                hello = await recv_json(ws, "hello")
                assert hello["caps"]["style_table"] and not hello["caps"]["style_images"]
                assert [(x["name"], x["origin"]) for x in hello["styles"]] == [
                    ("stripes", "table"), ("tiles", "table"), ("rings", "table")]
                ids = [x["id"] for x in hello["styles"]]
                async with s.get(st.url + f"styles/{ids[2]}.jpg") as r:
                    assert r.status == 200 and (await r.read())[:2] == b"\xff\xd8"
                await ws.send_bytes(protocol.pack_upload(1, "mine.png", jpeg(frame(12))))
                assert "its own table" in (await recv_json(ws, "error"))["message"]

                await ws.send_bytes(protocol.pack_frame(1, jpeg(content)))
                _, _, first = await recv_result(ws)
                await ws.send_str(json.dumps({"type": "settings", "version": 2, "styles": [[ids[0], 1], [ids[1], 3]]}))
                await ws.send_bytes(protocol.pack_frame(2, jpeg(content)))
                seq, version, mixed = await recv_result(ws)
                assert (seq, version) == (2, 2)
                first, mixed = first.astype(np.float32) / 255, mixed.astype(np.float32) / 255
                assert np.abs(first - expected([1, 0, 0])).mean() < 1 / 255
                assert np.abs(mixed - expected([0.25, 0.75, 0])).mean() < 1 / 255
                assert np.abs(mixed - first).mean() > 0.05
                await ws.close()

        asyncio.run(main())


# ----------------------------------------------------------------------------------------------------------
# Command line


@pytest.mark.parametrize("argv, message", [
    (["--bogus"], "unrecognized arguments"),
    (["--size", "33"], "--size: 33 must be a multiple of 8"),
    (["--sizes", "64,x"], "--sizes"),
    (["--styles", "/no/such/dir"], "--styles: not a directory"),
    (["--vgg", "/no/such/vgg.pth"], "--vgg: no such file"),
    (["--random-weights", "--vgg", "adain"], "--random-weights cannot be combined"),
    (["--record", "out.mp4"], "--record writes the server-side stream"),
    (["--video", "/no/such.avi"], "--video: no such file"),
    (["--certfile", "c.pem"], "--certfile and --keyfile go together"),
    (["--camera", "0", "--video", "x.avi"], "not allowed with argument"),
    (["--port", "70000"], "--port: 70000 is not a TCP port"),
    (["--max-batch", "0"], "--max-batch: 0 must be between 1 and 64"),
])
def test_cli_errors_are_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        sys.exit(serve_main(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


@pytest.mark.slow
def test_cli_serves_a_video_file_records_it_and_stops_on_ctrl_c(tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (48, 40))
    for i in range(10):
        writer.write(np.full((40, 48, 3), 20 * i, np.uint8))
    writer.release()
    record = tmp_path / "show.avi"
    env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1", JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "serve.py"), "--random-weights", "--port", "0", "--size", "32",
         "--sizes", "32", "--style-size", "32", "--max-batch", "1", "--video", str(video),
         "--record", str(record)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def read_stdout() -> None:
        for x in proc.stdout:
            lines.put(x)
        lines.put(None)  # the server exited

    threading.Thread(target=read_stdout, daemon=True).start()
    try:
        line = ""
        while "live: http" not in line:
            try:
                line = lines.get(timeout=120)
            except queue.Empty:
                raise AssertionError("serve.py did not print its URL within 120 s") from None
            if line is None:
                proc.wait(timeout=10)
                raise AssertionError(f"serve.py exited with {proc.returncode}: {proc.stderr.read()}")
        url = line.split()[2]
        assert url.startswith("http://127.0.0.1:") and "this machine only" in line

        async def main():
            async with aiohttp.ClientSession() as s:
                ws = await s.ws_connect(url.replace("http://", "ws://") + "ws")
                hello = await recv_json(ws, "hello")
                assert hello["source"] == "server" and "clip.avi" in hello["source_label"]
                # The server streams its own source: results arrive without sending frames...
                for _ in range(3):
                    _, _, img = await recv_result(ws)
                    assert img.shape == (32, 32, 3)
                # ...frames from the page are refused, politely.
                await ws.send_bytes(protocol.pack_frame(1, jpeg(frame(1))))
                assert "own camera" in (await recv_json(ws, "error"))["message"]
                # Changing the shared settings reaches every page with a new version.
                await ws.send_str(json.dumps({"type": "settings", "alpha": 0.5, "side_by_side": True}))
                changed = await recv_json(ws, "settings")
                assert changed["settings"]["alpha"] == 0.5
                version = changed["settings"]["version"]
                deadline = time.monotonic() + 30
                kinds = set()
                while kinds != {protocol.RESULT, protocol.SOURCE}:  # side by side: camera frames come too
                    assert time.monotonic() < deadline
                    msg = await ws.receive(timeout=30)
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        kind, _, v, _ = protocol.unpack_result(msg.data)
                        if v == version:
                            kinds.add(kind)
                # Ctrl-C with a page connected: the page is told the server is going away.
                proc.send_signal(signal.SIGINT)
                while True:
                    msg = await ws.receive(timeout=30)
                    if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                        break
                assert ws.close_code == 1001

        asyncio.run(main())
        proc.wait(timeout=30)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "stopped" in err and "Traceback" not in err
    cap = cv2.VideoCapture(str(record))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n >= 1
    assert not list(tmp_path.glob(".show.*"))  # the temporary file was renamed into place
