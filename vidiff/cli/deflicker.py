"""``vidiff deflicker IN OUT``: remove frame-to-frame brightness and colour flicker from a video.

Per-frame affine colour correction toward temporally smoothed statistics (``vidiff.postprocess.deflicker``),
streamed: the input is decoded twice, one frame at a time (a first pass measures, a second corrects and
encodes), so memory does not grow with the clip's length. The output is written atomically with a JSON
sidecar beside it, as ``vidiff generate`` writes its videos.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from vidiff import __version__
from vidiff.cli.generate import _check_output, _sha256, sidecar_path
from vidiff.cli.generate_post import add_deflicker_options, deflicker_config, deflicker_file
from vidiff.cli.main import CLIError
from vidiff.io.atomic import write_json_atomic
from vidiff.io.video import VideoError, probe_video
from vidiff.postprocess.deflicker import DeflickerConfig

EXAMPLES = """\
examples:
  vidiff deflicker clip.mp4 steady.mp4
      full-strength correction toward statistics smoothed over about 6 frames
  vidiff deflicker clip.mp4 steady.mp4 --strength 0.7 --sigma 10 --flow
      a gentler, slower correction measured on flow-matched pixels (moving objects do not count)
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deflicker", help="Remove brightness/colour flicker from a video.", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Correct each frame's colour (gain and offset per channel) toward statistics "
                       "smoothed over time, within each shot. Streams over frames.")
    p.add_argument("input", help="video to correct (mp4, webm, gif, webp or a folder of png frames)")
    p.add_argument("output", help="corrected video (extension picks the format; a path ending in / for png frames)")
    add_deflicker_options(p)
    p.add_argument("--quiet", action="store_true", help="print nothing on success")


def _check(args: argparse.Namespace) -> tuple[Path, Path, DeflickerConfig, float]:
    """Everything that can be checked before decoding the video."""
    config = deflicker_config(args)
    src, out = Path(args.input), Path(args.output)
    try:
        info = probe_video(src)
    except VideoError as e:
        raise CLIError(str(e)) from None
    _check_output(out, {"video": src})  # as generate checks its output: writable, replacing no input and no user folder
    return src, out, config, info.fps


def run(args: argparse.Namespace) -> int:
    src, out, config, fps = _check(args)
    start = time.perf_counter()
    try:
        plan = deflicker_file(src, out, fps, config)
    except (VideoError, ValueError) as e:
        raise CLIError(str(e)) from None
    except OSError as e:
        raise CLIError(f"cannot write {out}: {e.strerror or e}") from None
    seconds = time.perf_counter() - start
    digest = _sha256(src) if src.is_file() else None  # a png folder has no single digest
    sidecar = {"vidiff_version": __version__, "input": str(src), "input_sha256": digest, "output": str(out),
               "fps": fps, "deflicker": plan.to_dict(), "deflicker_seconds": round(seconds, 3)}
    try:
        write_json_atomic(sidecar, sidecar_path(out))
    except OSError as e:
        raise CLIError(f"wrote {out}, but not its settings file {sidecar_path(out)}: {e.strerror or e}") from None
    if not args.quiet:
        cuts = f", scene cuts at frames {plan.cuts}" if plan.cuts else ""
        print(f"wrote {out} ({plan.num_frames} frames{cuts}) in {seconds:.1f} s; settings in {sidecar_path(out)}")
    return 0
