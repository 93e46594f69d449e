"""The training-time stability term (nst_jax.stability) and its wiring into AdaIN's loss and the training loop."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from nst_jax import stability as S
from nst_jax.stability import StabilityTerm


@pytest.fixture(scope="module")
def content() -> jnp.ndarray:
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.random((3, 16, 20, 3)), jnp.float32)


def bits(a) -> np.ndarray:
    return np.asarray(a, np.float32).view(np.uint32)


def test_integer_warps_move_pixels_exactly(content):
    t = jnp.asarray([[2.0, -1.0], [0.0, 0.0], [-3.0, 2.0]])
    moved, valid = S.warp_images(content, t)
    x = np.asarray(content)
    for i, (dx, dy) in enumerate(np.asarray(t, int)):
        expect = np.roll(x[i], (dy, dx), axis=(0, 1))
        v = np.asarray(valid[i, ..., 0], bool)
        assert np.array_equal(np.asarray(moved[i])[v], expect[v])
        assert v.sum() == (16 - abs(dy)) * (20 - abs(dx))
    # A rotation there and back returns the interior (bilinear twice: close, not exact).
    a = jnp.asarray([0.05, -0.03, 0.02])
    there, _ = S.warp_images(content, jnp.zeros((3, 2)), a)
    back, v2 = S.warp_images(there, jnp.zeros((3, 2)), -a)
    inner = np.asarray(back)[:, 4:-4, 4:-4] - np.asarray(content)[:, 4:-4, 4:-4]
    assert np.abs(inner).mean() < 0.15


def test_an_equivariant_network_scores_exactly_zero(content):
    key = jax.random.PRNGKey(3)

    def pointwise(x):
        return jax.nn.sigmoid(3.0 * x - 1.0) * x

    for forward in (lambda x: x, pointwise):
        term = S.stability_loss(forward, content, key, shift=3.0, integer=True)
        assert float(term) == 0.0
    # A network that is not equivariant (a fixed pattern added at fixed positions) is penalised.
    pattern = jnp.asarray(np.random.default_rng(1).random((1, 16, 20, 3)), jnp.float32)
    assert float(S.stability_loss(lambda x: x + pattern, content, key, shift=3.0, integer=True)) > 1e-3
    # Noise reaches the identity's output: the term is about the noise's variance (less where clipped).
    noisy = float(S.stability_loss(lambda x: x, content, key, shift=0.0, noise=0.05))
    assert 0.5 * 0.05 ** 2 < noisy < 1.05 * 0.05 ** 2
    # jit-able, and the key decides the draw: one step's key always gives the same warps.
    f = jax.jit(lambda k: S.stability_loss(lambda x: x + pattern, content, k, shift=2.0, rotate=2.0))
    k5 = S.step_key(0, jnp.asarray(5))
    assert float(f(k5)) == float(f(S.step_key(0, jnp.asarray(5)))) != float(f(S.step_key(0, jnp.asarray(6))))


def _adain_setup():
    from nst_jax.models import adain
    from nst_jax.testing import random_adain

    st = random_adain(0)
    rng = np.random.default_rng(2)
    c = jnp.asarray(rng.random((2, 32, 32, 3)), jnp.float32)
    s = jnp.asarray(rng.random((2, 32, 32, 3)), jnp.float32)
    lc = adain.LossConfig(spec=st.spec)
    return adain, st, c, s, lc


@pytest.mark.slow
def test_weight_zero_is_bit_identical_and_a_positive_weight_adds_the_term():
    import dataclasses

    adain, st, c, s, lc = _adain_setup()
    frozen = {"vgg": st.vgg}
    batch = {"content": c, "style": s}

    def grads(lc_, b):
        return jax.jit(jax.value_and_grad(adain.loss_fn, has_aux=True), static_argnums=3)(st.decoder, frozen, b, lc_)

    (l0, m0), g0 = grads(lc, batch)
    # weight 0 with other stability settings and a step in the batch: nothing changes, bit for bit
    off = dataclasses.replace(lc, stability=StabilityTerm(0.0, (("noise", 0.1), ("rotate", 3.0), ("shift", 4.0)), 7))
    assert not off.wants_step
    (l1, m1), g1 = grads(off, dict(batch, step=jnp.asarray(3, jnp.int32)))
    assert np.array_equal(bits(l0), bits(l1)) and set(m0) == set(m1) and "stability" not in m0
    assert all(np.array_equal(bits(a), bits(b)) for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1),
                                                                 strict=True))
    on = dataclasses.replace(lc, stability=StabilityTerm(2.0, (("noise", 0.0), ("rotate", 0.0), ("shift", 2.0))))
    assert on.wants_step
    (l2, m2), g2 = grads(on, dict(batch, step=jnp.asarray(3, jnp.int32)))
    assert float(m2["stability"]) > 0 and float(m2["loss_stability"]) == pytest.approx(2 * float(m2["stability"]))
    assert float(l2) == pytest.approx(float(m0["loss"]) + float(m2["loss_stability"]), rel=1e-5)
    assert float(m2["loss_content"]) == pytest.approx(float(m0["loss_content"]), rel=1e-6)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g2), strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("family", helpers.FAMILIES)
def test_a_tiny_run_of_every_family_trains_with_the_term_and_reports_it(tmp_path, image_dirs, family):
    from nst_jax.train import train_and_evaluate

    c = helpers.tiny_config(family, image_dirs, num_steps=6, log_every=3, checkpoint_every=6, sample_every=6,
                            stability_weight=5.0, stability_shift=2.0, stability_noise=0.02)
    summary = train_and_evaluate(c, tmp_path / "run")
    assert summary["step"] == 6
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records
    for r in records:
        assert np.isfinite(r["loss"]) and r["stability"] > 0
        parts = sum(v for k, v in r.items() if k.startswith("loss_"))
        assert r["loss"] == pytest.approx(parts, rel=1e-5)
