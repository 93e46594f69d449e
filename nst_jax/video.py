"""Video files in: probing and decoding into uint8 RGB batches, with the source's timing (PyAV or OpenCV).

Backends
- PyAV (`pip install 'nst-jax[video]'`; its wheel ships FFmpeg): decodes any container and codec FFmpeg knows,
  keeps the timing (a constant-rate source is written at its exact rate, e.g. 30000/1001; a variable-rate
  source keeps every frame's timestamp), copies the audio streams into the output
  (remuxed as they are when the output container accepts their codec, else re-encoded to its default audio
  codec), honours a rotation in the stream's display matrix (phone videos come out upright), and writes H.264
  (.mp4, .mov, .mkv, .m4v), VP9 (.webm) or MPEG-4 part 2 (.avi).
- OpenCV (`opencv-python-headless`), the fallback when PyAV is not installed: video only. What it loses: the
  audio (OpenCV neither reads nor writes sound: the output is silent), exact timestamps (a constant frame rate,
  the container's average, is written), rotation metadata, and H.264 (it writes MPEG-4 part 2 'mp4v' in .mp4 and
  .mov, Motion-JPEG in .avi and .mkv).

Files
- `probe(path)` checks a file before any work: it must open, hold a video stream, and decode a first frame; its
  packets are then counted (PyAV: demuxed, not decoded; OpenCV: grabbed) and compared with what the container
  declares (a frame count, or a duration), so a truncated file is refused before anything is computed. Every
  failure is a one-line `VideoError`.
- `VideoReader` decodes a probed file into uint8 RGB batches, in a background thread if asked.
- Writing (`VideoWriter`, atomic outputs) is `nst_jax.video_writer`.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from nst_jax.errors import NstError


class VideoError(NstError):
    """A video file could not be read or written (shown as one line)."""


BACKENDS = ("auto", "av", "opencv")
# A file is truncated when more than this many of the frames its container declares are missing, or (with only a
# duration declared) more than this share of duration x fps.
_FRAME_SLACK = 1
_DURATION_SLACK = 0.02


def have_pyav() -> bool:
    """Whether PyAV is installed."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str = "auto") -> str:
    """"av" or "opencv": `auto` picks PyAV when installed, else OpenCV.

    Raises:
      VideoError: an unknown backend, or the requested one is not installed.
    """
    if backend not in BACKENDS:
        raise VideoError(f"unknown video backend {backend!r}; use {', '.join(BACKENDS)}")
    if backend in ("auto", "av") and have_pyav():
        return "av"
    if backend == "av":
        raise VideoError("the av backend needs PyAV: pip install 'nst-jax[video]'")
    try:
        import cv2  # noqa: F401
    except ImportError:
        raise VideoError("reading video needs PyAV or OpenCV: pip install 'nst-jax[video]'") from None
    return "opencv"


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What `probe` found.

    Attributes:
      path: the file.
      width, height: the frames' size as displayed (after the stream's rotation).
      fps: the average frame rate (exact as a fraction where the container gives one).
      frames: number of video frames (counted).
      duration: the video's duration in seconds, or None if unknown.
      audio: the audio streams' codec names (empty: no audio, or the OpenCV backend, which cannot tell).
      rotation: degrees counter-clockwise applied to decoded frames (from the display matrix; PyAV only).
      time_base: the video stream's time base (timestamps are multiples of it; PyAV only).
      constant_rate: every frame lasts 1 / fps (to the time base's rounding); else the timestamps matter.
      backend: "av" or "opencv".
    """

    path: Path
    width: int
    height: int
    fps: Fraction
    frames: int
    duration: float | None
    audio: tuple[str, ...]
    rotation: int
    time_base: Fraction | None
    constant_rate: bool
    backend: str


def _short(e: BaseException) -> str:
    """FFmpeg's message without the errno and the file name PyAV appends."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text)
    return re.sub(r":\s*'[^']*'$", "", text)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoError(f"no such video file: {path}")
    if path.is_dir():
        raise VideoError(f"expected a video file, got a directory: {path}")
    if path.stat().st_size == 0:
        raise VideoError(f"{path} is empty")


def _parse_duration_tag(text: str | None) -> float | None:
    # Matroska writes each stream's duration as a "HH:MM:SS.nnnnnnnnn" tag.
    if not text:
        return None
    m = re.fullmatch(r"(\d+):(\d\d):(\d\d(?:\.\d+)?)", text.strip())
    return None if m is None else int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])


def _rotation_of(frame: Any) -> int:
    r = int(round(float(getattr(frame, "rotation", 0) or 0))) % 360
    return r if r in (0, 90, 180, 270) else 0


def _apply_rotation(rgb: np.ndarray, rotation: int) -> np.ndarray:
    return rgb if rotation == 0 else np.ascontiguousarray(np.rot90(rgb, k=rotation // 90))


def probe(path: str | os.PathLike, backend: str = "auto") -> VideoInfo:
    """Open a video, check it is whole, and describe it (see the module docstring for the checks).

    Args:
      path: the video file.
      backend: "auto", "av" or "opencv".

    Returns:
      a `VideoInfo`.

    Raises:
      VideoError: missing, unreadable, without a video stream, undecodable, or truncated.
    """
    path = Path(path)
    _check_file(path)
    backend = resolve_backend(backend)
    return _probe_av(path) if backend == "av" else _probe_cv(path)


def _probe_av(path: Path) -> VideoInfo:
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise VideoError(f"cannot read video {path}: {_short(e)} (damaged, truncated or not a video)") from None
    try:
        if not container.streams.video:
            raise VideoError(f"{path} holds no video stream (damaged, truncated or not a video)")
        stream = container.streams.video[0]
        try:
            first = next(container.decode(stream), None)
        except av.FFmpegError as e:
            raise VideoError(f"cannot decode video {path}: {_short(e)}") from None
        if first is None:
            raise VideoError(f"{path} has no decodable video frame")
        rotation = _rotation_of(first)
        width, height = (first.width, first.height) if rotation in (0, 180) else (first.height, first.width)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = Fraction(rate) if rate else Fraction(30)
        time_base = Fraction(stream.time_base) if stream.time_base else None
        declared = int(stream.frames or 0)
        if stream.duration and time_base:
            duration = float(stream.duration * time_base)
        else:
            # Matroska's tag is the stream's end time: from its start (muxers shift streams, e.g. to make
            # room for an audio codec's priming samples).
            duration = _parse_duration_tag(stream.metadata.get("DURATION"))
            if duration is not None and stream.start_time is not None and time_base:
                duration -= float(stream.start_time * time_base)
        audio = tuple(s.codec_context.name for s in container.streams.audio)
    except BaseException:
        container.close()
        raise
    container.close()

    # Demux (no decoding) to count the packets actually present.
    count = 0
    stamps: list[int] = []
    try:
        with av.open(str(path)) as c:
            for packet in c.demux(c.streams.video[0]):
                if packet.size:
                    count += 1
                    if packet.pts is not None:
                        stamps.append(int(packet.pts))
    except av.FFmpegError as e:
        raise VideoError(f"{path} is damaged after {count} frames: {_short(e)}") from None
    if declared and count + _FRAME_SLACK < declared:
        raise VideoError(f"{path} is truncated: {count} of the {declared} frames it declares are present")
    if not declared and duration and count + _FRAME_SLACK < duration * float(fps) * (1 - _DURATION_SLACK):
        raise VideoError(f"{path} is truncated: {count} frames present, its {duration:.2f} s at {float(fps):.3g} "
                         f"fps declare about {round(duration * float(fps))}")
    constant = True
    if time_base and len(stamps) > 1:
        # Constant rate when every frame lasts 1 / fps to within a tick (containers round timestamps to their
        # time base, e.g. milliseconds in Matroska).
        step = float(1 / (fps * time_base))
        deltas = np.diff(np.sort(np.asarray(stamps, np.float64)))
        constant = bool(np.all(np.abs(deltas - step) <= max(1.0, 0.01 * step)))
    return VideoInfo(path, width, height, fps, count, duration, audio, rotation, time_base, constant, "av")


def _cv2():
    try:
        import cv2
    except ImportError:
        raise VideoError("the opencv video backend needs OpenCV: pip install opencv-python-headless") from None
    return cv2


def _probe_cv(path: Path) -> VideoInfo:
    cv2 = _cv2()
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise VideoError(f"cannot read video {path}: OpenCV cannot open it")
        ok, frame = cap.read()
        if not ok or frame is None:
            raise VideoError(f"{path} has no decodable video frame")
        height, width = frame.shape[:2]
        fps_value = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        count = 1
        while cap.grab():
            count += 1
    finally:
        cap.release()
    fps = Fraction(fps_value).limit_denominator(1001) if 0 < fps_value <= 1000 else Fraction(30)
    if declared and count + _FRAME_SLACK < declared:
        raise VideoError(f"{path} is truncated: {count} of the {declared} frames it declares are present")
    return VideoInfo(path, int(width), int(height), fps, count, count / float(fps), (), 0, None, True, "opencv")


class VideoReader:
    """Decodes a probed video into uint8 RGB frames, optionally in a background thread.

    Args:
      info: from `probe`.
    """

    def __init__(self, info: VideoInfo):
        self.info = info

    def frames(self) -> Iterator[tuple[np.ndarray, int | None]]:
        """Every frame in display order: ((H, W, 3) uint8 RGB, pts in `info.time_base` units or None).

        Raises:
          VideoError: a decoding failure (with the frame number).
        """
        if self.info.backend == "av":
            yield from self._frames_av()
        else:
            yield from self._frames_cv()

    def _frames_av(self) -> Iterator[tuple[np.ndarray, int | None]]:
        import av

        path = self.info.path
        n = 0
        try:
            with av.open(str(path)) as c:
                stream = c.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in c.decode(stream):
                    rgb = frame.to_ndarray(format="rgb24")
                    yield _apply_rotation(rgb, self.info.rotation), frame.pts
                    n += 1
        except av.FFmpegError as e:
            raise VideoError(f"{path}: decoding failed after {n} frames: {_short(e)}") from None
        self._check_count(n)

    def _frames_cv(self) -> Iterator[tuple[np.ndarray, int | None]]:
        cv2 = _cv2()
        cap = cv2.VideoCapture(str(self.info.path))
        n = 0
        try:
            while True:
                ok, frame = cap.read()
                if not ok or frame is None:
                    break
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), None
                n += 1
        finally:
            cap.release()
        self._check_count(n)

    def _check_count(self, n: int) -> None:
        if n + _FRAME_SLACK < self.info.frames:
            raise VideoError(f"{self.info.path}: only {n} of its {self.info.frames} frames could be decoded")

    def batches(self, size: int, prefetch: int = 2, transform: Callable[[np.ndarray], Any] | None = None
                ) -> Iterator[tuple[Any, list[int | None]]]:
        """Consecutive frames in batches ((k <= size, H, W, 3) uint8, their pts), decoded in a background thread.

        Args:
          size: frames per batch (the last batch may be shorter).
          prefetch: batches decoded ahead while the caller computes.
          transform: applied to each batch in the background thread (e.g. resizing); its result is yielded.
        """
        if size < 1:
            raise VideoError(f"batch size must be >= 1, got {size}")
        q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        stop = threading.Event()

        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def finish(frames: list[np.ndarray]) -> Any:
            batch = np.stack(frames)
            return batch if transform is None else transform(batch)

        def work() -> None:
            try:
                frames, pts = [], []
                for rgb, p in self.frames():
                    frames.append(rgb)
                    pts.append(p)
                    if len(frames) == size:
                        if not put(("batch", finish(frames), pts)):
                            return
                        frames, pts = [], []
                if frames and not put(("batch", finish(frames), pts)):
                    return
                put(("end", None, None))
            except BaseException as e:  # handed to the consumer, which raises it
                put(("error", e, None))

        thread = threading.Thread(target=work, name="nst-video-reader", daemon=True)
        thread.start()
        try:
            while True:
                kind, a, b = q.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise a
                yield a, b
        finally:
            stop.set()
            thread.join(timeout=10.0)


__all__ = [
    "BACKENDS", "VideoError", "VideoInfo", "VideoReader", "have_pyav", "probe", "resolve_backend",
]
