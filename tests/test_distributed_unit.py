"""Multi-process pieces that need no second process: the launch settings, the per-process data shards, the time
split and the profiler's step range. tests/test_multihost.py runs real processes."""

from __future__ import annotations

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
