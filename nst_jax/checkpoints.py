"""Training checkpoints (Orbax) and loading a trained decoder for inference.

A training `--workdir` holds `checkpoints/<step>/` directories written by an Orbax `CheckpointManager`, each
with:
- `params`: the decoder parameter tree `{conv4_1: {kernel, bias}, ...}` (`nst_jax.models.decoder` names);
- `opt_state`: the Optax (Adam) state;
- `meta`: JSON: the step, the data streams' positions (one per process), skipped-image counts;
- `config`: JSON: the training configuration (its `vgg_weights` names the encoder the decoder was trained
  with).

`load_decoder_checkpoint(path)` is what `nst-jax stylize --checkpoint DIR` and the live server call.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from nst_jax.errors import WeightsError

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
# A config's vgg_weights "random[:SPEC]" builds a seeded random encoder (tests only).
RANDOM_VGG = "random"


def checkpoint_root(workdir: str | Path) -> Path:
    """Where a training run keeps its checkpoints."""
    return Path(workdir) / CHECKPOINT_DIR


def make_manager(workdir: str | Path, *, max_to_keep: int | None = 3):
    """An Orbax `CheckpointManager` over `workdir/checkpoints` (created if missing), for a training run."""
    import orbax.checkpoint as ocp

    # cleanup_tmp_directories: a run killed mid-save leaves a half-written temporary folder; drop it on
    # restart.
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
        config=ocp.args.JsonSave(_jsonable(config)),
    )
    return bool(manager.save(step, args=args, force=True))


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


def _abstract(tree: Any) -> Any:
    def leaf(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return x
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None))

    return jax.tree.map(leaf, tree)


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
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


def load_decoder_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """Load the decoder parameters and the training configuration from a training checkpoint.

    Args:
      path: a `train.py --workdir` (its latest checkpoint is used), its `checkpoints/` folder, or one
        `checkpoints/<step>` folder.

    Returns:
      (decoder params as {layer: {"kernel", "bias"}} float32 NumPy arrays, config as a plain dict holding at
      least "vgg_weights", plus "step": the checkpoint's step).

    Raises:
      WeightsError: `path` is not a checkpoint, or its parameters do not fit the AdaIN decoder.
    """
    import orbax.checkpoint as ocp

    from nst_jax.models.decoder import check_decoder_params, expected_shapes

    root, step = find_checkpoint(path)
    step_dir = root / str(step)
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    target = {name: {leaf: jax.ShapeDtypeStruct(shape, np.float32, sharding=cpu)
                     for leaf, shape in leaves.items()}
              for name, leaves in expected_shapes().items()}
    try:
        # Plain checkpointers on the step's items (a read-only CheckpointManager logs warnings on every load).
        with ocp.StandardCheckpointer() as checkpointer:
            restored = {"params": checkpointer.restore(step_dir / "params", target)}
        with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
            restored["config"] = checkpointer.restore(step_dir / "config") if (step_dir / "config").exists() \
                else {}
    except Exception as e:  # Orbax reports structure and file problems with many exception types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(f"cannot read the decoder from checkpoint {step_dir}: {first}") from None
    params = {k: {leaf: np.asarray(v, np.float32) for leaf, v in leaves.items()}
              for k, leaves in restored["params"].items()}
    check_decoder_params(params)
    config = dict(restored["config"] or {})
    config.setdefault("vgg_weights", "adain")
    config["step"] = step
    return params, config


def resolve_vgg(name: str, last: str = "relu4_1") -> tuple[dict, Any]:
    """The encoder named by a training config's `vgg_weights`, trimmed to the layers up to `last`.

    Args:
      name: a registry name or weights file (`nst_jax.weights.load_vgg`), or "random" / "random:SPEC"
        (SPEC one of `nst_jax.vgg.SPECS`): seeded random weights with that identity, for tests only.
      last: the deepest tap that will be used.

    Returns:
      (params, VGGSpec).
    """
    import jax.numpy as jnp

    from nst_jax import vgg

    kind, _, spec_name = str(name).partition(":")
    if kind == RANDOM_VGG:
        spec_name = spec_name or "random"
        if spec_name not in vgg.SPECS:
            raise WeightsError(f"unknown VGG identity {spec_name!r} in {name!r}; "
                               f"known: {', '.join(vgg.SPECS)}")
        return _random_vgg(spec_name, last), vgg.SPECS[spec_name]
    from nst_jax.weights import load_vgg

    params, spec = load_vgg(name)
    vgg.check_vgg_params(params, spec, last)
    needed = vgg.expected_shapes(spec, last)
    return {k: {leaf: jnp.asarray(v, jnp.float32) for leaf, v in p.items()} for k, p in params.items()
            if k in needed}, spec


@functools.lru_cache(maxsize=4)
def _random_vgg(spec_name: str, last: str) -> dict:
    from nst_jax import vgg

    spec = vgg.SPECS[spec_name]
    # jitted: eager jax.random would compile one program per layer shape
    params = jax.jit(lambda key: vgg.init_params(key, spec, last))(jax.random.PRNGKey(0))
    return jax.tree.map(np.asarray, params)


def export_decoder(checkpoint: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write a checkpoint's decoder to our `.npz` format (`nst-jax stylize --decoder FILE` reads it).

    Returns:
      the path written.
    """
    from nst_jax.weights import save_npz

    params, config = load_decoder_checkpoint(checkpoint)
    meta = {"kind": "adain_decoder", "step": config["step"], "vgg_weights": config["vgg_weights"],
            "source": f"nst-jax training checkpoint {Path(checkpoint).name} step {config['step']}"}
    return save_npz(out, params, meta, overwrite=overwrite)
