"""Process-wide switches: the offline flag, the glibc allocator settings the front doors apply, and XLA's CPU
compile options.

Nothing here imports JAX at import time, so weight lookups and `--help` stay fast.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any

OFFLINE_ENV = "NST_JAX_OFFLINE"
# Values of NST_JAX_OFFLINE that mean "offline" (case and surrounding spaces ignored).
_TRUE = ("1", "true", "yes", "on")


def offline() -> bool:
    """Whether `NST_JAX_OFFLINE` forbids network access: 1, true, yes or on (any case) mean offline.

    Weight downloads (`nst_jax.weights.fetch`) and tfds dataset downloads (`nst_jax.data.open_source`) both ask
    here, so one setting means the same for both.
    """
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in _TRUE


def tune_allocator() -> bool:
    """Make glibc keep freed large buffers for reuse instead of returning them to the OS after every pass.

    XLA's CPU runtime allocates each program's scratch memory on its worker threads. glibc serves those from
    per-thread arenas that cannot hold more than 64 MiB, so it falls back to a fresh `mmap` even with
    `MALLOC_MMAP_MAX_=0`, and the kernel page-faults and zeroes the memory again on every pass (measured in
    docs/stylize.md, Performance). One arena, no mmap and no trimming keep the memory in the process. Like starting
    with `MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>`; call it before the first
    computation. The cost: memory freed after a large image stays with the process until it exits. The
    command lines call it; NST_JAX_MALLOC=default turns it off. The trim threshold is -1 (never trim, as
    mallopt(3) documents) rather than the largest int: a training step frees more than 2 GiB at once,
    and trimming it made every step fault all that memory in again (benchmarks/RESULTS.md).

    Returns:
      whether the settings were applied (False on non-glibc systems or when turned off).
    """
    if os.environ.get("NST_JAX_MALLOC", "") == "default":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8
    return all(mallopt(param, value) == 1 for param, value in
               ((m_arena_max, 1), (m_mmap_max, 0), (m_trim_threshold, -1)))


TRAIN_EIGEN_ENV = "NST_JAX_TRAIN_EIGEN_CONVOLUTIONS"
CPU_CONVOLUTIONS_ENV = "NST_JAX_CPU_CONVOLUTIONS"

# XLA's CPU backend hands dots and convolutions to YNNPACK by default. Keeping only the dots there sends
# convolutions to XLA's own (Eigen) kernels, which run narrow layers (the CIN network's 3-32 channels) much
# faster (benchmarks/RESULTS.md); wide layers are Winograd matrix products (`nst_jax.ops`) either way.
EIGEN_CONVOLUTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def cpu_compiler_options(options: dict[str, str] | None) -> dict[str, str]:
    """`options` when JAX runs on the CPU, else {} (they are CPU settings).

    `NST_JAX_CPU_CONVOLUTIONS=ynnpack` drops them (XLA's defaults, for comparisons); `=eigen` gives
    `EIGEN_CONVOLUTIONS` to every caller, including those that pass none.
    """
    import jax

    if jax.default_backend() != "cpu":
        return {}
    choice = os.environ.get(CPU_CONVOLUTIONS_ENV, "").strip().lower()
    if choice == "ynnpack":
        return {}
    if choice == "eigen":
        return dict(EIGEN_CONVOLUTIONS)
    return dict(options or {})


def jit(fn: Any, compiler_options: dict[str, str] | None = None, **kwargs: Any) -> Any:
    """`jax.jit(fn, **kwargs)` compiled with `cpu_compiler_options(compiler_options)`."""
    import jax

    return jax.jit(fn, compiler_options=cpu_compiler_options(compiler_options) or None, **kwargs)


def train_eigen_convolutions() -> bool:
    """Whether `NST_JAX_TRAIN_EIGEN_CONVOLUTIONS=1` asks for XLA's own convolutions in CPU train steps
    (`nst_jax.training.compiler_options`; the trainer's convolution strategy, `ops.conv_for_training`, then leaves
    kernel gradients to XLA)."""
    return os.environ.get(TRAIN_EIGEN_ENV, "") == "1"
