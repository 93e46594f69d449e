"""Tiled stylization (`nst_jax.tiling`, issue 24): tiles join into the untiled picture.

Every family runs at a size that needs at least 3 x 3 tiles of a small tile size, with `exact` statistics and with
the untiled run's own statistics passed in: max abs difference <= 1e-4 on [0, 1]. The real networks
(multistyle26, magenta-arbitrary) are cheap at these sizes; AdaIN (random weights, pytorch-AdaIN's format) needs
tiles of 344 px (its halo is 112 px), so its masked case is in the slow tier.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from nst_jax import cli, models, tiling
from nst_jax.errors import ImageError, NstError
from nst_jax.image import load_uint8
from nst_jax.stylize import Stylizer

TOL = 1e-4


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random picture (1, h, w, 3) in [0, 1]: structure at every scale the networks see."""
    x = np.random.default_rng(seed).random((1, h, w, 3), np.float32)
    return np.clip(gaussian_filter(x, (0, 3, 3, 0)) * 2.0 - 0.5, 0.0, 1.0).astype(np.float32)


def _style(st: Stylizer, seed: int = 1):
    if st.caps.style_table and not st.caps.style_images:
        return seed
    return _photo(64, 64, seed)[0]


def _sizes(tiling_rec: models.Tiling, n: int = 3) -> tuple[int, int]:
    """(tile, image side): n tiles per axis, cores of halo + align pixels."""
    core = tiling_rec.halo + tiling_rec.align
    return 2 * tiling_rec.halo + core, n * core


# ----------------------------------------------------------------------------------------------------
# Plans (no network)


@pytest.mark.parametrize("size", [1, 7, 100, 201, 640, 1003])
@pytest.mark.parametrize("tile", [24, 40, 64])
def test_plan_cores_partition_the_image(size, tile):
    rec = models.Tiling(halo=8, align=4, bytes_per_pixel=1.0, moments=None, finish=None)
    p = tiling.plan(size, size + 5, rec, tile, budget=10 ** 9)
    for axis in (p.rows, p.cols):
        covered = np.zeros(axis.padded, int)
        for start, c0, c1 in axis.spans:
            covered[c0:c1] += 1
            assert start % 4 == 0 and 0 <= start and start + axis.tile <= axis.padded
            # a core keeps a full halo from every tile edge that is not the image's edge
            assert c0 - start >= 8 or start == 0
            assert start + axis.tile - c1 >= 8 or start + axis.tile == axis.padded
        assert (covered == 1).all()
        assert axis.padded % 4 == 0 and axis.padded - axis.size < 4


def test_plan_auto_and_refusals():
    rec = models.Tiling(halo=8, align=4, bytes_per_pixel=10.0, moments=None, finish=None)
    assert tiling.plan(100, 100, rec, "auto", budget=10 ** 6) is None  # fits: one pass
    p = tiling.plan(1000, 1000, rec, "auto", budget=10 ** 6)
    assert p is not None and p.shape[0] * p.shape[1] * 10 <= 10 ** 6 and p.count > 1
    with pytest.raises(NstError, match="below this network's receptive field"):
        tiling.plan(100, 100, rec, 16, budget=10 ** 9)
    with pytest.raises(NstError, match="too small for even one tile"):
        tiling.plan(1000, 1000, rec, "auto", budget=100)
    with pytest.raises(NstError, match="too small for a"):
        tiling.plan(1000, 1000, rec, 64, budget=1000)
    assert tiling.parse_size("2G") == 2 * 1024 ** 3 and tiling.parse_size("500m") == 500 * 1024 ** 2
    with pytest.raises(NstError):
        tiling.parse_size("lots")


# ----------------------------------------------------------------------------------------------------
# Tiled == untiled, every family


def _check_family(st: Stylizer, alpha: float, masks: bool = False) -> None:
    tile, side = _sizes(st.family.tiling)
    x = _photo(side, side + st.family.tiling.align)
    p = st.tile_plan(x.shape[1], x.shape[2], tile)
    assert len(p.rows.spans) >= 3 and len(p.cols.spans) >= 3
    styles = [_style(st, 1), _style(st, 2)] if masks else [_style(st)]
    kw = {"alpha": alpha}
    if masks:
        m = np.zeros(x.shape[1:3], np.float32)
        m[:, : x.shape[2] // 3] = 1.0
        kw["masks"] = [m, 1.0 - m]
    ref = st.stylize(x, styles, **kw)
    exact = st.stylize(x, styles, tile=tile, tile_stats="exact", **kw)
    assert np.abs(exact - ref).max() <= TOL
    # the untiled run's own statistics passed in
    cond, mm = st._request(x, styles, None, kw.get("masks"), None)
    prep = st.family.tiling.prepare
    a = jnp.full((1,), alpha, jnp.float32)
    c2, a2 = (cond, a) if prep is None else prep(st.params, st.frozen, jnp.asarray(x), cond, mm, a, st.static)
    own = st.family.norm_stats(st.params, st.frozen, jnp.asarray(x), c2,
                               None if mm is None else jnp.asarray(mm)[None], a2, st.static)
    given = tiling.stylize_tiled(st, x[0], cond, mm, a, p, norm_stats=own, progress=False)
    assert np.abs(given - ref[0]).max() <= TOL


def test_adain_tiled_equals_untiled(random_model):
    _check_family(random_model, alpha=0.7)


@pytest.mark.slow
def test_adain_masks_tiled(random_model):
    _check_family(random_model, alpha=1.0, masks=True)


def test_multistyle26_tiled_equals_untiled(multistyle26):
    _check_family(multistyle26, alpha=0.7)


@pytest.mark.slow  # whole-network compiles at 3 x 3 tiles: the full suite runs it
def test_multistyle26_masks_tiled(multistyle26):
    _check_family(multistyle26, alpha=1.0, masks=True)


def test_arbitrary_tiled_equals_untiled(magenta_arbitrary):
    # strength below 1 mixes in the whole content's own style vector (`Tiling.prepare`)
    _check_family(magenta_arbitrary, alpha=0.6)


@pytest.mark.slow  # whole-network compiles at 3 x 3 tiles: the full suite runs it
def test_arbitrary_masks_tiled(magenta_arbitrary):
    _check_family(magenta_arbitrary, alpha=1.0, masks=True)


def test_toy_family_tiles(toy_stylizer):
    _check_family(toy_stylizer, alpha=0.5)


@pytest.mark.parametrize("model", ["multistyle26", "magenta-arbitrary"])
def test_halo_covers_the_receptive_field(model, request):
    """Flip one pixel (at every phase of the alignment) with the statistics held: nothing changes farther than
    the declared halo."""
    st = request.getfixturevalue(model.replace("-", "_"))
    rec, side = st.family.tiling, 192
    x = _photo(side, side)
    cond = st.condition(_style(st))
    a = jnp.ones((1,), jnp.float32)
    own = st.family.norm_stats(st.params, st.frozen, jnp.asarray(x), cond, None, a, st.static)
    run = jax.jit(lambda v: st.family.stats_forward(st.params, st.frozen, v, cond, None, a, own, st.static)[0])
    y0 = np.asarray(run(jnp.asarray(x)))
    reach = 0
    for phase in range(rec.align):
        c = side // 2 + phase
        x2 = x.copy()
        x2[0, c, c] = 1.0 - x2[0, c, c]
        changed = np.nonzero(np.abs(np.asarray(run(jnp.asarray(x2))) - y0).max(axis=(0, 3)) > 0)
        reach = max(reach, *(np.abs(v - c).max() for v in changed))
    assert rec.halo - 2 * rec.align < reach <= rec.halo  # and not wasteful: within two alignment steps


# ----------------------------------------------------------------------------------------------------
# Thumbnail statistics


def test_thumbnail_statistics_are_the_thumbnails(multistyle26, monkeypatch):
    """`thumbnail`: the tiles run with the statistics of the image resized to `THUMBNAIL` px (URST), not their
    own and not the full-resolution ones."""
    st = multistyle26
    tile, side = _sizes(st.family.tiling)
    x = _photo(side, side)
    monkeypatch.setattr(tiling, "THUMBNAIL", side // 2)  # a real thumbnail: the image at half size
    thumb = st.stylize(x, [3], tile=tile, tile_stats="thumbnail")
    small = tiling.thumbnail(x[0], st.family.tiling.align)
    assert max(small.shape[:2]) <= side // 2 + 4
    cond = st.condition(3)
    a = jnp.ones((1,), jnp.float32)
    own = st.family.norm_stats(st.params, st.frozen, jnp.asarray(small)[None], cond, None, a, st.static)
    p = st.tile_plan(side, side, tile)
    expected = tiling.stylize_tiled(st, x[0], cond, None, a, p, norm_stats=own, progress=False)
    assert np.abs(thumb[0] - expected).max() <= TOL
    exact = st.stylize(x, [3], tile=tile, tile_stats="exact")
    assert np.abs(thumb - exact).mean() > 10 * TOL  # the approximation is a real one (docs/tiling.md)


# ----------------------------------------------------------------------------------------------------
# The command line and big files


@pytest.fixture
def photo_file(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray((_photo(224, 240)[0] * 255).round().astype(np.uint8)).save(path)
    return path


def _cli(argv: list[str], monkeypatch) -> int:
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("stylize",))
    return cli.main(["stylize", *argv])


def test_cli_tiled_equals_untiled(photo_file, tmp_path, monkeypatch, capsys, multistyle26):
    base = [str(photo_file), "--model", "multistyle26", "--style", "3", "--content-size", "0"]
    assert _cli([*base, "-o", str(tmp_path / "one.png"), "--tile", "auto"], monkeypatch) == 0
    assert _cli([*base, "-o", str(tmp_path / "tiled.png"), "--tile", "176", "--verbose"], monkeypatch) == 0
    err = capsys.readouterr().err
    assert "tile plan:" in err and "peak memory" in err
    one = np.asarray(Image.open(tmp_path / "one.png"), np.int16)
    tiled = np.asarray(Image.open(tmp_path / "tiled.png"), np.int16)
    assert one.shape == tiled.shape == (224, 240, 3)
    assert np.abs(one - tiled).max() <= 1


@pytest.mark.parametrize(("flags", "message"), [
    (["--tile", "16"], "below this network's receptive field"),
    (["--tile", "huge"], "--tile must be auto or"),
    (["--memory-budget", "1K"], "too small for even one tile"),
    (["--memory-budget", "lots"], "--memory-budget must be a size"),
    (["--max-pixels", "5000"], "refusing to decode"),
])
def test_cli_bad_input_writes_nothing(photo_file, tmp_path, monkeypatch, capsys, flags, message, multistyle26):
    out = tmp_path / "out.png"
    argv = [str(photo_file), "--model", "multistyle26", "--style", "3", "--content-size", "0", "-o", str(out)]
    assert _cli([*argv, *flags], monkeypatch) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists() and list(tmp_path.iterdir()) == [photo_file]


def test_max_pixels_guard(photo_file):
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError, match="--max-pixels"):
        load_uint8(photo_file, max_pixels=224 * 240 // 3)
    assert Image.MAX_IMAGE_PIXELS == before  # the guard stays for every other read
    img = load_uint8(photo_file, max_pixels=224 * 240)
    assert img.dtype == np.uint8 and img.shape == (224, 240, 3)
    assert before is not None and before < 10 ** 8  # a guard by default (Pillow's 89.5 megapixels)


def test_sheet_tiles_a_content_over_the_budget(photo_file, tmp_path, monkeypatch, multistyle26):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("sheet",))
    base = ["sheet", str(photo_file), "--model", "multistyle26", "--style", "3", "--style", "5",
            "--content-size", "0"]
    assert cli.main([*base, "-o", str(tmp_path / "one.png")]) == 0
    assert cli.main([*base, "-o", str(tmp_path / "tiled.png"), "--tile", "176"]) == 0
    one = np.asarray(Image.open(tmp_path / "one.png"), np.int16)
    tiled = np.asarray(Image.open(tmp_path / "tiled.png"), np.int16)
    assert one.shape == tiled.shape and np.abs(one - tiled).max() <= 1
    assert cli.main([*base, "-o", str(tmp_path / "bad.png"), "--tile", "8"]) != 0
    assert not (tmp_path / "bad.png").exists()
