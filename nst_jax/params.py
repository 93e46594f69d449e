"""Checking parameter trees against the structure a model expects (names and shapes), failing loudly."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from nst_jax.errors import WeightsError

Shapes = Mapping[str, Mapping[str, tuple[int, ...]]]


def check_params(params: Mapping[str, Mapping[str, object]], expected: Shapes, what: str) -> None:
    """Raise `WeightsError` naming every missing, unexpected or mis-shaped entry of a two-level tree.

    Args:
      params: {layer: {"kernel": array, "bias": array}}.
      expected: {layer: {"kernel": shape, "bias": shape}}.
      what: the model's name for the message, e.g. "VGG19 (adain)".
    """
    problems: list[str] = []
    for layer, leaves in expected.items():
        if layer not in params:
            problems.append(f"missing {layer}")
            continue
        for leaf, shape in leaves.items():
            got = params[layer].get(leaf) if isinstance(params[layer], Mapping) else None
            if got is None:
                problems.append(f"missing {layer}/{leaf}")
            elif tuple(np.shape(got)) != tuple(shape):
                problems.append(f"{layer}/{leaf} has shape {tuple(np.shape(got))}, expected {tuple(shape)}")
        extra = set(params[layer]) - set(leaves) if isinstance(params[layer], Mapping) else set()
        problems += [f"unexpected {layer}/{k}" for k in sorted(extra)]
    problems += [f"unexpected {k}" for k in sorted(set(params) - set(expected))]
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise WeightsError(f"weights do not fit {what}: {shown}")
