"""Tiled stylization at any resolution, for every family, through the statistics seam (issue 24).

A family normalises its activations with per-channel statistics of the whole image. Given those statistics
(`Family.stats_forward(..., norm_stats=)`), every output pixel depends only on the input pixels within the
network's receptive field, so the image can run in tiles of one fixed shape (one compile): each tile carries a
`halo` of context, its core is kept, and the cores partition the image. Tiles at the image's border start exactly
at the border, so the network pads them as it pads the whole image; tile offsets are multiples of the family's
`align`, so strided and pooled grids coincide with the whole image's. The picture is then the untiled one, to
float rounding (tests/test_tiling.py), wherever the statistics are the untiled run's.

Where the statistics come from (`stats`):
- "exact": each normalisation layer's moments accumulated over the tiles' cores at full resolution (float32 per
  tile, combined in float64 with Chan's formula). Layer k's statistics depend on layers < k being normalised with
  the whole image's statistics, so a network with L normalisation layers takes L passes over the tiles before
  the stylizing one (AdaIN: 1; multistyle26: 15; magenta-arbitrary: 13).
- "thumbnail" (URST, Chen et al. 2022): the statistics of the whole image resized to `THUMBNAIL` px on its long
  side, one small pass.
Each family's default (`Tiling.default_stats`) was chosen by measurement (docs/tiling.md).

Memory: the image is read once (uint8 for files), tiles are converted to float32 one at a time, and the output
is assembled in place into a preallocated array (uint8 for files); the network's working memory is that of one
tile (`Tiling.bytes_per_pixel` x its pixels), fitted to a budget.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from nst_jax.errors import NstError
from nst_jax.models import Family, Moments, Tiling

STATS = ("exact", "thumbnail")
# The long side of the thumbnail the "thumbnail" statistics come from (URST uses about 1024 px).
THUMBNAIL = 1024
# The default memory budget: this fraction of the memory available when the run starts, at most BUDGET_CAP
# (larger tiles gain little once the halo is a small part of them, and the machine stays usable).
BUDGET_FRACTION = 0.25
BUDGET_CAP = 2 * 1024 ** 3
# "auto" tiles are at most this many pixels a side: past it a pass runs slower per pixel on the CPU (the working
# set leaves the caches) while the halo's share is already small (benchmarks/RESULTS.md, tile sizes).
AUTO_TILE_MAX = 2048


# ----------------------------------------------------------------------------------------------------
# Budgets and plans


def parse_size(text: str | int | float) -> int:
    """A memory size: bytes, or a number with a unit (K, M, G, T; KiB/KB alike, powers of 1024), e.g. "2G".

    Raises:
      NstError: not a positive size.
    """
    if isinstance(text, bool):
        raise NstError(f"--memory-budget must be a size such as 2G or 500M, got {text!r}")
    if isinstance(text, int | float | np.integer | np.floating):
        value = float(text)
        if not math.isfinite(value):
            raise NstError(f"the memory budget must be a finite size such as 2G or 500M, got {text!r}")
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)i?b?\s*", str(text).lower())
        if m is None:
            raise NstError(f"--memory-budget must be a size such as 2G or 500M, got {text!r}")
        value = float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " ")
    if not value > 0:
        raise NstError(f"the memory budget must be positive, got {text!r}")
    return int(value)


def check_tile(tile: Any) -> int | str | None:
    """`tile` as `plan` takes it: None, "auto" (any case, spaces around) or a whole number of pixels >= 1.

    Raises:
      NstError: anything else (a fraction, NaN, infinity, a list, a bool, another word).
    """
    if tile is None:
        return None
    if isinstance(tile, str):
        if tile.strip().lower() == "auto":
            return "auto"
        # ASCII digits only ("²".isdigit() is true, int() refuses it); 18 digits keep int() away from its limit
        if re.fullmatch(r"\s*[0-9]{1,18}\s*", tile) and int(tile) >= 1:
            return int(tile)
    elif isinstance(tile, int | float | np.integer | np.floating) and not isinstance(tile, bool | np.bool_):
        if math.isfinite(tile) and float(tile).is_integer() and tile >= 1:
            return int(tile)
    raise NstError(f"--tile must be auto or a positive whole number of pixels, got {tile!r}")


def check_stats(stats: Any) -> str | None:
    """`tile_stats`: None (the family's default) or one of `STATS`, checked whether or not the image needs tiles.

    Raises:
      NstError: anything else.
    """
    if stats is None or (isinstance(stats, str) and stats in STATS):
        return stats
    raise NstError(f"--tile-stats must be one of {', '.join(STATS)}, got {stats!r}")


def available_memory() -> int:
    """Bytes of memory available to new work (MemAvailable), or the physical memory if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_budget() -> int:
    """`BUDGET_FRACTION` of the available memory, at most `BUDGET_CAP`."""
    return int(min(available_memory() * BUDGET_FRACTION, BUDGET_CAP))


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


@dataclasses.dataclass(frozen=True)
class Axis:
    """Tiles along one axis: each `(start, core_start, core_end)` in padded-image pixels."""

    size: int      # the image's
    padded: int    # rounded up to the alignment
    tile: int      # every tile's extent
    spans: tuple[tuple[int, int, int], ...]


def _axis(size: int, tile: int, halo: int, align: int) -> Axis:
    padded = _round_up(size, align)
    tile = min(tile, padded)
    if tile >= padded:
        return Axis(size, padded, padded, ((0, 0, padded),))
    core = tile - 2 * halo
    spans = []
    for c0 in range(0, padded, core):
        c1 = min(c0 + core, padded)
        start = min(max(c0 - halo, 0), padded - tile)
        spans.append((start, c0, c1))
    return Axis(size, padded, tile, tuple(spans))


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one image go: rows and columns of (start, core start, core end)."""

    rows: Axis
    cols: Axis
    halo: int
    align: int

    @property
    def shape(self) -> tuple[int, int]:
        """Every tile's (height, width)."""
        return self.rows.tile, self.cols.tile

    @property
    def count(self) -> int:
        """The number of tiles."""
        return len(self.rows.spans) * len(self.cols.spans)

    def tiles(self) -> Iterator[tuple[tuple[int, int, int], tuple[int, int, int]]]:
        """(row span, column span) of every tile, row by row."""
        for r in self.rows.spans:
            for c in self.cols.spans:
                yield r, c

    def describe(self, bytes_per_pixel: float) -> str:
        """One line for --verbose."""
        th, tw = self.shape
        return (f"tile plan: {self.rows.size}x{self.cols.size} px (padded {self.rows.padded}x{self.cols.padded}) "
                f"in {len(self.rows.spans)}x{len(self.cols.spans)} = {self.count} tiles of {th}x{tw} px, halo "
                f"{self.halo} px, alignment {self.align}; about {_fmt(th * tw * bytes_per_pixel)} per tile")


def _fmt(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def min_tile(tiling: Tiling) -> int:
    """The smallest tile side: two halos and one aligned core."""
    return 2 * tiling.halo + tiling.align


def plan(height: int, width: int, tiling: Tiling, tile: int | str | None, budget: int | None = None
         ) -> TilePlan | None:
    """The tile plan of an image, or None where it runs untiled.

    Args:
      height, width: the image's size.
      tiling: the family's `Tiling`.
      tile: None (untiled), "auto" (tiles only if the whole image would not fit `budget`, as large as fit up to
        `AUTO_TILE_MAX` a side), or a tile side in pixels (rounded up to the family's alignment).
      budget: bytes of working memory for one pass (None: `default_budget()`).

    Raises:
      NstError: a tile side below the receptive field, or a budget too small for even one tile.
    """
    tile = check_tile(tile)
    if tile is None:
        return None
    budget = default_budget() if budget is None else int(budget)
    bpp = tiling.bytes_per_pixel
    smallest = min_tile(tiling)
    if tile == "auto":
        if height * width * bpp <= budget:
            return None
        side = min(int((budget / bpp) ** 0.5), AUTO_TILE_MAX) // tiling.align * tiling.align
        if side < smallest:
            raise NstError(f"a memory budget of {_fmt(budget)} is too small for even one tile: the smallest tile "
                           f"({smallest}x{smallest} px) needs about {_fmt(smallest * smallest * bpp)}")
    else:
        side = _round_up(tile, tiling.align)
        if side < smallest:
            raise NstError(f"a tile of {int(tile)} px is below this network's receptive field: tiles need at "
                           f"least {smallest} px (a {tiling.halo} px halo on each side and a {tiling.align} px core)")
    p = TilePlan(_axis(height, side, tiling.halo, tiling.align), _axis(width, side, tiling.halo, tiling.align),
                 tiling.halo, tiling.align)
    th, tw = p.shape
    if th * tw * bpp > budget:
        raise NstError(f"a memory budget of {_fmt(budget)} is too small for a {th}x{tw} px tile (about "
                       f"{_fmt(th * tw * bpp)})")
    return p


def plan_for(family: Family, height: int, width: int, tile: int | str | None,
             budget: int | str | None = None) -> TilePlan | None:
    """`plan` for a family: None (one pass) for `tile` None, or "auto" where it fits or the family cannot tile.

    Raises:
      NstError: as `plan`; a tile size asked of a family without `Family.tiling`.
    """
    tile = check_tile(tile)
    budget = None if budget is None else parse_size(budget)
    if tile is None or (family.tiling is None and tile == "auto"):
        return None
    if family.tiling is None:
        raise NstError(f"a {family.name} model cannot run in tiles")
    return plan(height, width, family.tiling, tile, budget)


# ----------------------------------------------------------------------------------------------------
# Pixels in and out


def _crop(image: np.ndarray, rows: tuple[int, int, int], cols: tuple[int, int, int], shape: tuple[int, int],
          mode: str = "reflect") -> np.ndarray:
    """The tile of `image` (H, W, C) at (row start, column start), padded at the bottom/right (`mode`) where it
    runs past the image into the aligned size: the same pixels as padding the whole image first."""
    r0, c0 = rows[0], cols[0]
    a = image[r0:r0 + shape[0], c0:c0 + shape[1]]
    ph, pw = shape[0] - a.shape[0], shape[1] - a.shape[1]
    if ph or pw:
        a = np.pad(a, ((0, ph), (0, pw), (0, 0)), mode=mode)
    return a


def as_float(a: np.ndarray) -> np.ndarray:
    """uint8 or float pixels -> float32 in [0, 1]."""
    if a.dtype == np.uint8:
        return a.astype(np.float32) * np.float32(1 / 255)
    return np.asarray(a, np.float32)


def _store(out: np.ndarray, tile: np.ndarray, rows: tuple[int, int, int], cols: tuple[int, int, int]) -> None:
    """Write a tile's core into `out` (uint8 rounded as `nst_jax.image.to_uint8`, or float)."""
    h, w = out.shape[:2]
    r1, c1 = min(rows[2], h), min(cols[2], w)
    if r1 <= rows[1] or c1 <= cols[1]:
        return
    core = tile[rows[1] - rows[0]:r1 - rows[0], cols[1] - cols[0]:c1 - cols[0]]
    if out.dtype == np.uint8:
        core = np.rint(np.clip(core, 0.0, 1.0) * 255.0).astype(np.uint8)
    out[rows[1]:r1, cols[1]:c1] = core


def thumbnail(image: np.ndarray, align: int, size: int | None = None) -> np.ndarray:
    """The whole image for the statistics: itself reflect-padded to the alignment where its long side is at most
    `size` (default `THUMBNAIL`), else resized (antialiased) to about `size` on its long side with aligned sides.
    Float32 (H', W', C)."""
    size = size or THUMBNAIL
    h, w = image.shape[:2]
    if max(h, w) <= size:
        return _crop(as_float(image), (0, 0, 0), (0, 0, 0), (_round_up(h, align), _round_up(w, align)))
    s = size / max(h, w)
    th, tw = max(_round_up(int(round(h * s)), align), align), max(_round_up(int(round(w * s)), align), align)
    return resize(image, (th, tw))


def resize(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(H, W, C) uint8 or float -> float32 (h, w, C), antialiased (Pillow's box-filtered bilinear for uint8 RGB;
    JAX's antialiased linear resize otherwise)."""
    if image.dtype == np.uint8 and image.shape[-1] == 3:
        from PIL import Image

        return as_float(np.asarray(Image.fromarray(image).resize((hw[1], hw[0]), Image.Resampling.BILINEAR)))
    import jax

    return np.asarray(jax.image.resize(as_float(image), hw + image.shape[2:], "linear", antialias=True))


# ----------------------------------------------------------------------------------------------------
# Statistics


def _combine(a: Moments | None, b: Moments) -> Moments:
    """Moments of the union of two disjoint windows (Chan et al.), in float64."""
    b = Moments(*(np.asarray(v, np.float64) for v in b))
    if a is None:
        return b
    n = a.count + b.count
    safe = np.maximum(n, 1e-300)
    delta = b.mean - a.mean
    return Moments(n, a.mean + delta * b.count / safe, a.m2 + b.m2 + delta * delta * a.count * b.count / safe)


def _host(moments: dict) -> dict[str, Moments]:
    import jax

    return {k: Moments(*(np.asarray(v, np.float64) for v in m)) for k, m in jax.device_get(moments).items()}


def _tile_forward(family: Family) -> Any:
    """`stats_forward`'s image alone (its statistics output is dead code)."""
    def forward(params, frozen, content, condition, masks, alpha, norm_stats, static):
        return family.stats_forward(params, frozen, content, condition, masks, alpha, norm_stats, static)[0]
    return forward


def _crop_masks(masks: Any, rows: tuple, cols: tuple, shape: tuple[int, int]) -> Any:
    if masks is None:
        return None
    if hasattr(masks, "crop"):  # a strength map's weights, made per tile (`nst_jax.strength.TileStrength`)
        return masks.crop(rows, cols, shape)[None]
    return _crop(masks, rows, cols, shape, mode="edge")[None]


def _resize_masks(masks: Any, hw: tuple[int, int]) -> Any:
    if masks is None:
        return None
    return (masks.at(hw) if hasattr(masks, "at") else resize(masks, hw))[None]


def stylize_tiled(stylizer: Any, image: np.ndarray, condition: Any, masks: np.ndarray | None, alpha: Any,
                  tile_plan: TilePlan, *, stats: str | None = None, norm_stats: Any = None,
                  out: np.ndarray | None = None, luminance: bool = False, progress: bool = True,
                  verbose: bool = False, strength: Any = None) -> np.ndarray:
    """Stylize one image in tiles (see the module docstring).

    Args:
      stylizer: a `nst_jax.stylize.Stylizer` (the family, its weights and compiled programs).
      image: (H, W, 3) uint8 or float RGB in [0, 1].
      condition: the condition, leaves with a leading axis of 1 (with masks: (1, K, ...)).
      masks: None, or (H, W, K) float32 weights of the K conditions at the image's resolution.
      alpha: (1,) strength.
      tile_plan: from `plan`.
      stats: "exact" or "thumbnail" (None: the family's default); ignored when `norm_stats` is given.
      norm_stats: the whole image's normalisation statistics as `stats_forward` takes them (e.g. an untiled run's
        own), used as they are.
      out: a preallocated (H, W, 3) uint8 or float32 array to assemble into (None: a new float32 one).
      luminance: keep the content's chroma (`nst_jax.color.luminance_transfer`, per pixel, so per tile).
      progress: a tqdm bar over the tiles of every pass.
      verbose: print the plan, the passes and the peak memory to stderr.
      strength: None, or a strength map's `nst_jax.strength.TileStrength`: it adds the content's own condition
        to `condition` and makes each tile's weights (then `masks` is ignored), or mixes each tile's pixels.

    Returns:
      `out`, filled.
    """
    import jax.numpy as jnp
    from tqdm import tqdm

    from nst_jax import color
    from nst_jax.family_programs import jitted as _jitted

    family, tiling = stylizer.family, stylizer.family.tiling
    check_stats(stats)
    stats = stats or tiling.default_stats
    h, w = image.shape[:2]
    shape = tile_plan.shape
    p, f, static = stylizer.params, stylizer.frozen, stylizer.static
    a = jnp.asarray(alpha, jnp.float32).reshape(-1)
    cond = condition
    thumb = None
    if norm_stats is None or tiling.prepare is not None or strength is not None:
        thumb = thumbnail(image, tiling.align)
    whole = None if thumb is None else (as_float(image) if max(h, w) <= THUMBNAIL else thumb)
    if strength is not None:
        cond, masks = strength.conditions(stylizer, whole, cond), strength.masks(masks)
    if tiling.prepare is not None:
        cond, a = tiling.prepare(p, f, jnp.asarray(whole)[None], cond, masks, a, static)
    moments = _jitted(family, "tile_moments", lambda fam: fam.tiling.moments)
    forward = _jitted(family, "tile_forward", _tile_forward)
    passes = 0
    current: dict[str, Moments] = {}
    if norm_stats is None:
        tm = _resize_masks(masks, thumb.shape[:2])
        ones = jnp.ones((1,) + thumb.shape[:2] + (1,), jnp.float32)
        current = _host(moments(p, f, jnp.asarray(thumb)[None], cond, tm, a, None, ones, static=static))
        passes = len(current) if stats == "exact" else 0
    if verbose:
        print(tile_plan.describe(tiling.bytes_per_pixel), file=sys.stderr)
        print(f"statistics: {'given' if norm_stats is not None else stats} ({passes} statistics pass"
              f"{'es' if passes != 1 else ''} over the tiles, then the stylizing pass)", file=sys.stderr)
    bar = tqdm(total=tile_plan.count * (passes + 1), unit="tile", desc="tiles", disable=not progress,
               dynamic_ncols=True, leave=False)
    try:
        for key in list(current)[:passes]:
            # layer `key`'s moments over every core, with the layers before it normalised exactly (see above)
            given, acc = tiling.finish(current), None
            for rows, cols in tile_plan.tiles():
                x = jnp.asarray(as_float(_crop(image, rows, cols, shape)))[None]
                wgt = np.zeros((1,) + shape + (1,), np.float32)
                wgt[0, rows[1] - rows[0]:rows[2] - rows[0], cols[1] - cols[0]:cols[2] - cols[0]] = 1.0
                m = moments(p, f, x, cond, _crop_masks(masks, rows, cols, shape), a, given, jnp.asarray(wgt),
                            static=static)[key]
                acc = _combine(acc, m)
                bar.update(1)
            current[key] = acc
        if norm_stats is None:
            norm_stats = tiling.finish(current)
        if strength is not None:
            cond = strength.finish(cond, norm_stats)
        if out is None:
            out = np.empty((h, w, 3), np.float32)
        for rows, cols in tile_plan.tiles():
            xt = as_float(_crop(image, rows, cols, shape))[None]
            y = forward(p, f, jnp.asarray(xt), cond, _crop_masks(masks, rows, cols, shape), a, norm_stats,
                        static=static)
            if strength is not None:
                y = strength.mix(y, xt, rows, cols)
            if luminance:
                y = color.luminance_transfer(y, jnp.asarray(xt))
            _store(out, np.asarray(y[0], np.float32), rows, cols)
            bar.update(1)
    finally:
        bar.close()
    if verbose:
        import resource

        print(f"peak memory (RSS): {_fmt(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}",
              file=sys.stderr)
    return out
