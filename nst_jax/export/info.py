"""`nst-jax info FILE.onnx`: the input convention of an exported model (or what is known of any ONNX file)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

META_PREFIX = "nst_jax."  # the metadata keys nst-jax writes into an exported graph


def _shape(shape: tuple | None) -> str:
    if shape is None:
        return "(?)"
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def print_onnx_info(path: str | Path) -> int:
    """Print layout, colour, range, inputs, outputs, opset and style of an `.onnx` file; returns 0.

    Raises:
      WeightsError: missing, unreadable or not ONNX (one line).
    """
    info = read_convention(path)
    meta = info["metadata"]
    opsets = ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in info["opset"].items())
    print(f"{path}: ONNX, opset {opsets}, producer {info['producer'] or '?'}")
    if "layout" in meta:
        print(f"  family:     {meta.get('family', '?')} ({meta.get('role', 'stylizer')})")
        print(f"  convention: layout {meta['layout']}, {meta.get('color', 'RGB')} in {meta.get('range', '?')}, "
              f"{meta.get('dtype', 'float32')}")
        print(f"  style:      {meta.get('style', '?')}")
        if "style_encoder" in meta:
            print(f"  style encoder: {meta['style_encoder']} (beside this file)")
        if "style_preprocess" in meta:
            print(f"  style preprocessing: {meta['style_preprocess']}")
    else:
        print("  convention: not recorded (not exported by nst-jax)")
    described = {}
    for key in ("inputs", "outputs"):
        try:
            described.update(json.loads(meta.get(key, "{}")))
        except ValueError:
            pass
    for what, values in (("input", info["inputs"]), ("output", info["outputs"])):
        for name, dtype, shape in values:
            note = f": {described[name]}" if name in described else ""
            print(f"  {what}:  {name} {dtype or '?'} {_shape(shape)}{note}")
    sys.stdout.flush()
    return 0


def read_convention(path: str | Path) -> dict[str, Any]:
    """The nst-jax metadata of an exported `.onnx` (parsed, nothing run), plus its inputs and outputs.

    Returns:
      {"metadata": {key without prefix: value}, "inputs": [(name, dtype, shape)], "outputs": [...],
       "opset": {domain: version}, "producer": str}.
    """
    from nst_jax.weights.onnx import _load_model, read_onnx

    p = Path(path)
    model = _load_model(p)
    meta = {e.key[len(META_PREFIX):] if e.key.startswith(META_PREFIX) else e.key: e.value
            for e in model.metadata_props}
    graph = read_onnx(p)
    return {"metadata": meta, "inputs": [(v.name, v.dtype, v.shape) for v in graph.inputs],
            "outputs": [(v.name, v.dtype, v.shape) for v in graph.outputs], "opset": graph.opset,
            "producer": graph.producer}


__all__ = ["META_PREFIX", "print_onnx_info", "read_convention"]
