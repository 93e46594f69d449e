"""Timing helpers shared by the benchmark scripts.

The benchmark machine is small (2 cores) and shared, so every comparison here is
- interleaved: one call of each contender per round, the order rotating between rounds, so load that comes and
  goes hits all of them alike;
- summarised by the median (and min / spread), never the mean;
- run under the same allocator settings for every contender: glibc's mmap of large buffers costs PyTorch
  and XLA page faults on every call (DESIGN.md), so scripts re-exec themselves with `ALLOCATOR_ENV` (unless
  told not to);
- annotated with the load average, so a reader can tell a quiet run from a noisy one.

Contenders that must live in different processes (XLA flags are read once at start-up) run as
`SubprocessTimer` workers driven round-robin through pipes, so they are interleaved too.

Usage:
    from benchmarks.common import interleave, summarize, reexec_with_allocator_env
    reexec_with_allocator_env()          # first thing in main()
    times = interleave({"ours": f, "torch": g}, repeats=10)
    print(summarize(times))
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence

# glibc: never serve large allocations with mmap (each fresh mapping is page-faulted in again on every call)
# and never give freed memory back to the OS. 2**40 is "never" for any machine this runs on.
ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40)}
_NO_REEXEC = "NST_BENCH_NO_REEXEC"


def allocator_tuned() -> bool:
    """Whether this process runs with `ALLOCATOR_ENV`."""
    return all(os.environ.get(k) == v for k, v in ALLOCATOR_ENV.items())


def reexec_with_allocator_env(enabled: bool = True) -> None:
    """Restart this script (same argv) with `ALLOCATOR_ENV` set, unless it already is or `enabled` is False.

    glibc reads these variables only at start-up, hence the exec. Call it before importing jax or torch.
    """
    if not enabled or allocator_tuned() or os.environ.get(_NO_REEXEC):
        return
    env = {**os.environ, **ALLOCATOR_ENV, _NO_REEXEC: "1"}
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def allocator_note() -> str:
    """One line saying which allocator settings this process runs under."""
    if allocator_tuned():
        return "allocator: glibc, " + " ".join(f"{k}={v}" for k, v in ALLOCATOR_ENV.items())
    return "allocator: glibc defaults"


def machine_note() -> str:
    """CPU count, model and the current load average (1/5/15 min)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return f"{os.cpu_count()} CPUs ({model}), load average {load}"


def ort_options(threads: int):
    """onnxruntime session options for an interleaved comparison: `threads` intra-op threads, no spinning.

    onnxruntime's idle workers spin by default; in a round-robin with other sessions (or XLA) the spinning pool
    of the session that just ran takes cores from the next one, so each contender would be timed against the
    others' idle threads (benchmarks/RESULTS.md has the measurement).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def interleave(fns: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1,
               budget_s: float | None = None,
               cpu_times: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Time each callable `repeats` times, one call of each per round, rotating the order every round.

    Args:
      fns: name -> zero-argument callable that runs one measured call and blocks until its result is ready.
      repeats: rounds to time.
      warmup: untimed rounds first (compilation, allocator warm-up).
      budget_s: stop early (after at least 3 rounds) once this many seconds have been spent timing.
      cpu_times: if given, filled with name -> CPU seconds of this process (all its threads) per call: the
        work done, which other processes' load inflates far less than wall time (spinning threads count).

    Returns:
      name -> list of wall-clock seconds.
    """
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    if cpu_times is not None:
        cpu_times.update({n: [] for n in names})
    start = time.perf_counter()
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            c0, t0 = time.process_time(), time.perf_counter()
            fns[n]()
            t1, c1 = time.perf_counter(), time.process_time()
            times[n].append(t1 - t0)
            if cpu_times is not None:
                cpu_times[n].append(c1 - c0)
        if budget_s is not None and r >= 2 and time.perf_counter() - start > budget_s:
            break
    return times


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def stats(xs: Sequence[float]) -> dict[str, float]:
    """median, min and interquartile range of a list of seconds."""
    s = sorted(xs)
    q1, q3 = s[len(s) // 4], s[(3 * len(s)) // 4]
    return {"median": statistics.median(s), "min": s[0], "iqr": q3 - q1, "n": len(s)}


def summarize(times: Mapping[str, Sequence[float]], unit: float = 1e3, unit_name: str = "ms") -> str:
    """A small aligned table: name, median, min, IQR, n."""
    width = max(len(n) for n in times)
    lines = [f"{'':{width}}  {'median':>9}  {'min':>9}  {'iqr':>8}   n"]
    for n, xs in times.items():
        s = stats(xs)
        lines.append(f"{n:{width}}  {s['median'] * unit:7.1f}{unit_name}  {s['min'] * unit:7.1f}{unit_name}"
                     f"  {s['iqr'] * unit:6.1f}{unit_name}  {s['n']:3d}")
    return "\n".join(lines)


def paired_ratio(times: Mapping[str, Sequence[float]], num: str, den: str) -> float:
    """Median over rounds of times[num][i] / times[den][i]: each round's pair saw the same load."""
    return statistics.median(a / b for a, b in zip(times[num], times[den], strict=False))


# ----------------------------------------------------------------------------------------------------
# Contenders in other processes


def serve_timer(fn: Callable[[], object], setup_note: str = "") -> None:
    """Worker side of `SubprocessTimer`: announce readiness, then time `fn` once per "run" line on stdin.

    Call after compiling/warming `fn`. Protocol (one line each): worker "ready <note>", then for every "run"
    from the driver, worker "<wall seconds> <CPU seconds>"; "quit" or end of input ends it.
    """
    out = sys.stdout
    out.write(f"ready {setup_note}\n")
    out.flush()
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "run":
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            t1, c1 = time.perf_counter(), time.process_time()
            out.write(f"{t1 - t0!r} {c1 - c0!r}\n")
            out.flush()
        elif cmd == "quit":
            break


class SubprocessTimer:
    """Driver side: a worker process (running `serve_timer`) that times one call per `__call__`.

    `interleave({"a": SubprocessTimer(cmd_a), "b": SubprocessTimer(cmd_b)}, ...)` interleaves the workers; the
    time recorded is the worker's own, so pipe overhead is excluded. `last` holds the worker's last wall time,
    `cpu` every CPU time (of the worker process) it reported.
    """

    def __init__(self, cmd: Sequence[str], env: Mapping[str, str] | None = None, timeout_s: float = 600):
        self.proc = subprocess.Popen(list(cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=None if env is None else dict(env), bufsize=1)
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            self.close()
            raise RuntimeError(f"benchmark worker {cmd} did not start (said {line!r})")
        self.note = line[len("ready"):].strip()
        self.last = float("nan")
        self.cpu: list[float] = []

    def __call__(self) -> float:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        wall, cpu = self.proc.stdout.readline().split()
        self.last = float(wall)
        self.cpu.append(float(cpu))
        return self.last

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
            self.proc.wait(timeout=30)


def interleave_subprocesses(timers: Mapping[str, SubprocessTimer], repeats: int, warmup: int = 1,
                            budget_s: float | None = None,
                            cpu_times: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """`interleave` over worker processes, recording the workers' own wall (and, if asked, CPU) times."""
    recorded: dict[str, list[float]] = {n: [] for n in timers}

    def make(n):
        def call():
            recorded[n].append(timers[n]())
        return call

    fns = {n: make(n) for n in timers}
    interleave(fns, repeats, warmup, budget_s)
    # drop the warm-up calls, which `interleave` made but did not time
    if cpu_times is not None:
        cpu_times.update({n: t.cpu[warmup:] for n, t in timers.items()})
    return {n: xs[warmup:] for n, xs in recorded.items()}
