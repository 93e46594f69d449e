"""configs/: the shared defaults name no family, each recipe validates and carries only its family's keys."""

from __future__ import annotations

import importlib

import pytest

import helpers
from nst_jax import models, train

RECIPES = ("adain", "cin", "arbitrary", "tiny", "tiny_cin", "tiny_arbitrary")
# AdaIN's loss keys: read by the AdaIN family only.
ADAIN_ONLY = ("content_weight", "style_weight", "convolutions")


def _config(name: str):
    return importlib.import_module(f"configs.{name}").get_config()


def test_default_is_family_neutral():
    c = _config("default")
    assert "model" not in c
    for key in ADAIN_ONLY + ("vgg_weights", "style_layers", "style_layer_weights", "style_data", "cin",
                             "arbitrary", "style_images"):
        assert key not in c, key


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_validates(name, tmp_path):
    c = _config(name)
    if "style_images" in c:  # CIN checks its table against the style folder: one picture per row
        c.style_images = helpers.write_images(tmp_path / "styles", int(c.cin.num_styles), seed=0, size=16)
    family = models.get(c.model)
    train.validate_config(c, family)
    shared = set(_config("default"))
    own = set(c) - shared
    assert "model" in own and "vgg_weights" in own
    if c.model != "adain":
        assert not own & set(ADAIN_ONLY), own & set(ADAIN_ONLY)


def test_adain_keeps_the_keys_users_rely_on():
    c = _config("adain")
    for key in ("num_steps", "batch_size", "image_size", "learning_rate", "style_weight", "content_weight", "seed",
                "log_every", "checkpoint_every", "vgg_weights", "content_data", "style_data"):
        assert key in c, key
    assert (c.content_weight, c.style_weight, c.convolutions) == (1.0, 10.0, "winograd")
