"""The Gatys objective: softclip, the targets, and the weighted loss terms.

The objective (weights are the user's `content_weight`, `style_weight`, `layer_weights`, `tv_weight`):

    total = content_weight * sum_{l in content layers} MSE(F_l(x), F_l(content))
          + style_weight * sum_{l in style layers} layer_weight_l * MSE(G_l(x), A_l)
          + tv_weight * sum of squared neighbour differences of x (RGB in [0, 1])

with G_l the Gram matrix of layer l divided by C*H*W and A_l the (blended) Gram matrix of the style image(s). These
are jcjohnson/neural-style's formulas: its StyleLoss and ContentLoss use `nn.MSECriterion` (a mean) on
Gram/(C*H*W) and on the features, and its TVLoss is this sum up to a factor 1/2. Using means keeps every term's
magnitude independent of the layer's size, so one set of weights carries over between image sizes (multi-scale).

`layer_weights="channels"` sets layer_weight_l = C_l**2 / L: the same per-layer loss as Grams normalised by H*W only
(MSE(G/(HW)) = C**2 * MSE(G/(CHW))) averaged over the L layers, which is pystiche's GramLoss and, up to a factor
1/4, Gatys et al.'s E_l = 1/(4 N_l**2 M_l**2) sum (G - A)**2. "equal" (weight 1 per layer) is neural-style's.

Value range: the optimiser works on an unconstrained variable z and the image is `softclip(z)`, a smooth map
that is the identity (to within 1%) on [0.05, 0.95] and saturates smoothly into (0, 1). A clip after each step would
make L-BFGS's curvature pairs and line-search values describe a point other than the one it stands on; the smooth
reparameterisation keeps them exact, and the image stays valid at every iteration.

Masks (spatial control, pystiche's guided NST / Gatys et al. 2017): one mask per style over the content image. At
each style layer the mask is carried to the layer's grid by the same pooling as the features (average pooling, so
its values stay coverage fractions), and the guided Gram of the generated image is
    G_s = sum_p m_s(p) f(p) f(p)^T / (C * sum_p m_s(p)),
equal to the plain C*H*W-normalised Gram when the mask is all ones. The target is the style image's plain Gram, or
its guided Gram under an optional mask over the style image. Each region contributes its own style term, scaled by
its style's (unnormalised) blend weight. Without masks, several styles are blended as neural-style does: the target
is the weighted mean of the styles' Gram matrices (weights normalised to sum to one).

The encoder is `nst_jax.vgg.encode` with `ops.conv_input_grad_winograd`: pass parameters from `prepare_vgg` (their
transposed and Winograd kernels computed once) so that no compiled loop recomputes them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import image as imagelib
from nst_jax import losses, ops, vgg
from nst_jax.errors import NstError
from nst_jax.gatys.config import GatysConfig, LossWeights, layer_weight_values
from nst_jax.typing import Array, Params

# Softness of the [0, 1] reparameterisation, in 1/pixel units: the image is within 1/beta of the identity map on
# [0.05, 0.95] and its gradient there is >= 1 - exp(-5).
SOFTCLIP_BETA = 100.0

# Gram matrices with a one-matmul gradient (they live with the other losses).
gram = losses.gram
guided_gram = losses.guided_gram


def softclip(z: Array, beta: float = SOFTCLIP_BETA) -> Array:
    """Smooth map of R onto (0, 1): (softplus(beta z) - softplus(beta (z - 1))) / beta, ~identity inside."""
    b = np.float32(beta)
    # The difference can round one ulp above 1 where the map is flat; the clip only removes that rounding.
    return jnp.minimum((jax.nn.softplus(b * z) - jax.nn.softplus(b * (z - 1))) / b, 1.0)


def softclip_inverse(x: Array, beta: float = SOFTCLIP_BETA, eps: float = 1e-4) -> Array:
    """Inverse of `softclip` (closed form), for images clipped to [eps, 1 - eps]."""
    b = np.float32(beta)
    x = jnp.clip(jnp.asarray(x, jnp.float32), eps, 1 - eps)
    return x + (jnp.log1p(-jnp.exp(-b * x)) - jnp.log1p(-jnp.exp(-b * (1 - x)))) / b


def blend_grams(grams: Sequence[Array], weights: Sequence[float]) -> Array:
    """Weighted mean of Gram matrices (weights normalised to sum to one), as neural-style's -style_blend_weights."""
    w = np.asarray(weights, np.float64)
    w = (w / w.sum()).astype(np.float32)
    return sum(np.float32(wi) * g for wi, g in zip(w, grams, strict=True))


def layer_grid_masks(masks: Array, spec: vgg.VGGSpec, layers: Sequence[str]) -> dict[str, Array]:
    """Carry image-sized masks (S, H, W, 1) to each layer's grid with the encoder's pooling geometry.

    Average pooling keeps each value the fraction of the window inside the region; the window and ceil mode are
    the encoder's, so each grid has `vgg.grid_size` of its layer and matches the features exactly.
    """
    out: dict[str, Array] = {}
    cur = masks
    last = vgg.deepest(layers)
    for name in vgg.LAYERS:
        if name.startswith("pool"):
            cur = ops.avg_pool(cur, 2, 2, spec.ceil_mode)
        if name in layers:
            out[name] = cur
        if name == last:
            break
    return out


def prepare_vgg(params: Params, last: str = "relu5_4") -> dict[str, dict[str, Array]]:
    """Float32 copies of the VGG19 weights needed up to tap `last`, each layer with its `kernel_t`.

    The transposed and Winograd kernels (`ops.with_transposed_kernels`) are what `ops.conv_input_grad_winograd`
    computes with; computed here once, they stay out of the compiled loops (XLA does not hoist them out of a
    `while_loop`).
    """
    needed = {n for n in vgg.LAYERS[: vgg.LAYERS.index(last) + 1] if n.startswith("conv")} | {"conv0"}
    p = {k: {"kernel": jnp.asarray(v["kernel"], jnp.float32), "bias": jnp.asarray(v["bias"], jnp.float32)}
         for k, v in params.items() if k in needed}
    return jax.jit(functools.partial(ops.with_transposed_kernels, winograd=True))(p)


def _features(params: Params, x: Array, spec: vgg.VGGSpec, taps: Sequence[str]) -> dict[str, Array]:
    # Frozen weights: the convolutions' hand-written input gradient (Winograd for the wide layers).
    return vgg.encode(params, x, spec, taps, conv=ops.conv_input_grad_winograd)


class Targets(NamedTuple):
    """Everything the loss compares against, as arrays (a pytree passed to the compiled step)."""

    content: dict[str, Array]  # layer -> (1, h, w, C) content features
    style: dict[str, Array]  # layer -> (1 or S, C, C) target Gram matrices
    masks: dict[str, Array] | None  # layer -> (S, h, w, 1) region masks on the layer's grid, or None
    region_weights: Array  # (S,) weight of each masked region's style term (unused without masks)
    content_weight: Array  # scalar
    style_weights: Array  # (L,) style_weight * layer_weight per style layer
    tv_weight: Array  # scalar


def _as_mask(m: Any, hw: tuple[int, int], what: str) -> np.ndarray:
    """A 2-D mask in [0, 1] of size `hw` (bilinear resize if needed) from (H, W), (H, W, 1) or (1, H, W, 1)."""
    a = np.asarray(m, np.float32)
    if a.ndim == 4:
        a = a[0, :, :, 0]
    elif a.ndim == 3:
        a = a[:, :, 0]
    if a.ndim != 2:
        raise NstError(f"{what} must be a 2-D mask, got shape {np.shape(m)}")
    return imagelib.fit_mask(a, hw)


@functools.partial(jax.jit, static_argnames=("spec", "taps"))
def _encode(params: Params, x: Array, spec: vgg.VGGSpec, taps: tuple[str, ...]) -> dict[str, Array]:
    return _features(params, x, spec, taps)


@functools.partial(jax.jit, static_argnames=("spec", "layers"))
def _grams(params: Params, x: Array, masks: Array | None, spec: vgg.VGGSpec,
           layers: tuple[str, ...]) -> dict[str, Array]:
    feats = _features(params, x, spec, layers)
    if masks is None:
        return {k: gram(v) for k, v in feats.items()}
    grid = layer_grid_masks(masks, spec, layers)
    return {k: guided_gram(v, grid[k]) for k, v in feats.items()}


def make_targets(params: Params, spec: vgg.VGGSpec, content: np.ndarray, styles: Sequence[np.ndarray],
                 weights: LossWeights, config: GatysConfig, *, style_blend: Sequence[float] | None = None,
                 masks: Sequence[np.ndarray] | None = None,
                 style_masks: Sequence[np.ndarray | None] | None = None) -> Targets:
    """Build the loss targets for one content image at its current size.

    Args:
      params, spec: the VGG19 encoder (plain parameters, or `prepare_vgg`'s for speed).
      content: (1, H, W, 3) in [0, 1], already at the size being optimised.
      styles: (1, h, w, 3) style images, already at their working size (and recoloured if wanted).
      weights: resolved term weights (`GatysConfig.loss_weights`).
      config: layers.
      style_blend: one weight per style (None: equal). Without masks they are normalised and blend the Grams.
      masks: one (H, W) mask per style over the content (resized if needed), or None.
      style_masks: per style, None or a mask over that style image (its guided Gram becomes the target).

    Returns:
      `Targets`.
    """
    blend = [1.0] * len(styles) if style_blend is None else [float(w) for w in style_blend]
    hw = content.shape[1:3]
    content_feats = _encode(params, jnp.asarray(content), spec, tuple(config.content_layers))
    style_layers = tuple(config.style_layers)
    per_style = []
    for i, s in enumerate(styles):
        sm = None if style_masks is None else style_masks[i]
        sm_arr = None if sm is None else jnp.asarray(_as_mask(sm, s.shape[1:3], f"style mask {i + 1}")[None, ..., None])
        per_style.append(_grams(params, jnp.asarray(s), sm_arr, spec, style_layers))
    if masks is None:
        style_targets = {k: blend_grams([g[k] for g in per_style], blend) for k in style_layers}
        grid = None
    else:
        style_targets = {k: jnp.concatenate([g[k] for g in per_style], axis=0) for k in style_layers}
        stack = np.stack([_as_mask(m, hw, f"mask {i + 1}") for i, m in enumerate(masks)])[..., None]
        grid = layer_grid_masks(jnp.asarray(stack), spec, style_layers)
    lw = layer_weight_values(weights.layers, style_layers)
    return Targets(
        content=dict(content_feats),
        style=style_targets,
        masks=grid,
        region_weights=jnp.asarray(blend, jnp.float32),
        content_weight=jnp.asarray(weights.content, jnp.float32),
        style_weights=jnp.asarray(np.float32(weights.style) * lw, jnp.float32),
        tv_weight=jnp.asarray(weights.tv, jnp.float32),
    )


def loss_terms(x: Array, targets: Targets, params: Params, spec: vgg.VGGSpec,
               content_layers: Sequence[str], style_layers: Sequence[str]) -> dict[str, Array]:
    """The weighted loss terms of image `x`.

    Args:
      x: (1, H, W, 3) image in [0, 1].
      targets: from `make_targets`.
      params, spec: the VGG19 encoder (plain parameters, or `prepare_vgg`'s for speed).
      content_layers, style_layers: the taps `targets` were built for.

    Returns:
      {"content", "style", "tv", "total"}: scalars, each already multiplied by its weight.
    """
    taps = tuple(dict.fromkeys(tuple(content_layers) + tuple(style_layers)))
    feats = _features(params, x, spec, taps)
    content = sum(losses.content_loss(feats[k], targets.content[k]) for k in content_layers)
    style = jnp.zeros((), jnp.float32)
    for i, k in enumerate(style_layers):
        if targets.masks is None:
            layer = losses.mse(gram(feats[k]), targets.style[k])
        else:
            g = guided_gram(feats[k], targets.masks[k])
            per_region = jnp.mean(jnp.square(g - targets.style[k]), axis=(1, 2))
            layer = jnp.sum(targets.region_weights * per_region)
        style = style + targets.style_weights[i] * layer
    terms = {
        "content": targets.content_weight * content,
        "style": style,
        "tv": targets.tv_weight * losses.tv_loss(x),
    }
    terms["total"] = terms["content"] + terms["style"] + terms["tv"]
    return terms
