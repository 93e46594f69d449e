"""The arbitrary family's transformer network and its inference contract (`nst_jax.models.arbitrary`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from nst_jax import ops
from nst_jax.convs import DN, area, depth_to_space, moments, space_to_depth, weighted_moments
from nst_jax.errors import InputError
from nst_jax.models import Moments, blend_conditions
from nst_jax.models.arbitrary.params import (
    BOTTLENECK,
    EPS,
    MIN_SIDE,
    MULTIPLE,
    NORM_FACTORS,
    RESIDUAL_BLOCKS,
    NormStats,
    style_param,
)
from nst_jax.models.arbitrary.predictor import _row, _vector
from nst_jax.typing import Array, Params

# ---------------------------------------------------------------------------------------------------------------
# Transformer


def _conv_reflect(x: Array, layer: Mapping[str, Array]) -> Array:
    """Stride-1 reflect-padded convolution (+ bias if the layer has one); 9x9 ones through `_conv_blocks`."""
    kernel = layer["kernel"]
    if kernel.shape[0] > 3 and x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0:
        y = _conv_blocks(x, kernel)
    else:
        y = ops.conv2d(x, kernel, None, "reflect")
    bias = layer.get("bias")
    return y if bias is None else y + _row(bias, 4)


def space_to_depth_kernel(kernel: Array, s: int) -> Array:
    """The kernel that convolves `space_to_depth(x, s)` into `space_to_depth(conv_valid(x, kernel), s)`.

    Output phase (a, b) at block (i, j) is full-resolution output (s*i + a, s*j + b) = sum over u, v of
    k[u, v] x[s*i + a + u, s*j + b + v]; writing a + u = s*p + q, that is kernel tap (p, p2) of input phase
    (q, q2). A k x k kernel becomes ceil((k + s - 1) / s) taps square, (s*s*Cin) -> (s*s*Cout).
    """
    kh, kw, ci, co = kernel.shape
    kp = -(-(max(kh, kw) + s - 1) // s)
    phases = []
    for a in range(s):
        for b in range(s):
            k = jnp.pad(kernel, ((a, s * kp - kh - a), (b, s * kp - kw - b), (0, 0), (0, 0)))
            k = k.reshape(kp, s, kp, s, ci, co).transpose(0, 2, 1, 3, 4, 5).reshape(kp, kp, s * s * ci, co)
            phases.append(k)
    return jnp.concatenate(phases, axis=-1)


def _conv_blocks(x: Array, kernel: Array) -> Array:
    """A reflect-padded stride-1 convolution with a large kernel, computed on 2 x 2 blocks (`space_to_depth`).

    XLA's CPU convolutions are slow for a 9x9 kernel over 3 or 8 channels; the same convolution over 2 x 2
    blocks (5x5 taps, 4x the channels in and out) does a third more multiply-adds but in XLA's fast kernels
    (several times faster end to end; benchmarks/arbitrary.py). Same products, summed in another order. Needs
    even H, W.
    """
    n, h, w, _ = x.shape
    ph, pw = kernel.shape[0] // 2, kernel.shape[1] // 2
    xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), mode="reflect")
    k = space_to_depth_kernel(kernel, 2)
    kp = k.shape[0]
    # SAME on the blocks, then the valid part (as ops.conv2d does: XLA's SAME convolutions are the fast ones)
    y = lax.conv_general_dilated(space_to_depth(xp, 2), k, (1, 1), "SAME", dimension_numbers=DN)
    lo = (kp - 1) // 2
    return depth_to_space(y[:, lo:lo + h // 2, lo:lo + w // 2, :], 2)


def _conv_reflect_s2(x: Array, layer: Mapping[str, Array]) -> Array:
    """Magenta's strided conv: reflect-pad k//2, then a VALID stride-2 convolution (+ bias).

    On even sizes the VALID convolution is run as XLA's faster SAME one (it pads one zero row and column at the
    end) and the output that saw them is cropped: the same numbers.
    """
    n, h, w, _ = x.shape
    k = layer["kernel"].shape[0]
    xp = jnp.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)), mode="reflect")
    if h % 2 == 0 and w % 2 == 0 and k == 3:
        y = lax.conv_general_dilated(xp, layer["kernel"], (2, 2), "SAME", dimension_numbers=DN)
        y = y[:, :h // 2, :w // 2, :]
    else:
        y = lax.conv_general_dilated(xp, layer["kernel"], (2, 2), "VALID", dimension_numbers=DN)
    return y + _row(layer["bias"], 4)


def _project(proj: Mapping[str, Array], v: Array) -> Array:
    return jnp.dot(v, proj["kernel"], precision=lax.Precision.HIGHEST) + _row(proj["bias"], v.ndim)


class _Conditioning:
    """(gamma, beta) per style-normed layer from one of three forms of conditioning (see `transform`)."""

    def __init__(self, vectors: Array, masks: Array | None, pad_hw: tuple[int, int]):
        vectors = jnp.asarray(vectors, jnp.float32)
        self.kind = "vector"
        if masks is not None:
            if vectors.ndim != 3:
                raise InputError(f"with masks, vectors must be (N, K, {BOTTLENECK}), got {vectors.shape}")
            masks = jnp.asarray(masks, jnp.float32)
            if masks.ndim != 4 or masks.shape[-1] != vectors.shape[1]:
                raise InputError(f"masks must be (N, H, W, K={vectors.shape[1]}), got {masks.shape}")
            self.kind = "masks"
            self.masks = _pad_bottom_right(masks, pad_hw)
        elif vectors.ndim == 4:
            self.kind = "map"
            vectors = _pad_bottom_right(vectors, pad_hw)
        elif vectors.ndim != 2:
            raise InputError(f"vectors must be (N, {BOTTLENECK}) or a per-pixel map (N, H, W, {BOTTLENECK}), got "
                             f"{vectors.shape}")
        self.vectors = vectors

    def scale_shift(self, params: Params, layer: str, mean: Array, var: Array) -> tuple[Array, Array]:
        """(s, t) with StyleNorm(x) = x * s + t: s = gamma / sqrt(var + eps), t = beta - mean * s.

        With masks, each of the K conditions' (s, t) is computed at its small size and the pairs are mixed per
        pixel: (s, t) are affine in (gamma, beta), and a single all-ones mask then reproduces the unmasked
        values bit for bit.
        """
        proj = style_param(params, layer)
        if self.kind == "map":
            v = area(self.vectors, NORM_FACTORS[layer])
            s = _project(proj["gamma"], v) * lax.rsqrt(var + EPS)
            return s, _project(proj["beta"], v) - mean * s
        n, c = mean.shape[0], mean.shape[-1]
        vk = self.vectors if self.kind == "masks" else self.vectors[:, None, :]  # (N, K, D)
        inv = lax.rsqrt(var + EPS).reshape(n, c)
        mean2 = mean.reshape(n, c)
        ss, ts = [], []
        for k in range(vk.shape[1]):
            # Per condition, the very (N, D) @ (D, C) product of the unmasked case: one (N * K, D) product can
            # round differently, and an all-ones mask would no longer reproduce the unmasked picture exactly.
            sk = _project(proj["gamma"], vk[:, k]) * inv
            ss.append(sk)
            ts.append(_project(proj["beta"], vk[:, k]) - mean2 * sk)
        s, t = jnp.stack(ss, axis=1), jnp.stack(ts, axis=1)
        if self.kind == "vector":
            return s.reshape(n, 1, 1, c), t.reshape(n, 1, 1, c)
        m = area(self.masks, NORM_FACTORS[layer])

        def mix(a: Array) -> Array:
            # sum_k m_k * a_k in a fixed order: a weight of exactly 1 (and the others 0) gives a_k exactly
            out = m[..., 0:1] * a[:, 0:1, None, :]
            for k in range(1, a.shape[1]):
                out = out + m[..., k:k + 1] * a[:, k:k + 1, None, :]
            return out

        return mix(s), mix(t)


def _pad_bottom_right(x: Array, hw: tuple[int, int]) -> Array:
    ph, pw = hw[0] - x.shape[1], hw[1] - x.shape[2]
    if ph == 0 and pw == 0:
        return x
    return jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect")



def padded_size(height: int, width: int) -> tuple[int, int]:
    """The size the transformer runs at: the content's, rounded up to a multiple of 4."""
    return -(-height // MULTIPLE) * MULTIPLE, -(-width // MULTIPLE) * MULTIPLE


def transform(params: Params, content: Array, vectors: Array, *, masks: Array | None = None,
              norm_stats: NormStats | None = None, return_stats: bool = False, stats_weight: Array | None = None
              ) -> Array | tuple[Array, NormStats]:
    """The style transfer network: content images and style conditioning -> stylized images.

    Args:
      params: the model tree (uses "style_params" and "transformer").
      content: (N, H, W, 3) RGB in [0, 1], any H, W >= 5 (reflect-padded at the bottom/right to a multiple of
        4 inside, the output cropped back).
      vectors: the conditioning, one of
        - (N, 100) style vectors (one per image);
        - (N, H, W, 100) a per-pixel vector map at the content's size (averaged onto each layer's grid);
        - (N, K, 100) K vectors per image, mixed per pixel by `masks`.
      masks: (N, H, W, K) per-pixel weights of the K vectors at the content's size (they should sum to 1;
        `stylize_masked` makes them so); averaged onto each layer's grid, where each layer's (gamma, beta) is the
        weighted sum of the K vectors' (gamma, beta). A single all-ones mask gives the unmasked result exactly.
      norm_stats: optional {layer: (mean, var)} (keys `NORM_LAYERS`, each (N, 1, 1, C)) used instead of each
        image's own instance-norm moments (e.g. exponentially smoothed over video frames).
      return_stats: also return the moments each layer used, in the same form.
      stats_weight: with `return_stats`, (N or 1, H', W', 1) weights of the input pixels at the padded size: the
        returned statistics are then each layer's `Moments` over the weighted positions, computed before any
        replacement by `norm_stats` (tiled statistics, `nst_jax.models.arbitrary.tiles`).

    Returns:
      (N, H, W, 3) float32 in [0, 1] (sigmoid output); with `return_stats`, (images, stats).
    """
    n, h, w, _ = content.shape
    if h < MIN_SIDE or w < MIN_SIDE:
        raise InputError(f"content must be at least {MIN_SIDE} x {MIN_SIDE} pixels, got {h} x {w}")
    for name, m in (("masks", masks), ("vector map", vectors if jnp.ndim(vectors) == 4 else None)):
        if m is not None and tuple(jnp.shape(m)[1:3]) != (h, w):
            raise InputError(f"the {name} must be at the content's size {h} x {w}, got {tuple(jnp.shape(m))}")
    hp, wp = padded_size(h, w)
    cond = _Conditioning(vectors, masks, (hp, wp))
    t = params["transformer"]
    stats: NormStats = {}

    def norm(y: Array, layer: str) -> Array:
        if stats_weight is not None:
            stats[layer] = Moments(*weighted_moments(y, area(stats_weight, NORM_FACTORS[layer])))
        if norm_stats is not None:
            mean, var = norm_stats[layer]
        else:
            mean, var = moments(y)
        if stats_weight is None:
            stats[layer] = (mean, var)
        scale, shift = cond.scale_shift(params, layer, mean, var)
        return y * scale + shift

    x = _pad_bottom_right(content.astype(jnp.float32), (hp, wp))
    c = t["contract"]
    x = jax.nn.relu(_conv_reflect(x, c["conv1"]))
    x = jax.nn.relu(_conv_reflect_s2(x, c["conv2"]))
    x = jax.nn.relu(_conv_reflect_s2(x, c["conv3"]))
    for i in range(1, RESIDUAL_BLOCKS + 1):
        blk = t["residual"][f"residual{i}"]
        y = jax.nn.relu(norm(_conv_reflect(x, blk["conv1"]), f"residual/residual{i}/conv1"))
        y = norm(_conv_reflect(y, blk["conv2"]), f"residual/residual{i}/conv2")
        x = x + y
    e = t["expand"]
    x = jax.nn.relu(norm(ops.upsample_conv(x, e["conv1"]["kernel"], None), "expand/conv1"))
    x = jax.nn.relu(norm(ops.upsample_conv(x, e["conv2"]["kernel"], None), "expand/conv2"))
    x = jax.nn.sigmoid(norm(_conv_reflect(x, e["conv3"]), "expand/conv3"))
    out = x[:, :h, :w, :]
    return (out, stats) if return_stats else out


# ---------------------------------------------------------------------------------------------------------------
# The model-family contract


def condition(params: Params, frozen: Any, style: Array, static: Any = None) -> dict[str, Array]:
    """What style images become: {"vector": (N, 100)} (centre-cropped, resized to 256, predicted).

    Args:
      params: the model tree.
      frozen: {} (MobileNetV2: the predictor is part of `params`) or {"vgg": VGG16} ("vgg_stats").
      style: (N, H, W, 3) RGB in [0, 1].
      static: a `Net` (None: the MobileNetV2 predictor at 256 px).
    """
    return {"vector": _vector(params, frozen, style, static)}


def own_condition(params: Params, frozen: Any, content: Array, masks: Array | None, static: Any = None
                  ) -> dict[str, Array]:
    """The content's own condition (`nst_jax.models`): {"vector": the content image's own style vector (N, 100)}.

    Strength 0 (`alpha`) is this vector, and the (gamma, beta) of every style norm are affine in it, so placed by any
    `masks` it gives the alpha-0 output where its mask is 1 (`masks` is not needed).
    """
    del masks
    return {"vector": _vector(params, frozen, content, static)}


# Every leaf of a condition is a style vector, and the network's (gamma, beta) are affine in it: the generic convex
# mix is exact.
blend = blend_conditions


def _alpha(alpha: Array, n: int) -> Array:
    a = jnp.asarray(alpha, jnp.float32).reshape(-1)
    return jnp.broadcast_to(a, (n,)) if a.shape[0] == 1 else a


def mix_strength(style_vectors: Array, content_vectors: Array, alpha: Array) -> Array:
    """alpha * style + (1 - alpha) * content, one alpha per image; style (N, ..., 100), content (N, 100)."""
    a = alpha.reshape((-1,) + (1,) * (style_vectors.ndim - 1))
    c = content_vectors.reshape((content_vectors.shape[0],) + (1,) * (style_vectors.ndim - 2) + (-1,))
    return a * style_vectors + (1.0 - a) * c


def stylize(params: Params, frozen: Any, content: Array, condition: Mapping[str, Array], alpha: Array,
            static: Any = None) -> Array:
    """Stylize content images with one condition per image and a strength per image.

    Args:
      params: the model tree; frozen, static: as `condition` (the content's own vector for strength < 1).
      content: (N or 1, H, W, 3) RGB in [0, 1], any H, W >= 5.
      condition: {"vector": (N, 100)}.
      alpha: (N,) strengths in [0, 1]: 1 = the style's vector, 0 = the content image's own vector.

    Returns:
      (N, H, W, 3) in [0, 1].
    """
    v = jnp.asarray(condition["vector"], jnp.float32)
    n = v.shape[0]
    a = _alpha(alpha, n)
    # The content's own vector costs a predictor pass (once per distinct content image): skip it when every
    # strength is 1 (then the mix is v).
    vectors = lax.cond(jnp.all(a == 1.0), lambda: v,
                       lambda: mix_strength(v, _vector(params, frozen, content, static), a))
    return transform(params, jnp.broadcast_to(content, (n,) + content.shape[1:]), vectors)


def stylize_masked(params: Params, frozen: Any, content: Array, conditions: Mapping[str, Array], masks: Array,
                   alpha: Array, static: Any = None) -> Array:
    """Stylize with K conditions placed by per-pixel masks, in one pass.

    Args:
      params: the model tree; frozen, static: as `condition`.
      content: (N or 1, H, W, 3) RGB in [0, 1].
      conditions: {"vector": (N, K, 100)}.
      masks: (N or 1, H, W, K) non-negative weights at the content's resolution. Where they sum to more than 1 they
        are normalised; where they sum to less, the rest goes to the content's own vector (uncovered pixels keep
        the content's look). A single all-ones mask gives exactly `stylize`'s result.
      alpha: (N,) strengths, applied to every condition as in `stylize`.

    Returns:
      (N, H, W, 3) in [0, 1].
    """
    content, vectors, weights = _placed(params, frozen, content, conditions, masks, alpha, static)
    return transform(params, content, vectors, masks=weights)


def _placed(params: Params, frozen: Any, content: Array, conditions: Mapping[str, Array], masks: Array,
            alpha: Array, static: Any) -> tuple[Array, Array, Array]:
    """`stylize_masked`'s inputs to `transform`: the content broadcast to N, the K strength-mixed vectors and the
    content's own (N, K + 1, 100), and their per-pixel weights (N, H, W, K + 1)."""
    v = jnp.asarray(conditions["vector"], jnp.float32)
    n = v.shape[0]
    a = _alpha(alpha, n)
    own = jnp.broadcast_to(_vector(params, frozen, content, static), (n, v.shape[-1]))
    content = jnp.broadcast_to(content, (n,) + content.shape[1:])
    vectors = mix_strength(v, own, a)
    masks = jnp.asarray(masks, jnp.float32)
    masks = jnp.broadcast_to(masks, (n,) + masks.shape[1:])
    cover = jnp.sum(masks, axis=-1, keepdims=True)
    weights = masks / jnp.maximum(cover, 1.0)
    rest = jnp.maximum(1.0 - cover, 0.0)
    vectors = jnp.concatenate([vectors, own[:, None, :]], axis=1)
    weights = jnp.concatenate([weights, rest], axis=-1)
    return content, vectors, weights


def stats_forward(params: Params, frozen: Any, content: Array, condition: Mapping[str, Array],
                  masks: Array | None, alpha: Array, norm_stats: NormStats | None, static: Any = None, *,
                  stats_weight: Array | None = None) -> tuple[Array, NormStats]:
    """The statistics seam (`nst_jax.models`): `stylize`, or with masks `stylize_masked`, with every instance
    norm's moments given or returned (`transform`'s `norm_stats=` / `return_stats=`).

    Args:
      params, frozen, content, alpha, static: as `stylize`; condition: {"vector": (N, 100)}, or with masks
        {"vector": (N, K, 100)}.
      masks: None, or (N, H, W, K) per-pixel weights (as `stylize_masked`).
      norm_stats: None (each frame's own moments), or {layer: (mean, var)} as returned.
      stats_weight: return each layer's weighted `Moments` instead (`transform`'s `stats_weight`).

    Returns:
      ((N, H, W, 3) in [0, 1], {layer: (mean, var)} the moments each layer used).
    """
    kw = {"norm_stats": norm_stats, "return_stats": True, "stats_weight": stats_weight}
    if masks is not None:
        content, vectors, weights = _placed(params, frozen, content, condition, masks, alpha, static)
        return transform(params, content, vectors, masks=weights, **kw)
    v = jnp.asarray(condition["vector"], jnp.float32)
    a = _alpha(alpha, v.shape[0])
    # As `stylize`: the content's own vector only when some strength is below 1.
    vectors = lax.cond(jnp.all(a == 1.0), lambda: v,
                       lambda: mix_strength(v, _vector(params, frozen, content, static), a))
    content = jnp.broadcast_to(content, (v.shape[0],) + content.shape[1:])
    return transform(params, content, vectors, **kw)
