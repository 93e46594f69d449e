"""The models a page can pick from (`serve.py --model magenta-arbitrary,multistyle26,adain`).

The first model is loaded before the server starts; every other one on the first page that picks it, in a
loader thread (its pages see a "loading" state meanwhile, and everyone else keeps getting frames). Each model has
its own styles, blend cache and batcher (one model thread each: clients on different models are batched per
model and never wait for each other); their compiled programs share one bounded `programs.ProgramCache`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Generator
from typing import Any

import numpy as np

from nst_jax.serve.batcher import Batcher
from nst_jax.serve.programs import ProgramCache
from nst_jax.serve.styles import BlendCache, StyleLibrary

log = logging.getLogger("nst_jax.serve")

# loader(name, library) -> model: opens the model and fills its (empty) library (runs on the loader thread)
Loader = Callable[[str, StyleLibrary], Any]


@dataclasses.dataclass
class Entry:
    """One model of the lineup: "idle" (not loaded yet), "loading", "ready" or "failed" (with `error`)."""

    name: str
    state: str = "idle"
    error: str | None = None
    model: Any = None
    library: StyleLibrary | None = None
    batcher: Batcher | None = None
    blends: BlendCache | None = None
    loading: asyncio.Future | None = None
    task: asyncio.Task | None = None

    def describe(self) -> dict:
        """The picker's JSON for this model."""
        out: dict = {"name": self.name, "state": self.state}
        if self.error:
            out["error"] = self.error
        if self.model is not None:
            out["family"] = self.model.family.name if hasattr(self.model, "family") else None
        return out


class Lineup:
    """The server's models by name, in the order given.

    Args:
      sizes, max_batch, style_size: as `app.ServerConfig` (every model serves the same frame sizes).
      programs: the compiled programs of every model.
      loader: opens a model that was not given ready (None: only ready models).
    """

    def __init__(self, sizes: tuple[int, ...], max_batch: int, style_size: int, programs: ProgramCache,
                 loader: Loader | None = None):
        self.sizes, self.max_batch, self.style_size = sizes, max_batch, style_size
        self.programs = programs
        self.loader = loader
        self.entries: dict[str, Entry] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nst-load")
        self._running = False

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __getitem__(self, name: str) -> Entry:
        return self.entries[name]

    @property
    def first(self) -> Entry:
        return next(iter(self.entries.values()))

    def add(self, name: str, model: Any = None, library: StyleLibrary | None = None) -> Entry:
        """A model ready to serve (`model` and `library` given) or one to load on first use."""
        if name in self.entries:
            raise ValueError(f"model {name} is in the lineup twice")
        entry = self.entries[name] = Entry(name)
        if model is not None:
            self._ready(entry, model, library)
        elif self.loader is None:
            raise ValueError(f"model {name} is not loaded and there is no loader")
        return entry

    def _ready(self, entry: Entry, model: Any, library: StyleLibrary) -> None:
        entry.model, entry.library = model, library
        entry.batcher = Batcher(model, self.sizes, self.max_batch, programs=self.programs, name=entry.name,
                                example=lambda: self.example_condition(entry))
        entry.blends = BlendCache(library, model.blend, entry.batcher.run_model)
        entry.state = "ready"

    def example_condition(self, entry: Entry) -> Any:
        """A one-style condition to compile with: the first style's, else (no style yet, so uploads are coming)
        a grey image's at the uploads' size, so the first upload does not compile either."""
        first = entry.library.first_id()
        if first is not None:
            return entry.library.get(first).condition
        side = self.style_size
        return entry.model.condition(np.full((1, side, side, 3), 0.5, np.float32))

    def style(self, sid: str) -> Any:
        """The style with this id, whichever model's it is (ids never repeat across models)."""
        for e in self.entries.values():
            if e.library is not None and sid in e.library:
                return e.library.get(sid)
        raise KeyError(sid)

    def describe(self) -> list[dict]:
        """Every model for the page's picker."""
        return [e.describe() for e in self.entries.values()]

    def start(self) -> None:
        """Start the tick loops of the models that are ready (on the event loop)."""
        self._running = True
        for entry in self.entries.values():
            if entry.state == "ready" and entry.task is None:
                entry.task = asyncio.ensure_future(entry.batcher.run())

    async def ensure(self, name: str) -> Entry:
        """The model `name`, loaded (and its programs compiled) on the loader thread if it is not yet; pages
        that ask meanwhile wait for the same load.

        Raises:
          RuntimeError: the model failed to load (its message; the entry stays "failed").
        """
        entry = self.entries[name]
        if entry.state == "ready":
            return entry
        if entry.state == "failed":
            raise RuntimeError(entry.error)
        if entry.loading is None:
            entry.state = "loading"
            entry.loading = asyncio.get_running_loop().run_in_executor(self._pool, self._load, entry)
        try:
            model, library = await asyncio.shield(entry.loading)
        except Exception as e:  # noqa: BLE001 - any failure of one model must leave the others serving
            if entry.state != "failed":
                log.warning("model %s failed to load: %s", name, e)
                entry.state, entry.error = "failed", f"{name} failed to load: {e}"
            raise RuntimeError(entry.error) from None
        if entry.state != "ready":
            self._ready(entry, model, library)
            entry.batcher.sizes = self.sizes
            if self._running:
                entry.task = asyncio.ensure_future(entry.batcher.run())
        return entry

    def _load(self, entry: Entry) -> tuple[Any, StyleLibrary]:
        library = StyleLibrary(prefix=f"m{list(self.entries).index(entry.name)}s")
        model = self.loader(entry.name, library)
        # Compile its programs here, not on the model thread: its first frames then never wait for XLA.
        probe = Batcher(model, self.sizes, self.max_batch, programs=self.programs, name=entry.name)
        probe.warm(example=self.example_condition(Entry(entry.name, model=model, library=library)))
        probe.executor.shutdown(wait=False)
        return model, library

    def stats(self) -> tuple[int, dict[str, dict]]:
        """(frames served by every model so far, per model: frames, calls and model seconds)."""
        out = {}
        for e in self.entries.values():
            if e.batcher is not None:
                s = e.batcher.stats
                out[e.name] = {"frames": s.frames, "calls": s.calls, "model_seconds": s.model_seconds}
        return sum(v["frames"] for v in out.values()), out

    def rates(self) -> Generator[dict[str, dict], None, None]:
        """Each `send(None)` gives, per model, the status line's numbers since the last: frames per second over
        every model ("server_fps"), the model's mean batch ("avg_batch") and time per call ("model_ms")."""
        (last, _), t = self.stats(), time.perf_counter()
        out: dict[str, dict] = {}
        while True:
            yield out
            (frames, per_model), now = self.stats(), time.perf_counter()
            fps = round((frames - last) / max(now - t, 1e-9), 1)
            last, t = frames, now
            out = {}
            for name in self.entries:
                s = per_model.get(name, {"frames": 0, "calls": 0, "model_seconds": 0.0})
                calls = s["calls"]
                out[name] = {"server_fps": fps, "model": name,
                             "avg_batch": round(s["frames"] / calls, 2) if calls else 0.0,
                             "model_ms": round(1000 * s["model_seconds"] / calls, 1) if calls else 0.0}

    async def close(self) -> None:
        """Stop every tick loop and the loader thread."""
        self._running = False
        for e in self.entries.values():
            if e.batcher is not None:
                e.batcher.close()
            if e.task is not None:
                e.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await e.task
        self._pool.shutdown(wait=False, cancel_futures=True)
