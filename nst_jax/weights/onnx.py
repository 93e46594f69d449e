"""A safe, generic reader for ONNX files: the graph as plain data, the weights as NumPy (nothing is run).

An `.onnx` file is a protobuf message (`onnx.ModelProto`); parsing it runs nothing from the file. This module
parses it with the `onnx` package and returns plain Python: the initializers as NumPy arrays (through
`onnx.numpy_helper`), the node list with op types, inputs, outputs and decoded attributes, and the graph
inputs / outputs with their element types and shapes. No session, no custom-op library, no Python from the file.

External data (tensors stored beside the model, `data_location == EXTERNAL`) is read only from files inside the
model's own folder (no absolute paths, no `..`), within the file's bounds; anything else is a `WeightsError`.

Every problem a user can cause (missing file, not ONNX, truncated or corrupt protobuf, bad external data) is a
one-line `WeightsError` naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nst_jax.errors import WeightsError

# A real ONNX file has at least this much; anything shorter is not one (and protobuf would accept b"").
_MIN_BYTES = 16


@dataclass(frozen=True)
class OnnxValue:
    """A graph input or output.

    Attributes:
      name: the value's name in the graph.
      dtype: NumPy dtype name of the tensor elements ("float32", ...), or None when the file does not say.
      shape: one entry per axis: an int (fixed), a str (symbolic, e.g. "h"), or None (unknown); None for the
        whole shape when the rank is not given.
    """

    name: str
    dtype: str | None
    shape: tuple[int | str | None, ...] | None


@dataclass(frozen=True)
class OnnxNode:
    """One node: op type, input and output value names, and attributes decoded to Python / NumPy values.

    Attributes of TENSOR type come back as NumPy arrays, GRAPH type as `OnnxGraph`, strings as `str`.
    """

    op_type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: dict[str, Any]
    domain: str = ""


@dataclass(frozen=True)
class OnnxGraph:
    """A parsed ONNX graph.

    Attributes:
      initializers: {name: NumPy array} (the weights, in file order).
      nodes: the nodes in file (topological) order.
      inputs: graph inputs that are not initializers (what a caller feeds).
      outputs: graph outputs.
      opset: {domain: version} ("" is the default ONNX domain).
      producer: "name version" of the exporting tool, e.g. "pytorch 2.4.1".
      ir_version: the file's IR version.
    """

    initializers: dict[str, np.ndarray]
    nodes: tuple[OnnxNode, ...]
    inputs: tuple[OnnxValue, ...]
    outputs: tuple[OnnxValue, ...]
    opset: dict[str, int] = field(default_factory=dict)
    producer: str = ""
    ir_version: int = 0

    def op_counts(self) -> dict[str, int]:
        """{op type: how many nodes of it}, for quick layout checks."""
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
        return counts

    def input(self, name: str) -> OnnxValue:
        """The graph input called `name` (KeyError if absent)."""
        for v in self.inputs:
            if v.name == name:
                return v
        raise KeyError(name)


def _import_onnx():
    try:
        import onnx
    except ImportError:  # pragma: no cover - depends on the install
        raise WeightsError("reading .onnx files needs the 'onnx' package (pip install onnx)") from None
    return onnx


def _load_model(path: Path):
    """Parse the protobuf (external data not loaded) and check it is an ONNX model at all."""
    onnx = _import_onnx()
    from google.protobuf.message import DecodeError

    if not path.exists():
        raise WeightsError(f"no such file: {path}")
    if not path.is_file():
        raise WeightsError(f"{path}: not a file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise WeightsError(f"{path}: cannot be read ({e.strerror or e})") from None
    if len(data) < _MIN_BYTES:
        raise WeightsError(f"{path}: not an ONNX file ({len(data)} bytes)")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise WeightsError(f"{path}: not an ONNX file or corrupt ({type(e).__name__})") from None
    # Protobuf is lenient: arbitrary bytes can parse into a message with unknown fields. A model has an IR
    # version and a graph with something in it.
    g = model.graph
    if model.ir_version <= 0 or not (len(g.node) or len(g.initializer)):
        raise WeightsError(f"{path}: not an ONNX model (no IR version or an empty graph)")
    return model


def _safe_external_path(model_dir: Path, location: str, path: Path) -> Path:
    if not location or os.path.isabs(location) or any(part == ".." for part in Path(location).parts):
        raise WeightsError(f"{path}: external data location {location!r} is outside the model's folder")
    target = (model_dir / location).resolve()
    root = model_dir.resolve()
    if root not in target.parents:
        raise WeightsError(f"{path}: external data location {location!r} is outside the model's folder")
    if not target.is_file():
        raise WeightsError(f"{path}: external data file {location!r} is missing")
    return target


def _tensor_to_numpy(tensor, path: Path, model_dir: Path) -> np.ndarray:
    onnx = _import_onnx()
    from onnx import numpy_helper

    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        info = {e.key: e.value for e in tensor.external_data}
        target = _safe_external_path(model_dir, info.get("location", ""), path)
        try:
            offset = int(info.get("offset", 0) or 0)
            length = int(info["length"]) if info.get("length") else None
        except ValueError:
            raise WeightsError(f"{path}: tensor {tensor.name}: bad external data offset/length") from None
        size = target.stat().st_size
        if offset < 0 or offset > size or (length is not None and (length < 0 or offset + length > size)):
            raise WeightsError(f"{path}: tensor {tensor.name}: external data beyond the end of {target.name}")
        with open(target, "rb") as f:
            f.seek(offset)
            raw = f.read() if length is None else f.read(length)
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        del copy.external_data[:]
        copy.data_location = onnx.TensorProto.DEFAULT
        copy.raw_data = raw
        tensor = copy
    try:
        arr = numpy_helper.to_array(tensor)
    except (ValueError, TypeError, KeyError) as e:
        raise WeightsError(f"{path}: tensor {tensor.name!r} cannot be decoded ({e})".splitlines()[0]) from None
    return np.array(arr)  # own the memory (not a view of the protobuf's bytes)


def _value(v) -> OnnxValue:
    onnx = _import_onnx()
    t = v.type
    if not t.HasField("tensor_type"):
        return OnnxValue(v.name, None, None)
    tt = t.tensor_type
    dtype = None
    if tt.elem_type:
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
        except (KeyError, TypeError, ValueError):
            dtype = None
    shape = None
    if tt.HasField("shape"):
        dims: list[int | str | None] = []
        for d in tt.shape.dim:
            which = d.WhichOneof("value")
            dims.append(d.dim_value if which == "dim_value" else d.dim_param if which == "dim_param" else None)
        shape = tuple(dims)
    return OnnxValue(v.name, dtype, shape)


def _attribute(a, path: Path, model_dir: Path) -> Any:
    onnx = _import_onnx()
    A = onnx.AttributeProto
    if a.type == A.TENSOR:
        return _tensor_to_numpy(a.t, path, model_dir)
    if a.type == A.TENSORS:
        return [_tensor_to_numpy(t, path, model_dir) for t in a.tensors]
    if a.type == A.GRAPH:
        return _graph(a.g, path, model_dir)
    if a.type == A.GRAPHS:
        return [_graph(g, path, model_dir) for g in a.graphs]
    if a.type == A.STRING:
        return a.s.decode("utf8", "replace")
    if a.type == A.STRINGS:
        return [s.decode("utf8", "replace") for s in a.strings]
    if a.type == A.SPARSE_TENSOR:
        return a.sparse_tensor  # rare in exported models; left as the protobuf message
    return onnx.helper.get_attribute_value(a)


def _graph(g, path: Path, model_dir: Path, **meta: Any) -> OnnxGraph:
    inits = {}
    for t in g.initializer:
        inits[t.name] = _tensor_to_numpy(t, path, model_dir)
    nodes = tuple(
        OnnxNode(
            op_type=n.op_type, name=n.name, inputs=tuple(n.input), outputs=tuple(n.output),
            attributes={a.name: _attribute(a, path, model_dir) for a in n.attribute}, domain=n.domain,
        )
        for n in g.node
    )
    inputs = tuple(_value(v) for v in g.input if v.name not in inits)
    outputs = tuple(_value(v) for v in g.output)
    return OnnxGraph(initializers=inits, nodes=nodes, inputs=inputs, outputs=outputs, **meta)


def read_onnx(path: str | Path) -> OnnxGraph:
    """Read an ONNX model's graph and weights as plain data, running nothing.

    Args:
      path: an `.onnx` file.

    Returns:
      `OnnxGraph` with initializers as NumPy arrays, nodes, graph inputs/outputs (with shapes), opsets.

    Raises:
      WeightsError: missing file, not ONNX, corrupt, or external data outside the model's folder.
    """
    path = Path(path)
    model = _load_model(path)
    opset = {o.domain: int(o.version) for o in model.opset_import}
    producer = f"{model.producer_name} {model.producer_version}".strip()
    return _graph(model.graph, path, path.parent, opset=opset, producer=producer, ir_version=int(model.ir_version))


def read_onnx_initializers(path: str | Path) -> dict[str, np.ndarray]:
    """Only the weights of an ONNX model: {initializer name: NumPy array}, in file order.

    Args:
      path: an `.onnx` file.

    Returns:
      The initializers (nodes and attributes are not decoded).

    Raises:
      WeightsError: as `read_onnx`.
    """
    path = Path(path)
    model = _load_model(path)
    return {t.name: _tensor_to_numpy(t, path, path.parent) for t in model.graph.initializer}
