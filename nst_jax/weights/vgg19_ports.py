"""Ports of every public VGG19 / AdaIN-decoder weight format to nst-jax parameter trees: the name maps and
layouts alone, from arrays already read (`nst_jax.weights.ports` reads the files and loads by name).

Each port maps a source's names to `{convB_I: {"kernel": HWIO, "bias": (O,)}}` (plus AdaIN's `conv0`), pairs
it with the source's `VGGSpec` (input scaling, channel order, padding, pooling), and checks the structure with
`check_vgg_params` / `check_decoder_params`, so a wrong file fails with the names and shapes that do not fit.

Sources (see docs/weights.md):
- torchvision: `features.N.weight|bias` (or a bare `features` state_dict `N.weight`), OIHW; `classifier.*`
  ignored.
- pytorch-AdaIN `vgg_normalised.pth`: nn.Sequential `N.weight`; 0 is the 1x1 `conv0`, then per convolution
  [ReflectionPad2d, Conv2d, ReLU] and a MaxPool2d(ceil_mode=True) after each block. Files truncated after any
  convolution (e.g. at relu4_1) are accepted.
- pytorch-AdaIN `decoder.pth`: `nst_jax.models.decoder.TORCH_INDEX`.
- Keras `vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5`: layers `blockB_convC`, kernels already HWIO.

A state_dict's source is told from its key patterns (`classify_state_dict`), never from the file's name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from nst_jax.errors import WeightsError
from nst_jax.models import decoder as decoder_model
from nst_jax.typing import NumpyParams as Params
from nst_jax.vgg import BLOCKS, CONVS, SPECS, VGGSpec, check_vgg_params


def torchvision_indices() -> dict[str, int]:
    """Index of each conv in torchvision's `vgg19().features` ([Conv, ReLU] per conv, MaxPool per block)."""
    out, i = {}, 0
    for b, (_, n) in enumerate(BLOCKS, start=1):
        for c in range(1, n + 1):
            out[f"conv{b}_{c}"] = i
            i += 2
        i += 1
    return out


def adain_indices() -> dict[str, int]:
    """Index of each convolution in pytorch-AdaIN's `net.vgg` Sequential (see module docstring)."""
    out, i = {"conv0": 0}, 1
    for b, (_, n) in enumerate(BLOCKS, start=1):
        for c in range(1, n + 1):
            out[f"conv{b}_{c}"] = i + 1  # after its ReflectionPad2d
            i += 3
        i += 1
    return out


def _hwio(w: np.ndarray) -> np.ndarray:
    # Leave anything that is not 4-D alone so the structure check reports its real shape.
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0))) if w.ndim == 4 else w


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _deepest_tap(params: Mapping[str, Any]) -> str:
    """The ReLU after the deepest convolution present (where a truncated file ends)."""
    present = [name for name, _, _ in CONVS if name in params]
    if not present:
        raise WeightsError("no VGG19 convolution found in the weights")
    return "relu" + present[-1][4:]


def _strip_prefix(sd: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return dict(sd)


def classify_state_dict(sd: Mapping[str, np.ndarray]) -> str:
    """Which port a PyTorch state_dict belongs to: "torchvision", "adain", "adain-decoder" or "unknown"."""
    sd = _strip_prefix(sd, "module.")  # nn.DataParallel
    keys = set(sd)
    if any(k.startswith("features.") for k in keys):
        return "torchvision"
    if keys and all(re.fullmatch(r"\d+\.(weight|bias)", k) for k in keys):
        w0, w1 = sd.get("0.weight"), sd.get("1.weight")
        if w0 is not None and w0.shape == (3, 3, 1, 1):
            return "adain"
        if w0 is not None and w0.shape == (64, 3, 3, 3):
            return "torchvision"  # the state_dict of `vgg19().features` alone
        if w1 is not None and w1.shape[:2] == (256, 512):
            return "adain-decoder"
    return "unknown"


def _describe_unknown(sd: Mapping[str, np.ndarray]) -> str:
    shown = ", ".join(f"{k} {tuple(v.shape)}" for k, v in list(sd.items())[:4])
    more = ", ..." if len(sd) > 4 else ""
    return f"a state_dict this port does not recognise ({len(sd)} tensors: {shown}{more})"


def _port_indexed(sd: Mapping[str, np.ndarray], indices: Mapping[str, int], prefix: str, what: str,
                  ignore: tuple[str, ...] = ()) -> Params:
    by_index = {v: k for k, v in indices.items()}
    params: Params = {}
    unexpected = []
    for key, value in sd.items():
        if key.startswith(ignore):
            continue
        m = re.fullmatch(re.escape(prefix) + r"(\d+)\.(weight|bias)", key)
        if not m or int(m.group(1)) not in by_index:
            unexpected.append(key)
            continue
        name = by_index[int(m.group(1))]
        leaf = "kernel" if m.group(2) == "weight" else "bias"
        params.setdefault(name, {})[leaf] = _f32(_hwio(value) if leaf == "kernel" else value)
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (", ..." if len(unexpected) > 5 else "")
        raise WeightsError(f"weights do not fit {what}: unexpected {shown}")
    return params


def port_torchvision(sd: Mapping[str, np.ndarray]) -> tuple[Params, VGGSpec]:
    """torchvision `vgg19` state_dict (or its `features` alone) -> (params, SPECS["torchvision"])."""
    sd = _strip_prefix(sd, "module.")
    prefix = "features." if any(k.startswith("features.") for k in sd) else ""
    params = _port_indexed(sd, torchvision_indices(), prefix, "VGG19 (torchvision)", ignore=("classifier.",))
    spec = SPECS["torchvision"]
    check_vgg_params(params, spec, _deepest_tap(params))
    return params, spec


def port_adain_vgg(sd: Mapping[str, np.ndarray]) -> tuple[Params, VGGSpec]:
    """pytorch-AdaIN `vgg_normalised.pth` state_dict (full or truncated) -> (params, SPECS["adain"])."""
    params = _port_indexed(_strip_prefix(sd, "module."), adain_indices(), "", "VGG19 (adain)")
    spec = SPECS["adain"]
    check_vgg_params(params, spec, _deepest_tap(params))
    return params, spec


def port_adain_decoder(sd: Mapping[str, np.ndarray]) -> Params:
    """pytorch-AdaIN `decoder.pth` state_dict -> decoder params (see nst_jax.models.decoder)."""
    params = _port_indexed(_strip_prefix(sd, "module."), decoder_model.TORCH_INDEX, "", "the AdaIN decoder")
    decoder_model.check_decoder_params(params)
    return params


def _keras_name(layer: str) -> str | None:
    m = re.fullmatch(r"block(\d)_conv(\d)", layer)
    return f"conv{m.group(1)}_{m.group(2)}" if m else None


def _keras_names(layers: Mapping[str, list[np.ndarray]]) -> dict[str, str]:
    """Keras layer -> our conv name: blockB_convC, or (Keras 3 .weights.h5) conv2d, conv2d_1, ... in order."""
    named = {k: n for k in layers if (n := _keras_name(k))}
    if named:
        return named
    convs = [k for k in layers if re.fullmatch(r"conv2d(_\d+)?", k)]  # already in creation order
    if len(convs) > len(CONVS):
        return {}
    return {k: name for k, (name, _, _) in zip(convs, CONVS[: len(convs)], strict=True)}


def keras_conv_params(layers: Mapping[str, list[np.ndarray]], names: Mapping[str, str], what: str) -> Params:
    """{our name: {"kernel", "bias"}} of the Keras layers `names` maps (HWIO kernels as Keras stores them);
    a mapped layer that is not one kernel and one bias is refused, naming `what` and the layer."""
    params: Params = {}
    for layer, arrays in layers.items():
        name = names.get(layer)
        if name is None:
            continue
        kernels = [a for a in arrays if a.ndim == 4]
        biases = [a for a in arrays if a.ndim == 1]
        if len(arrays) != 2 or len(kernels) != 1 or len(biases) != 1:
            shapes = ", ".join(str(tuple(a.shape)) for a in arrays)
            raise WeightsError(f"{what} layer {layer} holds weights of shapes {shapes}, expected a kernel "
                               "and a bias")
        params[name] = {"kernel": _f32(kernels[0]), "bias": _f32(biases[0])}
    return params


def port_keras(layers: Mapping[str, list[np.ndarray]]) -> tuple[Params, VGGSpec]:
    """Keras VGG19 layer weights ({blockB_convC: [kernel, bias]}) -> (params, SPECS["keras"]).

    Dense layers of a with-top file (fc1, fc2, predictions) are ignored.
    """
    params = keras_conv_params(layers, _keras_names(layers), "Keras")
    spec = SPECS["keras"]
    check_vgg_params(params, spec, _deepest_tap(params))
    return params, spec


__all__ = [
    "adain_indices", "classify_state_dict", "keras_conv_params", "port_adain_decoder", "port_adain_vgg",
    "port_keras", "port_torchvision", "torchvision_indices",
]
