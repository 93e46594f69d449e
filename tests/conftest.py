"""Shared test setup: strict dtype promotion, fast compiles, and small deterministic inputs."""

from __future__ import annotations

import os

# Keep the suite hermetic: no download may ever leave this machine, and caches go to a temp dir per session.
os.environ.setdefault("NST_JAX_DEMO", "tiny")
os.environ["NST_JAX_OFFLINE"] = "1"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
# Test inputs are tiny, so XLA's compile time dominates; skipping most optimisations halves the suite's wall time.
jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture(autouse=True)
def _nst_home(tmp_path_factory, monkeypatch):
    """Each test sees an empty weights cache unless it fills one."""
    home = tmp_path_factory.mktemp("nst_home")
    monkeypatch.setenv("NST_JAX_HOME", str(home))
    return home


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
