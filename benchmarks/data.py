"""Can the input pipeline feed an accelerator? Images per second (and per CPU core) of the AdaIN recipe's input.

The recipe's input (configs/adain.py): decode a JPEG, resize the shorter side to 512, take a random 256 x 256
crop, batch 8 (`nst_jax.data.ImageStream`, the training loop's own stream). Measured for
- a folder of COCO-sized JPEGs (640 x 480, the content set: the shorter side goes *up* to 512),
- a folder of large JPEGs (1920 x 1440, like many WikiArt files: the shorter side goes down to 512), with Pillow's
  `draft` (the JPEG decoder skips the resolution the resize throws away; our default) and without it,
- tfds (`tfds.testing.mock_data` serving the COCO-sized JPEGs through tfds's own image decoding, which is what
  `tfds.data_source` does for `tfds:coco/2017`: OpenCV when installed, else Pillow, always at full size),
each with 1 and 2 decoding threads. The images are generated (smooth colour fields plus texture, JPEG quality 90,
so their entropy is photo-like rather than noise).

Throughput per core = images per second of *CPU* time of the process (all threads), which is what a host must
provide per accelerator: cores needed = the accelerator's images/s / images per CPU-second. The accelerator's
figure comes from `benchmarks/accelerator_results/accelerator.json` (the AdaIN train step, float32 and bfloat16)
when present, else `--accelerator-images-per-s`.

    python benchmarks/data.py                  # ~1-2 minutes on 2 cores
    python benchmarks/data.py --seconds 2 --images 24
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.accelerator import cpu_model  # noqa: E402

BATCH = 8


def make_jpegs(folder: Path, n: int, w: int, h: int, seed: int = 0) -> list[Path]:
    """`n` photo-like JPEGs of w x h in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    paths = []
    for i in range(n):
        f = rng.uniform(2, 9, 6) / max(w, h)
        base = np.stack([np.sin(xx * f[0] * 6 + yy * f[1] * 4 + i), np.cos(yy * f[2] * 5 - xx * f[3] + i),
                         np.sin((xx + yy) * f[4] * 3) * np.cos(xx * f[5] * 2)], -1)
        texture = rng.normal(0, 0.08, (h // 4, w // 4, 3)).repeat(4, 0).repeat(4, 1)
        img = np.clip((base * 0.4 + 0.5 + texture[:h, :w]) * 255, 0, 255).astype(np.uint8)
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(img).save(path, quality=90)
        paths.append(path)
    return paths


def measure(make_stream: Callable[[], object], seconds: float) -> dict[str, float]:
    """Batches from a fresh stream for about `seconds` (after one warm-up batch): images/s of wall time and of
    CPU time (every thread of the process)."""
    stream = make_stream()
    next(stream)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds or n < 2 * BATCH:
        next(stream)
        n += BATCH
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"images": n, "wall_s": wall, "cpu_s": cpu, "images_per_s": n / wall, "images_per_cpu_s": n / cpu}


def accelerator_rates(path: Path) -> list[tuple[str, float]]:
    """(label, images/s) of the AdaIN train step rows in an accelerator.json, if any."""
    if not path.exists():
        return []
    result = json.loads(path.read_text())
    return [(f"{result.get('device_kind', '?')} x{result.get('device_count', '?')}, {r['dtype']}, batch "
             f"{r['batch']}, {r['size']} px", float(r["images_per_s"]))
            for r in result.get("rows", []) if r.get("model") == "adain-train" and not result.get("quick")]


def main(argv: Sequence[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=48, help="images generated per set")
    ap.add_argument("--seconds", type=float, default=5.0, help="timing per configuration")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/nst_bench_data"))
    ap.add_argument("--accelerator-json", type=Path,
                    default=ROOT / "benchmarks" / "accelerator_results" / "accelerator.json")
    ap.add_argument("--accelerator-images-per-s", type=float, default=None,
                    help="images/s one accelerator's train step consumes, when no accelerator.json is present")
    args = ap.parse_args(argv)

    import tensorflow_datasets as tfds

    from nst_jax import data

    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    try:
        import cv2

        tfds_decoder = f"OpenCV {cv2.__version__}"
    except ImportError:
        tfds_decoder = "Pillow"
    import PIL

    print(f"Pillow {PIL.__version__}; tfds decodes with {tfds_decoder}")
    coco = make_jpegs(args.workdir / "coco", args.images, 640, 480, seed=1)
    make_jpegs(args.workdir / "large", args.images, 1920, 1440, seed=2)
    aug = data.Augment(256, 512, "shorter", "crop", 64)

    feature = tfds.features.Image(shape=(None, None, 3))
    encoded = [p.read_bytes() for p in coco]

    class TfdsLike(Sequence):
        """What `tfds.data_source` hands out: examples whose image tfds itself decoded."""

        def __len__(self):
            return len(encoded)

        def __getitem__(self, i):
            return {"image": feature.decode_example_np(encoded[i])}

    def folder_stream(folder: Path, threads: int):
        src = data.open_source(f"folder:{folder}")
        return lambda: data.ImageStream(src, aug, batch_size=BATCH, seed=0, threads=threads, prefetch_batches=2)

    real_decode = data.decode

    def no_draft(item, image_key, draft=None):
        return real_decode(item, image_key, None)

    rows = []
    for threads in args.threads:
        cases: list[tuple[str, Callable]] = [
            ("folder, 640x480 JPEG", folder_stream(args.workdir / "coco", threads)),
            ("folder, 1920x1440 JPEG, draft", folder_stream(args.workdir / "large", threads)),
            ("folder, 1920x1440 JPEG, no draft", folder_stream(args.workdir / "large", threads)),
        ]
        for label, make in cases:
            data.decode = no_draft if "no draft" in label else real_decode
            try:
                r = measure(make, args.seconds)
            finally:
                data.decode = real_decode
            rows.append({"source": label, "threads": threads, **r})
            print(_line(rows[-1]), flush=True)
        with tfds.testing.mock_data(num_examples=len(encoded), as_data_source_fn=lambda *a, **k: TfdsLike()):
            src = data.open_source("tfds:dtd")
            r = measure(lambda src=src, t=threads: data.ImageStream(src, aug, batch_size=BATCH, seed=0, threads=t,
                                                         prefetch_batches=2), args.seconds)
        rows.append({"source": f"tfds (mock_data), 640x480 JPEG, {tfds_decoder}", "threads": threads, **r})
        print(_line(rows[-1]), flush=True)

    rates = accelerator_rates(args.accelerator_json)
    if not rates and args.accelerator_images_per_s:
        rates = [("given (--accelerator-images-per-s)", args.accelerator_images_per_s)]
    if rates:
        worst = min(r["images_per_cpu_s"] for r in rows if "no draft" not in r["source"])
        for label, ips in rates:
            print(f"accelerator {label}: {ips:.1f} images/s -> {ips / worst:.1f} cores of this CPU at the slowest "
                  f"source above ({worst:.1f} images per CPU-second)")
    else:
        print("no accelerator figure: run benchmarks/accelerator.py on one, or pass --accelerator-images-per-s")
    return rows


def _line(r: dict) -> str:
    return (f"{r['source']:<48} threads {r['threads']}: {r['images_per_s']:7.1f} images/s, "
            f"{r['images_per_cpu_s']:6.1f} images per CPU-second ({r['images']} images, {r['wall_s']:.1f} s)")


if __name__ == "__main__":
    main()
