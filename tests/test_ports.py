"""Ports of every weight format, checked number for number against the framework that defines it.

Random weights are written in the real file formats (torch.save both ways, Keras HDF5 both ways); the
reference networks are written here as plain torch.nn / keras.applications models.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
nn = torch.nn

from nst_jax import vgg  # noqa: E402
from nst_jax.errors import DownloadError, WeightsError  # noqa: E402
from nst_jax.models import decoder as decoder_model  # noqa: E402
from nst_jax.weights import load_decoder, load_npz, load_vgg, save_npz  # noqa: E402
from nst_jax.weights.ports import adain_indices, torchvision_indices  # noqa: E402

TOL = 1e-4
CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
ALL_TAPS = vgg.RELU_TAPS + ("conv1_1", "conv3_2", "conv5_4", "pool2", "pool4")


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _init(model: nn.Module, seed: int = 0) -> nn.Module:
    """He-normal kernels keep activations O(1) through 16 layers, so deep taps are a real comparison."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                m.bias.copy_((torch.rand(m.bias.shape, generator=g) - 0.5) * 0.2)
    return model.eval()


def torchvision_features(pool: str = "max", upto: int | None = None) -> tuple[nn.Sequential, dict[str, int]]:
    """torchvision's `vgg19().features` layout; returns the module and {tap: index of its module}."""
    layers, taps, c, b, i = [], {}, 3, 1, 1
    for v in CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2) if pool == "max" else nn.AvgPool2d(2, 2))
            taps[f"pool{b}"] = len(layers) - 1
            b, i = b + 1, 1
        else:
            layers.append(nn.Conv2d(c, v, 3, padding=1))
            taps[f"conv{b}_{i}"] = len(layers) - 1
            layers.append(nn.ReLU())
            taps[f"relu{b}_{i}"] = len(layers) - 1
            c, i = v, i + 1
    layers = layers[:upto]
    return _init(nn.Sequential(*layers)), {k: v for k, v in taps.items() if v < len(layers)}


def adain_encoder(pool: str = "max", upto: int | None = None) -> tuple[nn.Sequential, dict[str, int]]:
    """pytorch-AdaIN's net.vgg: 1x1 conv0, [ReflectionPad2d, Conv2d, ReLU] per conv, MaxPool2d(ceil_mode)
    between blocks; `upto=31` is the usual truncation at relu4_1."""
    layers, taps, c, b, i = [nn.Conv2d(3, 3, 1)], {}, 3, 1, 1
    for v in CFG[:-1]:  # no pool after relu5_4
        if v == "M":
            pool_cls = nn.MaxPool2d if pool == "max" else nn.AvgPool2d
            layers.append(pool_cls(2, 2, 0, ceil_mode=True))
            taps[f"pool{b}"] = len(layers) - 1
            b, i = b + 1, 1
        else:
            layers += [nn.ReflectionPad2d(1), nn.Conv2d(c, v, 3)]
            taps[f"conv{b}_{i}"] = len(layers) - 1
            layers.append(nn.ReLU())
            taps[f"relu{b}_{i}"] = len(layers) - 1
            c, i = v, i + 1
    layers = layers[:upto]
    return _init(nn.Sequential(*layers)), {k: v for k, v in taps.items() if v < len(layers)}


def adain_decoder() -> nn.Sequential:
    """pytorch-AdaIN's net.decoder, verbatim in structure."""
    def block(cin, cout):
        return [nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(cin, cout, (3, 3)), nn.ReLU()]
    up = [nn.Upsample(scale_factor=2, mode="nearest")]
    layers = (block(512, 256) + up + block(256, 256) + block(256, 256) + block(256, 256) + block(256, 128)
              + up + block(128, 128) + block(128, 64) + up + block(64, 64)
              + [nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(64, 3, (3, 3))])
    torch.manual_seed(0)
    return nn.Sequential(*layers).eval()


def torch_taps(model: nn.Sequential, taps: dict[str, int], x_nchw, wanted) -> dict[str, np.ndarray]:
    out, h = {}, x_nchw
    by_index = {v: k for k, v in taps.items() if k in wanted}
    with torch.no_grad():
        for j, m in enumerate(model):
            h = m(h)
            if j in by_index:
                out[by_index[j]] = h.permute(0, 2, 3, 1).numpy()
    return out


def _images(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _torchvision_input(x) -> torch.Tensor:
    """torchvision's ToTensor + Normalize(mean, std), NHWC numpy or tensor in."""
    t = torch.as_tensor(x).permute(0, 3, 1, 2)
    mean = torch.tensor(TORCHVISION_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(TORCHVISION_STD).view(1, 3, 1, 1)
    return (t - mean) / std


def _adain_input(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2)  # AdaIN's conv0 takes RGB [0, 1] as is


def _check_parity(params, spec, model, taps, prep, shapes, wanted=ALL_TAPS):
    wanted = tuple(t for t in wanted if t in taps)
    enc = vgg.make_encoder(params, spec, wanted)
    for shape in shapes:
        x = _images(shape, seed=shape[0])
        ours = enc(jnp.asarray(x))
        ref = torch_taps(model, taps, prep(x), wanted)
        for tap in wanted:
            assert ours[tap].shape == ref[tap].shape, (tap, shape)
            err = rel_err(ours[tap], ref[tap])
            assert err < TOL, f"{tap} at {shape}: relative error {err:.2e}"


class _TorchvisionVGG(nn.Module):
    """Same state_dict keys as torchvision.models.vgg19 (features.N, classifier.N)."""

    def __init__(self, features):
        super().__init__()
        self.features = features
        self.classifier = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))


@pytest.fixture(scope="module")
def torchvision_model():
    return torchvision_features()


def test_index_tables_follow_the_architectures():
    expected = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
    assert list(torchvision_indices().values()) == expected
    ada = adain_indices()
    assert (ada["conv0"], ada["conv1_1"], ada["conv1_2"], ada["conv2_1"], ada["conv3_1"], ada["conv4_1"]) == \
        (0, 2, 5, 9, 16, 29)
    _, taps = adain_encoder()
    assert all(taps[n] == i for n, i in ada.items() if n != "conv0")


def test_torchvision_parity_all_taps(tmp_path, torchvision_model):
    model, taps = torchvision_model
    sd = _TorchvisionVGG(model).state_dict()
    torch.save(sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    torch.save(sd, tmp_path / "zip.pth")
    params, spec = load_vgg(tmp_path / "legacy.pth")
    assert spec == vgg.SPECS["torchvision"]
    assert set(params) == {name for name, _, _ in vgg.CONVS}
    zparams, zspec = load_vgg(tmp_path / "zip.pth", fmt="torchvision")
    assert zspec == spec
    for name in params:
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(params[name][leaf], zparams[name][leaf])
    _check_parity(params, spec, model, taps, _torchvision_input, [(1, 37, 45, 3), (2, 37, 45, 3)])


def test_torchvision_features_only_state_dict(tmp_path, torchvision_model):
    model, _ = torchvision_model
    torch.save(model.state_dict(), tmp_path / "features.pth")  # keys "0.weight", ... without "features."
    params, spec = load_vgg(tmp_path / "features.pth")
    assert spec.source == "torchvision"
    np.testing.assert_array_equal(params["conv2_1"]["kernel"],
                                  model[5].weight.detach().numpy().transpose(2, 3, 1, 0))


def test_adain_parity_all_taps_odd_sizes(tmp_path):
    model, taps = adain_encoder()
    torch.save(model.state_dict(), tmp_path / "vgg_normalised.pth", _use_new_zipfile_serialization=False)
    params, spec = load_vgg(tmp_path / "vgg_normalised.pth")
    assert spec == vgg.SPECS["adain"] and "conv0" in params
    _check_parity(params, spec, model, taps, _adain_input, [(1, 37, 45, 3), (2, 37, 45, 3)])


def test_adain_truncated_at_relu4_1(tmp_path):
    model, taps = adain_encoder(upto=31)
    torch.save(model.state_dict(), tmp_path / "vgg_relu4_1.pth")
    params, spec = load_vgg(tmp_path / "vgg_relu4_1.pth")
    assert max(params, key=lambda n: vgg.LAYERS.index(n) if n != "conv0" else -1) == "conv4_1"
    x = _images((1, 29, 35, 3))
    ours = jax.jit(lambda p, v: vgg.encode(p, v, spec, ("relu4_1",)))(params, jnp.asarray(x))["relu4_1"]
    ref = torch_taps(model, taps, _adain_input(x), ("relu4_1",))["relu4_1"]
    assert rel_err(ours, ref) < TOL


@pytest.mark.parametrize("which", ["torchvision", "adain"])
def test_avg_pooling_matches_torch_avgpool(tmp_path, which):
    build = torchvision_features if which == "torchvision" else adain_encoder
    model_max, _ = build("max")
    model_avg, taps = build("avg")
    model_avg.load_state_dict(model_max.state_dict())
    torch.save(model_max.state_dict(), tmp_path / "w.pth")
    params, spec = load_vgg(tmp_path / "w.pth", pooling="avg")
    assert spec.pooling == "avg"
    prep = _torchvision_input if which == "torchvision" else _adain_input
    _check_parity(params, spec, model_avg, taps, prep, [(2, 37, 45, 3)],
                  wanted=("pool1", "pool2", "relu3_1"))  # 37x45 -> 19x23 -> 10x12: odd sizes in ceil mode


def test_decoder_parity(tmp_path):
    dec = adain_decoder()
    torch.save(dec.state_dict(), tmp_path / "decoder.pth", _use_new_zipfile_serialization=False)
    params = load_decoder(tmp_path / "decoder.pth")
    assert set(params) == {n for n, *_ in decoder_model.DECODER_CONVS}
    t = np.maximum(np.random.default_rng(1).normal(size=(2, 5, 7, 512)), 0).astype(np.float32)
    ours = jax.jit(decoder_model.decode)(params, jnp.asarray(t))
    with torch.no_grad():
        ref = dec(torch.from_numpy(t).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert ours.shape == ref.shape == (2, 40, 56, 3)
    assert rel_err(ours, ref) < TOL


# -- Keras


KERAS_TAPS = {"block1_conv1": "relu1_1", "block2_pool": "pool2", "block3_conv4": "relu3_4",
              "block4_conv1": "relu4_1", "block5_conv4": "relu5_4", "block5_pool": "pool5"}


def _write_keras2_h5(path, seed=0, whole_model=False):
    """The layout of the published Keras-2 file: layer_names, weight_names 'blockB_convC/kernel:0', HWIO
    (under `model_weights` for a whole-model save)."""
    rng = np.random.default_rng(seed)
    names = ["input_1"]
    for b, (_, n) in enumerate(vgg.BLOCKS, start=1):
        names += [f"block{b}_conv{i}" for i in range(1, n + 1)] + [f"block{b}_pool"]
    weights = {}
    with h5py.File(path, "w") as h5:
        f = h5.create_group("model_weights") if whole_model else h5
        f.attrs["layer_names"] = [n.encode() for n in names]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for (conv, cin, cout), layer in zip(vgg.CONVS, [n for n in names if "conv" in n], strict=True):
            k = (rng.normal(size=(3, 3, cin, cout)) * np.sqrt(2.0 / (9 * cin))).astype(np.float32)
            bias = rng.uniform(-0.1, 0.1, cout).astype(np.float32)
            weights[conv] = (k, bias)
            g = f.create_group(layer)
            g.attrs["weight_names"] = [f"{layer}/kernel:0".encode(), f"{layer}/bias:0".encode()]
            g[f"{layer}/kernel:0"] = k
            g[f"{layer}/bias:0"] = bias
        for n in names:
            if n not in f:
                f.create_group(n).attrs["weight_names"] = np.array([], dtype="S1")
    return weights


@pytest.fixture(scope="module")
def keras():
    if "keras" not in __import__("sys").modules:
        os.environ["KERAS_BACKEND"] = "jax"
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("keras was imported with another backend")
    return keras


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside keras' JAX backend
def test_keras_parity_with_keras_applications(tmp_path, keras):
    weights = _write_keras2_h5(tmp_path / "vgg19_notop.h5")
    params, spec = load_vgg(tmp_path / "vgg19_notop.h5")
    assert spec == vgg.SPECS["keras"]
    np.testing.assert_array_equal(params["conv3_2"]["kernel"], weights["conv3_2"][0])

    x = _images((2, 37, 45, 3))
    with jax.numpy_dtype_promotion("standard"):
        model = keras.applications.VGG19(weights=None, include_top=False, input_shape=(37, 45, 3))
        model.load_weights(str(tmp_path / "vgg19_notop.h5"))  # Keras itself accepts our file
        probe = keras.Model(model.input, [model.get_layer(n).output for n in KERAS_TAPS])
        ref = probe(keras.applications.vgg19.preprocess_input(x * 255.0))
        ref = [np.asarray(r) for r in ref]

        # Keras 3's own writers: the legacy layout without ":0", and the .weights.h5 layout
        from keras.src.legacy.saving import legacy_h5_format
        with h5py.File(tmp_path / "keras3_legacy.h5", "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, model)
        model.save_weights(str(tmp_path / "keras3.weights.h5"))

    ours = vgg.make_encoder(params, spec, tuple(KERAS_TAPS.values()))(jnp.asarray(x))
    for (layer, tap), r in zip(KERAS_TAPS.items(), ref, strict=True):
        assert ours[tap].shape == r.shape, layer
        err = rel_err(ours[tap], r)
        assert err < TOL, f"{layer} vs {tap}: relative error {err:.2e}"

    for other in ("keras3_legacy.h5", "keras3.weights.h5"):
        p2, s2 = load_vgg(tmp_path / other)
        assert s2 == spec
        for name in params:
            for leaf in ("kernel", "bias"):
                np.testing.assert_array_equal(p2[name][leaf], params[name][leaf], err_msg=f"{other} {name}")


# -- detection and errors (small, truncated files keep these fast)


@pytest.fixture
def small_files(tmp_path):
    tv, _ = torchvision_features(upto=6)  # conv1_1, conv1_2, pool1, conv2_1 (+ReLUs)
    ada, _ = adain_encoder(upto=10)       # conv0, conv1_1, conv1_2, pool1, conv2_1
    paths = {k: tmp_path / f"{k}.pth" for k in ("torchvision", "adain", "decoder")}
    torch.save(_TorchvisionVGG(tv).state_dict(), paths["torchvision"], _use_new_zipfile_serialization=False)
    torch.save(ada.state_dict(), paths["adain"])
    torch.save(adain_decoder().state_dict(), paths["decoder"], _use_new_zipfile_serialization=False)
    return paths


def test_detects_each_format_and_refuses_the_wrong_kind(small_files, tmp_path):
    params, spec = load_vgg(small_files["torchvision"])
    assert spec.source == "torchvision" and set(params) == {"conv1_1", "conv1_2", "conv2_1"}
    params, spec = load_vgg(small_files["adain"])
    assert spec.source == "adain" and set(params) == {"conv0", "conv1_1", "conv1_2", "conv2_1"}

    with pytest.raises(WeightsError, match="is pytorch-AdaIN's decoder, not VGG19 encoder weights"):
        load_vgg(small_files["decoder"])
    with pytest.raises(WeightsError, match=r"is pytorch-AdaIN's VGG19 encoder \(vgg_normalised\), not an "
                                           "AdaIN decoder"):
        load_decoder(small_files["adain"])
    with pytest.raises(WeightsError, match="is a torchvision VGG19 state_dict, not an AdaIN decoder"):
        load_decoder(small_files["torchvision"])
    with pytest.raises(WeightsError, match="is a torchvision VGG19 state_dict, not pytorch-AdaIN's VGG19 "
                                           r"encoder.*read it as torchvision"):
        load_vgg(small_files["torchvision"], fmt="adain")
    with pytest.raises(WeightsError, match="is pytorch-AdaIN's VGG19 encoder .*read it as adain"):
        load_vgg(small_files["adain"], fmt="torchvision")
    with pytest.raises(WeightsError, match="unknown VGG19 weights format 'caffe'"):
        load_vgg(small_files["adain"], fmt="caffe")
    with pytest.raises(WeightsError, match="unknown pooling"):
        load_vgg(small_files["adain"], pooling="median")

    _write_keras2_h5(tmp_path / "k.h5")
    with pytest.raises(WeightsError, match="is Keras VGG19 weights, not a torchvision"):
        load_vgg(tmp_path / "k.h5", fmt="torchvision")
    with pytest.raises(WeightsError, match="is Keras VGG19 weights, not an AdaIN decoder"):
        load_decoder(tmp_path / "k.h5")


def test_wrapped_prefixed_and_whole_model_files(small_files, tmp_path):
    ref, spec = load_vgg(small_files["adain"])
    sd = torch.load(small_files["adain"])
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "dp.pth")  # nn.DataParallel
    torch.save({"state_dict": sd, "epoch": 7}, tmp_path / "ckpt.pth", _use_new_zipfile_serialization=False)
    for name in ("dp.pth", "ckpt.pth"):
        params, s = load_vgg(tmp_path / name)
        assert s == spec
        for layer in ref:
            np.testing.assert_array_equal(params[layer]["kernel"], ref[layer]["kernel"], err_msg=name)

    weights = _write_keras2_h5(tmp_path / "whole.h5", whole_model=True)
    params, s = load_vgg(tmp_path / "whole.h5")
    assert s.source == "keras"
    np.testing.assert_array_equal(params["conv5_4"]["kernel"], weights["conv5_4"][0])


def test_mismatches_name_keys_and_shapes(tmp_path):
    sd = OrderedDict()
    sd["features.0.weight"] = torch.zeros(64, 3, 3, 3)
    sd["features.0.bias"] = torch.zeros(64)
    sd["features.2.weight"] = torch.zeros(64, 32, 3, 3)  # wrong input channels
    sd["features.2.bias"] = torch.zeros(64)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"conv1_2/kernel has shape \(3, 3, 32, 64\), expected "
                                           r"\(3, 3, 64, 64\)"):
        load_vgg(tmp_path / "bad.pth")

    del sd["features.2.weight"], sd["features.2.bias"]
    sd["features.5.weight"], sd["features.5.bias"] = torch.zeros(128, 64, 3, 3), torch.zeros(128)
    torch.save(sd, tmp_path / "gap.pth")
    with pytest.raises(WeightsError, match="missing conv1_2"):
        load_vgg(tmp_path / "gap.pth")

    sd["features.99.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match=r"unexpected features\.99\.weight"):
        load_vgg(tmp_path / "extra.pth")

    torch.save(OrderedDict([("encoder.conv.weight", torch.zeros(2, 2))]), tmp_path / "other.pth")
    with pytest.raises(WeightsError, match=r"does not recognise .*encoder\.conv\.weight \(2, 2\)"):
        load_vgg(tmp_path / "other.pth")

    dec = adain_decoder().state_dict()
    dec["28.weight"] = torch.zeros(3, 64, 5, 5)
    torch.save(dec, tmp_path / "dec.pth")
    with pytest.raises(WeightsError, match=r"AdaIN decoder: conv1_1/kernel has shape \(5, 5, 64, 3\)"):
        load_decoder(tmp_path / "dec.pth")

    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(WeightsError, match="not a weights file nst-jax reads"):
        load_vgg(tmp_path / "notes.txt")
    with pytest.raises(WeightsError, match="no such weights file: .*registry name: adain, torchvision, "
                                           "keras"):
        load_vgg(tmp_path / "missing.pth")


def test_npz_roundtrip_and_kind_checks(small_files, tmp_path):
    params, spec = load_vgg(small_files["adain"])
    meta = {"kind": "vgg19", "spec": spec.to_dict(), "source": "ada.pth"}
    out = save_npz(tmp_path / "ada.npz", params, meta)
    with np.load(out, allow_pickle=False) as z:  # readable without pickle
        assert "conv1_1/kernel" in z.files and "__meta__" in z.files
    p2, meta = load_npz(out)
    assert meta["kind"] == "vgg19" and meta["source"] == "ada.pth"
    p3, s3 = load_vgg(out, pooling="avg")
    assert s3 == spec.replace(pooling="avg")
    for name in params:
        np.testing.assert_array_equal(p2[name]["kernel"], params[name]["kernel"])
        np.testing.assert_array_equal(p3[name]["bias"], params[name]["bias"])
    with pytest.raises(WeightsError, match="already exists"):
        save_npz(out, params, {"kind": "vgg19"})
    with pytest.raises(WeightsError, match="holds converted adain weights, not torchvision"):
        load_vgg(out, fmt="torchvision")

    dparams = load_decoder(small_files["decoder"])
    dout = save_npz(tmp_path / "dec.npz", dparams, {"kind": "adain_decoder"})
    np.testing.assert_array_equal(load_decoder(dout)["conv4_1"]["kernel"], dparams["conv4_1"]["kernel"])
    with pytest.raises(WeightsError, match="is a converted AdaIN decoder, not VGG19 encoder weights"):
        load_vgg(dout)
    with pytest.raises(WeightsError, match="is converted VGG19 weights, not an AdaIN decoder"):
        load_decoder(out)


def test_registry_names_resolve_offline_to_clear_errors():
    # conftest sets NST_JAX_OFFLINE=1 and an empty NST_JAX_HOME
    with pytest.raises(DownloadError, match=r"offline.*vgg_normalised\.pth by hand and put it at .*weights/"
                                            r"vgg_normalised\.pth"):
        load_vgg("adain")
    with pytest.raises(DownloadError, match=r"decoder\.pth"):
        load_decoder("adain")
    with pytest.raises(WeightsError, match="'adain-decoder' is the decoder"):
        load_vgg("adain-decoder")


# -- gradients


def test_gradients_reach_the_input_not_the_frozen_weights(small_files):
    params, spec = load_vgg(small_files["torchvision"])
    x = _images((1, 21, 26, 3))

    def loss(p, img):
        return jnp.sum(jnp.square(vgg.encode(p, img, spec, ("relu2_1",))["relu2_1"]))

    gp, gx = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, jnp.asarray(x))
    assert all(not np.any(np.asarray(leaf)) for leaf in jax.tree.leaves(gp))

    model, taps = torchvision_features(upto=7)
    saved = torch.load(small_files["torchvision"])
    model.load_state_dict({k.removeprefix("features."): v for k, v in saved.items() if "features." in k})
    xt = torch.from_numpy(x).requires_grad_(True)
    h = _torchvision_input(xt)
    for m in model[: taps["relu2_1"] + 1]:
        h = m(h)
    h.square().sum().backward()
    assert rel_err(gx, xt.grad.numpy()) < TOL

    enc = vgg.VGG19(params, spec, last="relu2_1")
    assert not jax.tree.leaves(nnx.state(enc, nnx.Param))
    opt = nnx.Optimizer(enc, optax.sgd(1.0), wrt=nnx.Param)
    grads = nnx.grad(lambda m: jnp.sum(m(jnp.asarray(x), taps=("relu2_1",))["relu2_1"]),
                     argnums=nnx.DiffState(0, nnx.Param))(enc)
    assert not jax.tree.leaves(grads)
    before = np.asarray(enc.weights.get_value()["conv1_1"]["kernel"]).copy()
    opt.update(enc, grads)
    np.testing.assert_array_equal(np.asarray(enc.weights.get_value()["conv1_1"]["kernel"]), before)
