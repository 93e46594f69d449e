"""`nst-jax video`: stylize a video file frame by frame, stabilised against flicker, audio and timing kept."""

from __future__ import annotations

import argparse
import json
import queue
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from nst_jax.commands.stylize import add_style_options

EXAMPLES = """\
examples:
  nst-jax video clip.mp4 --style starry.jpg -o out.mp4
  nst-jax video clip.mp4 --style starry.jpg --stabilize 0 -o per_frame.mp4      # no smoothing
  nst-jax video clip.mp4 --style starry.jpg --flow-blend 0.5 --report flicker.json -o out.mp4
  nst-jax video clip.mov --style a.jpg --style b.jpg --style-weights 0.7,0.3 --content-size 256 -o out.mov
  nst-jax video clip.mp4 --style sky.jpg --style ground.jpg --mask sky.png -o out.mp4
  nst-jax video clip.mp4 --style starry.jpg --content-size 256 --keep-processing-size -o small.mp4
  nst-jax video clip.mp4 --model multistyle26 --style 3 -o out.mp4              # Magenta's 26-style CIN
  nst-jax video clip.mp4 --model multistyle26 --style 3 --style 12 --style-weights 0.5,0.5 -o out.mp4
  nst-jax video clip.mp4 --model magenta-arbitrary --style starry.jpg --content-size 256 -o out.mp4
"""


# nst_jax.smoothing's DEFAULT_STRENGTH and CUT_RATIO, repeated so that `--help` imports no jax (a test checks that
# they agree).
DEFAULT_STRENGTH = 0.5
CUT_RATIO = 2.2


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `video` subcommand."""
    p = subparsers.add_parser(
        "video", help="stylize a video with AdaIN, CIN (multistyle26) or magenta-arbitrary: flicker-stabilised, "
                      "size, timing and audio kept",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Stylize every frame of a video with any feed-forward model (AdaIN; conditional instance norm: "
            "Magenta's 26-style multistyle26 or any trained CIN; Magenta's arbitrary network "
            "magenta-arbitrary; Gatys et al.'s optimisation is too slow per frame and is not offered) and "
            "the style options of `nst-jax stylize`, "
            "smoothing the normalisation statistics across frames against flicker (reset at scene cuts), "
            "optionally blending each frame with the previous output along the optical flow. The "
            "source's size, frame rate (or timestamps) and audio are kept: frames are stylized at "
            "--content-size and the result is resized back to the clip's own size (--keep-processing-size "
            "writes the stylized size instead); audio needs PyAV: pip install "
            "'nst-jax[video]'. The output appears only when complete: an interrupted or failed run "
            "leaves no file under its name. "
            "--report writes the flicker numbers (warping error, SSIM to the per-frame result) as JSON; "
            "see docs/video.md.", width=88),
        epilog=EXAMPLES)
    p.add_argument("input", metavar="IN", help="video file")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output video (.mp4, .mov, .mkv, .m4v: H.264; .webm: VP9; .avi: MPEG-4)")
    add_style_options(p, "video")
    st = p.add_argument_group("stabilisation (see docs/video.md for what each costs and gains)")
    st.add_argument("--stabilize", type=float, default=None, metavar="S",
                    help=f"statistic smoothing strength in [0, 1): the weight of the past in a moving average "
                         f"of the content statistics (AdaIN's relu4_1; every instance norm of CIN and the "
                         f"arbitrary network, which costs them a second pass). 0 = off, per-frame "
                         f"stylization. Default: {DEFAULT_STRENGTH} for AdaIN, 0 for CIN and the arbitrary "
                         f"network (there smoothing raised the measured flicker: docs/video.md)")
    st.add_argument("--scene-cut", type=float, default=CUT_RATIO, metavar="R",
                    help=f"restart the smoothing where the statistics jump R times more than their typical "
                         f"frame-to-frame change (default {CUT_RATIO})")
    st.add_argument("--flow-blend", type=float, default=0.0, metavar="B",
                    help="blend each frame with the previous output carried along the optical flow, weight B "
                         "in [0, 1) (default 0 = off; one DIS flow per frame)")
    o = p.add_argument_group("output")
    o.add_argument("--overwrite", action="store_true", help="replace existing output (and report) files")
    o.add_argument("--report", metavar="FILE.json",
                   help="write the flicker report: warping error and SSIM to the per-frame output (costs two "
                        "optical flows per frame, and a second decoder pass when stabilising AdaIN)")
    size = o.add_mutually_exclusive_group()
    size.add_argument("--keep-processing-size", action="store_true",
                      help="write the frames at the stylized size (--content-size, sides even) instead of "
                           "resizing them back to the video's size")
    size.add_argument("--keep-size", action="store_true",
                      help="write at the video's own size: the default (kept so that existing scripts run)")
    o.add_argument("--crf", type=int, metavar="Q",
                   help="encoder quality, lower is better (H.264 default 18, VP9 default 32)")
    o.add_argument("--batch-size", type=int, default=4, metavar="N", help="frames per forward pass (default 4)")
    o.add_argument("--backend", choices=("auto", "av", "opencv"), default="auto",
                   help="video library: PyAV (audio, exact timing) or OpenCV (video only); default: PyAV if "
                        "installed")
    p.set_defaults(func=run)


def _even_size(h: int, w: int, content_size: int) -> tuple[int, int]:
    """The stylized frame size: shorter side `content_size` (torchvision's Resize(int)), both sides even."""
    if content_size:
        if h <= w:
            h, w = content_size, int(content_size * w / h)
        else:
            h, w = int(content_size * h / w), content_size
    return max(2, h - h % 2), max(2, w - w % 2)


def plan(args: argparse.Namespace) -> tuple[Any, list[float] | None, str]:
    """Validate everything cheap before any weight is loaded: flags, files, the input video itself.

    Returns:
      (the input's `VideoInfo`, style weights or None, mode "single" | "blend" | "mask").
    """
    from nst_jax.commands.stylize import _parse_weights, _style_index
    from nst_jax.errors import ImageError, NstError
    from nst_jax.video import probe, resolve_backend
    from nst_jax.video_writer import OUTPUT_EXTENSIONS, check_output

    if not 0.0 <= args.alpha <= 1.0:
        raise NstError(f"--alpha must be in [0, 1], got {args.alpha}")
    for flag, size in (("--content-size", args.content_size), ("--style-size", args.style_size)):
        if size < 0:
            raise NstError(f"{flag} must be >= 0, got {size}")
    if args.batch_size < 1:
        raise NstError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.stabilize is not None and not 0.0 <= args.stabilize < 1.0:
        raise NstError(f"--stabilize must be in [0, 1), got {args.stabilize}")
    if not 0.0 <= args.flow_blend < 1.0:
        raise NstError(f"--flow-blend must be in [0, 1), got {args.flow_blend}")
    if not args.scene_cut > 1:
        raise NstError(f"--scene-cut must be above 1, got {args.scene_cut}")
    weights = _parse_weights(args.style_weights)
    if weights is not None and args.mask:
        raise NstError("--style-weights blends styles everywhere and --mask places them: give one or the other")
    indices = [_style_index(t) for t in args.style]
    if any(i is not None for i in indices) and not all(i is not None for i in indices):
        raise NstError("--style mixes style indices and style images; a model takes one or the other")
    for s, i in zip(args.style, indices, strict=True):
        if i is None and Path(s).is_dir():
            raise NstError(f"--style {s} is a folder; a video takes one style (or a blend): list the style files")
        if i is None and not Path(s).is_file():
            raise ImageError(f"no such style image: {s}")
    n = len(args.style)
    if weights is not None and len(weights) != n:
        raise NstError(f"--style-weights has {len(weights)} values for {n} styles")
    if args.mask:
        for m in args.mask:
            if not Path(m).is_file():
                raise ImageError(f"no such mask image: {m}")
        if not (len(args.mask) == n or (len(args.mask) == 1 and n == 2)):
            raise NstError(f"got {len(args.mask)} --mask for {n} --style: give one mask per style"
                           + (" (or one mask for two styles)" if n == 2 else ""))
    elif n > 1 and weights is None:
        raise NstError(f"{n} styles for one video: blend them with --style-weights or place them with --mask")
    mode = "mask" if args.mask else "blend" if n > 1 else "single"

    out = Path(args.output)
    backend = resolve_backend(args.backend)
    if out.suffix.lower() not in OUTPUT_EXTENSIONS:
        raise NstError(f"-o {out}: unknown video extension; use one of {', '.join(OUTPUT_EXTENSIONS)}")
    if Path(args.input).resolve() == out.resolve():
        raise NstError("the output would replace the input video; choose another -o")
    check_output(out, args.overwrite)
    if args.report is not None:
        rep = Path(args.report)
        if rep.resolve() == out.resolve():
            raise NstError("--report and -o name the same file")
        check_output(rep, args.overwrite)
    info = probe(args.input, backend)
    return info, weights, mode


# ----------------------------------------------------------------------------------------------------
# The model-family part: frames per-frame (the Stylizer's own pass) or with smoothed normalisation statistics.


FrameFn = Callable[[Any, Any], tuple[Any, Any, Any]]


def family_default_strength(family: Any) -> float:
    """`--stabilize`'s default for a `Family`: its `video_strength` (AdaIN's smoothing is free; for instance-norm
    networks it costs a second pass and raised the measured warping error, docs/video.md), 0 without the seam."""
    return family.video_strength if family.stats_forward is not None else 0.0


def frame_function(st: Any, args: argparse.Namespace, styles: list, weights: list[float] | None,
                   masks: list | None, hw: tuple[int, int], want_reference: bool) -> FrameFn:
    """Build `frames(x, valid) -> (output, per-frame reference or None, cuts)` for the stylizer's family.

    Args:
      st: the `Stylizer` (any family).
      args: the parsed flags (alpha, colour, stabilisation).
      styles: style images (1, h, w, 3), already recoloured for histogram colour preservation, or style indices
        (table models).
      weights: blend weights or None; masks: (H, W) masks at the frame size, or None.
      hw: the frame size.
      want_reference: also return the unstabilised output (for the report).
    """
    import numpy as np

    from nst_jax.commands.stylize import tile_args
    from nst_jax.errors import NstError

    luminance = args.preserve_color == "luminance"
    tiles = tile_args(args)
    needs_tiles = st.tile_plan(*hw, tiles["tile"], tiles["memory_budget"]) is not None
    if args.stabilize == 0:
        # Frames over the memory budget (or with --tile N) run in tiles, as `nst-jax stylize` does.
        kw: dict[str, Any] = {"alpha": args.alpha, "preserve_color": "luminance" if luminance else None, **tiles}
        if masks is not None:
            kw["masks"] = masks
        elif weights is not None:
            kw["weights"] = weights

        # Per-frame: the Stylizer's own path, so strength 0 is per-frame stylization bit for bit.
        def per_frame(x: Any, valid: Any) -> tuple[Any, Any, Any]:
            return st.stylize(x, styles, **kw), None, np.zeros(len(x), bool)

        return per_frame
    if needs_tiles:
        raise NstError(f"{hw[1]}x{hw[0]} frames run in tiles (--tile, --memory-budget), which --stabilize does not "
                       f"smooth yet; use --stabilize 0, or a smaller --content-size")
    return _stabilised(st, args, styles, weights, masks, hw, want_reference)


def _stabilised(st: Any, args: argparse.Namespace, styles: list, weights: list[float] | None,
                masks: list | None, hw: tuple[int, int], want_reference: bool) -> FrameFn:
    """Any family with the statistics seam: its normalisation statistics smoothed across frames
    (`smoothing.StatForward.smooth`: AdaIN's relu4_1 in one pass, the instance norms of CIN and the arbitrary
    network in two)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from nst_jax import color, smoothing
    from nst_jax.errors import NstError
    from nst_jax.image import masks_to_grid

    if st.family.stats_forward is None:
        raise NstError(f"--stabilize is not available for a {st.family.name} model; use --stabilize 0")
    sf = smoothing.StatForward(st)
    smoother = smoothing.StatSmoother(args.stabilize, args.scene_cut)
    conds = [st.condition(s) for s in styles]
    if masks is None:
        cond, grid = st.blend(conds, weights), None
    else:  # conditions (1, K, ...) and masks (H, W, K) at the frame size, as `Stylizer.stylize` places them
        cond = jax.tree.map(lambda *xs: jnp.concatenate([jnp.asarray(v, jnp.float32) for v in xs])[None], *conds)
        grid = jnp.asarray(masks_to_grid(masks, hw, hw, len(styles)))

    def stabilised(x: Any, valid: Any) -> tuple[Any, Any, Any]:
        n = len(x)
        xj = jnp.asarray(x, st.dtype)
        c = jax.tree.map(lambda v: jnp.broadcast_to(v, (n,) + v.shape[1:]), cond)
        m = None if grid is None else jnp.broadcast_to(grid, (n,) + grid.shape)
        outs = sf.smooth(smoother, xj, c, np.full((n,), args.alpha, np.float32), m, valid, want_reference)
        if args.preserve_color == "luminance":
            outs = [None if o is None else color.luminance_transfer(o, xj) for o in outs]
        out, ref = (None if o is None else np.asarray(o, np.float32) for o in outs)
        return out, ref, smoother.last_cuts

    return stabilised


# ----------------------------------------------------------------------------------------------------


def _load_styles(args: argparse.Namespace, first_frame: Any) -> list:
    import numpy as np

    from nst_jax.color import coral
    from nst_jax.commands.stylize import _style_index
    from nst_jax.image import load_image

    indices = [_style_index(t) for t in args.style]
    if all(i is not None for i in indices):
        return indices
    size = args.style_size or None
    styles = [load_image(s, size=size) for s in args.style]
    if args.preserve_color == "histogram":
        styles = [np.asarray(coral(s, first_frame[None]), np.float32) for s in styles]
    return styles


def _load_masks(args: argparse.Namespace, hw: tuple[int, int]) -> list | None:
    from nst_jax.commands.stylize import _fit_masks
    from nst_jax.image import load_mask

    if not args.mask:
        return None
    masks = [load_mask(m) for m in args.mask]
    return _fit_masks(masks, Path(args.input), args.mask, hw, SimpleNamespace(crop=False, content_size=0))


def output_size(height: int, width: int, processing: tuple[int, int],
                keep_processing_size: bool) -> tuple[int, int]:
    """The written frame size: the video's own (odd sides lose a row / column: 4:2:0 video needs even sides), or
    the stylized size with `--keep-processing-size`."""
    return processing if keep_processing_size else (max(2, height - height % 2), max(2, width - width % 2))


def _resize_u8(frames: Any, hw: tuple[int, int], resample: Any = None) -> Any:
    """Resize uint8 frames with Pillow: antialiased bilinear by default (as `load_image` resizes photos), or the
    given `Image.Resampling` filter."""
    import numpy as np
    from PIL import Image

    h, w = hw
    if frames.shape[1:3] == (h, w):
        return frames
    if frames.shape[1] >= h and frames.shape[2] >= w and frames.shape[1] - h < 2 and frames.shape[2] - w < 2:
        return frames[:, :h, :w]  # an odd side made even: crop the last row / column rather than resample
    resample = Image.Resampling.BILINEAR if resample is None else resample
    return np.stack([np.asarray(Image.fromarray(f).resize((w, h), resample)) for f in frames])


def run(args: argparse.Namespace) -> int:
    """Stylize the video; returns 0, or raises NstError (printed as one line by the dispatcher)."""
    info, weights, _ = plan(args)

    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from nst_jax import flicker, flow
    from nst_jax.commands.stylize import check_styles, load_stylizer
    from nst_jax.files import atomic_write
    from nst_jax.runtime import tune_allocator
    from nst_jax.video import VideoReader
    from nst_jax.video_writer import VideoWriter

    tune_allocator()
    h, w = _even_size(info.height, info.width, args.content_size)
    out_hw = output_size(info.height, info.width, (h, w), args.keep_processing_size)
    reader = VideoReader(info)
    frames = reader.frames()
    first = next(frames)[0]
    frames.close()
    first_frame = _resize_u8(first[None], (h, w))[0].astype(np.float32) / np.float32(255.0)
    styles = _load_styles(args, first_frame)
    masks = _load_masks(args, (h, w))
    st = load_stylizer(args)
    check_styles(st, styles, args)
    model_name = args.model or "adain"
    if args.stabilize is None:
        args.stabilize = family_default_strength(st.family)
    frames_fn = frame_function(st, args, styles, weights, masks, (h, w), args.report is not None)
    blender = flow.FlowBlender(args.flow_blend) if args.flow_blend > 0 else None
    meter = flicker.FlickerMeter() if args.report is not None else None
    stabilised = args.stabilize > 0 or blender is not None

    def prepare(frames_u8: Any) -> Any:
        return _resize_u8(frames_u8, (h, w)).astype(np.float32) / np.float32(255.0)

    writer = VideoWriter(args.output, info.fps, (out_hw[1], out_hw[0]),
                         time_base=None if info.constant_rate else info.time_base,
                         audio_from=info.path if info.audio else None, overwrite=args.overwrite,
                         backend=info.backend, crf=args.crf)
    for note in writer.notes:
        print(f"nst-jax: {note}", file=sys.stderr)
    if info.backend == "opencv":
        print("nst-jax: OpenCV backend: the output has no audio (install PyAV: pip install 'nst-jax[video]')",
              file=sys.stderr)
    bar = tqdm(total=info.frames, unit="frame", desc="video", dynamic_ncols=True, file=sys.stderr)
    work: queue.Queue = queue.Queue(maxsize=2)
    failure: list[BaseException] = []
    scene_cuts: list[int] = []

    def write_loop() -> None:
        # Host-side work after the model (blending, the report, encoding) overlaps the next batch's compute.
        index = 0
        try:
            while True:
                item = work.get()
                if item is None:
                    return
                x, out, ref, cuts, pts = item
                scene_cuts.extend(index + int(i) for i in np.flatnonzero(cuts))
                if blender is not None:
                    if ref is None:
                        ref = out
                    out = blender(x, out, cuts)
                if meter is not None:
                    for i in range(len(out)):
                        meter.add(x[i], out[i], ref[i] if stabilised and ref is not None else None)
                u8 = np.rint(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)
                # Lanczos: the stylized texture is the picture here, bilinear would blur it when scaling up.
                writer.write(_resize_u8(u8, out_hw, Image.Resampling.LANCZOS), pts)
                index += len(out)
                bar.update(len(out))
        except BaseException as e:  # handed to the main thread
            failure.append(e)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() \
        else None
    thread = threading.Thread(target=write_loop, name="nst-video-writer", daemon=True)
    thread.start()
    start = time.perf_counter()
    try:
        for x, pts in reader.batches(args.batch_size, transform=prepare):
            k = len(x)
            valid = np.arange(args.batch_size) < k
            if k < args.batch_size:  # pad the last batch: one compiled shape for the whole video
                x_in = np.concatenate([x, np.repeat(x[-1:], args.batch_size - k, axis=0)])
            else:
                x_in = x
            out, ref, cuts = frames_fn(x_in, valid)
            item = (x, out[:k], None if ref is None else ref[:k], cuts[:k], pts)
            while True:
                if failure:
                    raise failure[0]
                try:
                    work.put(item, timeout=0.2)
                    break
                except queue.Full:
                    continue
        work.put(None)
        thread.join()
        if failure:
            raise failure[0]
        elapsed = time.perf_counter() - start
        writer.close()
    except BaseException:
        # Stop the writer thread before discarding its file: drop the queued batches, then the end marker.
        while True:
            try:
                work.get_nowait()
            except queue.Empty:
                break
        work.put(None)
        thread.join(timeout=60.0)
        writer.abort()
        raise
    finally:
        bar.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(args.output)
    if meter is not None:
        report = {
            "input": str(info.path), "output": str(args.output), "model": model_name,
            "frames": writer.frames, "fps": float(info.fps), "size": [h, w],
            "output_size": list(out_hw),
            "stabilize": args.stabilize, "scene_cut": args.scene_cut, "flow_blend": args.flow_blend,
            "scene_cuts": scene_cuts, "seconds": elapsed, "frames_per_second": writer.frames / elapsed,
            **meter.report(),
        }
        atomic_write(args.report, json.dumps(report, indent=2) + "\n", overwrite=args.overwrite)
        print(f"{args.report}: {flicker.describe(report)}", file=sys.stderr)
    return 0
