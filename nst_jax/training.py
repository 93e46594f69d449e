"""What the training loop needs besides the step: data streams, metrics, sample grids, preemption, multi-host
helpers and the compile cache (family-neutral; `nst_jax.train` is the loop itself).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import jax
import numpy as np

from nst_jax import runtime
from nst_jax.files import atomic_write
from nst_jax.runtime import train_eigen_convolutions


def open_image_streams(config, names: Sequence[str], on_skip: Callable) -> tuple[dict, dict]:
    """This process's image streams and fixed sample images, one per name.

    Every process reads the same global stream of each source and keeps its slice of each global batch
    (`data.ImageStream`), so the global batches do not depend on the process count.

    Each name reads the config keys `<name>_data` and `<name>_split`; every stream has its own seed (derived from
    `config.seed`) and the training augmentation of `config`.

    Returns:
      ({name: data.ImageStream}, {name: (num_samples, S, S, 3) float32}).
    """
    from nst_jax import data

    aug = data.Augment(int(config.image_size), int(config.resize_size), str(config.resize_mode),
                       str(config.augment), int(config.min_image_side))
    data_dir = config.tfds_data_dir or None
    sources = {name: data.open_source(config[f"{name}_data"], split=config[f"{name}_split"],
                                      image_key=config.image_key, data_dir=data_dir)
               for name in names}
    seeds = np.random.SeedSequence(int(config.seed)).generate_state(len(names))
    shards = jax.process_count()
    streams = {
        name: data.ImageStream(src, aug, batch_size=int(config.batch_size) // shards, seed=int(seed),
                               shard_index=jax.process_index(), shard_count=shards,
                               threads=int(config.data_threads),
                               prefetch_batches=int(config.prefetch_batches),
                               on_skip=partial(on_skip, name))
        for (name, src), seed in zip(sources.items(), seeds, strict=True)
    }
    samples = {name: data.fixed_images(src, aug, int(config.num_samples)) for name, src in sources.items()}
    return streams, samples


class IndexStream:
    """An endless stream of batches of random indices in [0, n) (e.g. which style each example trains on), with
    the exact-resume interface of the image streams (`get_state`/`set_state`, JSON-able).

    Every process draws the whole global batch (`batch_size * shard_count`) from the same generator and keeps
    its slice `shard_index`, so the global batches do not depend on the process count.
    """

    def __init__(self, n: int, batch_size: int, seed: int, shard_index: int = 0, shard_count: int | None = None):
        """`batch_size` is this process's part; `shard_count` defaults to `jax.process_count()`."""
        if n < 1:
            raise ValueError(f"need at least one index to draw from, got n={n}")
        self.n = int(n)
        self.batch_size = int(batch_size)
        self.shard_index = int(shard_index)
        self.shard_count = jax.process_count() if shard_count is None else int(shard_count)
        self._rng = np.random.Generator(np.random.PCG64([int(seed), 0]))
        self.skipped = 0  # the loop reports skipped items per stream; indices are never skipped

    def __iter__(self) -> IndexStream:
        return self

    def __next__(self) -> np.ndarray:
        everyone = self._rng.integers(0, self.n, self.batch_size * self.shard_count, dtype=np.int32)
        return everyone[self.shard_index * self.batch_size:(self.shard_index + 1) * self.batch_size]

    def get_state(self) -> dict:
        """The generator's position (JSON-able)."""
        return json.loads(json.dumps(self._rng.bit_generator.state))

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continue exactly where `get_state` was taken."""
        self._rng.bit_generator.state = dict(state)


def load_image_set(config, key: str, limit: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Every image of the source `config[key]` (split `config[key + "_split"]` if set), resized so the shorter
    side is `config.image_size` and centre-cropped square: a fixed, ordered set such as CIN's styles.

    Returns:
      ((N, S, S, 3) float32 in [0, 1], one name per image).
    """
    from nst_jax import data
    from nst_jax.errors import NstError

    split = config.get(f"{key}_split", "train") or "train"
    src = data.open_source(config[key], split=split, image_key=config.image_key,
                           data_dir=config.tfds_data_dir or None)
    n = len(src.items) if limit is None else min(int(limit), len(src.items))
    if n < 1:
        raise NstError(f"config.{key}: {src.name} has no images")
    size = int(config.image_size)
    aug = data.Augment(size, size, "shorter", "crop", 1)
    images = data.fixed_images(src, aug, n)
    # fixed_images refuses a set with an unreadable image, so the names line up with the images
    names = [Path(item).stem if isinstance(item, str | os.PathLike) else str(i)
             for i, item in enumerate(src.items[:n])]
    return images, names


_COMPILED: dict = {}

# XLA's CPU backend hands each convolution to YNNPACK by default. At training batch sizes its kernel-gradient
# ("backward filter") convolutions run several times slower than the forward; `ops.conv_for_training` replaces
# them with matrix products, after which XLA's own (Eigen) convolutions no longer make the AdaIN step faster
# (benchmarks/RESULTS.md), so they stay opt-in.
CPU_TRAINING_COMPILER_OPTIONS = runtime.EIGEN_CONVOLUTIONS
def compiler_options() -> dict[str, str]:
    """XLA options for compiling a train step: XLA's defaults, or on CPU with `NST_JAX_TRAIN_EIGEN_CONVOLUTIONS=1`
    `CPU_TRAINING_COMPILER_OPTIONS` (convolutions off YNNPACK; experimental, see above)."""
    if jax.default_backend() != "cpu" or not train_eigen_convolutions():
        return {}
    return dict(CPU_TRAINING_COMPILER_OPTIONS)


def compile_cached(step_fn, *args):
    """AOT-compile `step_fn` for `args` (timed apart from the steps, with `compiler_options()`), reusing an
    in-process compile."""
    leaves, treedef = jax.tree.flatten(args)
    key = (step_fn, treedef, tuple((x.shape, str(x.dtype), x.sharding) for x in leaves))
    cached = key in _COMPILED
    if not cached:
        if len(_COMPILED) > 8:
            _COMPILED.clear()
        _COMPILED[key] = step_fn.lower(*args).compile(compiler_options=compiler_options())
    return _COMPILED[key], cached


def allgather_json(obj: Any) -> list:
    """Every process's `obj` (JSON-able), in process order."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([raw.size], np.int32))).reshape(-1)
    buf = np.zeros(int(sizes.max()), np.uint8)
    buf[:raw.size] = raw
    everyone = np.asarray(multihost_utils.process_allgather(buf)).reshape(len(sizes), -1)
    return [json.loads(bytes(everyone[i, :sizes[i]]).decode()) for i in range(len(sizes))]


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without dragging in torch.

    tensorboardX imports torch when it is installed (1.5 s, and its own thread pools competing with XLA) only
    to accept torch tensors; we log NumPy.
    """
    import sys

    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # makes `import torch` raise ImportError, which tensorboardX handles
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class Metrics:
    """TensorBoard scalars and images (tensorboardX, no TensorFlow) plus `metrics.jsonl`; process 0 only."""

    def __init__(self, workdir: Path, start_step: int, enabled: bool):
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        # purge_step hides the events a killed run wrote after the checkpoint we resume from.
        self.writer = _summary_writer_class()(str(workdir), purge_step=start_step if start_step > 0 else None)
        self.jsonl = workdir / "metrics.jsonl"
        if self.jsonl.exists():
            kept = [line for line in self.jsonl.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= start_step]
            self.jsonl.write_text("".join(line + "\n" for line in kept))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        with self.jsonl.open("a") as f:
            f.write(json.dumps({"step": step, **{k: float(v) for k, v in values.items()}}) + "\n")

    def image(self, step: int, tag: str, img: np.ndarray) -> None:
        if self.enabled:
            self.writer.add_image(tag, np.clip(img, 0, 1), step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class SkipReporter:
    """The loop's `on_skip`: names each skipped file once (it comes back every epoch), the first 20 per stream,
    on process 0; the metrics count every occurrence."""

    def __init__(self, enabled: bool, limit: int = 20):
        self.enabled = enabled
        self.limit = limit
        self.reported: dict[str, set] = {}

    def __call__(self, stream: str, item, count: int) -> None:
        seen = self.reported.setdefault(stream, set())
        if self.enabled and item.where not in seen and len(seen) < self.limit:
            seen.add(item.where)
            console(f"skipped a {stream} image: {item.where}: {item.reason}")
            if len(seen) == self.limit:
                console(f"further skipped {stream} images are only counted (data/skipped_{stream})")


class StopFlag:
    """SIGTERM (preemption) and a first Ctrl-C ask the loop to save and stop; a second Ctrl-C interrupts."""

    def __init__(self, sigterm: bool = True):
        self.requested = False
        self._old = {}
        # With several processes JAX's preemption service owns SIGTERM (`reached_preemption` in the loop).
        self._signals = (signal.SIGTERM, signal.SIGINT) if sigterm else (signal.SIGINT,)

    def __enter__(self):
        for sig in self._signals:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave the handlers alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Window:
    """Per-step metrics fetched from the device, averaged and timed between two log steps.

    The wall time of a window is split into where the loop waited: `data` (the next batch), `step` (dispatching
    the step and waiting for its metrics, i.e. the device's work), `checkpoint` (saving), `samples` (sample
    grids) and `other` (the rest: logging, the progress bar). `timed(part)` adds a block's time to a part.
    """

    PARTS = ("data", "step", "checkpoint", "samples")

    def __init__(self):
        self.rows: list[dict] = []
        self.spent = dict.fromkeys(self.PARTS, 0.0)
        self.start = time.perf_counter()

    @contextlib.contextmanager
    def timed(self, part: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.spent[part] += time.perf_counter() - t0

    @property
    def data_s(self) -> float:
        return self.spent["data"]

    def summary(self, batch: int) -> dict[str, float]:
        """The mean of each metric, the throughput, and the time split (`time/<part>`: shares of wall time)."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        n = len(self.rows)
        out = {k: float(np.mean([r[k] for r in self.rows])) for k in self.rows[0] if k != "finite"}
        out.update(steps_per_sec=n / elapsed, images_per_sec=n * batch / elapsed,
                   data_wait_frac=self.spent["data"] / elapsed)
        for part, spent in self.spent.items():
            out[f"time/{part}"] = min(spent / elapsed, 1.0)
        out["time/other"] = max(1.0 - sum(self.spent.values()) / elapsed, 0.0)
        return out


def time_split_line(scalars: Mapping[str, float]) -> str:
    """`data 1%, step 96%, checkpoint 2%, samples 0%, other 1%` from `Window.summary`'s scalars."""
    return ", ".join(f"{part} {100 * scalars[f'time/{part}']:.0f}%" for part in (*Window.PARTS, "other"))


def report_progress(step: int, scalars: Mapping[str, float], bar: Any = None) -> None:
    """One console line per log interval (loss, throughput, the time split) and the progress bar's figures."""
    console(f"step {step}: loss {scalars['loss']:.4g}, {scalars['images_per_sec']:.3g} images/s; time: "
            f"{time_split_line(scalars)}")
    if bar is not None:
        shown = {"loss": f"{scalars['loss']:.4g}"}
        for key, label in (("loss_content", "content"), ("loss_style", "style")):
            if key in scalars:
                shown[label] = f"{scalars[key]:.3g}"
        bar.set_postfix(**shown, img_s=f"{scalars['images_per_sec']:.3g}", refresh=False)


def parse_profile_steps(spec: str) -> tuple[int, int] | None:
    """`"A:B"` -> (A, B), the first and last step to trace (1-based, inclusive); "" -> None.

    Raises:
      NstError: not two positive integers with A <= B.
    """
    from nst_jax.errors import NstError

    spec = str(spec or "").strip()
    if not spec:
        return None
    first, sep, last = spec.partition(":")
    try:
        a, b = int(first), int(last)
    except ValueError:
        a = b = 0
    if not sep or not 1 <= a <= b:
        raise NstError(f"config.profile_steps must be 'A:B' with 1 <= A <= B (steps to trace), got {spec!r}")
    return a, b


class Profiler:
    """A `jax.profiler` trace of steps A..B (`config.profile_steps`), written by process 0 into
    `workdir/profile` (TensorBoard's profile plugin reads it; `perfetto_trace.json.gz` opens in ui.perfetto.dev).
    """

    def __init__(self, spec: str, workdir: Path, enabled: bool):
        self.steps = parse_profile_steps(spec) if enabled else None
        self.dir = workdir / "profile"
        self.active = False
        self.written: Path | None = None

    def before(self, step: int) -> None:
        """Call before dispatching `step`."""
        if self.steps is not None and not self.active and self.steps[0] <= step <= self.steps[1]:
            jax.profiler.start_trace(str(self.dir), create_perfetto_trace=True)
            self.active = True

    def after(self, step: int, state: Any, last: bool = False) -> None:
        """Call after dispatching `step` (`state` is waited for, so the trace holds the whole step)."""
        if self.active and (step >= self.steps[1] or last):
            jax.block_until_ready(state)
            self.stop()

    def stop(self) -> None:
        if self.active:
            self.active = False
            jax.profiler.stop_trace()
            self.written = self.dir


def save_grid(workdir: Path, step: int, samples: Mapping[str, np.ndarray], outputs: np.ndarray) -> np.ndarray:
    """One row per sample: its input images (in `samples` order) then the output; saved as samples/step_N.png."""
    from nst_jax.image import image_grid, save_image

    rows = [[samples[k][i] for k in samples] + [outputs[i]] for i in range(outputs.shape[0])]
    grid = image_grid(rows)
    save_image(workdir / "samples" / f"step_{step:07d}.png", grid, overwrite=True)
    return grid


def console(msg: str) -> None:
    """A line on the console that does not break the progress bar."""
    from tqdm import tqdm

    tqdm.write(msg)


def write_json(path: Path, obj: Any) -> None:
    """`obj` as indented JSON, replacing `path` atomically (`nst_jax.files.atomic_write`)."""
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", overwrite=True)


def warn_config_changes(workdir: Path, config: Mapping[str, Any], lead: bool) -> None:
    """Say which keys differ from the `config.json` a resumed run started with."""
    path = workdir / "config.json"
    if not lead or not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    changed = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
    if changed:
        console("note: the config differs from the one this run started with: "
                 + ", ".join(f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in changed))
