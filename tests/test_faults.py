"""Faults during training: a full disk during a save, a corrupt newest checkpoint, SIGTERM, kill -9 anywhere.

Nothing the user had is lost: the previous checkpoint stays readable, a damaged one is set aside and the run
resumes from the one before (saying so), a preempted run saves and exits 0, and a run killed at any point
resumes to the same parameters as one never interrupted.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import helpers
from helpers import ROOT, subprocess_env
from nst_jax import checkpoints
from nst_jax.errors import NstError
from nst_jax.models import trained
from nst_jax.train import train_and_evaluate

_steps = helpers.checkpoint_steps


def _config(image_dirs, **overrides):
    return helpers.tiny_config("adain", image_dirs, **{"image_size": 16, "resize_size": 20, "num_steps": 4,
                                                      "checkpoint_every": 2, "log_every": 2,
                                                      "sample_every": 1000, **overrides})


def _params(workdir: Path, step: int | None = None) -> dict:
    path = workdir if step is None else workdir / "checkpoints" / str(step)
    params, _ = trained.load_decoder_checkpoint(path)
    return params


_assert_equal = helpers.assert_trees_equal


@pytest.fixture(scope="module")
def run4(image_dirs, tmp_path_factory) -> Path:
    """A finished tiny run with checkpoints at steps 2 and 4."""
    wd = tmp_path_factory.mktemp("faults") / "run4"
    train_and_evaluate(_config(image_dirs), wd)
    assert _steps(wd) == [2, 4]
    return wd


@pytest.mark.slow
def test_corrupt_newest_checkpoint_resumes_from_the_one_before_and_says_so(run4, image_dirs, tmp_path, capsys):
    wd = tmp_path / "wd"
    shutil.copytree(run4, wd)
    # Damage step 4 the way a bad disk or an interrupted copy would: every data file cut in half.
    for f in (wd / "checkpoints" / "4").rglob("*"):
        if f.is_file() and f.stat().st_size > 64:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    capsys.readouterr()
    summary = train_and_evaluate(_config(image_dirs, num_steps=6), wd)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "checkpoint step 4 is unreadable" in text and "resuming from step 2" in text, text
    assert summary["start_step"] == 2 and summary["step"] == 6
    assert _steps(wd) == [2, 4, 6]  # step 4 written afresh
    assert list((wd / "checkpoints").glob("corrupt-4-*")), "the damaged checkpoint is kept aside"
    # Resuming from 2 replays the same steps: the new step 4 is the original one.
    _assert_equal(_params(run4, 4), _params(wd, 4))


@pytest.mark.slow
def test_half_written_newest_checkpoint_is_ignored(run4, image_dirs, tmp_path, capsys):
    wd = tmp_path / "wd"
    shutil.copytree(run4, wd)
    # A save killed midway leaves Orbax's temporary folder and no finished step 6.
    shutil.copytree(wd / "checkpoints" / "4", wd / "checkpoints" / "6.orbax-checkpoint-tmp")
    for f in (wd / "checkpoints" / "6.orbax-checkpoint-tmp").rglob("*"):
        if f.is_file():
            f.write_bytes(b"")
    capsys.readouterr()
    train_and_evaluate(_config(image_dirs, num_steps=4), wd)
    text = "".join(capsys.readouterr())
    assert "nothing to do: the checkpoint is at step 4" in text, text


@pytest.mark.slow
def test_disk_full_during_a_save_keeps_the_previous_checkpoint_and_stops_with_one_line(
        run4, image_dirs, tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    wd = tmp_path / "wd"
    shutil.copytree(run4, wd)
    real_save = ocp.CheckpointManager.save

    def full_disk(self, step, *args, **kwargs):
        if step == 6:
            # what a full disk leaves: a partial temporary folder, then the OS error
            tmp = Path(self.directory) / "6.orbax-checkpoint-tmp" / "params"
            tmp.mkdir(parents=True)
            (tmp / "partial").write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
    with pytest.raises(checkpoints.CheckpointError) as e:
        train_and_evaluate(_config(image_dirs, num_steps=8), wd)
    msg = str(e.value)
    assert isinstance(e.value, NstError) and "\n" not in msg
    assert "could not write checkpoint step 6" in msg and "no space left on device" in msg
    assert "previous checkpoint (step 4) is intact" in msg, msg
    assert _steps(wd) == [2, 4]
    _assert_equal(_params(run4, 4), _params(wd))
    # Space freed: the same command resumes from step 4 (and clears the partial folder).
    monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
    summary = train_and_evaluate(_config(image_dirs, num_steps=6), wd)
    assert summary["start_step"] == 4 and _steps(wd) == [2, 4, 6]
    assert not list((wd / "checkpoints").glob("*tmp*"))


def test_io_errors_are_recognised_in_orbax_wrappers():
    wrapped = ValueError('RESOURCE_EXHAUSTED: Failed to write 11800576 bytes to file 4: No space left on device '
                         "[os_error_code='28']")
    assert checkpoints._io_reason(wrapped) == "no space left on device"
    assert checkpoints._io_reason(OSError(errno.EDQUOT, "quota")) == "no space left on device"
    assert checkpoints._io_reason(KeyError("params")) is None
    with pytest.raises(checkpoints.CheckpointError, match="^saving: no space left on device$"):
        checkpoints.checked_io("saving", lambda: (_ for _ in ()).throw(wrapped))
    with pytest.raises(KeyError):
        checkpoints.checked_io("saving", lambda: {}["x"])


# ------------------------------------------------------------------------------------------------------------
# Real processes: SIGTERM, a real full disk (tmpfs), kill -9 at seeded random points


def _cmd(workdir: Path, image_dirs, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "tiny.py"),
            "--workdir", str(workdir), f"--config.content_data={image_dirs['content']}",
            f"--config.style_data={image_dirs['style']}", "--config.progress=false",
            "--config.image_size=16", "--config.resize_size=20", "--config.sample_every=1000", *extra]


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_0(image_dirs, tmp_path):
    wd = tmp_path / "wd"
    proc = subprocess.Popen(_cmd(wd, image_dirs, "--config.num_steps=100000", "--config.checkpoint_every=100000",
                                 "--config.log_every=1"),
                            env=subprocess_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (wd / "metrics.jsonl").exists() or not (wd / "metrics.jsonl").read_text().strip():
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-2000:]
    steps = _steps(wd)
    assert len(steps) == 1 and 0 < steps[0] < 100000, steps
    assert f"stopping at step {steps[0]} (checkpoint saved)" in out, out[-2000:]
    assert "Traceback" not in out


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


@pytest.mark.slow
def test_a_real_full_disk_stops_with_one_error_line_and_keeps_the_previous_checkpoint(image_dirs, tmp_path):
    mnt = tmp_path / "small_disk"
    # One tiny-run checkpoint (decoder + Adam state) is about 30 MB: the second does not fit.
    if not _mount_tmpfs(mnt, "45m"):
        pytest.skip("cannot mount a small tmpfs here (needs root); the injected-fault test covers the logic")
    try:
        wd = mnt / "wd"
        p = subprocess.run(_cmd(wd, image_dirs, "--config.num_steps=4", "--config.checkpoint_every=2"),
                           env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=300)
        assert p.returncode == 2, p.stderr[-2000:]
        # TensorStore's stray "Event loop is closed" tracebacks (a known, unfixed leak) may share a line with ours
        errors = [ln[ln.index("train.py: error:"):] for ln in p.stderr.splitlines() if "train.py: error:" in ln]
        assert len(errors) == 1 and "no space left on device" in errors[0], p.stderr[-3000:]
        assert "previous checkpoint (step 2) is intact" in errors[0]
        assert _steps(wd) == [2]
        trained.load_decoder_checkpoint(wd / "checkpoints" / "2")  # still readable
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30)


@pytest.mark.slow
def test_kill_9_at_ten_seeded_random_points_always_resumes_to_the_same_parameters(image_dirs, tmp_path):
    steps = 14
    args = (f"--config.num_steps={steps}", "--config.checkpoint_every=1", "--config.log_every=1",
            "--config.max_checkpoints=2")
    env = subprocess_env(tmp_path)
    straight = tmp_path / "straight"
    done = subprocess.run(_cmd(straight, image_dirs, *args), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    rng = np.random.default_rng(15)
    targets = sorted(rng.choice(np.arange(1, steps), size=10, replace=False).tolist())
    delays = rng.uniform(0.0, 0.4, size=10)  # past the target checkpoint: often mid-step or mid-save
    killed = tmp_path / "killed"
    landed = []
    for target, delay in zip(targets, delays, strict=True):
        proc = subprocess.Popen(_cmd(killed, image_dirs, *args), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 240
        while (not _steps(killed) or _steps(killed)[-1] < target) and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        landed.append(_steps(killed)[-1] if _steps(killed) else 0)
    assert len(set(landed)) >= 5, f"the kills should land at many points: {landed}"
    resumed = subprocess.run(_cmd(killed, image_dirs, *args), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_equal(_params(straight), _params(killed))
    assert _steps(killed)[-1] == steps
