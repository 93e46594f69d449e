"""Ports of every public VGG19 / AdaIN-decoder weight format to nst-jax parameter trees.

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
- our converted `.npz` (`npz.py`).

The file's format is detected from its content (zip / legacy pickle magic, HDF5 signature, our npz meta) and
its key patterns, never from its name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nst_jax.errors import DownloadError, WeightsError
from nst_jax.files import file_digest
from nst_jax.models import decoder as decoder_model
from nst_jax.typing import NumpyParams as Params
from nst_jax.vgg import BLOCKS, CONVS, SPECS, VGGSpec, check_vgg_params
from nst_jax.weights import download, keras_h5, npz, pth
from nst_jax.weights.registry import REGISTRY, Source

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


# --------------------------------------------------------------------------------------------------
# Reading files

def _container(path: Path) -> str:
    """"pth", "hdf5", "npz" or raise: the container, judged from the bytes."""
    if not path.exists():
        raise WeightsError(f"no such file: {path}")
    if path.is_dir():
        raise WeightsError(f"{path} is a directory, not a weights file")
    try:
        if keras_h5.is_hdf5(path):
            return "hdf5"
        if npz.is_npz(path):
            return "npz"
        if pth.is_pth(path):
            return "pth"
    except OSError as e:
        raise WeightsError(f"cannot read {path}: {e.strerror or e}") from None
    raise WeightsError(f"{path} is not a weights file nst-jax reads (a PyTorch .pth, a Keras .h5 or a "
                       "converted .npz)")


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
    container = _container(path)
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
    "adain_indices", "classify_state_dict", "convert", "decoder_from_content", "decoder_from_file", "load_decoder",
    "load_vgg", "port_adain_decoder", "port_adain_vgg", "port_keras", "port_torchvision", "read_state_dict",
    "read_weights", "state_dict_kind", "torchvision_indices", "vgg_from_file",
]
