"""Strength maps: per-pixel style strength (0 keeps the content, 1 the full style) for any model family, in one pass.

A strength map is a second "style" placed by the mask machinery: the style (one, a blend, or K styles placed by
their own masks) gets the weight s(x) at each pixel and the content's own condition (`Family.own_condition`) the
rest, 1 - s(x), so `stylize_masked` runs once with K + 1 conditions. The content's own condition is the one
that gives the family's alpha-0 output where it is placed (AdaIN: the content region's own relu4_1 statistics, so
AdaIN is the identity there; arbitrary: the content's own style vector). Families whose alpha mixes pixels
(`Family.alpha_pixels`, CIN: its table has no row that reproduces the content) run one pass at full strength
and mix pixels instead: s * stylized + (1 - s) * content, the per-pixel form of their alpha.

So an all-ones map is the plain stylization and an all-zeros map the alpha-0 output, in every family; `alpha`
still scales the whole picture, and colour preservation runs after, as with masks. Pictures in tiles take the map
per tile (`TileStrength`, docs/tiling.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from nst_jax.errors import ImageError, NstError
from nst_jax.image import aspect_ratios_differ, fit_mask


def check_family(family: Any) -> None:
    """Refuse, in one line, a family that cannot take a strength map (`Caps.strength_map`)."""
    if not family.caps.strength_map or (family.own_condition is None and not family.alpha_pixels):
        raise NstError(f"a {family.name} model cannot take a strength map (it has no content-own condition and "
                       f"its alpha does not mix pixels)")


def prepare(strength_map: Any, n: int, hw: tuple[int, int]) -> np.ndarray:
    """Check a strength map and stretch it to the content: (N, H, W) float32 in [0, 1] (read-only; a float32 map
    of the content's size is not copied, so a tiled picture holds no second full-size map).

    Args:
      strength_map: (H', W') for every image, or (N, H', W') one per image (or (1, H', W')), floats in [0, 1]; a
        size other than the content's must have its aspect ratio (within 2%) and is resized bilinearly.
      n: the batch size.
      hw: the content's (H, W).

    Raises:
      NstError: wrong rank, batch, dtype or values; ImageError: another aspect ratio.
    """
    try:
        m = np.asarray(strength_map)
    except (ValueError, TypeError) as e:  # ragged nested lists
        raise NstError(f"a strength map must be an (H, W) or (N, H, W) array of floats in [0, 1]: {e}") from None
    if not (np.issubdtype(m.dtype, np.floating) or np.issubdtype(m.dtype, np.integer)) or m.dtype == bool:
        raise NstError(f"a strength map must be floats in [0, 1], got dtype {m.dtype}")
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3 or m.shape[0] not in (1, n) or min(m.shape[1:]) < 1:
        raise NstError(f"a strength map must be (H, W) or (N, H, W) with N = 1 or {n} (the batch), got shape "
                       f"{m.shape}")
    m = m.astype(np.float32, copy=False)  # a float32 map of the content's size is used as it is (no copy)
    if not np.all(np.isfinite(m)) or m.min() < 0 or m.max() > 1:
        raise NstError("a strength map must hold values in [0, 1]")
    if m.shape[1:] != tuple(hw):
        if aspect_ratios_differ(m.shape[1:], hw):
            raise ImageError(f"the strength map is {m.shape[2]}x{m.shape[1]} but the content is {hw[1]}x{hw[0]}: "
                             f"their aspect ratios differ")
        m = np.stack([fit_mask(mi, hw) for mi in m])
    return np.broadcast_to(m, (n,) + tuple(hw))


def program(family: Any) -> Callable[..., Any]:
    """The one-pass strength program of a family, for `nst_jax.family_programs.jitted(family, "strength", program)`.

    The function is (params, frozen, content, conditions, masks, strength, alpha, static) -> images, with
    conditions of leading axes (N, K), masks None (K = 1: the style everywhere) or (N, H, W, K) placing them,
    strength (N, H, W) in [0, 1] and alpha (N,).
    """
    import jax
    import jax.numpy as jnp

    def run(params, frozen, content, conditions, masks, strength, alpha, static):
        s = jnp.asarray(strength, jnp.float32)[..., None]
        if family.own_condition is None:  # alpha mixes pixels: so does the map (`alpha_pixels`)
            if masks is None:
                one = jax.tree.map(lambda v: v[:, 0], conditions)
                y = family.stylize(params, frozen, content, one, alpha, static)
            else:
                y = family.stylize_masked(params, frozen, content, conditions, masks, alpha, static)
            c = jnp.asarray(content, jnp.float32)
            return jnp.clip(y * s + c * (1.0 - s), 0.0, 1.0)
        if masks is None:
            placed = s
        else:
            m = jnp.asarray(masks, jnp.float32)
            # Masks covering more than 1 are normalised (as the families do); what they leave uncovered and
            # what the map takes away both go to the content's own condition.
            placed = m / jnp.maximum(jnp.sum(m, axis=-1, keepdims=True), 1.0) * s
        weights = jnp.concatenate([placed, 1.0 - jnp.sum(placed, axis=-1, keepdims=True)], axis=-1)
        own = family.own_condition(params, frozen, content, weights, static)
        n = weights.shape[0]
        own = jax.tree.map(lambda v: jnp.broadcast_to(v, (n,) + v.shape[1:]), own)
        conds = jax.tree.map(lambda c, o: jnp.concatenate([c, o[:, None].astype(c.dtype)], axis=1), conditions, own)
        return family.stylize_masked(params, frozen, content, conds, weights, alpha, static)

    return run


class TileStrength:
    """A strength map in tiles (`nst_jax.tiling.stylize_tiled(strength=)`): what `program` does in one pass, per tile.

    Families with an own condition: the K + 1 conditions get the content's own condition once for the whole image
    (`Tiling.own_condition` from the statistics the tiles run with, else `Family.own_condition` of the whole
    image, or of its thumbnail where the image is over `nst_jax.tiling.THUMBNAIL` px), and each tile's weights
    (s * masks, 1 - s) are made from its crop of the map and the masks, so no full-size weights are held.
    `alpha_pixels` families: the tiles run at full strength and each is mixed with its content tile.
    """

    def __init__(self, family: Any, smap: np.ndarray, masks: np.ndarray | None) -> None:
        """smap: (H, W) float32 in [0, 1] at the content's size (`prepare`); masks: None or (H, W, K)."""
        self.family, self.smap, self.user_masks = family, smap, masks
        self.own = family.own_condition is not None

    def masks(self, masks: Any) -> Any:
        """What the tiles place their conditions with: these weights (own condition), or the masks given."""
        return self if self.own else masks

    def _weights(self, s: np.ndarray, m: np.ndarray | None) -> np.ndarray:
        s = np.asarray(s, np.float32)[..., None]
        placed = s if m is None else m / np.maximum(np.sum(m, axis=-1, keepdims=True), np.float32(1.0)) * s
        return np.concatenate([placed, np.float32(1.0) - np.sum(placed, axis=-1, keepdims=True)], axis=-1)

    def crop(self, rows: tuple, cols: tuple, shape: tuple[int, int]) -> np.ndarray:
        """One tile's weights (th, tw, K + 1), padded past the image as the tiles pad masks (edge)."""
        from nst_jax.tiling import _crop

        s = _crop(self.smap[..., None], rows, cols, shape, mode="edge")[..., 0]
        m = None if self.user_masks is None else _crop(self.user_masks, rows, cols, shape, mode="edge")
        return self._weights(s, m)

    def at(self, hw: tuple[int, int]) -> np.ndarray:
        """The weights at (h, w): the map and masks resized (for the thumbnail), or themselves at their size."""
        from nst_jax.tiling import resize

        if tuple(hw) == self.smap.shape:
            return self._weights(self.smap, self.user_masks)
        m = None if self.user_masks is None else resize(self.user_masks, tuple(hw))
        return self._weights(resize(self.smap[..., None], tuple(hw))[..., 0], m)

    def conditions(self, stylizer: Any, whole: np.ndarray, cond: Any) -> Any:
        """The K + 1 conditions, leaves (1, K + 1, ...): `cond` (a blend (1, ...) or K placed (1, K, ...)) and the
        content's own; with `Tiling.own_condition` a stand-in until `finish`. `whole`: (h, w, 3)."""
        import jax
        import jax.numpy as jnp

        if not self.own:
            return cond
        conds = cond if self.user_masks is not None else jax.tree.map(lambda v: v[:, None], cond)
        if self.family.tiling.own_condition is not None:
            own = jax.tree.map(lambda v: v[:, -1], conds)  # its values are not read before `finish`
        else:
            w = jnp.asarray(self.at(whole.shape[:2]))[None]
            own = self.family.own_condition(stylizer.params, stylizer.frozen, jnp.asarray(whole)[None], w,
                                            stylizer.static)
        return jax.tree.map(lambda c, o: jnp.concatenate([c, jnp.asarray(o)[:, None].astype(c.dtype)], axis=1),
                            conds, own)

    def finish(self, cond: Any, norm_stats: Any) -> Any:
        """The conditions the stylizing pass runs with: the own condition read off `norm_stats` where the family's
        `Tiling.own_condition` does that."""
        import jax
        import jax.numpy as jnp

        read = self.family.tiling.own_condition
        if not self.own or read is None:
            return cond
        return jax.tree.map(lambda c, o: c.at[:, -1].set(jnp.asarray(o).astype(c.dtype)), cond, read(norm_stats))

    def mix(self, y: Any, x: Any, rows: tuple, cols: tuple) -> Any:
        """A tile's output: `alpha_pixels` families mix it with the content tile x, s * y + (1 - s) * x."""
        import jax.numpy as jnp

        if self.own:
            return y
        from nst_jax.tiling import _crop

        s = jnp.asarray(_crop(self.smap[..., None], rows, cols, y.shape[1:3], mode="edge"))[None]
        return jnp.clip(y * s + jnp.asarray(x, jnp.float32) * (1.0 - s), 0.0, 1.0)


def gradient(hw: tuple[int, int], *, kind: str = "radial", center: Sequence[float] = (0.5, 0.5),
             radius: float = 0.5, angle: float = 0.0, softness: float = 0.5, invert: bool = False) -> np.ndarray:
    """A smooth strength map (the live page's control): (H, W) float32 in [0, 1].

    Args:
      hw: (H, W).
      kind: "radial" (full strength inside `radius` of `center`, fading outwards) or "linear" (fading along the
        direction `angle`, full strength on the far side of the line through `center`).
      center: (x, y) as fractions of the width and height.
      radius: radial: the radius of full strength, as a fraction of the image's diagonal / 2.
      angle: linear: the direction towards full strength, degrees (0 = to the right, 90 = down).
      softness: the width of the fade, as a fraction of the diagonal / 2 (0 = a hard edge).
      invert: swap the strong and weak sides.
    """
    h, w = hw
    if kind not in ("radial", "linear"):
        raise NstError(f"a strength gradient is radial or linear, not {kind!r}")
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    half_diag = max(float(np.hypot(h, w)) / 2.0, 1.0)
    dx = (xx + 0.5 - float(center[0]) * w) / half_diag
    dy = (yy + 0.5 - float(center[1]) * h) / half_diag
    soft = max(float(softness), 1e-6)
    if kind == "radial":
        m = 1.0 - (np.hypot(dx, dy) - float(radius)) / soft
    else:
        t = np.deg2rad(float(angle))
        m = 0.5 + (dx * np.cos(t) + dy * np.sin(t)) / soft
    m = np.clip(m, 0.0, 1.0).astype(np.float32)
    return 1.0 - m if invert else m
