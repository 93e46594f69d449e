"""LiteRT (TensorFlow Lite) from our ONNX export, through onnx2tf (the optional `[litert]` extra).

The route measured to work here: our fixed-size ONNX graph -> `onnx2tf.convert` (onnx2tf 1.29, TensorFlow
2.19) -> a float32 `.tflite`, run by `ai-edge-litert`'s interpreter. onnx2tf turns the NCHW graph into an NHWC
one: the `.tflite` takes (1, H, W, 3) float32 RGB in [0, 1] images. Its output is NHWC for a graph with the image
as its only input, but onnx2tf leaves it NCHW (1, 3, H, W) when a style input sits beside the image:
`tflite_layouts` reads which from the file, and `nst_jax.export` records it (`nst_jax.output_layout`). LiteRT
graphs have fixed shapes here: export with a size.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from nst_jax.errors import NstError


def onnx_to_tflite(onnx_path: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Convert a fixed-size nst-jax ONNX export to a float32 `.tflite`.

    Args:
      onnx_path: an NCHW export with fixed height and width (`nst-jax export --size H W`).
      out: the `.tflite` to write (atomically).
      overwrite: replace an existing `out`.

    Returns:
      `out` as a Path.

    Raises:
      NstError: onnx2tf is not installed, the export has symbolic sizes or NHWC layout, or the conversion fails.
    """
    try:
        import onnx2tf
    except ImportError:
        raise NstError("LiteRT export needs onnx2tf and TensorFlow (pip install 'nst-jax[litert]')") from None
    from nst_jax.export.info import read_convention
    from nst_jax.files import atomic_write

    out = Path(out)
    if out.exists() and not overwrite:
        raise NstError(f"{out} exists (use --overwrite to replace it)")
    info = read_convention(onnx_path)
    if info["metadata"].get("layout", "NCHW") != "NCHW":
        raise NstError("LiteRT conversion takes an NCHW export (the .tflite is NHWC anyway)")
    for name, _, shape in info["inputs"]:
        if shape and len(shape) == 4 and not all(isinstance(d, int) for d in shape[1:]):
            raise NstError(f"LiteRT needs fixed sizes: export with --size H W (input {name} is {shape})")
    work = Path(tempfile.mkdtemp(prefix="nst_jax_litert_"))
    try:
        try:
            onnx2tf.convert(input_onnx_file_path=str(onnx_path), output_folder_path=str(work),
                            non_verbose=True, copy_onnx_input_output_names_to_tflite=True)
        except Exception as e:  # noqa: BLE001 - onnx2tf raises anything; reported in one line
            raise NstError(f"onnx2tf could not convert {onnx_path}: {str(e).splitlines()[0] if str(e) else e}"
                           ) from None
        found = sorted(work.glob("*_float32.tflite"))
        if not found:
            raise NstError(f"onnx2tf wrote no float32 .tflite for {onnx_path}")
        return atomic_write(out, found[0].read_bytes(), overwrite=overwrite)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def tflite_layouts(path: str | Path) -> tuple[str, str]:
    """(input image layout, output image layout) of a converted `.tflite`, read by ai-edge-litert's interpreter
    ("-" for a model without a 4-d input or output, e.g. the style predictor's vector)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))

    def layout(details: list) -> str:
        for d in details:
            shape = list(d["shape"])
            if len(shape) == 4:
                return "NCHW" if shape[1] == 3 and shape[3] != 3 else "NHWC"
        return "-"

    return layout(it.get_input_details()), layout(it.get_output_details())


__all__ = ["onnx_to_tflite", "tflite_layouts"]
