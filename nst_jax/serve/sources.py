"""Server-side video: a camera or video file read with OpenCV, and a recorder of the stylized stream.

OpenCV is imported lazily: it is only needed for `--camera`, `--video` and `--record`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nst_jax.errors import NstError
from nst_jax.files import move_into_place, temp_file_beside

RECORD_CODECS = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


def _cv2():
    try:
        import cv2
    except ImportError:
        raise NstError("--camera, --video and --record need OpenCV: pip install 'nst-jax[serve]'") from None
    return cv2


class VideoSource:
    """Reads frames in a background thread; the latest one is always available (older ones are dropped).

    A video file plays at its own frame rate and loops; a camera is read as fast as it delivers.

    Args:
      camera: an OpenCV camera index, or
      video: a video file path.

    Raises:
      NstError: the camera or file cannot be opened or yields no frame.
    """

    def __init__(self, camera: int | None = None, video: str | Path | None = None):
        if (camera is None) == (video is None):
            raise ValueError("give exactly one of camera or video")
        cv2 = _cv2()
        if video is not None:
            path = Path(video)
            if not path.is_file():
                raise NstError(f"--video: no such file: {path}")
            self.label = f"video {path.name}"
            cap = cv2.VideoCapture(str(path))
        else:
            self.label = f"camera {camera}"
            cap = cv2.VideoCapture(int(camera))
        if not cap.isOpened():
            cap.release()
            hint = " (is a camera attached?)" if video is None else ""
            raise NstError(f"cannot open {self.label}{hint}")
        ok, frame = cap.read()
        if not ok or frame is None:
            cap.release()
            raise NstError(f"{self.label} yields no frames")
        self.is_file = video is not None
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 1.0 <= fps <= 240.0 else 30.0
        self._cv2 = cv2
        self._cap = cap
        self._lock = threading.Lock()
        self._frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        self._count = 1
        self._stop = threading.Event()
        self._listeners: list[Callable[[], None]] = []
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    def on_frame(self, callback: Callable[[], None]) -> None:
        """Call `callback()` from the reader thread after every new frame (keep it cheap and thread-safe)."""
        self._listeners.append(callback)

    def latest(self) -> tuple[int, np.ndarray]:
        """(frame number, (H, W, 3) uint8 RGB) of the newest frame."""
        with self._lock:
            return self._count, self._frame

    def start(self) -> None:
        """Start the reader thread."""
        self._thread = threading.Thread(target=self._run, name="nst-source", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        cv2 = self._cv2
        period = 1.0 / self.fps
        next_t = time.perf_counter()
        failures = 0
        while not self._stop.is_set():
            ok, frame = self._cap.read()
            if not ok or frame is None:
                if self.is_file:
                    self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    failures += 1
                    if failures > 3:
                        self.error = f"{self.label} stopped yielding frames"
                        return
                    continue
                failures += 1
                if failures > 50:
                    self.error = f"{self.label} stopped yielding frames"
                    return
                self._stop.wait(0.02)
                continue
            failures = 0
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            with self._lock:
                self._frame = rgb
                self._count += 1
            for cb in self._listeners:
                cb()
            if self.is_file:
                # Play files in real time, as a camera would deliver them.
                next_t += period
                delay = next_t - time.perf_counter()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    next_t = time.perf_counter()

    def close(self) -> None:
        """Stop the thread and release the device or file."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._cap.release()


class Recorder:
    """Writes the stylized stream to a video file in real time (frames repeat while the model is busy).

    Written to a temporary file beside the target and moved into place by `close` (`nst_jax.files`: flushed,
    the usual file permissions, an atomic rename), so an interrupted run never leaves a half-written file under
    the requested name.

    Args:
      path: .mp4 (mp4v) or .avi/.mkv (MJPG).
      size: frame side (frames are size x size).
      fps: frame rate of the file.
      overwrite: replace an existing file.

    Raises:
      NstError: unknown extension, the file exists (without overwrite), or OpenCV cannot write it.
    """

    def __init__(self, path: str | Path, size: int, fps: float = 30.0, overwrite: bool = False):
        cv2 = _cv2()
        self.path = Path(path)
        codec = RECORD_CODECS.get(self.path.suffix.lower())
        if codec is None:
            raise NstError(f"--record: unsupported extension {self.path.suffix!r} "
                           f"(use one of {', '.join(sorted(RECORD_CODECS))})")
        if self.path.exists() and not overwrite:
            raise NstError(f"--record: {self.path} exists (pass --overwrite to replace it)")
        if not self.path.parent.is_dir():
            raise NstError(f"--record: no such directory: {self.path.parent}")
        # OpenCV picks the container by the extension, so the temporary file keeps it.
        self._tmp = temp_file_beside(self.path, suffix=self.path.suffix)
        fourcc = cv2.VideoWriter_fourcc(*codec)
        self._writer = cv2.VideoWriter(str(self._tmp), fourcc, float(fps), (size, size))
        if not self._writer.isOpened():
            self._tmp.unlink(missing_ok=True)
            raise NstError(f"--record: OpenCV cannot write {self.path} with codec {codec}")
        self._cv2 = cv2
        self.size = size
        self.fps = float(fps)
        self.frames = 0
        self._t0: float | None = None
        self._lock = threading.Lock()
        self._closed = False

    def write(self, rgb: np.ndarray, now: float | None = None) -> int:
        """Add a stylized frame ((size, size, 3) uint8 RGB) at time `now`; returns the file frames it filled.

        The frame is repeated until the file's clock catches up with `now`, so playback runs at real speed.
        """
        now = time.perf_counter() if now is None else now
        with self._lock:
            if self._closed:
                return 0
            if self._t0 is None:
                self._t0 = now
            target = int((now - self._t0) * self.fps) + 1
            n = max(target - self.frames, 0)
            if n:
                bgr = self._cv2.cvtColor(np.ascontiguousarray(rgb), self._cv2.COLOR_RGB2BGR)
                for _ in range(n):
                    self._writer.write(bgr)
                self.frames += n
            return n

    def close(self) -> Path | None:
        """Finish the file and move it into place; returns its path (None if no frame was ever written)."""
        with self._lock:
            if self._closed:
                return self.path if self.frames else None
            self._closed = True
            self._writer.release()
            if self.frames == 0:
                self._tmp.unlink(missing_ok=True)
                return None
            return move_into_place(self._tmp, self.path)
