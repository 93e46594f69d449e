"""Multi-process pieces that need no second process: the launch settings, joining a run (with JAX's initialize
replaced), leaving a failed run, gathering JSON from every process, the per-process data shards, the time split and
the profiler's step range. tests/test_multihost.py runs real processes."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image

from nst_jax import data, distributed
from nst_jax.data import Augment, ImageStream
from nst_jax.distributed import DistributedError, Launch
from nst_jax.errors import NstError
from nst_jax.training import IndexStream, Window, parse_profile_steps, time_split_line


@pytest.fixture
def distinct_images(tmp_path):
    """Ten 16 x 16 images, each a different flat grey: a 16 px crop of one names the file it came from."""
    for i in range(10):
        Image.fromarray(np.full((16, 16, 3), 20 * i, np.uint8)).save(tmp_path / f"{i:02d}.png")
    return data.open_source(f"folder:{tmp_path}")


WHOLE = Augment(image_size=16, resize_size=0, min_side=1)  # no resize: the crop is the whole image


def _ids(batch: np.ndarray) -> list[int]:
    return [round(float(x[0, 0, 0]) * 255 / 20) for x in batch]


def test_shards_are_disjoint_and_their_union_is_the_one_process_stream(distinct_images):
    """Global batch 4 over 2 processes: each global batch, concatenated in process order, is the one-process
    batch, and within an epoch the processes read disjoint files."""
    one = ImageStream(distinct_images, WHOLE, batch_size=4, seed=3, threads=2)
    parts = [ImageStream(distinct_images, WHOLE, batch_size=2, seed=3, shard_index=p, shard_count=2, threads=1)
             for p in range(2)]
    seen: list[list[int]] = [[], []]
    for _ in range(7):  # 28 images: crosses two epoch boundaries (10 files)
        want = next(one)
        got = [next(s) for s in parts]
        np.testing.assert_array_equal(np.concatenate(got), want)
        for p in range(2):
            seen[p] += _ids(got[p])
    # The first epoch is the first 10 elements of the global stream: 4 + 4 in whole batches, then 2 + 0.
    first_epoch = seen[0][:4] + seen[1][:4] + seen[0][4:6]
    assert sorted(first_epoch) == list(range(10))
    assert not set(seen[0][:4]) & set(seen[1][:4])
    # The slices' positions are exact resumable states of their own.
    state = parts[1].get_state()
    again = ImageStream(distinct_images, WHOLE, batch_size=2, seed=3, shard_index=1, shard_count=2, threads=2)
    again.set_state(state)
    np.testing.assert_array_equal(next(again), next(parts[1]))


def test_three_processes_and_a_skipped_image(distinct_images, tmp_path):
    """Any process count gives the same global batches; a bad file is skipped by the process that meets it."""
    one = ImageStream(distinct_images, WHOLE, batch_size=6, seed=5, threads=1)
    parts = [ImageStream(distinct_images, WHOLE, batch_size=2, seed=5, shard_index=p, shard_count=3, threads=1)
             for p in range(3)]
    for _ in range(3):
        np.testing.assert_array_equal(np.concatenate([next(s) for s in parts]), next(one))
    (tmp_path / "05.png").write_bytes(b"broken")
    src = data.open_source(f"folder:{tmp_path}")
    parts = [ImageStream(src, WHOLE, batch_size=2, seed=5, shard_index=p, shard_count=3, threads=1,
                         on_skip=lambda s, n: None) for p in range(3)]
    for _ in range(4):
        for s in parts:
            assert 5 not in _ids(next(s))
    assert sum(s.skipped for s in parts) >= 1


def test_a_source_of_bad_images_is_an_error_in_every_process(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(b"garbage")
    src = data.open_source(f"folder:{tmp_path}")
    for p in range(2):
        stream = ImageStream(src, WHOLE, batch_size=1, seed=0, shard_index=p, shard_count=2, threads=1,
                             on_skip=lambda s, n: None)
        with pytest.raises(data.DataError, match="none of the 3 images"):
            next(stream)


def test_index_stream_shards_reproduce_the_one_process_draws():
    one = IndexStream(26, 6, seed=4, shard_count=1)
    parts = [IndexStream(26, 2, seed=4, shard_index=p, shard_count=3) for p in range(3)]
    for _ in range(5):
        np.testing.assert_array_equal(np.concatenate([next(s) for s in parts]), next(one))


def test_launch_settings_from_flags_and_environment():
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert distributed.resolve(environ={}) is None  # one process: nothing to join
    assert distributed.resolve(environ=env) == Launch("10.0.0.1:1234", 4, 3, 300, 100)
    # flags win over the environment
    got = distributed.resolve("h:99", "2", "1", timeout_s="7.5", heartbeat_s=20, environ=env)
    assert got == Launch("h:99", 2, 1, 8, 20)


@pytest.mark.parametrize("kwargs, message", [
    (dict(coordinator="nohost"), "HOST:PORT"),
    (dict(coordinator="h:99999", num_processes=2, process_id=0), "HOST:PORT"),
    (dict(coordinator="h:1", num_processes="two", process_id=0), "--num-processes must be an integer"),
    (dict(coordinator="h:1", num_processes=2, process_id=2), r"process id must be in \[0, 2\)"),
    (dict(coordinator="h:1", num_processes=0, process_id=0), "must be positive"),
    (dict(coordinator="h:1", num_processes=2, process_id=0, timeout_s="soon"), "--coordinator-timeout"),
    (dict(coordinator="h:1", num_processes=2, process_id=0, heartbeat_s=-1), "--heartbeat-timeout"),
    (dict(coordinator="h:1"), "needs --num-processes, --process-id"),
    (dict(auto=True), "needs --coordinator, --num-processes, --process-id"),
])
def test_bad_launch_settings_are_one_line_errors(kwargs, message, monkeypatch):
    monkeypatch.setattr(distributed, "_cluster_detected", lambda: False)
    with pytest.raises(DistributedError, match=message) as e:
        distributed.resolve(environ={}, **kwargs)
    assert "\n" not in str(e.value) and isinstance(e.value, NstError)


def test_time_split_and_profile_steps():
    w = Window()
    w.rows.append({"loss": np.float32(2.0), "finite": np.bool_(True)})
    with w.timed("data"):
        time.sleep(0.02)
    with w.timed("step"):
        time.sleep(0.05)
    s = w.summary(batch=4)
    parts = [s[f"time/{p}"] for p in ("data", "step", "checkpoint", "samples", "other")]
    assert sum(parts) == pytest.approx(1.0, abs=1e-6)
    assert s["time/step"] > s["time/data"] > 0 and s["time/checkpoint"] == 0
    assert s["data_wait_frac"] == s["time/data"]
    assert time_split_line(s).startswith("data ") and "checkpoint 0%" in time_split_line(s)
    assert parse_profile_steps("") is None and parse_profile_steps(" 3:5 ") == (3, 5)
    for bad in ("3", "5:3", "0:2", "a:b", "3:"):
        with pytest.raises(NstError, match="profile_steps must be 'A:B'"):
            parse_profile_steps(bad)


def test_profiler_writes_a_trace_of_the_chosen_steps(tmp_path):
    import jax.numpy as jnp

    from nst_jax.training import Profiler

    prof = Profiler("2:3", tmp_path, enabled=True)
    x = jnp.ones(8)
    for step in range(1, 6):
        prof.before(step)
        x = x * 2
        prof.after(step, x)
        assert prof.active == (step == 2)
    traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
    assert prof.written == tmp_path / "profile" and len(traces) == 1 and traces[0].stat().st_size > 0
    assert list((tmp_path / "profile").rglob("perfetto_trace.json.gz"))
    assert Profiler("2:3", tmp_path / "other", enabled=False).steps is None  # processes other than 0


# ----------------------------------------------------------------------------------------------------------------
# Joining a run, in this process: JAX's own initialize is replaced where it would really connect


@pytest.fixture
def listening():
    """A TCP port that accepts connections: ("localhost:<port>", port)."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        s.listen()
        port = s.getsockname()[1]
        yield f"localhost:{port}", port


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_coordinator_port_checks(listening):
    address, port = listening
    with pytest.raises(DistributedError, match=f"cannot serve the coordinator on port {port}: it is in use"):
        distributed._check_port_free(address)
    distributed._check_port_free(f"localhost:{_closed_port()}")  # free: no error
    distributed._wait_for_coordinator(address, 2)  # accepts at once
    t0 = time.monotonic()
    with pytest.raises(DistributedError, match=r"could not reach the coordinator at localhost:\d+ within 0.5 s"):
        distributed._wait_for_coordinator(f"localhost:{_closed_port()}", 0.5)
    assert time.monotonic() - t0 < 5
    assert distributed._host_port("[::1]:8476") == ("::1", 8476)


def test_platform_and_cluster_detection(monkeypatch):
    import jax
    from jax._src import clusters

    before = jax.config.jax_platforms
    try:
        jax.config.update("jax_platforms", "cpu")
        assert distributed.cpu_platform()
        jax.config.update("jax_platforms", "cuda,cpu")
        assert not distributed.cpu_platform()
        jax.config.update("jax_platforms", None)
        monkeypatch.setenv("JAX_PLATFORMS", "")
        plugins = ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin")
        import importlib.util

        want = not any(importlib.util.find_spec(p) is not None for p in plugins)
        assert distributed.cpu_platform() == want
    finally:
        jax.config.update("jax_platforms", before)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert distributed._cluster_detected() in (True, False)
    monkeypatch.setattr(clusters.ClusterEnv, "_cluster_types", [object()])  # the private API changed shape
    assert distributed._cluster_detected() is True  # then JAX decides


@pytest.fixture
def fake_jax_join(monkeypatch):
    """`distributed.initialize` as in a fresh process, with JAX's `initialize` recorded or made to fail."""
    import jax
    from jax._src import xla_bridge

    calls: list = []
    state = {"error": None}

    def fake_initialize(**kwargs):
        calls.append(kwargs)
        if state["error"] is not None:
            raise state["error"]

    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", fake_initialize)
    monkeypatch.setattr(distributed, "cpu_platform", lambda: True)
    updates: list = []
    monkeypatch.setattr(jax.config, "update", lambda name, value: updates.append((name, value)))
    monkeypatch.delenv("JAX_CPU_COLLECTIVES_IMPLEMENTATION", raising=False)
    return calls, state, updates


def test_initialize_checks_first_then_joins_with_gloo_on_cpu(fake_jax_join, listening):
    calls, state, updates = fake_jax_join
    address, _ = listening
    # a later process waits for the coordinator, then joins with the launch's settings
    distributed.initialize(Launch(address, 2, 1, timeout_s=3, heartbeat_s=7))
    assert calls == [dict(coordinator_address=address, num_processes=2, process_id=1, initialization_timeout=13,
                          heartbeat_timeout_seconds=7)]
    assert updates == [("jax_cpu_collectives_implementation", "gloo")]
    # process 0 needs the coordinator's port free
    with pytest.raises(DistributedError, match="it is in use"):
        distributed.initialize(Launch(address, 2, 0))
    assert len(calls) == 1  # refused before JAX was asked


@pytest.mark.parametrize("error, message", [
    (RuntimeError("DEADLINE_EXCEEDED: Barrier timed out\n  at ..."), "could not reach the coordinator at h:1 "
                                                                     "within 300 s"),
    (ValueError("Number of processes must be\ndefined"), "could not join the run through h:1: Number of "
                                                         "processes must be defined"),
])
def test_initialize_failures_are_one_line(fake_jax_join, monkeypatch, error, message):
    calls, state, _ = fake_jax_join
    state["error"] = error
    monkeypatch.setattr(distributed, "_wait_for_coordinator", lambda address, timeout: None)
    with pytest.raises(DistributedError, match=message) as e:
        distributed.initialize(Launch("h:1", 2, 1))
    assert "\n" not in str(e.value)


def test_initialize_once_and_never_after_the_devices(monkeypatch):
    import jax

    # in this process the devices are in use already: too late to join a run
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    with pytest.raises(DistributedError, match="before JAX's devices are used"):
        distributed.initialize(Launch("h:1", 2, 1))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    distributed.initialize(Launch("h:1", 2, 1))  # a second call does nothing


def test_leaving_a_run_is_one_line_and_an_immediate_exit(monkeypatch, capsys):
    import os

    codes: list = []

    def fake_exit(code):
        codes.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(os, "_exit", fake_exit)
    with pytest.raises(SystemExit):
        distributed.leave_failed_run(RuntimeError("Gloo\nconnection closed by peer"))
    with pytest.raises(SystemExit):
        distributed._not_everyone_joined(Launch("h:1", 3, 2, timeout_s=9))
    err = capsys.readouterr().err.splitlines()
    assert codes == [1, 2] and len(err) == 2
    assert err[0].startswith("train.py: error: process 0 of 1 stopped: Gloo connection closed by peer.")
    assert "resumes from its last checkpoint" in err[0]
    assert "not every process of the 3 joined the run at h:1 within 9 s" in err[1]


def test_allgather_json_packs_unequal_lengths(monkeypatch):
    """Every process's JSON, padded to the longest and cut back: simulated with a second process whose object
    is longer than this one's."""
    import jax
    from jax.experimental import multihost_utils

    from nst_jax.training import allgather_json

    assert allgather_json({"a": 1}) == [{"a": 1}]  # one process: no collective
    mine, peer = {"step": 3}, {"step": 3, "skipped": ["x" * 40]}
    peer_raw = np.frombuffer(json.dumps(peer).encode(), np.uint8)

    def fake_allgather(x):
        x = np.asarray(x)
        if x.dtype == np.int32:  # the sizes
            return np.stack([x, np.array([peer_raw.size], np.int32)])
        other = np.zeros(x.size, np.uint8)
        other[:peer_raw.size] = peer_raw
        return np.stack([x, other])

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "process_allgather", fake_allgather)
    assert allgather_json(mine) == [mine, peer]


def test_stop_flag_index_stream_progress_and_config_notes(tmp_path, capsys):
    import signal

    from nst_jax.training import StopFlag, report_progress, warn_config_changes

    flag = StopFlag(sigterm=False)
    flag._handle(signal.SIGTERM, None)
    assert flag.requested
    with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C interrupts
        flag._handle(signal.SIGINT, None)
    with pytest.raises(ValueError, match="at least one index"):
        IndexStream(0, 2, seed=0, shard_count=1)
    stream = IndexStream(5, 2, seed=0, shard_count=1)
    assert iter(stream) is stream

    class Bar:
        def set_postfix(self, refresh=True, **shown):
            self.shown = shown

    bar = Bar()
    scalars = {"loss": 1.5, "loss_content": 0.5, "loss_style": 1.0, "images_per_sec": 12.0,
               **{f"time/{p}": 0.2 for p in ("data", "step", "checkpoint", "samples", "other")}}
    report_progress(7, scalars, bar)
    assert bar.shown == {"loss": "1.5", "content": "0.5", "style": "1", "img_s": "12"}
    assert "step 7: loss 1.5, 12 images/s; time: data 20%" in capsys.readouterr().out
    (tmp_path / "config.json").write_text("{not json")
    warn_config_changes(tmp_path, {"lr": 1}, lead=True)  # an unreadable old config: nothing to compare
    (tmp_path / "config.json").write_text('{"lr": 2}')
    warn_config_changes(tmp_path, {"lr": 1}, lead=False)  # not process 0: silent
    assert capsys.readouterr().out == ""
    warn_config_changes(tmp_path, {"lr": 1}, lead=True)
    assert "lr: 2 -> 1" in capsys.readouterr().out
