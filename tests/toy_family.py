"""A fourth model family, defined outside nst_jax: the proof that the family contract (`nst_jax.models`) is complete.

The network is the smallest conditional instance-norm transformer: reflect-padded 3x3 conv 3 -> 8, instance
norm whose (gamma, beta) are a style's weights over an S-row table (S = 2 by default), ReLU, reflect-padded 3x3
conv 8 -> 3, sigmoid. A style is a weight vector over the table's rows (an index is a one-hot row), so blends mix
rows and masks mix rows per pixel. Alpha mixes pixels: alpha * stylized + (1 - alpha) * content (alpha 0 is the
content itself), as CIN does.

Training (the family-neutral loop in `nst_jax.train`, `config.model = "toy"`): each example gets a random style
row s; the loss is content_weight * mean((g - c)^2) + style_weight * mean((mean colour of g - colour_s)^2), with
colour_s the row's target RGB colour from `config.toy.colors`. No loss network: the point is the contract, not
the pictures.

Config keys (under `config.toy`): num_styles (S), colors (S RGB triples in [0, 1]), eps. The family is
registered at run time by the tests (`nst_jax.models.register(FAMILY)`; tests/ is on sys.path).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nst_jax.convs import weighted_moments
from nst_jax.errors import StyleError
from nst_jax.models import Caps, Export, Family, MeanVar, Moments, Tiling, blend_conditions

NAME = "toy"
CAPS = Caps(style_images=False, style_table=True, alpha=True, masks=True, color_modes=("luminance",),
            strength_map=True)
WIDTH = 8
DN = ("NHWC", "HWIO", "NHWC")
DEFAULT_COLORS = ((0.9, 0.3, 0.1), (0.1, 0.4, 0.9))


@dataclasses.dataclass(frozen=True)
class ToySpec:
    """The static identity of the inference functions (hashable): the norm's epsilon."""

    eps: float = 1e-5


@dataclasses.dataclass(frozen=True)
class ToyLoss:
    """The static part of the training loss."""

    num_styles: int
    content_weight: float
    style_weight: float
    spec: ToySpec = ToySpec()


def _toy(config: Any) -> Any:
    if config is None:
        return {}
    try:
        return config.get("toy", {}) or {}
    except AttributeError:
        return {}


def num_styles_of(config: Any) -> int:
    """S of a training config (`config.toy.num_styles`, default 2)."""
    return int(_toy(config).get("num_styles", 2))


def colors_of(config: Any) -> np.ndarray:
    """(S, 3) target colours of a training config."""
    colors = np.asarray(_toy(config).get("colors", DEFAULT_COLORS), np.float32)
    return colors[:num_styles_of(config)]


def spec_of(config: Any) -> ToySpec:
    """The inference spec a config builds."""
    return ToySpec(eps=float(_toy(config).get("eps", 1e-5)))


# ----------------------------------------------------------------------------------------------------
# The network


def init_params(key: Any, config: Any = None) -> dict:
    """He-normal kernels, zero biases, table rows near gamma = 1, beta = 0 but distinct (so styles differ)."""
    s = num_styles_of(config)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return {
        "conv_in": {"kernel": jax.random.normal(k1, (3, 3, 3, WIDTH), jnp.float32) * np.float32(np.sqrt(2 / 27)),
                    "bias": jnp.zeros((WIDTH,), jnp.float32)},
        "norm": {"gamma": 1.0 + 0.5 * jax.random.normal(k2, (s, WIDTH), jnp.float32),
                 "beta": 0.5 * jax.random.normal(k3, (s, WIDTH), jnp.float32)},
        "conv_out": {"kernel": jax.random.normal(k4, (3, 3, WIDTH, 3), jnp.float32) * np.float32(np.sqrt(2 / 72)),
                     "bias": jnp.zeros((3,), jnp.float32)},
    }


def _conv(x: Any, p: Mapping[str, Any]) -> Any:
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    y = lax.conv_general_dilated(xp, p["kernel"], (1, 1), "VALID", dimension_numbers=DN)
    return y + p["bias"].reshape(1, 1, 1, -1)


def forward(params: Mapping[str, Any], x: Any, weights: Any, spec: ToySpec = ToySpec(), norm_stats: Any = None,
            stats_weight: Any = None) -> tuple[Any, dict]:
    """The network on images x (N, H, W, 3) with style weights (N, S) or per-pixel maps (N, H, W, S).

    Returns:
      (images (N, H, W, 3) in [0, 1], {"norm": MeanVar}: the content-side statistics computed (before any
      replacement by `norm_stats`); with `stats_weight` (N, H, W, 1), their `Moments` over the weighted pixels).
    """
    x = jnp.asarray(x, jnp.float32)
    weights = jnp.asarray(weights, jnp.float32)
    h = _conv(x, params["conv_in"])
    mean = jnp.mean(h, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(h - mean), axis=(1, 2), keepdims=True)
    own = {"norm": MeanVar(mean, var) if stats_weight is None else Moments(*weighted_moments(h, stats_weight))}
    if norm_stats is not None:
        mean, var = (jnp.asarray(v, jnp.float32) for v in norm_stats["norm"])
    table = params["norm"]
    if weights.ndim == 2:
        gamma = jnp.dot(weights, table["gamma"])[:, None, None, :]
        beta = jnp.dot(weights, table["beta"])[:, None, None, :]
    else:
        gamma = jnp.einsum("nhws,sc->nhwc", weights, table["gamma"])
        beta = jnp.einsum("nhws,sc->nhwc", weights, table["beta"])
    h = (h - mean) * lax.rsqrt(var + jnp.float32(spec.eps)) * gamma + beta
    h = jax.nn.relu(h)
    return jax.nn.sigmoid(_conv(h, params["conv_out"])), own


# ----------------------------------------------------------------------------------------------------
# The family contract: inference


def num_styles(params: Mapping[str, Any]) -> int:
    """S, the rows of the style table."""
    return int(params["norm"]["gamma"].shape[0])


def inference_setup(config: Any) -> tuple[dict, ToySpec]:
    """(frozen, static) of a model trained with `config`: no frozen arrays."""
    return {}, spec_of(config)


def condition(params: Mapping[str, Any], frozen: Any, style: Any, static: Any = None) -> dict:
    """{"weights": (N, S)} from weights (N, S) / (S,) or integer indices (N,)."""
    del frozen, static
    s = num_styles(params)
    style = style if isinstance(style, jax.core.Tracer) else np.asarray(style)
    if jnp.issubdtype(style.dtype, jnp.integer):
        if isinstance(style, np.ndarray) and not ((style >= 0) & (style < s)).all():
            raise StyleError(f"style index out of range: this model has {s} styles (0-{s - 1})")
        return {"weights": jax.nn.one_hot(style.reshape(-1), s, dtype=jnp.float32)}
    if style.shape[-1] != s:
        raise StyleError(f"style weights have {style.shape[-1]} values; this model has {s} styles")
    return {"weights": jnp.asarray(style, jnp.float32).reshape(-1, s)}


def _rows(content: Any, condition: Mapping[str, Any], masks: Any) -> tuple[Any, Any]:
    """The content broadcast to N and the weights (N, S), or with masks the per-pixel maps (N, H, W, S)."""
    w = jnp.asarray(condition["weights"], jnp.float32)
    if masks is None:
        n = max(content.shape[0], w.shape[0])
        return jnp.broadcast_to(content, (n,) + content.shape[1:]), jnp.broadcast_to(w, (n, w.shape[-1]))
    masks = jnp.asarray(masks, jnp.float32)
    n = max(content.shape[0], w.shape[0], masks.shape[0])
    maps = jnp.einsum("nhwk,nks->nhws", jnp.broadcast_to(masks, (n,) + masks.shape[1:]),
                      jnp.broadcast_to(w, (n,) + w.shape[1:]))
    return jnp.broadcast_to(content, (n,) + content.shape[1:]), maps


def _mix_alpha(y: Any, content: Any, alpha: Any) -> Any:
    a = jnp.asarray(alpha, jnp.float32).reshape(-1, 1, 1, 1)
    return y * a + jnp.asarray(content, jnp.float32) * (1.0 - a)


def stats_forward(params: Mapping[str, Any], frozen: Any, content: Any, condition: Mapping[str, Any], masks: Any,
                  alpha: Any, norm_stats: Any, static: Any = None, *, stats_weight: Any = None) -> tuple[Any, Any]:
    """The statistics seam: `stylize` (masks None) or `stylize_masked`, with the instance norm's statistics
    given (`norm_stats`) or its own returned."""
    del frozen
    content, w = _rows(content, condition, masks)
    y, own = forward(params, content, w, static or ToySpec(), norm_stats, stats_weight)
    return _mix_alpha(y, content, alpha), own


def tile_moments(params: Mapping[str, Any], frozen: Any, content: Any, condition: Mapping[str, Any], masks: Any,
                 alpha: Any, norm_stats: Any, weight: Any, static: Any = None) -> dict:
    """`Tiling.moments`: the one norm's moments over the weighted pixels."""
    return stats_forward(params, frozen, content, condition, masks, alpha, norm_stats, static, stats_weight=weight)[1]


def tile_finish(moments: Mapping[str, Any]) -> dict:
    """`Tiling.finish`: the biased variance, as `forward` divides by."""
    m = moments["norm"]
    return {"norm": MeanVar(jnp.asarray(m.mean, jnp.float32), jnp.asarray(m.m2 / m.count, jnp.float32))}


def stylize(params: Mapping[str, Any], frozen: Any, content: Any, condition: Mapping[str, Any], alpha: Any,
            static: Any = None) -> Any:
    """alpha * network(content) + (1 - alpha) * content, with the condition's rows."""
    return stats_forward(params, frozen, content, condition, None, alpha, None, static)[0]


def stylize_masked(params: Mapping[str, Any], frozen: Any, content: Any, conditions: Mapping[str, Any], masks: Any,
                   alpha: Any, static: Any = None) -> Any:
    """K conditions {"weights": (N, K, S)} placed by masks (N, H, W, K): the rows mixed per pixel."""
    return stats_forward(params, frozen, content, conditions, masks, alpha, None, static)[0]


def blend(conditions: Mapping[str, Any], weights: Any) -> dict:
    """A convex mix of K conditions stacked on a leading axis (mixing rows)."""
    return blend_conditions(dict(conditions), weights)


# ----------------------------------------------------------------------------------------------------
# The family contract: export (an `nst_jax.models.ExportBuilder`)


def toy_export(stylizer: Any, condition: Any | None, *, layout: str, size: tuple[int, int] | None,
               style_desc: str | None = None, encoder_size: tuple[int, int] | None = None) -> list:
    """The network as an ONNX graph: inputs image [+ style_weights (N, S)], output stylized (alpha 1)."""
    from nst_jax.export.families import metadata
    from nst_jax.export.graph import Graph, image_shape

    del encoder_size  # no style encoder
    p = jax.tree.map(lambda v: np.asarray(v, np.float32), stylizer.params)
    spec = stylizer.static
    s = num_styles(p)
    g = Graph("nst_jax_toy")
    x = g.to_nchw(g.add_input("image", image_shape(layout, size)), layout)
    ins = {"image": f"{layout} float32 RGB in [0, 1]"}
    w = None if condition is None else np.asarray(condition["weights"], np.float32).reshape(s)
    h = g.conv(x, p["conv_in"]["kernel"], p["conv_in"]["bias"])
    gamma, beta = p["norm"]["gamma"], p["norm"]["beta"]
    if w is None:
        w_in = g.add_input("style_weights", ["n", s])
        ins["style_weights"] = f"(N, {s}) float32 weights over the style table"
        h = g.affine(g.instance_norm(h, WIDTH, spec.eps), g.dense(w_in, gamma), g.dense(w_in, beta))
    else:
        h = g.instance_norm(h, WIDTH, spec.eps, w @ gamma, w @ beta)
    h = g.op("Sigmoid", [g.conv(g.relu(h), p["conv_out"]["kernel"], p["conv_out"]["bias"])], "sigmoid")
    g.add_output(g.from_nchw(h, layout), "stylized", image_shape(layout, size))
    style = style_desc or ("input: style_weights" if w is None else "baked: weights " + ",".join(f"{v:.6g}" for v in w))
    meta = metadata(stylizer.family.name, layout, ins, {"stylized": f"{layout} float32 RGB in [0, 1]"}, style,
                    num_styles=str(s))
    return [("stylizer", g, meta)]


# ----------------------------------------------------------------------------------------------------
# The family contract: training


def validate_config(config: Any) -> None:
    """Errors naming `config.toy.<key>`."""
    from nst_jax.errors import NstError

    if num_styles_of(config) < 1:
        raise NstError(f"config.toy.num_styles must be positive, got {num_styles_of(config)}")
    if colors_of(config).shape != (num_styles_of(config), 3):
        raise NstError(f"config.toy.colors must hold {num_styles_of(config)} RGB triples")


def setup(config: Any) -> tuple[dict, ToyLoss]:
    """The target colours (frozen) and the static loss."""
    static = ToyLoss(num_styles_of(config), float(config.content_weight), float(config.style_weight), spec_of(config))
    return {"colors": jnp.asarray(colors_of(config))}, static


def loss_fn(params: Mapping[str, Any], frozen: Mapping[str, Any], batch: Mapping[str, Any], static: ToyLoss
            ) -> tuple[Any, dict]:
    """Content MSE plus the distance of the output's mean colour to the style row's target colour."""
    content = jnp.asarray(batch["content"], jnp.float32)
    w = jax.nn.one_hot(batch["style_id"], static.num_styles, dtype=jnp.float32)
    g, _ = forward(params, content, w, static.spec)
    loss_c = jnp.float32(static.content_weight) * jnp.mean(jnp.square(g - content))
    target = jnp.take(frozen["colors"], batch["style_id"], axis=0)
    loss_s = jnp.float32(static.style_weight) * jnp.mean(jnp.square(jnp.mean(g, axis=(1, 2)) - target))
    loss = loss_c + loss_s
    return loss, {"loss": loss, "loss_content": loss_c, "loss_style": loss_s}


def open_streams(config: Any, on_skip: Any) -> tuple[dict, dict]:
    """The content stream, a random style row per example, and the sample inputs."""
    from nst_jax.training import IndexStream, open_image_streams

    streams, samples = open_image_streams(config, ("content",), on_skip)
    s = num_styles_of(config)
    seed = int(np.random.SeedSequence([int(config.seed), 1]).generate_state(1)[0])
    streams["style_id"] = IndexStream(s, int(config.batch_size) // jax.process_count(), seed, jax.process_index())
    n = samples["content"].shape[0]
    return streams, {"content": samples["content"], "style_id": (np.arange(n) % s).astype(np.int32)}


def sample(params: Mapping[str, Any], frozen: Any, samples: Mapping[str, Any], static: ToyLoss) -> Any:
    """Each sample content image with the style row of the same index."""
    del frozen
    w = jax.nn.one_hot(samples["style_id"], static.num_styles, dtype=jnp.float32)
    return forward(params, samples["content"], w, static.spec)[0]


FAMILY = Family(
    name=NAME, caps=CAPS, init_params=init_params, setup=setup, open_streams=open_streams, loss_fn=loss_fn,
    sample=sample, condition=condition, stylize=stylize, stylize_masked=stylize_masked, blend=blend,
    validate_config=validate_config, inference_setup=inference_setup, num_styles=num_styles,
    export=Export("toy_family:toy_export"), stats_forward=stats_forward, video_strength=0.5,
    alpha_pixels=True,  # alpha mixes pixels, as CIN's: so does a strength map
    # two 3x3 convolutions: a receptive-field radius of 2 px, any alignment
    tiling=Tiling(halo=2, align=1, bytes_per_pixel=200.0, moments=tile_moments, finish=tile_finish),
)
