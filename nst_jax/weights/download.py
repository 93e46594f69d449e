"""Fetching published weights into the cache: verified, atomic, resumable, with a progress bar.

Files go to `cache_dir() / "weights" / <publisher's file name>` (`$NST_JAX_HOME`, else `~/.cache/nst_jax`). A
download is written to `<file>.part` beside its destination, checked (see `registry` for the hash policy),
then renamed into place, so the destination only ever holds a complete, verified file. A transfer cut off
midway (or stopped with Ctrl-C) keeps its `.part` and the next `fetch` resumes it with an HTTP Range request;
every other failure (offline, HTTP error, wrong hash) leaves nothing behind and raises a one-line
`DownloadError` naming the URL and the path to put the file at by hand.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from nst_jax import runtime
from nst_jax.errors import DownloadError, NstError
from nst_jax.files import atomic_write, file_digests
from nst_jax.weights.registry import Source, get_source

try:  # POSIX: serialise concurrent downloads of one file (several processes of a multi-process job)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

TIMEOUT_S = 60.0
CHUNK = 1 << 20


def cache_dir() -> Path:
    """The nst-jax cache root: `$NST_JAX_HOME`, else `~/.cache/nst_jax`."""
    return Path(os.environ.get("NST_JAX_HOME") or "~/.cache/nst_jax").expanduser()


def weights_dir() -> Path:
    """Where downloaded weights live: `cache_dir() / "weights"`."""
    return cache_dir() / "weights"


def cached_path(name: str) -> Path:
    """Where registry entry `name` is (or would be) cached; also where to put it by hand."""
    return weights_dir() / get_source(name).filename


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def hash_mismatch(source: Source, sha256: str, md5: str, size: int) -> str | None:
    """Describe how a file fails the publisher's digests, or None if it passes all that are published."""
    if source.sha256 and sha256 != source.sha256.lower():
        return f"sha256 {sha256} is not the published {source.sha256}"
    if source.sha256_prefix and not sha256.startswith(source.sha256_prefix.lower()):
        return f"sha256 {sha256[:16]}... does not start with the published {source.sha256_prefix}"
    if source.md5 and md5 != source.md5.lower():
        return f"md5 {md5} is not the published {source.md5}"
    if source.size is not None and size != source.size:
        return f"size {size} is not the published {source.size} bytes"
    return None


def _write_sidecar(path: Path, sha256: str) -> None:
    atomic_write(_sidecar(path), f"{sha256}  {path.name}\n", overwrite=True)


def recorded_sha256(path: Path) -> str | None:
    """The SHA-256 recorded when `path` was downloaded and verified, if any."""
    try:
        return _sidecar(path).read_text().split()[0]
    except (OSError, IndexError):
        return None


@contextlib.contextmanager
def _locked_part(part: Path) -> Iterator[BinaryIO]:
    """Open `part` for appending under an exclusive lock, re-opening if another process renamed it away."""
    while True:
        f = open(part, "ab")  # noqa: SIM115 - closed below
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            same = os.stat(part).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        f.close()
    try:
        yield f
    finally:
        f.close()


@dataclass
class _Fail(Exception):
    reason: str
    keep_part: bool = False


def _transfer(url: str, f: BinaryIO, desc: str, progress: bool | None) -> None:
    """Append the bytes of `url` not yet in `f` (HTTP Range), raising `_Fail` on any problem."""
    from tqdm.auto import tqdm

    from nst_jax import __version__

    have = f.seek(0, os.SEEK_END)
    for attempt in range(2):
        headers = {"User-Agent": f"nst-jax/{__version__}"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
        except urllib.error.HTTPError as e:
            if e.code == 416 and have and attempt == 0:  # stale .part longer than the file: start over
                f.truncate(0)
                have = 0
                continue
            raise _Fail(f"HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise _Fail(f"cannot connect ({reason})", keep_part=have > 0) from None
        break
    with resp:
        status = getattr(resp, "status", None) or 200
        if have and status != 206:  # the server ignored the Range: restart from byte 0
            f.truncate(0)
            have = 0
        length = resp.headers.get("Content-Length") if resp.headers else None
        total = have + int(length) if length and length.isdigit() else None
        got = have
        try:
            with tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                      disable=None if progress is None else not progress, leave=False) as bar:
                while chunk := resp.read(CHUNK):
                    f.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
        except (OSError, http.client.HTTPException) as e:
            f.flush()
            raise _Fail(f"interrupted after {got} bytes ({e})", keep_part=got > 0) from None
        if total is not None and got != total:
            raise _Fail(f"interrupted after {got} of {total} bytes", keep_part=got > 0)


Validator = Callable[[Path, Source], None]


def fetch(name: str, *, force: bool = False, progress: bool | None = None,
          source: Source | None = None, validate: Validator | None = None) -> Path:
    """The cached file of registry entry `name`, downloading and verifying it first if needed.

    Args:
      name: registry name ("adain", "adain-decoder", "torchvision", "keras").
      force: download again even if cached.
      progress: show a tqdm bar (None: only on a terminal).
      source: use this entry instead of the registry's (tests, private mirrors).
      validate: `validate(path, source)` raises `NstError` unless the file parses and is the network `source`
        describes; run on a download of a file without a published hash (`nst_jax.weights.fetch` passes the
        ports' content check). Without it such a file is only recorded by its sha256.

    Returns:
      Path of the verified file in `weights_dir()`.

    Raises:
      DownloadError: offline (`nst_jax.runtime.offline()`, e.g. NST_JAX_OFFLINE=1), unreachable, HTTP error, or
        the file fails its published hash or content check; one line with the URL and where to put the file by
        hand.
    """
    source = source or get_source(name)
    dest = weights_dir() / source.filename
    if dest.is_file() and not force:
        return dest
    url = source.effective_url
    by_hand = f"download {url} by hand and put it at {dest}"
    if runtime.offline():
        raise DownloadError(f"cannot fetch {source.name}: offline (NST_JAX_OFFLINE is set); {by_hand}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create {dest.parent} ({e.strerror}); set NST_JAX_HOME elsewhere") \
            from None
    part = dest.with_name(dest.name + ".part")
    with _locked_part(part) as f:
        if dest.is_file() and not force:  # another process finished it while we waited for the lock
            part.unlink(missing_ok=True)
            return dest
        try:
            _transfer(url, f, source.name, progress)
        except _Fail as e:
            if not e.keep_part:
                part.unlink(missing_ok=True)
                raise DownloadError(f"cannot fetch {source.name} from {url}: {e.reason}; put the file at "
                                    f"{dest}") from None
            raise DownloadError(f"cannot fetch {source.name} from {url}: {e.reason}; run again to resume "
                                f"from {part}, or put the file at {dest}") from None
        except BaseException:  # Ctrl-C: keep what arrived for the next attempt to resume, if anything did
            f.flush()
            if part.exists() and part.stat().st_size == 0:
                part.unlink()
            raise
        sha256, md5 = file_digests(part, ("sha256", "md5"))
        problem = hash_mismatch(source, sha256, md5, part.stat().st_size)
        if problem is None and validate is not None and not (source.sha256 or source.sha256_prefix or source.md5):
            try:
                validate(part, source)
            except NstError as e:
                problem = f"the file is not {source.name}'s weights ({e})"
        if problem is not None:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{url}: {problem}; the download was removed; {by_hand}")
        os.replace(part, dest)
    _write_sidecar(dest, sha256)
    return dest


@dataclass(frozen=True)
class CacheStatus:
    """What `nst-jax info` reports for one registry entry."""

    source: Source
    path: Path
    cached: bool
    size: int | None
    status: str


def cache_status(name: str, *, verify: bool = False, validate: Validator | None = None) -> CacheStatus:
    """Whether entry `name` is cached and what is known of its integrity (re-hashed if `verify`; a file without
    a published hash is content-checked with `validate`, as in `fetch`)."""
    source = get_source(name)
    path = weights_dir() / source.filename
    if not path.is_file():
        return CacheStatus(source, path, False, None, "not cached")
    size = path.stat().st_size
    recorded = recorded_sha256(path)
    published = source.sha256 or source.sha256_prefix or source.md5
    if not verify:
        if recorded:
            what = f"{source.published_hash} checked" if published else "content checked"
            return CacheStatus(source, path, True, size, f"{what} at download (sha256 {recorded[:12]}...)")
        return CacheStatus(source, path, True, size, "placed by hand, not verified (nst-jax info --verify)")
    sha256, md5 = file_digests(path, ("sha256", "md5"))
    problem = hash_mismatch(source, sha256, md5, size)
    if problem:
        return CacheStatus(source, path, True, size, f"BAD: {problem}")
    if recorded and recorded != sha256:
        return CacheStatus(source, path, True, size, f"BAD: changed since download (sha256 {sha256[:12]}... "
                                                     f"recorded {recorded[:12]}...)")
    if published:
        return CacheStatus(source, path, True, size, f"{source.published_hash} verified now")
    if validate is None:
        note = "matches the sha256 recorded at download" if recorded else "no published hash, content not checked"
        return CacheStatus(source, path, True, size, f"{note} (sha256 {sha256[:12]}...)")
    try:
        validate(path, source)
    except NstError as e:
        return CacheStatus(source, path, True, size, f"BAD: {e}")
    note = "matches the sha256 recorded at download" if recorded else "no published hash"
    return CacheStatus(source, path, True, size, f"content verified now; {note} (sha256 {sha256[:12]}...)")
