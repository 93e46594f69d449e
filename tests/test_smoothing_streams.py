"""`StatForward.smooth_streams`: the live page's per-stream smoothing (analyse, smooth each stream, render) as one
program, equal to the three separate calls the batcher makes, for AdaIN and the instance-norm toy family."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import toy_family as toy
from nst_jax.demo import sample_image
from nst_jax.errors import NstError
from nst_jax.models.open import Loaded
from nst_jax.smoothing import StatForward, smooth_frame
from nst_jax.stylize import Stylizer

SIZE = 32


def _frames(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    still = sample_image("astronaut", SIZE)[0]
    gain = 1 + rng.normal(0, 0.03, (n, 1, 1, 1))
    return np.clip(still[None] * gain + rng.normal(0, 0.03, (n,) + still.shape), 0, 1).astype(np.float32)


def _separate(sf: StatForward, content, condition, alpha, states, strengths, masks=None):
    """What the live batcher does: analyse the batch, `smooth_frame` per stream, render."""
    aux, own = sf.analyse(content, condition, alpha, masks)
    own = jax.tree.map(np.asarray, own)
    outs, new = [], []
    for i, (state, s) in enumerate(zip(states, strengths, strict=True)):
        o, st = smooth_frame(state, jax.tree.map(lambda v, i=i: v[i], own), s)
        outs.append(jax.tree.map(np.asarray, o))
        new.append(st)
    stats = jax.tree.map(lambda *fs: np.stack(fs), *outs)
    return np.asarray(sf.render(aux, condition, alpha, stats, masks)), new


def _check(st: Stylizer, condition, masks=None, tol: float = 2e-5):
    sf = StatForward(st)
    n = 3
    cond = jax.tree.map(lambda v: np.repeat(np.asarray(v), n, 0), condition)
    alpha = np.ones((n,), np.float32)
    strengths = np.array([0.6, 0.0, 0.8], np.float32)  # stream 1 unsmoothed
    ma = None if masks is None else np.repeat(masks, n, 0)
    fused_states: list = [None] * n
    sep_states: list = [None] * n
    streams = [_frames(5, seed) for seed in range(n)]
    acted = []
    for t in range(5):
        x = np.stack([s[t] for s in streams])
        if t < 2:  # stream 2 joins at frame 2: a padding row until then (a fresh state each time)
            fused_states[2] = sep_states[2] = None
        got, fused_states = sf.smooth_streams(x, cond, alpha, fused_states, strengths, ma)
        want, sep_states = _separate(sf, x, cond, alpha, sep_states, strengths, ma)
        np.testing.assert_allclose(np.asarray(got), want, atol=tol)
        for a, b in zip(fused_states, sep_states, strict=True):
            for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
                np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=tol, rtol=1e-4)
        # strength 0, and a fresh state: the frame's own output
        own, _ = sf.forward(x, cond, alpha, None, ma)
        np.testing.assert_allclose(np.asarray(got)[1], np.asarray(own)[1], atol=tol)
        acted.append(np.abs(np.asarray(got)[0] - np.asarray(own)[0]).max() > 1e-4)
    assert any(acted)  # smoothing really acts (a frame judged a scene cut keeps its own statistics)


def test_adain_streams_in_one_program(random_model):
    _check(random_model, random_model.condition(sample_image("hubble", SIZE)))


def test_masked_toy_streams_in_one_program():
    params = jax.tree.map(np.asarray, toy.init_params(jax.random.PRNGKey(3)))
    st = Stylizer(Loaded(toy.FAMILY, params, {}, toy.ToySpec(), "toy"))
    two = jax.tree.map(lambda a, b: np.concatenate([a, b])[None], st.condition(0), st.condition(1))
    masks = np.zeros((1, SIZE, SIZE, 2), np.float32)
    masks[..., : SIZE // 2, 0] = 1.0
    masks[..., SIZE // 2:, 1] = 1.0
    _check(st, two, masks)


def test_one_state_per_frame(random_model):
    sf = StatForward(random_model)
    cond = random_model.condition(sample_image("hubble", SIZE))
    with pytest.raises(NstError, match="2 smoothing states for 1 frames"):
        sf.smooth_streams(_frames(1, 0), cond, np.ones(1, np.float32), [None, None], 0.5)
