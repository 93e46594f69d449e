"""Batching frames from every client into one model call per tick.

Each client (or the server-side camera) owns one slot: a new frame replaces the one still waiting (latest
frame wins), so nothing queues up behind a slow model or a slow client. A tick takes every waiting frame whose
client can take a result, groups them by frame size, pads each group to a fixed bucket (1, 2, 4, 8, ...) and
makes one jitted call with per-image style statistics and alpha. Frame sizes and buckets are fixed and all
warmed at start, so no frame ever waits on a compilation.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Protocol

import numpy as np

log = logging.getLogger("nst_jax.serve")


class StatsModel(Protocol):
    """What the batcher needs from `nst_jax.stylize.Stylizer`."""

    def stylize_stats(self, content: Any, mean: Any, std: Any, alpha: Any) -> Any: ...


def bucket_sizes(max_batch: int) -> tuple[int, ...]:
    """Powers of two below `max_batch`, then `max_batch` itself: (1, 2, 4, 8) for 8, (1, 2, 4, 6) for 6."""
    if max_batch < 1:
        raise ValueError("max_batch must be at least 1")
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    sizes.append(max_batch)
    return tuple(sizes)


@dataclasses.dataclass
class Job:
    """One frame to stylize.

    Attributes:
      content: (H, W, 3) float32 in [0, 1]; H and W must be one of the batcher's warmed sizes.
      mean, std: style statistics, any shape that reshapes to (C,) (e.g. StyleStats' (1, 1, 1, C)).
      alpha: style strength in [0, 1].
      deliver: called on the event loop with the stylized (H, W, 3) float32 frame.
      fail: called on the event loop with a message if the model call failed.
      gate: the frame is only taken while this returns True (e.g. the client's previous result has been sent);
        until then it waits in its slot, where a newer frame replaces it.
    """

    content: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    alpha: float
    deliver: Callable[[np.ndarray], None]
    fail: Callable[[str], None] = lambda message: None
    gate: Callable[[], bool] = lambda: True
    submitted: float = dataclasses.field(default_factory=time.perf_counter)


@dataclasses.dataclass
class BatcherStats:
    """Counters, for the page's status line, the benchmark and the tests."""

    frames: int = 0
    calls: int = 0
    replaced: int = 0
    failures: int = 0
    batch_sizes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    model_seconds: float = 0.0


class Batcher:
    """Latest-frame-wins slots per client, drained into one padded model call per tick.

    Args:
      model: has `stylize_stats(content (N,H,W,3), mean (N,1,1,C), std (N,1,1,C), alpha (N,))`.
      sizes: the square frame sizes that will be submitted (each warmed by `warm`).
      max_batch: the most frames in one call; larger groups are split.
      channels: C of the style statistics (512 for relu4_1).
    """

    def __init__(self, model: StatsModel, sizes: Sequence[int], max_batch: int = 4, channels: int = 512):
        self.model = model
        self.sizes = tuple(sorted(set(int(s) for s in sizes)))
        self.max_batch = int(max_batch)
        self.buckets = bucket_sizes(self.max_batch)
        self.channels = channels
        self.stats = BatcherStats()
        # One thread owns every model call: calls never overlap, and JAX releases the GIL while it computes.
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nst-model")
        self._pending: dict[Hashable, Job] = {}
        self._wake: asyncio.Event | None = None
        self._closed = False

    # --- model thread ---------------------------------------------------------------------------------------

    def bucket(self, n: int) -> int:
        """The smallest bucket that holds n frames."""
        for b in self.buckets:
            if b >= n:
                return b
        raise ValueError(f"{n} frames exceed max_batch={self.max_batch}")

    def warm(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Compile every (bucket, size) shape now, in the calling thread, so no frame waits for XLA."""
        shapes = [(b, s) for s in self.sizes for b in self.buckets]
        for i, (b, s) in enumerate(shapes):
            content = np.full((b, s, s, 3), 0.5, np.float32)
            mean = np.zeros((b, 1, 1, self.channels), np.float32)
            std = np.ones((b, 1, 1, self.channels), np.float32)
            alpha = np.ones((b,), np.float32)
            np.asarray(self.model.stylize_stats(content, mean, std, alpha))
            if progress is not None:
                progress(i + 1, len(shapes))

    def _call(self, jobs: Sequence[Job]) -> np.ndarray:
        n = len(jobs)
        b = self.bucket(n)
        h, w, _ = jobs[0].content.shape
        content = np.empty((b, h, w, 3), np.float32)
        mean = np.empty((b, 1, 1, self.channels), np.float32)
        std = np.empty((b, 1, 1, self.channels), np.float32)
        alpha = np.empty((b,), np.float32)
        for i, j in enumerate(jobs):
            content[i] = j.content
            mean[i] = np.reshape(j.mean, (1, 1, self.channels))
            std[i] = np.reshape(j.std, (1, 1, self.channels))
            alpha[i] = j.alpha
        # Padding repeats the first frame: the model normalises per image, so pads cannot change real outputs.
        content[n:], mean[n:], std[n:], alpha[n:] = content[0], mean[0], std[0], alpha[0]
        out = np.asarray(self.model.stylize_stats(content, mean, std, alpha))
        return out[:n]

    # --- event loop -----------------------------------------------------------------------------------------

    def _event(self) -> asyncio.Event:
        if self._wake is None:
            self._wake = asyncio.Event()
        return self._wake

    def submit(self, key: Hashable, job: Job) -> bool:
        """Put `job` in `key`'s slot (call on the event loop); True if it replaced a frame still waiting."""
        if job.content.shape[0] not in self.sizes or job.content.shape[0] != job.content.shape[1]:
            raise ValueError(f"frame shape {job.content.shape} is not one of the warmed sizes {self.sizes}")
        replaced = self._pending.pop(key, None) is not None
        self._pending[key] = job
        if replaced:
            self.stats.replaced += 1
        self._event().set()
        return replaced

    def discard(self, key: Hashable) -> None:
        """Forget `key`'s waiting frame (the client left)."""
        self._pending.pop(key, None)

    def kick(self) -> None:
        """Re-check gates (a client's send finished, so its waiting frame may now go)."""
        if self._pending:
            self._event().set()

    def pending(self) -> int:
        """Frames waiting in slots."""
        return len(self._pending)

    def _take(self) -> list[Job]:
        taken = []
        for key, job in list(self._pending.items()):
            if job.gate():
                del self._pending[key]
                taken.append(job)
        return taken

    async def run_model(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` on the model thread (style statistics, blends) between batches."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def run(self) -> None:
        """The tick loop; returns after `close`."""
        loop = asyncio.get_running_loop()
        wake = self._event()
        while not self._closed:
            await wake.wait()
            wake.clear()
            if self._closed:
                break
            jobs = self._take()
            groups: dict[tuple[int, ...], list[Job]] = {}
            for j in jobs:
                groups.setdefault(j.content.shape, []).append(j)
            for group in groups.values():
                for start in range(0, len(group), self.max_batch):
                    chunk = group[start:start + self.max_batch]
                    t0 = time.perf_counter()
                    try:
                        out = await loop.run_in_executor(self.executor, self._call, chunk)
                    except Exception as e:  # noqa: BLE001 - one bad batch must not stop the server
                        log.exception("model call failed")
                        self.stats.failures += 1
                        for j in chunk:
                            j.fail(f"stylization failed: {type(e).__name__}: {e}")
                        continue
                    self.stats.model_seconds += time.perf_counter() - t0
                    self.stats.calls += 1
                    self.stats.frames += len(chunk)
                    self.stats.batch_sizes[len(chunk)] += 1
                    for j, img in zip(chunk, out, strict=True):
                        try:
                            j.deliver(img)
                        except Exception:  # noqa: BLE001 - a failing client callback must not stop the others
                            log.exception("delivering a frame failed")
            if self._pending:
                # Frames that arrived during the call, or whose gate was closed: look again (a closed gate is
                # re-opened by `kick`, so this does not spin).
                if any(j.gate() for j in self._pending.values()):
                    wake.set()

    def close(self) -> None:
        """Stop the tick loop and release the model thread once its current call returns."""
        self._closed = True
        if self._wake is not None:
            self._wake.set()
        self._pending.clear()
        self.executor.shutdown(wait=False, cancel_futures=True)
