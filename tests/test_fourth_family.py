"""A fourth family registered at run time (tests/toy_family.py) through every feature written on the contract:
`Stylizer` (indices, blends, masks, alpha), `nst-jax video --stabilize`, the live batcher's smoothing,
`nst-jax export` checked in onnxruntime, and the family-neutral training loop with an exact resume.

Nothing in nst_jax names the toy: it is registered here (`models.register`), and its trained workdir is what the
command line opens (`--model WORKDIR`).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import helpers
import toy_family as toy
from nst_jax import cli, models
from nst_jax.models.open import Loaded
from nst_jax.serve.batcher import Batcher, Job, stack_conditions
from nst_jax.smoothing import StatForward, StatSmoother
from nst_jax.stylize import Stylizer
from nst_jax.synthetic import synthetic_clip

H, W = 24, 32


@pytest.fixture(scope="module", autouse=True)
def family():
    """The toy registered at run time for this module (`models.register`), and unregistered after it."""
    models.register(toy.FAMILY)
    yield models.get(toy.NAME)
    models.unregister(toy.NAME)


@pytest.fixture(scope="module")
def stylizer(family) -> Stylizer:
    params = jax.tree.map(np.asarray, toy.init_params(jax.random.PRNGKey(3)))
    return Stylizer(Loaded(family, params, {}, toy.ToySpec(), "toy (random weights)"))


def _images(n: int = 2, seed: int = 0, hw: tuple[int, int] = (H, W)) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *hw, 3), np.float32)


def _reference(st: Stylizer, x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The network itself, unjitted, with weights (N, S) or maps (N, H, W, S)."""
    return np.asarray(toy.forward(st.params, x, weights, st.static)[0])


# ----------------------------------------------------------------------------------------------------
# 1. Stylizer (fast)


def test_stylizer_indices_blends_masks_and_alpha(stylizer):
    st = stylizer
    x = _images()
    assert st.family.name == toy.NAME and st.num_styles == 2 and st.caps.style_table
    one = np.eye(2, dtype=np.float32)
    s0, s1 = st.stylize(x, [0]), st.stylize(x, [1])
    np.testing.assert_allclose(s0, _reference(st, x, np.repeat(one[:1], 2, 0)), atol=1e-6)
    np.testing.assert_allclose(s1, _reference(st, x, np.repeat(one[1:], 2, 0)), atol=1e-6)
    assert np.abs(s0 - s1).mean() > 0.02  # the two rows are two styles

    # A blend of the two rows is the network with the mixed row; a weight vector as the style is the same.
    blend = st.stylize(x, [0, 1], weights=[0.25, 0.75])
    np.testing.assert_allclose(blend, _reference(st, x, np.tile([[0.25, 0.75]], (2, 1)).astype(np.float32)),
                               atol=1e-6)
    np.testing.assert_allclose(st.stylize(x, [np.array([0.25, 0.75], np.float32)]), blend, atol=1e-6)

    # Masks: style 0 on the left half, style 1 on the right; away from the seam (the last 3x3 conv reads one
    # pixel each side) each half is that style's whole-image output (the statistics are the content's).
    left = np.zeros((H, W), np.float32)
    left[:, : W // 2] = 1.0
    masked = st.stylize(x, [0, 1], masks=[left, 1.0 - left])
    np.testing.assert_allclose(masked[:, :, : W // 2 - 1], s0[:, :, : W // 2 - 1], atol=1e-6)
    np.testing.assert_allclose(masked[:, :, W // 2 + 1:], s1[:, :, W // 2 + 1:], atol=1e-6)
    maps = np.stack([left, 1.0 - left], -1)[None].repeat(2, 0)
    np.testing.assert_allclose(masked, _reference(st, x, maps), atol=1e-6)

    # Alpha 0 is the content itself (pixel mix, as the contract's table families define it); 0.5 the midpoint;
    # one alpha per image.
    np.testing.assert_array_equal(st.stylize(x, [1], alpha=0.0), x)
    np.testing.assert_allclose(st.stylize(x, [1], alpha=0.5), 0.5 * s1 + 0.5 * x, atol=1e-6)
    per = st.stylize(x, [1], alpha=[0.0, 1.0])
    np.testing.assert_array_equal(per[0], x[0])
    np.testing.assert_allclose(per[1], s1[1], atol=1e-6)
    # one content against every style in one pass; luminance colour preservation is on the caps
    np.testing.assert_allclose(st.stylize_each(x[:1], [0, 1]), np.concatenate([s0[:1], s1[:1]]), atol=1e-6)
    assert st.stylize(x, [0], preserve_color="luminance").shape == x.shape


# ----------------------------------------------------------------------------------------------------
# 3. The live batcher, plain and smoothed


SIZE, FRAMES = 16, 6


def _stream(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    still = rng.random((SIZE, SIZE, 3), np.float32)
    gain = 1 + rng.normal(0, 0.05, (FRAMES, 1, 1, 1))
    return np.clip(still[None] * gain + rng.normal(0, 0.03, (FRAMES, SIZE, SIZE, 3)), 0, 1).astype(np.float32)


def _run(batcher, frames, cond, smoothing, masks=None):
    return np.stack([batcher._call([Job(f, cond, 1.0, lambda o: None, smoothing=smoothing, stream=0,
                                        masks=masks)])[0] for f in frames])


@pytest.mark.slow
def test_live_batcher_smooths_the_toy(stylizer):
    st = stylizer
    cond = st.condition(1)
    batcher = Batcher(st, [SIZE], max_batch=2)
    batcher.warm()
    assert batcher.smoothing_supported()
    frames = _stream()
    plain = _run(batcher, frames, cond, 0.0)
    for f, g in zip(frames, plain, strict=True):  # strength 0: the exact per-frame output
        alone = np.asarray(st.stylize_conditions(f[None], stack_conditions([cond], 1), np.ones((1,), np.float32)))
        np.testing.assert_array_equal(g, alone[0])
    got = _run(batcher, frames, cond, 0.8)
    sf = StatForward(st)
    cond_n, alpha = stack_conditions([cond], FRAMES), np.ones((FRAMES,), np.float32)
    aux, own = sf.analyse(frames, cond_n, alpha)
    assert own["norm"].mean.shape == (FRAMES, 1, 1, toy.WIDTH)
    expect = np.asarray(sf.render(aux, cond_n, alpha, StatSmoother(0.8)(own)))
    np.testing.assert_allclose(got, expect, atol=2e-5)
    np.testing.assert_allclose(got[0], plain[0], atol=2e-5)  # the first frame has no past
    assert np.abs(got[1:] - plain[1:]).mean() > 1e-4
    # masked streams too: the two rows placed by halves, smoothed
    conds = jax.tree.map(lambda a, b: np.concatenate([a, b])[None], st.condition(0), cond)
    mask = np.zeros((SIZE, SIZE, 2), np.float32)
    mask[:, : SIZE // 2, 0], mask[:, SIZE // 2:, 1] = 1.0, 1.0
    masked = _run(Batcher(st, [SIZE], max_batch=2), frames, conds, 0.8, mask)
    cn = jax.tree.map(lambda v: np.repeat(v, FRAMES, axis=0), conds)
    mn = np.repeat(mask[None], FRAMES, axis=0)
    aux, own = sf.analyse(frames, cn, alpha, mn)
    np.testing.assert_allclose(masked, np.asarray(sf.render(aux, cn, alpha, StatSmoother(0.8)(own), mn)),
                               atol=2e-5)


# ----------------------------------------------------------------------------------------------------
# 5. Training: three steps straight = two, a restart, one more (bitwise); the workdir is the model below


def toy_config(dirs: dict[str, str], num_steps: int) -> ml_collections.ConfigDict:
    from configs import default

    c = default.get_config()
    c.model = toy.NAME
    c.toy = ml_collections.ConfigDict({"num_styles": 2, "colors": toy.DEFAULT_COLORS})
    c.content_data = dirs["content"]
    c.image_size, c.resize_size, c.min_image_side = 16, 24, 8
    c.data_threads, c.prefetch_batches = 2, 2
    c.batch_size, c.num_steps, c.learning_rate, c.lr_decay = 2, num_steps, 1e-2, 0.0
    c.content_weight, c.style_weight = 1.0, 10.0
    c.log_every, c.checkpoint_every, c.sample_every, c.num_samples = 1, 100, 100, 2
    c.progress = False
    return c


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return helpers.image_dirs(tmp_path_factory.mktemp("toy_data"), contents=5, styles=1)


@pytest.fixture(scope="module")
def workdir(dirs, tmp_path_factory):
    from nst_jax.train import train_and_evaluate

    wd = tmp_path_factory.mktemp("toy_run")
    summary = train_and_evaluate(toy_config(dirs, 3), wd)
    assert summary["step"] == 3 and summary["start_step"] == 0
    return wd


@pytest.mark.slow
def test_training_resumes_bitwise(workdir, dirs, tmp_path, capsys):
    from nst_jax.models import trained
    from nst_jax.train import train_and_evaluate

    records = helpers.metrics(workdir)
    assert [r["step"] for r in records] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in records)
    split = tmp_path / "split"
    assert train_and_evaluate(toy_config(dirs, 2), split)["step"] == 2
    capsys.readouterr()
    again = train_and_evaluate(toy_config(dirs, 3), split)
    assert again["start_step"] == 2 and again["step"] == 3
    assert "resuming from step 2" in "".join(capsys.readouterr())
    family, whole, config = trained.load_trained(workdir)
    _, resumed, _ = trained.load_trained(split)
    assert family.name == toy.NAME and config["step"] == 3
    helpers.assert_trees_equal(whole, resumed)
    assert [r["loss"] for r in helpers.metrics(split)] == [r["loss"] for r in records]
    # the steps changed the network
    start = jax.tree.map(np.asarray, toy.init_params(jax.random.PRNGKey(0), toy_config(dirs, 3)))
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(whole),
                                                        strict=True))


# ----------------------------------------------------------------------------------------------------
# 2. nst-jax video --stabilize on the trained workdir


@pytest.mark.slow
def test_video_stabilized_from_the_workdir(workdir, tmp_path, capsys):
    av = pytest.importorskip("av")
    from test_video import FPS, write_clip

    from nst_jax import video_writer as VW
    from nst_jax.demo import sample_image

    n = 6
    clip = synthetic_clip(sample_image("coffee", 128)[0], n, (H, W), "pan")
    src, out, report = tmp_path / "clip.mp4", tmp_path / "out.mp4", tmp_path / "flicker.json"
    write_clip(src, clip.frames, audio=False)
    argv = ["video", str(src), "--model", str(workdir), "-s", "1", "--content-size", "0", "--stabilize", "0.5",
            "--report", str(report), "-o", str(out)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    got = VW.output_streams(out)
    assert (got["frames"], got["width"], got["height"]) == (n, W, H)
    assert got["fps"] == FPS
    rep = json.loads(report.read_text())
    assert rep["stabilize"] == 0.5 and rep["frames"] == n and 0 < rep["ssim_to_per_frame"] <= 1
    with av.open(str(out)) as c:
        first = next(c.decode(video=0)).to_ndarray(format="rgb24").astype(np.float32) / 255
    assert np.abs(first - clip.frames[0]).mean() > 0.02  # the model ran


# ----------------------------------------------------------------------------------------------------
# 4. nst-jax export of the trained workdir, in onnxruntime


@pytest.mark.slow
def test_export_matches_jax_in_onnxruntime(workdir, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from test_export import TOL, _err, _jax, _nchw, _session

    from nst_jax.export import read_convention

    st = Stylizer.load_model(workdir)
    assert st.family.name == toy.NAME
    ins, baked = tmp_path / "toy.onnx", tmp_path / "toy_baked.onnx"
    assert cli.main(["export", str(workdir), "-o", str(ins)]) == 0
    assert cli.main(["export", str(workdir), "-s", "0", "-s", "1", "--style-weights", "0.3,0.7", "--layout", "nhwc",
                     "-o", str(baked)]) == 0
    assert "toy stylizer" in capsys.readouterr().out
    assert read_convention(ins)["metadata"]["family"] == toy.NAME
    s_in, s_baked = _session(ins), _session(baked)
    assert isinstance(s_in, ort.InferenceSession)
    w = np.array([[0.3, 0.7]], np.float32)
    for h, wd in ((37, 53), (30, 41)):
        x = _images(1, seed=h, hw=(h, wd))
        want = _jax(st, x, {"weights": jnp.asarray(w)})
        assert _err(s_in.run(None, {"image": _nchw(x), "style_weights": w})[0], _nchw(want)) < TOL
        assert _err(s_baked.run(None, {"image": x})[0], want) < TOL
        one = _jax(st, x, {"weights": jnp.asarray(np.eye(2, dtype=np.float32)[:1])})
        assert _err(s_in.run(None, {"image": _nchw(x), "style_weights": np.eye(2, dtype=np.float32)[:1]})[0],
                    _nchw(one)) < TOL
