"""Training with several processes for real: 2 processes x 2 CPU devices each, through `train.py`'s own flags
(`--coordinator`, `--num-processes`, `--process-id`), against 1 process x 4 devices; a process killed with
SIGKILL; a restart with another process count; an unreachable coordinator. The commands are docs/training.md's
"plain hosts" recipe, on localhost.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import subprocess_env
from nst_jax.models import trained

ROOT = Path(__file__).resolve().parents[1]
STEPS = 8
# Both topologies run the same program on 4 devices; "direct": no Winograd rounding in the comparison.
COMMON = ("--config.image_size=16", "--config.resize_size=20", "--config.batch_size=4",
          "--config.convolutions=direct", "--config.learning_rate=1e-4", "--config.progress=false",
          "--config.log_every=2",
          "--config.checkpoint_every=2", "--config.sample_every=1000", "--config.data_threads=1",
          f"--config.num_steps={STEPS}")


def _image(path: Path, h: int, w: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    a = np.stack([np.sin(xx / (2 + seed % 5)) * 127 + 128, np.cos(yy / (3 + seed % 7)) * 127 + 128,
                  rng.integers(0, 256, (h, w))], -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a.astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def image_dirs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    for i in range(7):
        _image(root / "content" / f"c{i}.jpg", 24 + 2 * i, 30 - i, i)
        _image(root / "style" / f"s{i}.png", 26, 22 + 2 * i, 100 + i)
    return root / "content", root / "style"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _cmd(workdir: Path, image_dirs, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "tiny.py"),
            "--workdir", str(workdir), f"--config.content_data=folder:{image_dirs[0]}",
            f"--config.style_data=folder:{image_dirs[1]}", *COMMON, *extra]


def _start_two(workdir: Path, image_dirs, tmp_path: Path, *extra: str, via_env: bool = False
               ) -> list[subprocess.Popen]:
    """The docs' recipe for plain hosts: the same command on each, with its --process-id (or `via_env`: the
    JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID variables). Each process's output goes to a file
    (a full pipe would stall it, and its peer with it), `proc.log`."""
    coordinator = f"localhost:{_free_port()}"
    procs = []
    for i in range(2):
        log = tmp_path / f"{workdir.name}-{_free_port()}-{i}.log"
        env = subprocess_env(tmp_path, 2)
        if via_env:
            env.update(JAX_COORDINATOR_ADDRESS=coordinator, JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))
            launch = []
        else:
            launch = [f"--coordinator={coordinator}", "--num-processes=2", f"--process-id={i}"]
        with log.open("w") as f:
            proc = subprocess.Popen(_cmd(workdir, image_dirs, *launch, "--coordinator-timeout=60",
                                         "--heartbeat-timeout=10", *extra),
                                    env=env, stdout=f, stderr=subprocess.STDOUT)
        proc.log = log
        procs.append(proc)
    return procs


def _wait(procs: list[subprocess.Popen], timeout: float = 240) -> list[str]:
    """Wait for every process (killing all if one overruns); their output."""
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    outs = [p.log.read_text() for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    return outs


def _params(workdir: Path) -> tuple[dict, int]:
    params, config = trained.load_decoder_checkpoint(workdir)
    return params, config["step"]


def _records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _finished(workdir: Path) -> list[int]:
    root = workdir / "checkpoints"
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() else []


@pytest.mark.slow
def test_two_processes_train_as_one_resume_after_sigkill_and_change_count(image_dirs, tmp_path):
    # (a) 1 process x 4 devices, then 2 processes x 2 devices: the same global batches, the same program.
    one = tmp_path / "one"
    out = subprocess.run(_cmd(one, image_dirs), env=subprocess_env(tmp_path, 4), capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    two = tmp_path / "two"
    outs = _wait(_start_two(two, image_dirs, tmp_path, "--config.profile_steps=3:4"))
    assert "(4 cpu device(s), global batch 4)" in outs[0], outs[0][-2000:]
    assert "compiled the train step" not in outs[1] and "done:" not in outs[1]  # process 0 alone speaks
    a, b = _records(one), _records(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [2, 4, 6, 8]
    for ra, rb in zip(a, b, strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4), (a, b)  # measured: 2e-7 to 2e-5
        assert sum(rb[f"time/{p}"] for p in ("data", "step", "checkpoint", "samples", "other")) == \
            pytest.approx(1.0, abs=1e-3)
    pa, step_a = _params(one)
    pb, step_b = _params(two)
    assert step_a == step_b == STEPS
    # Float rounding differs (the cross-process sum is gloo's, in another order), and Adam turns a gradient
    # element within rounding of zero into a full +-lr step either way; so compare each layer's difference with
    # how far that layer moved over the last half of the run, and bound single elements by Adam's steps.
    half, _ = trained.load_decoder_checkpoint(one / "checkpoints" / str(STEPS // 2))
    moved = {(k, leaf): float(np.linalg.norm(pb[k][leaf] - pa[k][leaf]) / np.linalg.norm(pa[k][leaf] - half[k][leaf]))
             for k in pa for leaf in ("kernel", "bias")}
    elem = max(float(np.max(np.abs(pb[k][leaf] - pa[k][leaf]))) for k in pa for leaf in ("kernel", "bias"))
    loss_rel = max(abs(rb["loss"] / ra["loss"] - 1) for ra, rb in zip(a, b, strict=True))
    print(f"2x2 vs 1x4 after {STEPS} steps: losses within {loss_rel:.1e} (relative); parameters: largest "
          f"layer difference {max(moved.values()):.1e} of its movement over the last {STEPS // 2} steps, largest "
          f"element difference {elem:.1e}")
    assert max(moved.values()) < 0.05, moved
    assert elem < 2 * 1e-4 * STEPS
    assert list((two / "profile").rglob("*.xplane.pb")), "process 0 writes the profile of steps 3:4"
    assert "time: data" in outs[0]  # the time split on the console

    # (c) SIGKILL process 1 mid-run: process 0 stops with an error in bounded time; the same two commands resume
    # bit-exactly to the uninterrupted 2-process run.
    killed = tmp_path / "killed"
    procs = _start_two(killed, image_dirs, tmp_path)
    deadline = time.monotonic() + 180
    while not _finished(killed) and procs[0].poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(procs[1].pid, signal.SIGKILL)
    t_kill = time.monotonic()
    try:
        procs[0].wait(timeout=60)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        raise AssertionError("process 0 did not exit within 60 s of process 1's SIGKILL") from None
    survived_s = time.monotonic() - t_kill
    procs[1].wait()
    survivor_out = procs[0].log.read_text()
    print(f"process 0 exited {survived_s:.1f} s after process 1's SIGKILL, status {procs[0].returncode}")
    saved = _finished(killed)
    assert saved and saved[-1] < STEPS, f"the kill must land mid-run (checkpoints: {saved})"
    assert procs[0].returncode != 0, survivor_out[-2000:]
    assert "Traceback" not in survivor_out, survivor_out[-3000:]
    outs = _wait(_start_two(killed, image_dirs, tmp_path, via_env=True))  # the environment's form of the same
    assert f"resuming from step {saved[-1]}" in outs[0], outs[0][-2000:]
    pk, step_k = _params(killed)
    assert step_k == STEPS
    for k in pb:
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(pk[k][leaf], pb[k][leaf], err_msg=f"{k}/{leaf}")

    # (d) Continue the 2-process run with 1 process: parameters and step are kept, the data starts afresh.
    out = subprocess.run(_cmd(two, image_dirs, f"--config.num_steps={STEPS + 2}"), env=subprocess_env(tmp_path, 4),
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    said = out.stdout + out.stderr
    assert f"checkpoint step {STEPS} was saved by 2 process(es) and this run has 1" in said, said[-2000:]
    assert "the data streams start again from their beginning" in said
    assert f"resuming from step {STEPS}" in said
    assert _params(two)[1] == STEPS + 2


@pytest.mark.slow
def test_unreachable_coordinator_is_a_one_line_error_within_the_timeout(image_dirs, tmp_path):
    port = _free_port()  # nothing listens there
    t0 = time.monotonic()
    out = subprocess.run(_cmd(tmp_path / "w", image_dirs, f"--coordinator=localhost:{port}", "--num-processes=2",
                              "--process-id=1", "--coordinator-timeout=3"),
                         env=subprocess_env(tmp_path, 2), capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"train.py: error: could not reach the coordinator at localhost:{port} within 3 s" in out.stderr
    assert "Traceback" not in out.stderr
    assert took < 60, took
    # process 0 alone: the coordinator runs, but the other process never comes
    alone = subprocess.run(_cmd(tmp_path / "w", image_dirs, f"--coordinator=localhost:{_free_port()}",
                                "--num-processes=2", "--process-id=0", "--coordinator-timeout=3"),
                           env=subprocess_env(tmp_path, 2), capture_output=True, text=True, timeout=120)
    assert alone.returncode == 2, alone.stderr[-2000:]
    assert "train.py: error: not every process of the 2 joined the run at localhost:" in alone.stderr
    assert "Traceback" not in alone.stderr and "Check failure" not in alone.stderr
    bad = subprocess.run(_cmd(tmp_path / "w", image_dirs, "--coordinator=localhost:1", "--num-processes=2",
                              "--process-id=2"), env=subprocess_env(tmp_path, 2), capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "train.py: error: the process id must be in [0, 2), got 2" in bad.stderr
