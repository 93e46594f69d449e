"""Gatys et al. (2015) neural style transfer by optimisation of the pixels, on Optax.

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

Default weights depend on the VGG19 the features come from, because feature magnitudes do (Caffe's VGG19 sees
0-255 inputs and its deep activations are in the hundreds; torchvision's sees standardised inputs): see
`SOURCE_DEFAULTS` and docs/gatys.md.

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
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from nst_jax import image as imagelib
from nst_jax import losses, ops, vgg
from nst_jax.errors import NstError, WeightsError

Array = jax.Array
Params = Mapping[str, Mapping[str, Array]]

DEFAULT_CONTENT_LAYERS = ("relu4_2",)
DEFAULT_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")

# Softness of the [0, 1] reparameterisation, in 1/pixel units: the image is within 1/beta of the identity map on
# [0.05, 0.95] and its gradient there is >= 1 - exp(-5).
SOFTCLIP_BETA = 100.0


class LossWeights(NamedTuple):
    """Weights of the three terms and per-style-layer weights (a keyword or one number per style layer)."""

    content: float
    style: float
    tv: float
    layers: str | tuple[float, ...]


# Defaults per VGG19 source, each taken from a reference that used that network with these layers:
# - torchvision: pystiche's Gatys example (torchvision VGG19, [0,1] images standardised, relu4_2 content weight 1,
#   relu1_1..relu5_1 Gram/(HW) MSE averaged over layers, weight 1e3), which is exactly our "channels" layer
#   weights with style weight 1e3. TV is small (not used by pystiche; a light smoothing of L-BFGS's speckle).
# - keras / caffe (the original Caffe VGG19, as neural-style uses): neural-style's content 5, style 100, TV 1e-3;
#   its TV acts on 0-255 pixels with a factor 1/2, i.e. 1e-3 * 255**2 / 2 on our [0, 1] pixels.
# - adain (vgg_normalised: Gatys et al.'s mean-activation-normalised VGG19): Gatys' own PyTorch code, content 1,
#   style 1e3/C**2 on Gram/(HW) = 1e3 per layer on Gram/(CHW).
SOURCE_DEFAULTS: dict[str, LossWeights] = {
    "torchvision": LossWeights(1.0, 1e3, 1e-5, "channels"),
    "keras": LossWeights(5.0, 100.0, 1e-3 * 255.0**2 / 2, "equal"),
    "caffe": LossWeights(5.0, 100.0, 1e-3 * 255.0**2 / 2, "equal"),
    "adain": LossWeights(1.0, 1e3, 1e-5, "equal"),
    "random": LossWeights(1.0, 1e3, 1e-5, "channels"),
}

# neural-style's defaults, for the docs and for users porting its command lines (Caffe VGG19, 0-255 pixels).
NEURAL_STYLE_DEFAULTS = {"content_weight": 5.0, "style_weight": 100.0, "tv_weight": 1e-3, "num_iterations": 1000}


@dataclasses.dataclass(frozen=True)
class GatysConfig:
    """Settings of one Gatys run. `None` weights take the defaults of the VGG19 source (`SOURCE_DEFAULTS`).

    Attributes:
      content_layers, style_layers: VGG19 taps (names from `nst_jax.vgg.LAYERS`).
      layer_weights: "equal", "channels" (C_l**2 / L) or one number per style layer.
      content_weight, style_weight, tv_weight: term weights (see the module docstring for the formulas).
      optimizer: "lbfgs" (optax.lbfgs with a zoom line search) or "adam".
      iterations: optimiser steps per scale: one number for all scales or one per scale.
      lr: Adam's learning rate on the (near-identity) pixel variable; L-BFGS: the line search's first trial
        step (None: 1, the quasi-Newton step).
      lbfgs_memory: number of past updates L-BFGS keeps (neural-style and torch.optim.LBFGS: 100).
      linesearch_steps: most function evaluations of one zoom line search.
      init: "content", "noise" (seeded: mid-grey plus Gaussian noise, sigma 0.1) or "style" (the first style
        resized to the content's size); later scales start from the previous scale's result.
      seed: seed of the noise initialisation.
      scales: longer side of the image at each scale, coarse to fine; None: the content's own size, one scale.
      style_scale: style images are resized so their longer side is `style_scale` times the content's.
      preserve_color: None, "luminance" (the result's luminance with the content's chroma, applied at the end) or
        "histogram" (each style recoloured to the content's colour mean and covariance before its targets).
      chunk_size: iterations per compiled call between progress updates.
    """

    content_layers: tuple[str, ...] = DEFAULT_CONTENT_LAYERS
    style_layers: tuple[str, ...] = DEFAULT_STYLE_LAYERS
    layer_weights: str | tuple[float, ...] | None = None
    content_weight: float | None = None
    style_weight: float | None = None
    tv_weight: float | None = None
    optimizer: Literal["lbfgs", "adam"] = "lbfgs"
    iterations: int | tuple[int, ...] = 500
    lr: float | None = None
    lbfgs_memory: int = 100
    linesearch_steps: int = 20
    init: Literal["content", "noise", "style"] = "content"
    seed: int = 0
    scales: tuple[int, ...] | None = None
    style_scale: float = 1.0
    preserve_color: Literal["luminance", "histogram"] | None = None
    chunk_size: int = 10

    def replace(self, **changes: Any) -> GatysConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """Raise `NstError` naming the setting that is out of range."""
        for what, layers in (("content layers", self.content_layers), ("style layers", self.style_layers)):
            if not layers:
                raise NstError(f"no {what} given")
            for name in layers:
                if name not in vgg.LAYERS:
                    raise NstError(f"unknown VGG19 layer {name!r} in {what}; known: {', '.join(vgg.RELU_TAPS)} "
                                   "(and conv*/pool*)")
            if len(set(layers)) != len(layers):
                raise NstError(f"{what} repeat a layer: {','.join(layers)}")
        lw = self.layer_weights
        if isinstance(lw, str):
            if lw not in ("equal", "channels"):
                raise NstError(f"--layer-weights must be 'equal', 'channels' or numbers, got {lw!r}")
        elif lw is not None:
            if len(lw) != len(self.style_layers):
                raise NstError(f"--layer-weights has {len(lw)} values for {len(self.style_layers)} style layers")
            if any(not math.isfinite(w) or w < 0 for w in lw):
                raise NstError("--layer-weights must be finite and >= 0")
        for name in ("content_weight", "style_weight", "tv_weight"):
            v = getattr(self, name)
            if v is not None and (not math.isfinite(v) or v < 0):
                raise NstError(f"--{name.replace('_', '-')} must be finite and >= 0, got {v}")
        if self.optimizer not in ("lbfgs", "adam"):
            raise NstError(f"--optimizer must be lbfgs or adam, got {self.optimizer!r}")
        if self.init not in ("content", "noise", "style"):
            raise NstError(f"--init must be content, noise or style, got {self.init!r}")
        its = self.iterations_per_scale()
        if any(i < 0 for i in its):
            raise NstError("--iterations must be >= 0")
        if self.scales is not None and (not self.scales or any(s < 16 for s in self.scales)):
            raise NstError(f"--scales must be sizes of at least 16 pixels, got {self.scales}")
        if self.lr is not None and (not math.isfinite(self.lr) or self.lr <= 0):
            raise NstError(f"--lr must be > 0, got {self.lr}")
        if not (math.isfinite(self.style_scale) and self.style_scale > 0):
            raise NstError(f"--style-scale must be > 0, got {self.style_scale}")
        if self.preserve_color not in (None, "luminance", "histogram"):
            raise NstError(f"--preserve-color must be luminance or histogram, got {self.preserve_color!r}")
        if self.lbfgs_memory < 1 or self.linesearch_steps < 1 or self.chunk_size < 1:
            raise NstError("lbfgs_memory, linesearch_steps and chunk_size must be >= 1")

    def iterations_per_scale(self) -> tuple[int, ...]:
        """Iterations at each scale (one entry when `scales` is None)."""
        n = 1 if self.scales is None else len(self.scales)
        its = (self.iterations,) if isinstance(self.iterations, int) else tuple(self.iterations)
        if len(its) == 1:
            return its * n
        if len(its) != n:
            raise NstError(f"--iterations has {len(its)} values for {n} scales")
        return its

    def loss_weights(self, spec: vgg.VGGSpec) -> LossWeights:
        """The term weights with `None`s filled in from the source's defaults."""
        d = SOURCE_DEFAULTS.get(spec.source, SOURCE_DEFAULTS["torchvision"])
        return LossWeights(
            d.content if self.content_weight is None else float(self.content_weight),
            d.style if self.style_weight is None else float(self.style_weight),
            d.tv if self.tv_weight is None else float(self.tv_weight),
            d.layers if self.layer_weights is None else self.layer_weights,
        )


def layer_weight_values(layer_weights: str | Sequence[float], style_layers: Sequence[str]) -> np.ndarray:
    """Per-style-layer weights as numbers: "equal" -> 1, "channels" -> C_l**2 / L, or the given numbers."""
    if isinstance(layer_weights, str):
        if layer_weights == "equal":
            return np.ones(len(style_layers), np.float32)
        channels = np.array([_channels(name) for name in style_layers], np.float64)
        return (channels**2 / len(style_layers)).astype(np.float32)
    return np.asarray(layer_weights, np.float32)


def _channels(layer: str) -> int:
    # "conv3_1", "relu3_1" and "pool3" all have block 3's width.
    return vgg.BLOCKS[int(layer[4]) - 1][0]


# ----------------------------------------------------------------------------------------------------
# Pure pieces


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


@jax.custom_vjp
def _gram_sum(f: Array) -> Array:
    """f^T f for f (P, C): the unnormalised Gram matrix, with a one-matmul gradient."""
    return jnp.dot(f.T, f, precision=lax.Precision.HIGHEST)


def _gram_sum_fwd(f: Array) -> tuple[Array, Array]:
    return _gram_sum(f), f


def _gram_sum_bwd(f: Array, g: Array) -> tuple[Array]:
    # d(f^T f) = f (g + g^T): one (P, C) x (C, C) product. Autodiff emits two and adds them, and through
    # `ops.gram`'s batched einsum its backward ran 4x slower than this on XLA CPU (relu1_1 at 512 px).
    return (jnp.dot(f, g + g.T, precision=lax.Precision.HIGHEST),)


_gram_sum.defvjp(_gram_sum_fwd, _gram_sum_bwd)


def gram(features: Array) -> Array:
    """Gram matrix of one image's features normalised by C*H*W: `ops.gram` with a cheaper gradient.

    Args:
      features: (1, H, W, C).

    Returns:
      (1, C, C).
    """
    _, h, w, c = features.shape
    return (_gram_sum(features.reshape(h * w, c)) / np.float32(c * h * w))[None]


def guided_gram(features: Array, masks: Array) -> Array:
    """Gram matrices of features restricted to soft regions, normalised by C times the region's area.

    G_s = sum_p m_s(p) f(p) f(p)^T / (C * sum_p m_s(p)).

    Args:
      features: (1, H, W, C).
      masks: (S, H, W, 1) weights in [0, 1], one region per row (constants: no gradient flows into them).

    Returns:
      (S, C, C); for an all-ones mask this is `gram(features)` (C*H*W normalisation).
    """
    _, h, w, c = features.shape
    f = features.reshape(h * w, c)
    m = lax.stop_gradient(masks).reshape(masks.shape[0], h * w, 1)
    area = jnp.maximum(jnp.sum(m, axis=(1, 2)), np.float32(1e-8))
    # sqrt(m) on both sides of the product puts m once in the sum.
    grams = [_gram_sum(jnp.sqrt(m[i]) * f) for i in range(m.shape[0])]
    return jnp.stack(grams) / (np.float32(c) * area)[:, None, None]


def blend_grams(grams: Sequence[Array], weights: Sequence[float]) -> Array:
    """Weighted mean of Gram matrices (weights normalised to sum to one), as neural-style's -style_blend_weights."""
    w = np.asarray(weights, np.float64)
    w = (w / w.sum()).astype(np.float32)
    return sum(np.float32(wi) * g for wi, g in zip(w, grams, strict=True))


def layer_grid_masks(masks: Array, spec: vgg.VGGSpec, layers: Sequence[str]) -> dict[str, Array]:
    """Carry image-sized masks (S, H, W, 1) to each layer's grid with the encoder's pooling geometry.

    Average pooling keeps each value the fraction of the window inside the region; the window and ceil mode are
    the encoder's, so the grids match the features exactly.
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


class Targets(NamedTuple):
    """Everything the loss compares against, as arrays (a pytree passed to the compiled step)."""

    content: dict[str, Array]  # layer -> (1, h, w, C) content features
    style: dict[str, Array]  # layer -> (1 or S, C, C) target Gram matrices
    masks: dict[str, Array] | None  # layer -> (S, h, w, 1) region masks on the layer's grid, or None
    region_weights: Array  # (S,) weight of each masked region's style term (unused without masks)
    content_weight: Array  # scalar
    style_weights: Array  # (L,) style_weight * layer_weight per style layer
    tv_weight: Array  # scalar


class _Static(NamedTuple):
    """The hashable part of the problem: what the compiled step is specialised on."""

    spec: vgg.VGGSpec
    content_layers: tuple[str, ...]
    style_layers: tuple[str, ...]
    optimizer: str
    lr: float | None
    lbfgs_memory: int
    linesearch_steps: int
    beta: float = SOFTCLIP_BETA


# ----------------------------------------------------------------------------------------------------
# The encoder, differentiated by hand at the convolutions
#
# XLA's CPU backend runs a convolution through its fast library kernel only in canonical form (NHWC input, HWIO
# kernel). Autodiff's input gradient is a convolution with the kernel reversed and its in/out axes swapped through
# the dimension numbers; outside loops XLA adds the transposes that make it canonical again, but inside a
# `while_loop` body (our compiled chunks, and the zoom line search) it does not, and the backward pass of VGG19 ran
# 2.5x slower (40x with `jax_disable_most_optimizations`). The custom VJP below uses kernels that were flipped and
# transposed once, outside the loop, so every backward convolution is canonical.

_DN = ("NHWC", "HWIO", "NHWC")


@jax.custom_vjp
def _conv_same(x: Array, kernel: Array, kernel_t: Array) -> Array:
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_DN)


def _conv_same_fwd(x: Array, kernel: Array, kernel_t: Array) -> tuple[Array, Array]:
    return _conv_same(x, kernel, kernel_t), kernel_t


def _conv_same_bwd(kernel_t: Array, g: Array) -> tuple[Array, None, None]:
    # The encoder's weights are frozen: only the input gradient is needed.
    return lax.conv_general_dilated(g, kernel_t, (1, 1), "SAME", dimension_numbers=_DN), None, None


_conv_same.defvjp(_conv_same_fwd, _conv_same_bwd)


def transposed_kernels(params: Params) -> dict[str, Array]:
    """Each kernel flipped spatially with its in/out axes swapped: the kernel of the input gradient."""
    return {k: jnp.flip(jnp.asarray(v["kernel"], jnp.float32), (0, 1)).swapaxes(2, 3) for k, v in params.items()}


def encode(params: Params, x: Array, spec: vgg.VGGSpec, taps: Sequence[str],
           kernels_t: Mapping[str, Array] | None = None) -> dict[str, Array]:
    """`nst_jax.vgg.encode` with a hand-written input gradient (same forward values, bitwise).

    Args:
      params, spec: VGG19 parameters and identity.
      x: (1, H, W, 3) RGB in [0, 1].
      taps: layer names to return.
      kernels_t: `transposed_kernels(params)`, computed once outside a loop (computed here if None).

    Returns:
      {tap: features}.
    """
    taps = tuple(taps)
    last = vgg.deepest(taps)
    params = lax.stop_gradient(params)
    if kernels_t is None:
        kernels_t = transposed_kernels(params)
    kernels_t = lax.stop_gradient(kernels_t)
    h = vgg.preprocess(x, spec)
    if spec.preconv:
        p = params["conv0"]
        h = _conv_same(h, p["kernel"], kernels_t["conv0"]) + p["bias"]
    out: dict[str, Array] = {}
    for name in vgg.LAYERS:
        kind = name[:4]
        if kind == "conv":
            p = params[name]
            if spec.padding == "reflect":
                # pad-reflect, SAME convolution, crop: the numerics of ops.conv2d(..., "reflect")
                hp = jnp.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
                h = _conv_same(hp, p["kernel"], kernels_t[name])[:, 1:-1, 1:-1, :] + p["bias"]
            else:
                h = _conv_same(h, p["kernel"], kernels_t[name]) + p["bias"]
        elif kind == "relu":
            h = jax.nn.relu(h)
        else:
            pool = ops.max_pool if spec.pooling == "max" else ops.avg_pool
            h = pool(h, 2, 2, spec.ceil_mode)
        if name in taps:
            out[name] = h
        if name == last:
            break
    return out


class Encoder(NamedTuple):
    """VGG19 weights with their input-gradient kernels (a pytree argument of the compiled functions)."""

    params: Params
    kernels_t: dict[str, Array]


def make_encoder(params: Params, last: str = "relu5_4") -> Encoder:
    """Float32 copies of the weights needed up to tap `last`, with their transposed kernels."""
    needed = {n for n in vgg.LAYERS[: vgg.LAYERS.index(last) + 1] if n.startswith("conv")} | {"conv0"}
    p = {k: {"kernel": jnp.asarray(v["kernel"], jnp.float32), "bias": jnp.asarray(v["bias"], jnp.float32)}
         for k, v in params.items() if k in needed}
    return Encoder(p, jax.jit(transposed_kernels)(p))


def loss_terms(x: Array, targets: Targets, params: Params | Encoder, spec: vgg.VGGSpec,
               content_layers: Sequence[str], style_layers: Sequence[str]) -> dict[str, Array]:
    """The weighted loss terms of image `x`.

    Args:
      x: (1, H, W, 3) image in [0, 1].
      targets: from `make_targets`.
      params, spec: the VGG19 encoder (parameters, or an `Encoder`).
      content_layers, style_layers: the taps `targets` were built for.

    Returns:
      {"content", "style", "tv", "total"}: scalars, each already multiplied by its weight.
    """
    enc = params if isinstance(params, Encoder) else Encoder(params, transposed_kernels(params))
    taps = tuple(dict.fromkeys(tuple(content_layers) + tuple(style_layers)))
    feats = encode(enc.params, x, spec, taps, enc.kernels_t)
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


def _objective(z: Array, targets: Targets, enc: Encoder, static: _Static) -> Array:
    x = softclip(z, static.beta)
    return loss_terms(x, targets, enc, static.spec, static.content_layers, static.style_layers)["total"]


# ----------------------------------------------------------------------------------------------------
# Compiled pieces (one compilation per image shape and static settings)


@functools.partial(jax.jit, static_argnames=("spec", "taps"))
def _encode(enc: Encoder, x: Array, spec: vgg.VGGSpec, taps: tuple[str, ...]) -> dict[str, Array]:
    return encode(enc.params, x, spec, taps, enc.kernels_t)


@functools.partial(jax.jit, static_argnames=("spec", "layers"))
def _grams(enc: Encoder, x: Array, masks: Array | None, spec: vgg.VGGSpec,
           layers: tuple[str, ...]) -> dict[str, Array]:
    feats = encode(enc.params, x, spec, layers, enc.kernels_t)
    if masks is None:
        return {k: gram(v) for k, v in feats.items()}
    grid = layer_grid_masks(masks, spec, layers)
    return {k: guided_gram(v, grid[k]) for k, v in feats.items()}


@functools.partial(jax.jit, static_argnames=("static",))
def _terms(z: Array, targets: Targets, enc: Encoder, static: _Static) -> dict[str, Array]:
    x = softclip(z, static.beta)
    return loss_terms(x, targets, enc, static.spec, static.content_layers, static.style_layers)


def _make_optimizer(static: _Static) -> optax.GradientTransformation:
    if static.optimizer == "adam":
        return optax.adam(0.02 if static.lr is None else static.lr)
    linesearch = optax.scale_by_zoom_linesearch(max_linesearch_steps=static.linesearch_steps,
                                                initial_guess_strategy="one")
    # lr=None lets the line search's accepted step be the step; a given lr scales its first trial.
    tx = optax.lbfgs(learning_rate=static.lr, memory_size=static.lbfgs_memory, linesearch=linesearch)
    return tx


@functools.partial(jax.jit, static_argnames=("static",))
def _init_state(z: Array, targets: Targets, enc: Encoder, static: _Static) -> Any:
    """Optimiser state at z; for L-BFGS with the value and gradient at z already stored.

    Storing them here (rather than `optax.value_and_grad_from_state`'s `lax.cond` inside the loop) keeps one copy of
    the network's forward and backward pass out of the compiled loop: the line search already holds the others.
    """
    tx = _make_optimizer(static)
    state = tx.init(z)
    if static.optimizer == "lbfgs":
        value, grad = jax.value_and_grad(_objective)(z, targets, enc, static)
        state = optax.tree_utils.tree_set(state, value=value, grad=grad)
    return state


@functools.partial(jax.jit, static_argnames=("static",), donate_argnames=("z", "state"))
def _run_chunk(z: Array, state: Any, targets: Targets, enc: Encoder, n: Array,
               static: _Static) -> tuple[Array, Any, Array, Array]:
    """`n` optimiser steps in one compiled loop. Returns (z, state, loss, function evaluations)."""
    tx = _make_optimizer(static)
    fn = functools.partial(_objective, targets=targets, enc=enc, static=static)

    if static.optimizer == "lbfgs":
        def body(_, carry):
            z, state, _, evals = carry
            value = optax.tree_utils.tree_get(state, "value")
            grad = optax.tree_utils.tree_get(state, "grad")
            updates, state = tx.update(grad, state, z, value=value, grad=grad, value_fn=fn)
            z = optax.apply_updates(z, updates)
            steps = optax.tree_utils.tree_get(state, "num_linesearch_steps")
            return z, state, optax.tree_utils.tree_get(state, "value"), evals + steps.astype(jnp.int32)
    else:
        def body(_, carry):
            z, state, _, evals = carry
            value, grad = jax.value_and_grad(fn)(z)
            # optax's bias correction raises a Python float to an int32 count, which strict promotion refuses.
            with jax.numpy_dtype_promotion("standard"):
                updates, state = tx.update(grad, state, z)
            z = optax.apply_updates(z, updates)
            return z, state, value, evals + 1

    init = (z, state, jnp.full((), jnp.inf, jnp.float32), jnp.zeros((), jnp.int32))
    return lax.fori_loop(0, n, body, init)


# ----------------------------------------------------------------------------------------------------
# Problem setup


def fit_max_side(img: np.ndarray, size: int) -> np.ndarray:
    """Resize NHWC images so the longer side is exactly `size` (up or down), keeping the aspect ratio."""
    h, w = img.shape[1:3]
    if h >= w:
        hw = (size, max(int(round(w * size / h)), 1))
    else:
        hw = (max(int(round(h * size / w)), 1), size)
    return np.asarray(imagelib.resize(np.asarray(img, np.float32), hw, "bilinear"))


def _as_batch(img: Any, what: str) -> np.ndarray:
    a = np.asarray(img, np.float32)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[0] != 1 or a.shape[-1] != 3:
        raise NstError(f"{what} must be one RGB image (H, W, 3) or (1, H, W, 3), got shape {a.shape}")
    return a


def _as_mask(m: Any, hw: tuple[int, int], what: str) -> np.ndarray:
    a = np.asarray(m, np.float32)
    if a.ndim == 4:
        a = a[0, :, :, 0]
    elif a.ndim == 3:
        a = a[:, :, 0]
    if a.ndim != 2:
        raise NstError(f"{what} must be a 2-D mask, got shape {np.shape(m)}")
    if a.shape != tuple(hw):
        a = np.asarray(imagelib.resize(a[None, :, :, None], hw, "bilinear"))[0, :, :, 0]
    return np.clip(a, 0.0, 1.0)


def make_targets(params: Params | Encoder, spec: vgg.VGGSpec, content: np.ndarray, styles: Sequence[np.ndarray],
                 weights: LossWeights, config: GatysConfig, *, style_blend: Sequence[float] | None = None,
                 masks: Sequence[np.ndarray] | None = None,
                 style_masks: Sequence[np.ndarray | None] | None = None) -> Targets:
    """Build the loss targets for one content image at its current size.

    Args:
      params, spec: the VGG19 encoder (parameters or an `Encoder`).
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
    enc = params if isinstance(params, Encoder) else make_encoder(params)
    blend = [1.0] * len(styles) if style_blend is None else [float(w) for w in style_blend]
    hw = content.shape[1:3]
    content_feats = _encode(enc, jnp.asarray(content), spec, tuple(config.content_layers))
    style_layers = tuple(config.style_layers)
    per_style = []
    for i, s in enumerate(styles):
        sm = None if style_masks is None else style_masks[i]
        sm_arr = None if sm is None else jnp.asarray(_as_mask(sm, s.shape[1:3], f"style mask {i + 1}")[None, ..., None])
        per_style.append(_grams(enc, jnp.asarray(s), sm_arr, spec, style_layers))
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


def initial_image(init: str, content: np.ndarray, styles: Sequence[np.ndarray], seed: int) -> np.ndarray:
    """The starting image at the content's size: the content, seeded noise, or the first style resized."""
    h, w = content.shape[1:3]
    if init == "content":
        return content
    if init == "style":
        return np.asarray(imagelib.resize(styles[0], (h, w), "bilinear"))
    noise = jax.random.normal(jax.random.PRNGKey(seed), content.shape, jnp.float32)
    return np.asarray(jnp.clip(0.5 + 0.1 * noise, 0.0, 1.0))


# ----------------------------------------------------------------------------------------------------
# The driver


class GatysStep(NamedTuple):
    """Progress passed to a callback after each compiled chunk."""

    scale: int  # index into the scales
    size: tuple[int, int]  # (H, W) being optimised
    iteration: int  # iterations done at this scale
    total_iteration: int  # iterations done over all scales
    loss: float  # total loss at the current image
    evaluations: int  # loss+gradient evaluations so far (all scales)
    image: Array  # (1, H, W, 3) current image in [0, 1] (colour preservation applied)


class GatysResult(NamedTuple):
    """The stylised image and how it got there."""

    image: np.ndarray  # (1, H, W, 3) float32 in [0, 1]
    losses: dict[str, float]  # final weighted terms: content, style, tv, total
    initial_losses: dict[str, float]  # the same at the start of the first scale
    history: list[tuple[int, float]]  # (total iteration, total loss) after each chunk
    evaluations: int  # loss+gradient evaluations (all scales)


def _float_terms(terms: Mapping[str, Array]) -> dict[str, float]:
    return {k: float(v) for k, v in terms.items()}


def stylize(content: Any, styles: Sequence[Any], params: Params, spec: vgg.VGGSpec,
            config: GatysConfig = GatysConfig(), *, style_blend: Sequence[float] | None = None,
            masks: Sequence[Any] | None = None, style_masks: Sequence[Any | None] | None = None,
            init_image: Any | None = None, callback: Callable[[GatysStep], None] | None = None,
            save_every: int | None = None, progress: bool = False) -> GatysResult:
    """Optimise an image so its VGG19 features match the content's and its Gram matrices the styles'.

    Args:
      content: (1, H, W, 3) or (H, W, 3) float in [0, 1] at any size (resized to each of `config.scales`).
      styles: one or more style images in [0, 1] (resized by `config.style_scale` at each scale).
      params, spec: VGG19 parameters and their identity (`nst_jax.weights.load_vgg` or `vgg.init_params`);
        use `spec.replace(pooling="avg")` for average pooling.
      config: `GatysConfig`.
      style_blend: one weight per style (see `make_targets`).
      masks: one mask per style over the content image (H, W) in [0, 1], for spatial control.
      style_masks: per style, None or a mask over that style image.
      init_image: start from this image (resized to the first scale) instead of `config.init`
        (neural-style's -init_image).
      callback: called with a `GatysStep` after each chunk of iterations.
      save_every: also end a chunk at every multiple of this many (total) iterations, so a callback can save
        intermediate images there.
      progress: show a tqdm progress bar.

    Returns:
      `GatysResult` with the final image at the last scale's size.
    """
    config.validate()
    content = _as_batch(content, "content image")
    styles = [_as_batch(s, f"style image {i + 1}") for i, s in enumerate(styles)]
    if not styles:
        raise NstError("at least one style image is needed")
    if style_blend is not None:
        if len(style_blend) != len(styles):
            raise NstError(f"--style-weights has {len(style_blend)} values for {len(styles)} styles")
        if any(not math.isfinite(w) or w < 0 for w in style_blend) or sum(style_blend) <= 0:
            raise NstError("--style-weights must be >= 0 and not all zero")
    if masks is not None:
        if len(masks) != len(styles):
            raise NstError(f"{len(masks)} masks for {len(styles)} styles: give one --mask per --style")
        for i, m in enumerate(masks):
            if float(np.max(np.asarray(m, np.float32))) <= 0:
                raise NstError(f"mask {i + 1} is empty (all black): it selects no pixels")
    if init_image is not None:
        init_image = _as_batch(init_image, "init image")
    if style_masks is not None and len(style_masks) != len(styles):
        raise NstError(f"{len(style_masks)} style masks for {len(styles)} styles")
    last = vgg.deepest(tuple(config.content_layers) + tuple(config.style_layers))
    missing = [n for n in vgg.expected_shapes(spec, last) if n not in params]
    if missing:
        have = [n for n, _, _ in vgg.CONVS if n in params]
        raise WeightsError(f"these VGG19 weights ({spec.source}) end at {have[-1] if have else 'nothing'}, but layer "
                           f"{last} needs {', '.join(missing)}: choose shallower --content-layers/--style-layers")
    vgg.check_vgg_params(params, spec, last)
    enc = make_encoder(params, last)

    weights = config.loss_weights(spec)
    static = _Static(spec, tuple(config.content_layers), tuple(config.style_layers), config.optimizer,
                     None if config.lr is None else float(config.lr), config.lbfgs_memory, config.linesearch_steps)
    scales = config.scales or (max(content.shape[1:3]),)
    its = config.iterations_per_scale()
    sizes = []
    for s in scales:
        c = content if config.scales is None else fit_max_side(content, s)
        sizes.append(c.shape[1:3])

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(its), unit="it", desc="gatys", dynamic_ncols=True)

    def finish(x: Array, c_img: np.ndarray) -> Array:
        if config.preserve_color == "luminance":
            return imagelib.luminance_transfer(x, jnp.asarray(c_img))
        return x

    history: list[tuple[int, float]] = []
    evals = 0
    done_total = 0
    x_prev: np.ndarray | None = None
    initial_losses: dict[str, float] = {}
    final_terms: dict[str, float] = {}
    try:
        for si, (size, n_its) in enumerate(zip(scales, its, strict=True)):
            c_img = content if config.scales is None else fit_max_side(content, size)
            hw = c_img.shape[1:3]
            s_imgs = [fit_max_side(s, max(1, int(round(config.style_scale * max(hw))))) for s in styles]
            if config.preserve_color == "histogram":
                s_imgs = [np.asarray(imagelib.coral(s, c_img)) for s in s_imgs]
            targets = make_targets(enc, spec, c_img, s_imgs, weights, config, style_blend=style_blend,
                                   masks=masks, style_masks=style_masks)
            if x_prev is None and init_image is not None:
                x0 = np.asarray(imagelib.resize(init_image, hw, "bilinear"))
            elif x_prev is None:
                x0 = initial_image(config.init, c_img, s_imgs, config.seed)
            else:
                x0 = np.asarray(imagelib.resize(x_prev, hw, "bilinear"))
            z = softclip_inverse(jnp.asarray(x0))
            if si == 0:
                initial_losses = _float_terms(_terms(z, targets, enc, static))
            if n_its > 0:
                state = _init_state(z, targets, enc, static)
                if static.optimizer == "lbfgs":
                    evals += 1
            done = 0
            while done < n_its:
                stop = min(n_its, (done // config.chunk_size + 1) * config.chunk_size)
                if save_every:
                    stop = min(stop, ((done_total // save_every) + 1) * save_every - done_total + done)
                k = stop - done
                z, state, loss, chunk_evals = _run_chunk(z, state, targets, enc, jnp.asarray(k, jnp.int32),
                                                         static)
                done += k
                done_total += k
                evals += int(chunk_evals)
                loss_f = float(loss)
                history.append((done_total, loss_f))
                if bar is not None:
                    bar.update(k)
                    bar.set_postfix(size=f"{hw[1]}x{hw[0]}", loss=f"{loss_f:.4g}", refresh=False)
                if callback is not None:
                    img = finish(softclip(z, static.beta), c_img)
                    callback(GatysStep(si, tuple(hw), done, done_total, loss_f, evals, img))
            final_terms = _float_terms(_terms(z, targets, enc, static))
            x_prev = np.asarray(softclip(z, static.beta))
            if si == len(scales) - 1:
                out = np.asarray(finish(jnp.asarray(x_prev), c_img), np.float32)
    finally:
        if bar is not None:
            bar.close()
    return GatysResult(np.clip(out, 0.0, 1.0), final_terms, initial_losses, history, evals)
