"""Settings of a Gatys run: `GatysConfig`, the term weights, and the defaults per VGG19 source.

Errors name the parameters (`layer_weights`, `iterations`, ...); `nst_jax.commands.gatys` turns them into flags.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

from nst_jax import vgg
from nst_jax.errors import NstError

DEFAULT_CONTENT_LAYERS = ("relu4_2",)
LINESEARCHES = ("armijo", "none", "zoom", "optax-zoom")
DEFAULT_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


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
      content_weight, style_weight, tv_weight: term weights (see `nst_jax.gatys` for the formulas).
      optimizer: "lbfgs" (on torch.optim.LBFGS's direction, the step set by `linesearch`) or "adam".
      iterations: optimiser steps per scale: one number for all scales or one per scale.
      lr: Adam's learning rate on the (near-identity) pixel variable; L-BFGS: the line search's first trial
        step (None: 1, the quasi-Newton step).
      lbfgs_memory: number of past updates L-BFGS keeps (neural-style and torch.optim.LBFGS: 100).
      linesearch: L-BFGS's step: "armijo" (the quasi-Newton step, halved while it does not decrease the loss
        enough: one evaluation per iteration unless it overshoots), "none" (neural-style's: the step as it is,
        one evaluation per iteration, uphill steps included), "zoom" (optax's strong-Wolfe zoom search) or
        "optax-zoom" (optax's own L-BFGS with its zoom search, the earlier default). The first three share
        `scale_by_lbfgs_checked`'s direction (torch.optim.LBFGS's); benchmarks/RESULTS.md compares them.
      linesearch_steps: most function evaluations of one line search.
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
    linesearch: Literal["armijo", "none", "zoom", "optax-zoom"] = "armijo"
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
        """Raise `NstError` naming the field that is out of range."""
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
                raise NstError(f"layer_weights must be 'equal', 'channels' or numbers, got {lw!r}")
        elif lw is not None:
            if len(lw) != len(self.style_layers):
                raise NstError(f"layer_weights has {len(lw)} values for {len(self.style_layers)} style layers")
            if any(not math.isfinite(w) or w < 0 for w in lw):
                raise NstError("layer_weights must be finite and >= 0")
        for name in ("content_weight", "style_weight", "tv_weight"):
            v = getattr(self, name)
            if v is not None and (not math.isfinite(v) or v < 0):
                raise NstError(f"{name} must be finite and >= 0, got {v}")
        if self.optimizer not in ("lbfgs", "adam"):
            raise NstError(f"optimizer must be lbfgs or adam, got {self.optimizer!r}")
        if self.linesearch not in LINESEARCHES:
            raise NstError(f"linesearch must be one of {', '.join(LINESEARCHES)}, got {self.linesearch!r}")
        if self.init not in ("content", "noise", "style"):
            raise NstError(f"init must be content, noise or style, got {self.init!r}")
        its = self.iterations_per_scale()
        if any(i < 0 for i in its):
            raise NstError("iterations must be >= 0")
        if self.scales is not None and (not self.scales or any(s < 16 for s in self.scales)):
            raise NstError(f"scales must be sizes of at least 16 pixels, got {self.scales}")
        if self.lr is not None and (not math.isfinite(self.lr) or self.lr <= 0):
            raise NstError(f"lr must be > 0, got {self.lr}")
        if not (math.isfinite(self.style_scale) and self.style_scale > 0):
            raise NstError(f"style_scale must be > 0, got {self.style_scale}")
        if self.preserve_color not in (None, "luminance", "histogram"):
            raise NstError(f"preserve_color must be luminance or histogram, got {self.preserve_color!r}")
        for name in ("lbfgs_memory", "linesearch_steps", "chunk_size"):
            if getattr(self, name) < 1:
                raise NstError(f"{name} must be >= 1, got {getattr(self, name)}")

    def iterations_per_scale(self) -> tuple[int, ...]:
        """Iterations at each scale (one entry when `scales` is None)."""
        n = 1 if self.scales is None else len(self.scales)
        its = (self.iterations,) if isinstance(self.iterations, int) else tuple(self.iterations)
        if len(its) == 1:
            return its * n
        if len(its) != n:
            raise NstError(f"iterations has {len(its)} values for {n} scales")
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
