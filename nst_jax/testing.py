"""Random-weight models for tests, the notebooks' tiny mode and `serve.py --random-weights`: one builder.

Untrained networks paint near-black smudges once clipped to [0, 1]. `random_adain` draws He-scaled weights
(with AdaIN's real preprocessing convolution, so activations have real magnitudes) and calibrates the decoder's
last layer on probe images so stylizations are centred on mid-grey with a chosen spread: pictures then look
like coloured textures that follow the content and the style. The images are abstract, not art.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

# pytorch-AdaIN's conv0 (x255, RGB -> BGR, minus the Caffe mean), the preprocessing its encoder's weights carry.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def random_tree(shapes: Mapping[str, Mapping[str, tuple[int, ...]]], seed: int, *, init: str = "he") -> dict:
    """Random {layer: {"kernel", "bias"}} parameters for `shapes`, drawn with NumPy (no compile).

    Args:
      shapes: {layer: {"kernel": HWIO shape, "bias": shape}}.
      seed: NumPy generator seed.
      init: "he" (He-normal kernels, zero biases: VGG's), "torch" (PyTorch's Conv2d default U(+-1/sqrt(fan_in))
        for both), or "torch_he" (the same uniform scaled by sqrt(6) to He's variance 2/fan_in).
    """
    rng = np.random.default_rng(seed)
    tree = {}
    for name, s in shapes.items():
        k = s["kernel"]
        fan_in = k[0] * k[1] * k[2]
        if init == "he":
            kernel = rng.standard_normal(k, np.float32) * np.float32(np.sqrt(2.0 / fan_in))
            bias = np.zeros(s["bias"], np.float32)
        elif init in ("torch", "torch_he"):
            bound = np.float32(1.0 / np.sqrt(fan_in))
            kernel = rng.uniform(-bound, bound, k).astype(np.float32)
            if init == "torch_he":
                kernel = kernel * np.float32(np.sqrt(6.0))
            bias = rng.uniform(-bound, bound, s["bias"]).astype(np.float32)
        else:
            raise ValueError(f"unknown init {init!r}; use he, torch or torch_he")
        tree[name] = {"kernel": kernel, "bias": bias}
    return tree


def default_probes(size: int = 32) -> np.ndarray:
    """Calibration images: a gradient and the live page's built-in patterns, each also darkened and brightened,
    so no camera frame or style saturates the output."""
    from nst_jax.serve.styles import builtin_patterns

    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / np.float32(size)
    probe = np.stack([x, y, 0.5 + 0.5 * np.sin(np.float32(12.0) * (x + y))], -1)[None]
    imgs = np.concatenate([probe] + [img for _, img in builtin_patterns(size)])
    return np.concatenate([imgs, imgs * np.float32(0.3), imgs * np.float32(0.3) + np.float32(0.7)])


def random_adain(seed: int = 0, *, probes: np.ndarray | None = None, std: float = 0.2, dtype: Any = None):
    """An AdaIN `Stylizer` on random weights whose stylizations of `probes` have mean 0.5 and `std` per channel.

    Args:
      seed: seeds the encoder (seed) and the decoder (seed + 1).
      probes: (M, S, S, 3) images in [0, 1]: a few contents are stylized with every probe as the style, and
        the probes reconstructed, to calibrate (default: `default_probes()`).
      std: the calibrated per-channel standard deviation of the outputs.
      dtype: compute dtype (float32 by default).
    """
    import jax
    import jax.numpy as jnp

    from nst_jax import ops, vgg
    from nst_jax.models import decoder
    from nst_jax.stylize import Stylizer

    spec = vgg.SPECS["adain"]
    enc = random_tree(vgg.expected_shapes(spec, "relu4_1"), seed)
    kernel = np.zeros((1, 1, 3, 3), np.float32)
    for o in range(3):
        kernel[0, 0, 2 - o, o] = 255.0
    enc["conv0"] = {"kernel": kernel, "bias": -np.asarray(_CAFFE_MEAN_BGR, np.float32)}
    dec = random_tree(decoder.expected_shapes(), seed + 1, init="torch_he")
    imgs = default_probes() if probes is None else np.asarray(probes, np.float32)

    def outputs(e: Any, d: Any, im: Any) -> Any:
        f = vgg.encode(e, im, spec)["relu4_1"]
        mean, sd = ops.mean_std(f)
        c = f[::4]  # a few contents against every style
        m = f.shape[0]
        t = ops.adain_with_stats(jnp.repeat(c, m, axis=0), jnp.tile(mean, (c.shape[0], 1, 1, 1)),
                                 jnp.tile(sd, (c.shape[0], 1, 1, 1)))
        return decoder.decode(d, jnp.concatenate([f, t]))

    out = np.asarray(jax.jit(outputs)(enc, dec, jnp.asarray(imgs)))
    m, sd = out.mean(axis=(0, 1, 2)), out.std(axis=(0, 1, 2)) + np.float32(1e-6)
    g = (np.float32(std) / sd).astype(np.float32)
    last = decoder.DECODER_CONVS[-1][0]
    dec[last] = {"kernel": dec[last]["kernel"] * g,
                 "bias": ((dec[last]["bias"] - m) * g + np.float32(0.5)).astype(np.float32)}
    return Stylizer(enc, spec, dec, dtype=dtype or jnp.float32)


__all__ = ["default_probes", "random_adain", "random_tree"]
