"""Checking parameter trees against the structure a model expects (names and shapes), failing loudly."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from nst_jax.errors import WeightsError

Shapes = Mapping[str, Mapping[str, tuple[int, ...]]]


def tree_problems(params: Any, expected: Any, prefix: str = "") -> list[str]:
    """Every missing, unexpected or mis-shaped entry of `params` against `expected` (nested mappings of shapes,
    any depth), named by its path ("res3/norm1/gamma")."""
    problems: list[str] = []
    if not isinstance(params, Mapping):
        return [f"{prefix.rstrip('/') or 'the tree'} is not a mapping"]
    for key, want in expected.items():
        path = f"{prefix}{key}"
        if key not in params:
            problems.append(f"missing {path}")
            continue
        got = params[key]
        if isinstance(want, Mapping):
            problems += tree_problems(got, want, f"{path}/")
        elif got is None or isinstance(got, Mapping):
            problems.append(f"missing {path}")
        elif tuple(np.shape(got)) != tuple(want):
            problems.append(f"{path} has shape {tuple(np.shape(got))}, expected {tuple(want)}")
    problems += [f"unexpected {prefix}{k}" for k in sorted(set(params) - set(expected), key=str)]
    return problems


def check_tree(params: Any, expected: Any, what: str) -> None:
    """Raise `WeightsError` naming every missing, unexpected or mis-shaped entry (any depth; see `tree_problems`).

    Args:
      params: a nested mapping of arrays.
      expected: the same structure with shapes (tuples) as leaves, e.g. from `jax.eval_shape` of an init.
      what: the model's name for the message, e.g. "VGG19 (adain)".
    """
    problems = tree_problems(params, expected)
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise WeightsError(f"weights do not fit {what}: {shown}")


def check_params(params: Mapping[str, Mapping[str, object]], expected: Shapes, what: str) -> None:
    """Raise `WeightsError` naming every missing, unexpected or mis-shaped entry of a two-level tree.

    Args:
      params: {layer: {"kernel": array, "bias": array}}.
      expected: {layer: {"kernel": shape, "bias": shape}}.
      what: the model's name for the message, e.g. "VGG19 (adain)".
    """
    check_tree(params, expected, what)
