"""The CIN family's static layout (`TransformerSpec`, the presets), its parameter tree and the config
that builds it (`nst_jax.models.cin`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax.errors import WeightsError
from nst_jax.models import Caps
from nst_jax.typing import Array, Params

NAME = "cin"
# "histogram" recolours a style *image* before it is used; a CIN style is a row of its table, so only the
# luminance mode (keep the content's chroma under the stylized luminance) applies.
CAPS = Caps(style_images=False, style_table=True, alpha=True, masks=True, color_modes=("luminance",),
            strength_map=True)


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


def _round_up(c: int, m: int) -> int:
    return -(-c // m) * m
