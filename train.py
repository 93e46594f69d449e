"""Train a style network of any family: `python train.py --config configs/adain.py --workdir runs/adain`
(the config's `model` names the family: `configs/adain.py`, `configs/cin.py`, ...).

Override any config key on the command line (`--config.batch_size=16
--config.style_data=folder:/data/wikiart`). Running the same command again resumes from the latest
checkpoint in --workdir. `--export FILE.npz` writes the latest checkpoint's decoder in nst-jax's weights
format instead of training. See docs/training.md.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard events and sample grids.")
flags.DEFINE_bool("distributed", False, "Join a multi-process run through jax.distributed, letting JAX detect "
                  "the cluster (TPU pods, SLURM, Open MPI, Kubernetes); implied by the flags below or by "
                  "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID.")
flags.DEFINE_string("coordinator", None, "HOST:PORT of process 0's coordinator (multi-process runs; default "
                    "$JAX_COORDINATOR_ADDRESS).")
flags.DEFINE_string("num-processes", None, "How many processes the run has (default $JAX_NUM_PROCESSES).")
flags.DEFINE_string("process-id", None, "This process's index, 0 .. num-processes - 1 (default $JAX_PROCESS_ID).")
flags.DEFINE_string("coordinator-timeout", "300", "Seconds to wait for the coordinator and every process to join.")
flags.DEFINE_string("heartbeat-timeout", "100", "Seconds without news from a process after which the others "
                    "stop with an error.")
flags.DEFINE_string("export", None,
                    "Write the latest checkpoint's decoder to this .npz and exit (no training).")
flags.DEFINE_bool("overwrite", False, "With --export: replace an existing file.")
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        # Orbax and JAX log every checkpoint step at INFO; the console has the progress bar and our own lines.
        absl_logging.set_verbosity(absl_logging.WARNING)
    from nst_jax.errors import NstError

    try:
        if FLAGS.export:
            from nst_jax.models.trained import export_decoder

            path = export_decoder(FLAGS.workdir, FLAGS.export, overwrite=FLAGS.overwrite)
            print(f"wrote {path}")
            return 0
        if FLAGS.config is None:
            raise NstError("--config is required (e.g. --config configs/adain.py)")
        import jax

        from nst_jax import distributed

        # Before anything touches JAX's devices: they belong to the run once the processes have joined.
        launch = distributed.resolve(FLAGS.coordinator, FLAGS["num-processes"].value, FLAGS["process-id"].value,
                                     auto=FLAGS.distributed, timeout_s=FLAGS["coordinator-timeout"].value,
                                     heartbeat_s=FLAGS["heartbeat-timeout"].value)
        if launch is not None:
            distributed.initialize(launch)
        if jax.devices()[0].platform == "cpu":
            # Keep freed buffers in the process: XLA's CPU runtime otherwise page-faults its scratch memory in
            # afresh on every step (NST_JAX_MALLOC=default turns this off).
            from nst_jax.runtime import tune_allocator

            tune_allocator()
        from nst_jax.train import TrainingDiverged, train_and_evaluate

        try:
            summary = train_and_evaluate(FLAGS.config, FLAGS.workdir)
        except TrainingDiverged as e:
            print(f"train.py: error: {e}", file=sys.stderr)
            return 1
        except NstError:
            raise
        except Exception as e:
            if launch is None:
                raise
            distributed.leave_failed_run(e)  # another process died mid-step, most likely: one line, exit 1
        if jax.process_index() == 0:
            loss = summary["loss"]
            print(f"done: step {summary['step']}" + (f", loss {loss:.4g}" if loss is not None else "")
                  + f"; checkpoints in {os.path.join(FLAGS.workdir, 'checkpoints')}")
        return 0
    except NstError as e:
        # library messages name parameters; this front door's flag for overwrite=True is --overwrite
        print(f"train.py: error: {str(e).replace('pass overwrite=True', 'pass --overwrite')}", file=sys.stderr)
        return 2


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as e:  # ml_collections: an override names a key the config lacks
        key = str(e).strip("\"'")
        print(f"train.py: error: the config has no key {key!r} (configs/default.py lists every key)",
              file=sys.stderr)
        sys.exit(2)
    except (ValueError, TypeError, IndexError) as e:  # ml_collections: an override path it cannot parse
        # ("--config.=1", "--config.model.x=1" where model is a string): one line, not its traceback
        print(f"train.py: error: bad --config override: {str(e).splitlines()[0][:200]}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
