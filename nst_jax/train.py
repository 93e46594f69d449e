"""The training loop, the same for every model family (`nst_jax.models`): `family = MODELS[config.model]`.

The family gives the trainable tree (`init_params`), the frozen arrays and static identity of its loss
(`setup`), its data streams (`open_streams`), the pure loss (`loss_fn`) and the sample grids (`sample`). The loop
runs one jitted step, data-parallel over every device (a 1-D `jax.sharding.Mesh`: the batch is sharded, the
parameters and optimiser state replicated, the state donated; several hosts join through
`jax.distributed.initialize`), resumes from the latest Orbax checkpoint in the workdir (data position included),
logs TensorBoard scalars and sample grids, and stops on a non-finite loss without saving the bad state.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nst_jax import checkpoints, models
from nst_jax.errors import NstError, TrainingDiverged
from nst_jax.training import (
    Metrics,
    Profiler,
    SkipReporter,
    StopFlag,
    Window,
    allgather_json,
    compile_cached,
    console,
    parse_profile_steps,
    report_progress,
    save_grid,
    warn_config_changes,
    write_json,
)
from nst_jax.typing import Array


class TrainState(NamedTuple):
    """What one step updates: the step counter, the trainable parameters and the optimiser state."""

    step: Array
    params: Any
    opt_state: Any


# ----------------------------------------------------------------------------------------------------
# The step


def learning_rate_schedule(learning_rate: float, decay: float) -> Callable[[Array], Array]:
    """lr / (1 + decay * step) (decay 0: constant): pytorch-AdaIN's `adjust_learning_rate`."""
    def schedule(count):
        return np.float32(learning_rate) / (1.0 + np.float32(decay) * jnp.asarray(count, jnp.float32))

    return schedule


def make_optimizer(config) -> optax.GradientTransformation:
    """Adam with the `lr / (1 + lr_decay * step)` schedule; its updates match torch.optim.Adam's (eps outside the
    sqrt). With `config.trainable` masks (fine-tuning), frozen elements get zero updates.

    The same hyperparameters give the same (cached) object, so jitted steps built on it are reused in-process.
    """
    return _adam(float(config.learning_rate), float(config.get("lr_decay", 0.0)), float(config.adam_b1),
                 float(config.adam_b2), float(config.adam_eps))


@functools.lru_cache(maxsize=16)
def _adam(lr: float, decay: float, b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    return optax.adam(learning_rate_schedule(lr, decay), b1=b1, b2=b2, eps=eps)


def train_step(state: TrainState, frozen: Any, batch: Mapping[str, Array], mask: Any = None, *,
               tx: optax.GradientTransformation, loss_fn: Callable, static: Hashable) -> tuple[TrainState, dict]:
    """One optimisation step of any family (pure; jit it with `make_train_step`).

    A step whose loss, gradients or update are not finite leaves the parameters and optimiser state unchanged
    and reports `finite = False`; the loop stops on it. Where `mask` (a tree of booleans like the parameters)
    is False, the parameters keep their exact values (fine-tuning a few rows).

    Returns:
      (the new state, metrics: the family's loss terms, "grad_norm", "finite").
    """
    if getattr(static, "wants_step", False):  # e.g. a stability term drawing its random warps from the step
        batch = dict(batch, step=state.step)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, frozen, batch, static)
    if mask is not None:
        grads = jax.tree.map(lambda g, m: jnp.where(m, g, jnp.zeros_like(g)), grads, mask)
    # optax's Adam mixes Python floats with its int32 step count (bias correction), which strict dtype
    # promotion (our tests' setting) rejects; its arithmetic is right under the standard rules.
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
    if mask is not None:
        updates = jax.tree.map(lambda u, m: jnp.where(m, u, jnp.zeros_like(u)), updates, mask)
    params = optax.apply_updates(state.params, updates)
    if mask is not None:  # bit-identical where frozen, whatever the update arithmetic did
        params = jax.tree.map(lambda new, old, m: jnp.where(m, new, old), params, state.params, mask)
    grad_norm = optax.tree.norm(grads)
    # The update is checked too: a finite gradient can still give an infinite step (an absurd learning rate).
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(updates))
    params, opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                     (params, opt_state), (state.params, state.opt_state))
    metrics = dict(metrics, grad_norm=grad_norm, finite=finite)
    return TrainState(state.step + 1, params, opt_state), metrics


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D data-parallel mesh over `devices` (all devices of all processes by default)."""
    devices = list(devices if devices is not None else jax.devices())
    return Mesh(np.asarray(devices), ("data",))


@functools.lru_cache(maxsize=16)
def make_train_step(tx: optax.GradientTransformation, loss_fn: Callable, static: Hashable, mesh: Mesh):
    """`train_step` jitted for `mesh`: batch sharded over "data", everything else replicated, state donated.

    Returns:
      f(state, frozen, batch, mask) -> (state, metrics).
    """
    replicated = NamedSharding(mesh, P())
    batch = NamedSharding(mesh, P("data"))
    return jax.jit(partial(train_step, tx=tx, loss_fn=loss_fn, static=static),
                   in_shardings=(replicated, replicated, batch, replicated),
                   out_shardings=(replicated, replicated),
                   donate_argnums=0)


def init_state(key: Array, tx: optax.GradientTransformation, init_params: Callable, config: Any = None,
               params: Any = None) -> TrainState:
    """Fresh parameters (`init_params(key, config)`, or `params` when starting from trained ones) and their
    optimiser state."""
    params = init_params(key, config) if params is None else params
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))


# ----------------------------------------------------------------------------------------------------
# The loop


def validate_config(config, family: models.Family | None = None) -> None:
    """Raise `NstError` naming the key of any value the trainer cannot use."""
    for key in ("num_steps", "batch_size", "image_size", "log_every", "checkpoint_every", "sample_every",
                "num_samples"):
        if int(config[key]) < 1:
            raise NstError(f"config.{key} must be positive, got {config[key]}")
    if not float(config.learning_rate) > 0:
        raise NstError(f"config.learning_rate must be positive, got {config.learning_rate}")
    n = jax.device_count()
    if config.batch_size % n:
        raise NstError(f"config.batch_size ({config.batch_size}) must be a multiple of the device count "
                       f"({n})")
    parse_profile_steps(config.get("profile_steps", ""))
    if family is not None and family.validate_config is not None:
        family.validate_config(config)


def train_and_evaluate(config, workdir: str | os.PathLike) -> dict:
    """Train (or resume training) the model family `config.model` as `config` says, writing into `workdir`.

    Args:
      config: an ml_collections ConfigDict with the keys of `configs/default.py`.
      workdir: gets `checkpoints/`, TensorBoard events, `metrics.jsonl`, `samples/*.png` and `config.json`.

    Returns:
      a summary: {"step", "start_step", "loss" (last logged), "skipped": {"content", "style"}, "compile_s"}.

    Raises:
      NstError: a bad config value or data source; `TrainingDiverged` on a non-finite loss (the last good
        checkpoint is kept).
    """
    family = models.get(config.get("model", "adain"))
    validate_config(config, family)
    run = _Run(config, Path(workdir).expanduser(), family)
    broken = False
    try:
        return run.train()
    except Exception as e:  # with several processes, most likely a dead peer: its saves would wait for it
        broken = jax.process_count() > 1 and not isinstance(e, NstError)
        raise
    finally:
        run.close(wait=not broken)


class _Run:
    """One invocation of the training loop: setup and resume, the steps, logging, samples, checkpoints."""

    def __init__(self, config, workdir: Path, family: models.Family):
        self.config = config
        self.family = family
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.lead = jax.process_index() == 0
        self.mesh = make_mesh()
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P("data"))
        self.config_dict = checkpoints.jsonable(config.to_dict())
        self.config_dict.setdefault("model", family.name)
        self.batch = int(config.batch_size)
        self.num_steps = int(config.num_steps)
        self.manager = self.metrics = self.bar = None
        self.profiler = Profiler(config.get("profile_steps", ""), workdir, self.lead)

        frozen, self.static = family.setup(config)
        self.frozen = jax.device_put(frozen, self.replicated)
        self.streams, self.samples = family.open_streams(config, SkipReporter(self.lead))

        self.tx = make_optimizer(config)
        self.state = self._init_state()
        self.mask = None
        if family.trainable_mask is not None:
            mask = family.trainable_mask(self.state.params, config)
            self.mask = None if mask is None else jax.device_put(mask, self.replicated)
        self.manager = checkpoints.make_manager(workdir, max_to_keep=int(config.max_checkpoints))
        self.start_step = self._restore()
        if self.lead:
            write_json(workdir / "config.json", self.config_dict)
        self.metrics = Metrics(workdir, self.start_step, self.lead)
        self.step_fn = make_train_step(self.tx, family.loss_fn, self.static, self.mesh)

    def _init_state(self) -> TrainState:
        key = jax.random.PRNGKey(int(self.config.seed))
        start = None
        init_from = str(self.config.get("init_from", "") or "")
        if init_from:  # fine-tuning: start from trained weights (host arrays)
            if self.family.start_params is None:
                raise NstError(f"config.init_from: the {self.family.name} family cannot start from trained "
                               f"weights")
            from nst_jax.models.pretrained import load_base

            family_name, base = load_base(init_from)
            if family_name != self.family.name:
                raise NstError(f"config.init_from: {init_from} is a {family_name} model, not "
                               f"{self.family.name}")
            start = self.family.start_params(self.config, base)
        if start is None:
            # One program: eager jax.random calls would compile one small program per parameter shape.
            init = jax.jit(partial(init_state, tx=self.tx, init_params=self.family.init_params,
                                   config=self.config), out_shardings=self.replicated)
            return init(key)
        params = jax.device_put(start, self.replicated)
        return TrainState(jax.device_put(jnp.zeros((), jnp.int32), self.replicated), params,
                          jax.jit(self.tx.init, out_shardings=self.replicated)(params))

    def _restore(self) -> int:
        if self.manager.latest_step() is None:
            return 0
        state = self.state
        found = checkpoints.restore_latest_good(self.manager, state.params, state.opt_state,
                                                say=console if self.lead else lambda _: None)
        if found is None:
            return 0
        latest, params, opt_state, meta = found
        step = int(meta["step"])
        counter = jax.device_put(jnp.asarray(step, jnp.int32), self.replicated)
        self.state = TrainState(counter, params, opt_state)
        positions = meta.get("data") or []
        if len(positions) == jax.process_count():
            for name, stream in self.streams.items():
                stream.set_state(positions[jax.process_index()][name])
        elif self.lead:
            console(f"note: checkpoint step {step} was saved by {len(positions)} process(es) and this run has "
                    f"{jax.process_count()}: the parameters, optimiser state and step are kept, the data streams "
                    f"start again from their beginning (their positions are per process)")
        warn_config_changes(self.workdir, self.config_dict, self.lead)
        if self.lead:
            console(f"resuming from step {step} ({checkpoints.checkpoint_root(self.workdir) / str(latest)})")
        return step

    def _positions(self) -> dict:
        return {name: s.get_state() for name, s in self.streams.items()}

    def _next_batch(self):
        """The next global batch, and the streams' positions just after it (what a checkpoint records)."""
        batch = {name: jax.make_array_from_process_local_data(self.batch_sharding, next(stream))
                 for name, stream in self.streams.items()}
        return batch, self._positions()

    def _save(self, step: int, positions: dict) -> None:
        meta = {"step": step, "data": allgather_json(positions), "process_count": jax.process_count()}
        try:
            checkpoints.save_checkpoint(self.manager, step, self.state.params, self.state.opt_state, meta,
                                        self.config_dict)
        except checkpoints.CheckpointError as e:
            raise checkpoints.CheckpointError(f"{e} in {checkpoints.checkpoint_root(self.workdir)}; "
                                              f"{self._kept()}") from None

    def _kept(self) -> str:
        good = [s for s in self.manager.all_steps() if (checkpoints.checkpoint_root(self.workdir) / str(s)).is_dir()]
        return (f"the previous checkpoint (step {max(good)}) is intact: free some space and run the same "
                "command to resume" if good else "no earlier checkpoint was saved")

    def _check(self, step: int, host: dict) -> None:
        if bool(host["finite"]):
            return
        terms = ", ".join(f"{k}={float(host[k]):.4g}"
                          for k in ("loss", "loss_content", "loss_style", "grad_norm") if k in host)
        good = self.manager.latest_step()
        where = (f"the last good checkpoint is step {good} in {checkpoints.checkpoint_root(self.workdir)}"
                 if good is not None else "no checkpoint was saved")
        raise TrainingDiverged(f"the loss became non-finite at step {step} ({terms}); training stopped and "
                               f"{where}. Try a lower --config.learning_rate, dtype=float32, or check the "
                               f"data")

    def _log(self, step: int, window: Window, summary: dict) -> None:
        scalars = window.summary(self.batch)
        schedule = learning_rate_schedule(float(self.config.learning_rate),
                                          float(self.config.get("lr_decay", 0.0)))
        scalars["learning_rate"] = float(schedule(step - 1))
        for name, s in self.streams.items():
            scalars[f"data/skipped_{name}"] = float(s.skipped)
        if summary["step"] == self.start_step:  # the first window of this invocation
            scalars["compile_s"] = summary["compile_s"]
        self.metrics.scalars(step, scalars)
        summary["loss"] = scalars["loss"]
        if self.lead:
            report_progress(step, scalars, self.bar)

    def _sample(self, step: int) -> None:
        samples = {k: jnp.asarray(v) for k, v in self.samples.items()}
        out = np.asarray(jax.device_get(self.family.sample(self.state.params, self.frozen, samples, self.static)))
        if self.lead:
            shown = {k: v for k, v in self.samples.items() if np.ndim(v) == 4}
            self.metrics.image(step, "samples", save_grid(self.workdir, step, shown, out))

    def train(self) -> dict:
        summary: dict[str, Any] = {"start_step": self.start_step, "step": self.start_step, "loss": None,
                                   "compile_s": 0.0}
        if self.start_step >= self.num_steps:
            if self.lead:
                console(f"nothing to do: the checkpoint is at step {self.start_step} and num_steps is "
                         f"{self.num_steps}")
            return self._finish(summary)
        cfg = self.config
        if self.lead and cfg.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=self.num_steps, initial=self.start_step, desc="train", unit="step",
                            dynamic_ncols=True)
        with StopFlag(sigterm=jax.process_count() == 1) as stop:
            batch, positions = self._next_batch()
            # Compile ahead of the loop so that the compile time is reported apart from the steps.
            t0 = time.perf_counter()
            compiled, cached = compile_cached(self.step_fn, self.state, self.frozen, batch, self.mask)
            summary["compile_s"] = time.perf_counter() - t0
            if self.lead:
                what = "reused the compiled train step" if cached else \
                    f"compiled the train step in {summary['compile_s']:.1f} s"
                console(f"{what} ({jax.device_count()} {jax.devices()[0].platform} device(s), "
                         f"global batch {self.batch})")
            consumed, last_saved = self._positions(), self.start_step
            pending: list[tuple[int, dict]] = []  # dispatched steps whose metrics are not fetched yet
            window = Window()
            for step in range(self.start_step + 1, self.num_steps + 1):
                self.profiler.before(step)
                with window.timed("step"):
                    self.state, m = compiled(self.state, self.frozen, batch, self.mask)
                consumed = positions  # the data position that goes with the new state
                pending.append((step, m))
                last = step == self.num_steps
                preempted = self.manager.reached_preemption(step)
                stopping = stop.requested or preempted
                do_log = step % int(cfg.log_every) == 0 or last
                do_sample = step % int(cfg.sample_every) == 0 or last
                do_save = step % int(cfg.checkpoint_every) == 0 or last or stopping
                if not (last or stopping):
                    with window.timed("data"):
                        batch, positions = self._next_batch()  # while the device runs the step
                self.profiler.after(step, self.state, last or stopping)
                # Fetching a step's metrics waits for it: keep the newest in flight unless something needs it.
                keep = 0 if (do_log or do_sample or do_save) else 1
                for s, metrics in pending[:len(pending) - keep]:
                    with window.timed("step"):
                        host = jax.tree.map(np.asarray, jax.device_get(metrics))
                    self._check(s, host)
                    window.rows.append(host)
                pending = pending[len(pending) - keep:]
                if self.bar is not None:
                    self.bar.update(1)
                if do_log:
                    self._log(step, window, summary)
                    window = Window()
                if do_sample:
                    with window.timed("samples"):
                        self._sample(step)
                if do_save:
                    with window.timed("checkpoint"):
                        self._save(step, consumed)
                    last_saved = step
                summary["step"] = step
                if stopping:
                    if self.lead:
                        console(f"stopping at step {step} (checkpoint saved); run the same command to "
                                 f"resume")
                    break
            if summary["step"] > last_saved:
                self._save(summary["step"], consumed)
        return self._finish(summary)

    def _finish(self, summary: dict) -> dict:
        summary["skipped"] = {name: s.skipped for name, s in self.streams.items()}
        if self.lead and any(summary["skipped"].values()):
            console("skipped images (unreadable or smaller than min_image_side): "
                     + ", ".join(f"{k} {v}" for k, v in summary["skipped"].items()))
        return summary

    def close(self, wait: bool = True) -> None:
        self.profiler.stop()
        if self.bar is not None:
            self.bar.close()
        if self.manager is not None and wait:
            try:  # an asynchronous save that fails (a full disk) surfaces here
                checkpoints.checked_io("could not finish writing the last checkpoint",
                                       self.manager.wait_until_finished)
            except checkpoints.CheckpointError as e:
                raise checkpoints.CheckpointError(f"{e}; {self._kept()}") from None
            finally:
                self.manager.close()
        if self.metrics is not None:
            self.metrics.close()


