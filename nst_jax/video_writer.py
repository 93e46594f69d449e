"""Video files out: `VideoWriter` encodes uint8 RGB frames with the source's timing and audio, atomically.

- PyAV writes H.264 (.mp4, .mov, .mkv, .m4v), VP9 (.webm) or MPEG-4 part 2 (.avi), keeps each frame's timestamp
  when given, and copies the audio streams of a source file (remuxed as they are when the container accepts
  their codec, else re-encoded to its default audio codec). OpenCV, the fallback, writes video only, at a
  constant rate, as MPEG-4 part 2 'mp4v' in .mp4 and .mov and Motion-JPEG in .avi and .mkv (see `nst_jax.video`
  for what else it loses).
- `VideoWriter` writes into a hidden temporary file beside the target (`.NAME.<random>.part.EXT`) and renames it
  into place only when `close()` has finished the file (flushed to disk first). A failed or interrupted run
  removes the temporary file: the target name is either a complete video or absent (never a half-file). Only a
  hard kill (SIGKILL, power loss) can leave the hidden `.part` file behind, never under the target's name.
  Existing targets are kept unless `overwrite=True` (`check_output`).
"""

from __future__ import annotations

import os
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from nst_jax.files import move_into_place, temp_file_beside
from nst_jax.video import VideoError, _cv2, _short, probe, resolve_backend

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


__all__ = ["OUTPUT_EXTENSIONS", "VideoWriter", "check_output", "output_streams"]
