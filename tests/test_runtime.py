"""nst_jax.runtime: one reading of NST_JAX_OFFLINE for weights and data, and the allocator switch."""

from __future__ import annotations

import pytest

from nst_jax import runtime
from nst_jax.errors import DownloadError
from nst_jax.weights import download
from nst_jax.weights.registry import Source


@pytest.mark.parametrize("value", ["1", "true", "yes", "on", "ON", " Yes ", "True"])
def test_offline_values(monkeypatch, value):
    monkeypatch.setenv("NST_JAX_OFFLINE", value)
    assert runtime.offline()


@pytest.mark.parametrize("value", ["", "0", "false", "no", "off", "2"])
def test_online_values(monkeypatch, value):
    monkeypatch.setenv("NST_JAX_OFFLINE", value)
    assert not runtime.offline()


def test_unset_is_online(monkeypatch):
    monkeypatch.delenv("NST_JAX_OFFLINE", raising=False)
    assert not runtime.offline()


def test_weights_obey_the_same_flag(monkeypatch):
    """`on` keeps weight downloads offline; `nst_jax.data.open_source` reads it the same way (test_data.py)."""
    monkeypatch.setenv("NST_JAX_OFFLINE", "on")
    source = Source(name="x", url="http://127.0.0.1:9/x.bin", filename="x.bin", kind="vgg19", fmt="torchvision",
                    spec="torchvision")
    with pytest.raises(DownloadError, match="offline"):
        download.fetch("x", source=source)


def test_tune_allocator_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("NST_JAX_MALLOC", "default")
    assert runtime.tune_allocator() is False


def test_runtime_does_not_import_jax():
    import subprocess
    import sys

    code = "import sys, nst_jax.runtime; sys.exit('jax' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def _entry_ops(compiled_text: str) -> str:
    """The ENTRY computation of an optimised HLO module (fusions' bodies excluded)."""
    return compiled_text[compiled_text.index("\nENTRY"):]


def _small_conv():
    import jax.numpy as jnp
    from jax import lax

    def f(x, k):
        return lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    return f, (jnp.ones((1, 34, 34, 32)), jnp.ones((3, 3, 32, 32)))


def test_cpu_compiler_options_by_backend_and_env(monkeypatch):
    monkeypatch.delenv(runtime.CPU_CONVOLUTIONS_ENV, raising=False)
    assert runtime.cpu_compiler_options(runtime.EIGEN_CONVOLUTIONS) == runtime.EIGEN_CONVOLUTIONS
    assert runtime.cpu_compiler_options(None) == {}
    monkeypatch.setenv(runtime.CPU_CONVOLUTIONS_ENV, "ynnpack")
    assert runtime.cpu_compiler_options(runtime.EIGEN_CONVOLUTIONS) == {}
    monkeypatch.setenv(runtime.CPU_CONVOLUTIONS_ENV, "Eigen")
    assert runtime.cpu_compiler_options(None) == runtime.EIGEN_CONVOLUTIONS


def test_jit_sends_convolutions_to_xla_with_eigen_options(monkeypatch):
    """With `EIGEN_CONVOLUTIONS` the convolution is XLA's own instruction; with XLA's defaults YNNPACK takes it."""
    monkeypatch.delenv(runtime.CPU_CONVOLUTIONS_ENV, raising=False)
    f, args = _small_conv()
    eigen = _entry_ops(runtime.jit(f, runtime.EIGEN_CONVOLUTIONS).lower(*args).compile().as_text())
    default = _entry_ops(runtime.jit(f).lower(*args).compile().as_text())
    assert " convolution(" in eigen and "ynn_fusion" not in eigen
    assert " convolution(" not in default and "ynn_fusion" in default
    monkeypatch.setenv(runtime.CPU_CONVOLUTIONS_ENV, "ynnpack")
    opted_out = _entry_ops(runtime.jit(f, runtime.EIGEN_CONVOLUTIONS).lower(*args).compile().as_text())
    assert " convolution(" not in opted_out


def test_cin_inference_programs_compile_with_the_family_options(monkeypatch):
    """The Stylizer's CIN program carries `cin.FAMILY.compiler_options`: all 18 convolutions are XLA's own
    (with XLA's defaults, YNNPACK takes all but the two smallest)."""
    import jax
    import jax.numpy as jnp

    from nst_jax import stylize
    from nst_jax.models import cin
    from nst_jax.models.cin import spec as cin_spec

    monkeypatch.delenv(runtime.CPU_CONVOLUTIONS_ENV, raising=False)
    assert cin.FAMILY.compiler_options == runtime.EIGEN_CONVOLUTIONS
    spec = cin.preset("multistyle26", 2)
    params = cin.init_params(jax.random.key(0), spec)
    fn = stylize._jitted(cin.FAMILY, "stylize")
    text = fn.lower(params, {}, jnp.zeros((1, 32, 32, 3)), {"weights": jnp.ones((1, 2)) / 2}, jnp.ones((1,)),
                    static=spec).compile().as_text()
    assert _entry_ops(text).count(" convolution(") == len(cin_spec.layers(spec)) == 18
