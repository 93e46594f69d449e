"""Statistic smoothing for video: the stabilisation maths (JAX, pure and jit-able).

An exponential moving average across frames of the content-side normalisation statistics (`smooth_step`,
`smooth_sequence`, `StatSmoother`; `smooth_frame` for one live stream), over any pytree of per-layer
(mean, var) pairs (AdaIN: relu4_1; instance-norm networks: every layer; `stat_pairs` lists the accepted forms),
reset at scene cuts, which are detected from a jump of those statistics; strength 0 returns each frame's own
statistics, bit for bit. `StatForward` runs it for any family with the statistics seam (`Family.stats_forward`:
AdaIN's content relu4_1 mean and std, every instance norm of CIN and the arbitrary network). Scene cuts:
`cut_score` is a standardised distance between two frames' statistics (per channel, the mean's jump in units of
the channel's standard deviation and the log-std ratio; RMS over channels, mean over layers). Its scale depends
on the family and the frame size, so a cut is a score `CUT_RATIO` times above the shot's typical
consecutive-frame score. The ratio was chosen from random-weight AdaIN, CIN and arbitrary networks on the
synthetic clips of `nst_jax.synthetic.PRESETS`, each shot followed by a shot of another photo (docs/video.md has
the table): it sits between the largest within-shot ratio and the smallest ratio at a cut, nearer the within-shot
side, because a missed cut costs more (several frames normalised with the previous shot's statistics) than a
false one (one frame normalised with its own).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax.errors import NstError
from nst_jax.models import MeanVar
from nst_jax.typing import Array

# Scene cut when `cut_score` of two consecutive frames exceeds this many times the shot's typical jump (see the
# module docstring), and how much of the past that typical jump keeps per frame.
CUT_RATIO = 2.2
_TYPICAL_DECAY = 0.8
# Default EMA strength of `nst-jax video --stabilize` (weight of the past; about 1 / (1 - s) frames of memory).
DEFAULT_STRENGTH = 0.5


# ----------------------------------------------------------------------------------------------------
# Statistic smoothing (JAX)


class SmoothState(NamedTuple):
    """What the smoother carries from frame to frame (leaves shaped like one frame's statistics).

    Attributes:
      smoothed: the smoothed statistics of the last frame.
      previous: the last frame's own statistics (scene cuts are jumps between consecutive frames).
      started: () bool, False before the first frame.
      typical: () float32, the shot's typical `cut_score` between consecutive frames (a moving average).
      pairs: () int32, how many consecutive pairs the current shot has had (0: no typical jump known yet).
    """

    smoothed: Any
    previous: Any
    started: Array
    typical: Array
    pairs: Array


def _is_pair(x: Any) -> bool:
    if isinstance(x, MeanVar):
        return True
    if isinstance(x, dict) and set(x) == {"mean", "var"}:
        return all(hasattr(v, "shape") for v in x.values())
    return (isinstance(x, tuple) and not hasattr(x, "_fields") and len(x) == 2
            and all(hasattr(v, "shape") for v in x))


def stat_pairs(stats: Any) -> list[tuple[Array, Array]]:
    """The (mean, var) pairs of a statistics pytree, in order.

    A layer's pair is a `MeanVar`, a plain (mean, var) tuple (the arbitrary network's `norm_stats`) or a
    {"mean", "var"} dict (CIN's).
    """
    pairs = jax.tree.leaves(stats, is_leaf=_is_pair)
    if not pairs or not all(_is_pair(p) for p in pairs):
        raise NstError("statistics must be a pytree of per-layer MeanVar(mean, var), (mean, var) tuples or "
                       "{'mean', 'var'} dicts")
    return [(p["mean"], p["var"]) if isinstance(p, dict) else (p[0], p[1]) for p in pairs]


def init_state(stats: Any, batched: bool = True) -> SmoothState:
    """An empty smoother state shaped like one frame of `stats` (drop the leading frame axis if `batched`)."""
    def zero(x: Array) -> Array:
        return jnp.zeros(x.shape[1:] if batched else x.shape, x.dtype)

    z = jax.tree.map(zero, stats)
    return SmoothState(z, z, jnp.zeros((), bool), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))


def cut_score(previous: Any, current: Any, rel_eps: float = 1e-3) -> Array:
    """How far one frame's statistics jumped from the previous frame's: a standardised distance.

    Per layer, the RMS over channels of sqrt(z^2 + r^2), with z the jump of the channel mean in units of the
    channel's standard deviation (the two frames' variances averaged) and r half the log variance ratio; layers
    are averaged. Variances are floored at `rel_eps` times the layer's mean variance so that dead channels do
    not dominate. Scale-free; still, its typical size depends on the family and the frame size (larger frames
    average more positions), which is why scene cuts are judged relative to the shot's own typical jump.

    Args:
      previous, current: statistics pytrees of one frame each (same structure and shapes).

    Returns:
      () float32.
    """
    scores = []
    for (m0, v0), (m1, v1) in zip(stat_pairs(previous), stat_pairs(current), strict=True):
        m0, v0, m1, v1 = (jnp.asarray(a, jnp.float32) for a in (m0, v0, m1, v1))
        avg = 0.5 * (v0 + v1)
        floor = rel_eps * jnp.mean(avg) + 1e-12
        z2 = jnp.square(m1 - m0) / (avg + floor)
        r2 = jnp.square(0.5 * jnp.log((v1 + floor) / (v0 + floor)))
        scores.append(jnp.sqrt(jnp.mean(z2 + r2)))
    return jnp.mean(jnp.stack(scores))


def smooth_step(state: SmoothState, stats: Any, strength: float | Array, cut_ratio: float | Array = CUT_RATIO,
                valid: bool | Array = True) -> tuple[Any, SmoothState, Array]:
    """One frame of statistic smoothing: an exponential moving average, reset at scene cuts.

    smoothed_t = strength * smoothed_{t-1} + (1 - strength) * stats_t, except on the first frame, at a scene cut
    and at strength 0, where it is stats_t itself (bit for bit: selected, not computed).

    A scene cut is a jump `cut_score(stats_{t-1}, stats_t)` larger than `cut_ratio` times the shot's typical
    jump (a moving average of its earlier consecutive-frame scores, weight 0.8 on the past); a shot's first
    pair only sets the typical jump. Relative, because the scores' scale differs between families and frame
    sizes while the ratio of a cut to the usual change does not (docs/video.md has the measurements).

    Args:
      state: the carried `SmoothState`.
      stats: this frame's statistics pytree (leaves shaped like the state's).
      strength: in [0, 1): the weight of the past.
      cut_ratio: scene-cut threshold, relative to the typical jump.
      valid: False for a padding frame: the state is kept and stats returned unchanged.

    Returns:
      (smoothed statistics, new state, cut: () bool).
    """
    score = cut_score(state.previous, stats)
    cut = state.started & (state.pairs > 0) & (score > cut_ratio * state.typical + 1e-6)
    strength = jnp.asarray(strength, jnp.float32)
    keep = state.started & ~cut & (strength > 0)

    def ema(past: Array, x: Array) -> Array:
        s = strength.astype(x.dtype)
        return jnp.where(keep, s * past + (1 - s) * x, x)

    out = jax.tree.map(ema, state.smoothed, stats)
    # The typical jump: restarted by a cut (the cut's own jump is not typical of either shot).
    pairs = jnp.where(cut | ~state.started, 0, state.pairs + 1).astype(jnp.int32)
    typical = jnp.where(state.pairs > 0, _TYPICAL_DECAY * state.typical + (1 - _TYPICAL_DECAY) * score, score)
    typical = jnp.where(cut | ~state.started, 0.0, typical).astype(jnp.float32)
    valid = jnp.asarray(valid, bool)
    new = SmoothState(out, stats, jnp.ones((), bool), typical, pairs)
    new = jax.tree.map(lambda n, o: jnp.where(valid, n, o), new, state)
    return out, new, cut & valid


def smooth_sequence(state: SmoothState, stats: Any, strength: float | Array, cut_ratio: float | Array = CUT_RATIO,
                    valid: Array | None = None) -> tuple[Any, SmoothState, Array]:
    """`smooth_step` over consecutive frames: statistics with a leading frame axis N, in order (`lax.scan`).

    Args:
      state: the carried state (from `init_state` or a previous batch).
      stats: statistics pytree, leaves (N, ...).
      strength, cut_ratio: as `smooth_step`.
      valid: (N,) bool, False for padding frames at the end of a batch (default all True).

    Returns:
      (smoothed statistics (N, ...), new state, cuts (N,) bool).
    """
    n = jax.tree.leaves(stats)[0].shape[0]
    valid = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid, bool)

    def step(carry: SmoothState, xs: tuple[Any, Array]) -> tuple[SmoothState, tuple[Any, Array]]:
        x, v = xs
        out, carry, cut = smooth_step(carry, x, strength, cut_ratio, v)
        return carry, (out, cut)

    state, (out, cuts) = jax.lax.scan(step, state, (stats, valid))
    return out, state, cuts


_SMOOTH_SEQUENCE = jax.jit(smooth_sequence)


class StatSmoother:
    """Statistic smoothing over a stream of frame batches (the state lives between calls).

    Args:
      strength: EMA weight of the past in [0, 1) (0: per-frame statistics).
      cut_ratio: scene-cut threshold relative to the shot's typical jump (`smooth_step`).

    Attributes:
      cuts: frame indices (counted from the first frame fed) where a scene cut was detected.
      last_cuts: (N,) bool, the cuts of the last batch.
    """

    def __init__(self, strength: float = DEFAULT_STRENGTH, cut_ratio: float = CUT_RATIO):
        if not 0.0 <= strength < 1.0:
            raise NstError(f"stabilisation strength must be in [0, 1), got {strength}")
        if not cut_ratio > 1:
            raise NstError(f"the scene-cut ratio must be above 1, got {cut_ratio}")
        self.strength = float(strength)
        self.cut_ratio = float(cut_ratio)
        self.state: SmoothState | None = None
        self.cuts: list[int] = []
        self.last_cuts = np.zeros((0,), bool)
        self.frames = 0

    def __call__(self, stats: Any, valid: Any | None = None) -> Any:
        """Smooth one batch of consecutive frames' statistics (leaves (N, ...)); returns the same structure.

        Args:
          stats: the batch's statistics.
          valid: (N,) bool, False for padding frames (they neither move the state nor count as frames).
        """
        if self.state is None:
            self.state = init_state(stats)
        n = jax.tree.leaves(stats)[0].shape[0]
        v = np.ones((n,), bool) if valid is None else np.asarray(valid, bool)
        out, self.state, cuts = _SMOOTH_SEQUENCE(self.state, stats, np.float32(self.strength),
                                                 np.float32(self.cut_ratio), v)
        self._record(cuts, v)
        return out

    def _record(self, cuts: Any, valid: np.ndarray) -> None:
        self.last_cuts = np.asarray(cuts, bool)
        self.cuts += [self.frames + int(i) for i in np.flatnonzero(self.last_cuts)]
        self.frames += int(valid.sum())

    def reset(self) -> None:
        """Forget the past (the next frame starts a new scene)."""
        self.state = None


# ----------------------------------------------------------------------------------------------------
# Any family with the statistics seam (`Family.stats_forward`)


class StatForward:
    """A `Stylizer`'s stylization split at its normalisation statistics, through its family's `stats_forward`:
    `analyse` gives the frames' own statistics, `render` runs with given (e.g. smoothed) ones.

    Conditions have a leading axis N (with masks (N, K, ...)), alpha is (N,), masks None or (N, H, W, K) at the
    content's resolution. `analyse` is the network up to its last statistics (AdaIN: the encoder; the rest is
    dead code in its program), `forward` the whole pass with its image (the per-frame output when `stats` is
    None), `render` the whole pass with given statistics. `smooth` (consecutive frames of one video) and
    `smooth_streams` (one frame of each of N live streams) do analysis, smoothing and rendering in one program, so
    the network before the statistics runs once per frame. The programs are the Stylizer's own jit cache.

    Args:
      stylizer: a `nst_jax.stylize.Stylizer`.

    Raises:
      NstError: its family has no statistics seam (`stats_forward` None).
    """

    def __init__(self, stylizer: Any):
        family = stylizer.family
        if family.stats_forward is None:
            raise NstError(f"statistic smoothing is not available for a {family.name} model")
        self.st = stylizer
        self._forward = _jitted_pass(stylizer, "stats_forward", None)
        self._stats = _jitted_pass(stylizer, "norm_stats", None)

    def _args(self, content: Any, condition: Any, alpha: Any, masks: Any) -> tuple:
        st = self.st
        return (st.params, st.frozen, jnp.asarray(content, st.dtype),
                jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), condition),
                None if masks is None else jnp.asarray(masks, jnp.float32), jnp.asarray(alpha, jnp.float32))

    def forward(self, content: Any, condition: Any, alpha: Any, stats: Any = None, masks: Any = None
                ) -> tuple[Array, Any]:
        """(images (N, H, W, 3) float32 in [0, 1], the statistics used): the frames' own if `stats` is None."""
        return self._forward(*self._args(content, condition, alpha, masks), stats)

    def analyse(self, content: Any, condition: Any, alpha: Any, masks: Any = None) -> tuple[Any, Any]:
        """(what `render` needs, the frames' own statistics: a pytree with leading axis N)."""
        x = jnp.asarray(content, self.st.dtype)
        return x, self._stats(*self._args(x, condition, alpha, masks))

    def render(self, aux: Any, condition: Any, alpha: Any, stats: Any, masks: Any = None) -> Array:
        """(N, H, W, 3) float32 in [0, 1] with `stats` in place of the frames' own."""
        return self.forward(aux, condition, alpha, stats, masks)[0]

    def smooth(self, smoother: StatSmoother, content: Any, condition: Any, alpha: Any, masks: Any = None,
               valid: Any = None, reference: bool = False) -> tuple[Array, Array | None]:
        """A batch of consecutive frames with statistics smoothed by `smoother` (its state, cuts and
        `last_cuts` advance as in `smoother(stats, valid)`), in one program: the passes share what does not
        depend on the statistics (XLA merges it: AdaIN encodes once).

        Returns:
          (images, the per-frame images (the frames' own statistics) if `reference`, else None).
        """
        args = self._args(content, condition, alpha, masks)
        n = args[2].shape[0]
        v = np.ones((n,), bool) if valid is None else np.asarray(valid, bool)
        if smoother.state is None:
            # (shapes only: eval_shape of the plain function, a jitted one with compiler options cannot nest)
            own = jax.eval_shape(partial(self.st.family.norm_stats, static=self.st.static), *args)
            smoother.state = init_state(own)
        what = "smoothed_sequence_reference" if reference else "smoothed_sequence"
        run = _jitted_pass(self.st, what, partial(_sequence_pass, reference=reference))
        out, ref, smoother.state, cuts = run(*args, smoother.state, np.float32(smoother.strength),
                                             np.float32(smoother.cut_ratio), v)
        smoother._record(cuts, v)
        return out, ref


    def smooth_streams(self, content: Any, condition: Any, alpha: Any, states: Sequence[SmoothState | None],
                       strengths: Any, masks: Any = None, cut_ratio: float = CUT_RATIO
                       ) -> tuple[Array, list[SmoothState]]:
        """One frame of each of N independent streams (the live page's batch, one client per row): each frame's
        statistics smoothed with its own stream's state, in one compiled program per batch shape. The program
        analyses, smooths (`smooth_step` under vmap over the streams) and renders, so XLA computes what does not
        depend on the statistics once (AdaIN: one encoder pass per frame instead of `analyse` + `render`'s two).

        Args:
          content, condition, alpha, masks: as `forward` (leading axis N).
          states: N `SmoothState`s (one frame each, no batch axis), None for a stream's first frame or a padding
            row (a fresh state: the frame keeps its own statistics, bit for bit, as at strength 0).
          strengths: N EMA weights of the past in [0, 1) (or one for all).
          cut_ratio: scene-cut threshold (`smooth_step`).

        Returns:
          (images (N, H, W, 3) float32 in [0, 1], the N new states), as `analyse`, `smooth_frame` per stream and
          `render` give them (to float32 rounding).
        """
        args = self._args(content, condition, alpha, masks)
        n = args[2].shape[0]
        if len(states) != n:
            raise NstError(f"got {len(states)} smoothing states for {n} frames")
        if any(s is None for s in states):
            own = jax.eval_shape(partial(self.st.family.norm_stats, static=self.st.static), *args)
            fresh = init_state(own)
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(fresh if s is None else s for s in states))
        strength = np.broadcast_to(np.asarray(strengths, np.float32), (n,))
        run = _jitted_pass(self.st, "smoothed_streams", _streams_pass)
        out, new = run(*args, stacked, strength, np.float32(cut_ratio))
        return out, [jax.tree.map(lambda v, i=i: v[i], new) for i in range(n)]


def _streams_pass(family: Any) -> Any:
    """`StatForward.smooth_streams`'s program for `family`: own statistics, `smooth_step` per stream, the pass."""
    step = jax.vmap(smooth_step, in_axes=(0, 0, 0, None))

    def run(params: Any, frozen: Any, content: Array, condition: Any, masks: Any, alpha: Array,
            states: SmoothState, strengths: Array, cut_ratio: Array, static: Any) -> tuple[Array, SmoothState]:
        _, own = family.stats_forward(params, frozen, content, condition, masks, alpha, None, static)
        smoothed, states, _ = step(states, own, strengths, cut_ratio)
        out, _ = family.stats_forward(params, frozen, content, condition, masks, alpha, smoothed, static)
        return out, states

    return run


def _jitted_pass(stylizer: Any, what: str, build: Any) -> Any:
    from nst_jax.family_programs import jitted as _jitted

    return partial(_jitted(stylizer.family, what, build), static=stylizer.static)


def _sequence_pass(family: Any, reference: bool) -> Any:
    """`StatForward.smooth`'s program for `family`: own statistics, `smooth_sequence`, the pass with them."""
    def run(params: Any, frozen: Any, content: Array, condition: Any, masks: Any, alpha: Array,
            state: SmoothState, strength: Array, cut_ratio: Array, valid: Array, static: Any
            ) -> tuple[Array, Array | None, SmoothState, Array]:
        ref, own = family.stats_forward(params, frozen, content, condition, masks, alpha, None, static)
        smoothed, state, cuts = smooth_sequence(state, own, strength, cut_ratio, valid)
        out, _ = family.stats_forward(params, frozen, content, condition, masks, alpha, smoothed, static)
        return out, ref if reference else None, state, cuts

    return run


_SMOOTH_STEP = jax.jit(smooth_step)


def smooth_frame(state: SmoothState | None, stats: Any, strength: float, cut_ratio: float = CUT_RATIO
                 ) -> tuple[Any, SmoothState]:
    """One frame of one stream (e.g. one client of the live page): `smooth_step` without a batch axis.

    Args:
      state: the stream's state, or None for its first frame.
      stats: the frame's statistics (leaves without a leading axis).
      strength, cut_ratio: as `smooth_step`.

    Returns:
      (the smoothed statistics, the new state).
    """
    if state is None:
        state = init_state(stats, batched=False)
    out, state, _ = _SMOOTH_STEP(state, stats, np.float32(strength), np.float32(cut_ratio), True)
    return out, state


__all__ = [
    "CUT_RATIO", "DEFAULT_STRENGTH", "SmoothState", "StatForward", "StatSmoother", "cut_score", "init_state",
    "smooth_frame", "smooth_sequence", "smooth_step", "stat_pairs",
]
