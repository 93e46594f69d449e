"""The live page in a real browser: Debian's Chromium, driven by Playwright, with a y4m file as its camera.

Runs wherever /usr/bin/chromium exists (CI installs it with apt; never `playwright install`). The page keeps
its strict Content-Security-Policy, so the test polls with `page.evaluate` rather than `wait_for_function`
(which needs eval).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import shutil
import threading
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import skimage.data as skdata
from PIL import Image
from playwright import sync_api

from nst_jax.serve import protocol
from nst_jax.serve.app import LiveServer, ServerConfig
from nst_jax.serve.styles import StyleLibrary, fill_library, load_gallery
from nst_jax.serve.testing import ServerThread, jpeg, write_y4m

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason="needs Debian's chromium at /usr/bin/chromium "
                              "(apt-get install chromium; .ci/run does)"),
]

SIZES = (32, 64)


def wait_until(page, expr: str, timeout: float = 60.0):
    """Poll a JavaScript expression until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(expr)
        if value:
            return value
        if time.monotonic() > deadline:
            state = page.evaluate("JSON.stringify({f: nst.framesReceived, v: nst.lastVersion, e: nst.errors, "
                                  "c: nst.cameraError, s: nst.settings})")
            raise AssertionError(f"timed out waiting for {expr}; page state {state}")
        time.sleep(0.05)


def canvas(page, cid: str) -> np.ndarray:
    """A canvas's pixels as (H, W, 3) float32 in [0, 1]."""
    url = page.evaluate(f"document.getElementById({cid!r}).toDataURL('image/png')")
    data = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32) / np.float32(255.0)


def settle(page, frames: int = 3) -> np.ndarray:
    """Wait until the page shows frames made with its current settings, then return the output canvas."""
    version = page.evaluate("nst.settings.version")
    wait_until(page, f"nst.lastVersion >= {version}")
    n = page.evaluate("nst.framesReceived")
    wait_until(page, f"nst.framesReceived >= {n + frames}")
    return canvas(page, "output")


def diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


class RawClient:
    """An aiohttp WebSocket client on its own event loop thread, so the browser can be driven meanwhile."""

    def __init__(self, url: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.session = self.ws = None
        self.run(self._open(url))

    def run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _open(self, url: str) -> None:
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(url)
        await self._next("hello")

    async def _next(self, kind: str) -> dict:
        while True:
            msg = await self.ws.receive(timeout=30)
            if msg.type == aiohttp.WSMsgType.TEXT:
                obj = json.loads(msg.data)
                if obj["type"] == kind:
                    return obj
            elif msg.type != aiohttp.WSMsgType.BINARY:
                raise AssertionError(f"raw client's socket closed: {msg}")

    def send_and_get_error(self, payload: bytes) -> str:
        async def go() -> str:
            await self.ws.send_bytes(payload)
            return (await self._next("error"))["message"]

        return self.run(go())

    def close(self) -> None:
        async def go() -> None:
            await self.ws.close()
            await self.session.close()

        self.run(go())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def live(tmp_path_factory, random_model):
    """A server with a gallery of three real photos as styles, at 32 and 64 px, random weights."""
    styles = tmp_path_factory.mktemp("styles")
    for name in ("coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(skdata, name)()).save(styles / f"{name}.jpg")
    model = random_model
    library = StyleLibrary()
    fill_library(library, load_gallery(styles, 32), model.style_stats)
    config = ServerConfig(sizes=SIZES, size=64, style_size=32, max_batch=2, stats_interval=0.5)
    server = LiveServer(model, library, config)
    server.batcher.warm()
    with ServerThread(server, port=0) as st:
        yield st


@pytest.fixture(scope="module")
def camera(tmp_path_factory) -> Path:
    """The fake camera: one still frame (so stylized frames are comparable across settings)."""
    img = skdata.astronaut()[::4, ::4][:96, :128]
    return write_y4m(tmp_path_factory.mktemp("camera") / "astronaut.y4m", [img])


@contextlib.contextmanager
def browser_page(url: str, camera: Path):
    """Chromium on `url` with the fake camera; on exit, asserts the page logged no script or CSP errors."""
    with browser_pages(url, camera, 1) as pages:
        yield pages[0]


@contextlib.contextmanager
def browser_pages(url: str, camera: Path, n: int):
    """`n` pages (each its own browser context) on `url` in one Chromium with the fake camera."""
    args = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={camera}", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", "--disable-quic"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            problems: list[str] = []
            pages = []
            for _ in range(n):
                context = browser.new_context(viewport={"width": 1200, "height": 760}, accept_downloads=True)
                pg = context.new_page()
                pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
                pg.on("console", lambda m: m.type == "error" and problems.append(f"console error: {m.text}"))
                pg.goto(url)
                pages.append(pg)
            yield pages
            assert problems == []  # no script errors, no CSP violations, no failed requests
        finally:
            browser.close()


@pytest.fixture
def page(live, camera):
    with browser_page(live.url, camera) as pg:
        yield pg


def save_artifact(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path))
    if os.environ.get("NST_JAX_ARTIFACTS"):
        dest = Path(os.environ["NST_JAX_ARTIFACTS"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest / name)
    return path


def test_page_stylizes_the_camera_and_every_control_works(page, live, tmp_path):
    wait_until(page, "nst.framesReceived >= 3")
    assert page.evaluate("nst.source") == "browser"
    assert page.locator("#gallery .style").count() == 3
    out_a = settle(page)
    frame_in = canvas(page, "input")
    assert out_a.shape == frame_in.shape == (64, 64, 3)
    assert frame_in.std() > 0.05  # the fake camera's picture arrived
    assert diff(out_a, frame_in) > 0.05  # and what comes back is not the picture

    # Meters show real numbers.
    wait_until(page, "Number(document.getElementById('fps').textContent) > 0")
    assert float(page.inner_text("#latency")) > 0
    wait_until(page, "document.getElementById('server').textContent.includes('fps')")

    # Another style changes the frames.
    ids = page.evaluate("nst.styles.map(s => s.id)")
    page.click(f"#gallery .style[data-id='{ids[1]}']")
    out_b = settle(page)
    assert diff(out_b, out_a) > 0.01

    # Blend: add style A to B; the sliders move the output from one style to the other.
    page.click(f"#gallery .style[data-id='{ids[0]}'] .add")
    assert page.locator("#blend input.weight").count() == 2
    slider_a = page.locator(f"#blend input.weight[data-id='{ids[0]}']")
    slider_b = page.locator(f"#blend input.weight[data-id='{ids[1]}']")
    slider_a.fill("100")
    slider_b.fill("0")
    only_a = settle(page)
    slider_a.fill("0")
    slider_b.fill("100")
    only_b = settle(page)
    slider_a.fill("50")
    slider_b.fill("50")
    half = settle(page)
    assert diff(only_a, out_a) < 0.01 and diff(only_b, out_b) < 0.01
    assert diff(half, only_a) > 0.005 and diff(half, only_b) > 0.005
    assert page.evaluate("nst.settings.styles.length") == 2

    # Alpha 0 reconstructs the content instead of applying the style.
    page.locator("#alpha").fill("0")
    no_style = settle(page)
    assert diff(no_style, half) > 0.01
    page.locator("#alpha").fill("100")

    # Colour preservation.
    page.select_option("#preserve", "luminance")
    kept = settle(page)
    assert diff(kept, half) > 0.005
    page.select_option("#preserve", "none")

    # The strength control (static/strength.js): a radial map keeps the content in the middle (alpha 0 there).
    page.select_option("#strength-kind", "radial")
    assert page.locator("#strength-params").is_visible()
    page.check("#strength-invert")  # the style outside, the content inside
    mapped = settle(page)
    assert page.evaluate("nst.settings.strength.kind") == "radial"
    mid = slice(24, 40)
    assert diff(mapped[mid, mid], no_style[mid, mid]) < diff(half[mid, mid], no_style[mid, mid])
    assert diff(mapped[:8, :8], half[:8, :8]) < diff(mapped[:8, :8], no_style[:8, :8])
    page.select_option("#strength-kind", "off")
    assert diff(settle(page), half) < 0.01
    assert page.evaluate("nst.settings.strength") is None

    # Output size.
    page.select_option("#size", "32")
    small = settle(page)
    assert small.shape == (32, 32, 3)
    page.select_option("#size", "64")
    settle(page)

    # Upload a style image through the page's file input.
    style = tmp_path / "astro-style.png"
    Image.fromarray(skdata.astronaut()[200:328, 200:328]).save(style)
    page.set_input_files("#upload", str(style))
    wait_until(page, "nst.uploads === 1")
    assert page.locator("#gallery .style").count() == 4
    uploaded = settle(page)
    assert page.evaluate("nst.settings.styles.length") == 1
    assert diff(uploaded, half) > 0.01

    # Side by side shows the camera next to the output.
    assert not page.locator("#input-fig").is_visible()
    page.check("#sbs")
    assert page.locator("#input-fig").is_visible()
    settle(page)

    # Snapshot downloads what is shown as a PNG.
    with page.expect_download() as dl:
        page.click("#snapshot")
    snap = tmp_path / "snapshot.png"
    dl.value.save_as(snap)
    assert dl.value.suggested_filename.endswith(".png")
    with Image.open(snap) as im:
        assert im.format == "PNG" and im.size == (128, 64)  # camera | stylized

    shot = save_artifact(page, tmp_path, "serve_browser.png")
    assert shot.stat().st_size > 10_000
    assert page.evaluate("nst.errors") == []


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bad_clients_get_errors_while_the_browser_keeps_receiving(page, live):
    wait_until(page, "nst.framesReceived >= 3")
    raw = RawClient(live.url.replace("http://", "ws://") + "ws")
    try:
        truncated = jpeg((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))[:300]
        huge = io.BytesIO()
        Image.new("L", (10000, 10000), 90).save(huge, "JPEG", quality=50)
        cases = [
            (b"\xffgarbage\x00\x01", "unknown binary message kind"),
            (protocol.pack_frame(1, truncated), "frame"),
            (protocol.pack_frame(2, huge.getvalue()), "10000x10000"),
            (protocol.pack_upload(3, "readme.txt", b"plain text is not a style"), "not a"),
        ]
        for payload, expected in cases:
            n = page.evaluate("nst.framesReceived")
            message = raw.send_and_get_error(payload)
            assert expected in message
            wait_until(page, f"nst.framesReceived >= {n + 3}")  # the browser never stopped
        assert page.evaluate("nst.errors") == []
        assert page.evaluate("nst.connected")
    finally:
        raw.close()


@pytest.fixture(scope="module")
def live_arbitrary(tmp_path_factory, magenta_arbitrary):
    """`serve.py --model magenta-arbitrary`: Magenta's real arbitrary network, a gallery of two photos."""
    styles = tmp_path_factory.mktemp("arbitrary-styles")
    for name in ("coffee", "rocket"):
        Image.fromarray(getattr(skdata, name)()).save(styles / f"{name}.jpg")
    model = magenta_arbitrary
    library = StyleLibrary()
    fill_library(library, load_gallery(styles, 64), model.condition)
    config = ServerConfig(sizes=(64,), size=64, style_size=64, max_batch=2, stats_interval=0.5)
    server = LiveServer(model, library, config)
    server.batcher.warm()
    with ServerThread(server, port=0) as st:
        yield st


def test_arbitrary_network_stylizes_the_camera_with_gallery_blends_and_an_upload(live_arbitrary, camera, tmp_path):
    with browser_page(live_arbitrary.url, camera) as page:
        wait_until(page, "nst.framesReceived >= 3")
        assert page.evaluate("nst.caps.style_images") is True
        assert page.locator("#gallery .style").count() == 2
        first = settle(page)
        frame_in = canvas(page, "input")
        assert first.shape == frame_in.shape == (64, 64, 3)
        assert diff(first, frame_in) > 0.05  # stylized, not the camera's picture

        ids = page.evaluate("nst.styles.map(s => s.id)")
        page.click(f"#gallery .style[data-id='{ids[1]}']")
        second = settle(page)
        assert diff(second, first) > 0.01

        # A blend of the two style vectors lies between them.
        page.click(f"#gallery .style[data-id='{ids[0]}'] .add")
        page.locator(f"#blend input.weight[data-id='{ids[0]}']").fill("50")
        page.locator(f"#blend input.weight[data-id='{ids[1]}']").fill("50")
        half = settle(page)
        assert diff(half, first) > 0.005 and diff(half, second) > 0.005

        # An uploaded painting gets one predictor pass and becomes the style.
        style = tmp_path / "painting.png"
        Image.fromarray(skdata.immunohistochemistry()[:256, :256]).save(style)
        page.set_input_files("#upload", str(style))
        wait_until(page, "nst.uploads === 1")
        assert page.locator("#gallery .style").count() == 3
        uploaded = settle(page)
        assert page.evaluate("nst.settings.styles.length") == 1
        assert diff(uploaded, first) > 0.01 and diff(uploaded, second) > 0.01
        assert page.evaluate("nst.errors") == []


# ----------------------------------------------------------------------------------------------------------------
# `python serve.py` out of the box, and several models on one page


def test_serve_py_with_no_flags_runs_the_default_model_in_the_browser(camera, tmp_path, monkeypatch):
    """A fresh offline machine (empty weights cache): `python serve.py` picks magenta-arbitrary and says why."""
    import queue
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, NST_JAX_HOME=str(tmp_path / "home"), NST_JAX_OFFLINE="1")
    # --port 0 only because other servers may hold port 8000 on a test machine
    proc = subprocess.Popen([sys.executable, str(root / "serve.py"), "--port", "0"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True).start()
    try:
        said = []
        while not said or "live: http" not in said[-1]:
            line = lines.get(timeout=300)
            if line is None:
                proc.wait(timeout=10)
                raise AssertionError(f"serve.py exited with {proc.returncode}: {proc.stderr.read()}")
            said.append(line)
        assert said[0].startswith("model: magenta-arbitrary (no accelerator") and said[0].count("\n") == 1
        url = said[-1].split()[2]
        with browser_page(url, camera) as page:
            wait_until(page, "nst.framesReceived >= 3", timeout=120)
            assert page.inner_text("#model-name") == "magenta-arbitrary"
            assert not page.locator("#model").is_visible()  # one model: no picker
            out = settle(page)
            assert out.shape == (256, 256, 3) and diff(out, canvas(page, "input")) > 0.05
            assert page.evaluate("nst.errors") == []
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_model_picker_switches_models_while_another_page_keeps_its_own(magenta_arbitrary, camera):
    from nst_jax.models.open import open_model
    from nst_jax.serve.styles import fill_table
    from nst_jax.stylize import Stylizer

    library = StyleLibrary()
    fill_library(library, load_gallery(None, 64)[:2], magenta_arbitrary.condition)

    def loader(name, lib):
        model = Stylizer(open_model(name))
        fill_table(lib, model, 64)
        return model

    config = ServerConfig(sizes=(64,), size=64, style_size=64, max_batch=2, stats_interval=0.5)
    server = LiveServer(magenta_arbitrary, library, config, name="magenta-arbitrary", more=("multistyle26",),
                        loader=loader)
    server.batcher.warm()
    with ServerThread(server, port=0) as st, browser_pages(st.url, camera, 2) as (page, other):
        for pg in (page, other):
            wait_until(pg, "nst.framesReceived >= 3")
            assert pg.inner_text("#model-name") == "magenta-arbitrary"
            assert pg.locator("#gallery .style").count() == 2 and pg.locator("#upload-label").is_visible()
        before = settle(page)
        page.select_option("#model", "multistyle26")
        n = page.evaluate("nst.framesReceived")
        wait_until(page, "document.getElementById('model-state').textContent.includes('loading')")
        wait_until(page, f"nst.framesReceived >= {n + 2}")  # the old model's frames keep coming meanwhile
        wait_until(page, "nst.model === 'multistyle26'", timeout=240)
        assert page.inner_text("#model-name") == "multistyle26"
        assert page.locator("#gallery .style").count() == 26  # its own table is the gallery
        assert not page.locator("#upload-label").is_visible() and not page.locator("#model-state").is_visible()
        after = settle(page)
        assert diff(after, before) > 0.02
        # a blend mixes table rows
        ids = page.evaluate("nst.styles.map(s => s.id)")
        page.click(f"#gallery .style[data-id='{ids[5]}'] .add")
        assert diff(settle(page), after) > 0.005
        # the other page stayed on its model and was served all along
        m = other.evaluate("nst.framesReceived")
        wait_until(other, f"nst.framesReceived >= {m + 3}")
        assert other.evaluate("nst.model") == "magenta-arbitrary"
        assert other.locator("#gallery .style").count() == 2
        assert page.evaluate("nst.errors") == [] and other.evaluate("nst.errors") == []
