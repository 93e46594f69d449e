"""The flicker metric (warping error, occlusion, SSIM, DIS flow) and the stabilisation maths.

Clips are tiny (12 frames of 64x48) and the model is the live page's calibrated random-weight AdaIN, so the
whole file compiles the encoder and the decoder once. Thresholds on measured quantities come from the runs in
docs/video.md ("What the tests assert"), with margin.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from nst_jax.demo import sample_image
from nst_jax.errors import NstError
from nst_jax.flicker import flicker_report, pair_warping_error, ssim, warping_error
from nst_jax.flow import FlowBlender, clip_flows, endpoint_error, occlusion_mask, valid_mask, warp
from nst_jax.models import MeanVar
from nst_jax.smoothing import (
    CUT_RATIO,
    DEFAULT_STRENGTH,
    StatForward,
    StatSmoother,
    cut_score,
    init_state,
    smooth_sequence,
)
from nst_jax.synthetic import Motion, _gaussian_blur, synthetic_clip

H, W, N = 48, 64, 12


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return sample_image("astronaut", 256)[0]


@pytest.fixture(scope="module")
def model(random_model):
    st = random_model
    style = sample_image("hubble", 64)
    stats = st.style_stats(style)
    sf = StatForward(st)

    def condition(n):
        return {"mean": jnp.broadcast_to(stats.mean, (n, 1, 1, 512)),
                "std": jnp.broadcast_to(stats.std, (n, 1, 1, 512))}

    def encode(frames):
        return sf.analyse(frames, condition(len(frames)), jnp.ones((len(frames),), jnp.float32))

    def draw(f, content_stats):
        n = f.shape[0]
        return np.asarray(sf.render(f, condition(n), jnp.ones((n,), jnp.float32), content_stats))

    return {"stylizer": st, "style": style, "encode": encode, "draw": draw}


def bits(a) -> np.ndarray:
    return np.asarray(a, np.float32).view(np.uint32)


# ----------------------------------------------------------------------------------------------------
# Warping and the metric


def test_warp_moves_pixels_exactly_by_integer_flows(rng):
    img = rng.random((H, W, 3), np.float32)
    flow = np.zeros((H, W, 2), np.float32)
    flow[..., 0], flow[..., 1] = 3.0, -2.0
    out, inside = warp(img, flow, return_inside=True)
    # out[y, x] = img[y - 2, x + 3] wherever that exists; elsewhere the border is repeated and marked outside.
    assert np.array_equal(out[2:, :W - 3], img[:H - 2, 3:])
    assert inside[2:, :W - 3].all() and not inside[:2].any() and not inside[:, W - 3:].any()
    half = warp(img, np.full((H, W, 2), 0.5, np.float32))
    expect = (img[:-1, :-1] + img[1:, :-1] + img[:-1, 1:] + img[1:, 1:]) / 4
    np.testing.assert_allclose(half[:-1, :-1], expect, atol=1e-6)


def test_static_clip_has_zero_warping_error(photo):
    clip = synthetic_clip(photo, 6, (H, W), "static")
    assert np.array_equal(clip.frames[0], clip.frames[-1])
    exact = flicker_report(clip.frames, clip.frames, flows=(clip.fw, clip.bw))
    dis = flicker_report(clip.frames, clip.frames)
    assert exact["warping_error"] == 0.0 and exact["valid_fraction"] == 1.0
    assert dis["warping_error"] < 1e-12 and dis["flow"] == "dis-medium"


def test_translated_clip_warps_back_exactly(photo):
    clip = synthetic_clip(photo, 5, (H, W), Motion(pan=(2.0, -1.0)), scale=1.0, blur=0.0)
    # The camera moves right 2 and up 1: each pixel moves left 2 and down 1.
    assert np.all(clip.fw[..., 0] == -2.0) and np.all(clip.fw[..., 1] == 1.0)
    assert np.array_equal(clip.frames[1][1:, :W - 2], clip.frames[0][:H - 1, 2:])
    for t in range(4):
        mask = valid_mask(clip.fw[t], clip.bw[t]) > 0
        warped = warp(clip.frames[t + 1], clip.fw[t])
        shifted = np.zeros_like(warped)
        shifted[:H - 1, 2:] = clip.frames[t + 1][1:, :W - 2]  # frame t+1 at (y + 1, x - 2)
        assert np.array_equal(warped[mask], shifted[mask]) and np.array_equal(warped[mask], clip.frames[t][mask])
        # Exactly the pixels whose flow leaves the frame are masked: the first 2 columns and the last row.
        assert mask.sum() == (H - 1) * (W - 2) and not mask[:, :2].any() and not mask[-1].any()
    assert flicker_report(clip.frames, clip.frames, flows=(clip.fw, clip.bw))["warping_error"] == 0.0


def test_warping_error_is_lais_formula(rng):
    a, b = rng.random((2, H, W, 3), np.float32)
    fw = rng.normal(0, 1.5, (H, W, 2)).astype(np.float32)
    mask = (rng.random((H, W)) > 0.3).astype(np.float32)
    warped = warp(b, fw).astype(np.float64)
    m3 = np.repeat(mask[..., None], 3, -1)
    expect = np.sum(m3 * (warped - a) ** 2) / np.sum(m3)  # evaluate_WarpError.py: the mask read as 3 channels
    assert pair_warping_error(a, b, fw, mask) == pytest.approx(expect, rel=1e-6)
    assert pair_warping_error(a, b, fw, np.zeros((H, W))) == 0.0
    mean, per = warping_error(np.stack([a, b, a]), np.stack([fw, fw]), np.stack([mask, mask]))
    assert per.shape == (2,) and mean == pytest.approx(per.mean())


def test_occlusion_check_masks_what_a_moving_object_covers(photo):
    clip = synthetic_clip(photo, 4, (H, W), Motion(object_speed=0.08))
    fw, bw = clip.fw[1], clip.bw[1]
    occluded = occlusion_mask(fw, bw)
    on_object_now = np.linalg.norm(fw, axis=-1) > 0
    on_object_next = np.linalg.norm(bw, axis=-1) > 0
    covered = on_object_next & ~on_object_now  # background at t that the object hides at t+1
    assert covered.sum() > 20 and occluded[covered].mean() > 0.9
    far = np.zeros((H, W), bool)
    far[:, W // 2 + 10:] = True  # right of the object: static background, nothing moves there
    assert not occluded[far & ~on_object_next].any()
    assert not occlusion_mask(clip.fw[0] * 0, clip.bw[0] * 0).any()


def test_dis_flow_is_close_to_the_exact_flow(photo):
    for preset in ("pan", "zoom", "shake"):
        clip = synthetic_clip(photo, 4, (H, W), preset)
        fw, _ = clip_flows(clip.frames)
        for t in range(3):
            mask = valid_mask(clip.fw[t], clip.bw[t]) > 0
            assert endpoint_error(fw[t], clip.fw[t], mask) < 0.15, preset


def test_ssim_matches_skimage(rng):
    for shape in ((48, 64, 3), (11, 11, 1), (33, 20, 3)):
        a = rng.random(shape, np.float32)
        b = np.clip(a + rng.normal(0, 0.1, shape).astype(np.float32), 0, 1)
        ref = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                    data_range=1.0, channel_axis=-1)
        assert ssim(a, b) == pytest.approx(ref, abs=1e-6)
    a = rng.random((2, 16, 16, 3), np.float32)
    assert np.allclose(ssim(a, a), 1.0)
    with pytest.raises(NstError):
        ssim(a[:, :10], a[:, :10])


@pytest.mark.slow
def test_a_blurred_video_cannot_win(photo, model):
    clip = synthetic_clip(photo, N, (H, W), "pan")
    f, stats = model["encode"](clip.frames)
    ref = model["draw"](f, stats)
    blurred = np.stack([_gaussian_blur(x, 3.0) for x in ref])
    report = flicker_report(blurred, clip.frames, ref, flows=(clip.fw, clip.bw))
    plain = flicker_report(ref, clip.frames, flows=(clip.fw, clip.bw))
    # Blurring lowers the warping error, and the SSIM to the per-frame output says what it cost.
    assert report["warping_error"] < 0.5 * plain["warping_error"]
    assert report["ssim_to_per_frame"] < 0.8
    json.dumps(report)
    assert set(report) >= {"warping_error", "ssim_to_per_frame", "ssim_to_per_frame_min", "frames", "flow"}


# ----------------------------------------------------------------------------------------------------
# Statistic smoothing


def _random_stats(rng, n: int) -> dict:
    return {"a": MeanVar(jnp.asarray(rng.normal(size=(n, 1, 1, 8)), jnp.float32),
                           jnp.asarray(rng.random((n, 1, 1, 8)) + 0.5, jnp.float32)),
            "b": {"c": MeanVar(jnp.asarray(rng.normal(size=(n, 3, 4)), jnp.float32),
                                 jnp.asarray(rng.random((n, 3, 4)) + 0.5, jnp.float32))}}


def test_strength_zero_returns_the_statistics_bit_for_bit(rng):
    stats = _random_stats(rng, 7)
    out, _, cuts = smooth_sequence(init_state(stats), stats, 0.0)
    assert not np.asarray(cuts).any()
    for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(stats), strict=True):
        assert np.array_equal(bits(x), bits(y))
    smoother = StatSmoother(0.0)
    out = smoother(stats)
    assert all(np.array_equal(bits(x), bits(y))
               for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(stats), strict=True))


def test_smoothing_is_an_ema_that_batches_and_pads_consistently(rng):
    stats = _random_stats(rng, 12)
    s = 0.8
    out, _, cuts = smooth_sequence(init_state(stats), stats, s, cut_ratio=1e9)
    assert not np.asarray(cuts).any()
    x = np.asarray(stats["b"]["c"].mean, np.float64)
    ema = x.copy()
    for t in range(1, 12):
        ema[t] = s * ema[t - 1] + (1 - s) * x[t]
    np.testing.assert_allclose(np.asarray(out["b"]["c"].mean), ema, rtol=1e-5, atol=1e-6)
    # Three batches of 4, the last padded with junk frames marked invalid, give the same stream.
    smoother = StatSmoother(s, cut_ratio=1e9)
    parts = []
    for i in (0, 4, 8):
        batch = jax.tree.map(lambda v, i=i: v[i:i + 4], stats)
        if i == 8:
            batch = jax.tree.map(lambda v: jnp.concatenate([v[:3], v[:1] * 100]), batch)
            parts.append(jax.tree.map(lambda v: v[:3], smoother(batch, np.array([1, 1, 1, 0], bool))))
        else:
            parts.append(smoother(batch))
    joined = jax.tree.map(lambda *v: jnp.concatenate(v), *parts)
    np.testing.assert_allclose(np.asarray(joined["a"].var), np.asarray(out["a"].var)[:11], rtol=1e-6)
    assert smoother.frames == 11


def test_scene_cuts_reset_the_smoothing(photo, model):
    # Three shots of different photos, the camera moving in each: cuts exactly at the two boundaries.
    shots = [synthetic_clip(photo, 5, (H, W), "pan").frames,
             synthetic_clip(sample_image("coffee", 256)[0], 5, (H, W), "shake").frames,
             synthetic_clip(sample_image("chelsea", 256)[0], 2, (H, W), "zoom").frames]
    _, stats = model["encode"](np.concatenate(shots))
    smoother = StatSmoother(0.9)
    out = smoother(jax.tree.map(lambda v: v[:8], stats))
    out = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), out, smoother(jax.tree.map(lambda v: v[8:], stats)))
    assert smoother.cuts == [5, 10]
    # At a cut the frame's own statistics are used, bit for bit; before it the EMA differs from them.
    assert np.array_equal(bits(out.mean[5]), bits(stats.mean[5]))
    assert np.array_equal(bits(out.mean[10]), bits(stats.mean[10]))
    assert not np.array_equal(bits(out.mean[4]), bits(stats.mean[4]))
    # The same jumps on an absolute scale: cuts score several times the usual frame-to-frame change.
    one = [jax.tree.map(lambda v, t=t: v[t], stats) for t in range(12)]
    scores = np.array([float(cut_score(one[t], one[t + 1])) for t in range(11)])
    within = np.delete(scores, [4, 9])
    assert scores[[4, 9]].min() > CUT_RATIO * within.mean(), scores


@pytest.mark.slow
def test_stabilised_adain_at_strength_zero_is_the_per_frame_render(photo, model):
    clip = synthetic_clip(photo, 4, (H, W), "pan")
    f, stats = model["encode"](clip.frames)
    smoothed = StatSmoother(0.0)(stats)
    assert np.array_equal(bits(model["draw"](f, smoothed)), bits(model["draw"](f, stats)))
    # ... and that render is AdaIN's own stylization, to rounding (the command's strength 0 is the Stylizer's
    # pass itself).
    per_frame = model["stylizer"].stylize(clip.frames, [model["style"]])
    np.testing.assert_allclose(model["draw"](f, stats), per_frame, atol=2e-5)


def test_smoothing_removes_statistic_jitter(photo, model):
    # A still scene whose statistics jitter from frame to frame (what noisy per-frame statistics do): smoothing
    # takes most of the jitter out of the output.
    clip = synthetic_clip(photo, N, (H, W), "static")
    f, stats = model["encode"](clip.frames)
    # 2% jitter (5% would already be taken for scene cuts, which reset the smoothing).
    g = np.random.default_rng(3).normal(0, 0.02, (N, 1, 1, 1)).astype(np.float32)
    jittered = MeanVar(stats.mean * (1 + jnp.asarray(g)), stats.var * (1 + jnp.asarray(g)) ** 2)
    ref = model["draw"](f, jittered)
    out = model["draw"](f, StatSmoother(0.9)(jittered))
    r0 = flicker_report(ref, clip.frames, flows=(clip.fw, clip.bw))
    r = flicker_report(out, clip.frames, ref, flows=(clip.fw, clip.bw))
    assert r["warping_error"] < 0.05 * r0["warping_error"] and r["ssim_to_per_frame"] > 0.99


def test_stabilisers_on_synthetic_clips(photo, model):
    """What each stabiliser does to the random-weight AdaIN on the moving clips (docs/video.md has the numbers).

    Statistic smoothing does not lower this model's warping error (its flicker is not in the statistics); the
    assertions keep it from getting worse than measured and keep the output close to per-frame. Flow blending
    does lower it.
    """
    for preset in ("pan", "zoom", "shake"):
        clip = synthetic_clip(photo, N, (H, W), preset)
        f, stats = model["encode"](clip.frames)
        ref = model["draw"](f, stats)
        base = flicker_report(ref, clip.frames, flows=(clip.fw, clip.bw))["warping_error"]
        smooth = flicker_report(model["draw"](f, StatSmoother(0.9)(stats)), clip.frames, ref,
                                  flows=(clip.fw, clip.bw))
        assert smooth["warping_error"] < 1.4 * base and smooth["ssim_to_per_frame"] > 0.96, (preset, smooth)
        blended = flicker_report(FlowBlender(0.5)(clip.frames, ref), clip.frames, ref,
                                   flows=(clip.fw, clip.bw))
        assert blended["warping_error"] < 0.6 * base and blended["ssim_to_per_frame"] > 0.92, (preset, blended)


def test_region_statistics_match_region_adain(rng):
    from nst_jax.models import adain

    f = jnp.asarray(rng.random((2, 5, 6, 8)), jnp.float32)
    m = rng.random((2, 5, 6, 2)).astype(np.float32)
    m[:, 0, 0] = 0.0  # an uncovered position keeps its features
    m = jnp.asarray(m)
    s_mean = jnp.asarray(rng.normal(size=(2, 2, 8)), jnp.float32)
    s_std = jnp.asarray(rng.random((2, 2, 8)) + 0.5, jnp.float32)
    expect = adain.region_adain(f, m, s_mean, s_std)
    own = adain.region_stats(f, m)
    a = s_std / jnp.sqrt(own.var)
    b = s_mean - own.mean * a
    w = m / jnp.maximum(jnp.sum(m, -1, keepdims=True), 1e-12)
    t = jnp.where(jnp.sum(m, -1, keepdims=True) > 0, f * jnp.einsum("nhwk,nkc->nhwc", w, a)
                  + jnp.einsum("nhwk,nkc->nhwc", w, b), f)
    np.testing.assert_allclose(np.asarray(t), np.asarray(expect), rtol=1e-5, atol=1e-5)


def test_synthetic_clip_checks():
    with pytest.raises(NstError, match="unknown motion"):
        synthetic_clip(np.zeros((64, 64, 3), np.float32), 3, (8, 8), "spin")
    with pytest.raises(NstError, match="leaves"):
        synthetic_clip(np.zeros((20, 20, 3), np.float32), 3, (16, 16), Motion(pan=(4, 0)), scale=1.0)
    with pytest.raises(NstError):
        StatSmoother(1.0)


def test_command_defaults_match_the_module():
    from nst_jax.commands import video

    assert video.DEFAULT_STRENGTH == DEFAULT_STRENGTH and video.CUT_RATIO == CUT_RATIO
