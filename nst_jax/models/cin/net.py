"""The CIN transformer (`apply`, with the convolution rewrites of its fast walk) and the family's
inference contract (`nst_jax.models.cin`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nst_jax.convs import DN, area, depth_to_space, space_to_depth, weighted_moments
from nst_jax.errors import InputError, StyleError
from nst_jax.models import Moments, blend_conditions
from nst_jax.models.cin.spec import (
    Layer,
    TransformerSpec,
    _get,
    _round_up,
    _set,
    _spec_of,
    layers,
    spec_from_config,
)
from nst_jax.typing import Array, Params

# ----------------------------------------------------------------------------------------------------
# Primitives. XLA's CPU convolutions run small channel counts far below the machine's peak, so the fast walk
# rewrites the layers that have them into equivalent convolutions with more channels (measured in
# benchmarks/cin.py). Each rewrite sums the same products as the plain layer (a few in another order), so the
# two walks agree to float32 rounding; `apply(..., impl="plain")` is the straightforward walk they are tested
# against.

def _pad_channels(c: int) -> int:
    # XLA CPU's fast convolution kernels want channel counts that are multiples of 4; zero channels add
    # nothing to the sums.
    return c if c % 4 == 0 else _round_up(c, 4)


def _conv(x: Array, kernel: Array, bias: Array | None, stride: int) -> Array:
    """Reflect-padded (k // 2) convolution, any stride; channel counts padded with zeros to multiples of 4."""
    k, cin, cout = kernel.shape[0], kernel.shape[2], kernel.shape[3]
    p = k // 2
    cin_p, cout_p = _pad_channels(cin), _pad_channels(cout)
    if cin_p != cin or cout_p != cout:
        kernel = jnp.pad(kernel, ((0, 0), (0, 0), (0, cin_p - cin), (0, cout_p - cout)))
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect") if p else x
    if cin_p != cin:
        xp = jnp.pad(xp, ((0, 0), (0, 0), (0, 0), (0, cin_p - cin)))
    y = lax.conv_general_dilated(xp, kernel, (stride, stride), "VALID", dimension_numbers=DN)
    if cout_p != cout:
        y = y[..., :cout]
    return y if bias is None else y + bias.reshape(1, 1, 1, -1)


def _upsample(x: Array, factor: int) -> Array:
    """Nearest-neighbour upsampling by an integer factor."""
    if factor == 1:
        return x
    n, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, factor, w, factor, c))
    return x.reshape(n, h * factor, w * factor, c)


# Phase space: a map (N, 2h, 2w, C) is also held as its four 2x2 phases (N, h, w, 4 * C), channel index
# (2 * a + b) * C + c for the pixel (2i + a, 2j + b) (space-to-depth).


def _s2d_kernel(kernel: Array) -> Array:
    """A stride-1 k x k kernel (HWIO) as a (k//2 + 1)-square kernel from input phases to output phases.

    Output phase a at row 2i + a reads input row 2i + a + dy = 2(i + u) + p, so tap (u, p) carries
    kernel row dy = 2u + p - a (zero outside 0..k-1).
    """
    k, _, cin, cout = kernel.shape
    taps = k // 2 + 1
    idx = np.array([[[2 * u + p - a + 1 for a in range(2)] for p in range(2)] for u in range(taps)])  # (u, p, a)
    wp = jnp.pad(kernel, ((1, 2 * taps - k), (1, 2 * taps - k), (0, 0), (0, 0)))  # index 0 and the end are zeros
    g = wp[idx[:, :, :, None, None, None], idx[None, None, None, :, :, :]]  # (u, p, a, v, q, b, cin, cout)
    g = g.transpose(0, 3, 1, 4, 6, 2, 5, 7)  # (u, v, p, q, cin, a, b, cout)
    return g.reshape(taps, taps, 4 * cin, 4 * cout)


def _conv_s2d(x: Array, kernel: Array, bias: Array | None) -> Array:
    """Reflect-padded stride-1 convolution of an even-sized map, computed on its phases; returns phases.

    A 9x9 convolution with 3 or 4 channels on one side becomes a 5x5 one with 4x the channels on both sides,
    which XLA CPU runs several times faster (same products, plus zeros).
    """
    p = kernel.shape[0] // 2
    # the phases already give 4x the channels: padding 3 to 4 first measured slower here
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
    # (h + 2p) / 2 phase rows through k // 2 + 1 taps: exactly h / 2 output phase rows
    y = lax.conv_general_dilated(space_to_depth(xp, 2), _s2d_kernel(kernel), (1, 1), "VALID", dimension_numbers=DN)
    return y if bias is None else y + jnp.tile(bias, 4).reshape(1, 1, 1, -1)


# Along one axis, nearest x2 upsampling then a reflect-padded 3-tap filter (k0, k1, k2) is, on the edge-padded
# low-resolution input: phase 0 = k0 * x[i-1] + (k1 + k2) * x[i]; phase 1 = (k0 + k1) * x[i] + k2 * x[i+1].
_UP_TAPS = np.array([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], np.float32)  # (phase, tap, k index)


def _upsample_conv_phases(x: Array, kernel: Array, bias: Array | None) -> Array:
    """Nearest x2 upsampling then a reflect-padded 3x3 convolution, computed at low resolution; returns phases.

    Each output phase is a 2x2 convolution of the edge-padded input (16/36 of the upsampled convolution's
    multiply-adds), all four in one convolution with 4x the output channels.
    """
    cin, cout = kernel.shape[2], kernel.shape[3]
    h, w = x.shape[1], x.shape[2]
    t = jnp.asarray(_UP_TAPS)
    k4 = jnp.einsum("atd,bse,deio->tsiabo", t, t, kernel, precision=lax.Precision.HIGHEST)
    k4 = k4.reshape(2, 2, cin, 4 * cout)
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    z = lax.conv_general_dilated(xp, k4, (1, 1), "VALID", dimension_numbers=DN)  # (N, h + 1, w + 1, 4 cout)
    # phase (a, b) reads the window at offset (a, b)
    parts = [z[:, a:a + h, b:b + w, (2 * a + b) * cout:(2 * a + b + 1) * cout] for a in (0, 1) for b in (0, 1)]
    y = jnp.concatenate(parts, axis=-1)
    return y if bias is None else y + jnp.tile(bias, 4).reshape(1, 1, 1, -1)


def _moments(y: Array, groups: int = 1) -> tuple[Array, Array]:
    """Per-image, per-channel mean and biased variance over the spatial axes (and the phases): (N, 1, 1, C)."""
    n, h, w, c = y.shape
    y5 = y.reshape(n, h, w, groups, c // groups)
    mean = jnp.mean(y5, axis=(1, 2, 3), keepdims=True)
    var = jnp.mean(jnp.square(y5 - mean), axis=(1, 2, 3), keepdims=True)
    return mean.reshape(n, 1, 1, c // groups), var.reshape(n, 1, 1, c // groups)


def _small(layer: Layer) -> bool:
    # measured: large kernels with a narrow side (3-8 channels) are where phases win
    return layer.kernel >= 5 and min(layer.cin, layer.cout) <= 8


# ----------------------------------------------------------------------------------------------------
# The network


def apply(params: Mapping[str, Any], x: Array, weights: Array, spec: TransformerSpec, *,
          norm_stats: Mapping[str, Any] | None = None, return_stats: bool = False,
          impl: Literal["fast", "plain"] = "fast", stats_weight: Array | None = None
          ) -> Array | tuple[Array, Params]:
    """Run the transformer.

    Args:
      params: the tree of `expected_shapes(spec)`.
      x: images (N, H, W, 3) float32 RGB in [0, 1], any H, W.
      weights: style weights (N, S) (or (1, S), broadcast), or per-pixel weight maps (N, H, W, S) at the image's
        resolution: the norm rows are mixed per pixel, each layer with the maps averaged to its own grid.
      spec: the layout.
      norm_stats: optionally a tree {path...: {"mean": (N, 1, 1, C), "var": (N, 1, 1, C)}} shaped like the norm
        layers of `params` (as `return_stats` gives): these statistics replace each frame's own (video
        stabilisation); layers missing from it use their own.
      return_stats: also return the per-layer instance-norm statistics computed (before any replacement).
      impl: "fast" (the rewritten convolutions) or "plain" (the straightforward walk; same values up to
        float32 rounding).
      stats_weight: with `return_stats`, (N or 1, H', W', 1) weights of the input pixels at the padded size:
        the returned statistics are then each layer's `Moments` over the weighted positions (tiled statistics,
        `nst_jax.models.cin.tiles`) instead of {"mean", "var"}.

    Returns:
      Stylized images (N, H, W, 3) float32 in [0, 1]; with `return_stats`, (images, stats tree).
    """
    n, height, width, _ = x.shape
    m = spec.size_multiple
    hp, wp = _round_up(height, m), _round_up(width, m)
    weights = jnp.asarray(weights, jnp.float32)
    if weights.ndim not in (2, 4) or weights.shape[-1] != spec.num_styles:
        raise InputError(f"style weights must be (N, {spec.num_styles}) or (N, H, W, {spec.num_styles}), "
                         f"got {weights.shape}")
    per_pixel = weights.ndim == 4
    if per_pixel and weights.shape[1:3] != (height, width):
        raise InputError(f"weight maps must be at the image's resolution {(height, width)}, got {weights.shape}")
    if (hp, wp) != (height, width):
        widths = ((0, 0), (0, hp - height), (0, wp - width), (0, 0))
        x = jnp.pad(x, widths, mode="reflect")
        if per_pixel:
            weights = jnp.pad(weights, widths, mode="edge")
    h = x if spec.value_range == 1.0 else x * jnp.float32(spec.value_range)
    fast = impl == "fast"
    if impl not in ("fast", "plain"):
        raise ValueError(f"impl must be 'fast' or 'plain', got {impl!r}")

    stats_out: dict[str, Any] = {}
    maps_cache: dict[tuple[int, int], Array] = {}

    def rows(table: Array, grid: tuple[int, int], phased: bool) -> Array:
        """The mixed rows for a map: (N, 1, 1, C) [x 4 phases], or per pixel at the map's full-res grid."""
        if not per_pixel:
            r = jnp.dot(weights, table)[:, None, None, :]
            return jnp.tile(r, (1, 1, 1, 4)) if phased else r
        if grid not in maps_cache:
            maps_cache[grid] = area(weights, weights.shape[1] // grid[0])
        wm = maps_cache[grid]
        if phased:
            wm = space_to_depth(wm, 2)
            nn_, hh, ww, _ = wm.shape
            r = jnp.einsum("nhwps,sc->nhwpc", wm.reshape(nn_, hh, ww, 4, -1), table)
            return r.reshape(nn_, hh, ww, 4 * table.shape[1])
        return jnp.einsum("nhws,sc->nhwc", wm, table)

    ls = layers(spec)
    phased = False  # h holds the four phases of the map
    skip = None
    for layer in ls:
        p = _get(params, layer.path)
        kernel, bias = p["kernel"], p.get("bias") if spec.conv_bias else None
        if layer.path[0] == "residual" and layer.path[2] == "0":
            if phased:
                h, phased = depth_to_space(h, 2), False
            skip = h
        if phased:
            h, phased = depth_to_space(h, 2), False
        even = h.shape[1] % 2 == 0 and h.shape[2] % 2 == 0
        if fast and layer.upsample == 2 and layer.kernel == 3 and layer.stride == 1:
            h, phased = _upsample_conv_phases(h, kernel, bias), True
        elif fast and layer.stride == 1 and layer.upsample == 1 and _small(layer) and even:
            h, phased = _conv_s2d(h, kernel, bias), True
        else:
            h = _conv(_upsample(h, layer.upsample), kernel, bias, layer.stride)
        groups = 4 if phased else 1
        grid = (h.shape[1] * 2, h.shape[2] * 2) if phased else (h.shape[1], h.shape[2])
        if layer.norm:
            mean, var = _moments(h, groups)
            if return_stats and stats_weight is not None:
                wg = area(stats_weight, stats_weight.shape[1] // grid[0])
                _set(stats_out, layer.path, Moments(*weighted_moments(
                    h, space_to_depth(wg, 2) if phased else wg, groups)))
            elif return_stats:
                _set(stats_out, layer.path, {"mean": mean, "var": var})
            if norm_stats is not None:
                try:
                    given = _get(norm_stats, layer.path)
                    mean, var = jnp.asarray(given["mean"]), jnp.asarray(given["var"])
                except (KeyError, TypeError):
                    pass
            inv = lax.rsqrt(var + jnp.float32(spec.eps))
            if phased:
                mean, inv = jnp.tile(mean, (1, 1, 1, 4)), jnp.tile(inv, (1, 1, 1, 4))
            h = (h - mean) * inv * rows(p["norm"]["gamma"], grid, phased) + rows(p["norm"]["beta"], grid, phased)
        if layer.relu:
            h = jax.nn.relu(h)
        if layer.path[0] == "residual" and layer.path[2] == "1":
            if phased:
                h, phased = depth_to_space(h, 2), False
            h = h + skip
    if phased:
        h = depth_to_space(h, 2)
    if spec.output == "sigmoid":
        y = jax.nn.sigmoid(h)
    else:
        y = h if spec.value_range == 1.0 else h / jnp.float32(spec.value_range)
        y = jnp.clip(y, 0.0, 1.0)
    y = y[:, :height, :width, :]
    return (y, stats_out) if return_stats else y


# ----------------------------------------------------------------------------------------------------
# The family contract (nst_jax.models): `static` is the TransformerSpec; callers that pass none may carry it
# in `frozen` instead (`frozen_for`).


def _as_weights(style: Array, num_styles: int) -> Array:
    """Weights (N, S) from indices (N,) or weights (N, S) / (S,); `StyleError` for a style outside the table
    (indices are checked where they are concrete values, i.e. outside a traced program)."""
    if isinstance(style, int | np.integer):
        style = np.asarray([style])
    if not isinstance(style, jax.core.Tracer):
        style = np.asarray(style)
    if jnp.issubdtype(style.dtype, jnp.integer):
        if style.ndim != 1:
            raise StyleError(f"style indices must be (N,), got {style.shape}")
        if isinstance(style, np.ndarray) and style.size and not ((style >= 0) & (style < num_styles)).all():
            bad = int(style[(style < 0) | (style >= num_styles)][0])
            raise StyleError(f"style index {bad} is out of range: this model has {num_styles} styles "
                             f"(0-{num_styles - 1})")
        return jax.nn.one_hot(style, num_styles, dtype=jnp.float32)
    if style.ndim == 1:
        style = style[None, :]
    if style.ndim != 2 or style.shape[-1] != num_styles:
        raise StyleError(f"style weights must be (N, {num_styles}) (this model has {num_styles} styles), got "
                         f"{style.shape}")
    return jnp.asarray(style, jnp.float32)


def num_styles(params: Mapping[str, Any]) -> int:
    """S, the number of rows of the norm tables in `params`."""
    return int(params["contract"]["0"]["norm"]["gamma"].shape[0])


def _spec_for(frozen: Any, static: Any) -> TransformerSpec:
    if isinstance(static, TransformerSpec):
        return static
    return _spec_of(frozen)


def inference_setup(config: Any) -> tuple[dict[str, Any], TransformerSpec]:
    """(frozen, static) for a network built from `config` (see `spec_from_config`): CIN needs no frozen arrays."""
    return {}, spec_from_config(config)


def condition(params: Mapping[str, Any], frozen: Any, style: Array, static: Any = None) -> dict[str, Array]:
    """What a style becomes: {"weights": (N, S)}.

    Args:
      params: the network (its tables give S).
      frozen, static: unused (the condition depends only on the table size).
      style: weights (N, S) (or (S,)), or integer indices (N,) (one-hot rows).
    """
    del frozen, static
    return {"weights": _as_weights(style, num_styles(params))}


def blend(conditions: Mapping[str, Array], weights: Array) -> dict[str, Array]:
    """A convex mix of K conditions stacked on a leading axis with weights (K,) (mixing rows)."""
    return blend_conditions(dict(conditions), weights)


def _mix_alpha(y: Array, content: Array, alpha: Array) -> Array:
    a = jnp.asarray(alpha, jnp.float32).reshape(-1, 1, 1, 1)
    return y * a + content * (1.0 - a)


def stylize(params: Mapping[str, Any], frozen: Any, content: Array, condition: Mapping[str, Array],
            alpha: Array, static: Any = None) -> Array:
    """Stylize content images.

    Args:
      params: the network.
      frozen: {} (or {"spec": TransformerSpec} from `frozen_for` when `static` is not given).
      content: (N or 1, H, W, 3) in [0, 1].
      condition: {"weights": (N, S)}.
      alpha: (N,) in [0, 1]: the output is alpha * stylized + (1 - alpha) * content (pixels).
      static: the TransformerSpec.

    Returns:
      (N, H, W, 3) float32 in [0, 1].
    """
    content, w = _rows(content, condition, None)
    return _mix_alpha(apply(params, content, w, _spec_for(frozen, static)), content, alpha)


def stylize_masked(params: Mapping[str, Any], frozen: Any, content: Array, conditions: Mapping[str, Array],
                   masks: Array, alpha: Array, static: Any = None) -> Array:
    """Stylize with K styles placed per pixel, in one pass (rows mixed per pixel at every layer's grid).

    Args:
      params, frozen, static: as `stylize`.
      content: (N or 1, H, W, 3).
      conditions: {"weights": (N, K, S)}.
      masks: (N, H, W, K), non-negative, summing to 1 where covered.
      alpha: (N,).

    Returns:
      (N, H, W, 3) float32 in [0, 1].
    """
    content, maps = _rows(content, conditions, masks)
    return _mix_alpha(apply(params, content, maps, _spec_for(frozen, static)), content, alpha)


def _rows(content: Array, condition: Mapping[str, Array], masks: Array | None) -> tuple[Array, Array]:
    """The content broadcast to N and what `apply` mixes the norm rows with: the weights (N, S), or with masks
    (N, H, W, K) the per-pixel maps sum_k mask_k * weights_k (N, H, W, S)."""
    w = condition["weights"]
    if masks is None:
        n = max(content.shape[0], w.shape[0])
        return jnp.broadcast_to(content, (n,) + content.shape[1:]), jnp.broadcast_to(w, (n, w.shape[-1]))
    w = jnp.asarray(w, jnp.float32)
    masks = jnp.asarray(masks, jnp.float32)
    n = max(content.shape[0], w.shape[0], masks.shape[0])
    maps = jnp.einsum("nhwk,nks->nhws", jnp.broadcast_to(masks, (n,) + masks.shape[1:]),
                      jnp.broadcast_to(w, (n,) + w.shape[1:]))
    return jnp.broadcast_to(content, (n,) + content.shape[1:]), maps


def stats_forward(params: Mapping[str, Any], frozen: Any, content: Array, condition: Mapping[str, Array],
                  masks: Array | None, alpha: Array, norm_stats: Any, static: Any = None, *,
                  stats_weight: Array | None = None) -> tuple[Array, Any]:
    """The statistics seam (`nst_jax.models`): `stylize`, or with masks `stylize_masked`, with every instance
    norm's statistics given or returned (`apply`'s `norm_stats=` / `return_stats=`).

    Args:
      params, frozen, content, alpha, static: as `stylize`; condition: {"weights": (N, S)}, or with masks
        {"weights": (N, K, S)}.
      masks: None, or (N, H, W, K) per-pixel weights of the K conditions.
      norm_stats: None (each frame's own), or a tree {path: {"mean", "var"}} as returned.
      stats_weight: return each layer's weighted `Moments` instead (`apply`'s `stats_weight`).

    Returns:
      ((N, H, W, 3) float32 in [0, 1], the per-layer statistics the pass computed).
    """
    content, w = _rows(content, condition, masks)
    y, stats = apply(params, content, w, _spec_for(frozen, static), norm_stats=norm_stats, return_stats=True,
                     stats_weight=stats_weight)
    return _mix_alpha(y, content, alpha), stats
