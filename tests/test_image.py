"""nst_jax.image: file I/O, resizing semantics, crops, masks and grids."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from skimage import data

from nst_jax import image as im
from nst_jax.errors import ImageError, NstError


def _u8(rng, h, w, c=3):
    return rng.integers(0, 256, size=(h, w, c) if c else (h, w), dtype=np.uint8)


def _astronaut(h=48, w=64):
    return np.asarray(Image.fromarray(data.astronaut()).resize((w, h), Image.Resampling.BILINEAR))


# ------------------------------------------------------------------------------------------ round trips


def test_uint8_round_trip_and_clipping():
    a = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(im.to_uint8(im.from_uint8(a)), a)
    f = im.from_uint8(a)
    assert f.dtype == np.float32 and f.min() == 0.0 and f.max() == 1.0
    np.testing.assert_array_equal(im.to_uint8(np.array([-0.5, 0.5 / 255, 0.6 / 255, 1.7])), [0, 0, 1, 255])


def test_png_round_trip_is_exact(tmp_path, rng):
    a = _u8(rng, 24, 40)
    path = im.save_image(tmp_path / "x.png", im.from_uint8(a)[None])
    x = im.load_image(path)
    assert x.shape == (1, 24, 40, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(im.to_uint8(x[0]), a)


def test_jpeg_round_trip_is_close(tmp_path):
    a = im.from_uint8(_astronaut())
    x = im.load_image(im.save_image(tmp_path / "x.jpg", jnp.asarray(a)))
    assert x.shape == (1,) + a.shape
    assert np.mean(np.abs(x[0] - a)) < 0.02
    assert Image.open(tmp_path / "x.jpg").format == "JPEG"


@pytest.mark.parametrize("orientation, rotate", [(1, None), (3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(tmp_path, orientation, rotate):
    stored = np.zeros((32, 48, 3), np.uint8)
    stored[:, :24] = (255, 0, 0)
    stored[:16, 24:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    expected = stored if rotate is None else np.rot90(stored, k=rotate)
    x = im.load_image(path)[0]
    assert x.shape == expected.shape
    assert np.mean(np.abs(x - im.from_uint8(expected))) < 0.02


def test_rgba_and_la_are_composited_on_white(tmp_path):
    rgba = np.array([[[255, 0, 0, 255], [255, 0, 0, 0]], [[0, 0, 255, 128], [10, 20, 30, 64]]], np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    x = im.load_image(tmp_path / "a.png")[0]
    alpha = rgba[..., 3:] / 255.0
    expected = rgba[..., :3] / 255.0 * alpha + (1.0 - alpha)
    np.testing.assert_allclose(x, expected, atol=1.0 / 255)

    la = np.array([[[0, 255], [0, 0]], [[100, 128], [200, 255]]], np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    y = im.load_image(tmp_path / "la.png")[0]
    a = la[..., 1:] / 255.0
    np.testing.assert_allclose(y, np.repeat(la[..., :1] / 255.0 * a + (1 - a), 3, axis=2), atol=1.0 / 255)


def test_palette_with_transparency_and_grayscale(tmp_path, rng):
    p = Image.new("P", (4, 3))
    p.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    idx = np.array([[0, 1, 2, 1], [1, 1, 0, 2], [2, 2, 2, 0]], np.uint8)
    p.putdata(idx.ravel().tolist())
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    x = im.load_image(tmp_path / "p.png")[0]
    palette = np.array([[1, 1, 1], [1, 0, 0], [0, 1, 0]], np.float32)  # index 0 is transparent -> white
    np.testing.assert_array_equal(x, palette[idx])

    g = _u8(rng, 10, 12, c=0)
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    y = im.load_image(tmp_path / "g.png")[0]
    assert y.shape == (10, 12, 3)
    for c in range(3):
        np.testing.assert_array_equal(y[..., c], im.from_uint8(g))


def test_sixteen_bit_grayscale_keeps_precision(tmp_path, rng):
    a = rng.integers(0, 65536, size=(20, 30), dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    x = im.load_image(tmp_path / "g16.png")
    assert x.shape == (1, 20, 30, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, :, 1], a / 65535.0, atol=1e-6)
    # The same resizing rules as 8-bit images: shorter side 10 -> 10 x int(10 * 30 / 20).
    y = im.load_image(tmp_path / "g16.png", size=10, crop=False)
    assert y.shape == (1, 10, 15, 3)
    np.testing.assert_allclose(y[0, :, :, 0], im.resize(x, (10, 15))[0, :, :, 0], atol=1e-6)


def test_cmyk_jpeg_loads_as_rgb(tmp_path):
    Image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    x = im.load_image(tmp_path / "c.jpg")
    assert x.shape == (1, 6, 8, 3)
    np.testing.assert_allclose(x[0].mean(axis=(0, 1)), [1.0, 0.0, 0.0], atol=0.03)


# ------------------------------------------------------------------------------------------ resize/crop


@pytest.mark.parametrize("hw, size, expected", [
    ((40, 60), 32, (32, 48)),
    ((30, 47), 20, (20, 31)),   # int(20 * 47 / 30) = int(31.33)
    ((47, 30), 20, (31, 20)),
    ((33, 100), 16, (16, 48)),  # int(48.48): truncation, not rounding
    ((25, 25), 25, (25, 25)),
])
def test_load_image_size_follows_torchvision_resize(tmp_path, rng, hw, size, expected):
    a = _u8(rng, *hw)
    Image.fromarray(a).save(tmp_path / "x.png")
    x = im.load_image(tmp_path / "x.png", size=size)
    assert x.shape == (1,) + expected + (3,)
    ref = Image.fromarray(a)
    if expected != hw:
        ref = ref.resize(expected[::-1], Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(im.to_uint8(x[0]), np.asarray(ref))


def test_load_image_crop_and_max_side(tmp_path, rng):
    a = _u8(rng, 40, 61)
    Image.fromarray(a).save(tmp_path / "x.png")
    full = im.load_image(tmp_path / "x.png", size=20)
    assert full.shape == (1, 20, 30, 3)
    cropped = im.load_image(tmp_path / "x.png", size=20, crop=True)
    assert cropped.shape == (1, 20, 20, 3)
    np.testing.assert_array_equal(cropped, full[:, :, 5:25])  # torchvision CenterCrop: round((30 - 20) / 2)
    capped = im.load_image(tmp_path / "x.png", max_side=30)
    assert capped.shape == (1, 19, 30, 3)  # int(30 * 40 / 61)
    assert im.load_image(tmp_path / "x.png", max_side=100).shape == (1, 40, 61, 3)  # never enlarges
    with pytest.raises(ValueError):
        im.load_image(tmp_path / "x.png", crop=True)


def test_resize_numpy_matches_pillow_and_jax(rng):
    x = rng.random((2, 20, 33, 3), dtype=np.float32)
    for hw in [(7, 12), (41, 50), (20, 16)]:
        for method, resample in [("bilinear", Image.Resampling.BILINEAR), ("area", Image.Resampling.BOX),
                                 ("nearest", Image.Resampling.NEAREST)]:
            y = im.resize(x, hw, method)
            assert isinstance(y, np.ndarray) and y.shape == (2,) + hw + (3,) and y.dtype == np.float32
            ref = np.asarray(Image.fromarray(x[1, :, :, 2]).resize(hw[::-1], resample))
            np.testing.assert_allclose(y[1, :, :, 2], ref, atol=1e-6)
            yj = jax.jit(lambda a, hw=hw, m=method: im.resize(a, hw, m))(jnp.asarray(x))
            assert isinstance(yj, jax.Array)
            np.testing.assert_allclose(np.asarray(yj), y, atol=1e-5)


def test_area_resize_is_block_mean(rng):
    x = rng.random((1, 8, 12, 3), dtype=np.float32)
    expected = x.reshape(1, 4, 2, 4, 3, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(im.resize(x, (4, 4), "area"), expected, atol=1e-6)
    np.testing.assert_allclose(np.asarray(im.resize(jnp.asarray(x), (4, 4), "area")), expected, atol=1e-6)


def test_resize_helpers_and_crops(rng):
    x = rng.random((1, 30, 47, 3), dtype=np.float32)
    assert im.resize_shorter(x, 20).shape == (1, 20, 31, 3)
    assert im.resize_max_side(x, 20).shape == (1, 12, 20, 3)
    assert im.resize_max_side(x, 64) is x
    np.testing.assert_array_equal(im.center_crop(x, 10), x[:, 10:20, 18:28])
    np.testing.assert_array_equal(im.center_crop(x, (29, 46)), x[:, 0:29, 0:46])  # round(0.5) = 0
    np.testing.assert_array_equal(im.center_crop(x, (28, 44)), x[:, 1:29, 2:46])  # round(1.5) = 2
    crops = [im.random_crop(x, (8, 9), np.random.default_rng(s)) for s in range(20)]
    assert all(c.shape == (1, 8, 9, 3) for c in crops)
    assert len({c.tobytes() for c in crops}) > 5
    np.testing.assert_array_equal(im.random_crop(x, 8, np.random.default_rng(3)),
                                  im.random_crop(x, 8, np.random.default_rng(3)))
    for c in crops:  # every crop is a window of x
        hits = [(t, s) for t in range(23) for s in range(39) if np.array_equal(x[:, t:t + 8, s:s + 9], c)]
        assert len(hits) == 1
    with pytest.raises(ValueError):
        im.center_crop(x, 31)
    with pytest.raises(ValueError):
        im.resize(x, (4, 4), "bicubic")


# ------------------------------------------------------------------------------------------ errors


def _bad_files(tmp_path, rng):
    Image.fromarray(_u8(rng, 64, 64)).save(tmp_path / "good.png")
    raw = (tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "garbage.png").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    (tmp_path / "notes.jpg").write_text("this is not an image\n")
    (tmp_path / "empty.png").write_bytes(b"")
    return ["truncated.png", "garbage.png", "notes.jpg", "empty.png", "missing.png", "."]


def test_unreadable_files_raise_image_error_naming_the_file(tmp_path, rng):
    for name in _bad_files(tmp_path, rng):
        path = tmp_path / name
        with pytest.raises(ImageError) as e:
            im.load_image(path)
        assert str(path) in str(e.value)
        assert isinstance(e.value, NstError) and "\n" not in str(e.value)
    with pytest.raises(ImageError, match="garbage.png"):
        im.load_mask(tmp_path / "garbage.png")


# 256 pixels: Pillow warns above the limit and raises above twice it; both must become ImageError.
@pytest.mark.parametrize("limit", [200, 100])
def test_decompression_bomb_guard_stays_on(tmp_path, monkeypatch, rng, limit):
    Image.fromarray(_u8(rng, 16, 16)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(ImageError, match="bomb.png"):
        im.load_image(tmp_path / "bomb.png")


def test_save_protects_existing_files_and_is_atomic(tmp_path, rng):
    a = im.from_uint8(_u8(rng, 8, 8))
    b = im.from_uint8(_u8(rng, 8, 8))
    out = tmp_path / "sub" / "out.png"
    assert im.save_image(out, a) == out
    with pytest.raises(ImageError, match="out.png"):
        im.save_image(out, b)
    np.testing.assert_array_equal(im.load_image(out)[0], a)
    im.save_image(out, b, overwrite=True)
    np.testing.assert_array_equal(im.load_image(out)[0], b)
    with pytest.raises(ImageError, match=r"out\.xyz"):
        im.save_image(tmp_path / "out.xyz", a)
    with pytest.raises(ImageError, match="noext"):
        im.save_image(tmp_path / "noext", a)
    assert sorted(os.listdir(tmp_path / "sub")) == ["out.png"]  # no temporary files left behind
    with pytest.raises(ValueError):
        im.save_image(tmp_path / "two.png", np.zeros((2, 8, 8, 3), np.float32))


def test_list_images(tmp_path, rng):
    for name in ["b.png", "a.JPG", "c.webp", ".hidden.png", "notes.txt"]:
        if name.endswith("txt"):
            (tmp_path / name).write_text("x")
        else:
            Image.fromarray(_u8(rng, 4, 4)).save(tmp_path / name, format="PNG")
    (tmp_path / "dir.png").mkdir()
    assert [p.name for p in im.list_images(tmp_path)] == ["a.JPG", "b.png", "c.webp"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="empty"):
        im.list_images(tmp_path / "empty")
    with pytest.raises(ImageError, match="b.png"):
        im.list_images(tmp_path / "b.png")


def test_load_mask(tmp_path):
    m = np.zeros((20, 30), np.uint8)
    m[:, 15:] = 255
    m[:5, :5] = 128
    Image.fromarray(m).save(tmp_path / "m.png")
    x = im.load_mask(tmp_path / "m.png")
    assert x.shape == (20, 30) and x.dtype == np.float32
    np.testing.assert_allclose(x, m / 255.0, atol=1e-6)
    y = im.load_mask(tmp_path / "m.png", shape=(10, 15))
    assert y.shape == (10, 15) and y.min() >= 0.0 and y.max() <= 1.0
    np.testing.assert_allclose(y[3:, :7], 0.0, atol=1e-6)
    np.testing.assert_allclose(y[:, 8:], 1.0, atol=1e-6)
    np.testing.assert_allclose(y[:2, :2], 128 / 255.0, atol=1e-6)
    # A coloured mask uses its luminance.
    Image.fromarray(np.full((4, 4, 3), (255, 0, 0), np.uint8)).save(tmp_path / "red.png")
    np.testing.assert_allclose(im.load_mask(tmp_path / "red.png"), 0.299, atol=1e-6)


def test_image_grid():
    a = np.zeros((1, 4, 6, 3), np.float32)
    b = np.full((2, 3, 3), 0.5, np.float32)
    mask = np.full((4, 6), 0.25, np.float32)
    g = im.image_grid([[a, b], [mask]], pad=2)
    assert g.shape == (2 + 2 * (4 + 2), 2 + 2 * (6 + 2), 3) and g.dtype == np.float32
    np.testing.assert_array_equal(g[2:6, 2:8], 0.0)
    np.testing.assert_array_equal(g[3:5, 10 + 1:10 + 4], 0.5)  # b sits centred in its 4 x 6 cell
    np.testing.assert_array_equal(g[8:12, 2:8], 0.25)
    np.testing.assert_array_equal(g[:2], 1.0)  # border
    np.testing.assert_array_equal(g[8:12, 10:16], 1.0)  # the missing cell of a short row
    flat = im.image_grid([a, a, a], pad=0)
    assert flat.shape == (4, 18, 3)
    with pytest.raises(ValueError):
        im.image_grid([np.zeros((4, 4, 5))])


def test_save_image_uses_default_file_permissions(tmp_path):
    out = im.save_image(tmp_path / "p.png", np.zeros((4, 4, 3), np.float32))
    mask = os.umask(0)
    os.umask(mask)
    assert (out.stat().st_mode & 0o777) == (0o666 & ~mask)


# ------------------------------------------------------------------------------------------ shared helpers


def test_to_rgb_composites_on_white_and_reduces_deep_images():
    la = Image.fromarray(np.stack([np.full((2, 3), 10, np.uint8), np.array([[255, 0, 128]] * 2, np.uint8)], -1),
                         "LA")
    out = np.asarray(im.to_rgb(la))
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out[:, 0], 10)
    np.testing.assert_array_equal(out[:, 1], 255)
    np.testing.assert_allclose(out[:, 2], 10 * 128 / 255 + 255 * 127 / 255, atol=1)
    deep = Image.fromarray(np.array([[0, 32768, 65535]], np.uint16))
    np.testing.assert_array_equal(np.asarray(im.to_rgb(deep))[0], [[0] * 3, [128] * 3, [255] * 3])
    flt = Image.fromarray(np.array([[-1.0, 0.5, 2.0]], np.float32))
    np.testing.assert_array_equal(np.asarray(im.to_rgb(flt))[0, :, 1], [0, 128, 255])
    assert im.to_rgb(Image.new("CMYK", (2, 2))).mode == "RGB"


def test_size_helpers_follow_torchvision_and_name_what_they_do():
    assert im.shorter_side_hw(30, 50, 20) == (20, 33)
    assert im.shorter_side_hw(50, 30, 20) == (33, 20)
    assert im.shorter_side_hw(3, 1000, 2) == (2, 666)
    assert im.center_crop_box(10, 9, 4, 4) == (3, 2)  # round((10 - 4) / 2), round(2.5) -> 2
    with pytest.raises(ValueError, match="larger"):
        im.center_crop_box(4, 4, 5, 4)
    x = np.zeros((1, 30, 45, 3), np.float32)
    assert im.resize_max_side(x, 90).shape == (1, 30, 45, 3)  # never enlarges
    assert im.fit_max_side(x, 90).shape == (1, 60, 90, 3)  # enlarges to exactly the size
    assert im.resize_max_side(np.zeros((1, 45, 31, 3), np.float32), 30).shape == (1, 30, 20, 3)  # truncated
    assert im.fit_max_side(np.zeros((1, 45, 31, 3), np.float32), 30).shape == (1, 30, 21, 3)  # rounded
    assert im.is_image_name("a.JPG") and im.is_image_name("b.tiff")
    assert not im.is_image_name(".hidden.png") and not im.is_image_name("notes.txt")


def test_mask_helpers(rng):
    assert not im.aspect_ratios_differ((100, 200), (99, 200))  # 1% apart
    assert not im.aspect_ratios_differ((100, 200), (50, 100))
    assert im.aspect_ratios_differ((100, 200), (95, 200))
    m = rng.random((8, 12)).astype(np.float32) * 1.4 - 0.2
    fit = im.fit_mask(m, (8, 12))
    np.testing.assert_array_equal(fit, np.clip(m, 0, 1))
    big = im.fit_mask(m, (16, 24))
    assert big.shape == (16, 24) and big.dtype == np.float32 and big.min() >= 0 and big.max() <= 1
    np.testing.assert_allclose(big, np.clip(im.resize(m[None, :, :, None], (16, 24))[0, :, :, 0], 0, 1))
    a, b = im.expand_masks([fit], 2)
    np.testing.assert_array_equal(a + b, 1.0)
    assert len(im.expand_masks([fit], 3)) == 1 and len(im.expand_masks([fit, fit], 2)) == 2
    grid = im.masks_to_grid([fit], (8, 12), (2, 3), 2)
    assert grid.shape == (2, 3, 2)
    np.testing.assert_allclose(grid.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(grid[..., 0], fit.reshape(2, 4, 3, 4).mean((1, 3)), atol=1e-6)


def test_coral_stays_importable_from_image():
    """README and notebooks/blend_styles.ipynb call `nst_jax.image.coral`; it is `nst_jax.color.coral`."""
    from nst_jax import color

    assert im.coral is color.coral
