"""AdaIN arbitrary style transfer (Huang & Belongie 2017): the first model family (see `nst_jax.models`).

The network: VGG19 (AdaIN's `vgg_normalised` identity) up to relu4_1 -> AdaIN -> the mirrored decoder. Every
function here is pure and jit-able; `nst_jax.stylize.Stylizer` jits them once per input shape and adds
caching, blending, masks and colour control around them, and `nst_jax.train` runs `loss_fn`.

Statistics follow pytorch-AdaIN's `calc_mean_std` (unbiased variance over the spatial positions, eps 1e-5), so
a port of its released weights reproduces its pictures number for number.

Training (pytorch-AdaIN's `net.Net.forward` + Adam), for content images c and style images s:
  t = AdaIN(enc(c).relu4_1, enc(s).relu4_1)            (no gradient flows into t, as in pytorch-AdaIN)
  g = decoder(t)
  loss = content_weight * MSE(enc(g).relu4_1, t)
       + style_weight * sum_l w_l * [MSE(mean enc(g).l, mean enc(s).l) + MSE(std enc(g).l, std enc(s).l)]
over l in relu1_1..relu4_1, then an Adam update of the decoder with lr / (1 + lr_decay * step).

The package: `net` (the network and the inference contract), `train` (the training contract), `stats` (the
statistics API). This module assembles the family (`FAMILY`), keeps `loaded` (it needs `FAMILY`) and exposes
its public API.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from nst_jax.models import Caps, Export, Family
from nst_jax.models import decoder as dec
from nst_jax.models.adain.net import (
    CHANNELS,
    ENCODER,
    EPS,
    SCALE,
    TAP,
    blend_statistics,
    condition,
    content_features,
    decode,
    feature_grid,
    flops,
    mix_alpha,
    own_condition,
    region_adain,
    region_apply,
    region_stats,
    stats_forward,
    style_statistics,
    stylize,
    stylize_condition,
    stylize_masked,
    stylize_regions,
    upsample_conv,
)
from nst_jax.models.adain.stats import StyleStats, blend_stats, stats_condition
from nst_jax.models.adain.tiles import TILING
from nst_jax.models.adain.train import (
    LossConfig,
    _encoder_trees,
    compute_loss,
    encoder_setup,
    inference_setup,
    init_params,
    loss_fn,
    open_streams,
    sample,
    setup,
    stylize_samples,
    validate_config,
)
from nst_jax.typing import Params
from nst_jax.vgg import VGGSpec

NAME = "adain"
CAPS = Caps(style_images=True, style_table=False, alpha=True, masks=True, color_modes=("luminance", "histogram"),
            strength_map=True)

FAMILY = Family(
    name=NAME, caps=CAPS, init_params=init_params, setup=setup, open_streams=open_streams, loss_fn=loss_fn,
    sample=sample, condition=condition, stylize=stylize_condition, stylize_masked=stylize_masked,
    inference_setup=inference_setup, encoder_setup=encoder_setup, stats_type=StyleStats,
    validate_config=validate_config,
    # bf16 weights and activations, float32 statistics: measured within tolerance (tests/test_ops.py)
    dtypes=("float32", "bfloat16"),
    # no LiteRT: onnx2tf was not tried on the VGG graph
    export=Export("nst_jax.export.families:adain_export"),
    # Smoothing relu4_1 is free (one encoder and one decoder pass) and lowered flicker (docs/video.md).
    tiling=TILING, stats_forward=stats_forward, video_strength=0.5,
    # A strength map places the content's own relu4_1 statistics (its region's) as the second style.
    own_condition=own_condition,
)


def loaded(vgg_params: Params, vgg_spec: VGGSpec, decoder_params: Params, origin: str = "parameter trees") -> Any:
    """A `nst_jax.models.open.Loaded` AdaIN model from parameter trees (`Stylizer(vgg, spec, decoder)`).

    Raises:
      WeightsError: the trees do not fit the networks.
    """
    from nst_jax.models.open import Loaded

    dec.check_decoder_params(decoder_params)
    params = {k: {leaf: jnp.asarray(v, jnp.float32) for leaf, v in p.items()} for k, p in decoder_params.items()}
    return Loaded(FAMILY, params, {"vgg": _encoder_trees(vgg_params, vgg_spec)}, vgg_spec, origin)


__all__ = [
    "CAPS", "CHANNELS", "ENCODER", "EPS", "FAMILY", "SCALE", "TAP", "LossConfig", "StyleStats", "blend_statistics",
    "blend_stats", "compute_loss", "condition", "content_features", "decode", "encoder_setup", "feature_grid",
    "flops", "init_params", "loaded", "loss_fn", "mix_alpha", "own_condition", "region_adain", "region_apply",
    "region_stats", "sample", "setup", "stats_condition", "stats_forward", "style_statistics",
    "stylize", "stylize_condition", "stylize_masked", "stylize_regions", "stylize_samples", "upsample_conv",
]
