"""`nst-jax gatys` end to end on scikit-image pictures with random VGG19 weights in real file formats."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nst_jax import cli
from nst_jax.image import load_image

# Taps up to relu3_1 keep the compiled network (and the weight files) small.
LAYERS = ["--content-layers", "relu3_1", "--style-layers", "relu1_1,relu2_1,relu3_1"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import jax
    from skimage import data

    from nst_jax import vgg
    from nst_jax.weights import save_npz

    d = tmp_path_factory.mktemp("gatys_cli")
    Image.fromarray(data.astronaut()).resize((48, 40), Image.BILINEAR).save(d / "content.png")
    Image.fromarray(data.coffee()).resize((40, 30), Image.BILINEAR).save(d / "style.png")
    Image.fromarray(data.chelsea()).resize((36, 30), Image.BILINEAR).save(d / "style2.jpg")
    mask = np.zeros((40, 48), np.uint8)
    mask[:20] = 255
    Image.fromarray(mask).save(d / "mask.png")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(d / "square_mask.png")

    spec = vgg.SPECS["torchvision"]
    params = jax.tree.map(np.asarray, vgg.init_params(jax.random.PRNGKey(0), spec, "relu3_1"))
    save_npz(d / "vgg.npz", params, {"kind": "vgg19", "spec": spec.to_dict()})
    # torchvision's layout: features.N.weight (OIHW) / features.N.bias, here up to conv3_1 (features.10)
    sd = {}
    for (name, _, _), idx in zip(vgg.CONVS[:5], (0, 2, 5, 7, 10), strict=True):
        k = np.random.default_rng(idx).standard_normal(params[name]["kernel"].shape).astype(np.float32) * 0.05
        sd[f"features.{idx}.weight"] = torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1)))
        sd[f"features.{idx}.bias"] = torch.zeros(k.shape[3])
    torch.save(sd, d / "vgg19.pth")
    return d


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(["gatys", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.slow
def test_writes_the_result_and_intermediates(files, tmp_path, capsys):
    out = tmp_path / "res" / "o.png"
    rc, stdout, err = run(capsys, str(files / "content.png"), "--style", str(files / "style.png"), *LAYERS,
                          "--weights", str(files / "vgg.npz"), "--image-size", "32", "--iterations", "6",
                          "--save-every", "3", "-o", str(out))
    assert rc == 0, err
    assert stdout.strip().splitlines()[-1] == str(out)
    assert "loss: content" in err
    assert load_image(out).shape == (1, 27, 32, 3)  # 48x40 content, longer side 32
    assert (tmp_path / "res" / "o_iter3.png").is_file()
    assert not (tmp_path / "res" / "o_iter6.png").exists()  # the last iterate is the result itself

    # the same command again: refused, nothing touched; with --overwrite it runs
    before = out.read_bytes()
    rc, stdout, err = run(capsys, str(files / "content.png"), "--style", str(files / "style.png"), *LAYERS,
                          "--weights", str(files / "vgg.npz"), "--image-size", "32", "--iterations", "6",
                          "--save-every", "3", "-o", str(out), "--quiet")
    assert rc == 2
    assert err.strip() == f"nst-jax: error: {out} exists; pass --overwrite to replace it"
    assert out.read_bytes() == before
    rc, _, err = run(capsys, str(files / "content.png"), "--style", str(files / "style.png"), *LAYERS,
                     "--weights", str(files / "vgg.npz"), "--image-size", "32", "--iterations", "6",
                     "-o", str(out), "--quiet", "--overwrite", "--init", "noise")
    assert rc == 0, err
    assert out.read_bytes() != before


@pytest.mark.slow
def test_masks_scales_and_luminance(files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, stdout, err = run(capsys, str(files / "content.png"), "--style", str(files / "style.png"),
                          "--style", str(files / "style2.jpg"), "--mask", str(files / "mask.png"), *LAYERS,
                          "--weights", str(files / "vgg.npz"), "--scales", "24,32", "--iterations", "3,2",
                          "--preserve-color", "luminance", "--pooling", "avg", "--init", "noise", "--quiet",
                          "--linesearch", "none")
    assert rc == 0, err
    out = tmp_path / "output" / "content_gatys_style_style2.png"  # the default name
    assert stdout.strip() == str(out.relative_to(tmp_path))
    assert load_image(out).shape == (1, 27, 32, 3)


def test_torchvision_pth_weights_adam_and_histogram(files, tmp_path, capsys):
    out = tmp_path / "adam.jpg"
    rc, _, err = run(capsys, str(files / "content.png"), "--style", str(files / "style.png"),
                     "--style", str(files / "style2.jpg"), "--style-weights", "0.3,0.7", *LAYERS,
                     "--weights", str(files / "vgg19.pth"), "--image-size", "24", "--optimizer", "adam",
                     "--iterations", "3", "--preserve-color", "histogram", "--style-scale", "0.5", "--quiet",
                     "--init-image", str(files / "style2.jpg"), "-o", str(out))
    assert rc == 0, err
    assert load_image(out).shape == (1, 20, 24, 3)


@pytest.mark.parametrize("extra, message", [
    (["--weights", "{d}/vgg.npz"], "these VGG19 weights (torchvision) end at conv3_1, but layer relu5_1 needs"),
    (["--style-layers", "relu1_1,relu9_1"], "unknown VGG19 layer 'relu9_1' in style layers"),
    (["--style-weights", "1"], "--style-weights has 1 values for 2 styles"),
    (["--style-weights", "1,x"], "--style-weights must be comma-separated numbers, got '1,x'"),
    (["--mask", "{d}/mask.png", "--mask", "{d}/mask.png", "--mask", "{d}/mask.png"], "got 3 --mask for 2 --style"),
    (["--mask", "{d}/nope.png"], "no such mask image: {d}/nope.png"),
    (["--init-image", "{d}/nope.png"], "no such init image: {d}/nope.png"),
    (["--mask", "{d}/square_mask.png", *LAYERS, "--weights", "{d}/vgg.npz"], "aspect ratios differ"),
    (["--iterations", "5,5"], "--iterations has 2 values for 1 scales"),
    (["--layer-weights", "1,2"], "--layer-weights has 2 values for 5 style layers"),
    (["--tv-weight", "-1"], "--tv-weight must be finite and >= 0"),
    (["--scales", "8,32"], "--scales must be sizes of at least 16 pixels"),
    (["--lbfgs-memory", "0"], "--lbfgs-memory must be >= 1, got 0"),
    (["--style-scale", "0"], "--style-scale must be > 0, got 0.0"),
    (["-o", "{out}.xyz"], "cannot tell the image type of output"),
    (["--weights", "{d}/style.png"], "style.png"),
])
def test_errors_are_one_line_and_write_nothing(files, tmp_path, capsys, extra, message):
    out = tmp_path / "never"
    argv = [str(files / "content.png"), "--style", str(files / "style.png"), "--style", str(files / "style2.jpg"),
            "--iterations", "2", "--quiet", "-o", f"{out}.png"]
    argv += [a.format(d=files, out=out) for a in extra]
    rc, stdout, err = run(capsys, *argv)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nst-jax: error: "), err
    assert message.format(d=files) in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_missing_content_is_reported_before_anything_else(files, tmp_path, capsys):
    rc, _, err = run(capsys, str(tmp_path / "nope.jpg"), "--style", str(files / "style.png"), "-o",
                     str(tmp_path / "o.png"))
    assert rc == 2 and err.strip() == f"nst-jax: error: no such content image: {tmp_path / 'nope.jpg'}"


def test_offline_registry_weights_fail_with_a_hint(files, tmp_path, capsys):
    rc, _, err = run(capsys, str(files / "content.png"), "--style", str(files / "style.png"), "-o",
                     str(tmp_path / "o.png"), "--quiet")
    assert rc == 2
    assert err.startswith("nst-jax: error: ") and "torchvision" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.png").exists()


def test_library_parameter_names_become_flags():
    """The library's errors name parameters; the command translates each to its flag, and nothing else."""
    from nst_jax.commands.gatys import FLAGS, flag_message
    from nst_jax.errors import NstError
    from nst_jax.gatys import GatysConfig

    assert flag_message("iterations has 2 values for 1 scales") == "--iterations has 2 values for 1 scales"
    assert flag_message("style_blend has 1 values for 2 styles") == "--style-weights has 1 values for 2 styles"
    assert flag_message("relu5_1 needs conv3_2: choose shallower content_layers/style_layers") == \
        "relu5_1 needs conv3_2: choose shallower --content-layers/--style-layers"
    for text in ("no style layers given", "mask 1 is empty (all black)", "see my_style_weight_notes"):
        assert flag_message(text) == text
    bad = dict(layer_weights="big", content_weight=-1.0, style_weight=float("nan"), tv_weight=-2.0,
               optimizer="sgd", init="zeros", iterations=-1, scales=(8,), lr=0.0, style_scale=0.0,
               preserve_color="hsv", lbfgs_memory=0, linesearch="wolfe")
    for field, value in bad.items():
        with pytest.raises(NstError) as e:
            GatysConfig(**{field: value}).validate()
        assert str(e.value).startswith(field), (field, str(e.value))
        assert flag_message(str(e.value)).startswith(FLAGS[field] + " "), (field, str(e.value))
