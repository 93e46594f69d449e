"""Strength maps on real weights: the docs picture and what the one-pass map costs against a plain stylization.

For `multistyle26` (style 3) and `magenta-arbitrary` (the hubble image) on skimage's astronaut with a radial map
(the style fading out towards a face left as it is): a strip content | alpha 0 | full style | map | result per
family, and the median time of the plain pass against the strength pass (interleaved).

Usage:
    python benchmarks/strength_map.py --out docs/img/strength_map.jpg      # 384 px, the picture in docs/stylize.md
    python benchmarks/strength_map.py --quick                               # 96 px, 2 rounds, no picture
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import interleave, reexec_with_allocator_env, summarize  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", help="write the picture strip here (.jpg)")
    ap.add_argument("--quick", action="store_true", help="96 px, 2 rounds: a smoke test")
    args = ap.parse_args()
    if args.quick:
        args.size, args.repeats = 96, 2
    reexec_with_allocator_env()

    from PIL import Image

    from nst_jax import strength
    from nst_jax.demo import sample_image
    from nst_jax.stylize import Stylizer

    n = args.size
    x = sample_image("astronaut", n)
    # full style outside, none on the face: radial, inverted
    smap = strength.gradient((n, n), kind="radial", center=(0.45, 0.3), radius=0.18, softness=0.3, invert=True)
    rows = []
    for model in ("multistyle26", "magenta-arbitrary"):
        st = Stylizer.load_model(model)
        style = [3] if st.caps.style_table and not st.caps.style_images else [sample_image("hubble", 256)]
        full, zero = st.stylize(x, style), st.stylize(x, style, alpha=0.0)
        out = st.stylize(x, style, strength_map=smap)
        times = interleave({"plain": lambda st=st, s=style: st.stylize(x, s),
                            "strength map": lambda st=st, s=style: st.stylize(x, s, strength_map=smap)},
                           repeats=args.repeats)
        print(f"{model} at {n} x {n}\n{summarize(times)}")
        rows.append(np.concatenate([x[0], zero[0], full[0], np.repeat(smap[..., None], 3, -1), out[0]], axis=1))
    if args.out:
        strip = np.concatenate(rows, axis=0)
        Image.fromarray(np.rint(strip * 255).astype(np.uint8)).save(args.out, quality=88)
        print(args.out)


if __name__ == "__main__":
    main()
