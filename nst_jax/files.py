"""Bytes on disk and in memory: the one atomic write, the one file digest, the one array digest.

Every file nst-jax writes (images, converted weights, download sidecars, a run's config, recorded video) appears
complete or not at all: it is written to a temporary file in the destination's folder, flushed to disk, given the
permissions a plain `open()` would have (0o666 minus the umask; `mkstemp` alone makes 0o600 files), and renamed
over the destination. A failure removes the temporary file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

CHUNK = 1 << 20

Writer = Callable[[BinaryIO], object]


def _umask() -> int:
    # Linux reports the umask without changing it; the os.umask round trip below briefly changes it for every
    # thread of the process, so it is only the fallback (and then narrows rather than widens).
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The permission bits `open(path, "w")` would give a new file: 0o666 minus the process umask."""
    return 0o666 & ~_umask()


def temp_file_beside(path: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """Create an empty, private temporary file in `path`'s folder and return its name.

    For writers that need a file name rather than a file object (OpenCV's VideoWriter); finish with
    `move_into_place`. `suffix` lets a writer that picks its container by extension see the right one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def move_into_place(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Flush `tmp` to disk, give it the default file permissions and rename it over `path` (atomic).

    Returns:
      `path`.
    """
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, default_file_mode())
    os.replace(tmp, path)
    return Path(path)


def atomic_write(path: str | os.PathLike, data_or_writer: bytes | str | Writer, *,
                 overwrite: bool = False) -> Path:
    """Write a file so that it appears complete or not at all.

    Args:
      path: the destination; missing parent folders are created.
      data_or_writer: the bytes (or text, written as UTF-8), or a function that writes them to the binary file
        object it is given (e.g. `lambda f: np.savez(f, **arrays)`).
      overwrite: replace an existing file; otherwise an existing file is refused before anything is written.

    Returns:
      `path` as a `Path`.

    Raises:
      FileExistsError: `path` exists and not `overwrite`.
      OSError, or whatever the writer raises: nothing is left behind (the destination is untouched).
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_file_beside(path)
    try:
        with open(tmp, "wb") as f:
            if callable(data_or_writer):
                data_or_writer(f)
            else:
                f.write(data_or_writer.encode() if isinstance(data_or_writer, str) else data_or_writer)
        move_into_place(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def file_digests(path: str | os.PathLike, algorithms: tuple[str, ...] = ("sha256",)) -> tuple[str, ...]:
    """Hex digests of a file in one pass, one per `hashlib` algorithm name (e.g. ("sha256", "md5"))."""
    hashes = [hashlib.new(a, usedforsecurity=False) for a in algorithms]
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            for h in hashes:
                h.update(chunk)
    return tuple(h.hexdigest() for h in hashes)


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file (SHA-256 unless told otherwise)."""
    return file_digests(path, (algorithm,))[0]


def array_digest(a: np.ndarray) -> str:
    """Content hash of an array (dtype, shape and values), for caches keyed by image content.

    Two arrays get the same digest only if they hold the same values with the same shape and dtype.
    """
    a = np.ascontiguousarray(a)
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.data)
    return h.hexdigest()
