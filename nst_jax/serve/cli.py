"""`python serve.py`: flags -> model, styles and warm-up -> the live server until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path

from nst_jax.errors import NstError

PROG = "serve.py"
AUTO = "auto"  # `nst_jax.models.open.AUTO`: the model `choose_model` picks


class _Parser(argparse.ArgumentParser):
    """Bad flags give one line on stderr and exit status 2 (as every nst-jax error)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The server's flags."""
    p = _Parser(
        prog=PROG,
        description="Real-time style transfer of a webcam in the browser. Open the printed URL; the camera "
                    "runs in the browser, the model on this machine's CPU, GPU or TPU.",
    )
    net = p.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to "
                          "the LAN)")
    net.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    net.add_argument("--certfile", help="TLS certificate (PEM): serve https, which browsers on other "
                                        "machines need before they give a page the camera")
    net.add_argument("--keyfile", help="TLS private key (PEM) for --certfile")
    net.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                     help="another page origin allowed to open the WebSocket (repeatable)")
    net.add_argument("--max-clients", type=int, default=32, help="concurrent pages (default 32)")

    model = p.add_argument_group("model (as `nst-jax stylize`)")
    model.add_argument("--model", default="auto",
                       help="the network: auto (default: AdaIN on a GPU/TPU with its weights cached, else the "
                            "fastest installed arbitrary-style network, magenta-arbitrary), adain, "
                            "multistyle26 (the gallery is its 26 styles), magenta-arbitrary, a CIN .onnx, a "
                            "fast_neural_style .pth or a training folder; a comma-separated list puts a model "
                            "picker on the page (the first is loaded at start, the others on first use)")
    model.add_argument("--vgg", help="VGG19 weights: a file (.pth, .h5, .npz) or a registry name "
                                     "(default: adain)")
    model.add_argument("--decoder", help="AdaIN decoder: decoder.pth, a converted .npz or a registry name "
                                         "(default: adain)")
    model.add_argument("--checkpoint", help="a training --workdir (or one step of it) to take the decoder "
                                            "from")
    model.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                       help="compute type (bfloat16 pays off on GPU/TPU, not on CPU)")
    model.add_argument("--random-weights", action="store_true",
                       help="for demos and tests only: random VGG and decoder weights (the output is not "
                            "art)")

    frames = p.add_argument_group("frames and styles")
    frames.add_argument("--styles", metavar="DIR", help="folder of style images for the gallery "
                                                        "(default: a few built-in patterns)")
    frames.add_argument("--size", type=int, default=256, help="default frame side in pixels (default 256)")
    frames.add_argument("--sizes", help="comma-separated frame sides offered on the page, each compiled at "
                                        "start (default: SIZE/2 and SIZE)")
    frames.add_argument("--style-size", type=int, default=512,
                        help="style images are centre-cropped to this square before their statistics "
                             "(default 512)")
    frames.add_argument("--max-batch", type=int, default=None,
                        help="most frames (from all clients) batched into one model call per tick (default: 4 on "
                             "CPU, 8 on GPU/TPU; 1 turns batching off)")

    src = p.add_argument_group("server-side camera")
    one = src.add_mutually_exclusive_group()
    one.add_argument("--camera", type=int, metavar="N",
                     help="stylize this machine's camera N (OpenCV) instead of the browser's; every page "
                          "shows the same stream")
    one.add_argument("--video", metavar="FILE",
                     help="stylize a video file (looped) instead of the browser camera")
    src.add_argument("--record", metavar="FILE",
                     help="write the stylized stream to FILE (.mp4, .avi or .mkv); needs --camera or --video")
    src.add_argument("--overwrite", action="store_true", help="let --record replace an existing file")
    p.add_argument("--verbose", action="store_true", help="log every client connection")
    return p


def _sizes(args: argparse.Namespace) -> tuple[int, ...]:
    def check(n: int, flag: str) -> int:
        if n < 16 or n > 2048 or n % 8:
            raise NstError(f"{flag}: {n} must be a multiple of 8 between 16 and 2048")
        return n

    check(args.size, "--size")
    if args.sizes:
        try:
            sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
        except ValueError:
            raise NstError(f"--sizes: expected comma-separated integers, got {args.sizes!r}") from None
        sizes = [check(s, "--sizes") for s in sizes]
        if args.size not in sizes:
            sizes.append(args.size)
    else:
        half = args.size // 2 // 8 * 8
        sizes = [args.size] + ([half] if half >= 16 else [])
    return tuple(sorted(set(sizes)))


def validate(args: argparse.Namespace) -> None:
    """Check flags and files before anything slow happens.

    Raises:
      NstError: naming the flag.
    """
    if not 0 <= args.port <= 65535:
        raise NstError(f"--port: {args.port} is not a TCP port")
    _sizes(args)
    if args.style_size < 16 or args.style_size > 2048:
        raise NstError(f"--style-size: {args.style_size} must be between 16 and 2048")
    if args.max_batch is not None and not 1 <= args.max_batch <= 64:
        raise NstError(f"--max-batch: {args.max_batch} must be between 1 and 64")
    if args.max_clients < 1:
        raise NstError("--max-clients must be at least 1")
    names = model_names(args)
    if args.random_weights and (args.vgg or args.decoder or args.checkpoint or names != [AUTO]):
        raise NstError("--random-weights cannot be combined with --model, --vgg, --decoder or --checkpoint")
    if len(names) > 1 and (args.camera is not None or args.video):
        raise NstError("--camera and --video stream one model: give one --model")
    if args.checkpoint and args.decoder:
        raise NstError("give --decoder or --checkpoint, not both")
    for flag in ("vgg", "decoder"):
        v = getattr(args, flag)
        # A value with a path separator or suffix is a file; a bare word may be a registry name.
        if v and (Path(v).suffix or "/" in v) and not Path(v).is_file():
            raise NstError(f"--{flag}: no such file: {v}")
    if args.checkpoint and not Path(args.checkpoint).is_dir():
        raise NstError(f"--checkpoint: no such directory: {args.checkpoint}")
    if args.styles and not Path(args.styles).is_dir():
        raise NstError(f"--styles: not a directory: {args.styles}")
    if args.video and not Path(args.video).is_file():
        raise NstError(f"--video: no such file: {args.video}")
    if args.record:
        if args.camera is None and args.video is None:
            raise NstError("--record writes the server-side stream: give --camera N or --video FILE")
        from nst_jax.serve.sources import RECORD_CODECS

        rec = Path(args.record)
        if rec.suffix.lower() not in RECORD_CODECS:
            raise NstError(f"--record: unsupported extension {rec.suffix!r} "
                           f"(use one of {', '.join(sorted(RECORD_CODECS))})")
        if rec.exists() and not args.overwrite:
            raise NstError(f"--record: {rec} exists (pass --overwrite to replace it)")
        if not rec.parent.is_dir():
            raise NstError(f"--record: no such directory: {rec.parent}")
    if bool(args.certfile) != bool(args.keyfile):
        raise NstError("--certfile and --keyfile go together")
    for flag in ("certfile", "keyfile"):
        v = getattr(args, flag)
        if v and not Path(v).is_file():
            raise NstError(f"--{flag}: no such file: {v}")


def model_names(args: argparse.Namespace) -> list[str]:
    """`--model` as a list of names (a comma-separated list offers a picker on the page).

    Raises:
      NstError: an empty name, a duplicate, a packaged network that is not installed, or no such file.
    """
    from nst_jax.models.open import MODEL_NAMES, PACKAGED, PACKAGED_INSTALL, installed

    names = [n.strip() for n in str(args.model).split(",")]
    if any(not n for n in names):
        raise NstError(f"--model: an empty name in {args.model!r}")
    seen = set()
    for n in names:
        if n in seen:
            raise NstError(f"--model: {n} is listed twice")
        seen.add(n)
        if n in PACKAGED and not installed(n):
            raise NstError(f"--model: {n} is not installed ({PACKAGED_INSTALL})")
        if n not in (AUTO, *MODEL_NAMES) and not Path(n).expanduser().exists():
            raise NstError(f"--model: no such model: {n} (a file, a training folder, or one of "
                           f"{', '.join((AUTO, *MODEL_NAMES))})")
    return names


def random_stylizer(seed: int = 0, dtype=None):
    """A Stylizer with random, calibrated weights (`nst_jax.testing.random_adain`), for demos and tests."""
    from nst_jax.testing import random_adain

    return random_adain(seed, dtype=dtype)


def default_max_batch(requested: int | None) -> int:
    """`--max-batch`, or by backend: every client's latest frame goes into one call per tick. CPU hosts get a
    smaller largest bucket (4) because every bucket is compiled at start and a CPU gains little from big batches
    (benchmarks/serve.py); accelerators gain from batches of 8."""
    if requested is not None:
        return requested
    import jax

    return 4 if jax.default_backend() == "cpu" else 8


def resolve_auto(args: argparse.Namespace, names: list[str]) -> list[str]:
    """`names` with "auto" replaced by the model it chooses (`nst_jax.models.open.choose_model`); prints the one
    line that says which and why. The weight options (--vgg, --decoder, --checkpoint) pick AdaIN."""
    from nst_jax.models.open import DEFAULT, choose_model

    if AUTO not in names:
        return names
    if args.vgg or args.decoder or args.checkpoint:
        model, why = DEFAULT, "the weight options pick AdaIN's weights"
    else:
        model, why = choose_model()
    print(f"model: {model} ({why})", flush=True)
    out = [model if n == AUTO else n for n in names]
    if len(set(out)) != len(out):
        raise NstError(f"--model: auto chose {model}, which is listed too")
    return out


def program_bound(max_batch: int | None, sizes: tuple[int, ...]) -> int:
    """Compiled programs kept (`ServerConfig.max_programs`): the default, or one model's every (batch, size) if
    that is more (so one model never compiles while it serves)."""
    from nst_jax.serve.batcher import bucket_sizes
    from nst_jax.serve.config import ServerConfig

    return max(ServerConfig.max_programs, len(bucket_sizes(default_max_batch(max_batch))) * len(sizes))


def load_model(args: argparse.Namespace, name: str | None = None):
    """The Stylizer the flags ask for (`name`: one model of the --model list; the weight options apply to
    AdaIN)."""
    import jax.numpy as jnp

    from nst_jax.models.open import DEFAULT

    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    if args.random_weights:
        return random_stylizer(0, dtype)
    from nst_jax.models.open import open_model
    from nst_jax.stylize import Stylizer

    name = args.model if name is None else name
    weights = {"vgg": args.vgg, "decoder": args.decoder, "checkpoint": args.checkpoint} if name == DEFAULT else {}
    return Stylizer(open_model(name, **weights), dtype=dtype)


def fill_styles(library, model, items, args: argparse.Namespace, sizes: tuple[int, ...], progress=iter) -> None:
    """The gallery of `model`: the style images (`--styles` or the built-in patterns), or a table model's own
    styles.

    Raises:
      NstError: --styles given for a table model.
    """
    from nst_jax.serve.styles import fill_library, fill_table

    if model.caps.style_images:
        fill_library(library, items, model.condition, progress=progress)
    elif args.styles and len(model_names(args)) == 1:
        raise NstError(f"--styles: this model's {model.num_styles} styles are its own table; it takes no "
                       "style images")
    else:  # a table model (CIN): its own styles are the gallery
        fill_table(library, model, min(sizes), progress=progress)


def _ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.certfile:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(args.certfile, args.keyfile)
    except (ssl.SSLError, OSError) as e:
        raise NstError(f"--certfile/--keyfile: cannot load: {e}") from None
    return ctx


def run(args: argparse.Namespace) -> int:
    """Build everything, serve until SIGINT/SIGTERM, shut down cleanly; returns the exit code."""
    validate(args)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    ssl_context = _ssl_context(args)
    sizes = _sizes(args)

    from tqdm import tqdm

    from nst_jax.runtime import tune_allocator
    from nst_jax.serve import codec
    from nst_jax.serve.app import LiveServer, ServerConfig
    from nst_jax.serve.security import is_loopback
    from nst_jax.serve.sources import Recorder, VideoSource
    from nst_jax.serve.styles import StyleLibrary, load_gallery

    # Before the first computation: keeps XLA's per-call scratch memory in the process (see tune_allocator).
    tune_allocator()
    source = None
    if args.camera is not None or args.video is not None:
        source = VideoSource(camera=args.camera, video=args.video)
    recorder = None
    server = None
    try:
        items = load_gallery(args.styles, args.style_size)
        names = ["adain (random weights)"] if args.random_weights else resolve_auto(args, model_names(args))
        model = load_model(args, names[0])
        library = StyleLibrary()
        bar = lambda xs: tqdm(xs, desc="styles", unit="style", leave=False)
        fill_styles(library, model, items, args, sizes, progress=bar)

        def loader(name: str, library: StyleLibrary):  # a model picked on the page, loaded on first use
            model = load_model(args, name)
            fill_styles(library, model, items, args, sizes)
            return model

        config = ServerConfig(
            sizes=sizes, size=args.size, style_size=args.style_size,
            max_batch=default_max_batch(args.max_batch), limits=codec.Limits(),
            loopback_only=is_loopback(args.host), allowed_origins=tuple(args.allow_origin),
            max_clients=args.max_clients, max_programs=program_bound(args.max_batch, sizes))
        if args.record:
            recorder = Recorder(args.record, args.size, fps=source.fps, overwrite=args.overwrite)
        server = LiveServer(model, library, config, source=source, recorder=recorder, name=names[0],
                            more=tuple(names[1:]), loader=loader)
        # Compile every (batch bucket, frame size) before the first page connects.
        shapes = len(server.batcher.buckets) * len(sizes)
        with tqdm(total=shapes, desc="compiling", unit="shape", leave=False) as bar:
            server.batcher.warm(lambda i, n: bar.update(1))
        return asyncio.run(_serve(server, args, ssl_context))
    finally:
        if server is None:
            # Never got to serving: release what was opened (serving releases them on shutdown itself).
            if source is not None:
                source.close()
            if recorder is not None:
                recorder.close()


async def _serve(server, args: argparse.Namespace, ssl_context) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # Windows: Ctrl-C arrives as KeyboardInterrupt instead
            pass

    def ready(url: str) -> None:
        where = "this machine only" if server.config.loopback_only else "open to the network"
        print(f"nst-jax live: {url}  ({where}; Ctrl-C to stop)", flush=True)

    try:
        await server.serve(args.host, args.port, ssl_context=ssl_context, ready=ready, stop=stop)
    except OSError as e:
        raise NstError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    print("nst-jax live: stopped", file=sys.stderr, flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python serve.py`; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except NstError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
