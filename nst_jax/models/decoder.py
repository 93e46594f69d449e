"""The AdaIN decoder: a mirror of VGG19 up to relu4_1 (Huang & Belongie 2017; pytorch-AdaIN's net.decoder).

Reflection padding, 3x3 convolutions, ReLU, nearest x2 upsampling; no normalisation and no output activation.
Parameters are the tree `{name: {"kernel": HWIO, "bias": (O,)}}` with the names of `DECODER_CONVS`, which are
pytorch-AdaIN's `decoder.pth` Sequential indices in order (0/2 skip pads and ReLUs; see `TORCH_INDEX`).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import ops
from nst_jax.params import check_params
from nst_jax.typing import Array

# (name, in_channels, out_channels, upsample x2 after the ReLU)
DECODER_CONVS: tuple[tuple[str, int, int, bool], ...] = (
    ("conv4_1", 512, 256, True),
    ("conv3_4", 256, 256, False),
    ("conv3_3", 256, 256, False),
    ("conv3_2", 256, 256, False),
    ("conv3_1", 256, 128, True),
    ("conv2_2", 128, 128, False),
    ("conv2_1", 128, 64, True),
    ("conv1_2", 64, 64, False),
    ("conv1_1", 64, 3, False),
)


# Index of each convolution in pytorch-AdaIN's `decoder` nn.Sequential (state_dict keys "N.weight"/"N.bias").
TORCH_INDEX: dict[str, int] = {
    "conv4_1": 1, "conv3_4": 5, "conv3_3": 8, "conv3_2": 11, "conv3_1": 14,
    "conv2_2": 18, "conv2_1": 21, "conv1_2": 25, "conv1_1": 28,
}


def expected_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
    """Shapes of every decoder parameter."""
    return {n: {"kernel": (3, 3, ci, co), "bias": (co,)} for n, ci, co, _ in DECODER_CONVS}


def check_decoder_params(params: Mapping) -> None:
    """Raise `WeightsError` naming every missing or mis-shaped decoder parameter."""
    check_params(params, expected_shapes(), "the AdaIN decoder")


def init_params(key: Array) -> dict:
    """PyTorch's default Conv2d initialisation (kaiming_uniform with a=sqrt(5)): U(+-1/sqrt(fan_in)) for both."""
    params = {}
    keys = jax.random.split(key, 2 * len(DECODER_CONVS))
    for i, (name, cin, cout, _) in enumerate(DECODER_CONVS):
        bound = np.float32(1.0 / np.sqrt(cin * 9))
        params[name] = {
            "kernel": jax.random.uniform(keys[2 * i], (3, 3, cin, cout), jnp.float32, -bound, bound),
            "bias": jax.random.uniform(keys[2 * i + 1], (cout,), jnp.float32, -bound, bound),
        }
    return params


def decode(params: Mapping[str, Mapping[str, Array]], t: Array, *, conv: ops.ConvFn = ops.conv_winograd,
           fused_upsample: bool = False) -> Array:
    """Decode relu4_1-like features (N, h, w, 512) into images (N, 8h, 8w, 3), unclipped.

    The one decoder walk; its speed tricks are arguments. The computation runs in `t.dtype` (bf16 features for
    bf16 compute).

    Args:
      params: the decoder tree.
      t: (N, h, w, 512) features.
      conv: the convolution strategy (`nst_jax.ops`; `ops.conv_plain` by default).
      fused_upsample: compute each upsampling and the convolution after it as `ops.upsample_conv` at the low
        resolution (same result, 16/36 of the multiply-adds; inference).
    """
    h = t
    dtype = t.dtype
    upsampled = False
    last = len(DECODER_CONVS) - 1
    for i, (name, _, _, up) in enumerate(DECODER_CONVS):
        layer = {k: v.astype(dtype) for k, v in params[name].items()}
        if upsampled:
            h = ops.upsample_conv(h, layer["kernel"], layer["bias"])
        else:
            h = conv(h, layer, "reflect")
        if i < last:
            h = jax.nn.relu(h)
        upsampled = False
        if up:
            if fused_upsample:
                upsampled = True
            else:
                h = ops.upsample_nearest(h, 2)
    return h
