"""Strength maps in tiles (`nst_jax.strength.TileStrength`, `Stylizer.stylize(strength_map=, tile=)`).

With `exact` statistics a tiled picture with a strength map is the untiled one with the same map (max abs
difference <= 1e-4 on [0, 1]) at a size that needs 3 x 3 tiles, for AdaIN (random weights), `multistyle26` and
`magenta-arbitrary` (real weights) and the toy family; with masks; through `stylize_image` and the command line
(`--content-size 0 --tile N`). AdaIN's own condition is read off the statistics the tiles run with, so an all-zeros
map is its alpha-0 picture even where the whole image is over the thumbnail size.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_tiling import _photo, _sizes, _style

from nst_jax import cli, strength, tiling
from nst_jax.image import to_uint8
from nst_jax.stylize import Stylizer

TOL = 1e-4


def _map(hw: tuple[int, int]) -> np.ndarray:
    """Every strength from 0 to 1, changing across tile borders."""
    return strength.gradient(hw, kind="radial", center=(0.4, 0.6), radius=0.15, softness=0.7)


def _check(st: Stylizer, masks: bool = False, alpha: float = 0.8) -> None:
    tile, side = _sizes(st.family.tiling)
    x = _photo(side, side + st.family.tiling.align)
    p = st.tile_plan(x.shape[1], x.shape[2], tile)
    assert len(p.rows.spans) >= 3 and len(p.cols.spans) >= 3
    styles = [_style(st, 1), _style(st, 2)] if masks else [_style(st)]
    kw = {"alpha": alpha, "strength_map": _map(x.shape[1:3])}
    if masks:
        m = np.zeros(x.shape[1:3], np.float32)
        m[:, : x.shape[2] // 3] = 1.0
        kw["masks"] = [m, 1.0 - m]
    ref = st.stylize(x, styles, **kw)
    tiled = st.stylize(x, styles, tile=tile, tile_stats="exact", **kw)
    assert np.abs(tiled - ref).max() <= TOL
    # and the map does something: not the plain stylization
    plain = st.stylize(x, styles, **{k: v for k, v in kw.items() if k != "strength_map"})
    assert np.abs(tiled - plain).max() > 0.05


@pytest.mark.slow  # whole-network compiles at 3 x 3 tiles: the full suite runs it
def test_adain_strength_tiled_equals_untiled(random_model):
    _check(random_model)


@pytest.mark.slow
def test_adain_strength_masks_tiled(random_model):
    _check(random_model, masks=True, alpha=1.0)


@pytest.mark.slow  # whole-network compiles at 3 x 3 tiles: the full suite runs it
def test_multistyle26_strength_tiled_equals_untiled(multistyle26):
    _check(multistyle26)


@pytest.mark.slow
def test_multistyle26_strength_masks_tiled(multistyle26):
    _check(multistyle26, masks=True)


@pytest.mark.slow  # whole-network compiles at 3 x 3 tiles: the full suite runs it
def test_arbitrary_strength_tiled_equals_untiled(magenta_arbitrary):
    # the content's own style vector (the map's second "style") and alpha's mix both from the whole image
    _check(magenta_arbitrary)


@pytest.mark.slow
def test_arbitrary_strength_masks_tiled(magenta_arbitrary):
    _check(magenta_arbitrary, masks=True)


def test_toy_family_strength_tiles(toy_stylizer):
    _check(toy_stylizer, alpha=0.5)


def test_adain_zero_map_is_alpha_zero_over_the_thumbnail_size(random_model, monkeypatch):
    """A picture over `THUMBNAIL` px (patched to half the image) cannot give its own condition from the whole
    image; AdaIN reads it off the statistics the tiles run with (`Tiling.own_condition`), so its own region is
    still the identity: an all-zeros map is the alpha-0 picture."""
    st = random_model
    tile, side = _sizes(st.family.tiling)
    x = _photo(side, side)
    monkeypatch.setattr(tiling, "THUMBNAIL", side // 2)
    zero = st.stylize(x, [_style(st)], alpha=0.0)
    tiled = st.stylize(x, [_style(st)], strength_map=np.zeros(x.shape[1:3], np.float32), tile=tile,
                       tile_stats="exact")
    assert np.abs(tiled - zero).max() <= TOL


def test_prepare_does_not_copy_a_float32_map():
    m = _map((30, 40))
    assert np.shares_memory(strength.prepare(m, 1, (30, 40))[0], m)
    assert strength.prepare(m, 2, (30, 40)).shape == (2, 30, 40)
    assert strength.prepare(m[::2, ::2], 1, (30, 40)).shape == (1, 30, 40)  # another size: stretched


@pytest.mark.slow  # whole-network compiles at 3 x 3 tiles: the full suite runs it
def test_stylize_image_tiles_a_strength_map(multistyle26):
    st = multistyle26
    tile, side = _sizes(st.family.tiling)
    img = to_uint8(_photo(side, side + 4)[0])
    smap = _map(img.shape[:2])
    ref = to_uint8(st.stylize(img.astype(np.float32) / 255.0, [3], strength_map=smap)[0])
    out = st.stylize_image(img, [3], strength_map=smap, tile=tile, tile_stats="exact")
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.abs(out.astype(np.int16) - ref).max() <= 1


@pytest.mark.slow  # whole-network compiles at 3 x 3 tiles: the full suite runs it
def test_cli_strength_map_in_tiles(tmp_path, monkeypatch, capsys, multistyle26):
    photo, smap = tmp_path / "photo.png", tmp_path / "map.png"
    Image.fromarray(to_uint8(_photo(224, 240)[0])).save(photo)
    Image.fromarray(np.rint(_map((224, 240)) * 255).astype(np.uint8)).save(smap)
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("stylize",))
    base = ["stylize", str(photo), "--model", "multistyle26", "--style", "3", "--content-size", "0",
            "--tile-stats", "exact", "--strength-map", str(smap)]
    assert cli.main([*base, "-o", str(tmp_path / "one.png"), "--tile", "auto"]) == 0
    assert cli.main([*base, "-o", str(tmp_path / "tiled.png"), "--tile", "176", "--verbose"]) == 0
    assert cli.main([*base[:-2], "-o", str(tmp_path / "plain.png"), "--tile", "176"]) == 0
    assert "tile plan:" in capsys.readouterr().err
    one, tiled, plain = (np.asarray(Image.open(tmp_path / f"{n}.png"), np.int16) for n in ("one", "tiled", "plain"))
    assert one.shape == tiled.shape == (224, 240, 3)
    assert np.abs(one - tiled).max() <= 1
    assert np.abs(tiled - plain).max() > 20  # the map was applied in the tiles
