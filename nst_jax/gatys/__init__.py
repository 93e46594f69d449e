"""Gatys et al. (2015) neural style transfer by optimisation of the pixels, on Optax.

- `config`: `GatysConfig`, `LossWeights`, `SOURCE_DEFAULTS` (default weights per VGG19 source).
- `objective`: softclip, the targets and the weighted loss terms; its docstring holds the formulas.
- `solve`: the optimisers, the compiled chunks of iterations and the multi-scale driver `stylize`.

The user guide, with the references behind every default, is docs/gatys.md.
"""

from nst_jax.gatys.config import (
    DEFAULT_CONTENT_LAYERS,
    DEFAULT_STYLE_LAYERS,
    NEURAL_STYLE_DEFAULTS,
    SOURCE_DEFAULTS,
    GatysConfig,
    LossWeights,
    layer_weight_values,
)
from nst_jax.gatys.objective import (
    SOFTCLIP_BETA,
    Targets,
    blend_grams,
    gram,
    guided_gram,
    layer_grid_masks,
    loss_terms,
    make_targets,
    prepare_vgg,
    softclip,
    softclip_inverse,
)
from nst_jax.gatys.solve import GatysResult, GatysStep, initial_image, stylize
from nst_jax.image import fit_max_side  # where it lives now; kept here for existing callers

__all__ = [
    "DEFAULT_CONTENT_LAYERS",
    "DEFAULT_STYLE_LAYERS",
    "NEURAL_STYLE_DEFAULTS",
    "SOFTCLIP_BETA",
    "SOURCE_DEFAULTS",
    "GatysConfig",
    "GatysResult",
    "GatysStep",
    "LossWeights",
    "Targets",
    "blend_grams",
    "fit_max_side",
    "gram",
    "guided_gram",
    "initial_image",
    "layer_grid_masks",
    "layer_weight_values",
    "loss_terms",
    "make_targets",
    "prepare_vgg",
    "softclip",
    "softclip_inverse",
    "stylize",
]
