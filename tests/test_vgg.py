"""Structure of nst_jax.vgg: taps, early stopping, specs, parameter checks, frozen weights, and the forward
pass against a plain PyTorch VGG19 built from the same (random) weights, for each padding and pooling."""

from __future__ import annotations

import json
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from nst_jax import ops, vgg
from nst_jax.errors import WeightsError


@pytest.fixture(scope="module")
def params():
    return vgg.init_params(jax.random.key(0), vgg.SPECS["random"], "relu5_4")


@pytest.fixture(scope="module")
def adain_params():
    return vgg.init_params(jax.random.key(1), vgg.SPECS["adain"], "relu4_1")


def _n_convs(fn, *args) -> int:
    jaxpr = jax.make_jaxpr(fn)(*args)
    count = 0

    def walk(jp):
        nonlocal count
        for eqn in jp.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                count += 1
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jaxpr.jaxpr)
    return count


def test_layer_tables():
    assert len(vgg.CONVS) == 16 and vgg.CONVS[0] == ("conv1_1", 3, 64)
    assert vgg.CONVS[-1] == ("conv5_4", 512, 512)
    assert vgg.LAYERS[:5] == ("conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1")
    assert len(vgg.LAYERS) == 16 * 2 + 5 and vgg.LAYERS[-1] == "pool5"
    assert vgg.RELU_TAPS[0] == "relu1_1" and len(vgg.RELU_TAPS) == 16
    assert vgg.deepest(("relu3_1", "relu1_1", "conv4_1", "pool3")) == "conv4_1"
    with pytest.raises(ValueError, match="relu6_1"):
        vgg.deepest(("relu1_1", "relu6_1"))


def test_tap_shapes_batch_and_non_square(params):
    x = jax.random.uniform(jax.random.key(2), (2, 32, 48, 3))
    taps = ("conv1_1", "relu1_1", "pool1", "relu2_1", "relu3_1", "relu4_1", "pool4", "relu5_1", "pool5")
    out = jax.jit(partial(vgg.encode, spec=vgg.SPECS["random"], taps=taps))(params, x)
    assert set(out) == set(taps)
    expected = {"conv1_1": (32, 48, 64), "relu1_1": (32, 48, 64), "pool1": (16, 24, 64),
                "relu2_1": (16, 24, 128), "relu3_1": (8, 12, 256), "relu4_1": (4, 6, 512),
                "pool4": (2, 3, 512),
                "relu5_1": (2, 3, 512), "pool5": (1, 1, 512)}
    for k, shape in expected.items():
        assert out[k].shape == (2,) + shape and out[k].dtype == jnp.float32
    assert float(jnp.min(out["relu1_1"])) >= 0.0 and float(jnp.min(out["conv1_1"])) < 0.0
    np.testing.assert_array_equal(out["relu1_1"], jax.nn.relu(out["conv1_1"]))


def test_ceil_mode_shapes_on_odd_sizes(adain_params):
    x = jax.ShapeDtypeStruct((1, 30, 45, 3), jnp.float32)  # shapes only: traced, never compiled
    out = jax.eval_shape(lambda p, v: vgg.encode(p, v, vgg.SPECS["adain"], ("relu2_1", "relu3_1", "relu4_1")),
                         adain_params, x)
    assert out["relu2_1"].shape == (1, 15, 23, 128)
    assert out["relu3_1"].shape == (1, 8, 12, 256)
    assert out["relu4_1"].shape == (1, 4, 6, 512)
    floor = jax.eval_shape(lambda p, v: vgg.encode(p, v, vgg.SPECS["adain"].replace(ceil_mode=False), ("relu4_1",)),
                           adain_params, x)
    assert floor["relu4_1"].shape == (1, 3, 5, 512)


@pytest.mark.parametrize("tap, n", [("relu1_1", 1), ("conv1_2", 2), ("pool2", 4), ("relu3_1", 5),
                                    ("relu4_1", 9), ("relu5_4", 16)])
def test_encoder_stops_at_the_deepest_tap(params, tap, n):
    x = jnp.zeros((1, 16, 16, 3), jnp.float32)
    # direct convolutions, so that every layer is one convolution in the trace (Winograd layers are products)
    enc = partial(vgg.encode, conv=ops.conv_plain)
    assert _n_convs(lambda p, a: enc(p, a, vgg.SPECS["torchvision"], ("relu1_1", tap)), params, x) == n
    # AdaIN's weights add their 1x1 preprocessing convolution.
    adain = vgg.init_params(jax.random.key(0), vgg.SPECS["adain"], tap)
    assert _n_convs(lambda p, a: enc(p, a, vgg.SPECS["adain"], (tap,)), adain, x) == n + 1


def test_truncated_params_suffice_up_to_their_last_layer(adain_params):
    assert set(adain_params) == {"conv0", "conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2",
                                 "conv3_3", "conv3_4", "conv4_1"}
    vgg.check_vgg_params(adain_params, vgg.SPECS["adain"], "relu4_1")
    out = jax.eval_shape(lambda p, v: vgg.encode(p, v, vgg.SPECS["adain"], ("relu4_1",)), adain_params,
                         jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))
    assert out["relu4_1"].shape == (1, 2, 2, 512)
    with pytest.raises(WeightsError, match="missing conv4_2"):
        vgg.check_vgg_params(adain_params, vgg.SPECS["adain"], "relu5_1")


@pytest.mark.parametrize("name", sorted(vgg.SPECS))
def test_spec_round_trip(name):
    spec = vgg.SPECS[name]
    d = spec.to_dict()
    assert vgg.VGGSpec.from_dict(d) == spec
    assert vgg.VGGSpec.from_dict(json.loads(json.dumps(d))) == spec  # lists come back as tuples
    assert spec.replace(pooling="avg").pooling == "avg" and spec.pooling == spec.pooling
    with pytest.raises(TypeError):
        vgg.VGGSpec.from_dict({**d, "colour": "blue"})


def test_check_vgg_params_names_keys_and_shapes(params):
    spec = vgg.SPECS["torchvision"]
    vgg.check_vgg_params(params, spec)
    bad = {k: dict(v) for k, v in params.items()}
    del bad["conv3_2"]
    bad["conv2_1"]["kernel"] = jnp.zeros((3, 3, 64, 127))
    bad["conv1_1"]["scale"] = jnp.ones(64)
    del bad["conv1_2"]["bias"]
    with pytest.raises(WeightsError) as e:
        vgg.check_vgg_params(bad, spec)
    msg = str(e.value)
    assert "missing conv3_2" in msg
    assert "conv2_1/kernel has shape (3, 3, 64, 127), expected (3, 3, 64, 128)" in msg
    assert "unexpected conv1_1/scale" in msg and "missing conv1_2/bias" in msg
    assert "VGG19 (torchvision)" in msg and "\n" not in msg
    with pytest.raises(WeightsError, match="unexpected fc6"):
        vgg.check_vgg_params({**params, "fc6": {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2)}}, spec)
    with pytest.raises(WeightsError, match="missing conv0"):
        vgg.check_vgg_params(params, vgg.SPECS["adain"])


def test_gradients_flow_to_the_input_only(params):
    x = jax.random.uniform(jax.random.key(4), (1, 16, 16, 3))

    def f(p, a):
        return jnp.sum(vgg.encode(p, a, vgg.SPECS["torchvision"], ("relu2_1",))["relu2_1"] ** 2)

    gp, gx = jax.jit(jax.grad(f, argnums=(0, 1)))(params, x)
    assert all(float(jnp.max(jnp.abs(leaf))) == 0.0 for leaf in jax.tree.leaves(gp))
    assert float(jnp.max(jnp.abs(gx))) > 0.0 and bool(jnp.all(jnp.isfinite(gx)))


def test_nnx_module_weights_are_frozen(adain_params):
    model = vgg.VGG19(adain_params, vgg.SPECS["adain"], last="relu4_1")
    assert not jax.tree.leaves(nnx.state(model, nnx.Param))
    assert isinstance(model.weights, vgg.FrozenWeights) and not isinstance(model.weights, nnx.Param)
    x = jax.random.uniform(jax.random.key(5), (1, 16, 16, 3))
    before = model(x, taps=("relu4_1",))["relu4_1"]
    np.testing.assert_array_equal(before, vgg.encode(adain_params, x, vgg.SPECS["adain"])["relu4_1"])

    class WithHead(nnx.Module):
        def __init__(self):
            self.encoder = model
            self.head = nnx.Param(jnp.ones((512,)))

        def __call__(self, a):
            return jnp.sum(self.encoder(a)["relu4_1"] * self.head[...].reshape(1, 1, 1, -1))

    net = WithHead()
    opt = nnx.Optimizer(net, optax.sgd(1.0), wrt=nnx.Param)
    grads = nnx.grad(lambda m: m(x))(net)
    opt.update(net, grads)
    np.testing.assert_array_equal(net.encoder(x)["relu4_1"], before)
    assert not np.allclose(net.head[...], 1.0)
    with pytest.raises(ValueError, match="relu4_1"):
        model(x, taps=("relu5_1",))
    with pytest.raises(WeightsError):
        vgg.VGG19({k: v for k, v in adain_params.items() if k != "conv2_2"}, vgg.SPECS["adain"], "relu4_1")


def test_make_encoder_matches_encode(params):
    x = jax.random.uniform(jax.random.key(6), (2, 16, 24, 3))
    enc = vgg.make_encoder(params, vgg.SPECS["keras"], ("relu1_1", "relu3_1"))
    out = enc(x)
    ref = vgg.encode(params, x, vgg.SPECS["keras"], ("relu1_1", "relu3_1"))
    for k in ref:
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-5, atol=1e-5)


def test_preprocess_follows_the_spec():
    x = np.asarray(jax.random.uniform(jax.random.key(7), (1, 2, 3, 3)))
    keras = vgg.preprocess(x, vgg.SPECS["keras"])
    np.testing.assert_allclose(keras, x[..., ::-1] * 255.0 - np.array([103.939, 116.779, 123.68]), rtol=1e-5,
                               atol=1e-4)
    tv = vgg.preprocess(x, vgg.SPECS["torchvision"])
    np.testing.assert_allclose(tv, (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(vgg.preprocess(x, vgg.SPECS["adain"]), x)  # conv0 does it for AdaIN


# A plain PyTorch VGG19 (the torchvision / pytorch-AdaIN layer stack) built from the same weights: pins the
# numerics of `encode` for every identity, whatever its internals do for speed.
def _torch_encode(p, x, spec, last):
    t = torch.from_numpy(np.asarray(vgg.preprocess(jnp.asarray(x), spec)).transpose(0, 3, 1, 2).copy())
    return _torch_features(p, t, spec, last).detach().numpy().transpose(0, 2, 3, 1)


def _torch_features(p, t, spec, last):
    """The layer stack on an already preprocessed NCHW tensor (differentiable)."""

    def conv(t, name, pad):
        w = torch.from_numpy(np.asarray(p[name]["kernel"]).transpose(3, 2, 0, 1).copy())
        b = torch.from_numpy(np.array(p[name]["bias"]))
        if pad == "reflect":
            return F.conv2d(F.pad(t, (1, 1, 1, 1), mode="reflect"), w, b)
        return F.conv2d(t, w, b, padding=pad)

    if spec.preconv:
        t = conv(t, "conv0", 0)
    for name in vgg.LAYERS:
        if name.startswith("conv"):
            t = conv(t, name, "reflect" if spec.padding == "reflect" else 1)
        elif name.startswith("relu"):
            t = F.relu(t)
        elif spec.pooling == "max":
            t = F.max_pool2d(t, 2, 2, ceil_mode=spec.ceil_mode)
        else:
            t = F.avg_pool2d(t, 2, 2, ceil_mode=spec.ceil_mode)
        if name == last:
            return t
    raise AssertionError(last)


@pytest.mark.parametrize("spec_name, pooling", [("torchvision", "max"), ("adain", "max"), ("adain", "avg"),
                                                ("keras", "avg")])
def test_encode_matches_a_plain_torch_vgg(spec_name, pooling):
    spec = vgg.SPECS[spec_name].replace(pooling=pooling)
    p = vgg.init_params(jax.random.key(8), spec, "relu4_1")
    if spec.preconv:  # AdaIN's conv0: x255, RGB -> BGR, minus a mean
        p["conv0"] = {"kernel": jnp.asarray(np.eye(3)[::-1].reshape(1, 1, 3, 3) * 255.0, jnp.float32),
                      "bias": jnp.asarray([-103.939, -116.779, -123.68], jnp.float32)}
        p = {k: {"kernel": v["kernel"] / (255.0 if k == "conv1_1" else 1.0), "bias": v["bias"]}
             for k, v in p.items()}
    x = np.random.default_rng(0).random((2, 27, 37, 3), dtype=np.float32)  # odd sizes exercise ceil mode
    taps = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
    out = jax.jit(partial(vgg.encode, spec=spec, taps=taps))(p, x)
    for tap in taps:
        ref = _torch_encode(p, x, spec, tap)
        assert out[tap].shape == ref.shape
        scale = float(np.abs(ref).max())
        np.testing.assert_allclose(out[tap], ref, rtol=1e-4, atol=1e-4 * scale)
    # Input gradients too (what Gatys and decoder training differentiate through).
    w = np.random.default_rng(1).standard_normal(out["relu3_1"].shape).astype(np.float32)
    gx = jax.jit(jax.grad(lambda a: jnp.sum(vgg.encode(p, a, spec, ("relu3_1",))["relu3_1"] * w)))(x)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    t = xt[..., [2, 1, 0]] if spec.channel_order == "BGR" else xt
    t = (t * spec.scale - torch.tensor(spec.mean)) / torch.tensor(spec.std)
    ref_g = _torch_features(p, t.permute(0, 3, 1, 2), spec, "relu3_1")
    (ref_g * torch.from_numpy(w.transpose(0, 3, 1, 2).copy())).sum().backward()
    gscale = float(np.abs(xt.grad.numpy()).max())
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-3, atol=1e-4 * gscale)
