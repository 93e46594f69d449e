"""VGG19 encoder returning named feature taps, carrying the identity of the weights it was built with.

Weight sources differ in more than layout: the input each expects (RGB or BGR, [0,1] or 0-255, mean/std), the
padding of their convolutions and their pooling. A `VGGSpec` holds that identity; `encode` applies it, so callers
always pass NHWC float32 RGB in [0, 1].

Parameters are a plain tree `{"conv1_1": {"kernel": HWIO, "bias": (O,)}, ...}` (plus `conv0`, AdaIN's 1x1
preprocessing convolution). They are frozen: `encode` stops their gradient, and the NNX module stores them in a
`FrozenWeights` variable that `nnx.Optimizer(..., wrt=nnx.Param)` never touches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nst_jax import ops
from nst_jax.params import check_params

Array = jax.Array
Params = Mapping[str, Mapping[str, Array]]

# VGG19's convolutions: (name, in_channels, out_channels), in order.
BLOCKS = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))


def _conv_table() -> tuple[tuple[str, int, int], ...]:
    table, cin = [], 3
    for b, (cout, n) in enumerate(BLOCKS, start=1):
        for i in range(1, n + 1):
            table.append((f"conv{b}_{i}", cin, cout))
            cin = cout
    return tuple(table)


CONVS = _conv_table()


def _layer_table() -> tuple[str, ...]:
    names = []
    for b, (_, n) in enumerate(BLOCKS, start=1):
        for i in range(1, n + 1):
            names += [f"conv{b}_{i}", f"relu{b}_{i}"]
        names.append(f"pool{b}")
    return tuple(names)


# Every tap the encoder can return, in forward order (conv = pre-activation, relu = after ReLU, pool = after pool).
LAYERS = _layer_table()
RELU_TAPS = tuple(n for n in LAYERS if n.startswith("relu"))


@dataclasses.dataclass(frozen=True)
class VGGSpec:
    """The identity of a set of VGG19 weights: how inputs are prepared, padded and pooled.

    Attributes:
      source: "torchvision", "keras", "adain", "caffe" or "random".
      channel_order: channel order the first convolution expects ("RGB" or "BGR").
      scale: multiplier applied to the [0, 1] input (255 for Caffe-trained weights).
      mean, std: per-channel, in `channel_order`, applied after scaling: (x * scale - mean) / std.
      padding: "zero" (torchvision, Keras, Caffe) or "reflect" (AdaIN's vgg_normalised).
      pooling: "max" or "avg" (Gatys et al. suggest average pooling for image generation).
      ceil_mode: pooling keeps a last partial window (AdaIN's MaxPool2d(..., ceil_mode=True)).
      preconv: the weights include AdaIN's leading 1x1 convolution `conv0` (x255, RGB->BGR, mean subtraction).
    """

    source: str = "torchvision"
    channel_order: Literal["RGB", "BGR"] = "RGB"
    scale: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    padding: Literal["zero", "reflect"] = "zero"
    pooling: Literal["max", "avg"] = "max"
    ceil_mode: bool = False
    preconv: bool = False

    def replace(self, **changes) -> VGGSpec:
        """A copy with some fields changed, e.g. `spec.replace(pooling="avg")`."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-friendly form (stored beside converted weights)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> VGGSpec:
        """Inverse of `to_dict`; unknown keys are rejected."""
        d = dict(d)
        for k in ("mean", "std"):
            if k in d:
                d[k] = tuple(float(v) for v in d[k])
        return cls(**d)


_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

SPECS: dict[str, VGGSpec] = {
    "torchvision": VGGSpec("torchvision", "RGB", 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "keras": VGGSpec("keras", "BGR", 255.0, _CAFFE_MEAN_BGR),
    "caffe": VGGSpec("caffe", "BGR", 255.0, _CAFFE_MEAN_BGR),
    "adain": VGGSpec("adain", padding="reflect", ceil_mode=True, preconv=True),
    "random": VGGSpec("random"),
}


def expected_shapes(spec: VGGSpec, last: str = "relu5_4") -> dict[str, dict[str, tuple[int, ...]]]:
    """Parameter shapes for the layers needed up to tap `last` (all 16 convolutions by default)."""
    needed = _convs_until(last)
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    if spec.preconv:
        shapes["conv0"] = {"kernel": (1, 1, 3, 3), "bias": (3,)}
    for name, cin, cout in CONVS:
        if name in needed:
            shapes[name] = {"kernel": (3, 3, cin, cout), "bias": (cout,)}
    return shapes


def _convs_until(last: str) -> set[str]:
    if last not in LAYERS:
        raise ValueError(f"unknown VGG19 tap {last!r}; known: {', '.join(LAYERS)}")
    upto = LAYERS[: LAYERS.index(last) + 1]
    return {n for n in upto if n.startswith("conv")}


def deepest(taps: Sequence[str]) -> str:
    """The tap furthest into the network among `taps`."""
    for t in taps:
        if t not in LAYERS:
            raise ValueError(f"unknown VGG19 tap {t!r}; known: {', '.join(LAYERS)}")
    return max(taps, key=LAYERS.index)


def init_params(key: Array, spec: VGGSpec = SPECS["random"], last: str = "relu5_4") -> dict:
    """Random (He-normal) VGG19 parameters, for tests and for users without weights."""
    params = {}
    shapes = expected_shapes(spec, last)
    keys = jax.random.split(key, len(shapes))
    for k, (name, s) in zip(keys, shapes.items(), strict=True):
        fan_in = s["kernel"][0] * s["kernel"][1] * s["kernel"][2]
        w = jax.random.normal(k, s["kernel"], jnp.float32) * np.float32(np.sqrt(2.0 / fan_in))
        params[name] = {"kernel": w, "bias": jnp.zeros(s["bias"], jnp.float32)}
    return params


def preprocess(x: Array, spec: VGGSpec) -> Array:
    """Map NHWC RGB [0,1] images to what the first convolution of these weights expects."""
    if spec.channel_order == "BGR":
        x = x[..., ::-1]
    if spec.scale != 1.0:
        x = x * np.float32(spec.scale)
    if any(spec.mean):
        x = x - jnp.asarray(spec.mean, x.dtype)
    if any(s != 1.0 for s in spec.std):
        x = x / jnp.asarray(spec.std, x.dtype)
    return x


def encode(params: Params, x: Array, spec: VGGSpec, taps: Sequence[str] = ("relu4_1",)) -> dict[str, Array]:
    """Run VGG19 on images up to the deepest requested tap.

    Args:
      params: VGG19 parameters (see module docstring); gradients do not flow into them.
      x: (N, H, W, 3) float RGB in [0, 1].
      spec: the identity of `params`.
      taps: names from `LAYERS` to return.

    Returns:
      {tap: (N, h, w, C) features}.
    """
    taps = tuple(taps)
    last = deepest(taps)
    params = jax.lax.stop_gradient(params)
    dtype = x.dtype
    h = preprocess(x, spec)
    if spec.preconv:
        h = ops.conv2d(h, params["conv0"]["kernel"].astype(dtype), params["conv0"]["bias"].astype(dtype), "valid")
    out: dict[str, Array] = {}
    for name in LAYERS:
        kind = name[:4]
        if kind == "conv":
            p = params[name]
            h = ops.conv2d(h, p["kernel"].astype(dtype), p["bias"].astype(dtype), spec.padding)
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


def check_vgg_params(params: Params, spec: VGGSpec, last: str = "relu5_4") -> None:
    """Raise `WeightsError` if `params` lacks (or mis-shapes) anything needed up to `last`.

    Layers beyond `last` may be present (a full file) or absent (a truncated one, e.g. AdaIN's to relu4_1).
    """
    expected = expected_shapes(spec, last)
    trimmed = {k: v for k, v in params.items() if k in expected}
    extra = sorted(set(params) - set(expected_shapes(spec)) - set(expected))
    check_params(trimmed, expected, f"VGG19 ({spec.source})")
    if extra:
        check_params(params, expected_shapes(spec), f"VGG19 ({spec.source})")


class FrozenWeights(nnx.Variable):
    """Encoder weights: a variable type that optimisers (wrt=nnx.Param) never update."""


class VGG19(nnx.Module):
    """VGG19 encoder as a Flax NNX module returning a dict of named taps.

    Example:
      >>> enc = VGG19(params, SPECS["torchvision"])
      >>> feats = enc(images, taps=("relu1_1", "relu4_1"))
    """

    def __init__(self, params: Params, spec: VGGSpec, last: str = "relu5_4", check: bool = True):
        if check:
            check_vgg_params(params, spec, last)
        needed = expected_shapes(spec, last)
        tree = {k: {"kernel": jnp.asarray(v["kernel"], jnp.float32), "bias": jnp.asarray(v["bias"], jnp.float32)}
                for k, v in params.items() if k in needed}
        self.weights = FrozenWeights(tree)
        self.spec = spec
        self.last = last

    def __call__(self, x: Array, taps: Sequence[str] = ("relu4_1",)) -> dict[str, Array]:
        if LAYERS.index(deepest(taps)) > LAYERS.index(self.last):
            raise ValueError(f"this encoder was built up to {self.last}; cannot return {deepest(taps)}")
        return encode(self.weights.get_value(), x, self.spec, taps)


def make_encoder(params: Params, spec: VGGSpec, taps: Sequence[str] = ("relu4_1",)):
    """A jitted function images -> {tap: features} with the weights closed over as constants of the trace.

    The weights are passed as an argument (not baked into the program) so a second encoder with other weights of
    the same shape reuses the compiled code.
    """
    fn = jax.jit(partial(encode, spec=spec, taps=tuple(taps)))
    weights = jax.tree.map(jnp.asarray, dict(params))
    return lambda x: fn(weights, x)
