"""Shared test setup: strict dtype promotion, fast compiles, and small deterministic inputs."""

from __future__ import annotations

import gc
import inspect
import os

# Keep the suite hermetic: no download may ever leave this machine, and caches go to a temp dir per session.
os.environ.setdefault("NST_JAX_DEMO", "tiny")
os.environ["NST_JAX_OFFLINE"] = "1"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
# Implicit rank promotion hides shape bugs (a (N,) against an (N, 1) broadcasts to (N, N)): make it an error.
jax.config.update("jax_numpy_rank_promotion", "raise")
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


def pytest_collection_modifyitems(config, items):
    """Tests that start processes, run notebooks or drive a browser are `slow`, so `pytest -m "not slow"` is the
    fast loop (CI still runs everything)."""
    slow_files = {"test_notebooks.py", "test_serve_browser.py"}
    for item in items:
        if item.path.name in slow_files or _starts_processes(item):
            item.add_marker(pytest.mark.slow)


def _starts_processes(item) -> bool:
    fn = getattr(item, "function", None)
    try:
        source = inspect.getsource(fn)
    except (TypeError, OSError):
        return False
    return "subprocess." in source or "sys.executable" in source


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module.

    Every compiled CPU program keeps its own memory mappings (tens for a Winograd layer at
    jax_disable_most_optimizations); a whole-suite process otherwise reaches the kernel's vm.max_map_count
    (65530) and XLA's compiler crashes on the next mmap.
    """
    yield
    jax.clear_caches()
    gc.collect()
