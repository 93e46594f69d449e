"""Training checkpoints (Orbax), for any model family.

A training `--workdir` holds `checkpoints/<step>/` directories written by an Orbax `CheckpointManager`, each
with:
- `params`: the family's trainable tree (AdaIN: the decoder `{conv4_1: {kernel, bias}, ...}`; trees of any depth);
- `opt_state`: the Optax (Adam) state;
- `meta`: JSON: the step, the data streams' positions (one per process), skipped-image counts;
- `config`: JSON: the training configuration; its `model` names the family (absent in older AdaIN runs) and its
  `vgg_weights` the encoder the model was trained with.

`restore_params(path, like)` reads the parameters of a finished checkpoint into a given structure;
`nst_jax.models.trained.load_trained(path)` builds that structure from the family and is what
`nst-jax stylize --checkpoint DIR`, the live server and export call (with `load_decoder_checkpoint`, the AdaIN
case, and `export_decoder`).
"""

from __future__ import annotations

import errno
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from nst_jax.errors import NstError, WeightsError

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"


def checkpoint_root(workdir: str | Path) -> Path:
    """Where a training run keeps its checkpoints."""
    return Path(workdir) / CHECKPOINT_DIR


class CheckpointError(NstError):
    """A checkpoint could not be written (the disk is full, or another I/O error); earlier ones are intact."""


def _io_reason(e: BaseException) -> str | None:
    """'no space left on device' (or the OS error's text) if `e` or its causes are an I/O failure, else None.

    Orbax and TensorStore report a failed write in several exception types; the OS error may only be in the
    message.
    """
    seen: BaseException | None = e
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno is not None:
            return "no space left on device" if seen.errno in (errno.ENOSPC, errno.EDQUOT) else \
                (seen.strerror or str(seen)).lower()
        text = str(seen)
        if "No space left on device" in text or "ENOSPC" in text:
            return "no space left on device"
        seen = seen.__cause__ or seen.__context__
    return None


def checked_io(what: str, fn: Callable[[], Any]) -> Any:
    """Run a checkpoint write (`manager.save`, `wait_until_finished`), turning I/O failures into one line.

    Raises:
      CheckpointError: "<what>: no space left on device" (or the OS error); other errors pass through.
    """
    try:
        return fn()
    except Exception as e:
        reason = _io_reason(e)
        if reason is None:
            raise
        raise CheckpointError(f"{what}: {reason}") from None


class _QuietIOFailures(logging.Filter):
    """Drops Orbax's tracebacks of a failed write (one per background thread): the run reports it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and _io_reason(exc) == "no space left on device":
            return False
        return "No space left on device" not in record.getMessage()


_QUIET = _QuietIOFailures()


def make_manager(workdir: str | Path, *, max_to_keep: int | None = 3):
    """An Orbax `CheckpointManager` over `workdir/checkpoints` (created if missing), for a training run."""
    import orbax.checkpoint as ocp

    # cleanup_tmp_directories: a run killed mid-save leaves a half-written temporary folder; drop it on
    # restart.
    for name in ("absl", "orbax"):
        if _QUIET not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(_QUIET)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True)
    return ocp.CheckpointManager(checkpoint_root(workdir).absolute(), options=options)


def save_checkpoint(manager, step: int, params: Any, opt_state: Any, meta: Mapping[str, Any],
                    config: Mapping[str, Any]) -> bool:
    """Save one training checkpoint (asynchronously where Orbax can; call `manager.wait_until_finished()`).

    Returns:
      whether a checkpoint was written (False if `step` already has one).
    """
    import orbax.checkpoint as ocp

    if step in manager.all_steps():
        return False
    args = ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        opt_state=ocp.args.StandardSave(opt_state),
        meta=ocp.args.JsonSave(dict(meta)),
        config=ocp.args.JsonSave(jsonable(config)),
    )
    return bool(checked_io(f"could not write checkpoint step {step}", lambda: manager.save(step, args=args,
                                                                                          force=True)))


def restore_checkpoint(manager, step: int, params_like: Any, opt_state_like: Any) -> tuple[Any, Any, dict]:
    """Restore (params, opt_state, meta) of `step` into the structure, shapes and shardings of `*_like`.

    The `*_like` leaves are arrays or `jax.ShapeDtypeStruct`s (with the sharding wanted now: the device count
    may differ from the run that saved).
    """
    import orbax.checkpoint as ocp

    args = ocp.args.Composite(
        params=ocp.args.StandardRestore(_abstract(params_like)),
        opt_state=ocp.args.StandardRestore(_abstract(opt_state_like)),
        meta=ocp.args.JsonRestore(),
    )
    restored = manager.restore(step, args=args)
    return restored["params"], restored["opt_state"], dict(restored["meta"])


def restore_latest_good(manager, params_like: Any, opt_state_like: Any,
                        say: Callable[[str], None] = log.warning) -> tuple[int, Any, Any, dict] | None:
    """Restore the newest checkpoint that reads back; unreadable newer ones are set aside, and said so.

    A checkpoint can be corrupt though Orbax finished it (a disk error, a truncated copy, a file removed by
    hand). Such a step folder is renamed to `corrupt-<step>-<time>` (kept for inspection; Orbax ignores it) so
    that the run continues from the one before and later saves of that step are not skipped.

    Args:
      manager: the run's `CheckpointManager`.
      params_like, opt_state_like: as `restore_checkpoint`.
      say: where the one-line notes go.

    Returns:
      (step folder number, params, opt_state, meta) of the newest readable checkpoint, or None if there is none.
    """
    steps = sorted(manager.all_steps(), reverse=True)
    bad: list[int] = []
    for step in steps:
        try:
            params, opt_state, meta = restore_checkpoint(manager, step, params_like, opt_state_like)
            if not isinstance(meta.get("step"), int):
                raise ValueError("its metadata has no step")
        except Exception as e:  # Orbax and TensorStore report damage in many exception types
            detail = " ".join(str(e).split())[:160] or type(e).__name__
            say(f"checkpoint step {step} is unreadable ({type(e).__name__}: {detail}); trying the one before")
            bad.append(step)
            continue
        break
    else:
        params = None
    root = Path(manager.directory)
    for step in bad:
        src = root / str(step)
        if src.exists():
            dst = root / f"corrupt-{step}-{time.strftime('%Y%m%d-%H%M%S')}"
            try:
                src.rename(dst)
                say(f"moved the unreadable checkpoint to {dst}")
            except OSError:
                shutil.rmtree(src, ignore_errors=True)
    if bad:
        manager.reload()
    if params is None:
        if bad:
            say("no checkpoint could be read: starting from scratch")
        return None
    return step, params, opt_state, meta


def _abstract(tree: Any) -> Any:
    def leaf(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return x
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None))

    return jax.tree.map(leaf, tree)


def jsonable(x: Any) -> Any:
    """`x` with mappings, tuples and NumPy scalars turned into JSON types (configs, metadata)."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def find_checkpoint(path: str | Path) -> tuple[Path, int]:
    """Resolve a workdir, a `checkpoints` folder or one step folder to (checkpoints root, step).

    Raises:
      WeightsError: nothing there is a finished training checkpoint.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise WeightsError(f"checkpoint not found: {p}")
    if (p / "params").is_dir() and p.name.isdigit():
        return p.parent, int(p.name)
    root = p / CHECKPOINT_DIR if (p / CHECKPOINT_DIR).is_dir() else p
    steps = []
    if root.is_dir():
        steps = sorted(int(d.name) for d in root.iterdir()
                       if d.is_dir() and d.name.isdigit() and (d / "params").is_dir())
    if not steps:
        raise WeightsError(f"{p} is not a training checkpoint (expected a train.py --workdir, its "
                           f"{CHECKPOINT_DIR}/ folder, or one {CHECKPOINT_DIR}/<step> folder)")
    return root, steps[-1]


def restore_params(path: str | Path, like: Any) -> tuple[Any, dict, int]:
    """The parameters and training config of the latest (or given) finished checkpoint at `path`.

    Args:
      path: a `train.py --workdir`, its `checkpoints/` folder, or one `checkpoints/<step>` folder.
      like: the expected tree (arrays or `jax.ShapeDtypeStruct`s, any depth): a checkpoint of another
        structure is refused.

    Returns:
      (params as float32 NumPy arrays in the structure of `like`, the saved config as a plain dict, the step).

    Raises:
      WeightsError: `path` is not a checkpoint, or its parameters do not fit `like`.
    """
    import orbax.checkpoint as ocp

    root, step = find_checkpoint(path)
    step_dir = root / str(step)
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.float32, sharding=cpu), like)
    try:
        # Plain checkpointers on the step's items (a read-only CheckpointManager logs warnings on every load).
        with ocp.StandardCheckpointer() as checkpointer:
            params = checkpointer.restore(step_dir / "params", target)
    except Exception as e:  # Orbax reports structure and file problems with many exception types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(f"cannot read the parameters from checkpoint {step_dir}: {first}") from None
    return jax.tree.map(lambda v: np.asarray(v, np.float32), params), read_config(step_dir), step


def read_config(step_dir: str | Path) -> dict:
    """The training config saved in one checkpoint step folder ({} if it has none)."""
    import orbax.checkpoint as ocp

    step_dir = Path(step_dir)
    if not (step_dir / "config").exists():
        return {}
    try:
        with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
            return dict(checkpointer.restore(step_dir / "config") or {})
    except Exception as e:  # as above
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(f"cannot read the config of checkpoint {step_dir}: {first}") from None


def latest_config(path: str | Path) -> tuple[dict, int]:
    """The saved config (and step) of the checkpoint `path` resolves to."""
    root, step = find_checkpoint(path)
    return read_config(root / str(step)), step
