"""Export any family's networks to ONNX (`nst-jax export`), with the input convention in the file's metadata.

What a family becomes (OUT is the `-o` path; the style encoder, where there is one, goes beside it as
OUT's stem + `_style.onnx`, and OUT's metadata names it):

| family | style as an input | style baked in |
|---|---|---|
| CIN | OUT: image + style_weights (N, S) | OUT: image (a row or a blend of rows) |
| arbitrary | OUT: image + style_vector (N, 100); OUT_style: the predictor | OUT: image |
| AdaIN | OUT: image + style_mean, style_std (N, 512) + alpha (N,); OUT_style: the statistics | OUT: image + alpha |

A family is exported by its own capability, `Family.export` (`nst_jax.models.Export`): the exporter it names
(in `nst_jax.export.families`) and whether onnx2tf converts the graphs to LiteRT; a family without one cannot
be exported. The graphs are written by a small builder on the `onnx` package (`nst_jax.export.graph`) from each
family's layer walk and parameters, so any layout a family describes exports (CIN widths, kernels, residual counts,
biases; VGG16 or VGG19 encoders of any source). Height and width are symbolic unless `size` fixes them.

Metadata (`metadata_props`, read back by `read_convention` and `nst-jax info FILE.onnx`): `nst_jax.family`,
`nst_jax.layout` (NCHW or NHWC), `nst_jax.color` (RGB), `nst_jax.range` ([0, 1]), `nst_jax.inputs` /
`nst_jax.outputs` (JSON: name -> meaning), `nst_jax.style` (what the style is), `nst_jax.opset`,
`nst_jax.style_encoder` (the companion file), `nst_jax.style_preprocess` (what to do to a style image first).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nst_jax.errors import NstError
from nst_jax.export.info import META_PREFIX, read_convention

if TYPE_CHECKING:
    from nst_jax.models import Export, Family

FORMATS = ("onnx", "tflite")
LAYOUTS = ("NCHW", "NHWC")
STYLE_SUFFIX = "_style"


@dataclasses.dataclass(frozen=True)
class Exported:
    """One written file: its path, role ("stylizer" or "style_encoder") and metadata."""

    path: Path
    role: str
    metadata: dict[str, str]


def style_encoder_path(out: str | Path) -> Path:
    """Where the style encoder of an export to `out` goes: `out`'s stem + `_style` + its suffix."""
    out = Path(out)
    return out.with_name(out.stem + STYLE_SUFFIX + (out.suffix or ".onnx"))


def _check(fmt: str, layout: str, size: Sequence[int] | None) -> tuple[str, tuple[int, int] | None]:
    if str(fmt).lower() not in FORMATS:
        raise NstError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    lay = str(layout).upper()
    if lay not in LAYOUTS:
        raise NstError(f"unknown layout {layout!r}; use nchw or nhwc")
    if size is None:
        return lay, None
    hw = tuple(int(s) for s in size)
    if len(hw) != 2 or min(hw) < 8:
        raise NstError(f"--size takes two sides of at least 8 pixels, got {' '.join(map(str, size))}")
    return lay, (hw[0], hw[1])


def _mix(conditions: list[Any], weights: Sequence[float] | None) -> Any:
    from nst_jax.models import blend_conditions

    if len(conditions) == 1:
        return conditions[0]
    from nst_jax.checks import check_weights

    w = np.ones(len(conditions)) if weights is None else np.asarray(check_weights(weights, len(conditions)))
    w = w / w.sum()  # a convex mix, as nst-jax stylize normalises --style-weights
    import jax

    stacked = jax.tree.map(lambda *xs: np.concatenate([np.asarray(x) for x in xs]), *conditions)
    return jax.tree.map(np.asarray, blend_conditions(stacked, np.asarray(w, np.float32)))


def build(stylizer: Any, *, styles: Sequence[Any] = (), style_weights: Sequence[float] | None = None,
          layout: str = "NCHW", size: tuple[int, int] | None = None, style_desc: str | None = None,
          encoder_size: tuple[int, int] | None = None) -> list[tuple[str, Any, dict[str, str]]]:
    """The ONNX models of a loaded model (`nst_jax.stylize.Stylizer`), unwritten, by its family's exporter.

    Args:
      stylizer: the model, of any family with an `export` capability.
      styles: empty for a style input; else what to bake in: CIN table indices or weight vectors, or style
        images (1, H, W, 3) for AdaIN and arbitrary (blended with `style_weights` when several).
      style_weights: blend weights (K,) summing to 1, for several `styles`.
      layout: "NCHW" or "NHWC".
      size: fixed (H, W) or None (symbolic).
      style_desc: how the baked style is described in the metadata (default: derived).
      encoder_size: a fixed (H, W) for the style encoder's input (default symbolic).

    Returns:
      [(role, onnx.ModelProto, metadata)]: the stylizer first, then the style encoder if any.

    Raises:
      NstError: the family cannot be exported.
    """
    family = stylizer.family
    exporter = _exporter(family)
    cond = _mix([stylizer.condition(s) for s in styles], style_weights) if styles else None
    graphs = exporter.load()(stylizer, cond, layout=layout, size=size, style_desc=style_desc,
                             encoder_size=encoder_size)
    return [(role, g.model(meta, doc=f"nst-jax {family.name} ({role})"), meta) for role, g, meta in graphs]


def _exporter(family: Family) -> Export:
    """The family's `nst_jax.models.Export`, or a one-line error for a family without one."""
    if family.export is None:
        raise NstError(f"the {family.name} family cannot be exported")
    return family.export


def _tflite_families() -> list[str]:
    """The names of the families whose exports onnx2tf converts (for the error text)."""
    from nst_jax import models

    return [n for n in models.MODELS if (e := models.get(n).export) is not None and e.tflite]


def write(models: list[tuple[str, Any, dict[str, str]]], out: str | Path, *, overwrite: bool = False
          ) -> list[Exported]:
    """Write the models of `build` to `out` (and the style encoder beside it), all or nothing.

    Raises:
      NstError: a destination exists and not `overwrite` (checked before anything is written).
    """
    from nst_jax.files import move_into_place, temp_file_beside

    out = Path(out)
    paths = [out if role == "stylizer" else style_encoder_path(out) for role, _, _ in models]
    for p in paths:
        if p.exists() and not overwrite:
            raise NstError(f"{p} exists (use --overwrite to replace it)")
        if p.exists() and not p.is_file():
            raise NstError(f"{p} exists and is not a file")
    if len(models) > 1:
        models[0][2][META_PREFIX + "style_encoder"] = paths[1].name
        from onnx import helper

        del models[0][1].metadata_props[:]
        helper.set_model_props(models[0][1], models[0][2])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmps = []
    try:
        for (_, model, _), p in zip(models, paths, strict=True):
            tmp = temp_file_beside(p)
            tmps.append(tmp)
            tmp.write_bytes(model.SerializeToString())
        for tmp, p in zip(tmps, paths, strict=True):
            move_into_place(tmp, p)
    finally:
        for tmp in tmps:
            if tmp.exists():
                tmp.unlink()
    return [Exported(p, role, meta) for (role, _, meta), p in zip(models, paths, strict=True)]


def export_model(model: str | Path, out: str | Path, *, fmt: str = "onnx", styles: Sequence[Any] = (),
                 style_weights: Sequence[float] | None = None, layout: str = "NCHW",
                 size: Sequence[int] | None = None, overwrite: bool = False) -> list[Exported]:
    """Load a model by name, file or training folder (`Stylizer.load_model`) and export it.

    Args:
      model: "multistyle26", "magenta-arbitrary", "adain", a weights file or a training workdir.
      out: the stylizer's file; a style encoder goes to `style_encoder_path(out)`.
      fmt: "onnx".
      styles, style_weights: see `build`.
      layout: "NCHW" or "NHWC".
      size: (H, W) to fix, or None for symbolic sizes.
      overwrite: replace existing files.

    Returns:
      The files written.

    Raises:
      NstError: unknown format or layout, a missing model, existing outputs (nothing is written then).
    """
    from nst_jax.stylize import Stylizer

    lay, hw = _check(fmt, layout, size)
    out = Path(out)
    if out.exists() and not overwrite:  # before the (slow) load; `write` checks every destination again
        raise NstError(f"{out} exists (use --overwrite to replace it)")
    st = Stylizer.load_model(model)
    return export_stylizer(st, out, fmt=fmt, styles=styles, style_weights=style_weights, layout=lay, size=hw,
                           overwrite=overwrite)


def export_stylizer(stylizer: Any, out: str | Path, *, fmt: str = "onnx", styles: Sequence[Any] = (),
                    style_weights: Sequence[float] | None = None, layout: str = "NCHW",
                    size: Sequence[int] | None = None, overwrite: bool = False) -> list[Exported]:
    """`build` then `write` for a loaded model (tests use random-weight stylizers).

    With fmt "tflite" (families whose `Export.tflite` is set: CIN and arbitrary; needs `size` and the
    `[litert]` extra) the ONNX graphs are made at that size (a style encoder at `Export.tflite_encoder_size`:
    the arbitrary predictor at 256 x 256), converted by onnx2tf, and written as `.tflite` files (NHWC); the
    metadata then lives in `Exported.metadata` only.

    Raises:
      NstError: the family cannot be exported (in `fmt`), a bad format, layout or size, existing outputs.
    """
    lay, hw = _check(fmt, layout, size)
    _check_styles(stylizer, styles)
    if str(fmt).lower() == "onnx":
        return write(build(stylizer, styles=styles, style_weights=style_weights, layout=lay, size=hw), out,
                     overwrite=overwrite)
    exporter = _exporter(stylizer.family)
    if not exporter.tflite:
        raise NstError(f"tflite export covers {', '.join(_tflite_families())}, not {stylizer.family.name}")
    if hw is None:
        raise NstError("tflite export needs a fixed size: --size H W")
    import tempfile

    from nst_jax.export.litert import onnx_to_tflite, tflite_layouts

    out = Path(out)
    models = build(stylizer, styles=styles, style_weights=style_weights, layout="NCHW", size=hw,
                   encoder_size=exporter.tflite_encoder_size)
    targets = [out if role == "stylizer" else style_encoder_path(out) for role, _, _ in models]
    for p in targets:
        if p.exists() and not overwrite:
            raise NstError(f"{p} exists (use --overwrite to replace it)")
    with tempfile.TemporaryDirectory(prefix="nst_jax_export_") as tmp:
        onnx_files = write(models, Path(tmp) / "model.onnx")
        done = []
        for e, target in zip(onnx_files, targets, strict=True):
            meta = dict(e.metadata, **{META_PREFIX + "layout": "NHWC", META_PREFIX + "format": "tflite"})
            if META_PREFIX + "style_encoder" in meta:
                meta[META_PREFIX + "style_encoder"] = targets[1].name
            written = onnx_to_tflite(e.path, target, overwrite=overwrite)
            lay_in, lay_out = tflite_layouts(written)
            meta[META_PREFIX + "layout"], meta[META_PREFIX + "output_layout"] = lay_in, lay_out
            done.append(Exported(written, e.role, meta))
    return done


def _check_styles(stylizer: Any, styles: Sequence[Any]) -> None:
    caps = stylizer.caps
    for s in styles:
        is_index = isinstance(s, int | np.integer)
        if caps.style_table and not caps.style_images and not (is_index or np.ndim(s) == 1):
            raise NstError(f"a {stylizer.family.name} style is an index into its table, got an image")
        if caps.style_images and (is_index or np.ndim(s) < 3):
            raise NstError(f"a {stylizer.family.name} style is an image, got {s!r}")


__all__ = ["FORMATS", "LAYOUTS", "Exported", "build", "export_model", "export_stylizer", "read_convention",
           "style_encoder_path", "write"]
