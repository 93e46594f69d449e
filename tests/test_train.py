"""The training loop end to end: what a tiny AdaIN run writes (metrics, TensorBoard, sample grids, an exportable
decoder), mock tfds, divergence, data-parallel sharding over 4 devices, and the command line's errors.

Every family's "learns and resumes bitwise" is `test_train_families.py`; kill -9 at ten points, SIGTERM and full
disks are `test_faults.py`."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import helpers
from configs import tiny
from helpers import ROOT, subprocess_env
from nst_jax.errors import WeightsError
from nst_jax.models import trained
from nst_jax.train import TrainingDiverged, train_and_evaluate


def _events(workdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars and image tags of the TensorBoard event files (TFRecord framing, tensorboardX's protos)."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list] = {}
    for f in sorted(workdir.glob("events.out.tfevents*")):
        raw, i = f.read_bytes(), 0
        while i < len(raw):
            (n,) = struct.unpack("<Q", raw[i:i + 8])
            ev = event_pb2.Event()
            ev.ParseFromString(raw[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in ev.summary.value:
                value = v.simple_value if v.WhichOneof("value") == "simple_value" else "image"
                out.setdefault(v.tag, []).append((ev.step, value))
    return out


@pytest.mark.slow
def test_tiny_run_writes_metrics_tensorboard_and_sample_grids(trained_run):
    workdir, summary = trained_run("adain")
    assert summary["skipped"]["content"] >= 1 and summary["skipped"]["style"] == 0  # broken.jpg, every epoch
    records = helpers.metrics(workdir)
    for r in records:
        assert r["images_per_sec"] == pytest.approx(2 * r["steps_per_sec"])
    assert records[0]["learning_rate"] == pytest.approx(1e-3 / (1 + 5e-5 * 3))  # the step-4 record: 3 decays
    assert records[-1]["data/skipped_content"] >= 1
    events = _events(workdir)
    for tag in ("loss", "loss_content", "loss_style", "style/relu1_1", "learning_rate", "steps_per_sec",
                "images_per_sec", "grad_norm"):
        assert [s for s, _ in events[tag]] == [4, 8, 12], tag
    assert [s for s, _ in events["samples"]] == [6, 12]
    grid = np.asarray(Image.open(workdir / "samples" / "step_0000012.png"))
    # 2 samples x (content | style | output), 32 px cells, 2 px padding
    assert grid.shape == (2 + 2 * 34, 2 + 3 * 34, 3)
    assert json.loads((workdir / "config.json").read_text())["vgg_weights"] == "random"


@pytest.mark.slow
def test_load_decoder_checkpoint_and_export(trained_run, tmp_path):
    workdir, _ = trained_run("adain")
    params, config = trained.load_decoder_checkpoint(workdir)
    assert config["step"] == 12 and config["vgg_weights"] == "random" and config["image_size"] == 32
    assert params["conv4_1"]["kernel"].shape == (3, 3, 512, 256) and params["conv1_1"]["bias"].shape == (3,)
    p6, c6 = trained.load_decoder_checkpoint(workdir / "checkpoints" / "6")
    assert c6["step"] == 6
    assert not np.array_equal(p6["conv1_1"]["kernel"], params["conv1_1"]["kernel"])
    p12, _ = trained.load_decoder_checkpoint(workdir / "checkpoints")
    np.testing.assert_array_equal(p12["conv2_1"]["kernel"], params["conv2_1"]["kernel"])
    with pytest.raises(WeightsError, match="not a training checkpoint"):
        trained.load_decoder_checkpoint(tmp_path)
    with pytest.raises(WeightsError, match="not found"):
        trained.load_decoder_checkpoint(tmp_path / "missing")

    out = trained.export_decoder(workdir, tmp_path / "decoder.npz")
    from nst_jax.weights.npz import load_npz

    exported, meta = load_npz(out)
    assert meta["kind"] == "adain_decoder" and meta["step"] == 12
    np.testing.assert_array_equal(exported["conv3_1"]["kernel"], params["conv3_1"]["kernel"])
    with pytest.raises(WeightsError, match="exists"):
        trained.export_decoder(workdir, out)


@pytest.mark.slow
def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(trained_run, image_dirs, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained_run("adain")[0], workdir)
    before, _ = trained.load_decoder_checkpoint(workdir)
    config = helpers.tiny_config("adain", image_dirs, **dict(helpers.RUN_STEPS, num_steps=20,
                                                             content_weight=float("nan")))
    with pytest.raises(TrainingDiverged, match=r"non-finite at step 13 .*last good checkpoint is step 12"):
        train_and_evaluate(config, workdir)
    after, config = trained.load_decoder_checkpoint(workdir)
    assert config["step"] == 12
    for name in before:
        np.testing.assert_array_equal(after[name]["kernel"], before[name]["kernel"])


@pytest.mark.slow
def test_tiny_run_on_tfds_mock_data(tmp_path):
    """`tfds:dtd` (its builder needs no TensorFlow) from tfds.testing.mock_data: no download, no files."""
    import tensorflow_datasets as tfds

    c = tiny.get_config()
    c.progress = False
    c.num_steps, c.log_every, c.checkpoint_every, c.sample_every = 4, 2, 2, 4
    assert c.content_data == c.style_data == "tfds:dtd"
    with tfds.testing.mock_data(num_examples=8):
        summary = train_and_evaluate(c, tmp_path)
    assert summary["step"] == 4
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [2, 4]
    assert (tmp_path / "samples" / "step_0000004.png").exists()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


# ----------------------------------------------------------------------------------------------------
# Subprocesses: the real command line, kill -9, and several (emulated) devices


SHARDED = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    assert jax.device_count() == 4, jax.devices()
    sys.path.insert(0, {root!r})
    from configs import tiny
    from nst_jax import data, train
    from nst_jax.models import adain

    c = tiny.get_config()
    c.content_data, c.style_data = "folder:{content}", "folder:{style}"
    c.progress, c.batch_size, c.image_size, c.resize_size = False, 4, 32, 40
    c.num_steps, c.log_every, c.checkpoint_every, c.sample_every = 2, 1, 2, 2
    c.learning_rate = 1e-4
    # direct convolutions: this compares sharding, at tolerances below Winograd's rounding (1e-5 of the scale)
    c.convolutions = "direct"
    train.train_and_evaluate(c, {workdir!r})
    logged = [json.loads(l)["loss"] for l in open({workdir!r} + "/metrics.jsonl")]

    # The loop's first step again on one device: same initial decoder, same first batches.
    tx = train.make_optimizer(c)
    frozen, lc = adain.setup(c)
    vgg_params, spec = frozen["vgg"], lc.spec
    step4 = train.make_train_step(tx, adain.loss_fn, lc, train.make_mesh())
    aug = data.Augment(32, 40, min_side=c.min_image_side)
    seeds = np.random.SeedSequence(c.seed).generate_state(2)
    streams = [data.ImageStream(data.open_source(src), aug, batch_size=4, seed=int(s), threads=1)
               for src, s in zip((c.content_data, c.style_data), seeds)]
    from jax.sharding import NamedSharding, PartitionSpec as P

    def loss_and_grads(mesh):
        rep, dat = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
        f = jax.value_and_grad(lambda p, v, a, b: adain.compute_loss(p, v, a, b, spec, lc)[0])
        return jax.jit(f, in_shardings=(rep, rep, dat, dat))

    lg4, lg1 = loss_and_grads(train.make_mesh()), loss_and_grads(train.make_mesh(jax.devices()[:1]))
    state = train.init_state(jax.random.PRNGKey(c.seed), tx, adain.init_params)
    rows = []
    for _ in range(3):
        # the same state and batch on both meshes
        batch = next(streams[0]), next(streams[1])
        (l4, g4), (l1, g1) = lg4(state.params, vgg_params, *batch), lg1(state.params, vgg_params, *batch)
        d4, d1 = jax.tree.leaves(jax.tree.map(np.asarray, g4)), jax.tree.leaves(jax.tree.map(np.asarray, g1))
        layer_rel = max(float(np.linalg.norm(a - b) / np.linalg.norm(b)) for a, b in zip(d4, d1))
        grad_rel = float(np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(d4, d1))
                                 / sum(np.sum(b ** 2) for b in d1)))
        state, m4 = step4(state, frozen, {{"content": batch[0], "style": batch[1]}}, None)
        rows.append({{"loss4": float(l4), "loss1": float(l1), "step_loss": float(m4["loss"]),
                     "grad_rel": grad_rel, "layer_rel": layer_rel,
                     "replicated": all(x.sharding.is_fully_replicated for x in jax.tree.leaves(state)),
                     "devices_used": len(state.params["conv1_1"]["kernel"].sharding.device_set)}})
    print(json.dumps({{"logged": logged, "rows": rows, "devices": jax.device_count()}}))
""")


@pytest.mark.slow
def test_sharded_over_4_devices_matches_one_device(image_dirs, tmp_path):
    script = SHARDED.format(root=str(ROOT), content=image_dirs["content"].removeprefix("folder:"),
                            style=image_dirs["style"].removeprefix("folder:"),
                            workdir=str(tmp_path / "w"))
    # 1 and 4 devices agree to 1e-5 with the compiler users get (fusions round differently under the suite's setting)
    env = subprocess_env(tmp_path, devices=4, fast_compile=False)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4
    assert "(4 cpu device(s), global batch 4)" in out.stdout  # the loop's mesh spans the 4 devices
    rows = result["rows"]
    assert result["logged"][0] == pytest.approx(rows[0]["loss1"], rel=1e-5)  # the loop's sharded first step
    for r in rows:
        assert r["loss4"] == pytest.approx(r["loss1"], rel=1e-5)
        assert r["step_loss"] == pytest.approx(r["loss1"], rel=1e-5)
        assert r["grad_rel"] < 1e-5, rows  # the whole gradient, norm-wise
        # and every layer's: a small layer's gradient carries the batch split's float32 rounding relative to its
        # own norm (1.3e-4 on an AVX2 CPU); a sharding mistake (a missing mean, wrong slices) is O(1)
        assert r["layer_rel"] < 1e-3, rows
        assert r["replicated"] and r["devices_used"] == 4  # state replicated over the 4 devices


def test_command_line_errors_are_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config",
                          str(ROOT / "configs" / "tiny.py"), "--workdir", str(tmp_path / "w"),
                          f"--config.content_data=folder:{empty}"],
                         env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert f"train.py: error: no image files under {empty}" in out.stderr
    assert "Traceback" not in out.stderr
