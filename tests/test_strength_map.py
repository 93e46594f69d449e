"""Strength maps (`Stylizer.stylize(strength_map=)`, `nst-jax stylize --strength-map`): per-pixel style strength in
one pass, for every family.

Per family (AdaIN with random weights, `multistyle26` and `magenta-arbitrary` with their real weights, and the
toy family defined outside nst_jax): an all-ones map is the plain stylization, an all-zeros map the family's
alpha-0 output, a uniform map s is alpha = s, and a ramp lies between the two ends (near the full style where
the map is high, near the alpha-0 output where it is low).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image
from skimage import data

from nst_jax import models, strength
from nst_jax.errors import ImageError, NstError
from nst_jax.image import resize
from nst_jax.stylize import Stylizer

H, W = 40, 56


def _content() -> np.ndarray:
    return resize(np.asarray(data.chelsea(), np.float32)[None] / 255.0, (H, W))


def _style_image(seed: int = 0) -> np.ndarray:
    img = data.astronaut() if seed == 0 else data.rocket()[:400, :400]
    return resize(np.asarray(img, np.float32)[None] / 255.0, (48, 48))


@pytest.fixture(scope="module")
def toy():
    """The family defined outside nst_jax (tests/toy_family.py), used directly (not registered in `MODELS`)."""
    import jax

    import toy_family
    from nst_jax.models.open import Loaded

    params = jax.tree.map(np.asarray, toy_family.init_params(jax.random.PRNGKey(3)))
    return Stylizer(Loaded(toy_family.FAMILY, params, {}, toy_family.ToySpec(), "toy"))


def _styles(st: Stylizer) -> list:
    return [0, 1] if st.caps.style_table and not st.caps.style_images else [_style_image(0), _style_image(1)]


FAMILIES = ["random_model", "multistyle26", "magenta_arbitrary", "toy"]
# Tolerances on [0, 1]: the masked pass (per-region statistics for AdaIN, per-pixel rows for CIN) rounds in
# another order than the plain pass; the arbitrary network's mix is exact by construction.
TOL = {"random_model": 2e-4, "multistyle26": 1e-5, "magenta_arbitrary": 1e-5, "toy": 1e-6}
UNIFORM_TOL = {"random_model": 2e-2}


@pytest.fixture(params=FAMILIES)
def family_stylizer(request):
    return request.param, request.getfixturevalue(request.param)


def test_ends_uniform_and_gradient(family_stylizer):
    name, st = family_stylizer
    x = _content()
    style = _styles(st)[:1]
    full = st.stylize(x, style)
    zero = st.stylize(x, style, alpha=0.0)
    tol = TOL[name]
    np.testing.assert_allclose(st.stylize(x, style, strength_map=np.ones((H, W))), full, atol=tol)
    np.testing.assert_allclose(st.stylize(x, style, strength_map=np.zeros((H, W))), zero, atol=tol)
    # a uniform map s is alpha = s (the family's own definition of strength, per pixel); AdaIN's region
    # statistics divide by the region's weight minus 1 (unbiased), 17.5 - 1 against 35 - 1 on this 5 x 7 grid
    half = st.stylize(x, style, alpha=0.5)
    np.testing.assert_allclose(st.stylize(x, style, strength_map=np.full((H, W), 0.5, np.float32)), half,
                               atol=UNIFORM_TOL.get(name, tol))


def test_a_ramp_lies_between_the_ends(family_stylizer):
    """Near the alpha-0 output where the map is low, near the full style where it is high. At 96 x 128: on a
    smaller picture the arbitrary network's instance norms (whose statistics span the whole picture) and its 9 x 9
    borders blur the two sides together."""
    _, st = family_stylizer
    h, w = 96, 128
    x = resize(_content(), (h, w))
    style = _styles(st)[:1]
    full, zero = st.stylize(x, style), st.stylize(x, style, alpha=0.0)
    assert np.abs(full - zero).mean() > 0.01
    ramp = np.broadcast_to(np.linspace(0, 1, w, dtype=np.float32), (h, w))
    out = st.stylize(x, style, strength_map=ramp)
    left, right = slice(0, w // 4), slice(w - w // 4, w)
    to_full, to_zero = np.abs(out - full), np.abs(out - zero)
    assert to_zero[:, :, left].mean() < to_full[:, :, left].mean()
    assert to_full[:, :, right].mean() < to_zero[:, :, right].mean()
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_with_blends_masks_alpha_and_colour(family_stylizer):
    name, st = family_stylizer
    x = np.concatenate([_content(), _content()[:, ::-1]])
    styles = _styles(st)
    left = np.zeros((H, W), np.float32)
    left[:, : W // 2] = 1.0
    ones, tol = np.ones((H, W), np.float32), max(TOL[name], 1e-5)
    kw = {"preserve_color": "luminance"}
    np.testing.assert_allclose(st.stylize(x, styles, weights=[0.3, 0.7], strength_map=ones, alpha=0.8, **kw),
                               st.stylize(x, styles, weights=[0.3, 0.7], alpha=0.8, **kw), atol=tol)
    np.testing.assert_allclose(st.stylize(x, styles, masks=[left, 1 - left], strength_map=ones, **kw),
                               st.stylize(x, styles, masks=[left, 1 - left], **kw), atol=tol)
    np.testing.assert_allclose(st.stylize(x, styles, masks=[left, 1 - left], strength_map=0 * ones),
                               st.stylize(x, styles, alpha=0.0), atol=tol)
    # one map per image
    maps = np.stack([ones, 0 * ones])
    out = st.stylize(x, styles[:1], strength_map=maps)
    np.testing.assert_allclose(out[0], st.stylize(x[:1], styles[:1])[0], atol=tol)
    np.testing.assert_allclose(out[1], st.stylize(x[1:], styles[:1], alpha=0.0)[0], atol=tol)


def test_bad_maps_and_families(random_model):
    st, x, style = random_model, _content(), [_style_image()]
    for bad, match in [(np.full((H, W), 1.5), "values in \\[0, 1\\]"), (np.full((H, W), np.nan), "values in"),
                       (np.ones((2, 3, H, W)), "must be \\(H, W\\)"), (np.ones((3, H, W)), "N = 1 or 1"),
                       (np.ones((H, W), bool), "dtype bool")]:
        with pytest.raises(NstError, match=match):
            st.stylize(x, style, strength_map=bad)
    with pytest.raises(ImageError, match="aspect ratios differ"):
        st.stylize(x, style, strength_map=np.ones((H, H)))
    # another size of the same aspect ratio is stretched to the content
    np.testing.assert_allclose(st.stylize(x, style, strength_map=np.zeros((2 * H, 2 * W))),
                               st.stylize(x, style, alpha=0.0), atol=TOL["random_model"])
    # a family that says it cannot is refused in one line, before any work
    family = dataclasses.replace(st.family, caps=dataclasses.replace(st.caps, strength_map=False))
    with pytest.raises(NstError, match="cannot take a strength map"):
        strength.check_family(family)


def test_own_condition_is_the_alpha_zero_output(random_model, magenta_arbitrary):
    """Unmasked, the content's own condition is the alpha-0 output (the contract's promise)."""
    import jax.numpy as jnp

    x = jnp.asarray(_content())
    for st in (random_model, magenta_arbitrary):
        own = st.family.own_condition(st.params, st.frozen, x, None, st.static)
        np.testing.assert_allclose(np.asarray(st.stylize_conditions(x, own, [1.0])),
                                   st.stylize(x, [_style_image()], alpha=0.0), atol=2e-4)


def test_every_family_declares_how():
    for name in models.MODELS:
        family = models.get(name)
        if family.caps.strength_map:
            assert family.own_condition is not None or family.alpha_pixels, name


def test_gradient_maps():
    r = strength.gradient((20, 30), kind="radial", center=(0.5, 0.5), radius=0.2, softness=0.3)
    assert r.shape == (20, 30) and r.dtype == np.float32
    assert r[10, 15] == 1.0 and r[0, 0] == 0.0 and 0 < r[10, 10] < 1
    lin = strength.gradient((20, 30), kind="linear", angle=0.0, softness=2.0)
    assert np.all(np.diff(lin, axis=1) > 0) and np.all(lin[:, :1] < 0.5) and np.all(lin[:, -1:] > 0.5)
    np.testing.assert_allclose(strength.gradient((20, 30), kind="linear", invert=True), 1 - strength.gradient(
        (20, 30), kind="linear"))
    with pytest.raises(NstError, match="radial or linear"):
        strength.gradient((4, 4), kind="spiral")


# ----------------------------------------------------------------------------------------------------
# The command line


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import adain_reference as R

    d = tmp_path_factory.mktemp("smap")
    vgg, dec, _ = R.save_random_weights(d, 0)
    Image.fromarray(data.chelsea()).save(d / "chelsea.png")  # 451x300 -> 48x32
    Image.fromarray(data.astronaut()).save(d / "astronaut.png")
    ramp = np.broadcast_to(np.linspace(0, 255, 451).astype(np.uint8), (300, 451))
    Image.fromarray(np.ascontiguousarray(ramp)).save(d / "ramp.png")
    Image.fromarray(np.full((300, 451), 255, np.uint8)).save(d / "white.png")
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(d / "square.png")
    (d / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a PNG")
    return {"d": d, "w": ["--vgg", str(vgg), "--decoder", str(dec), "--content-size", "32", "--style-size", "32"]}


def _main(argv: list[str]) -> int:
    from nst_jax import cli

    return cli.main(["stylize", *argv])


def _read(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0


def test_cli_strength_map(files, tmp_path, capsys):
    d = files["d"]
    base = [str(d / "chelsea.png"), "--style", str(d / "astronaut.png"), *files["w"]]
    assert _main([*base, "-o", str(tmp_path / "plain.png")]) == 0
    assert _main([*base, "--strength-map", str(d / "white.png"), "-o", str(tmp_path / "white.png")]) == 0
    assert np.abs(_read(tmp_path / "white.png") - _read(tmp_path / "plain.png")).max() <= 1 / 255 + 1e-6
    assert _main([*base, "--strength-map", str(d / "ramp.png"), "-o", str(tmp_path / "ramp.png")]) == 0
    assert _read(tmp_path / "ramp.png").shape == (32, 48, 3)
    # the folder form names its outputs as usual
    assert _main([*base, "--strength-map", str(d / "ramp.png"), "--out-dir", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "chelsea_stylized_astronaut.png").is_file()
    capsys.readouterr()


@pytest.mark.parametrize("case, match", [("square", "aspect ratios differ"), ("junk", "junk.png"),
                                         ("missing", "no such strength map")])
def test_cli_bad_maps(files, tmp_path, capsys, case, match):
    d = files["d"]
    out = tmp_path / "out.png"
    argv = [str(d / "chelsea.png"), "--style", str(d / "astronaut.png"), *files["w"],
            "--strength-map", str(d / f"{case}.png"), "-o", str(out)]
    assert _main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nst-jax: error: ") and "\n" not in err and match in err, err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_adain_own_region_keeps_its_features(random_model):
    """AdaIN's own condition is the last region's own statistics: its features pass AdaIN unchanged there (the
    whole image's statistics would shift them towards the other region's)."""
    import jax.numpy as jnp

    from nst_jax.models import adain

    st = random_model
    x = jnp.asarray(resize(_content(), (64, 64)))
    step = np.zeros((1, 64, 64, 1), np.float32)
    step[:, :, 32:] = 1.0  # the style on the right half (whole cells of the 8 x 8 grid), the content on the left
    masks = jnp.asarray(np.concatenate([step, 1 - step], axis=-1))
    own = adain.own_condition(st.params, st.frozen, x, masks, st.static)
    style = st.condition(_style_image())
    f = adain.content_features(st.vgg, x, st.static)
    grid = np.concatenate([np.repeat(step[:, ::8, ::8], 1, 0), 1 - step[:, ::8, ::8]], axis=-1)
    t = adain.region_adain(f, jnp.asarray(grid), jnp.concatenate([style["mean"].reshape(1, 1, -1),
                                                                   own["mean"].reshape(1, 1, -1)], 1),
                           jnp.concatenate([style["std"].reshape(1, 1, -1), own["std"].reshape(1, 1, -1)], 1))
    np.testing.assert_allclose(np.asarray(t)[:, :, :4], np.asarray(f)[:, :, :4], rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(t)[:, :, 4:] - np.asarray(f)[:, :, 4:]).mean() > 1e-2
