"""nst_jax.losses against NumPy, pytorch-AdaIN and neural-style references (jitted, batch > 1, non-square)."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nst_jax import losses, ops


def _feats(rng, shape, scale=1.0, shift=0.0):
    return (rng.standard_normal(shape) * scale + shift).astype(np.float32)


def _np_mean_std(x, eps=1e-5):
    x = x.astype(np.float64)
    return x.mean(axis=(1, 2)), np.sqrt(x.var(axis=(1, 2), ddof=1) + eps)


def test_mse_and_content_loss(rng):
    a = _feats(rng, (2, 5, 7, 4))
    b = _feats(rng, (2, 5, 7, 4))
    ref = np.mean((a.astype(np.float64) - b) ** 2)
    np.testing.assert_allclose(jax.jit(losses.mse)(a, b), ref, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(losses.content_loss)(a, b), ref, rtol=1e-5)
    torch_ref = F.mse_loss(torch.from_numpy(a), torch.from_numpy(b)).item()
    np.testing.assert_allclose(losses.content_loss(a, b), torch_ref, rtol=1e-5)
    assert float(losses.content_loss(a, a)) == 0.0
    # Gradient of a mean-reduced MSE.
    g = jax.grad(losses.content_loss)(a, b)
    np.testing.assert_allclose(g, 2 * (a - b) / a.size, rtol=1e-5, atol=1e-8)


def test_mean_std_style_loss_matches_pytorch_adain(rng):
    gen = _feats(rng, (2, 6, 9, 8), 1.5, 0.3)
    style = _feats(rng, (2, 10, 4, 8), 0.5, -0.2)
    out = jax.jit(losses.mean_std_style_loss)(gen, style)
    gm, gs = _np_mean_std(gen)
    sm, ss = _np_mean_std(style)
    ref = np.mean((gm - sm) ** 2) + np.mean((gs - ss) ** 2)
    np.testing.assert_allclose(out, ref, rtol=1e-5)

    # pytorch-AdaIN net.py calc_style_loss (NCHW, calc_mean_std with unbiased var + eps).
    def calc_mean_std(f, eps=1e-5):
        n, c = f.shape[:2]
        return f.reshape(n, c, -1).mean(2), (f.reshape(n, c, -1).var(2) + eps).sqrt()

    t_g = torch.from_numpy(gen.transpose(0, 3, 1, 2).copy())
    t_s = torch.from_numpy(style.transpose(0, 3, 1, 2).copy())
    (m1, s1), (m2, s2) = calc_mean_std(t_g), calc_mean_std(t_s)
    torch_ref = (F.mse_loss(m1, m2) + F.mse_loss(s1, s2)).item()
    np.testing.assert_allclose(out, torch_ref, rtol=1e-5)
    # Statistics are all that matter: a spatial shuffle of the style leaves the loss unchanged.
    shuffled = style.reshape(2, -1, 8)[:, rng.permutation(40)].reshape(2, 4, 10, 8)
    np.testing.assert_allclose(losses.mean_std_style_loss(gen, shuffled), out, rtol=1e-5)


def test_mean_std_style_losses_sum_over_layers(rng):
    layers = ("relu1_1", "relu2_1", "relu3_1")
    shapes = {"relu1_1": (2, 8, 12, 4), "relu2_1": (2, 4, 6, 8), "relu3_1": (2, 2, 3, 16)}
    feats = {k: _feats(rng, s) for k, s in shapes.items()}
    targets = {k: _feats(rng, s, 2.0, 1.0) for k, s in shapes.items()}
    total = jax.jit(partial(losses.mean_std_style_losses, layers=layers))(feats, targets)
    ref = sum(float(losses.mean_std_style_loss(feats[k], targets[k])) for k in layers)
    np.testing.assert_allclose(total, ref, rtol=1e-5)
    only_two = losses.mean_std_style_losses(feats, targets, layers[:2])
    third = float(losses.mean_std_style_loss(feats["relu3_1"], targets["relu3_1"]))
    np.testing.assert_allclose(only_two, ref - third, rtol=1e-5)


@pytest.mark.parametrize("normalize", ["chw", "hw", "c", "none"])
def test_gram_style_loss(rng, normalize):
    gen = _feats(rng, (2, 5, 7, 6))
    style = _feats(rng, (1, 9, 4, 6), 2.0)
    target = ops.gram(style, normalize)
    out = jax.jit(partial(losses.gram_style_loss, normalize=normalize))(gen, target)
    f = gen.astype(np.float64).reshape(2, -1, 6)
    fs = style.astype(np.float64).reshape(1, -1, 6)
    div = {"chw": (6 * 35, 6 * 36), "hw": (35, 36), "c": (6, 6), "none": (1, 1)}[normalize]
    g = np.einsum("npc,npd->ncd", f, f) / div[0]
    gt = np.einsum("npc,npd->ncd", fs, fs) / div[1]
    np.testing.assert_allclose(out, np.mean((g - gt) ** 2), rtol=1e-4)
    self_loss = losses.gram_style_loss(gen, ops.gram(gen, normalize), normalize)
    assert float(self_loss) == pytest.approx(0, abs=1e-6)


def test_gram_style_loss_matches_neural_style_up_to_its_reduction(rng):
    # neural-style: GramMatrix(input) / input:nElement(), then an MSE (mean over C*C) against the target.
    gen = _feats(rng, (1, 6, 5, 4))
    style = _feats(rng, (1, 7, 7, 4))

    def torch_gram(x):
        t = torch.from_numpy(x[0].transpose(2, 0, 1).reshape(4, -1).copy())
        return (t @ t.T) / t.numel()

    torch_ref = F.mse_loss(torch_gram(gen), torch_gram(style)).item()
    np.testing.assert_allclose(losses.gram_style_loss(gen, ops.gram(style)), torch_ref, rtol=1e-5)


def test_tv_loss(rng):
    img = rng.random((2, 6, 11, 3), dtype=np.float32)

    def np_tv(d):
        return (np.diff(d, axis=1) ** 2).sum() + (np.diff(d, axis=2) ** 2).sum()

    d = img.astype(np.float64)
    np.testing.assert_allclose(jax.jit(losses.tv_loss)(img), np_tv(d), rtol=1e-5)
    g = jax.jit(jax.grad(losses.tv_loss))(jnp.asarray(img))
    for idx in [(1, 3, 4, 2), (0, 0, 0, 0), (1, 5, 10, 1)]:  # interior, corners
        bumped = d.copy()
        bumped[idx] += 1e-6
        numeric = (np_tv(bumped) - np_tv(d)) / 1e-6
        np.testing.assert_allclose(g[idx], numeric, rtol=1e-3, atol=1e-4)
