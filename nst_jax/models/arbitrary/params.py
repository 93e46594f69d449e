"""The arbitrary family's constants (sizes, the MobileNetV2 layout, the style-normed layers) and its
parameter tree (`nst_jax.models.arbitrary`)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax.models import Caps
from nst_jax.typing import Array, Params

NormStats = dict[str, tuple[Array, Array]]

NAME = "arbitrary"
CAPS = Caps(style_images=True, style_table=False, alpha=True, masks=True, color_modes=("luminance", "histogram"),
            strength_map=True)

BOTTLENECK = 100
STYLE_SIZE = 256
EPS = 1e-5
# The transformer downsamples twice by 2; smaller inputs cannot be reflect-padded at the 1/4 grid.
MULTIPLE = 4
MIN_SIDE = 5

# MobileNetV2 (width 1.0) as in Magenta's mobile predictor: (expansion, output channels, stride) per block
# "expanded_conv", "expanded_conv_1", ...; a block adds its input when stride is 1 and the channels agree.
MOBILENET_STEM = 32
MOBILENET_BLOCKS: tuple[tuple[int, int, int], ...] = (
    (1, 16, 1), (6, 24, 2), (6, 24, 1), (6, 32, 2), (6, 32, 1), (6, 32, 1), (6, 64, 2), (6, 64, 1),
    (6, 64, 1), (6, 64, 1), (6, 96, 1), (6, 96, 1), (6, 96, 1), (6, 160, 2), (6, 160, 1), (6, 160, 1),
    (6, 320, 1),
)
MOBILENET_LAST = 1280
RESIDUAL_BLOCKS = 5

# The style predictors: Magenta's MobileNetV2 (the ported lite model), or, for training your own without another
# pretrained network, a small network on the loss VGG16's relu1_1..relu4_1 per-channel mean and std (log1p of
# each, so the deep layers' large activations do not dominate) -> hidden ReLU layer -> the bottleneck.
PREDICTORS = ("mobilenet", "vgg_stats")
VGG_STATS_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
VGG_STATS_FEATURES = 2 * (64 + 128 + 256 + 512)
VGG_STATS_HIDDEN = 256

# The style-normed layers, in network order, with their grid (1/factor of the padded content size). These are the
# keys of `norm_stats`.
NORM_LAYERS: tuple[str, ...] = tuple(
    [f"residual/residual{i}/conv{j}" for i in range(1, RESIDUAL_BLOCKS + 1) for j in (1, 2)]
    + ["expand/conv1", "expand/conv2", "expand/conv3"])
NORM_FACTORS: dict[str, int] = {**{n: 4 for n in NORM_LAYERS[:-3]}, "expand/conv1": 2, "expand/conv2": 1,
                                "expand/conv3": 1}


def block_name(i: int) -> str:
    """Magenta's scope of MobileNetV2 block `i` (0-based): expanded_conv, expanded_conv_1, ..."""
    return "expanded_conv" if i == 0 else f"expanded_conv_{i}"


def _cfg(config: Any, name: str, default: Any) -> Any:
    if config is None:
        return default
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def _arch(config: Any) -> tuple[float, int, str]:
    """(width, bottleneck, predictor) of a config: its `arbitrary` node (training configs) or its top level."""
    node = _cfg(config, "arbitrary", None)
    node = config if node is None else node
    return (float(_cfg(node, "width", 0.25)), int(_cfg(node, "bottleneck", BOTTLENECK)),
            str(_cfg(node, "predictor", "mobilenet")))


def transformer_channels(width: float = 0.25) -> tuple[int, int, int]:
    """Channels of the contract layers for a width multiplier of Magenta's 32/64/128 (lite: 0.25 -> 8/16/32)."""
    return int(32 * width), int(64 * width), int(128 * width)


# ---------------------------------------------------------------------------------------------------------------
# Parameters


def init_params(key: Array, config: Any = None) -> Params:
    """Random parameters with the structure of the ported lite model (`load_magenta_arbitrary`).

    Args:
      key: PRNG key.
      config: optional mapping / ConfigDict with `width` (transformer width multiplier, 0.25), `bottleneck`
        (style vector size, 100) and `predictor` ("mobilenet" or "vgg_stats"), under its `arbitrary` node (training
        configs) or at its top level.

    Returns:
      The tree described in the module docstring (float32): He-normal kernels, zero biases, gamma projections
      with bias 1 and beta projections with bias 0, so a random vector gives near-identity norms. With the
      "vgg_stats" predictor, "predictor" is {"hidden": {"kernel": (1920, 256), "bias"}} and the bottleneck
      (256, 100).
    """
    width, dim, predictor = _arch(config)
    if predictor not in PREDICTORS:
        raise ValueError(f"unknown style predictor {predictor!r} (known: {', '.join(PREDICTORS)})")
    return _init_params(key, width, dim, predictor)


@partial(jax.jit, static_argnums=(1, 2, 3))
def _init_params(key: Array, width: float, dim: int, kind: str = "mobilenet") -> Params:
    # The tree is laid out with (shape, std) placeholders first, then filled from ONE normal draw: a separate
    # draw per tensor made XLA compile a hundred random-number generators.
    c1, c2, c3 = transformer_channels(width)

    def conv(kh: int, cin: int, cout: int, bias: bool = True, groups: int = 1) -> dict[str, Any]:
        fan_in = kh * kh * cin // groups
        k = _Normal((kh, kh, cin // groups, cout), float(np.sqrt(2.0 / fan_in)))
        return {"kernel": k, "bias": jnp.zeros((cout,), jnp.float32)} if bias else {"kernel": k}

    def dense(cin: int, cout: int, bias0: float) -> dict[str, Any]:
        return {"kernel": _Normal((cin, cout), 0.1 / float(np.sqrt(cin))),
                "bias": jnp.full((cout,), bias0, jnp.float32)}

    if kind == "vgg_stats":
        predictor: dict[str, Any] = {"hidden": {"kernel": _Normal((VGG_STATS_FEATURES, VGG_STATS_HIDDEN),
                                                                  float(np.sqrt(2.0 / VGG_STATS_FEATURES))),
                                                "bias": jnp.zeros((VGG_STATS_HIDDEN,), jnp.float32)}}
        feat = VGG_STATS_HIDDEN
    else:
        predictor = {"Conv": conv(3, 3, MOBILENET_STEM)}
        cin = MOBILENET_STEM
        for i, (t, cout, _) in enumerate(MOBILENET_BLOCKS):
            hidden = cin * t
            blk = {} if t == 1 else {"expand": conv(1, cin, hidden)}
            blk["depthwise"] = conv(3, hidden, hidden, groups=hidden)
            blk["project"] = conv(1, hidden, cout)
            predictor[block_name(i)] = blk
            cin = cout
        predictor["Conv_1"] = conv(1, cin, MOBILENET_LAST)
        feat = MOBILENET_LAST

    residual = {f"residual{i}": {"conv1": conv(3, c3, c3, bias=False), "conv2": conv(3, c3, c3, bias=False)}
                for i in range(1, RESIDUAL_BLOCKS + 1)}
    transformer = {
        "contract": {"conv1": conv(9, 3, c1), "conv2": conv(3, c1, c2), "conv3": conv(3, c2, c3)},
        "residual": residual,
        "expand": {"conv1": conv(3, c3, c2, bias=False), "conv2": conv(3, c2, c1, bias=False),
                   "conv3": conv(9, c1, 3, bias=False)},
    }
    norm_channels = {**{n: c3 for n in NORM_LAYERS[:-3]}, "expand/conv1": c2, "expand/conv2": c1,
                     "expand/conv3": 3}
    style_params: dict[str, Any] = {}
    for name in NORM_LAYERS:
        c = norm_channels[name]
        node = style_params
        *scopes, last = name.split("/")
        for s in scopes:
            node = node.setdefault(s, {})
        node[last] = {"beta": dense(dim, c, 0.0), "gamma": dense(dim, c, 1.0)}
    bottleneck = {"kernel": _Normal((feat, dim), float(np.sqrt(1.0 / feat))),
                  "bias": jnp.zeros((dim,), jnp.float32)}
    tree = {"predictor": predictor, "bottleneck": bottleneck, "style_params": style_params,
            "transformer": transformer}
    leaves, treedef = jax.tree.flatten(tree, is_leaf=lambda x: isinstance(x, _Normal))
    sizes = [int(np.prod(x.shape)) for x in leaves if isinstance(x, _Normal)]
    flat = jax.random.normal(key, (sum(sizes),), jnp.float32)
    out, offset = [], 0
    for x in leaves:
        if isinstance(x, _Normal):
            size = int(np.prod(x.shape))
            out.append(flat[offset:offset + size].reshape(x.shape) * x.std)
            offset += size
        else:
            out.append(x)
    return jax.tree.unflatten(treedef, out)


class _Normal:
    """Placeholder of a normal(0, std) tensor in `_init_params`."""

    def __init__(self, shape: tuple[int, ...], std: float):
        self.shape, self.std = shape, std


def tree_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{"a/b/c": shape} for every leaf of a nested dict tree."""
    out: dict[str, tuple[int, ...]] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}" if prefix else str(k))
        else:
            out[prefix] = tuple(np.shape(node))

    walk(tree, "")
    return out


def expected_shapes(config: Any = None) -> dict[str, tuple[int, ...]]:
    """The leaf shapes `init_params(key, config)` has (no arrays are made)."""
    tree = jax.eval_shape(lambda k: init_params(k, config), jax.random.key(0))
    return {k: tuple(v) for k, v in tree_shapes(tree).items()}


def style_param(params: Params, layer: str) -> Mapping[str, Mapping[str, Array]]:
    """The {"beta", "gamma"} projections of a style-normed layer ("residual/residual1/conv1", "expand/conv3")."""
    node: Any = params["style_params"]
    for s in layer.split("/"):
        node = node[s]
    return node
