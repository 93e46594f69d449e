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
