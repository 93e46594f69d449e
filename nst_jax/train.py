"""Training the AdaIN decoder: a pure, jitted train step and the loop around it.

The step (pytorch-AdaIN's `net.Net.forward` + Adam), for content images c and style images s:
  t = AdaIN(enc(c).relu4_1, enc(s).relu4_1)            (no gradient flows into t, as in pytorch-AdaIN)
  g = decoder(t)
  loss = content_weight * MSE(enc(g).relu4_1, t)
       + style_weight * sum_l w_l * [MSE(mean enc(g).l, mean enc(s).l) + MSE(std enc(g).l, std enc(s).l)]
over l in relu1_1..relu4_1, then an Adam update of the decoder with lr / (1 + lr_decay * step).

The loop runs that step data-parallel over every device (a 1-D `jax.sharding.Mesh`: the batch is sharded,
the parameters and optimiser state replicated; several hosts join through `jax.distributed.initialize`),
resumes from the latest Orbax checkpoint in the workdir (data position included), logs TensorBoard scalars and
sample grids, and stops on a non-finite loss without saving the bad state.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from nst_jax import checkpoints, losses, ops, vgg
from nst_jax.errors import NstError
from nst_jax.models import decoder

Array = jax.Array
CONTENT_LAYER = "relu4_1"
ADAIN_EPS = 1e-5


class TrainingDiverged(NstError):
    """The loss or the gradients became NaN or infinite."""


class TrainState(NamedTuple):
    """What one step updates: the step counter, the decoder parameters and the optimiser state."""

    step: Array
    params: dict
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The static (hashable) part of the loss: weights, layers and compute dtype."""

    content_weight: float = 1.0
    style_weight: float = 10.0
    style_layers: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
    style_layer_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    dtype: str = "float32"  # compute dtype; configs allow float32 and bfloat16 (tests also use float64)

    @classmethod
    def from_config(cls, config) -> LossConfig:
        """Pick the loss fields out of a training config."""
        layers = tuple(config.style_layers)
        weights = tuple(float(w) for w in config.style_layer_weights)
        if len(weights) != len(layers):
            raise NstError(f"style_layer_weights has {len(weights)} values for {len(layers)} style_layers")
        for layer in layers:
            if layer not in vgg.LAYERS:
                raise NstError(f"unknown style layer {layer!r}; known: {', '.join(vgg.RELU_TAPS)}")
        if config.dtype not in ("float32", "bfloat16"):
            raise NstError(f"dtype must be float32 or bfloat16, got {config.dtype!r}")
        return cls(float(config.content_weight), float(config.style_weight), layers, weights,
                   str(config.dtype))


# ----------------------------------------------------------------------------------------------------
# The maths


def learning_rate_schedule(learning_rate: float, decay: float) -> Callable[[Array], Array]:
    """lr / (1 + decay * step): pytorch-AdaIN's `adjust_learning_rate`, Torch7 optim's learningRateDecay."""
    def schedule(count):
        return np.float32(learning_rate) / (1.0 + np.float32(decay) * jnp.asarray(count, jnp.float32))

    return schedule


def make_optimizer(config) -> optax.GradientTransformation:
    """Adam with the AdaIN learning-rate decay; its updates match torch.optim.Adam's (eps outside the sqrt).

    The same hyperparameters give the same (cached) object, so jitted steps built on it are reused in-process.
    """
    return _adam(float(config.learning_rate), float(config.lr_decay), float(config.adam_b1),
                 float(config.adam_b2), float(config.adam_eps))


@functools.lru_cache(maxsize=16)
def _adam(lr: float, decay: float, b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    return optax.adam(learning_rate_schedule(lr, decay), b1=b1, b2=b2, eps=eps)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def conv2d_matmul_weight_grad(x: Array, kernel: Array, bias: Array, padding: str) -> Array:
    """`ops.conv2d` (same forward, same gradients) whose kernel gradient is computed as matrix products.

    XLA's CPU backend runs the kernel-gradient ("backward filter") convolution of some 3x3 layers at 15-35
    GFLOP/s per core, a third of its forward speed or less, and it dominated the training step (9 of 27
    CPU-seconds at batch 8, 256 px). Written as kh matmuls over the kw-shifted input,
    (N*H*W, kw*Cin)^T @ (N*H*W, Cout), it runs up to 3x faster for the wide layers. The input gradient stays
    XLA's own transposed convolution.
    """
    return ops.conv2d(x, kernel, bias, padding)


def _conv_fwd(x, kernel, bias, padding):
    return ops.conv2d(x, kernel, bias, padding), (x, kernel)


def _conv_bwd(padding, res, dy):
    x, kernel = res
    _, input_vjp = jax.vjp(lambda v: ops.conv2d(v, kernel, None, padding), x)
    (dx,) = input_vjp(dy)
    kh, kw, cin, cout = kernel.shape
    ph, pw = (0, 0) if padding == "valid" or (kh == 1 and kw == 1) else (kh // 2, kw // 2)
    widths = ((0, 0), (ph, ph), (pw, pw), (0, 0))
    xp = jnp.pad(x, widths, mode="reflect") if padding == "reflect" and (ph or pw) else jnp.pad(x, widths)
    n, h, w, _ = dy.shape
    cols = jnp.concatenate([xp[:, :, j:j + w, :] for j in range(kw)], axis=-1)  # (N, H + 2ph, W, kw*Cin)
    d2 = dy.reshape(n * h * w, cout)
    rows = [jnp.dot(cols[:, i:i + h].reshape(n * h * w, kw * cin).T, d2, preferred_element_type=jnp.float32)
            for i in range(kh)]
    dk = jnp.stack(rows).reshape(kh, kw, cin, cout).astype(kernel.dtype)
    db = jnp.sum(dy, axis=(0, 1, 2), dtype=jnp.float32).astype(dy.dtype)
    return dx, dk, db


conv2d_matmul_weight_grad.defvjp(_conv_fwd, _conv_bwd)


def decode_for_training(params: Mapping, t: Array) -> Array:
    """`decoder.decode`, with `conv2d_matmul_weight_grad` on CPU (elsewhere XLA's own gradient is fast)."""
    if jax.default_backend() != "cpu":
        return decoder.decode(params, t)
    h, dtype = t, t.dtype
    last = len(decoder.DECODER_CONVS) - 1
    for i, (name, _, cout, up) in enumerate(decoder.DECODER_CONVS):
        p = params[name]
        # Measured per layer (batch 8, 256 px): the products win from 128 output channels on (3x at
        # 128->128, 1.6x at 256->256); below, XLA's own kernel gradient is as fast or faster.
        conv = conv2d_matmul_weight_grad if cout >= 128 else ops.conv2d
        h = conv(h, p["kernel"].astype(dtype), p["bias"].astype(dtype), "reflect")
        if i < last:
            h = jax.nn.relu(h)
        if up:
            h = ops.upsample_nearest(h, 2)
    return h


def compute_loss(params: Mapping, vgg_params: Mapping, content: Array, style: Array, spec: vgg.VGGSpec,
                 lc: LossConfig) -> tuple[Array, dict[str, Array]]:
    """The AdaIN training loss of one batch and its terms.

    Args:
      params: decoder parameters (the only thing differentiated).
      vgg_params: frozen encoder parameters (up to relu4_1).
      content, style: (N, S, S, 3) images in [0, 1].
      spec: the encoder's identity.
      lc: weights, layers and compute dtype.

    Returns:
      (loss, {"loss", "loss_content", "loss_style" (weighted, summing to loss),
              "style/<layer>" (unweighted)}).
    """
    dt = jnp.dtype(lc.dtype)
    # Statistics and losses in float32 at least (bfloat16 compute), float64 when the tests ask for it.
    f32 = jnp.dtype(jnp.float64) if dt == jnp.float64 else jnp.dtype(jnp.float32)
    n = content.shape[0]
    taps = tuple(sorted(set(lc.style_layers) | {CONTENT_LAYER}, key=vgg.LAYERS.index))
    # One encoder pass over content and style together: the same kernels run once on twice the batch.
    both = vgg.encode(vgg_params, jnp.concatenate([content, style]).astype(dt), spec, taps)
    content_feat = both[CONTENT_LAYER][:n].astype(f32)
    style_feats = {k: both[k][n:].astype(f32) for k in taps}
    t = jax.lax.stop_gradient(ops.adain(content_feat, style_feats[CONTENT_LAYER], ADAIN_EPS))
    g = decode_for_training(params, t.astype(dt))
    g_feats = vgg.encode(vgg_params, g, spec, taps)
    loss_c = losses.content_loss(g_feats[CONTENT_LAYER].astype(f32), t)
    per_layer = {k: losses.mean_std_style_loss(g_feats[k].astype(f32), style_feats[k], ADAIN_EPS)
                 for k in lc.style_layers}
    loss_s = sum(w * per_layer[k] for k, w in zip(lc.style_layers, lc.style_layer_weights, strict=True))
    weighted_c = lc.content_weight * loss_c
    weighted_s = lc.style_weight * loss_s
    loss = weighted_c + weighted_s
    metrics = {"loss": loss, "loss_content": weighted_c, "loss_style": weighted_s}
    metrics.update({f"style/{k}": v for k, v in per_layer.items()})
    return loss, metrics


def train_step(state: TrainState, vgg_params: Mapping, content: Array, style: Array, *,
               tx: optax.GradientTransformation, spec: vgg.VGGSpec,
               lc: LossConfig) -> tuple[TrainState, dict]:
    """One optimisation step (pure; jit it with `make_train_step`).

    A step whose loss, gradients or update are not finite leaves the parameters and optimiser state unchanged
    and reports `finite = False`; the loop stops on it.

    Returns:
      (the new state, metrics: the loss terms, "grad_norm", "finite").
    """
    (loss, metrics), grads = jax.value_and_grad(compute_loss, has_aux=True)(
        state.params, vgg_params, content, style, spec, lc)
    # optax's Adam mixes Python floats with its int32 step count (bias correction), which strict dtype
    # promotion (our tests' setting) rejects; its arithmetic is right under the standard rules.
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
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
def make_train_step(tx: optax.GradientTransformation, spec: vgg.VGGSpec, lc: LossConfig, mesh: Mesh):
    """`train_step` jitted for `mesh`: batch sharded over "data", everything else replicated, state donated.

    Returns:
      f(state, vgg_params, content, style) -> (state, metrics).
    """
    replicated = NamedSharding(mesh, P())
    batch = NamedSharding(mesh, P("data"))
    return jax.jit(partial(train_step, tx=tx, spec=spec, lc=lc),
                   in_shardings=(replicated, replicated, batch, batch),
                   out_shardings=(replicated, replicated),
                   donate_argnums=0)


def init_state(key: Array, tx: optax.GradientTransformation) -> TrainState:
    """A fresh decoder (PyTorch's default conv init) and optimiser state."""
    params = decoder.init_params(key)
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))


@functools.lru_cache(maxsize=16)
def _jitted_init(tx: optax.GradientTransformation, sharding: NamedSharding):
    # One program: eager jax.random calls would compile one small program per parameter shape.
    return jax.jit(partial(init_state, tx=tx), out_shardings=sharding)


_COMPILED: dict = {}


def _compile(step_fn, *args):
    """AOT-compile `step_fn` for `args` (timed apart from the steps), reusing an in-process compile."""
    leaves, treedef = jax.tree.flatten(args)
    key = (step_fn, treedef, tuple((x.shape, str(x.dtype), x.sharding) for x in leaves))
    cached = key in _COMPILED
    if not cached:
        if len(_COMPILED) > 8:
            _COMPILED.clear()
        _COMPILED[key] = step_fn.lower(*args).compile()
    return _COMPILED[key], cached


@partial(jax.jit, static_argnames=("spec",))
def stylize_samples(params: Mapping, vgg_params: Mapping, content: Array, style: Array,
                    spec: vgg.VGGSpec) -> Array:
    """Each content image stylized with the style image of the same index, in [0, 1] (sample grids)."""
    from nst_jax.models import adain

    s_mean, s_std = adain.style_statistics(vgg_params, style, spec)
    alpha = jnp.ones((content.shape[0],), jnp.float32)
    return adain.stylize(vgg_params, params, content, s_mean, s_std, alpha, spec)


# ----------------------------------------------------------------------------------------------------
# The loop


def validate_config(config) -> None:
    """Raise `NstError` naming the key of any value the trainer cannot use."""
    for key in ("num_steps", "batch_size", "image_size", "log_every", "checkpoint_every", "sample_every",
                "num_samples"):
        if int(config[key]) < 1:
            raise NstError(f"config.{key} must be positive, got {config[key]}")
    if config.image_size % 8:
        raise NstError(f"config.image_size must be a multiple of 8 (the decoder upsamples 3 times), "
                       f"got {config.image_size}")
    if not float(config.learning_rate) > 0:
        raise NstError(f"config.learning_rate must be positive, got {config.learning_rate}")
    n = jax.device_count()
    if config.batch_size % n:
        raise NstError(f"config.batch_size ({config.batch_size}) must be a multiple of the device count "
                       f"({n})")


def _open_streams(config, on_skip: Callable) -> tuple[dict, dict]:
    """This process's content and style streams (its shard of each source) and the fixed sample images."""
    from nst_jax import data

    aug = data.Augment(int(config.image_size), int(config.resize_size), str(config.resize_mode),
                       str(config.augment), int(config.min_image_side))
    data_dir = config.tfds_data_dir or None
    sources = {
        "content": data.open_source(config.content_data, split=config.content_split,
                                    image_key=config.image_key, data_dir=data_dir),
        "style": data.open_source(config.style_data, split=config.style_split, image_key=config.image_key,
                                  data_dir=data_dir),
    }
    seeds = np.random.SeedSequence(int(config.seed)).generate_state(2)
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


def _allgather_json(obj: Any) -> list:
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


class _Metrics:
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


class _StopFlag:
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


class _Window:
    """Per-step metrics fetched from the device, averaged and timed between two log steps."""

    def __init__(self):
        self.rows: list[dict] = []
        self.data_s = 0.0
        self.start = time.perf_counter()

    def summary(self, batch: int) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        n = len(self.rows)
        out = {k: float(np.mean([r[k] for r in self.rows])) for k in self.rows[0] if k != "finite"}
        out.update(steps_per_sec=n / elapsed, images_per_sec=n * batch / elapsed,
                   data_wait_frac=self.data_s / elapsed)
        return out


def _save_grid(workdir: Path, step: int, samples: Mapping[str, np.ndarray],
               outputs: np.ndarray) -> np.ndarray:
    from nst_jax.image import image_grid, save_image

    rows = [[samples["content"][i], samples["style"][i], outputs[i]] for i in range(outputs.shape[0])]
    grid = image_grid(rows)
    save_image(workdir / "samples" / f"step_{step:07d}.png", grid, overwrite=True)
    return grid


def train_and_evaluate(config, workdir: str | os.PathLike) -> dict:
    """Train (or resume training) the AdaIN decoder as `config` says, writing everything into `workdir`.

    Args:
      config: an ml_collections ConfigDict with the keys of `configs/default.py`.
      workdir: gets `checkpoints/`, TensorBoard events, `metrics.jsonl`, `samples/*.png` and `config.json`.

    Returns:
      a summary: {"step", "start_step", "loss" (last logged), "skipped": {"content", "style"}, "compile_s"}.

    Raises:
      NstError: a bad config value or data source; `TrainingDiverged` on a non-finite loss (the last good
        checkpoint is kept).
    """
    validate_config(config)
    run = _Run(config, Path(workdir).expanduser())
    try:
        return run.train()
    finally:
        run.close()


class _Run:
    """One invocation of the training loop: setup and resume, the steps, logging, samples, checkpoints."""

    def __init__(self, config, workdir: Path):
        self.config = config
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.lead = jax.process_index() == 0
        self.lc = LossConfig.from_config(config)
        self.mesh = make_mesh()
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P("data"))
        self.config_dict = checkpoints._jsonable(config.to_dict())
        self.batch = int(config.batch_size)
        self.num_steps = int(config.num_steps)
        self.manager = self.metrics = self.bar = None

        deepest = vgg.deepest(tuple(self.lc.style_layers) + (CONTENT_LAYER,))
        vgg_params, self.spec = checkpoints.resolve_vgg(config.vgg_weights, deepest)
        self.vgg_params = jax.device_put(vgg_params, self.replicated)
        self._reported: dict[str, set] = {"content": set(), "style": set()}
        self.streams, self.samples = _open_streams(config, self._on_skip)

        self.tx = make_optimizer(config)
        self.state = _jitted_init(self.tx, self.replicated)(jax.random.PRNGKey(int(config.seed)))
        self.manager = checkpoints.make_manager(workdir, max_to_keep=int(config.max_checkpoints))
        self.start_step = self._restore()
        if self.lead:
            _write_json(workdir / "config.json", self.config_dict)
        self.metrics = _Metrics(workdir, self.start_step, self.lead)
        self.step_fn = make_train_step(self.tx, self.spec, self.lc, self.mesh)

    def _on_skip(self, stream: str, item, count: int) -> None:
        # Each bad file is named once (it comes back every epoch); the metrics count every occurrence.
        seen = self._reported[stream]
        if self.lead and item.where not in seen and len(seen) < 20:
            seen.add(item.where)
            _console(f"skipped a {stream} image: {item.where}: {item.reason}")
            if len(seen) == 20:
                _console(f"further skipped {stream} images are only counted (data/skipped_{stream})")

    def _restore(self) -> int:
        latest = self.manager.latest_step()
        if latest is None:
            return 0
        state = self.state
        params, opt_state, meta = checkpoints.restore_checkpoint(self.manager, latest, state.params,
                                                                 state.opt_state)
        step = int(meta["step"])
        counter = jax.device_put(jnp.asarray(step, jnp.int32), self.replicated)
        self.state = TrainState(counter, params, opt_state)
        positions = meta.get("data") or []
        if len(positions) == jax.process_count():
            for name, stream in self.streams.items():
                stream.set_state(positions[jax.process_index()][name])
        elif self.lead:
            _console(f"note: the data positions were saved by {len(positions)} process(es), not "
                     f"{jax.process_count()}: the data streams start afresh")
        _warn_config_changes(self.workdir, self.config_dict, self.lead)
        if self.lead:
            _console(f"resuming from step {step} ({checkpoints.checkpoint_root(self.workdir) / str(latest)})")
        return step

    def _positions(self) -> dict:
        return {name: s.get_state() for name, s in self.streams.items()}

    def _next_batch(self):
        """The next global batch, and the streams' positions just after it (what a checkpoint records)."""
        c, s = next(self.streams["content"]), next(self.streams["style"])
        return (jax.make_array_from_process_local_data(self.batch_sharding, c),
                jax.make_array_from_process_local_data(self.batch_sharding, s), self._positions())

    def _save(self, step: int, positions: dict) -> None:
        meta = {"step": step, "data": _allgather_json(positions), "process_count": jax.process_count()}
        checkpoints.save_checkpoint(self.manager, step, self.state.params, self.state.opt_state, meta,
                                    self.config_dict)

    def _check(self, step: int, host: dict) -> None:
        if bool(host["finite"]):
            return
        terms = ", ".join(f"{k}={float(host[k]):.4g}"
                          for k in ("loss", "loss_content", "loss_style", "grad_norm"))
        good = self.manager.latest_step()
        where = (f"the last good checkpoint is step {good} in {checkpoints.checkpoint_root(self.workdir)}"
                 if good is not None else "no checkpoint was saved")
        raise TrainingDiverged(f"the loss became non-finite at step {step} ({terms}); training stopped and "
                               f"{where}. Try a lower --config.learning_rate, dtype=float32, or check the "
                               f"data")

    def _log(self, step: int, window: _Window, summary: dict) -> None:
        scalars = window.summary(self.batch)
        schedule = learning_rate_schedule(float(self.config.learning_rate), float(self.config.lr_decay))
        scalars["learning_rate"] = float(schedule(step - 1))
        for name, s in self.streams.items():
            scalars[f"data/skipped_{name}"] = float(s.skipped)
        if summary["step"] == self.start_step:  # the first window of this invocation
            scalars["compile_s"] = summary["compile_s"]
        self.metrics.scalars(step, scalars)
        summary["loss"] = scalars["loss"]
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{scalars['loss']:.4g}", content=f"{scalars['loss_content']:.3g}",
                                 style=f"{scalars['loss_style']:.3g}",
                                 img_s=f"{scalars['images_per_sec']:.3g}", refresh=False)

    def _sample(self, step: int) -> None:
        out = stylize_samples(self.state.params, self.vgg_params, jnp.asarray(self.samples["content"]),
                              jnp.asarray(self.samples["style"]), self.spec)
        out = np.asarray(jax.device_get(out))
        if self.lead:
            self.metrics.image(step, "samples", _save_grid(self.workdir, step, self.samples, out))

    def train(self) -> dict:
        summary: dict[str, Any] = {"start_step": self.start_step, "step": self.start_step, "loss": None,
                                   "compile_s": 0.0}
        if self.start_step >= self.num_steps:
            if self.lead:
                _console(f"nothing to do: the checkpoint is at step {self.start_step} and num_steps is "
                         f"{self.num_steps}")
            return self._finish(summary)
        cfg = self.config
        if self.lead and cfg.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=self.num_steps, initial=self.start_step, desc="train", unit="step",
                            dynamic_ncols=True)
        with _StopFlag(sigterm=jax.process_count() == 1) as stop:
            content, style, positions = self._next_batch()
            # Compile ahead of the loop so that the compile time is reported apart from the steps.
            t0 = time.perf_counter()
            compiled, cached = _compile(self.step_fn, self.state, self.vgg_params, content, style)
            summary["compile_s"] = time.perf_counter() - t0
            if self.lead:
                what = "reused the compiled train step" if cached else \
                    f"compiled the train step in {summary['compile_s']:.1f} s"
                _console(f"{what} ({jax.device_count()} {jax.devices()[0].platform} device(s), "
                         f"global batch {self.batch})")
            consumed, last_saved = self._positions(), self.start_step
            pending: list[tuple[int, dict]] = []  # dispatched steps whose metrics are not fetched yet
            window = _Window()
            for step in range(self.start_step + 1, self.num_steps + 1):
                self.state, m = compiled(self.state, self.vgg_params, content, style)
                consumed = positions  # the data position that goes with the new state
                pending.append((step, m))
                last = step == self.num_steps
                preempted = self.manager.reached_preemption(step)
                stopping = stop.requested or preempted
                do_log = step % int(cfg.log_every) == 0 or last
                do_sample = step % int(cfg.sample_every) == 0 or last
                do_save = step % int(cfg.checkpoint_every) == 0 or last or stopping
                if not (last or stopping):
                    t0 = time.perf_counter()
                    content, style, positions = self._next_batch()  # while the device runs the step
                    window.data_s += time.perf_counter() - t0
                # Fetching a step's metrics waits for it: keep the newest in flight unless something needs it.
                keep = 0 if (do_log or do_sample or do_save) else 1
                for s, metrics in pending[:len(pending) - keep]:
                    host = jax.tree.map(np.asarray, jax.device_get(metrics))
                    self._check(s, host)
                    window.rows.append(host)
                pending = pending[len(pending) - keep:]
                if self.bar is not None:
                    self.bar.update(1)
                if do_log:
                    self._log(step, window, summary)
                    window = _Window()
                if do_sample:
                    self._sample(step)
                if do_save:
                    self._save(step, consumed)
                    last_saved = step
                summary["step"] = step
                if stopping:
                    if self.lead:
                        _console(f"stopping at step {step} (checkpoint saved); run the same command to "
                                 f"resume")
                    break
            if summary["step"] > last_saved:
                self._save(summary["step"], consumed)
        return self._finish(summary)

    def _finish(self, summary: dict) -> dict:
        summary["skipped"] = {name: s.skipped for name, s in self.streams.items()}
        if self.lead and any(summary["skipped"].values()):
            _console("skipped images (unreadable or smaller than min_image_side): "
                     + ", ".join(f"{k} {v}" for k, v in summary["skipped"].items()))
        return summary

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.manager is not None:
            self.manager.wait_until_finished()
            self.manager.close()
        if self.metrics is not None:
            self.metrics.close()


def _console(msg: str) -> None:
    """A line on the console that does not break the progress bar."""
    from tqdm import tqdm

    tqdm.write(msg)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _warn_config_changes(workdir: Path, config: Mapping[str, Any], lead: bool) -> None:
    path = workdir / "config.json"
    if not lead or not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    changed = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
    if changed:
        _console("note: the config differs from the one this run started with: "
                 + ", ".join(f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in changed))
