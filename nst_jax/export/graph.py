"""A small ONNX graph builder on `onnx.helper` for the operations nst-jax's networks use.

Tensors are NCHW inside the graph (ONNX's own convolution layout, so no transposes between layers); kernels
arrive HWIO from our parameter trees and are stored OIHW. Constant work (style rows mixed with a baked weight
vector, kernels laid out, paddings of a fixed size) is done here in NumPy, so the file holds only what must run.

Every method returns the name of the value it produced; names are unique per builder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

OPSET = 17
IR_VERSION = 8  # what opset 17 needs; readable by onnxruntime >= 1.12 and onnxruntime-web


def _onnx():
    from nst_jax.errors import NstError

    try:
        import onnx
    except ImportError:  # pragma: no cover - depends on the install
        raise NstError("exporting to ONNX needs the 'onnx' package (pip install 'nst-jax[export]')") from None
    return onnx


@dataclasses.dataclass
class Dims:
    """The spatial size of a value: ints when fixed at export, None when symbolic (read at run time)."""

    h: int | None
    w: int | None

    @property
    def fixed(self) -> bool:
        """Both sides known at export time."""
        return self.h is not None and self.w is not None


class Graph:
    """Accumulates nodes and initializers, then `model()` makes the `onnx.ModelProto`."""

    def __init__(self, name: str):
        self.name = name
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        self._count = 0
        self._consts: dict[tuple, str] = {}

    # ------------------------------------------------------------------------------------------------
    # plumbing

    def fresh(self, stem: str) -> str:
        """A new unique value name."""
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, value: Any, stem: str = "c", dtype: Any = np.float32) -> str:
        """An initializer holding `value` (small integer constants are shared)."""
        onnx = _onnx()
        arr = np.ascontiguousarray(np.asarray(value, dtype))
        key = None
        if arr.size <= 8 and arr.dtype.kind in "iu":
            key = (arr.dtype.str, arr.shape, tuple(arr.ravel().tolist()))
            if key in self._consts:
                return self._consts[key]
        name = self.fresh(stem)
        self.inits.append(onnx.numpy_helper.from_array(arr, name))
        if key is not None:
            self._consts[key] = name
        return name

    def op(self, op_type: str, inputs: Sequence[str], stem: str | None = None, n_out: int = 1,
           **attrs: Any) -> Any:
        """Add a node; returns its output name (or a list of names when n_out > 1)."""
        onnx = _onnx()
        outs = [self.fresh(stem or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(onnx.helper.make_node(op_type, list(inputs), outs, name=outs[0], **attrs))
        return outs[0] if n_out == 1 else outs

    def add_input(self, name: str, shape: Sequence[int | str | None], dtype: Any = np.float32) -> str:
        """Declare a graph input (str dims are symbolic)."""
        onnx = _onnx()
        elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        self.inputs.append(onnx.helper.make_tensor_value_info(name, elem, list(shape)))
        return name

    def add_output(self, value: str, name: str, shape: Sequence[int | str | None],
                   dtype: Any = np.float32) -> None:
        """Expose `value` as the graph output `name` (an Identity renames it)."""
        onnx = _onnx()
        self.nodes.append(onnx.helper.make_node("Identity", [value], [name], name=f"out_{name}"))
        elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        self.outputs.append(onnx.helper.make_tensor_value_info(name, elem, list(shape)))

    def model(self, metadata: dict[str, str], doc: str = "") -> Any:
        """The checked `onnx.ModelProto` with `metadata` in metadata_props."""
        onnx = _onnx()
        from nst_jax import __version__

        g = onnx.helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, initializer=self.inits)
        m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", OPSET)],
                                   producer_name="nst-jax", producer_version=__version__, doc_string=doc)
        m.ir_version = IR_VERSION
        onnx.helper.set_model_props(m, {str(k): str(v) for k, v in metadata.items()})
        onnx.checker.check_model(m, full_check=True)
        return m

    # ------------------------------------------------------------------------------------------------
    # shapes at run time

    def spatial(self, x: str) -> str:
        """int64 [H, W] of an NCHW value."""
        shape = self.op("Shape", [x], "shape")
        return self.op("Slice", [shape, self.const([2], dtype=np.int64), self.const([4], dtype=np.int64)], "hw")

    # ------------------------------------------------------------------------------------------------
    # layers

    def pad(self, x: str, top: int, bottom: int, left: int, right: int, mode: str = "reflect") -> str:
        """Pad the spatial axes of an NCHW value by fixed amounts."""
        if not (top or bottom or left or right):
            return x
        pads = self.const([0, 0, top, left, 0, 0, bottom, right], dtype=np.int64)
        return self.op("Pad", [x, pads], "pad", mode=mode)

    def pad_to_multiple(self, x: str, multiple: int, dims: Dims) -> tuple[str, str | None, Dims]:
        """Reflect-pad bottom/right to a multiple of `multiple`.

        Returns:
          (padded value, int64 [H, W] of the input (None when fixed), padded dims).
        """
        if multiple == 1:
            return x, (None if dims.fixed else self.spatial(x)), dims
        if dims.fixed:
            ph, pw = -dims.h % multiple, -dims.w % multiple
            return self.pad(x, 0, ph, 0, pw), None, Dims(dims.h + ph, dims.w + pw)
        hw = self.spatial(x)
        m = self.const([multiple, multiple], dtype=np.int64)
        extra = self.op("Mod", [self.op("Sub", [m, self.op("Mod", [hw, m])]), m], "extra")
        pads = self.op("Concat", [self.const([0, 0, 0, 0, 0, 0], dtype=np.int64), extra], "pads", axis=0)
        return self.op("Pad", [x, pads], "pad", mode="reflect"), hw, Dims(None, None)

    def crop(self, x: str, hw: str | None, dims: Dims) -> str:
        """The top-left H x W of an NCHW value: `hw` at run time, or the fixed `dims`."""
        if hw is None:
            ends = self.const([dims.h, dims.w], dtype=np.int64)
        else:
            ends = hw
        return self.op("Slice", [x, self.const([0, 0], dtype=np.int64), ends, self.const([2, 3], dtype=np.int64)],
                       "crop")

    def conv(self, x: str, kernel_hwio: np.ndarray, bias: np.ndarray | None = None, *, stride: int = 1,
             padding: str = "reflect", groups: int = 1) -> str:
        """A 2-D convolution of an NCHW value with an HWIO kernel ((kh, kw, Cin / groups, Cout)).

        Args:
          padding: "reflect" (pad k // 2 reflected, then a valid convolution), "zero" (k // 2 zeros),
            "valid", or "same" (TensorFlow's SAME: the odd pixel at the end, any stride).
        """
        k = np.asarray(kernel_hwio, np.float32)
        kh, kw = k.shape[0], k.shape[1]
        w = self.const(np.transpose(k, (3, 2, 0, 1)), "kernel")
        ins = [x, w] + ([self.const(np.asarray(bias, np.float32).reshape(-1), "bias")] if bias is not None else [])
        attrs: dict[str, Any] = {"kernel_shape": [kh, kw], "strides": [stride, stride]}
        if groups != 1:
            attrs["group"] = groups
        if padding == "reflect":
            x = self.pad(x, kh // 2, kh // 2, kw // 2, kw // 2)
            ins[0] = x
        elif padding == "zero":
            attrs["pads"] = [kh // 2, kw // 2, kh // 2, kw // 2]
        elif padding == "same":
            attrs["auto_pad"] = "SAME_UPPER"
        elif padding != "valid":
            raise ValueError(f"unknown padding {padding!r}")
        return self.op("Conv", ins, "conv", **attrs)

    def upsample(self, x: str, factor: int) -> str:
        """Nearest-neighbour upsampling by an integer factor (each pixel repeated)."""
        if factor == 1:
            return x
        scales = self.const([1.0, 1.0, float(factor), float(factor)], "scales")
        return self.op("Resize", [x, "", scales], "up", mode="nearest", coordinate_transformation_mode="asymmetric",
                       nearest_mode="floor")

    def instance_norm(self, x: str, channels: int, eps: float, scale: np.ndarray | None = None,
                      shift: np.ndarray | None = None) -> str:
        """Instance norm (biased variance) with a fixed per-channel scale and shift (1 and 0 when None)."""
        s = np.ones(channels, np.float32) if scale is None else np.asarray(scale, np.float32).reshape(channels)
        b = np.zeros(channels, np.float32) if shift is None else np.asarray(shift, np.float32).reshape(channels)
        return self.op("InstanceNormalization", [x, self.const(s, "gamma"), self.const(b, "beta")], "norm",
                       epsilon=float(eps))

    def affine(self, x: str, scale: str, shift: str) -> str:
        """x * scale + shift with per-image, per-channel (N, C) values, broadcast over the spatial axes."""
        shape = self.const([0, -1, 1, 1], dtype=np.int64)
        s = self.op("Reshape", [scale, shape], "scale4")
        b = self.op("Reshape", [shift, shape], "shift4")
        return self.op("Add", [self.op("Mul", [x, s]), b], "affine")

    def dense(self, v: str, kernel: np.ndarray, bias: np.ndarray | None = None) -> str:
        """v @ kernel (+ bias) for (N, D) values."""
        y = self.op("MatMul", [v, self.const(np.asarray(kernel, np.float32), "dense")], "matmul")
        if bias is not None:
            y = self.op("Add", [y, self.const(np.asarray(bias, np.float32).reshape(-1), "dbias")], "dense")
        return y

    def relu(self, x: str) -> str:
        """max(x, 0)."""
        return self.op("Relu", [x], "relu")

    def relu6(self, x: str) -> str:
        """min(max(x, 0), 6)."""
        return self.op("Clip", [x, self.const(0.0), self.const(6.0)], "relu6")

    def clip01(self, x: str) -> str:
        """Clip to [0, 1]."""
        return self.op("Clip", [x, self.const(0.0), self.const(1.0)], "clip")

    def scale(self, x: str, factor: float) -> str:
        """x * factor (nothing when factor is 1)."""
        return x if factor == 1.0 else self.op("Mul", [x, self.const(np.float32(factor))], "mul")

    def to_nchw(self, x: str, layout: str) -> str:
        """An image input in `layout` ("NCHW" or "NHWC") as NCHW."""
        return x if layout == "NCHW" else self.op("Transpose", [x], "nchw", perm=[0, 3, 1, 2])

    def from_nchw(self, x: str, layout: str) -> str:
        """An NCHW image as `layout`."""
        return x if layout == "NCHW" else self.op("Transpose", [x], "nhwc", perm=[0, 2, 3, 1])


def image_shape(layout: str, size: tuple[int, int] | None, batch: str = "n") -> list[int | str]:
    """The declared shape of an image input or output."""
    h, w = (size if size is not None else ("height", "width"))
    return [batch, 3, h, w] if layout == "NCHW" else [batch, h, w, 3]


__all__ = ["IR_VERSION", "OPSET", "Dims", "Graph", "image_shape"]
