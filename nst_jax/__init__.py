"""nst-jax: neural style transfer in JAX (AdaIN, conditional instance norm, Gatys et al.)."""

__version__ = "0.1.0"
