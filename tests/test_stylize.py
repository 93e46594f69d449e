"""The Stylizer against a plain-PyTorch AdaIN (pytorch-AdaIN's network), random weights in its file formats.

Shapes are reused across tests (content 44x60, styles 48x48 / 40x56) so the module compiles only a handful of
programs. 44x60 is non-square and not a multiple of 8: it exercises ceil-mode pooling and the final crop.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import adain_reference as R
from nst_jax import color
from nst_jax import image as imagelib
from nst_jax.errors import ImageError, NstError, WeightsError
from nst_jax.image import adaptive_avg_pool, masks_to_grid
from nst_jax.stylize import StyleStats, Stylizer

H, W = 44, 60


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| relative to the reference's largest magnitude."""
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    vgg, dec = R.random_models(0)
    return vgg, dec, R.encoder_to_relu4_1(vgg)


@pytest.fixture(scope="module")
def weight_files(models, tmp_path_factory):
    # The released files predate PyTorch 1.6's zip format: the encoder is written the legacy way, the
    # decoder as zip.
    vgg_path, dec_path, (vgg, dec) = R.save_random_weights(tmp_path_factory.mktemp("weights"), 0)
    assert all(torch.equal(a, b) for a, b in
               zip(vgg.state_dict().values(), models[0].state_dict().values(), strict=True))
    return vgg_path, dec_path


@pytest.fixture(scope="module")
def stylizer(weight_files):
    return Stylizer.load(vgg=weight_files[0], decoder=weight_files[1])


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    from skimage import data

    astronaut = data.astronaut().astype(np.float32) / 255.0  # 512x512
    chelsea = data.chelsea().astype(np.float32) / 255.0  # 300x451
    content = np.asarray(imagelib.resize(chelsea[None], (H, W), "area"), np.float32)
    style1 = np.asarray(imagelib.resize(astronaut[None], (48, 48), "area"), np.float32)
    style2 = rng.random((1, 48, 48, 3), dtype=np.float32) * 0.6 + 0.2
    style3 = np.asarray(imagelib.resize(data.coffee()[None].astype(np.float32) / 255.0, (40, 56), "area"),
                        np.float32)
    return content, style1, style2, style3


def reference(models, content, style, alpha=1.0, weights=None):
    _, dec, enc = models
    with torch.no_grad():
        if weights is not None:
            styles = R.to_torch(np.concatenate(style))
            c = R.to_torch(content).expand(styles.shape[0], -1, -1, -1)
            out = R.style_transfer(enc, dec, c, styles, alpha, weights)
        else:
            out = R.style_transfer(enc, dec, R.to_torch(content), R.to_torch(style), alpha)
    out = R.to_numpy(out)
    assert out.shape[1:3] == (48, 64)  # 8x the ceil-mode relu4_1 grid (6 x 8), larger than the content
    return np.clip(out[:, :H, :W], 0.0, 1.0)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_single_style_matches_reference(stylizer, models, images, alpha):
    content, style1, _, _ = images
    out = stylizer.stylize(content, [style1], alpha=alpha)
    ref = reference(models, content, style1, alpha)
    assert out.shape == (1, H, W, 3) and out.dtype == np.float32
    # the comparison is not hidden by clipping
    assert 0.05 < ref.std() and np.mean((ref > 0) & (ref < 1)) > 0.9
    assert rel_err(out, ref) < 1e-4


def test_interpolation_matches_reference_with_float_weights(stylizer, models, images):
    content, style1, style2, _ = images
    out = stylizer.stylize(content, [style1, style2], weights=[0.7, 0.3], alpha=0.8)
    ref = reference(models, content, [style1, style2], 0.8, weights=[0.7, 0.3])
    assert rel_err(out, ref) < 1e-4
    # Weights are normalised: 7:3 is 0.7:0.3; and the blend differs from either style alone.
    same = stylizer.stylize(content, [style1, style2], weights=[7, 3], alpha=0.8)
    np.testing.assert_allclose(same, out, atol=1e-5)
    alone = stylizer.stylize(content, [style1], alpha=0.8)
    assert np.abs(alone - out).max() > 1e-2


def _region_masks():
    cols = np.arange(W)[None, :] < 30
    rows = np.arange(H)[:, None] < 22
    left = np.broadcast_to(cols, (H, W)).astype(np.float32)
    top_right = ((~cols) & rows).astype(np.float32)
    bottom_right = ((~cols) & ~rows).astype(np.float32)
    return left, top_right, bottom_right


@pytest.mark.parametrize("n_regions", [2, 3])
def test_masks_match_lua_style_region_adain(stylizer, models, images, n_regions):
    content, style1, style2, style3 = images
    left, top_right, bottom_right = _region_masks()
    if n_regions == 2:
        masks, styles = [left, 1.0 - left], [style1, style2]
        ref_styles = np.concatenate([style1, style2])
    else:
        # three styles of two different sizes: the reference encodes each style separately
        masks, styles = [left, top_right, bottom_right], [style1, style2, style3]
        ref_styles = None
    out = stylizer.stylize(content, styles, masks=masks, alpha=0.9)
    _, dec, enc = models
    with torch.no_grad():
        if ref_styles is None:
            ref = _masked_reference_separate(enc, dec, content, styles, masks, 0.9)
        else:
            ref = R.masked_style_transfer(enc, dec, R.to_torch(content), R.to_torch(ref_styles),
                                          torch.from_numpy(np.stack(masks)), 0.9)
    ref = np.clip(R.to_numpy(ref)[:, :H, :W], 0.0, 1.0)
    assert rel_err(out, ref) < 1e-4
    if n_regions == 2:
        # the Lua convention: one mask for two styles (white = first style)
        np.testing.assert_allclose(stylizer.stylize(content, styles, masks=[left], alpha=0.9), out, atol=1e-6)


def _masked_reference_separate(enc, dec, content, styles, masks, alpha):
    """R.masked_style_transfer, but with style images of different sizes (encoded one at a time)."""
    import torch.nn.functional as F

    content_f = enc(R.to_torch(content))
    _, c, h, w = content_f.shape
    grid = F.adaptive_avg_pool2d(torch.from_numpy(np.stack(masks))[:, None], (h, w))[:, 0]
    view = content_f.view(c, -1)
    target = view.clone()
    for k, style in enumerate(styles):
        idx = torch.nonzero(grid[k].reshape(-1) == 1).view(-1)
        part = view.index_select(1, idx).view(1, c, idx.numel(), 1)
        t = R.adaptive_instance_normalization(part, enc(R.to_torch(style)))
        target.index_copy_(1, idx, t.view(c, -1))
    return dec(target.view_as(content_f) * alpha + content_f * (1 - alpha))


def test_soft_masks_blend_and_uncovered_positions_keep_content(stylizer, images):
    content, style1, style2, _ = images
    # A mask covering everything with one style is that style alone (region = whole image).
    full = np.ones((H, W), np.float32)
    zero = np.zeros((H, W), np.float32)
    alone = stylizer.stylize(content, [style1], alpha=0.9)
    masked = stylizer.stylize(content, [style1, style2], masks=[full, zero], alpha=0.9)
    np.testing.assert_allclose(masked, alone, atol=2e-5)
    # No coverage at all: the content's own features, as alpha = 0.
    recon = stylizer.stylize(content, [style1], alpha=0.0)
    uncovered = stylizer.stylize(content, [style1, style2], masks=[zero, zero])
    np.testing.assert_allclose(uncovered, recon, atol=2e-5)
    # A mask given at another resolution with the same aspect ratio is stretched over the content
    # (bilinear: the edge softens a little).
    left = _region_masks()[0]
    big = np.repeat(np.repeat(left, 2, axis=0), 2, axis=1)
    np.testing.assert_allclose(stylizer.stylize(content, [style1, style2], masks=[big, 1 - big], alpha=0.9),
                               stylizer.stylize(content, [style1, style2], masks=[left, 1 - left], alpha=0.9),
                               atol=5e-3)


def test_batches_and_one_content_many_styles(stylizer, images):
    content, style1, style2, style3 = images
    flipped = content[:, :, ::-1]
    batch = stylizer.stylize(np.concatenate([content, flipped]), [style1], alpha=[1.0, 0.5])
    np.testing.assert_allclose(batch[0:1], stylizer.stylize(content, [style1]), atol=1e-5)
    np.testing.assert_allclose(batch[1:2], stylizer.stylize(flipped, [style1], alpha=0.5), atol=1e-5)
    each = stylizer.stylize_each(content, [style1, style2, style3], alpha=0.7)
    assert each.shape == (3, H, W, 3)
    for i, s in enumerate([style1, style2, style3]):
        np.testing.assert_allclose(each[i:i + 1], stylizer.stylize(content, [s], alpha=0.7), atol=1e-5)


def test_cached_style_is_not_encoded_again(weight_files, images):
    st = Stylizer.load(vgg=weight_files[0], decoder=weight_files[1])
    content, style1, style2, _ = images
    calls = []
    inner = st._cond_fn
    st._cond_fn = lambda *a: calls.append(a[2].shape) or inner(*a)
    first = st.stylize(content, [style1], alpha=0.5)
    assert len(calls) == 1 and st.style_encodes == 1
    second = st.stylize(content, [style1], alpha=0.5)
    st.stylize(content, [style1.copy(), style2], weights=[0.5, 0.5])  # a copy of a known image is a hit
    st.style_stats(style1[0])  # (H, W, 3) and (1, H, W, 3) are the same image
    assert len(calls) == 2 and st.style_encodes == 2  # only style2 was new
    np.testing.assert_array_equal(first, second)
    st.clear_cache()
    st.style_stats(style1)
    assert len(calls) == 3


def test_stats_api_and_blending(stylizer, images):
    content, style1, style2, _ = images
    s1, s2 = stylizer.style_stats(style1), stylizer.style_stats(style2)
    assert isinstance(s1, StyleStats) and s1.mean.shape == (1, 1, 1, 512) and s1.std.shape == (1, 1, 1, 512)
    blend = Stylizer.blend_stats([s1, s2], [3.0, 1.0])
    np.testing.assert_allclose(blend.mean, 0.75 * np.asarray(s1.mean) + 0.25 * np.asarray(s2.mean), rtol=1e-6)
    np.testing.assert_allclose(blend.std, 0.75 * np.asarray(s1.std) + 0.25 * np.asarray(s2.std), rtol=1e-6)
    # StyleStats are accepted wherever style images are.
    np.testing.assert_allclose(stylizer.stylize(content, [blend]),
                               stylizer.stylize(content, [style1, style2], weights=[3, 1]), atol=1e-5)
    # The low-level batched call: per-image statistics and alpha, content shared.
    mean = np.concatenate([np.asarray(s1.mean), np.asarray(s2.mean)])
    std = np.concatenate([np.asarray(s1.std), np.asarray(s2.std)])
    out = np.asarray(stylizer.stylize_stats(content, mean, std, np.array([1.0, 0.5], np.float32)))
    np.testing.assert_allclose(out[1:2], stylizer.stylize(content, [style2], alpha=0.5), atol=1e-5)
    for bad in ([1.0, -1.0], [0.0, 0.0], [1.0]):
        with pytest.raises(NstError, match="weights"):
            Stylizer.blend_stats([s1, s2], bad)


def test_colour_preservation(stylizer, images):
    content, style1, style2, _ = images
    hist = stylizer.stylize(content, [style1], preserve_color="histogram", alpha=0.8)
    recoloured = color.coral(style1, content)
    np.testing.assert_allclose(hist, stylizer.stylize(content, [recoloured], alpha=0.8), atol=1e-5)
    lum = stylizer.stylize(content, [style1], preserve_color="luminance")
    plain = stylizer.stylize(content, [style1])
    np.testing.assert_allclose(lum, color.luminance_transfer(plain, content), atol=1e-6)
    # chroma comes from the content where nothing was clipped
    yiq_l, yiq_c = color.rgb_to_yiq(lum), color.rgb_to_yiq(content)
    inside = np.all((lum > 0.01) & (lum < 0.99), axis=-1)
    np.testing.assert_allclose(yiq_l[..., 1:][inside], yiq_c[..., 1:][inside], atol=1e-4)
    # both modes work with blends and masks (pytorch-AdaIN skips colour preservation for blends)
    blend_hist = stylizer.stylize(content, [style1, style2], weights=[0.5, 0.5], preserve_color="histogram")
    expect = stylizer.stylize(content, [recoloured, color.coral(style2, content)], weights=[0.5, 0.5])
    np.testing.assert_allclose(blend_hist, expect, atol=1e-5)
    left = _region_masks()[0]
    masked = stylizer.stylize(content, [style1, style2], masks=[left], preserve_color="luminance")
    assert masked.shape == (1, H, W, 3)
    # histogram matching is per content image in a batch
    two = np.concatenate([content, content[:, ::-1]])
    batch = stylizer.stylize(two, [style1], preserve_color="histogram")
    np.testing.assert_allclose(batch[1:2], stylizer.stylize(two[1:2], [style1], preserve_color="histogram"),
                               atol=1e-5)


def test_bad_arguments(stylizer, images):
    content, style1, style2, _ = images
    left = _region_masks()[0]
    with pytest.raises(NstError, match="alpha"):
        stylizer.stylize(content, [style1], alpha=1.5)
    with pytest.raises(NstError, match="3 masks for 2 styles"):
        stylizer.stylize(content, [style1, style2], masks=[left, left, left])
    with pytest.raises(ImageError, match="aspect"):
        stylizer.stylize(content, [style1, style2], masks=[np.ones((40, 40), np.float32)])
    with pytest.raises(NstError, match="one or the other"):
        stylizer.stylize(content, [style1, style2], masks=[left], weights=[1, 1])
    with pytest.raises(NstError, match="style weights has 2 values for 1 styles"):
        stylizer.stylize(content, [style1], weights=[1, 2])
    with pytest.raises(NstError, match="content"):
        stylizer.stylize(content[..., :2], [style1])
    with pytest.raises(NstError, match="luminance or histogram"):
        stylizer.stylize(content, [style1], preserve_color="lab")
    with pytest.raises(NstError, match="recolour"):
        stylizer.stylize(content, [stylizer.style_stats(style1)], preserve_color="histogram")


def test_adaptive_avg_pool_matches_torch():
    rng = np.random.default_rng(1)
    m = rng.random((37, 53)).astype(np.float32)
    ours = adaptive_avg_pool(m, (5, 7))
    theirs = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(m)[None, None], (5, 7))[0, 0].numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    grid = masks_to_grid([m > 0.5], (37, 53), (5, 7), 2)
    np.testing.assert_allclose(grid.sum(-1), 1.0, atol=1e-6)


def _torchvision_state_dict() -> dict:
    """A torchvision-layout VGG19 `features` state_dict up to conv4_1 (random)."""
    sd, cin = {}, 3
    index = 0
    for cout, n in ((64, 2), (128, 2), (256, 4), (512, 1)):
        for _ in range(n):
            sd[f"features.{index}.weight"] = torch.randn(cout, cin, 3, 3) * 0.01
            sd[f"features.{index}.bias"] = torch.zeros(cout)
            cin = cout
            index += 2
        index += 1  # the pool
    return sd


def test_wrong_encoder_for_the_decoder_is_refused(weight_files, tmp_path):
    path = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save(_torchvision_state_dict(), path)
    with pytest.raises(WeightsError, match="torchvision.*trained on the adain encoder"):
        Stylizer.load(vgg=path, decoder=weight_files[1])
    with pytest.raises(WeightsError):
        Stylizer.load(vgg=weight_files[0], decoder=weight_files[0])  # a VGG given as the decoder


@pytest.mark.slow
def test_checkpoint_decoder_pairs_with_its_config(tmp_path, images):
    import jax

    from nst_jax import checkpoints
    from nst_jax.models import decoder as D

    params = jax.device_get(D.init_params(jax.random.key(3)))
    manager = checkpoints.make_manager(tmp_path)
    checkpoints.save_checkpoint(manager, 5, params, {"count": np.zeros((), np.int32)}, {"step": 5},
                                {"vgg_weights": "random:adain"})
    manager.wait_until_finished()
    st = Stylizer.load(checkpoint=tmp_path)
    assert st.spec.source == "adain"
    out = st.stylize(images[0], [images[1]])
    assert out.shape == (1, H, W, 3) and np.all(np.isfinite(out))
    with pytest.raises(NstError, match="not both"):
        Stylizer.load(decoder="x.pth", checkpoint=tmp_path)
    path = tmp_path / "tv.pth"
    torch.save(_torchvision_state_dict(), path)
    with pytest.raises(WeightsError, match="trained on the adain encoder"):
        Stylizer.load(vgg=path, checkpoint=tmp_path)


def test_open_model_reads_a_pth_once_and_builds_the_same_stylizer(weight_files, stylizer, images, monkeypatch):
    """`--model decoder.pth`: one read of the file tells a fast_neural_style network from an AdaIN decoder."""
    from nst_jax.errors import DownloadError
    from nst_jax.models import open as opener
    from nst_jax.weights import pth

    reads = []
    real = pth.load_state_dict
    monkeypatch.setattr(pth, "load_state_dict", lambda path, *a, **k: reads.append(str(path)) or real(path, *a, **k))
    with pytest.raises(DownloadError):  # read once; then it asks for AdaIN's encoder, not cached here
        opener.open_model(str(weight_files[1]))
    assert reads == [str(weight_files[1])]
    loaded = opener.open_model(decoder=str(weight_files[1]), vgg=str(weight_files[0]))
    assert reads.count(str(weight_files[1])) == 2  # once more for the second open, not twice
    assert loaded.family.name == "adain" and loaded.origin == f"decoder {weight_files[1]}"
    assert loaded.family.encoder_setup is not None and "bfloat16" in loaded.family.dtypes
    st = Stylizer(loaded)
    content, style1 = images[0], images[1]
    np.testing.assert_array_equal(st.stylize(content, [style1]), stylizer.stylize(content, [style1]))
    with pytest.raises(NstError, match="takes no vgg"):
        opener.open_model("multistyle26", vgg=weight_files[0])


def test_offline_fallback_is_decided_by_the_opener(monkeypatch):
    from nst_jax import models
    from nst_jax.errors import DownloadError
    from nst_jax.models import open as opener
    from nst_jax.weights import magenta_arbitrary

    def no_download(*_):
        raise DownloadError("cannot fetch adain-decoder; check the network")

    stand_in = opener.Loaded(models.get("arbitrary"), {}, {}, None, opener.FALLBACK)
    monkeypatch.setattr(opener, "_open_default", no_download)
    monkeypatch.setattr(opener, "_open_named", lambda name: stand_in if name == opener.FALLBACK else None)
    monkeypatch.setattr(magenta_arbitrary, "find_files", lambda: ("p", "t"))
    monkeypatch.delenv("NST_JAX_OFFLINE", raising=False)
    got = opener.open_model(fallback=True)
    assert got.origin == "magenta-arbitrary" and got.note.startswith(
        "note: AdaIN's weights are not available (cannot fetch adain-decoder)")
    for kw in ({}, {"fallback": True, "vgg": "adain"}):  # asked for AdaIN, or not allowed: the download error
        with pytest.raises(DownloadError):
            opener.open_model(**kw)
    monkeypatch.setenv("NST_JAX_OFFLINE", "1")
    with pytest.raises(DownloadError):
        opener.open_model(fallback=True)
