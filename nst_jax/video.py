"""Video files in and out: frames as uint8 RGB batches, the source's timing and audio kept, atomic outputs.

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
- `VideoWriter` writes into a hidden temporary file beside the target (`.NAME.<random>.part.EXT`) and renames it
  into place only when `close()` has finished the file (flushed to disk first). A failed or interrupted run
  removes the temporary file: the target name is either a complete video or absent (never a half-file). Only a
  hard kill (SIGKILL, power loss) can leave the hidden `.part` file behind, never under the target's name.
  Existing targets are kept unless `overwrite=True`.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from nst_jax.errors import NstError
from nst_jax.files import move_into_place, temp_file_beside


class VideoError(NstError):
    """A video file could not be read or written (shown as one line)."""


# Output extension -> (FFmpeg container format, video encoders in order of preference).
_PYAV_OUTPUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    ".mp4": ("mp4", ("libx264", "h264", "mpeg4")),
    ".m4v": ("mp4", ("libx264", "h264", "mpeg4")),
    ".mov": ("mov", ("libx264", "h264", "mpeg4")),
    ".mkv": ("matroska", ("libx264", "h264", "mpeg4")),
    ".webm": ("webm", ("libvpx-vp9", "libvpx")),
    ".avi": ("avi", ("mpeg4", "mjpeg")),
}
_OPENCV_OUTPUTS: dict[str, str] = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
OUTPUT_EXTENSIONS = tuple(sorted(_PYAV_OUTPUTS))
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


class _AudioCopier:
    """Copies the audio streams of a source file into an output container, interleaved by time (PyAV)."""

    def __init__(self, source: Path, out: Any):
        import av

        self._av = av
        self.source = av.open(str(source))
        self.out = out
        self.streams: dict[int, tuple[Any, Any | None]] = {}  # input index -> (output stream, decoder or None)
        self.notes: list[str] = []
        supported = out.supported_codecs
        for s in self.source.streams.audio:
            name = s.codec_context.name
            if name in supported:
                self.streams[s.index] = (out.add_stream_from_template(s), None)
            else:
                codec = out.default_audio_codec
                enc = out.add_stream(codec, rate=s.codec_context.sample_rate or 48000)
                if s.codec_context.layout is not None:
                    enc.layout = s.codec_context.layout
                self.streams[s.index] = (enc, s)
                self.notes.append(f"audio: {name} cannot go into this container; re-encoded to {codec}")
        self._packets = self.source.demux(*self.source.streams.audio) if self.streams else iter(())
        self._pending: Any = None
        self.done = not self.streams

    def copy_until(self, seconds: float | None) -> None:
        """Mux audio packets up to `seconds` of presentation time (None: all that remain)."""
        av = self._av
        while not self.done:
            if self._pending is None:
                try:
                    self._pending = next(self._packets)
                except StopIteration:
                    self._flush()
                    self.done = True
                    return
                except av.FFmpegError as e:
                    self.notes.append(f"audio: stopped copying at a damaged packet ({_short(e)})")
                    self._flush()
                    self.done = True
                    return
            p = self._pending
            when = p.pts if p.pts is not None else p.dts
            if seconds is not None and when is not None and p.time_base and float(when * p.time_base) > seconds:
                return
            self._pending = None
            out_stream, decoder = self.streams[p.stream.index]
            if p.dts is None and p.size == 0:
                continue  # FFmpeg's end-of-stream marker
            if decoder is None:
                p.stream = out_stream
                self.out.mux(p)
            else:
                for frame in p.decode():
                    frame.pts = None  # let the encoder count samples
                    self.out.mux(out_stream.encode(frame))

    def _flush(self) -> None:
        for out_stream, decoder in self.streams.values():
            if decoder is not None:
                self.out.mux(out_stream.encode(None))

    def close(self) -> None:
        self.source.close()


class VideoWriter:
    """Writes frames to a video file atomically (temporary file, renamed into place by `close`).

    Use as a context manager: leaving the block with an exception (KeyboardInterrupt included) calls `abort`.

    Args:
      path: output file; its extension picks the container (`OUTPUT_EXTENSIONS`).
      fps: frame rate (a Fraction keeps NTSC rates such as 30000/1001 exact).
      size: (width, height), both even for H.264 and VP9 (4:2:0 chroma).
      time_base: the timestamps' unit when frames come with pts (PyAV); default 1 / fps.
      audio_from: copy the audio streams of this file (PyAV only).
      overwrite: replace an existing file.
      backend: "auto", "av" or "opencv".
      crf: quality for H.264 / VP9 (lower is better; default 18 / 32).

    Raises:
      VideoError: unknown extension, the target exists, its folder is missing, or the encoder cannot start.
    """

    def __init__(self, path: str | os.PathLike, fps: Fraction | float, size: tuple[int, int], *,
                 time_base: Fraction | None = None, audio_from: str | os.PathLike | None = None,
                 overwrite: bool = False, backend: str = "auto", crf: int | None = None):
        self.path = Path(path)
        self.backend = resolve_backend(backend)
        ext = self.path.suffix.lower()
        table = _PYAV_OUTPUTS if self.backend == "av" else _OPENCV_OUTPUTS
        if ext not in table:
            raise VideoError(f"{self.path}: unsupported video extension {ext or '(none)'!r}; use one of "
                             f"{', '.join(sorted(table))}")
        check_output(self.path, overwrite)
        self.width, self.height = int(size[0]), int(size[1])
        if self.width % 2 or self.height % 2:
            raise VideoError(f"video frames must have even sides, got {self.width}x{self.height}")
        self.fps = Fraction(fps).limit_denominator(1_000_000) if not isinstance(fps, Fraction) else fps
        self.frames = 0
        self.notes: list[str] = []
        self._closed = False
        # The container is chosen from the extension (OpenCV) or given (PyAV); keep it on the temporary name.
        self._tmp = temp_file_beside(self.path, suffix=".part" + ext)
        try:
            if self.backend == "av":
                self._open_av(ext, time_base, audio_from, crf)
            else:
                self._open_cv(ext)
                if audio_from is not None:
                    self.notes.append("audio: not copied (the OpenCV backend writes video only; install PyAV)")
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise

    # ------------------------------------------------------------------------------------------------
    def _open_av(self, ext: str, time_base: Fraction | None, audio_from: Any, crf: int | None) -> None:
        import av

        fmt, encoders = _PYAV_OUTPUTS[ext]
        codec = next((c for c in encoders if c in av.codecs_available), None)
        if codec is None:
            raise VideoError(f"this FFmpeg has no encoder for {ext} (tried {', '.join(encoders)})")
        try:
            self._out = av.open(str(self._tmp), "w", format=fmt)
        except av.FFmpegError as e:
            raise VideoError(f"cannot write {self.path}: {_short(e)}") from None
        options = {}
        if codec == "libx264":
            options = {"crf": str(18 if crf is None else crf), "preset": "medium"}
        elif codec.startswith("libvpx"):
            options = {"crf": str(32 if crf is None else crf), "b": "0", "deadline": "good", "cpu-used": "4"}
        elif codec == "mpeg4":
            options = {"qscale": "3"}
        stream = self._out.add_stream(codec, rate=self.fps, options=options)
        stream.width, stream.height = self.width, self.height
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        # AVI counts frames (constant rate): its timestamps must be frame numbers.
        self._keep_pts = fmt != "avi" and time_base is not None
        self._time_base = time_base if self._keep_pts else Fraction(1) / self.fps
        stream.codec_context.time_base = self._time_base
        self._stream = stream
        self._audio = _AudioCopier(Path(audio_from), self._out) if audio_from is not None else None
        if self._audio is not None:
            self.notes += self._audio.notes
        self._last_pts: int | None = None

    def _open_cv(self, ext: str) -> None:
        cv2 = _cv2()
        fourcc = cv2.VideoWriter_fourcc(*_OPENCV_OUTPUTS[ext])
        self._cv = cv2
        self._writer = cv2.VideoWriter(str(self._tmp), fourcc, float(self.fps), (self.width, self.height))
        if not self._writer.isOpened():
            raise VideoError(f"OpenCV cannot write {self.path} ({_OPENCV_OUTPUTS[ext]})")

    # ------------------------------------------------------------------------------------------------
    def write(self, frames: np.ndarray, pts: list[int | None] | None = None) -> None:
        """Append frames.

        Args:
          frames: (N, H, W, 3) uint8 RGB (or float in [0, 1], rounded), H x W = the writer's size.
          pts: per frame, its timestamp in `time_base` units (PyAV), or None to follow on at 1 / fps.
        """
        if self._closed:
            raise VideoError(f"{self.path}: write after close")
        a = np.asarray(frames)
        if a.ndim == 3:
            a = a[None]
        if a.shape[1:] != (self.height, self.width, 3):
            raise VideoError(f"frames of {a.shape[2]}x{a.shape[1]} for a {self.width}x{self.height} video")
        if a.dtype != np.uint8:
            a = np.rint(np.clip(np.asarray(a, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
        for i in range(len(a)):
            p = None if pts is None else pts[i]
            if self.backend == "av":
                self._write_av(a[i], p)
            else:
                self._writer.write(self._cv.cvtColor(np.ascontiguousarray(a[i]), self._cv.COLOR_RGB2BGR))
            self.frames += 1

    def _write_av(self, rgb: np.ndarray, pts: int | None) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        step = Fraction(1) / self.fps / self._time_base
        if not self._keep_pts:
            pts = None
        if pts is None or (self._last_pts is not None and pts <= self._last_pts):
            pts = 0 if self._last_pts is None else self._last_pts + max(1, round(step))
        frame.pts = int(pts)
        frame.time_base = self._time_base
        self._last_pts = frame.pts
        try:
            packets = self._stream.encode(frame)
            self._mux(packets)
        except av.FFmpegError as e:
            raise VideoError(f"encoding {self.path} failed at frame {self.frames}: {_short(e)}") from None

    def _mux(self, packets: list) -> None:
        for p in packets:
            if self._audio is not None and p.pts is not None and p.time_base:
                self._audio.copy_until(float(p.pts * p.time_base))
            self._out.mux(p)

    # ------------------------------------------------------------------------------------------------
    def close(self) -> Path:
        """Finish the file and rename it into place.

        Returns:
          the output path.

        Raises:
          VideoError: no frame was written, or finishing the file failed (the temporary file is removed).
        """
        if self._closed:
            return self.path
        try:
            if self.frames == 0:
                raise VideoError(f"{self.path}: no frames to write")
            if self.backend == "av":
                import av

                try:
                    self._mux(self._stream.encode(None))
                    if self._audio is not None:
                        self._audio.copy_until(None)
                        self.notes = list(dict.fromkeys(self.notes + self._audio.notes))
                    self._out.close()
                except av.FFmpegError as e:
                    raise VideoError(f"finishing {self.path} failed: {_short(e)}") from None
                finally:
                    if self._audio is not None:
                        self._audio.close()
            else:
                self._writer.release()
            move_into_place(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.path

    def abort(self) -> None:
        """Stop and delete the temporary file; the target is left as it was."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.backend == "av":
                if self._audio is not None:
                    self._audio.close()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        self._out.close()
                    except Exception:  # noqa: BLE001 - the file is being discarded
                        pass
            else:
                self._writer.release()
        finally:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def check_output(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse an output that exists (unless `overwrite`) or whose folder is missing.

    Raises:
      VideoError: with the reason.
    """
    p = Path(path)
    if p.is_dir():
        raise VideoError(f"{p} is a directory; give an output file name")
    if p.exists() and not overwrite:
        raise VideoError(f"{p} exists; pass --overwrite to replace it")
    if not p.parent.is_dir():
        raise VideoError(f"no such folder for the output: {p.parent}")


def output_streams(path: str | os.PathLike) -> dict[str, Any]:
    """Describe a finished file (PyAV): frame count, rate, size, audio codecs; for checks and tests.

    Returns:
      {"frames", "fps" (Fraction), "width", "height", "audio" (codec names), "duration" (s or None)}.
    """
    info = probe(path, "av")
    return {"frames": info.frames, "fps": info.fps, "width": info.width, "height": info.height,
            "audio": list(info.audio), "duration": info.duration}


__all__ = [
    "BACKENDS", "OUTPUT_EXTENSIONS", "VideoError", "VideoInfo", "VideoReader", "VideoWriter", "check_output",
    "have_pyav", "output_streams", "probe", "resolve_backend",
]
