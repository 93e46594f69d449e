"""nst_jax.color: colour spaces, colour preservation (luminance and CORAL transfer) and colour jitter."""

from __future__ import annotations

import colorsys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from nst_jax import color, image


def _u8(rng, h, w, c=3):
    return rng.integers(0, 256, size=(h, w, c) if c else (h, w), dtype=np.uint8)


def test_colour_space_round_trips_and_references(rng):
    x = rng.random((2, 5, 7, 3), dtype=np.float32)
    for fwd, inv in [(color.rgb_to_yiq, color.yiq_to_rgb), (color.rgb_to_ycbcr, color.ycbcr_to_rgb)]:
        y = fwd(x)
        assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == x.shape
        np.testing.assert_allclose(inv(y), x, atol=1e-6)
        yj = jax.jit(fwd)(jnp.asarray(x))
        assert isinstance(yj, jax.Array) and yj.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(yj), y, atol=1e-6)
        np.testing.assert_allclose(np.asarray(jax.jit(inv)(yj)), x, atol=1e-5)
    yiq = color.rgb_to_yiq(x)
    np.testing.assert_allclose(yiq[..., 0], x @ np.array([0.299, 0.587, 0.114], np.float32), atol=1e-6)
    np.testing.assert_allclose(color.rgb_to_yiq(np.full((1, 1, 1, 3), 0.3, np.float32))[..., 1:], 0.0, atol=1e-6)
    # Pillow's YCbCr conversion is the same JPEG transform (in 8 bits).
    u = _u8(rng, 6, 9)
    pil = np.asarray(Image.fromarray(u).convert("YCbCr")).astype(np.float32)
    np.testing.assert_allclose(color.rgb_to_ycbcr(image.from_uint8(u)) * 255.0, pil, atol=1.01)


def _coloured(rng, n, h, w, mean, cov):
    pix = rng.multivariate_normal(mean, cov, size=(n, h, w)).astype(np.float32)
    return pix


def _stats(x):
    f = np.asarray(x, np.float64).reshape(-1, 3)
    return f.mean(0), np.cov(f, rowvar=False, bias=True)


def test_coral_matches_target_mean_and_covariance(rng):
    source = _coloured(rng, 2, 40, 50, [0.3, 0.5, 0.6], [[0.004, 0.002, 0.0], [0.002, 0.006, -0.001],
                                                         [0.0, -0.001, 0.003]])
    target = _coloured(rng, 1, 30, 20, [0.6, 0.45, 0.35], [[0.010, 0.004, 0.003], [0.004, 0.008, 0.002],
                                                           [0.003, 0.002, 0.005]])
    assert source.min() > 0 and source.max() < 1 and target.min() > 0 and target.max() < 1
    out = color.coral(source, target)
    assert isinstance(out, np.ndarray) and out.shape == source.shape and out.dtype == np.float32
    tm, tc = _stats(target)
    for i in range(2):
        m, c = _stats(out[i])
        np.testing.assert_allclose(m, tm, atol=1e-4)
        np.testing.assert_allclose(c, tc, atol=2e-5, rtol=0.01)
        assert not np.allclose(_stats(source[i])[1], tc, rtol=0.2)
    # The recolouring is affine per image: spatial structure survives.
    ys, yo = source[0] @ [0.299, 0.587, 0.114], out[0] @ [0.299, 0.587, 0.114]
    assert np.corrcoef(ys.ravel(), yo.ravel())[0, 1] > 0.5
    outj = jax.jit(color.coral)(jnp.asarray(source), jnp.asarray(target))
    np.testing.assert_allclose(np.asarray(outj), out, atol=1e-4)
    # Output is clipped, and flat images do not blow up (eps).
    flat = np.full((1, 8, 8, 3), 0.5, np.float32)
    assert np.isfinite(color.coral(flat, target)).all()
    assert np.isfinite(color.coral(source[:1], flat)).all()
    wild = color.coral(source[:1], _coloured(rng, 1, 8, 8, [0.5] * 3, np.eye(3)))
    assert wild.min() >= 0.0 and wild.max() <= 1.0


def test_luminance_transfer_keeps_content_chroma_and_stylized_luma(rng):
    stylized = (0.3 + 0.4 * rng.random((2, 12, 16, 3))).astype(np.float32)
    content = (0.35 + 0.3 * rng.random((2, 12, 16, 3))).astype(np.float32)
    out = color.luminance_transfer(stylized, content)
    assert out.shape == stylized.shape and out.dtype == np.float32
    yo, yc, ys = color.rgb_to_yiq(out), color.rgb_to_yiq(content), color.rgb_to_yiq(stylized)
    np.testing.assert_allclose(yo[..., 0], ys[..., 0], atol=1e-5)
    np.testing.assert_allclose(yo[..., 1:], yc[..., 1:], atol=1e-5)
    outj = jax.jit(color.luminance_transfer)(jnp.asarray(stylized), jnp.asarray(content))
    np.testing.assert_allclose(np.asarray(outj), out, atol=1e-5)
    # A content image of another size is resized to the stylized one; one content broadcasts over the batch.
    small = image.resize(content[:1], (6, 8), "area")
    out2 = color.luminance_transfer(stylized, small)
    assert out2.shape == stylized.shape
    chroma = color.rgb_to_yiq(image.resize(small, (12, 16)))[..., 1:]
    np.testing.assert_allclose(color.rgb_to_yiq(out2)[..., 1:], np.broadcast_to(chroma, out2[..., 1:].shape),
                               atol=1e-5)
    red = np.array([[[[1.0, 0.0, 0.0]]]], np.float32)
    extreme = color.luminance_transfer(np.ones((1, 4, 4, 3), np.float32), red)
    assert extreme.min() >= 0.0 and extreme.max() <= 1.0


def test_hsv_round_trip_matches_colorsys():
    rng = np.random.default_rng(0)
    x = rng.random((50, 3)).astype(np.float32)
    hsv = color.rgb_to_hsv(x)
    want = np.array([colorsys.rgb_to_hsv(*p) for p in x])
    np.testing.assert_allclose(hsv, want, atol=1e-5)
    np.testing.assert_allclose(color.hsv_to_rgb(hsv), x, atol=1e-5)
    # Greys have no hue or saturation; black has no saturation either.
    grey = color.rgb_to_hsv(np.array([[0.0, 0.0, 0.0], [0.4, 0.4, 0.4]], np.float32))
    np.testing.assert_allclose(grey, [[0, 0, 0], [0, 0, 0.4]], atol=1e-7)


def test_color_jitter_follows_the_draws(rng):
    a = _u8(rng, 6, 7)
    out = color.color_jitter(a, np.random.default_rng(5))
    assert out.shape == a.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, color.color_jitter(a, np.random.default_rng(5)))
    # The same three draws by hand: brightness shift, saturation factor, hue shift.
    draws = np.random.default_rng(5)
    shift, factor, turn = draws.uniform(-0.8, 0.8), draws.uniform(0.5, 1.5), draws.uniform(-0.2, 0.2)
    want = []
    for p in (np.clip(a.reshape(-1, 3) / 255.0 + shift, 0, 1)):
        h, s, v = colorsys.rgb_to_hsv(*p)
        want.append(colorsys.hsv_to_rgb((h + turn) % 1.0, min(max(s * factor, 0), 1), v))
    np.testing.assert_allclose(out.reshape(-1, 3), np.rint(np.asarray(want) * 255), atol=1)
    # No jitter at all leaves the image as it is.
    still = color.color_jitter(a, rng, brightness=0.0, saturation=(1.0, 1.0), hue=0.0)
    np.testing.assert_array_equal(still, a)
