"""Every family on the family-neutral training loop, one test each (slow: real training loops).

A tiny run (12 steps on photo crops, `helpers.RUN_STEPS`) learns and writes its metrics, TensorBoard scalars,
sample grids and checkpoints; a run stopped at step 6 and restarted ends bitwise where the straight run ends;
the trained workdir stylizes through `nst-jax stylize --model WORKDIR`.
"""

from __future__ import annotations

import numpy as np
import pytest

import helpers
from nst_jax.image import load_image, save_image
from nst_jax.models import trained
from nst_jax.train import train_and_evaluate

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("family", helpers.FAMILIES)
def test_family_trains_and_resumes(family, trained_run, image_dirs, tmp_path, capsys):
    workdir, summary = trained_run(family)
    assert summary["step"] == 12 and summary["start_step"] == 0
    assert summary["skipped"]["content"] >= 1  # broken.jpg, skipped and counted
    records = helpers.metrics(workdir)
    assert [r["step"] for r in records] == [4, 8, 12]
    losses = [r["loss"] for r in records]
    assert all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses  # it learns
    for r in records:  # the logged loss is the sum of its weighted terms
        assert r["loss"] == pytest.approx(sum(v for k, v in r.items() if k.startswith("loss_")), rel=1e-5)
    assert helpers.checkpoint_steps(workdir) == [6, 12]
    assert sorted(p.name for p in (workdir / "samples").glob("*.png")) == ["step_0000006.png", "step_0000012.png"]
    assert list(workdir.glob("events.out.tfevents*"))

    # Stopped at step 6, then the same command to 12: bitwise the straight run (data positions included).
    split = tmp_path / "split"
    half = train_and_evaluate(helpers.tiny_config(family, image_dirs, **dict(helpers.RUN_STEPS, num_steps=6)), split)
    assert half["step"] == 6
    capsys.readouterr()
    again = train_and_evaluate(helpers.tiny_config(family, image_dirs, **helpers.RUN_STEPS), split)
    assert again["start_step"] == 6 and again["step"] == 12
    assert "resuming from step 6" in "".join(capsys.readouterr())
    _, whole, _ = trained.load_trained(workdir)
    _, resumed, _ = trained.load_trained(split)
    helpers.assert_trees_equal(whole, resumed)
    logged = {r["step"]: r["loss"] for r in helpers.metrics(split)}
    assert sorted(logged) == [4, 6, 8, 12]  # the stopped run logs its last step
    assert (logged[4], logged[12]) == (losses[0], losses[2])  # the same windows, the same means


@pytest.mark.parametrize("family", helpers.FAMILIES)
def test_trained_workdir_stylizes_through_the_command_line(family, trained_run, tmp_path):
    from nst_jax.cli import main
    from nst_jax.stylize import Stylizer

    workdir, _ = trained_run(family)
    loaded, _, config = trained.load_trained(workdir)
    assert loaded.name == family and config["step"] == 12
    rng = np.random.default_rng(5)
    content, style, out = tmp_path / "c.png", tmp_path / "s.png", tmp_path / "out.png"
    save_image(content, rng.uniform(0, 1, (32, 40, 3)).astype(np.float32))
    save_image(style, rng.uniform(0, 1, (40, 40, 3)).astype(np.float32))
    caps = Stylizer.load(checkpoint=workdir).caps
    by_row = caps.style_table and not caps.style_images  # a table family takes a row index, others any image
    assert main(["stylize", str(content), "--model", str(workdir), "--style", "1" if by_row else str(style),
                 "--content-size", "0", "-o", str(out)]) == 0
    img = np.asarray(load_image(out)).reshape(32, 40, 3)  # the content's size
    assert np.mean(np.abs(img - np.asarray(load_image(content)).reshape(32, 40, 3))) > 0.01
