"""Helpers shared by the test modules: image folders, tiny training configs, relative errors, flat pytrees.

Plain functions (no fixtures): `conftest.py` builds its session fixtures from them, and a module that needs its
own variant calls them directly.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `configs` is a top-level folder of the repository, not part of the package
    sys.path.insert(0, str(ROOT))

# The suite's compiler setting (conftest puts it in the environment): XLA's CPU fusion emitters off, about two thirds
# less compile time for the small programs of the tests (tests/README.md). Programs compiled this way round some
# fusions differently, so a test of bitwise identity between two different programs compiles both as users do:
# `jax.jit(fn, compiler_options=AS_USERS)`, or a child process with `subprocess_env(..., fast_compile=False)`.
FAST_COMPILE_FLAG = "--xla_cpu_use_fusion_emitters=false"
AS_USERS = {"xla_cpu_use_fusion_emitters": True}

# The three families' tiny recipes (configs/), and the config key that names each one's style source.
TINY_CONFIGS = {"adain": "tiny", "cin": "tiny_cin", "arbitrary": "tiny_arbitrary"}
STYLE_SOURCE_KEY = {"adain": "style_data", "cin": "style_images", "arbitrary": "style_data"}
FAMILIES = tuple(TINY_CONFIGS)

# The tiny runs that several modules inspect: 12 steps, metrics every 4, checkpoints and sample grids every 6.
RUN_STEPS = {"num_steps": 12, "log_every": 4, "checkpoint_every": 6, "sample_every": 6}


def write_images(folder: Path, n: int, seed: int, size: int | tuple[int, int] = 44, ext: str = "png") -> str:
    """Write `n` smooth colour patterns with a little noise into `folder`; returns `"folder:<folder>"`.

    Tiny runs learn these within a dozen steps (crops of real photos leave a 12-step CIN loss flat), so a run's
    "the loss falls" check is meaningful.

    Args:
      folder: created if missing; files are `0.<ext>` ... `<n-1>.<ext>`.
      n: number of pictures.
      seed: the same seed always writes the same files.
      size: side, or (height, width), of every picture.
      ext: "png" (exact) or "jpg".
    """
    from PIL import Image

    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:h, 0:w] / float(max(h, w))
    for i in range(n):
        f = rng.uniform(2, 9, 3)
        img = np.stack([np.sin(xx * f[0] + i), np.cos(yy * f[1]), np.sin((xx + yy) * f[2])], -1) * 0.5 + 0.5
        img = np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1)
        Image.fromarray((img * 255.0 + 0.5).astype(np.uint8)).save(folder / f"{i}.{ext}")
    return f"folder:{folder}"


def subprocess_env(tmp_path: Path, devices: int | None = None, *, fast_compile: bool = True
                   ) -> dict[str, str]:
    """The environment of a test's child process: CPU only, offline, its own weights home, this process's
    compiler settings (conftest's), and a compilation cache that the runs of one test share.

    Args:
      tmp_path: the test's folder; the child's `NST_JAX_HOME` and JAX cache live under it.
      devices: emulate this many CPU devices (XLA's `--xla_force_host_platform_device_count`).
      fast_compile: keep the suite's `FAST_COMPILE_FLAG`; False compiles as users do (numerical comparisons
        between differently built programs).
    """
    env = dict(os.environ)
    if not fast_compile:
        env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(FAST_COMPILE_FLAG, "").strip()
    env.update(JAX_PLATFORMS="cpu", NST_JAX_OFFLINE="1", NST_JAX_HOME=str(tmp_path / "home"),
               PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    if devices:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)  # a child is one process of its own unless the test says otherwise
    return env


def image_dirs(root: Path, *, contents: int = 6, styles: int = 2) -> dict[str, str]:
    """A content folder and a style folder of patterns under `root`: {"content", "style"} -> "folder:...".

    The content folder also holds `broken.jpg` (not a JPEG), which every run must skip and count.
    """
    dirs = {"content": write_images(root / "content", contents, seed=0, size=(44, 48), ext="jpg"),
            "style": write_images(root / "style", styles, seed=1, size=44)}
    (root / "content" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return dirs


def tiny_config(family: str, dirs: dict[str, str], **overrides):
    """The family's tiny recipe (configs/tiny*.py) reading `dirs`, without progress bars, with `overrides`.

    CIN's number of styles follows the style folder's number of pictures (its table has a row per picture).
    """
    c = importlib.import_module(f"configs.{TINY_CONFIGS[family]}").get_config()
    c.content_data = dirs["content"]
    c[STYLE_SOURCE_KEY[family]] = dirs["style"]
    if family == "cin":
        c.cin.num_styles = len(list(Path(dirs["style"].removeprefix("folder:")).glob("*.png")))
    c.progress = False
    for k, v in overrides.items():
        c[k] = v
    return c


def rel_err(a, b) -> float:
    """||a - b|| / ||b|| in float64 (the whole array's relative error)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def max_rel_err(a, b) -> float:
    """max |a - b| relative to the reference's largest magnitude."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def flat(tree, prefix: str = "") -> dict:
    """{"a/b/c": leaf} for a nested dict of arrays (leaves kept as they are)."""
    out = {}
    for k, v in tree.items():
        name = f"{prefix}/{k}" if prefix else str(k)
        out.update(flat(v, name) if isinstance(v, dict) else {name: v})
    return out


def metrics(workdir: Path) -> list[dict]:
    """The records of a run's metrics.jsonl."""
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def checkpoint_steps(workdir: Path) -> list[int]:
    """The finished checkpoint steps of a run (Orbax's temporary folders left out)."""
    root = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() else []


def assert_trees_equal(a: dict, b: dict) -> None:
    """Bitwise equality of two nested dicts of arrays, naming the first leaf that differs."""
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys(), (sorted(fa), sorted(fb))
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fb[k]), np.asarray(fa[k]), err_msg=k)
