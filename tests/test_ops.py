"""nst_jax.ops against NumPy and PyTorch references: random inputs, batch > 1, non-square sizes, jitted."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nst_jax import ops


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def _feats(rng, shape=(3, 7, 10, 5), scale=2.0, shift=0.5):
    return (rng.standard_normal(shape) * scale + shift).astype(np.float32)


# -------------------------------------------------------------------------------- statistics / norms


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("eps", [1e-5, 0.0])
def test_mean_std(rng, unbiased, eps):
    x = _feats(rng)
    mean, std = jax.jit(partial(ops.mean_std, eps=eps, unbiased=unbiased))(x)
    assert mean.shape == std.shape == (3, 1, 1, 5)
    ref_var = np.var(x.astype(np.float64), axis=(1, 2), ddof=1 if unbiased else 0, keepdims=True)
    ref_mean = x.astype(np.float64).mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, np.sqrt(ref_var + eps), rtol=1e-5)


def test_mean_std_single_pixel_does_not_divide_by_zero():
    x = jnp.ones((2, 1, 1, 4), jnp.float32)
    _, std = ops.mean_std(x)
    np.testing.assert_allclose(std, np.sqrt(1e-5), rtol=1e-6)


def _torch_adain(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """pytorch-AdaIN function.py, verbatim in substance."""
    def calc_mean_std(feat):
        n, c = feat.shape[:2]
        var = feat.reshape(n, c, -1).var(dim=2) + eps
        return feat.reshape(n, c, -1).mean(dim=2).view(n, c, 1, 1), var.sqrt().view(n, c, 1, 1)

    s_mean, s_std = calc_mean_std(style)
    c_mean, c_std = calc_mean_std(content)
    return (content - c_mean) / c_std * s_std + s_mean


def test_adain_matches_pytorch_adain(rng):
    content = _feats(rng, (2, 6, 9, 8))
    style = _feats(rng, (2, 11, 5, 8), scale=0.7, shift=-1.0)
    out = jax.jit(ops.adain)(content, style)
    ref = _nhwc(_torch_adain(_nchw(content), _nchw(style)))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    # The output carries the style's statistics.
    m, s = ops.mean_std(out)
    sm, ss = ops.mean_std(style)
    np.testing.assert_allclose(m, sm, atol=1e-4)
    np.testing.assert_allclose(s, ss, rtol=1e-4)


def test_adain_broadcasts_one_style_and_accepts_stats(rng):
    content = _feats(rng, (3, 6, 4, 8))
    style = _feats(rng, (1, 5, 5, 8))
    out = ops.adain(content, style)
    for i in range(3):
        np.testing.assert_allclose(out[i:i + 1], ops.adain(content[i:i + 1], style), rtol=1e-5, atol=1e-5)
    sm, ss = ops.mean_std(style)
    np.testing.assert_allclose(jax.jit(ops.adain_with_stats)(content, sm, ss), out, rtol=1e-5, atol=1e-5)
    # Per-pixel statistics (masks): each pixel takes its own target mean/std.
    mean_map = jnp.broadcast_to(jnp.arange(4, dtype=jnp.float32)[None, None, :, None], (3, 6, 4, 8))
    out_map = ops.adain_with_stats(content, mean_map, jnp.ones_like(mean_map))
    cm, cs = ops.mean_std(content)
    np.testing.assert_allclose(out_map, (content - cm) / cs + mean_map, rtol=1e-5, atol=1e-5)


def test_instance_norm_and_cin_with_per_image_gamma_beta(rng):
    x = _feats(rng, (2, 5, 7, 6))
    ref = (x - x.mean(axis=(1, 2), keepdims=True)) / np.sqrt(x.var(axis=(1, 2), keepdims=True) + 1e-5)
    np.testing.assert_allclose(jax.jit(ops.instance_norm)(x), ref, rtol=1e-5, atol=1e-5)
    torch_ref = _nhwc(F.instance_norm(_nchw(x), eps=1e-5))
    np.testing.assert_allclose(ops.instance_norm(x), torch_ref, rtol=1e-5, atol=1e-5)

    gamma = rng.standard_normal(6).astype(np.float32)
    beta = rng.standard_normal(6).astype(np.float32)
    np.testing.assert_allclose(jax.jit(ops.cin)(x, gamma, beta), ref * gamma + beta, rtol=1e-5, atol=1e-5)
    gammas = rng.standard_normal((2, 6)).astype(np.float32)
    betas = rng.standard_normal((2, 6)).astype(np.float32)
    out = jax.jit(ops.cin)(x, gammas, betas)
    for i in range(2):
        np.testing.assert_allclose(out[i], ref[i] * gammas[i] + betas[i], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("normalize, div", [("chw", lambda c, h, w: c * h * w), ("hw", lambda c, h, w: h * w),
                                            ("c", lambda c, h, w: c), ("none", lambda c, h, w: 1)])
def test_gram_normalisations(rng, normalize, div):
    x = _feats(rng, (2, 6, 9, 4))
    g = jax.jit(partial(ops.gram, normalize=normalize))(x)
    assert g.shape == (2, 4, 4)
    f = x.astype(np.float64).reshape(2, -1, 4)
    ref = np.einsum("npc,npd->ncd", f, f) / div(4, 6, 9)
    np.testing.assert_allclose(g, ref, rtol=1e-5)
    np.testing.assert_allclose(g, np.swapaxes(g, 1, 2), rtol=1e-6)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("power", [2.0, 1.0, 1.5])
def test_total_variation(rng, reduction, power):
    x = rng.random((2, 6, 9, 3), dtype=np.float32)
    tv = jax.jit(partial(ops.total_variation, reduction=reduction, power=power))(x)
    xd = x.astype(np.float64)
    dy = np.abs(np.diff(xd, axis=1)) ** power
    dx = np.abs(np.diff(xd, axis=2)) ** power
    ref = dy.sum() + dx.sum() if reduction == "sum" else dy.mean() + dx.mean()
    assert tv.shape == ()
    np.testing.assert_allclose(tv, ref, rtol=1e-5)
    assert float(ops.total_variation(jnp.ones((1, 4, 5, 3), jnp.float32))) == 0.0


# -------------------------------------------------------------------------------- resampling / padding


@pytest.mark.parametrize("factor", [2, 3])
def test_upsample_nearest_matches_torch(rng, factor):
    x = _feats(rng, (2, 3, 5, 4))
    out = jax.jit(partial(ops.upsample_nearest, factor=factor))(x)
    ref = _nhwc(F.interpolate(_nchw(x), scale_factor=factor, mode="nearest"))
    assert out.shape == (2, 3 * factor, 5 * factor, 4)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("pad", [1, 2])
def test_reflect_pad_matches_torch(rng, pad):
    x = _feats(rng, (2, 4, 6, 3))
    out = jax.jit(partial(ops.reflect_pad, pad=pad))(x)
    ref = _nhwc(F.pad(_nchw(x), (pad, pad, pad, pad), mode="reflect"))
    np.testing.assert_array_equal(out, ref)


def _torch_conv(x, kernel, bias, padding):
    w = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
    b = None if bias is None else torch.from_numpy(bias)
    t = _nchw(x)
    kh, kw = kernel.shape[:2]
    if padding == "reflect" and (kh > 1 or kw > 1):
        t = F.pad(t, (kw // 2, kw // 2, kh // 2, kh // 2), mode="reflect")
        return _nhwc(F.conv2d(t, w, b))
    if padding == "zero":
        return _nhwc(F.conv2d(t, w, b, padding=(kh // 2, kw // 2)))
    return _nhwc(F.conv2d(t, w, b))


@pytest.mark.parametrize("padding", ["zero", "reflect", "valid"])
@pytest.mark.parametrize("ksize", [(3, 3), (1, 1), (5, 3)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv2d_matches_torch(rng, padding, ksize, with_bias):
    x = _feats(rng, (2, 7, 10, 4))
    kernel = (rng.standard_normal(ksize + (4, 6)) * 0.3).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32) if with_bias else None
    out = jax.jit(partial(ops.conv2d, padding=padding))(x, kernel, bias)
    ref = _torch_conv(x, kernel, bias, padding)
    assert out.shape == ref.shape
    if padding != "valid" or ksize == (1, 1):
        assert out.shape == (2, 7, 10, 6)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_conv2d_reflect_gradient_matches_torch(rng):
    x = _feats(rng, (1, 6, 5, 3))
    kernel = (rng.standard_normal((3, 3, 3, 2)) * 0.3).astype(np.float32)
    g = jax.jit(jax.grad(lambda a: jnp.sum(ops.conv2d(a, kernel, None, "reflect") ** 2)))(x)
    t = _nchw(x).requires_grad_(True)
    w = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
    (F.conv2d(F.pad(t, (1, 1, 1, 1), mode="reflect"), w) ** 2).sum().backward()
    np.testing.assert_allclose(g, _nhwc(t.grad), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("hw", [(1, 5), (2, 2), (3, 1), (6, 4)])
@pytest.mark.parametrize("ksize", [(3, 3), (5, 5), (5, 3)])
def test_conv2d_reflect_equals_valid_conv_of_jnp_pad(rng, hw, ksize):
    # tiny maps (deep layers of small images) reflect as numpy does, even when the pad exceeds the size
    x = _feats(rng, (2,) + hw + (3,))
    kernel = (rng.standard_normal(ksize + (3, 4)) * 0.3).astype(np.float32)
    ph, pw = ksize[0] // 2, ksize[1] // 2
    ref = ops.conv2d(jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), mode="reflect"), kernel, None, "valid")
    out = jax.jit(partial(ops.conv2d, padding="reflect"))(x, kernel, None)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_conv2d_reflect_forward_and_second_order_derivatives(rng):
    x = _feats(rng, (1, 5, 4, 2))
    t = _feats(rng, (1, 5, 4, 2))
    kernel = (rng.standard_normal((3, 3, 2, 2)) * 0.3).astype(np.float32)

    def f(a):
        return ops.conv2d(a, kernel, None, "reflect")

    def g(a):
        return ops.conv2d(jnp.pad(a, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect"), kernel, None, "valid")

    _, jf = jax.jvp(f, (x,), (t,))
    _, jg = jax.jvp(g, (x,), (t,))
    np.testing.assert_allclose(jf, jg, rtol=1e-5, atol=1e-5)
    hf = jax.hessian(lambda a: jnp.sum(f(a) ** 3))(x)
    hg = jax.hessian(lambda a: jnp.sum(g(a) ** 3))(x)
    np.testing.assert_allclose(hf, hg, rtol=1e-4, atol=1e-4)


def test_conv2d_rejects_unknown_padding(rng):
    with pytest.raises(ValueError, match="circular"):
        ops.conv2d(jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, 1)), None, "circular")


# -------------------------------------------------------------------------------- pooling


POOL_CASES = [(hw, window, stride)
              for hw in [(8, 12), (7, 11), (5, 6), (2, 3)]
              for window, stride in [(2, 2), (3, 2), (1, 2), (3, 3), (2, 1)]
              if window <= min(hw)]


@pytest.mark.parametrize("hw, window, stride", POOL_CASES)
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_pools_match_torch(rng, hw, window, stride, ceil_mode):
    x = _feats(rng, (2,) + hw + (3,))
    mx = jax.jit(partial(ops.max_pool, window=window, stride=stride, ceil_mode=ceil_mode))(x)
    av = jax.jit(partial(ops.avg_pool, window=window, stride=stride, ceil_mode=ceil_mode))(x)
    ref_max = _nhwc(F.max_pool2d(_nchw(x), window, stride, ceil_mode=ceil_mode))
    ref_avg = _nhwc(F.avg_pool2d(_nchw(x), window, stride, ceil_mode=ceil_mode))
    assert mx.shape == ref_max.shape and av.shape == ref_avg.shape
    np.testing.assert_array_equal(mx, ref_max)
    np.testing.assert_allclose(av, ref_avg, rtol=1e-5, atol=1e-6)


def test_ceil_mode_keeps_the_odd_row_and_column(rng):
    x = _feats(rng, (1, 5, 7, 2))
    mx = ops.max_pool(x, 2, 2, ceil_mode=True)
    assert mx.shape == (1, 3, 4, 2)
    np.testing.assert_array_equal(mx[0, 2, 3], x[0, 4, 6])
    np.testing.assert_array_equal(mx[0, 2, 0], np.maximum(x[0, 4, 0], x[0, 4, 1]))
    av = ops.avg_pool(x, 2, 2, ceil_mode=True)
    np.testing.assert_allclose(av[0, 2, 3], x[0, 4, 6], rtol=1e-6)
    np.testing.assert_allclose(av[0, 1, 3], (x[0, 2, 6] + x[0, 3, 6]) / 2, rtol=1e-6)
    assert ops.max_pool(x, 2, 2).shape == (1, 2, 3, 2)


# -------------------------------------------------------------------------------- bf16 inference (opt-in)


def _adain_nets(size: int, rng):
    """A random AdaIN encoder/decoder whose float32 pictures span the inside of [0, 1] (little clipping, so the
    bf16 comparison is not decided by the clip)."""
    from nst_jax import vgg
    from nst_jax.models import adain
    from nst_jax.models import decoder as dec
    from nst_jax.stylize import Stylizer

    spec = vgg.SPECS["adain"]
    vp = vgg.init_params(jax.random.PRNGKey(0), spec, adain.TAP)
    vp["conv0"] = {k: v / 255.0 for k, v in vp["conv0"].items()}  # O(1) activations, as the released weights
    dp = dec.init_params(jax.random.PRNGKey(1))
    content = rng.random((2, size, size, 3), dtype=np.float32)
    style = rng.random((1, size, size, 3), dtype=np.float32)
    st = Stylizer(vp, spec, dp)
    m, s = st.style_stats(style)
    raw = np.asarray(adain.decode(st.decoder, ops.adain_with_stats(
        adain.content_features(st.vgg, jnp.asarray(content), spec), m, s)))
    gain = np.float32(0.2 / raw.std())
    dp["conv1_1"] = {"kernel": dp["conv1_1"]["kernel"] * gain,
                     "bias": dp["conv1_1"]["bias"] * gain + np.float32(0.5 - raw.mean() * gain)}
    return vp, spec, dp, content, style


# Measured on random networks (benchmarks/RESULTS.md, "bf16 inference"); the bound leaves room for other weights.
BF16_MAX_ABS = 1e-2


@pytest.mark.slow
def test_adain_bf16_stylizer_matches_float32(rng):
    from nst_jax.stylize import Stylizer

    vp, spec, dp, content, style = _adain_nets(48, rng)
    ref = Stylizer(vp, spec, dp).stylize(content, [style], alpha=0.8)
    st16 = Stylizer(vp, spec, dp, dtype=jnp.bfloat16)
    assert jax.tree.leaves(st16.params)[0].dtype == jnp.bfloat16  # weights held in bf16
    out = st16.stylize(content, [style], alpha=0.8)
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert np.mean((ref <= 0) | (ref >= 1)) < 0.05
    diff = np.abs(out - ref)
    assert diff.max() < BF16_MAX_ABS, diff.max()
    assert diff.max() > 1e-5  # it did compute in bf16
    # the style statistics (the cached condition) stay float32
    assert st16.style_stats(style).mean.dtype == jnp.float32


def test_bf16_is_refused_where_a_family_computes_in_float32_only():
    from nst_jax import models
    from nst_jax.errors import NstError
    from nst_jax.models import cin
    from nst_jax.models.open import Loaded
    from nst_jax.stylize import Stylizer

    spec = cin.preset("magenta")
    params = cin.init_params(jax.random.PRNGKey(0), spec)
    with pytest.raises(NstError, match="bfloat16|not supported"):
        Stylizer(Loaded(models.get("cin"), params, {}, spec), dtype=jnp.bfloat16)
    with pytest.raises(NstError, match="not supported"):
        Stylizer(Loaded(models.get("cin"), params, {}, spec), dtype=jnp.float16)


# -------------------------------------------------------------------------------- convolution strategies


def _rel_err(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def _winograd_prepared(layer):
    return ops.with_transposed_kernels({"c": layer}, winograd=True)["c"]


def _transposed(layer):
    return ops.with_transposed_kernels({"c": layer})["c"]


# name: (strategy, how the caller prepares the layer, whether the kernel is trained through it, exact values)
STRATEGIES = {
    "input_grad": (ops.conv_input_grad, _transposed, False, True),  # Gatys' frozen encoder
    "input_grad_winograd": (ops.conv_input_grad_winograd, _winograd_prepared, False, False),
    "matmul_weight_grad": (ops.conv_matmul_weight_grad, None, True, True),  # forced on (below its channel floor)
    "winograd": (ops.conv_winograd, None, True, False),  # inference of the wide layers
    "for_training": (ops.conv_for_training, None, True, False),  # the trainer's: Winograd + matmul kernel grads
}
# name: ((N, H, W, Cin, Cout), kernel size, padding); the wide 3x3 layers are the ones Winograd takes
CASES = {
    "wide-zero": ((2, 9, 12, 256, 264), 3, "zero"),
    "wide-reflect-odd": ((1, 7, 5, 256, 256), 3, "reflect"),
    "wide-reflect-tall": ((1, 3, 14, 256, 512), 3, "reflect"),
    "narrow-valid": ((2, 10, 12, 8, 16), 3, "valid"),
    "narrow-1x1": ((2, 10, 12, 8, 16), 1, "zero"),
}
_INPUT_GRAD_ONLY = ("input_grad", "input_grad_winograd")  # zero and reflect padding (the VGG encoders)


@pytest.mark.parametrize("strategy,case", [
    (s, c) for s in STRATEGIES for c in CASES if not (s in _INPUT_GRAD_ONLY and CASES[c][2] == "valid")])
def test_every_strategy_equals_conv_plain(strategy, case):
    """Values, input gradient and (where the strategy trains the kernel) kernel and bias gradients of every
    convolution strategy against `conv_plain` under autodiff: bitwise values where the strategy promises them,
    1e-5 (exact strategies) or 1e-4 (Winograd's rounding) of the scale otherwise."""
    fn, prepare, trains, exact = STRATEGIES[strategy]
    (n, h, w, c, o), k, padding = CASES[case]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    layer = {"kernel": (rng.standard_normal((k, k, c, o)) * 0.05).astype(np.float32),
             "bias": rng.standard_normal(o).astype(np.float32)}
    prepared = prepare(layer) if prepare else layer
    ref = ops.conv_plain(x, layer, padding)
    got = jax.jit(fn, static_argnums=2)(x, prepared, padding)
    assert got.shape == ref.shape
    winograd_ran = not exact and k == 3 and c >= 256 and padding != "valid"
    if exact or not winograd_ran:
        np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
    else:
        assert 1e-8 < _rel_err(got, ref) < 1e-4  # the Winograd path really ran, and agrees
    tol = 1e-4 if winograd_ran else 1e-5
    cot = rng.standard_normal(ref.shape).astype(np.float32)

    def grads(f, lay):
        return jax.jit(jax.grad(lambda v, q: jnp.sum(jnp.tanh(f(v, q, padding)) * cot), argnums=(0, 1)))(x, lay)

    (gx_ref, gl_ref), (gx, gl) = grads(ops.conv_plain, layer), grads(fn, prepared)
    assert _rel_err(gx, gx_ref) < tol
    for leaf in ("kernel", "bias"):
        if trains:
            assert _rel_err(gl[leaf], gl_ref[leaf]) < tol, leaf
        else:  # frozen weights: no gradient reaches them
            assert not np.any(np.asarray(gl[leaf]))


def test_input_grad_winograd_without_prepared_kernels_is_conv_input_grad(rng):
    x = rng.standard_normal((1, 6, 10, 256)).astype(np.float32)
    layer = {"kernel": (rng.standard_normal((3, 3, 256, 256)) * 0.05).astype(np.float32),
             "bias": rng.standard_normal(256).astype(np.float32)}
    prepared = _winograd_prepared(layer)
    assert prepared["kernel_w"].shape == prepared["kernel_tw"].shape == (36, 256, 256)
    np.testing.assert_array_equal(ops.conv_input_grad_winograd(x, _transposed(layer), "zero"),
                                  ops.conv_plain(x, layer, "zero"))


@pytest.mark.parametrize("size", [(4, 4), (5, 9), (1, 1), (13, 6)])
def test_winograd_any_size(rng, size):
    """Tiles of 4: sizes that are not multiples of 4 are padded and cropped (narrow layers called directly)."""
    x = rng.standard_normal((1, *size, 16)).astype(np.float32)
    k = (rng.standard_normal((3, 3, 16, 8)) * 0.1).astype(np.float32)
    for padding in ("zero", "reflect") if min(size) > 1 else ("zero",):
        assert _rel_err(ops.conv3x3_winograd(x, k, None, padding), ops.conv2d(x, k, None, padding)) < 1e-4


def test_winograd_strategy_leaves_narrow_layers_to_conv_plain(rng):
    x = rng.standard_normal((1, 6, 6, 128)).astype(np.float32)
    layer = {"kernel": rng.standard_normal((3, 3, 128, 256)).astype(np.float32), "bias": np.zeros(256, np.float32)}
    np.testing.assert_array_equal(ops.conv_winograd(x, layer, "zero"), ops.conv_plain(x, layer, "zero"))
    with pytest.raises(ValueError, match="3x3"):
        ops.conv3x3_winograd(x, layer["kernel"][:1], None, "zero")


def test_ops_still_exports_every_convolution_name():
    """The strategies moved to `nst_jax.convs` and `nst_jax.winograd`; `nst_jax.ops` keeps every name."""
    from nst_jax import convs, winograd

    for module in (convs, winograd):
        for name in module.__all__:
            assert getattr(ops, name) is getattr(module, name), name
    assert ops._pool_padding is ops.pool_padding
