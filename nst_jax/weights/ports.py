"""Reading and loading every public VGG19 / AdaIN-decoder weight format: files to nst-jax parameter trees by
content, registry names through the verified cache, and conversion to `.npz`. The name maps and layouts of each
source are in `nst_jax.weights.vgg19_ports` (re-exported here).

The file's format is detected from its content (zip / legacy pickle magic, HDF5 signature, our npz meta) and
its key patterns, never from its name.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nst_jax.errors import DownloadError, WeightsError
from nst_jax.files import file_digest
from nst_jax.models import decoder as decoder_model
from nst_jax.typing import NumpyParams as Params
from nst_jax.vgg import VGGSpec, check_vgg_params
from nst_jax.weights import download, keras_h5, npz, pth
from nst_jax.weights.container import container as sniff
from nst_jax.weights.registry import REGISTRY, Source
from nst_jax.weights.vgg19_ports import (
    _deepest_tap,
    _describe_unknown,
    _keras_names,
    adain_indices,
    classify_state_dict,
    keras_conv_params,
    port_adain_decoder,
    port_adain_vgg,
    port_keras,
    port_torchvision,
    torchvision_indices,
)

VGG_FORMATS = ("torchvision", "adain", "keras", "npz")
CONVERT_FORMATS = ("torchvision", "adain", "adain-decoder", "keras")

DESCRIPTIONS = {
    "torchvision": "a torchvision VGG19 state_dict",
    "adain": "pytorch-AdaIN's VGG19 encoder (vgg_normalised)",
    "adain-decoder": "pytorch-AdaIN's decoder",
    "keras": "Keras VGG19 weights",
    "npz-vgg19": "converted VGG19 weights",
    "npz-adain_decoder": "a converted AdaIN decoder",
}



# --------------------------------------------------------------------------------------------------
# Reading files

def _not_for_torchvision_classifier(key: str) -> bool:
    return ".classifier." not in f".{key}"


def read_weights(path: str | Path) -> tuple[str, Any]:
    """Read any supported file and say what it is.

    Returns:
      (what, content): what is "torchvision" | "adain" | "adain-decoder" | "keras" | "npz-vgg19" |
      "npz-adain_decoder"; content is the state_dict, Keras layers, or (params, meta) for npz.

    Raises:
      WeightsError: unreadable, or a format none of the ports recognise (the message says what it looks like).
    """
    path = Path(path)
    container = sniff(path)
    if container == "npz":
        params, meta = npz.load_npz(path)
        return f"npz-{meta['kind']}", (params, meta)
    if container == "hdf5":
        layers = keras_h5.read_keras_h5(path)
        if not _keras_names(layers):
            found = ", ".join(list(layers)[:4])
            raise WeightsError(f"{path} is a Keras file without VGG19 layers (found {found})")
        return "keras", layers
    sd = read_state_dict(path)
    return state_dict_kind(path, sd), sd


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A PyTorch file's state_dict, safely, without torchvision's classifier (never used, ~400 MB)."""
    return pth.load_state_dict(path, select=_not_for_torchvision_classifier)


def state_dict_kind(path: str | Path, sd: Mapping[str, np.ndarray]) -> str:
    """`classify_state_dict`, or a `WeightsError` saying what `path` looks like when no port knows it."""
    what = classify_state_dict(sd)
    if what == "unknown":
        raise WeightsError(f"{path} is {_describe_unknown(sd)}; expected a torchvision VGG19, "
                           "pytorch-AdaIN's vgg_normalised or decoder")
    return what


def _wrong_kind(path: Path, what: str, wanted: str) -> WeightsError:
    desc = DESCRIPTIONS.get(what, what)
    if wanted == "decoder":
        return WeightsError(f"{path} is {desc}, not an AdaIN decoder; pass it as the VGG encoder weights")
    return WeightsError(f"{path} is {desc}, not VGG19 encoder weights; pass it as the decoder")


def vgg_from_file(path: str | Path, fmt: str | None = None) -> tuple[Params, VGGSpec]:
    """Read VGG19 weights from a local file of any supported format (see `load_vgg`)."""
    if fmt is not None and fmt not in VGG_FORMATS:
        raise WeightsError(f"unknown VGG19 weights format {fmt!r}; known: {', '.join(VGG_FORMATS)}")
    return _vgg_from_content(Path(path), *read_weights(path), fmt)


def _vgg_from_content(path: Path, what: str, content: Any, fmt: str | None) -> tuple[Params, VGGSpec]:
    if what in ("adain-decoder", "npz-adain_decoder"):
        raise _wrong_kind(path, what, "vgg")
    if what == "npz-vgg19":
        params, meta = content
        try:
            spec = VGGSpec.from_dict(meta["spec"])
        except (KeyError, TypeError, ValueError) as e:
            raise WeightsError(f"{path}: malformed VGG spec in its metadata ({e})") from None
        if fmt not in (None, "npz", spec.source):
            raise WeightsError(f"{path} holds converted {spec.source} weights, not {fmt}")
        check_vgg_params(params, spec, _deepest_tap(params))
        return params, spec
    if fmt not in (None, what):
        hint = "npz" if fmt == "npz" else fmt
        raise WeightsError(f"{path} is {DESCRIPTIONS[what]}, not {DESCRIPTIONS.get(hint, hint)} weights; "
                           f"read it as {what} (or let the format be detected)")
    try:
        if what == "keras":
            return port_keras(content)
        if what == "adain":
            return port_adain_vgg(content)
        return port_torchvision(content)
    except WeightsError as e:
        raise WeightsError(f"{path}: {e}") from None


def decoder_from_file(path: str | Path) -> Params:
    """Read AdaIN decoder weights from `decoder.pth` or a converted `.npz` (see `load_decoder`)."""
    return decoder_from_content(Path(path), *read_weights(path))


def decoder_from_content(path: Path, what: str, content: Any) -> Params:
    """AdaIN decoder weights from what `read_weights(path)` returned, checked (errors name `path`)."""
    if what == "npz-adain_decoder":
        params = content[0]
    elif what == "adain-decoder":
        try:
            params = port_adain_decoder(content)
        except WeightsError as e:
            raise WeightsError(f"{path}: {e}") from None
    else:
        raise _wrong_kind(path, what, "decoder")
    try:
        decoder_model.check_decoder_params(params)
    except WeightsError as e:
        raise WeightsError(f"{path}: {e}") from None
    return params


# --------------------------------------------------------------------------------------------------
# Public entry points (re-exported by nst_jax.weights)

def _registry_entry(src: str | Path, kind: str) -> Source | None:
    if isinstance(src, Path) or Path(src).exists():
        return None
    name = "adain-decoder" if (kind == "adain_decoder" and src == "adain") else src
    source = REGISTRY.get(name)
    if source is None:
        return None
    if source.kind != kind:
        other = "the decoder" if source.kind == "adain_decoder" else "a VGG19 encoder"
        raise WeightsError(f"registry entry {name!r} is {other}, not {kind.replace('_', ' ')} weights")
    return source


def _missing(src: str | Path, kind: str) -> WeightsError:
    names = ", ".join(n for n, s in REGISTRY.items() if s.kind == kind)
    if kind == "adain_decoder":
        names = "adain, " + names
    return WeightsError(f"no such weights file: {src} (or use a registry name: {names})")


def check_content(path: Path, source: Source) -> None:
    """Raise `NstError` unless the file parses and fits the network `source` describes exactly (the content
    check of downloads without a published hash)."""
    if source.kind == "adain_decoder":
        load_decoder(path)
    else:
        params, spec = load_vgg(path, fmt=source.fmt)
        if not source.spec or spec.source != source.spec:
            raise DownloadError(f"{path} holds {spec.source} weights, not {source.name}")


def fetch(name: str, **kwargs: Any) -> Path:
    """`download.fetch` with the ports' content check for files without a published hash (the public
    `nst_jax.weights.fetch`)."""
    kwargs.setdefault("validate", check_content)
    return download.fetch(name, **kwargs)


def cache_status(name: str, **kwargs: Any) -> download.CacheStatus:
    """`download.cache_status` with the ports' content check (the public `nst_jax.weights.cache_status`)."""
    kwargs.setdefault("validate", check_content)
    return download.cache_status(name, **kwargs)


def load_vgg(src: str | Path, *, fmt: str | None = None,
             pooling: str | None = None) -> tuple[Params, VGGSpec]:
    """Load VGG19 encoder weights and their identity.

    Args:
      src: a registry name ("adain", "torchvision", "keras"; fetched into the cache if absent) or a local
        file: torchvision / pytorch-AdaIN `.pth`, Keras `.h5`, or a converted `.npz`.
      fmt: force "torchvision" | "adain" | "keras" | "npz" (checked against the content); None detects it.
      pooling: "max" or "avg" to override the weights' pooling (Gatys et al. use avg for image generation).

    Returns:
      (params, spec): {convB_I: {"kernel": HWIO float32, "bias": float32}} (+ "conv0" for AdaIN), as NumPy
      arrays, possibly truncated (e.g. up to conv4_1); and the `VGGSpec` to pass to `nst_jax.vgg.encode`.

    Raises:
      WeightsError: missing, unreadable or unsafe file, a file that is something else (the message says what),
        or weights that do not fit VGG19 (the message names keys and shapes).
      DownloadError: a registry file is not cached and cannot be fetched.
    """
    if pooling not in (None, "max", "avg"):
        raise WeightsError(f"unknown pooling {pooling!r}; use max or avg")
    source = _registry_entry(src, "vgg19")
    if source is not None:
        path = fetch(source.name)
        fmt = fmt or source.fmt
    else:
        path = Path(src)
        if not path.exists():
            raise _missing(src, "vgg19")
    params, spec = vgg_from_file(path, fmt)
    if pooling is not None:
        spec = spec.replace(pooling=pooling)
    return params, spec


def load_decoder(src: str | Path) -> Params:
    """Load AdaIN decoder weights.

    Args:
      src: "adain" (pytorch-AdaIN's released decoder, fetched if absent), pytorch-AdaIN's `decoder.pth`, a
        converted `.npz`, or a training checkpoint directory (via `nst_jax.models.trained`).

    Returns:
      {name: {"kernel": HWIO, "bias"}} with the names of `nst_jax.models.decoder.DECODER_CONVS`.

    Raises:
      WeightsError: as `load_vgg`; a VGG file given here says so.
    """
    source = _registry_entry(src, "adain_decoder")
    if source is not None:
        return decoder_from_file(fetch(source.name))
    path = Path(src)
    if path.is_dir():
        from nst_jax.models.trained import load_decoder_checkpoint

        return load_decoder_checkpoint(path)[0]
    if not path.exists():
        raise _missing(src, "adain_decoder")
    return decoder_from_file(path)


def convert(src: str | Path, *, fmt: str | None = None, out: str | Path | None = None,
            overwrite: bool = False) -> tuple[Path, dict]:
    """Convert weights to the `.npz` format (no pickle, loads in milliseconds).

    Args:
      src: local file or registry name.
      fmt: "torchvision" | "adain" | "adain-decoder" | "keras", or None to detect.
      out: destination; default: beside `src` with the suffix `.npz` (registry names: in the weights cache).
      overwrite: replace an existing `out`.

    Returns:
      (path written, its metadata).
    """
    if fmt is not None and fmt not in CONVERT_FORMATS:
        raise WeightsError(f"unknown format {fmt!r}; known: {', '.join(CONVERT_FORMATS)}")
    source = REGISTRY.get(str(src)) if not Path(src).exists() else None
    if source is not None:
        path = fetch(source.name)
        fmt = fmt or source.fmt
        default_out = download.weights_dir() / f"{source.name}.npz"
    else:
        path = Path(src)
        if not path.exists():
            names = ", ".join(n for n, e in REGISTRY.items() if e.kind in ("vgg19", "adain_decoder"))
            raise WeightsError(f"no such weights file: {src} (or use a registry name: {names})")
        default_out = path.with_suffix(".npz")
    out = Path(out) if out is not None else default_out
    if out.resolve() == path.resolve():
        raise WeightsError(f"{path} is already the output; pass -o OUT.npz")
    if out.exists() and not overwrite:
        raise WeightsError(f"{out} already exists (pass --overwrite to replace it)")
    what, content = read_weights(path)
    if what.startswith("npz-"):
        raise WeightsError(f"{path} is already converted ({DESCRIPTIONS[what]})")
    meta: dict[str, Any] = {"source": path.name, "sha256": file_digest(path), "from": what}
    if fmt == "adain-decoder" or (fmt is None and what == "adain-decoder"):
        params = decoder_from_content(path, what, content)
        meta["kind"] = "adain_decoder"
    else:
        params, spec = _vgg_from_content(path, what, content, fmt)
        meta.update(kind="vgg19", spec=spec.to_dict(), last=_deepest_tap(params))
    npz.save_npz(out, params, meta, overwrite=overwrite)
    return out, meta


__all__ = [
    "adain_indices", "classify_state_dict", "convert", "decoder_from_content", "decoder_from_file",
    "keras_conv_params", "load_decoder", "load_vgg", "port_adain_decoder", "port_adain_vgg", "port_keras",
    "port_torchvision", "read_state_dict", "read_weights", "state_dict_kind", "torchvision_indices",
    "vgg_from_file",
]
