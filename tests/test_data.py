"""Training data streams: sources, augmentation, determinism, exact resume, and bad images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from nst_jax import data
from nst_jax.data import Augment, DataError, ImageStream, Skipped


def _write(path, h, w, seed=0, fmt=None):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    a = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), rng.integers(0, 256, (h, w))], -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a.astype(np.uint8)).save(path, format=fmt)
    return path


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imgs"
    for i in range(5):
        _write(root / "genre_a" / f"{i}.png", 40 + 3 * i, 56, seed=i)
    for i in range(3):
        _write(root / "genre_b" / f"{i}.jpg", 60, 44 + i, seed=10 + i)
    (root / ".hidden.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    return root


AUG = Augment(image_size=16, resize_size=24, min_side=8)


def test_parse_source():
    assert data.parse_source("tfds:coco/2017") == ("tfds", "coco/2017")
    assert data.parse_source("folder:/data/wikiart") == ("folder", "/data/wikiart")
    for bad in ("coco/2017", "hf:wikiart", "folder:", "tfds"):
        with pytest.raises(DataError, match="tfds:NAME"):
            data.parse_source(bad)


def test_scan_folder_is_recursive_sorted_and_skips_non_images(folder):
    found = data.scan_folder(folder)
    assert [p.relative_to(folder).as_posix() for p in found] == (
        [f"genre_a/{i}.png" for i in range(5)] + [f"genre_b/{i}.jpg" for i in range(3)])


def test_empty_or_missing_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no image files under .*empty"):
        data.open_source(f"folder:{tmp_path / 'empty'}")
    with pytest.raises(DataError, match="image folder not found"):
        data.open_source(f"folder:{tmp_path / 'nope'}")


def test_stream_batches_and_determinism(folder):
    src = data.open_source(f"folder:{folder}")
    a = ImageStream(src, AUG, batch_size=3, seed=7, threads=2)
    b = ImageStream(src, AUG, batch_size=3, seed=7, threads=1)
    c = ImageStream(src, AUG, batch_size=3, seed=8, threads=2)
    xa = [next(a) for _ in range(4)]  # 12 images: crosses the epoch boundary (8 files)
    xb = [next(b) for _ in range(4)]
    xc = [next(c) for _ in range(4)]
    assert xa[0].shape == (3, 16, 16, 3) and xa[0].dtype == np.float32
    assert all(0.0 <= x.min() and x.max() <= 1.0 for x in xa)
    for u, v in zip(xa, xb, strict=True):
        np.testing.assert_array_equal(u, v)  # thread count does not change the stream
    assert not all(np.array_equal(u, v) for u, v in zip(xa, xc, strict=True))


def test_stream_state_resumes_exactly(folder):
    src = data.open_source(f"folder:{folder}")
    a = ImageStream(src, AUG, batch_size=3, seed=1, threads=2)
    for _ in range(3):
        next(a)
    state = a.get_state()
    expected = [next(a) for _ in range(3)]
    b = ImageStream(src, AUG, batch_size=3, seed=1, threads=2)
    b.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(b), want)
    assert b.seen == a.seen


def test_corrupt_and_tiny_images_are_skipped_and_counted(folder):
    (folder / "genre_a" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (folder / "genre_b" / "text.png").write_text("this is not a png")
    _write(folder / "genre_b" / "tiny.png", 4, 30)
    good = _write(folder / "genre_b" / "trunc.jpg", 64, 64, fmt="JPEG").read_bytes()
    (folder / "genre_b" / "trunc.jpg").write_bytes(good[: len(good) // 2])
    src = data.open_source(f"folder:{folder}")
    assert len(src.items) == 12
    seen: list[Skipped] = []
    stream = ImageStream(src, AUG, batch_size=4, seed=0, threads=2, on_skip=lambda s, n: seen.append(s))
    for _ in range(6):  # 24 good images = 3 epochs of the 8 good files
        assert next(stream).shape == (4, 16, 16, 3)
    assert stream.skipped == len(seen) >= 8  # 4 bad files, seen at least twice each
    names = {s.where.rsplit("/", 1)[-1] for s in seen}
    assert names == {"corrupt.jpg", "text.png", "tiny.png", "trunc.jpg"}
    assert any("too small" in s.reason for s in seen)
    assert stream.get_state()["skipped"] == stream.skipped


def test_all_bad_images_is_a_clear_error(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(b"garbage")
    stream = ImageStream(data.open_source(f"folder:{tmp_path}"), AUG, batch_size=2, seed=0, threads=1,
                         on_skip=lambda s, n: None)
    with pytest.raises(DataError, match="none of the 3 images .* could be used"):
        next(stream)


def test_crop_matches_torchvision_semantics(tmp_path):
    """Shorter side to resize_size, Pillow bilinear (torchvision Resize on PIL), then RandomCrop's offsets."""
    path = _write(tmp_path / "x.png", 30, 50)
    img = Image.open(path).convert("RGB")
    aug = Augment(image_size=16, resize_size=20, min_side=1)
    out = data.augment(img, aug, np.random.default_rng(3))
    resized = img.resize((33, 20), Image.Resampling.BILINEAR)  # int(20 * 50 / 30) = 33
    rng = np.random.default_rng(3)
    top, left = int(rng.integers(0, 20 - 16 + 1)), int(rng.integers(0, 33 - 16 + 1))
    np.testing.assert_array_equal(out, np.asarray(resized)[top:top + 16, left:left + 16])
    square = data.augment(img, Augment(16, 20, "square", min_side=1), np.random.default_rng(3))
    resized = np.asarray(img.resize((20, 20), Image.Resampling.BILINEAR))
    rng = np.random.default_rng(3)
    top, left = int(rng.integers(0, 5)), int(rng.integers(0, 5))
    np.testing.assert_array_equal(square, resized[top:top + 16, left:left + 16])


def test_magenta_augmentation(tmp_path):
    img = Image.open(_write(tmp_path / "x.png", 40, 48)).convert("RGB")
    aug = Augment(image_size=16, resize_size=24, mode="magenta", min_side=1)
    a = data.augment(img, aug, np.random.default_rng(0))
    b = data.augment(img, aug, np.random.default_rng(0))
    c = data.augment(img, Augment(16, 24, min_side=1), np.random.default_rng(0))
    assert a.shape == (16, 16, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_jpeg_draft_decodes_large_images_at_reduced_size(tmp_path):
    path = _write(tmp_path / "big.jpg", 600, 1000, fmt="JPEG")
    img = data.decode(path, None, draft=128)
    assert 128 <= min(img.size) < 600
    assert min(data.decode(path, None).size) == 600


def test_decode_handles_tfds_examples():
    arr = np.zeros((20, 30, 1), np.uint8)
    assert data.decode({"image": arr}, "image").size == (30, 20)
    with pytest.raises(KeyError, match="image_key"):
        data.decode({"picture": arr}, "image")


def test_fixed_images_skip_bad_ones(folder):
    (folder / "genre_a" / "0.png").write_bytes(b"broken")
    src = data.open_source(f"folder:{folder}")
    imgs = data.fixed_images(src, AUG, 3)
    assert imgs.shape == (3, 16, 16, 3) and imgs.dtype == np.float32
    with pytest.raises(DataError, match="fewer than 20 usable"):
        data.fixed_images(src, AUG, 20)


def test_tfds_mock_data_source():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        src = data.open_source("tfds:dtd", split="train")
        assert len(src.items) == 6
        stream = ImageStream(src, AUG, batch_size=2, seed=0, threads=2, on_skip=lambda s, n: None)
        x = next(stream)
    assert x.shape == (2, 16, 16, 3)


def test_tfds_failure_is_a_data_error():
    with pytest.raises(DataError, match="cannot open tfds dataset 'no_such_dataset_xyz'"):
        data.open_source("tfds:no_such_dataset_xyz", download=False)


@pytest.mark.parametrize("value, offline", [("1", True), ("on", True), (" Yes ", True), ("TRUE", True),
                                            ("0", False), ("", False), ("off", False)])
def test_tfds_downloads_unless_offline(monkeypatch, value, offline):
    """tfds reads NST_JAX_OFFLINE as the weight downloads do (`on` once let tfds download while weights stayed
    offline)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    seen = {}

    def data_source(name, *, split, data_dir, download):
        seen["download"] = download
        return [{"image": np.zeros((8, 8, 3), np.uint8)}]

    monkeypatch.setattr(tfds, "data_source", data_source)
    monkeypatch.setenv("NST_JAX_OFFLINE", value)
    data.open_source("tfds:dtd")
    assert seen["download"] is not offline
    data.open_source("tfds:dtd", download=True)  # an explicit choice wins
    assert seen["download"] is True


def test_decode_composites_alpha_and_reduces_sixteen_bits(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0
    rgba[:2, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = np.asarray(data.decode(tmp_path / "a.png", None))
    np.testing.assert_array_equal(out[:2], np.broadcast_to([200, 0, 0], (2, 5, 3)))
    np.testing.assert_array_equal(out[2:], 255)  # transparent: white
    deep = np.array([[0, 257, 65535]], np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    np.testing.assert_array_equal(np.asarray(data.decode(tmp_path / "d.png", None))[0, :, 0], [0, 1, 255])
