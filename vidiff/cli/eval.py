"""``vidiff eval``: measure videos (FVD, per-frame FID, flicker, motion, warp error, seams, drift, fidelity),
write the values as JSON and an HTML report; or generate with a model by a fixed protocol and measure that;
or put two results side by side.

Every input is checked (and every weights file loaded) before any metric is computed, and the outputs are
written atomically at the end, so a failed run leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vidiff import __version__
from vidiff.cli.main import CLIError
from vidiff.io.atomic import check_writable, write_json_atomic, write_text_atomic

EXAMPLES = """\
examples:
  vidiff eval --generated out/ --reference real/ --json eval.json --report eval.html
      every metric the given weights allow (the others are listed as skipped, with the flag to pass)
  vidiff eval --generated clip.mp4 --metrics temporal_flickering warp_error seam_ratio
      weight-free measures of one video, printed
  vidiff eval --generated out/ --reference real/ --i3d-weights i3d.safetensors --metrics fvd2048_16f
  vidiff eval --model ~/models/svd-xt --images photos/ --seeds 0 1 --json svd_xt.json
      the fixed protocol: a video per image and seed, then the measures (frame 0 against the image too)
  vidiff eval --compare base.json lora.json --report compare.html
      two results side by side
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from vidiff.metrics.suite import METRICS

    p = sub.add_parser(
        "eval", help="Measure videos (FVD, FID, flicker, motion, seams, drift) and write a report.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Measure generated videos against reference videos, or run the fixed protocol on a "
        "model, and write the values as JSON and an HTML report. Metrics whose weights are not given are "
        "skipped and listed with the flag that enables them.")
    src = p.add_argument_group("what to measure (one of)")
    src.add_argument("--generated", default=None, help="a video, or a folder of videos, to measure")
    src.add_argument("--model", default=None, help="a model to run the fixed protocol on (with --images)")
    src.add_argument("--compare", nargs=2, default=None, metavar=("A.json", "B.json"),
                     help="two results of vidiff eval to put side by side")
    p.add_argument("--reference", default=None, help="folder of reference videos (FVD, FID, reference PSNR/SSIM)")
    p.add_argument("--images", default=None,
                   help="conditioning images: the protocol's inputs with --model, or the images the --generated "
                   "videos of the same name were made from (first-frame PSNR/SSIM)")
    p.add_argument("--metrics", nargs="+", default=None, metavar="NAME",
                   help=f"metrics to compute (default: all that can be): {', '.join(METRICS)}")
    p.add_argument("--json", default=None, help="write the values here (JSON)")
    p.add_argument("--report", default=None, help="write the HTML report here")
    p.add_argument("--max-frames", type=int, default=None, help="read at most this many frames of each video")
    w = p.add_argument_group("weights of the metrics that need a network (nothing is downloaded)")
    w.add_argument("--i3d-weights", default=None, help="I3D weights (.safetensors) for FVD")
    w.add_argument("--inception-weights", default=None, help="Inception weights (.safetensors) for frame_fid")
    w.add_argument("--clip-model", default=None, help="a CLIP model folder for clip_consistency")
    w.add_argument("--device", default="cpu", help="device of the networks: cpu, cuda, cuda:N or auto")
    proto = p.add_argument_group("the fixed protocol (--model)")
    proto.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of every image's videos (default 0)")
    proto.add_argument("--motion-bucket-ids", nargs="+", type=int, default=None,
                       help="motion buckets to generate each image at (default: the model's)")
    proto.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    proto.add_argument("--save-videos", default=None, help="also write the generated videos (mp4) to this folder")


# -- the fixed protocol --------------------------------------------------------------------------------
@dataclass
class ProtocolRun:
    """The protocol's videos (named ``<image stem>_seed<S>[_motion<M>]``), the conditioning image of each at
    the output size (resized as the pipeline resizes it), the seconds of each pipeline call and the resolved
    settings of the last call."""

    videos: list = field(default_factory=list)
    conditioning: dict = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, dict[str, Any]] = field(default_factory=dict)


def run_protocol(pipe: Any, images: dict[str, Any], seeds: list[int], motion_bucket_ids: list[int] | None = None,
                 **settings: Any) -> ProtocolRun:
    """Generate a video from each image (``{name: (3, H, W) in [0, 1]}``) with each seed (and motion bucket),
    the model's defaults otherwise (``settings`` override them, as ``GenerationSettings`` fields).

    Frames are rounded to the 8-bit levels a video file stores, and each image is resized to the output size
    with Lanczos, as the pipeline resizes its input, for first-frame fidelity.
    """
    import numpy as np
    import PIL.Image
    import torch

    from vidiff.metrics.suite import Video
    from vidiff.pipelines.settings import GenerationSettings

    out = ProtocolRun()
    for stem, image in images.items():
        pil = PIL.Image.fromarray((image * 255).round().byte().permute(1, 2, 0).numpy())
        for seed in seeds:
            for bucket in motion_bucket_ids or [None]:
                s = GenerationSettings(seed=seed, motion_bucket_id=bucket, **settings)
                start = time.perf_counter()
                result = pipe(pil, settings=s, output_type="pt", progress=False)
                out.seconds.append(time.perf_counter() - start)
                r = result.settings
                name = f"{stem}_seed{seed}" + ("" if bucket is None else f"_motion{bucket}")
                frames = (result.frames[0].float().cpu().clamp(0, 1) * 255).round() / 255
                target = np.array(pil.resize((r.width, r.height), resample=PIL.Image.LANCZOS))
                out.videos.append(Video(name, frames, float(r.fps)))
                out.conditioning[name] = torch.from_numpy(target).permute(2, 0, 1).float() / 255
                out.settings = r.to_dict()
                out.labels[name] = {"image": stem, "seed": seed, "motion_bucket_id": r.motion_bucket_id}
    return out


# -- checks --------------------------------------------------------------------------------------------
def _check_outputs(args: argparse.Namespace) -> None:
    inputs = [Path(x).resolve() for x in (args.generated, args.reference, args.images, args.model,
                                          *(args.compare or [])) if x]
    for flag, path in (("--json", args.json), ("--report", args.report)):
        if path is None:
            continue
        target = Path(path).resolve()
        if any(target == i or i.is_relative_to(target) for i in inputs):
            raise CLIError(f"{flag} {path} would overwrite an input: write it elsewhere")
        if Path(path).is_dir():
            raise CLIError(f"{flag} {path} is a folder: name a file")
        try:
            check_writable(path)
        except ValueError as e:
            raise CLIError(f"{flag}: {e}") from None
    if args.json and args.report and Path(args.json).resolve() == Path(args.report).resolve():
        raise CLIError(f"--json and --report are the same file, {args.json}")


def _check_mode(args: argparse.Namespace) -> str:
    modes = [m for m, given in (("generated", args.generated), ("model", args.model), ("compare", args.compare))
             if given]
    if len(modes) != 1:
        raise CLIError("give exactly one of --generated, --model (with --images) or --compare"
                       + (f" (got {', '.join('--' + m for m in modes)})" if modes else ""))
    if modes[0] == "model" and not args.images:
        raise CLIError("--model runs the fixed protocol on images: pass --images DIR")
    if modes[0] != "model" and args.save_videos:
        raise CLIError("--save-videos keeps the videos the protocol generates: it goes with --model")
    if modes[0] == "compare" and not (args.report or args.json):
        raise CLIError("--compare writes its side-by-side result with --report (and/or --json)")
    if args.max_frames is not None and args.max_frames < 1:
        raise CLIError(f"--max-frames must be >= 1, got {args.max_frames}")
    for flag, path in (("--i3d-weights", args.i3d_weights), ("--inception-weights", args.inception_weights),
                       ("--clip-model", args.clip_model), ("--model", args.model)):
        if path is not None and not Path(path).exists():
            raise CLIError(f"{flag} {path}: no such file or folder")
    return modes[0]


def _load_result(path: str) -> dict[str, Any]:
    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CLIError(f"--compare {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CLIError(f"--compare {path}: not a JSON file ({e})") from None
    if not isinstance(result, dict) or not isinstance(result.get("metrics"), dict):
        raise CLIError(f"--compare {path}: not a result of vidiff eval (no \"metrics\" object)")
    return result


def _load_models(args: argparse.Namespace, device: str) -> dict[str, Any]:
    """The network of every weights file given (each is checked, even one no requested metric uses); errors
    name the flag, the file and the problem."""
    loaders = {"i3d": ("--i3d-weights", args.i3d_weights, "vidiff.metrics.i3d", "load_i3d"),
               "inception": ("--inception-weights", args.inception_weights, "vidiff.metrics.inception",
                             "load_inception"),
               "clip": ("--clip-model", args.clip_model, "vidiff.metrics.clip_consistency", "load_clip")}
    import importlib

    models = {}
    for key, (flag, path, module, fn) in loaders.items():
        if path is None:
            continue
        try:
            models[key] = getattr(importlib.import_module(module), fn)(path)
        except (ValueError, OSError, KeyError, RuntimeError) as e:
            raise CLIError(f"{flag}: {e}") from None
        if hasattr(models[key], "to"):
            models[key] = models[key].to(device)
    return models


def _protocol_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The protocol's overrides, every combination validated before the model loads."""
    from vidiff.pipelines.settings import GenerationSettings, SettingError

    overrides = {} if args.steps is None else {"num_inference_steps": args.steps}
    flags = {"seed": "--seeds", "motion_bucket_id": "--motion-bucket-ids", "num_inference_steps": "--steps"}
    try:
        for seed in args.seeds:
            for bucket in args.motion_bucket_ids or [None]:
                GenerationSettings(seed=seed, motion_bucket_id=bucket, **overrides)
    except SettingError as e:
        raise CLIError(f"{flags.get(e.field, e.field)}: {e}") from None
    if args.save_videos:
        try:
            check_writable(Path(args.save_videos) / "probe.mp4")
        except ValueError as e:
            raise CLIError(f"--save-videos: {e}") from None
    return overrides


def _generate(args: argparse.Namespace, images: dict[str, Any], device: str) -> tuple[list, dict, dict]:
    """Run the protocol on ``--model``: the videos, their conditioning images, and what to record."""
    from vidiff.pipelines.image_to_video import ImageToVideoPipeline

    overrides = _protocol_settings(args)
    try:
        pipe = ImageToVideoPipeline.from_pretrained(args.model, device=device)
    except (ValueError, OSError) as e:
        raise CLIError(f"--model {args.model}: {e}") from None
    try:
        run = run_protocol(pipe, images, args.seeds, args.motion_bucket_ids, **overrides)
    except ValueError as e:
        raise CLIError(f"--model {args.model}: {e}") from None
    record = {"model": str(args.model), "images": sorted(images), "seeds": args.seeds,
              "motion_bucket_ids": args.motion_bucket_ids, "settings": run.settings, "videos": run.labels,
              "generation_seconds": [round(s, 4) for s in run.seconds]}
    return run.videos, run.conditioning, record


def _print_result(result: dict[str, Any]) -> None:
    from vidiff.metrics.report import format_value

    for name, value in result["metrics"].items():
        better = result["better"][name]
        direction = f"{better} is better" if better != "neither" else "no direction"
        print(f"{name:<26}{format_value(value):>12}  ({direction})")
    for name, why in result["skipped"].items():
        print(f"{name:<26}{'skipped':>12}  {why}")


def _write(args: argparse.Namespace, result: dict[str, Any], html: str | None) -> None:
    try:
        if args.json:
            write_json_atomic(result, args.json)
        if html is not None and args.report:
            write_text_atomic(html, args.report)
    except OSError as e:
        raise CLIError(f"cannot write the results: {e}") from None


def _compare(args: argparse.Namespace) -> int:
    from vidiff.metrics.report import render_report

    a, b = (_load_result(p) for p in args.compare)
    labels = [Path(p).name for p in args.compare]
    if labels[0] == labels[1]:
        labels = list(args.compare)
    html = render_report([(labels[0], a), (labels[1], b)], title="vidiff eval: comparison") if args.report else None
    _write(args, {"vidiff_version": __version__, "compare": dict(zip(labels, (a, b)))}, html)
    for name in dict.fromkeys([*a["metrics"], *b["metrics"]]):
        va, vb = a["metrics"].get(name), b["metrics"].get(name)
        print(f"{name:<26}{'n/a' if va is None else f'{va:.4g}':>12}{'n/a' if vb is None else f'{vb:.4g}':>12}")
    return 0


def _plan(args: argparse.Namespace, inputs: Any, weights: dict[str, Any]) -> tuple[list, dict[str, str]]:
    from vidiff.metrics.suite import plan_metrics

    try:
        metrics, skipped = plan_metrics(args.metrics, inputs, weights=weights)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if not metrics:
        raise CLIError("no metric can be computed: " + "; ".join(f"{k} {v}" for k, v in skipped.items()))
    return metrics, skipped


def run(args: argparse.Namespace) -> int:
    mode = _check_mode(args)
    _check_outputs(args)
    if mode == "compare":
        return _compare(args)

    from vidiff.cli.generate import resolve_device
    from vidiff.io.video import VideoError
    from vidiff.metrics.report import render_report
    from vidiff.metrics.suite import EvalInputs, evaluate, load_images, load_videos, plan_metrics

    device = resolve_device(args.device)
    try:
        plan_metrics(args.metrics, EvalInputs([]), weights={})  # unknown names, before any reading
        reference = load_videos(args.reference, max_frames=args.max_frames) if args.reference else None
        images = load_images(args.images) if args.images else None
        if mode == "generated":
            generated = load_videos(args.generated, max_frames=args.max_frames)
    except VideoError as e:
        raise CLIError(str(e)) from None
    except ValueError as e:
        raise CLIError(("--metrics: " if str(e).startswith("unknown metric") else "") + str(e)) from None
    weights = {"i3d": args.i3d_weights, "inception": args.inception_weights, "clip": args.clip_model}
    record: dict[str, Any] = {}
    if mode == "generated":  # the clip lengths are known: check them before loading any network
        _plan(args, EvalInputs(generated, reference, images), weights)
    models = _load_models(args, device)
    if mode == "model":
        assert images is not None
        generated, images, record = _generate(args, images, device)
    inputs = EvalInputs(generated, reference, images, models, device)
    metrics, skipped = _plan(args, inputs, weights)
    try:
        result = evaluate(metrics, inputs)
    except ValueError as e:  # what the checks above could not see (e.g. a network's input limits)
        raise CLIError(str(e)) from None
    result.update(vidiff_version=__version__, skipped=skipped, inputs={
        k: v for k, v in (("generated", args.generated), ("model", args.model), ("reference", args.reference),
                          ("images", args.images), ("videos", len(generated)),
                          ("frames", sorted({v.num_frames for v in generated}))) if v is not None})
    if record:
        result["protocol"] = record
    html = render_report([("result", result)], videos={v.name: v.frames for v in generated}) if args.report else None
    if args.save_videos:  # the protocol's videos, as `vidiff generate` writes them
        from vidiff.io.video import write_video

        for v in generated:
            write_video(v.frames, Path(args.save_videos) / f"{v.name}.mp4", fps=v.fps)
    _write(args, result, html)
    _print_result(result)
    return 0
