"""`nst-jax stylize` end to end on real pictures (skimage.data), random weights in pytorch-AdaIN's formats.

Images are small (shorter side 32 after --content-size) and share a few shapes, so the whole file compiles
only a handful of programs (the jitted functions are shared by every Stylizer in the process).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

import adain_reference as R
from nst_jax import cli
from nst_jax import image as imagelib
from nst_jax.stylize import Stylizer

SIZE = ["--content-size", "32", "--style-size", "32"]


@pytest.fixture(autouse=True)
def _only_stylize(monkeypatch):
    """Build the real dispatcher with just this subcommand, so other subcommands' imports cannot interfere."""
    from nst_jax import cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", ("stylize",))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    vgg, dec, _ = R.save_random_weights(d, 0)
    contents, styles = d / "contents", d / "styles"
    contents.mkdir()
    styles.mkdir()
    # chelsea 300x451 and coffee 400x600 both become 32x48; astronaut 512x512 becomes 32x32.
    Image.fromarray(data.chelsea()).save(contents / "chelsea.jpg", quality=95)
    Image.fromarray(data.coffee()).save(contents / "coffee.png")
    Image.fromarray(data.astronaut()).save(styles / "astronaut.png")
    Image.fromarray(data.rocket()[:400, :400]).save(styles / "rocket.jpg", quality=95)
    # a mask for chelsea: left half white
    mask = np.zeros((300, 451), np.uint8)
    mask[:, :225] = 255
    Image.fromarray(mask).save(d / "left.png")
    Image.fromarray(255 - mask).save(d / "right.png")
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(d / "square_mask.png")
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    return {"dir": d, "vgg": vgg, "dec": dec, "contents": contents, "styles": styles,
            "chelsea": contents / "chelsea.jpg", "coffee": contents / "coffee.png",
            "astronaut": styles / "astronaut.png", "rocket": styles / "rocket.jpg",
            "left": d / "left.png", "right": d / "right.png", "square_mask": d / "square_mask.png",
            "corrupt": d / "corrupt.jpg"}


def main(argv: list[str]) -> int:
    return cli.main(["stylize", *argv])


def weights(files) -> list[str]:
    return ["--vgg", str(files["vgg"]), "--decoder", str(files["dec"])]


def read(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0


def fails(capsys, argv, match: str) -> str:
    """Run the command expecting a user error: exit 2 and one line on stderr containing `match`."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nst-jax: error: ") and "\n" not in err, err
    assert match in err, err
    return err


def test_one_output_matches_the_api(files, tmp_path, capsys):
    out = tmp_path / "out.png"
    assert main([str(files["chelsea"]), "--style", str(files["astronaut"]), *SIZE, *weights(files), "-o",
                 str(out), "--alpha", "0.8"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    got = read(out)
    assert got.shape == (32, 48, 3)
    st = Stylizer.load(vgg=files["vgg"], decoder=files["dec"])
    content = imagelib.load_image(files["chelsea"], size=32)
    style = imagelib.load_image(files["astronaut"], size=32)
    expect = st.stylize(content, [style], alpha=0.8)[0]
    assert np.abs(got - expect).max() <= 1 / 255 + 1e-6
    # never overwrite without --overwrite; with it, the file is replaced
    fails(capsys, [str(files["chelsea"]), "--style", str(files["astronaut"]), *SIZE, *weights(files), "-o",
                   str(out)], "exists")
    assert main([str(files["chelsea"]), "--style", str(files["astronaut"]), *SIZE, *weights(files), "-o",
                 str(out), "--overwrite", "--alpha", "0"]) == 0
    assert np.abs(read(out) - got).max() > 0.02


def test_folders_make_every_pair_with_a_progress_bar(files, tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert main([str(files["contents"]), "--style", str(files["styles"]), *SIZE, *weights(files),
                 "--out-dir", str(out_dir), "--ext", "jpg"]) == 0
    captured = capsys.readouterr()
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["chelsea_stylized_astronaut.jpg", "chelsea_stylized_rocket.jpg",
                     "coffee_stylized_astronaut.jpg", "coffee_stylized_rocket.jpg"]
    assert "4/4" in captured.err  # tqdm's bar
    assert all(read(out_dir / n).shape == (32, 48, 3) for n in names)


@pytest.mark.slow
def test_blend_mask_colour_crop_and_sizes(files, tmp_path, capsys):
    common = [str(files["chelsea"]), *weights(files), "--out-dir", str(tmp_path)]
    assert main([*common, *SIZE, "--style", str(files["astronaut"]), "--style", str(files["rocket"]),
                 "--style-weights", "0.7,0.3", "--preserve-color", "histogram"]) == 0
    blend = tmp_path / "chelsea_stylized_astronaut0.7_rocket0.3.png"
    assert read(blend).shape == (32, 48, 3)
    assert main([*common, *SIZE, "--style", str(files["astronaut"]), "--style", str(files["rocket"]),
                 "--mask", str(files["left"]), "--mask", str(files["right"]),
                 "--preserve-color", "luminance"]) == 0
    masked = read(tmp_path / "chelsea_stylized_astronaut_rocket_masked.png")
    # one mask for two styles (Lua's convention) is the same picture
    assert main([*common, *SIZE, "--style", str(files["astronaut"]), "--style", str(files["rocket"]),
                 "--mask", str(files["left"]), "--preserve-color", "luminance", "--overwrite"]) == 0
    np.testing.assert_array_equal(read(tmp_path / "chelsea_stylized_astronaut_rocket_masked.png"), masked)
    # --crop: centre-cropped squares; --content-size / --style-size pick the resolution
    out = tmp_path / "crop.png"
    assert main([str(files["chelsea"]), *weights(files), "--style", str(files["rocket"]), "--crop",
                 "--content-size", "32", "--style-size", "40", "-o", str(out)]) == 0
    assert read(out).shape == (32, 32, 3)
    out = tmp_path / "bigger.png"
    assert main([str(files["chelsea"]), *weights(files), "--style", str(files["rocket"]),
                 "--content-size", "40", "--style-size", "0", "-o", str(out)]) == 0
    assert read(out).shape == (40, 60, 3)
    capsys.readouterr()


def test_checkpoint_with_vgg_override(files, tmp_path, capsys):
    import jax

    from nst_jax import checkpoints
    from nst_jax.models import decoder as D

    params = jax.device_get(D.init_params(jax.random.key(3)))
    manager = checkpoints.make_manager(tmp_path / "run")
    checkpoints.save_checkpoint(manager, 7, params, {"count": np.zeros((), np.int32)}, {"step": 7},
                                {"vgg_weights": "adain"})
    manager.wait_until_finished()
    out = tmp_path / "ckpt.png"
    # the config names the "adain" registry entry, which is not cached here: --vgg supplies the same encoder
    assert main([str(files["chelsea"]), "--style", str(files["rocket"]), *SIZE, "--checkpoint",
                 str(tmp_path / "run"), "--vgg", str(files["vgg"]), "-o", str(out)]) == 0
    assert read(out).shape == (32, 48, 3)
    with pytest.raises(SystemExit) as exit_info:  # argparse's own usage error
        main([str(files["chelsea"]), "--style", str(files["rocket"]), "--checkpoint", str(tmp_path / "run"),
              "--decoder", str(files["dec"]), "-o", str(tmp_path / "x.png")])
    assert exit_info.value.code == 2 and "not allowed with" in capsys.readouterr().err


def _torchvision_file(path):
    sd, cin, index = {}, 3, 0
    for cout, n in ((64, 2), (128, 2), (256, 4), (512, 1)):
        for _ in range(n):
            sd[f"features.{index}.weight"] = torch.randn(cout, cin, 3, 3) * 0.01
            sd[f"features.{index}.bias"] = torch.zeros(cout)
            cin, index = cout, index + 2
        index += 1
    torch.save(sd, path)
    return path


def test_bad_inputs_fail_with_one_line_and_write_nothing(files, tmp_path, capsys):
    out_dir = tmp_path / "out"
    w = weights(files)
    base = ["--out-dir", str(out_dir), *SIZE]
    c, s, s2 = str(files["chelsea"]), str(files["astronaut"]), str(files["rocket"])
    left = str(files["left"])
    fails(capsys, [str(tmp_path / "missing.jpg"), "--style", s, *w, *base], "missing.jpg")
    # a corrupt content among good ones: detected before anything is written
    fails(capsys, [c, str(files["corrupt"]), "--style", s, *w, *base], "corrupt.jpg")
    fails(capsys, [c, "--style", str(files["corrupt"]), *w, *base], "corrupt.jpg")
    fails(capsys, [c, "--style", s, "--style", s2, "--mask", left, "--mask", left, "--mask", left, *w, *base],
          "3 --mask for 2")
    fails(capsys, [c, "--style", s, "--style", s2, "--mask", str(files["square_mask"]), *w, *base],
          "aspect ratios differ")
    fails(capsys, [c, "--style", s, "--style", s2, "--style-weights", "1,2,3", *w, *base],
          "3 values for 2 styles")
    fails(capsys, [c, "--style", s, "--style-weights", "a,b", *w, *base], "--style-weights")
    fails(capsys, [c, "--style", s, "--alpha", "2", *w, *base], "--alpha")
    fails(capsys, [c, str(files["coffee"]), "--style", s, "-o", str(tmp_path / "one.png"), *w, *SIZE],
          "makes 2")
    fails(capsys, [c, "--style", s, "-o", str(tmp_path / "one.xyz"), *w, *SIZE], "extension")
    # weights that do not fit the model: a decoder missing a layer
    sd = torch.load(files["dec"])
    del sd["28.weight"]
    broken = tmp_path / "broken_decoder.pth"
    torch.save(sd, broken)
    fails(capsys, [c, "--style", s, "--vgg", str(files["vgg"]), "--decoder", str(broken), *base],
          "broken_decoder.pth")
    # weights for the wrong encoder: a torchvision VGG19 with AdaIN's decoder
    tv = _torchvision_file(tmp_path / "vgg19-dcbb9e9d.pth")
    fails(capsys, [c, "--style", s, "--vgg", str(tv), "--decoder", str(files["dec"]), *base],
          "trained on the adain encoder")
    # a VGG given as the decoder
    fails(capsys, [c, "--style", s, "--vgg", str(files["vgg"]), "--decoder", str(files["vgg"]), *base],
          "not an AdaIN decoder")
    # default weights while offline (conftest sets NST_JAX_OFFLINE=1 and an empty cache)
    fails(capsys, [c, "--style", s, *base], "offline")
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_default_weights_come_from_the_cache(files, tmp_path, capsys):
    import shutil

    from nst_jax.weights import weights_dir

    cache = weights_dir()
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copy(files["vgg"], cache / "vgg_normalised.pth")
    shutil.copy(files["dec"], cache / "decoder.pth")
    argv = [str(files["chelsea"]), "--style", str(files["astronaut"]), *SIZE]
    assert main([*argv, "-o", str(tmp_path / "cached.png")]) == 0
    assert main([*argv, *weights(files), "-o", str(tmp_path / "explicit.png")]) == 0
    np.testing.assert_array_equal(read(tmp_path / "cached.png"), read(tmp_path / "explicit.png"))
    capsys.readouterr()
