"""Arbitrary style transfer (Ghiasi et al. 2017, Magenta's `arbitrary_image_stylization`), lite version.

A style image becomes a 100-d style vector through the style predictor (MobileNetV2 distilled from Inception-v3,
then a 1x1 "bottleneck" to 100 numbers); per normalisation layer, two 1x1 projections of the vector give the
(beta, gamma) of that layer's instance norm ("StyleNorm") in the transformer network. Everything is a pure
function of a plain dict tree (NHWC RGB in [0, 1] at every boundary):

    params = {
      "predictor":   {"Conv", "expanded_conv", "expanded_conv_1" .. "expanded_conv_16", "Conv_1"}:
                     each {"kernel": HWIO, "bias": (O,)} (MobileNetV2 blocks: "expand" (absent in the first),
                     "depthwise" (kernel (3, 3, 1, C)), "project"; batch norm folded into the biases),
      "bottleneck":  {"kernel": (1280, 100), "bias": (100,)},
      "style_params": {"residual": {"residual1".."residual5": {"conv1", "conv2"}}, "expand": {"conv1".."conv3"}}:
                     each {"beta": {"kernel": (100, C), "bias": (C,)}, "gamma": {...}},
      "transformer": {"contract": {"conv1".."conv3": {"kernel", "bias"}},
                      "residual": {"residual1".."residual5": {"conv1", "conv2": {"kernel"}}},
                      "expand": {"conv1".."conv3": {"kernel"}}},
    }

The transformer (lite: width 0.25 of Magenta's 32/64/128): reflect-padded convolutions throughout;
contract = 9x9 3->8, 3x3/2 8->16, 3x3/2 16->32, each + bias (batch norm folded) + ReLU; five residual blocks
x + SN(conv(ReLU(SN(conv(x))))) of 32 channels; expand = [nearest x2, 3x3 32->16, SN, ReLU], [nearest x2,
3x3 16->8, SN, ReLU], [9x9 8->3, SN, sigmoid]. SN(x) = (x - mean) / sqrt(var + 1e-5) * gamma + beta with the
biased per-image, per-channel moments over the spatial axes. The convolutions that feed a StyleNorm have no bias
(a per-channel constant would be cancelled by the norm anyway).

Sizes: the network downsamples by 4, so a content image is reflect-padded at the bottom and right to a multiple
of 4 (as the peer does for its 26-style network) and the output cropped back; any H, W >= `MIN_SIDE` runs at its
own size. The predictor runs at any size too, but the ported one was trained on 256 x 256 styles: `condition`
centre-crops a style image to a square and resizes it to `STYLE_SIZE` (Lanczos-3, antialiased: the peer uses
PIL's LANCZOS), as Magenta's `--style_square_crop` and the peer's `style_vector` do.

Strength (`alpha`): Magenta's and the peer's definition, alpha * style_vector + (1 - alpha) * content_vector, the
content vector being the predictor's vector of the content image itself, preprocessed like a style image.

Masks (`stylize_masked`): each style-normed layer mixes the K conditions' (gamma, beta) per pixel (as the
norm's scale gamma / sqrt(var + eps) and shift beta - mean * scale, which are affine in them), with the masks
averaged onto that layer's grid (1/4, 1/2 or full size), in one pass; pixels no mask covers get the content's
own vector (like AdaIN's masked stylization keeps the content features there).

Speed on XLA's CPU backend (same numbers, another order of summation): the 9x9 convolutions over 3 and 8
channels run on 2 x 2 blocks (`space_to_depth`: 5x5 taps over 4x the channels), the strided 3x3 ones as SAME
convolutions with the padded row cropped, nearest x2 + 3x3 as `ops.upsample_conv` at the low resolution, and the
predictor's depthwise convolutions as sums of shifted products (benchmarks/arbitrary.py).

The package: `params` (constants and the parameter tree), `predictor` (the style predictors and the static
`Net`), `net` (the transformer and the inference contract), `train` (the training contract). This module
assembles the family (`FAMILY`) and exposes its public API.
"""

from __future__ import annotations

from nst_jax.models import Export, Family
from nst_jax.models.arbitrary.net import (
    blend,
    condition,
    own_condition,
    stats_forward,
    stylize,
    stylize_masked,
    transform,
)
from nst_jax.models.arbitrary.params import BOTTLENECK, CAPS, NAME, STYLE_SIZE, init_params
from nst_jax.models.arbitrary.predictor import Net, predict, preprocess_style, style_vector
from nst_jax.models.arbitrary.tiles import TILING
from nst_jax.models.arbitrary.train import (
    inference_setup,
    loss_fn,
    open_streams,
    sample,
    setup,
    start_params,
    trainable_mask,
    validate_config,
)
from nst_jax.runtime import EIGEN_CONVOLUTIONS

FAMILY = Family(
    name=NAME, caps=CAPS, init_params=init_params, setup=setup, open_streams=open_streams, loss_fn=loss_fn,
    sample=sample, condition=condition, stylize=stylize, stylize_masked=stylize_masked, blend=blend,
    trainable_mask=trainable_mask, start_params=start_params, validate_config=validate_config,
    inference_setup=inference_setup, compiler_options=EIGEN_CONVOLUTIONS,
    export=Export("nst_jax.export.families:arbitrary_export", tflite=True,
                  tflite_encoder_size=(STYLE_SIZE, STYLE_SIZE)),
    # Smoothing costs a second pass and raised the measured flicker (docs/video.md): off unless asked.
    tiling=TILING, stats_forward=stats_forward, video_strength=0.0,
    # A strength map places the content's own style vector (alpha 0) as the second style.
    own_condition=own_condition,
)

__all__ = ["BOTTLENECK", "CAPS", "FAMILY", "NAME", "STYLE_SIZE", "Net", "blend", "condition", "inference_setup",
           "init_params", "loss_fn", "open_streams", "own_condition", "predict", "preprocess_style", "sample", "setup",
           "start_params", "stats_forward", "style_vector", "stylize", "stylize_masked", "trainable_mask", "transform",
           "validate_config"]
