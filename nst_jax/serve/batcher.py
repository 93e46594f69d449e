"""Batching frames from every client into one model call per tick.

Each client (or the server-side camera) owns one slot: a new frame replaces the one still waiting (latest
frame wins), so nothing queues up behind a slow model or a slow client. A tick takes every waiting frame whose
client can take a result, groups them by frame size, pads each group to a fixed bucket (1, 2, 4, 8, ...) and
makes one jitted call with per-image style conditions and alpha. Frame sizes and buckets are fixed and all
warmed at start, so no frame ever waits on a compilation.

Smoothing (the page's slider): a job with `smoothing` > 0 is stylized with its stream's normalisation statistics
smoothed across frames (`nst_jax.smoothing`: the exponential moving average of the content statistics, reset at
scene cuts), one state per stream (per client), kept in the batcher and dropped when the client leaves or turns
smoothing off. Smoothed and plain frames go in separate calls, so strength 0 is the exact per-frame output. The
smoothed programs compile on the first smoothed frame of each shape (not warmed at start).

A condition is what a style becomes for the model (see `nst_jax.models`): a pytree of arrays with a leading
axis of one per style, e.g. AdaIN's {"mean", "std"} of relu4_1, CIN's {"weights"} over its table, an arbitrary
network's {"vector"}. The batcher only stacks and pads them, leaf by leaf, so it serves every family alike.
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

import jax
import numpy as np

from nst_jax.models import Caps

log = logging.getLogger("nst_jax.serve")

Condition = Any  # a pytree of arrays, each with a leading axis of one entry per style


class ConditionModel(Protocol):
    """What the live server needs from a model (`nst_jax.stylize.Stylizer` for every family).

    Attributes:
      caps: what the model can do: style images (uploads) or a fixed table of styles, alpha, colour modes.
      num_styles: the size of the table (table models; `styles.fill_table` also reads `style_names` if the
        model has them).
    """

    caps: Caps
    num_styles: int | None

    def condition(self, style: Any) -> Condition:
        """One style (an image (1, H, W, 3), or for a table model its index) -> its condition."""
        ...

    def blend(self, conditions: Sequence[Condition], weights: Sequence[float]) -> Condition:
        """A convex mix of one-style conditions (weights normalised to sum to 1)."""
        ...

    def stylize_conditions(self, content: Any, condition: Condition, alpha: Any) -> Any:
        """content (N, H, W, 3), condition with leading axis N, alpha (N,) -> (N, H, W, 3) in [0, 1]."""
        ...


def stack_conditions(conditions: Sequence[Condition], size: int) -> Condition:
    """Concatenate one-style conditions on their leading axis and pad to `size` by repeating the first.

    Args:
      conditions: n >= 1 pytrees of the same structure, every leaf with a leading axis of 1.
      size: the batch to pad to (>= n).

    Returns:
      The same structure with NumPy leaves of leading axis `size`.

    Raises:
      ValueError: the structures differ, or a leaf is not (1, ...) with the first condition's shape.
    """
    n = len(conditions)

    def stack(*leaves: Any) -> np.ndarray:
        first = np.asarray(leaves[0])
        out = np.empty((size,) + first.shape[1:], first.dtype)
        for i, leaf in enumerate(leaves):
            leaf = np.asarray(leaf)
            if leaf.shape[:1] != (1,) or leaf.shape != first.shape:
                raise ValueError(f"condition leaves must all be (1, ...) like the first, {first.shape}; got "
                                 f"{leaf.shape}")
            out[i] = leaf[0]
        out[n:] = out[0]
        return out

    return jax.tree.map(stack, *conditions)


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
      condition: the style's condition, every leaf with a leading axis of 1 (what the model's `condition`
        returns, or a blend of such).
      alpha: style strength in [0, 1].
      deliver: called on the event loop with the stylized (H, W, 3) float32 frame.
      fail: called on the event loop with a message if the model call failed.
      gate: the frame is only taken while this returns True (e.g. the client's previous result has been sent);
        until then it waits in its slot, where a newer frame replaces it.
      smoothing: statistic smoothing strength in [0, 1) (0: the exact per-frame output).
      masks: None, or (H, W, K) per-pixel weights placing the condition's K styles (its leaves (1, K, ...));
        needs a model with `stylize_masked_conditions` (a `Stylizer` whose family takes masks).
      strength: None, or an (H, W) per-pixel style strength in [0, 1] (`nst_jax.strength`; the exact per-frame
        output, not smoothed); needs a model with `stylize_strength_conditions`.
    """

    content: np.ndarray
    condition: Condition
    alpha: float
    deliver: Callable[[np.ndarray], None]
    fail: Callable[[str], None] = lambda message: None
    gate: Callable[[], bool] = lambda: True
    submitted: float = dataclasses.field(default_factory=time.perf_counter)
    smoothing: float = 0.0
    stream: Hashable | None = None  # whose smoothing state: set by `Batcher.submit` to the slot's key
    masks: np.ndarray | None = None
    strength: np.ndarray | None = None


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
      model: has `stylize_conditions(content (N, H, W, 3), condition (leading axis N), alpha (N,))`.
      sizes: the square frame sizes that will be submitted (each warmed by `warm`).
      max_batch: the most frames in one call; larger groups are split.
      example: a one-style condition to compile with (values do not matter, shapes do), or a function
        returning one when `warm` runs; by default the table's first style, or a grey style image the size of
        the smallest frame.
    """

    def __init__(self, model: ConditionModel, sizes: Sequence[int], max_batch: int = 4,
                 example: Condition | Callable[[], Condition] | None = None, programs: Any = None,
                 name: Hashable = None):
        self.model = model
        # Compiled programs (a shared `programs.ProgramCache`, keyed by `name`): a model that can compile ahead
        # of time (`compile_conditions`) runs through it, so the process's programs stay bounded.
        self.programs = programs if hasattr(model, "compile_conditions") else None
        self.name = name
        self.sizes = tuple(sorted(set(int(s) for s in sizes)))
        self.max_batch = int(max_batch)
        self.buckets = bucket_sizes(self.max_batch)
        self.example = example
        self.stats = BatcherStats()
        # One thread owns every model call: calls never overlap, and JAX releases the GIL while it computes.
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nst-model")
        self._pending: dict[Hashable, Job] = {}
        self._wake: asyncio.Event | None = None
        self._closed = False
        # per-stream smoothing states (touched on the model thread; dropped from the event loop)
        self._smooth: dict[Hashable, Any] = {}
        self._stat_forward: Any = None

    # --- model thread ---------------------------------------------------------------------------------------

    def bucket(self, n: int) -> int:
        """The smallest bucket that holds n frames."""
        for b in self.buckets:
            if b >= n:
                return b
        raise ValueError(f"{n} frames exceed max_batch={self.max_batch}")

    def warm(self, progress: Callable[[int, int], None] | None = None, example: Condition | None = None) -> None:
        """Compile every (bucket, size) shape now, in the calling thread, so no frame waits for XLA.

        Args:
          progress: called with (shapes done, shapes) after each.
          example: a one-style condition (default: see the class's `example`).
        """
        if example is None:
            example = self._example()
        shapes = [(b, s) for s in self.sizes for b in self.buckets]
        for i, (b, s) in enumerate(shapes):
            content = np.full((b, s, s, 3), 0.5, np.float32)
            alpha = np.ones((b,), np.float32)
            np.asarray(self._program(content, stack_conditions([example], b), alpha))
            if progress is not None:
                progress(i + 1, len(shapes))

    def _program(self, content: np.ndarray, condition: Condition, alpha: np.ndarray) -> Any:
        """`model.stylize_conditions(content, condition, alpha)`, through the program cache where there is one."""
        if self.programs is None:
            return self.model.stylize_conditions(content, condition, alpha)
        b, h, w, _ = content.shape
        run = self.programs.get((self.name, h, w, b),
                                lambda: self.model.compile_conditions(content, condition, alpha))
        return run(content, condition, alpha)

    def _example(self) -> Condition:
        example = self.example() if callable(self.example) else self.example
        if example is not None:
            return example
        caps = self.model.caps
        if caps.style_table and not caps.style_images:
            return self.model.condition(0)
        side = self.sizes[0]
        return self.model.condition(np.full((1, side, side, 3), 0.5, np.float32))

    def smoothing_supported(self) -> bool:
        """Whether the model can smooth its statistics (a `Stylizer` whose family has `stats_forward`)."""
        return self._stat_model() is not None

    def _stat_model(self) -> Any:
        if self._stat_forward is None:
            from nst_jax.errors import NstError
            from nst_jax.smoothing import StatForward

            try:
                self._stat_forward = StatForward(self.model)
            except (NstError, AttributeError):  # a family without the seam, or no `Stylizer` at all
                self._stat_forward = False
        return self._stat_forward or None

    def _call(self, jobs: Sequence[Job]) -> np.ndarray:
        n = len(jobs)
        b = self.bucket(n)
        h, w, _ = jobs[0].content.shape
        content = np.empty((b, h, w, 3), np.float32)
        alpha = np.empty((b,), np.float32)
        for i, j in enumerate(jobs):
            content[i] = j.content
            alpha[i] = j.alpha
        # Padding repeats the first frame: the model normalises per image, so pads cannot change real outputs.
        content[n:], alpha[n:] = content[0], alpha[0]
        condition = stack_conditions([j.condition for j in jobs], b)
        masks = None
        if jobs[0].masks is not None:  # a group shares its mask shape (`run`)
            masks = np.stack([j.masks for j in jobs] + [jobs[0].masks] * (b - n)).astype(np.float32)
        if jobs[0].strength is not None:  # a group shares it (`run`): one pass, unsmoothed
            smap = np.stack([j.strength for j in jobs] + [jobs[0].strength] * (b - n)).astype(np.float32)
            if masks is None:  # one style (or blend) everywhere: conditions (N, K = 1, ...)
                condition = jax.tree.map(lambda v: v[:, None], condition)
            return np.asarray(self.model.stylize_strength_conditions(content, condition, masks, smap, alpha))[:n]
        smoothed = jobs[0].smoothing > 0 and self._stat_model() is not None
        if not smoothed:
            for j in jobs:
                self._smooth.pop(j.stream, None)  # turning smoothing back on starts afresh
            if masks is not None:
                return np.asarray(self.model.stylize_masked_conditions(content, condition, masks, alpha))[:n]
            return np.asarray(self._program(content, condition, alpha))[:n]
        return self._call_smoothed(jobs, content, condition, alpha, masks)

    def _call_smoothed(self, jobs: Sequence[Job], content: np.ndarray, condition: Condition,
                       alpha: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
        """Analyse the batch, smooth each frame's statistics with its stream's state and render, in one program
        (`StatForward.smooth_streams`: the network up to its statistics runs once per frame)."""
        n, rows = len(jobs), content.shape[0]
        # a stream's statistics change form when its frame size or masks do: it then starts afresh
        form = (content.shape[1:], None if masks is None else masks.shape[1:])
        states = []
        for j in jobs:
            kept = self._smooth.get(j.stream)
            states.append(kept[1] if kept is not None and kept[0] == form else None)
        states += [None] * (rows - n)  # padding rows: a fresh state keeps their own statistics
        strengths = [j.smoothing for j in jobs] + [0.0] * (rows - n)
        out, new = self._stat_model().smooth_streams(content, condition, alpha, states, strengths, masks)
        for j, state in zip(jobs, new, strict=False):
            self._smooth[j.stream] = (form, state)
        return np.asarray(out)[:n]

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
        job.stream = key
        self._pending[key] = job
        if replaced:
            self.stats.replaced += 1
        self._event().set()
        return replaced

    def discard(self, key: Hashable) -> None:
        """Forget `key`'s waiting frame and its smoothing state (the client left)."""
        self._pending.pop(key, None)
        self._smooth.pop(key, None)

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
        """Run `fn(*args)` on the model thread (style conditions, blends) between batches."""
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
            groups: dict[tuple, list[Job]] = {}
            for j in jobs:
                key = (j.content.shape, j.smoothing > 0, None if j.masks is None else j.masks.shape,
                       j.strength is not None)
                groups.setdefault(key, []).append(j)
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


# The largest smoothing strength the page may ask for (1 would freeze the statistics).
MAX_SMOOTHING = 0.95


def parse_smoothing(obj: dict, current: float) -> float:
    """The `smoothing` key of a settings message (absent: `current`), clamped to [0, MAX_SMOOTHING].

    Raises:
      ProtocolError: not a finite number.
    """
    import math

    from nst_jax.serve import protocol

    v = obj.get("smoothing", current)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise protocol.ProtocolError("settings: smoothing must be a finite number")
    return min(max(float(v), 0.0), MAX_SMOOTHING)
