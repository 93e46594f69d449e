"""Joining a multi-process (multi-host) run: train.py's flags and environment -> `jax.distributed.initialize`.

Every process of a run starts the same command; JAX's multi-controller runtime connects them through a
coordinator (process 0's address). Where to find it, how many processes there are and which one this is come from,
in order: the flags (`--coordinator`, `--num-processes`, `--process-id`), the environment
(`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`), or JAX's own cluster detection (TPU pods,
SLURM, Open MPI, Kubernetes, ...; `--distributed` asks for it when nothing else is given).

This must run before anything touches JAX's devices, and once per process.
"""

from __future__ import annotations

import dataclasses
import errno
import importlib.util
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping
from typing import NoReturn

from nst_jax.errors import NstError

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


class DistributedError(NstError):
    """The multi-process settings are inconsistent, or the coordinator could not be reached in time."""


@dataclasses.dataclass(frozen=True)
class Launch:
    """How this process joins a run; None fields are left to JAX's cluster detection.

    Attributes:
      coordinator: "host:port" of process 0's coordinator service.
      num_processes: how many processes the run has.
      process_id: this process's index in [0, num_processes).
      timeout_s: how long to wait for the coordinator (and for every process to join).
      heartbeat_s: after how long without news from a process the others give up (they exit non-zero).
    """

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    timeout_s: int = 300
    heartbeat_s: int = 100


def _int(value: str | int | None, what: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        raise DistributedError(f"{what} must be an integer, got {value!r}") from None


def _seconds(value: float | str, what: str) -> int:
    try:
        seconds = float(str(value).strip())
    except ValueError:
        raise DistributedError(f"{what} must be a number of seconds, got {value!r}") from None
    if not seconds > 0 or seconds > 86400 * 7:
        raise DistributedError(f"{what} must be a positive number of seconds, got {value!r}")
    return max(int(round(seconds)), 1)  # JAX takes whole seconds


def resolve(coordinator: str | None = None, num_processes: int | str | None = None,
            process_id: int | str | None = None, *, auto: bool = False, timeout_s: float | str = 300,
            heartbeat_s: float | str = 100, environ: Mapping[str, str] | None = None) -> Launch | None:
    """The multi-process settings of this process from flags (given values win) and the environment.

    Args:
      coordinator, num_processes, process_id: the flags' values (None: not given).
      auto: `--distributed`: join a run even if nothing above is given (JAX detects the cluster).
      timeout_s: seconds to wait for the coordinator.
      heartbeat_s: seconds without a heartbeat after which a process is considered dead.
      environ: the environment (default `os.environ`).

    Returns:
      a `Launch`, or None for a single-process run (nothing given, not `auto`).

    Raises:
      DistributedError: a value is malformed or the settings contradict each other.
    """
    env = os.environ if environ is None else environ
    coordinator = coordinator or env.get(ENV_COORDINATOR) or None
    n = _int(num_processes, "--num-processes") if num_processes is not None else \
        _int(env.get(ENV_NUM_PROCESSES), ENV_NUM_PROCESSES)
    pid = _int(process_id, "--process-id") if process_id is not None else \
        _int(env.get(ENV_PROCESS_ID), ENV_PROCESS_ID)
    if coordinator is None and n is None and pid is None and not auto:
        return None
    if coordinator is not None:
        host, sep, port = coordinator.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise DistributedError(f"the coordinator address must be HOST:PORT, got {coordinator!r}")
    if n is not None and n < 1:
        raise DistributedError(f"the number of processes must be positive, got {n}")
    if pid is not None and (pid < 0 or (n is not None and pid >= n)):
        raise DistributedError(f"the process id must be in [0, {n if n is not None else 'N'}), got {pid}")
    timeout_s, heartbeat_s = _seconds(timeout_s, "--coordinator-timeout"), _seconds(heartbeat_s, "--heartbeat-timeout")
    if not _cluster_detected() and (coordinator is None or n is None or pid is None):
        missing = [what for what, v in (("--coordinator", coordinator), ("--num-processes", n),
                                        ("--process-id", pid)) if v is None]
        raise DistributedError(
            f"a multi-process run needs {', '.join(missing)} (or {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, "
            f"{ENV_PROCESS_ID}) here: JAX detects them by itself only on TPU pods, SLURM, Open MPI and "
            f"Kubernetes (see docs/training.md)")
    return Launch(coordinator, n, pid, timeout_s, heartbeat_s)


def _cluster_detected() -> bool:
    """Whether one of JAX's cluster environments (TPU, SLURM, Open MPI, Kubernetes, ...) sees this process."""
    try:
        from jax._src import clusters  # the detection JAX itself runs in initialize()

        return any(env.is_env_present() for env in clusters.ClusterEnv._cluster_types
                   if not env.opt_in_only_method)
    except Exception:  # a private API: if it moved, let JAX decide (and report what is missing)
        return True


def cpu_platform() -> bool:
    """Whether JAX will run on the CPU, decided without starting a backend (which must come after initialize).

    `JAX_PLATFORMS` / `jax_platforms` decides when set; otherwise the CPU unless an accelerator plugin
    (CUDA, ROCm, TPU) is installed.
    """
    import jax

    platforms = jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu"
    accelerators = ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin")
    return not any(importlib.util.find_spec(name) is not None for name in accelerators)


def initialize(launch: Launch) -> None:
    """Join the run `launch` describes: `jax.distributed.initialize`, once.

    On the CPU, cross-process collectives go through gloo (set before initialize, unless
    `JAX_CPU_COLLECTIVES_IMPLEMENTATION` chose another). A second call in the same process does nothing.

    Raises:
      DistributedError: the coordinator was not reached within `launch.timeout_s`, its port is taken, the
        backend was already started, or JAX refused the settings; one line. When the coordinator is reached but
        not every process joins within `launch.timeout_s`, this process says so in one line and exits 2.
    """
    import jax
    from jax._src import xla_bridge

    if jax.distributed.is_initialized():
        return
    if xla_bridge.backends_are_initialized():
        raise DistributedError("jax.distributed must be initialised before JAX's devices are used (a bug: "
                               "something touched them first)")
    if cpu_platform() and not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # JAX's client aborts the whole process, with a C++ stack trace, when it cannot register in time: check first,
    # in Python, what can be checked (the port on process 0, the coordinator's reachability elsewhere).
    if launch.coordinator is not None and launch.process_id == 0:
        _check_port_free(launch.coordinator)
    elif launch.coordinator is not None and launch.process_id is not None:
        _wait_for_coordinator(launch.coordinator, launch.timeout_s)
    # Registration waits for every process; when one never comes, JAX's client aborts the process with a C++
    # trace once its own timeout (set a little later) expires. Leave first, in one line.
    watchdog = threading.Timer(launch.timeout_s, _not_everyone_joined, (launch,))
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(coordinator_address=launch.coordinator, num_processes=launch.num_processes,
                                   process_id=launch.process_id, initialization_timeout=launch.timeout_s + 10,
                                   heartbeat_timeout_seconds=launch.heartbeat_s)
    except Exception as e:  # ValueError (settings), JaxRuntimeError (DEADLINE_EXCEEDED, bind failure), ...
        text = " ".join(str(e).split()) or type(e).__name__
        where = launch.coordinator or os.environ.get(ENV_COORDINATOR) or "the auto-detected coordinator"
        if "DEADLINE_EXCEEDED" in text or "timed out" in text.lower() or "Deadline" in text:
            raise DistributedError(f"could not reach the coordinator at {where} within {launch.timeout_s} s "
                                   f"(is process 0 running, and every process started with the same "
                                   f"--coordinator and --num-processes?)") from None
        raise DistributedError(f"could not join the run through {where}: {text[:300]}") from None
    finally:
        watchdog.cancel()


def _not_everyone_joined(launch: Launch) -> NoReturn:
    n = f" of the {launch.num_processes}" if launch.num_processes else ""
    print(f"train.py: error: not every process{n} joined the run at {launch.coordinator or 'the coordinator'} "
          f"within {launch.timeout_s} s (--coordinator-timeout): is every process started, with the same "
          f"--coordinator and --num-processes?", file=sys.stderr)
    sys.stderr.flush()
    os._exit(2)


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _check_port_free(address: str) -> None:
    """Process 0 serves the coordinator on every interface at the address's port: it must be free."""
    _, port = _host_port(address)
    for family, where in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((where, port))
            return
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise DistributedError(f"process 0 cannot serve the coordinator on port {port}: it is in use "
                                       f"(pick another --coordinator port)") from None
    # neither family could be tried (no IPv6, ...): let JAX report what it finds


def _wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Wait until the coordinator accepts TCP connections, at most `timeout_s` seconds."""
    host, port = _host_port(address)
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(min(left, 5.0), 0.1)):
                return
        except OSError as e:
            if time.monotonic() + 0.25 >= deadline:
                reason = e.strerror or type(e).__name__
                raise DistributedError(f"could not reach the coordinator at {address} within {timeout_s} s "
                                       f"({reason.lower()}; is process 0 running, and was every process "
                                       f"started with the same --coordinator?)") from None
            time.sleep(0.25)


def leave_failed_run(error: BaseException) -> NoReturn:
    """Report a multi-process run that failed under this process (typically: another process died and a
    collective broke) in one line, and exit 1 at once.

    A normal exit would wait in JAX's shutdown barrier for every process, which a dead one never reaches.
    """
    import jax

    text = " ".join(str(error).split())[:300] or type(error).__name__
    print(f"train.py: error: process {jax.process_index()} of {jax.process_count()} stopped: {text}. If another "
          f"process failed, run the same commands again: the run resumes from its last checkpoint",
          file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)
