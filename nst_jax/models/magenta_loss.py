"""The pieces of Magenta's stylization losses that its two trained families share (CIN and arbitrary).

Magenta's `image_stylization/learning.py` and `arbitrary_image_stylization_losses.py` define, on a VGG16 loss
network with average pooling (Magenta's vgg.py):

- content: per layer, the mean over (N, H, W, C) of the squared feature difference, weighted and summed;
- style: per layer, the mean over (N, C, C) of the squared difference of Gram matrices F^T F / (H * W) (not
  divided by C), weighted and summed;
- total variation (arbitrary only): `tf.nn.l2_loss` of the vertical and horizontal neighbour differences, each
  divided by its element count per image, summed and divided by the batch: (mean dy^2 + mean dx^2) / 2.

Layer names are our VGG16 taps: slim's endpoint `vgg_16/convB` (the output of block B's last convolution after
its ReLU) is relu1_2, relu2_2, relu3_3, relu4_3 or relu5_3.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from nst_jax.typing import Array

Layers = tuple[tuple[str, ...], tuple[float, ...]]


@dataclasses.dataclass(frozen=True)
class GramLossTerms:
    """The fields and properties the static losses of CIN (`CINLoss`) and the arbitrary network (`ArbitraryLoss`)
    share: their VGG16 content and Gram style taps. A subclass adds its own fields, ending with a `stability`
    (`nst_jax.stability.StabilityTerm`).

    Attributes:
      content_layers, content_weights: VGG16 taps of the content loss and their weights.
      style_layers, style_weights: VGG16 taps of the Gram style loss and their weights.
    """

    content_layers: tuple[str, ...]
    content_weights: tuple[float, ...]
    style_layers: tuple[str, ...]
    style_weights: tuple[float, ...]

    @property
    def wants_step(self) -> bool:
        """Whether the loss needs `batch["step"]` (the stability term's random warps come from it)."""
        return self.stability.on  # type: ignore[attr-defined]

    @property
    def taps(self) -> tuple[str, ...]:
        """Every VGG16 tap read on the stylized and content images, in forward order."""
        return in_order(self.content_layers, self.style_layers)


def gram(f: Array) -> Array:
    """Gram matrices as Magenta's learning.py: F^T F / (H * W), (N, C, C), float32."""
    from nst_jax import ops

    return ops.gram(f.astype(jnp.float32), "hw")


def total_variation(x: Array) -> Array:
    """Magenta's `learning.total_variation_loss` before its weight: (mean dy^2 + mean dx^2) / 2 (scalar)."""
    from nst_jax import ops

    return ops.total_variation(x.astype(jnp.float32), "mean") * jnp.float32(0.5)


def content_loss(fg: Mapping[str, Array], fc: Mapping[str, Array], layers: Layers) -> Array:
    """sum_l w_l * mean (fg_l - fc_l)^2 (the targets `fc` carry no gradient)."""
    total = jnp.float32(0.0)
    for layer, w in zip(*layers, strict=True):
        d = fg[layer].astype(jnp.float32) - jax.lax.stop_gradient(fc[layer].astype(jnp.float32))
        total = total + jnp.float32(w) * jnp.mean(jnp.square(d))
    return total


def style_loss(fg: Mapping[str, Array], targets: Mapping[str, Array], layers: Layers
               ) -> tuple[Array, dict[str, Array]]:
    """sum_l w_l * mean (gram(fg_l) - G_l)^2 with G_l (N, C, C) the per-example target Grams.

    Returns:
      (the weighted sum, {layer: the unweighted term}).
    """
    per = {layer: jnp.mean(jnp.square(gram(fg[layer]) - jax.lax.stop_gradient(targets[layer])))
           for layer in layers[0]}
    total = jnp.float32(0.0)
    for layer, w in zip(*layers, strict=True):
        total = total + jnp.float32(w) * per[layer]
    return total, per


def parse_layers(config: Any) -> tuple[Layers, Layers]:
    """The (content, style) (layers, weights) of a config, checked: `config.content_layers`,
    `content_layer_weights`, `style_layers`, `style_layer_weights` (VGG16 taps), and `config.dtype`.

    Raises:
      NstError: naming the key of a mismatched, empty or unknown value.
    """
    from nst_jax import vgg as vgg_mod
    from nst_jax.errors import NstError

    known = vgg_mod.LAYERS_OF["vgg16"]
    pairs = []
    for layers_key, weights_key in (("content_layers", "content_layer_weights"),
                                    ("style_layers", "style_layer_weights")):
        names = tuple(str(x) for x in config[layers_key])
        weights = tuple(float(w) for w in config[weights_key])
        if len(names) != len(weights):
            raise NstError(f"config.{weights_key} has {len(weights)} values for {len(names)} {layers_key}")
        if not names:
            raise NstError(f"config.{layers_key} is empty")
        for n in names:
            if n not in known:
                raise NstError(f"unknown VGG16 layer {n!r} in config.{layers_key}; known: "
                               f"{', '.join(x for x in known if x.startswith('relu'))}")
        pairs.append((names, weights))
    if config.dtype not in ("float32", "bfloat16"):
        raise NstError(f"config.dtype must be float32 or bfloat16, got {config.dtype!r}")
    return pairs[0], pairs[1]


def in_order(*groups: Sequence[str]) -> tuple[str, ...]:
    """Every VGG16 tap named in `groups`, once, in forward order."""
    from nst_jax import vgg as vgg_mod

    order = vgg_mod.LAYERS_OF["vgg16"]
    return tuple(sorted(set().union(*map(set, groups)), key=order.index))


def load_loss_network(name: str, last: str) -> tuple[dict, Any]:
    """VGG16 named by `config.vgg_weights` with average pooling, trimmed to the convolutions up to `last`.

    Args:
      name: "hed", "vgg16-torchvision", "vgg16-keras", a file, or "random:vgg16-random" (tests only).
      last: the deepest tap the loss reads.

    Returns:
      (params as float32 jax arrays, the VGGSpec with average pooling).
    """
    from nst_jax import vgg as vgg_mod
    from nst_jax.errors import NstError

    kind, _, spec_name = str(name).partition(":")
    if kind == "random":
        from nst_jax.weights.resolve import random_encoder

        spec_name = spec_name or "vgg16-random"
        if spec_name not in vgg_mod.SPECS or vgg_mod.SPECS[spec_name].arch != "vgg16":
            raise NstError(f"config.vgg_weights: {name!r} is not a random VGG16 (use random:vgg16-random)")
        params, spec = random_encoder(spec_name, last), vgg_mod.SPECS[spec_name]
    else:
        from nst_jax.weights.vgg16_ports import load_vgg16

        params, spec = load_vgg16(name)
    spec = spec.replace(pooling="avg")  # Magenta's vgg.py swaps VGG16's max pooling for average pooling
    needed = vgg_mod.expected_shapes(spec, last)
    missing = [k for k in needed if k not in params]
    if missing:
        raise NstError(f"config.vgg_weights: {name} lacks {', '.join(missing)}")
    return {k: {leaf: jnp.asarray(v, jnp.float32) for leaf, v in params[k].items()} for k in needed}, spec


__all__ = ["GramLossTerms", "content_loss", "gram", "in_order", "load_loss_network", "parse_layers", "style_loss",
           "total_variation"]
