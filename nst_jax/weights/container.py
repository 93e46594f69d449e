"""Which container a weights file is, judged from its bytes (never its name): shared by the VGG19 / decoder
reader (`nst_jax.weights.ports`) and the VGG16 one (`nst_jax.weights.vgg16_ports`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from nst_jax.errors import WeightsError
from nst_jax.weights import keras_h5, npz, pth

CONTAINERS = ("hdf5", "npz", "pth")


def container(path: Path, accept: Sequence[str] = CONTAINERS, what: str = "a weights file",
              formats: str = "a PyTorch .pth, a Keras .h5 or a converted .npz") -> str:
    """"hdf5", "npz" or "pth" (those in `accept`), or a `WeightsError` naming the file.

    Args:
      path: the file.
      accept: the containers the caller reads, tried in this order.
      what, formats: what the caller reads, for the message when the file is none of them.
    """
    checks = {"hdf5": keras_h5.is_hdf5, "npz": npz.is_npz, "pth": pth.is_pth}
    if not path.exists():
        raise WeightsError(f"no such file: {path}")
    if path.is_dir():
        raise WeightsError(f"{path} is a directory, not a weights file")
    try:
        for kind in accept:
            if checks[kind](path):
                return kind
    except OSError as e:
        raise WeightsError(f"cannot read {path}: {e.strerror or e}") from None
    raise WeightsError(f"{path} is not {what} nst-jax reads ({formats})")
