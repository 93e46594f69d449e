"""A training-time stability term: a small warp or noise of the content must give the same warp of the output.

Gupta et al., "Characterizing and Improving Stability in Neural Style Transfer" (ICCV 2017), penalise the change
of the output under small input noise; ReCoNet (Gao et al., 2018) penalise the difference between the output of
a warped frame and the warped output. Both fit one term: with W a random small warp (a translation of up to
`shift` pixels and a rotation of up to `rotate` degrees about the image centre) and n Gaussian noise of standard
deviation `noise`,

    stability = sum(valid * (f(W(x) + n) - W(f(x)))^2) / (sum(valid) * C)

over the pixels `valid` whose warped source lies inside the image (the rest have no counterpart), the mean
squared difference of the valid pixel-channels. A network that commutes with W (e.g. the identity or any
pointwise map under an integer shift) scores exactly 0 without noise.

Everything is pure and jit-able. The randomness comes from a key: in the training loop derive it from the step
(`step_key(seed, batch["step"])`; `nst_jax.train.train_step` puts the step in the batch when the family's static
loss configuration says `wants_step`), so a resumed run draws the same warps.

Every family holds a `StabilityTerm` in its static loss configuration (`StabilityTerm.from_config(config)`) and
adds it in one line, given its forward pass `forward(content) -> images` (same size as the content) and the
output it already computed for the unwarped batch:

    loss, metrics = static.stability.add(loss, metrics, forward, content, g, batch.get("step"))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from nst_jax.typing import Array

# Defaults of the config keys (configs/default.py repeats them).
DEFAULT_SHIFT = 2.0
DEFAULT_ROTATE = 0.0
DEFAULT_NOISE = 0.0


def step_key(seed: int | Array, step: Array) -> Array:
    """The term's key for a training step: `fold_in(PRNGKey(seed), step)` (the same warps after a resume)."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), jnp.asarray(step, jnp.uint32))


def random_warps(key: Array, n: int, shift: float = DEFAULT_SHIFT, rotate: float = DEFAULT_ROTATE, *,
                 integer: bool = False) -> tuple[Array, Array]:
    """Draw n warps: translations uniform in [-shift, shift]^2 pixels and rotations uniform in [-rotate, rotate].

    Args:
      key: a PRNG key.
      n: how many (one per image).
      shift: the largest translation in pixels.
      rotate: the largest rotation in degrees.
      integer: round the translations to whole pixels (exact moves, no resampling when rotate is 0).

    Returns:
      (translations (n, 2) float32 as (dx, dy), angles (n,) float32 in radians).
    """
    k1, k2 = jax.random.split(key)
    t = jax.random.uniform(k1, (n, 2), jnp.float32, -shift, shift)
    if integer:
        t = jnp.round(t)
    angle = jax.random.uniform(k2, (n,), jnp.float32, -1.0, 1.0) * jnp.float32(rotate * jnp.pi / 180.0)
    return t, angle


def warp_images(images: Array, translation: Array, angle: Array | None = None) -> tuple[Array, Array]:
    """Move each image by its warp: out(p) = image(R^-1 (p - c - t) + c), bilinear.

    The content appears moved by t (dx right, dy down) and turned by the angle about the centre c. Integer
    translations without rotation move pixels exactly.

    Args:
      images: (N, H, W, C) float.
      translation: (N, 2) (dx, dy) in pixels.
      angle: (N,) radians, or None (no rotation).

    Returns:
      (warped (N, H, W, C) in the images' dtype, valid (N, H, W, 1) float32: 1 where the source point lies
      inside the image).
    """
    n, h, w, _ = images.shape
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    cy, cx = jnp.float32((h - 1) / 2.0), jnp.float32((w - 1) / 2.0)
    t = jnp.asarray(translation, jnp.float32)
    dx = xs[None] - cx - t[:, 0, None, None]
    dy = ys[None] - cy - t[:, 1, None, None]
    if angle is None:
        sx, sy = dx + cx, dy + cy
    else:
        a = jnp.asarray(angle, jnp.float32)[:, None, None]
        cos, sin = jnp.cos(a), jnp.sin(a)
        # the inverse rotation of the offset from the centre
        sx = cos * dx + sin * dy + cx
        sy = -sin * dx + cos * dy + cy
    tol = jnp.float32(1e-4)
    valid = (sx >= -tol) & (sx <= w - 1 + tol) & (sy >= -tol) & (sy <= h - 1 + tol)
    x0, y0 = jnp.floor(sx), jnp.floor(sy)
    ax, ay = (sx - x0)[..., None], (sy - y0)[..., None]
    x0i = jnp.clip(x0.astype(jnp.int32), 0, w - 1)
    x1i = jnp.clip(x0.astype(jnp.int32) + 1, 0, w - 1)
    y0i = jnp.clip(y0.astype(jnp.int32), 0, h - 1)
    y1i = jnp.clip(y0.astype(jnp.int32) + 1, 0, h - 1)

    def gather(img: Array, yi: Array, xi: Array) -> Array:
        return img[yi, xi]

    g = jax.vmap(gather)
    x = images.astype(jnp.float32)
    top = g(x, y0i, x0i) * (1 - ax) + g(x, y0i, x1i) * ax
    bottom = g(x, y1i, x0i) * (1 - ax) + g(x, y1i, x1i) * ax
    out = top * (1 - ay) + bottom * ay
    return out.astype(images.dtype), valid[..., None].astype(jnp.float32)


def stability_loss(forward: Callable[[Array], Array], content: Array, key: Array, *, output: Array | None = None,
                   shift: float = DEFAULT_SHIFT, rotate: float = DEFAULT_ROTATE, noise: float = DEFAULT_NOISE,
                   integer: bool = False) -> Array:
    """The stability term (module docstring): f(W(x) + n) against W(f(x)) over the valid pixels.

    Args:
      forward: the network on a batch, `forward(content (N, H, W, 3)) -> (N, H, W, C)` at the content's size
        (differentiable; the term's gradient flows through both of its calls).
      content: (N, H, W, 3) in [0, 1].
      key: PRNG key of the warps and the noise (`step_key`).
      output: `forward(content)` if already computed (saves a pass), else None.
      shift, rotate, noise: the perturbation's size (pixels, degrees, standard deviation); 0 turns a part off.
      integer: whole-pixel translations.

    Returns:
      () float32, the mean squared difference over valid pixel-channels.
    """
    n, h, w, _ = content.shape
    k_warp, k_noise = jax.random.split(key)
    t, angle = random_warps(k_warp, n, shift, rotate, integer=integer)
    angle_or_none = angle if rotate else None
    moved, valid = warp_images(content, t, angle_or_none)
    if noise:
        moved = jnp.clip(moved + jnp.asarray(noise, moved.dtype)
                         * jax.random.normal(k_noise, moved.shape, moved.dtype), 0.0, 1.0)
    y = forward(content) if output is None else output
    if y.shape[1:3] != (h, w):
        raise ValueError(f"the forward pass must keep the content's size {(h, w)}, got {y.shape}")
    target, _ = warp_images(y, t, angle_or_none)
    got = forward(moved).astype(jnp.float32)
    diff = jnp.square(got - target.astype(jnp.float32)) * valid
    count = jnp.maximum(jnp.sum(valid) * jnp.float32(y.shape[-1]), 1.0)
    return jnp.sum(diff) / count


def config_args(config: Any) -> dict[str, Any]:
    """The term's keyword arguments from a training config (`stability_shift`, `_rotate`, `_noise`)."""
    def get(name: str, default: float) -> float:
        return float(config.get(name, default)) if hasattr(config, "get") else float(getattr(config, name, default))

    return {"shift": get("stability_shift", DEFAULT_SHIFT), "rotate": get("stability_rotate", DEFAULT_ROTATE),
            "noise": get("stability_noise", DEFAULT_NOISE)}


@dataclasses.dataclass(frozen=True)
class StabilityTerm:
    """The term as a family's loss configuration holds it (hashable: part of the jitted step's static).

    Attributes:
      weight: its weight in the loss; 0 turns it off (the loss is then exactly the family's own).
      args: `stability_loss`'s keyword arguments as sorted (name, value) pairs.
      seed: the run's seed, folded with the step into the warps' key.
    """

    weight: float = 0.0
    args: tuple[tuple[str, float], ...] = ()
    seed: int = 0

    @classmethod
    def from_config(cls, config: Any) -> StabilityTerm:
        """From `config.stability_weight`, `stability_shift`, `_rotate`, `_noise` and `seed` (all optional)."""
        get = config.get if hasattr(config, "get") else lambda k, d: getattr(config, k, d)
        return cls(float(get("stability_weight", 0.0)), tuple(sorted(config_args(config).items())),
                   int(get("seed", 0)))

    @property
    def on(self) -> bool:
        """Whether the term is in the loss (and so the loop must put the step in the batch)."""
        return self.weight > 0

    def add(self, loss: Array, metrics: dict[str, Array], forward: Callable[[Array], Array], content: Array,
            output: Array, step: Array | None) -> tuple[Array, dict[str, Array]]:
        """`loss` plus the weighted term (unchanged when off); metrics gain "loss_stability" and "stability".

        Args:
          loss, metrics: the family's loss and its terms.
          forward: the network with the batch's styles, `forward(content) -> images`.
          content: the batch's content (N, H, W, 3) in [0, 1].
          output: `forward(content)`, already computed by the loss.
          step: the training step (`batch["step"]`, which `nst_jax.train.train_step` adds when the term is on).
        """
        if not self.on:
            return loss, metrics
        if step is None:
            raise ValueError("the stability term needs the training step (batch['step'])")
        term = stability_loss(forward, content, step_key(self.seed, step), output=output,
                              **dict(self.args))
        weighted = jnp.float32(self.weight) * term
        loss = loss + weighted
        return loss, dict(metrics, loss=loss, loss_stability=weighted, stability=term)


__all__ = ["StabilityTerm", "config_args", "random_warps", "stability_loss", "step_key", "warp_images"]
