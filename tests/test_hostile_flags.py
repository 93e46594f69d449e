"""Hostile input to the newest flags and APIs (--tile, --tile-stats, --memory-budget, --max-pixels,
--strength-map; Stylizer.stylize / stylize_image; image.load_uint8): a one-line NstError, never a traceback from
deep inside NumPy, Pillow or JAX, and no output file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from nst_jax import cli, strength, tiling
from nst_jax import image as imagelib
from nst_jax.errors import ImageError, NstError


@pytest.fixture(autouse=True)
def _only_stylize(monkeypatch):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("stylize",))


@pytest.fixture(scope="module")
def pics(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(d / "c.png")
    Image.fromarray(rng.integers(0, 255, (48, 64), dtype=np.uint8)).save(d / "map.png")
    (d / "folder.png").mkdir()
    return d


# ----------------------------------------------------------------------------------------------------
# The command line: refused while checking the flags, before any weight is loaded


@pytest.mark.parametrize("flags, match", [
    (["--max-pixels", "inf"], "--max-pixels must be a positive, finite number"),
    (["--max-pixels=-inf"], "--max-pixels must be a positive, finite number"),
    (["--tile", "\u00b2"], "--tile must be auto or a positive whole number"),       # "²".isdigit() is true
    (["--tile", "9" * 5000], "--tile must be auto or a positive whole number"),     # past int()'s digit limit
    (["--tile", "17.5"], "--tile must be auto or a positive whole number"),
    (["--memory-budget", "nan"], "--memory-budget must be a size"),
    (["--strength-map", "folder.png"], "--strength-map takes an image file, got a directory"),
])
def test_cli_refuses_in_one_line(pics, tmp_path, capsys, flags, match):
    out = tmp_path / "out.png"
    flags = [str(pics / f) if f.endswith(".png") else f for f in flags]
    rc = cli.main(["stylize", str(pics / "c.png"), "--model", "multistyle26", "--style", "3", *flags,
                   "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not out.exists()
    assert match in err and len(err.splitlines()) == 1 and "Traceback" not in err


# ----------------------------------------------------------------------------------------------------
# nst_jax.tiling


@pytest.mark.parametrize("tile", [0, -5, 17.5, float("nan"), float("inf"), [1], True, "", "abc", "\u00b2",
                                  "1e9", np.float32("nan")])
def test_bad_tiles_are_nst_errors(tile):
    with pytest.raises(NstError, match="positive whole number of pixels"):
        tiling.check_tile(tile)


@pytest.mark.parametrize("tile, want", [("auto", "auto"), (" AUTO ", "auto"), (None, None), (256, 256),
                                        (256.0, 256), (np.int64(300), 300), ("300", 300)])
def test_good_tiles(tile, want):
    assert tiling.check_tile(tile) == want


@pytest.mark.parametrize("budget", [float("inf"), -float("inf"), float("nan"), True, "inf", "2X", 0, -1])
def test_bad_budgets_are_nst_errors(budget):
    with pytest.raises(NstError, match="memory.budget"):
        tiling.parse_size(budget)


@pytest.mark.parametrize("stats", ["bogus", "EXACT", 3])
def test_tile_stats_are_checked_even_without_tiles(random_model, stats):
    x = np.full((1, 32, 32, 3), 0.5, np.float32)
    with pytest.raises(NstError, match="--tile-stats must be one of exact, thumbnail"):
        random_model.stylize(x, [x[0]], tile="auto", tile_stats=stats)


@pytest.mark.parametrize("kw", [{"tile": float("nan")}, {"tile": [1]}, {"memory_budget": float("inf")}])
def test_stylize_image_bad_tile_options(random_model, kw):
    img = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(NstError):
        random_model.stylize_image(img, [np.full((32, 32, 3), 0.5, np.float32)], **kw)


# ----------------------------------------------------------------------------------------------------
# Strength maps and contents


def test_ragged_strength_map_is_an_nst_error():
    with pytest.raises(NstError, match="strength map"):
        strength.prepare([[0.5] * 4, [0.5]], 1, (2, 4))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_content_with_nan_or_inf_is_refused(random_model, value):
    x = np.full((1, 32, 32, 3), 0.5, np.float32)
    x[0, 3, 3, 1] = value
    with pytest.raises(NstError, match="NaN or infinite"):
        random_model.stylize(x, [np.full((32, 32, 3), 0.5, np.float32)])


def test_stylize_image_takes_a_strength_map(random_model):
    img = np.random.default_rng(1).integers(0, 255, (32, 48, 3), dtype=np.uint8)
    style = np.full((32, 32, 3), 0.5, np.float32)
    zero = random_model.stylize_image(img, [style], strength_map=np.zeros((32, 48), np.float32), tile=None)
    assert zero.shape == (32, 48, 3) and zero.dtype == np.uint8
    with pytest.raises(NstError, match="strength map must hold values in"):
        random_model.stylize_image(img, [style], strength_map=np.full((32, 48), np.nan, np.float32))
    with pytest.raises(NstError, match="N = 1 or 1"):
        random_model.stylize_image(img, [style], strength_map=np.ones((2, 32, 48), np.float32))


def test_strength_map_with_one_tile_holding_the_picture_runs(random_model):
    """--tile larger than the picture plans one tile: that is the one pass a strength map needs, not a refusal."""
    x = np.random.default_rng(2).random((1, 32, 48, 3), dtype=np.float32)
    style, smap = np.full((32, 32, 3), 0.5, np.float32), np.ones((32, 48), np.float32)
    tile = 4 * tiling.min_tile(random_model.family.tiling)
    assert random_model.tile_plan(32, 48, tile).count == 1
    out = random_model.stylize(x, [style], strength_map=smap, tile=tile)
    np.testing.assert_allclose(out, random_model.stylize(x, [style], strength_map=smap), atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# nst_jax.image.load_uint8


@pytest.mark.parametrize("max_pixels", [0, -1, 0.5, "abc", float("nan"), float("inf"), True, [1]])
def test_load_uint8_bad_max_pixels(pics, max_pixels):
    with pytest.raises(ImageError, match="must be a positive, finite number of pixels"):
        imagelib.load_uint8(pics / "c.png", max_pixels=max_pixels)


@pytest.mark.parametrize("max_pixels", [100, 2000])
def test_load_uint8_names_the_limit_asked_for(pics, max_pixels):
    """Pillow's own message quotes twice the limit past 2x (a limit of 200 for --max-pixels 100)."""
    with pytest.raises(ImageError, match=rf"3,072 pixels, over the limit of {max_pixels:,} "):
        imagelib.load_uint8(pics / "c.png", max_pixels=max_pixels)


@pytest.mark.parametrize("path", [None, "", 3])
def test_load_uint8_bad_paths(path):
    with pytest.raises(ImageError, match="an image path must be"):
        imagelib.load_uint8(path)
