"""``vidiff generate``: an image in, a video out, plus a JSON sidecar that repeats the run exactly."""

from __future__ import annotations

import argparse
import hashlib
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from vidiff import __version__
from vidiff.cli.batch import add_batch_arguments, check_single_or_batch, run_batch
from vidiff.cli.generate_adapters import (
    adapter_record,
    add_adapter_arguments,
    apply_adapters,
    apply_camera,
    check_adapter_args,
)
from vidiff.cli.generate_long import add_long_arguments, check_long_arguments, long_requested, run_long
from vidiff.cli.generate_parallel import (
    add_parallel_arguments,
    check_parallel,
    decodes,
    is_writer,
    parallel_record,
    start_parallel,
)
from vidiff.cli.generate_post import add_postprocess_arguments, apply_postprocess, postprocess_config
from vidiff.cli.generate_sv3d import add_sv3d_arguments, check_sv3d_arguments, sv3d_pipeline
from vidiff.cli.generate_sv4d import add_sv4d_arguments, run_sv4d, sv4d_requested
from vidiff.cli.generate_text import add_text_arguments, run_text, text_requested
from vidiff.cli.generate_video import add_video_arguments, run_video, video_requested
from vidiff.cli.main import CLIError
from vidiff.io.atomic import write_json_atomic
from vidiff.io.video import VIDEO_FORMATS, check_video_output, video_format_for, write_video
from vidiff.networks.fast import COMPILE_MODES, COMPILE_TARGETS, FastPath
from vidiff.pipelines.memory import OFFLOAD_MODES
from vidiff.pipelines.settings import (
    DTYPE_NAMES,
    GenerationSettings,
    SettingError,
    read_sidecar,
)

EXAMPLES = """\
examples:
  vidiff generate --image photo.png --output clip.mp4
      the bundled model, its default size and frame count
  vidiff generate --image photo.png --model ~/models/svd-xt --output clip.mp4 --device cuda --dtype float16
      a diffusers folder of SVD-XT (a single-file .safetensors or a vidiff folder works the same)
  vidiff generate --image photo.png --model svd_xt.safetensors --output clip.webm --max-memory 8GiB
      pick the cheapest memory controls predicted to fit 8 GiB, and say which
  vidiff generate --image photo.png --output again.mp4 --settings clip.mp4.json
      repeat a run from its sidecar (options given on the command line win)
  vidiff generate --image photo.png --output long.mp4 --num-frames 120
      a video longer than the model's clip (--long-mode chain|keyframes|fifo; memory of one window)
  vidiff generate --image a.png --end-image b.png --output ab.mp4
      a clip that starts on one image and ends on the other
  torchrun --nproc-per-node 2 -m vidiff.cli.main generate --image photo.png --output clip.mp4 --parallel frames
      one video split over 2 processes (or GPUs); the frames of one process
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate", help="Turn an image into a video.", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Generate a video from one image with an SVD-class model (SVD, SVD-XT, SV3D) or the "
        "bundled default model. Unset options take the model's defaults, as the reference implementations "
        "set them. A JSON sidecar with every resolved setting is written beside the video.",
    )
    p.add_argument("--image", default=None, help="input image (png, jpg, webp, ...); required unless --batch")
    p.add_argument("--output", default=None,
                   help=f"output video ({', '.join('.' + f for f in VIDEO_FORMATS if f != 'png')}), or a folder "
                   "(a path ending in /) of png frames")
    p.add_argument("--model", default=None,
                   help="diffusers folder, single-file .safetensors, or vidiff folder (default: bundled model)")
    add_settings_arguments(p)
    add_device_arguments(p)
    add_fast_path_arguments(p)
    add_adapter_arguments(p)
    add_postprocess_arguments(p)
    add_batch_arguments(p)
    add_parallel_arguments(p)
    add_long_arguments(p)
    add_text_arguments(p)
    add_video_arguments(p)
    add_sv3d_arguments(p)
    add_sv4d_arguments(p)
    p.add_argument("--settings", default=None, help="a sidecar JSON from an earlier run to repeat")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_settings_arguments(p: argparse.ArgumentParser) -> None:
    """One option per ``GenerationSettings`` field (``vidiff generate`` and ``vidiff bench``); a field with a
    short flag (``--steps``) also takes its full name (``--num-inference-steps``, diffusers' argument)."""
    group = p.add_argument_group("generation settings (default: the model's)")
    for f in fields(GenerationSettings):
        full = "--" + f.name.replace("_", "-")
        flags = dict.fromkeys((f.metadata.get("flag", full), full))
        kind = {"int | None": int, "float | None": float}.get(str(f.type), str)
        group.add_argument(*flags, dest=f.name, type=kind, default=None, help=f.metadata["help"],
                           choices=f.metadata.get("choices"))


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    """Device, dtype and the memory controls (``vidiff generate`` and ``vidiff bench``)."""
    hw = p.add_argument_group("device and memory")
    hw.add_argument("--device", default="auto",
                    help="auto, cpu, cuda or cuda:N (default auto: cuda when there is a CUDA device, else cpu)")
    hw.add_argument("--dtype", default=None, choices=DTYPE_NAMES,
                    help="weights and activations dtype (default float32 on cpu, float16 on cuda)")
    hw.add_argument("--offload", default=None, choices=OFFLOAD_MODES,
                    help="keep components (model) or layers (sequential) off the GPU until they run")
    hw.add_argument("--max-memory", default=None,
                    help="memory budget such as 8GiB: chooses the cheapest controls predicted to fit")
    hw.add_argument("--vae-tiling", action="store_true", help="decode in overlapping spatial tiles")
    hw.add_argument("--attention-chunk", type=int, default=None,
                    help="sequences per attention/feed-forward call in the UNet (lower saves memory)")


def add_fast_path_arguments(p: argparse.ArgumentParser) -> None:
    """The UNet speed switches (``vidiff.networks.fast.FastPath``); read back with :func:`fast_path_from_args`."""
    fast = p.add_argument_group("speed (how the UNet runs, not what it computes)")
    fast.add_argument("--compile", default="none", choices=COMPILE_TARGETS,
                      help="torch.compile the repeated UNet blocks (fast to compile) or the whole UNet; the first "
                      "call pays the compile time (default none)")
    fast.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                      help="torch.compile mode; reduce-overhead adds CUDA graphs (default: default)")
    fast.add_argument("--channels-last", action="store_true", help="NHWC convolutions (tensor-core layout)")
    fast.add_argument("--no-fuse-projections", dest="fuse_projections", action="store_false",
                      help="compute attention q, k, v with three matrix multiplies instead of one")


def check_attention_chunk(args: argparse.Namespace) -> None:
    if args.attention_chunk is not None and args.attention_chunk < 1:
        raise CLIError(f"--attention-chunk must be >= 1, got {args.attention_chunk}")


def load_image_pipeline(args: argparse.Namespace, device: str) -> tuple[Any, Path | str]:
    """``(pipeline, model)``: ``--model`` (default: the bundled model) on ``device`` in ``--dtype`` (float16 on
    CUDA, else float32; the VAE in float32) with the speed switches; a model that does not load is a one-line
    ``CLIError`` (``vidiff generate``, ``--video`` runs and ``vidiff bench``)."""
    import torch

    from vidiff.pipelines.image_to_video import ImageToVideoPipeline, bundled_model_path

    model = args.model or bundled_model_path()
    if model is None:
        raise CLIError("no --model given and no bundled model is installed")
    dtype = getattr(torch, args.dtype or ("float16" if device.startswith("cuda") else "float32"))
    try:
        return ImageToVideoPipeline.from_pretrained(model, dtype=dtype, device=device,
                                                    fast_path=fast_path_from_args(args),
                                                    vae_dtype=torch.float32), model
    except (ValueError, OSError) as e:
        raise CLIError(str(e)) from None


def fast_path_from_args(args: argparse.Namespace) -> FastPath:
    return FastPath(fuse_projections=args.fuse_projections, channels_last=args.channels_last,
                    compile=args.compile, compile_mode=args.compile_mode)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


DEVICE_TYPES = ("cpu", "cuda", "mps")


def resolve_device(name: str) -> str:
    """``--device`` as the device it stands for (``auto``: cuda when a CUDA device is present, else cpu)."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise CLIError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name} asked for, but this machine has no CUDA device")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise CLIError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CLIError(f"--device {name} asked for, but this machine has no MPS device")
    return str(device)


def _flag(name: str) -> str:
    f = next(f for f in fields(GenerationSettings) if f.name == name)
    return f.metadata.get("flag", "--" + name.replace("_", "-"))


def _settings(args: argparse.Namespace) -> GenerationSettings:
    """The options given, over the ``--settings`` file's (read once: its settings, and the run options it
    records for those not given, :func:`_replay_run_options`); errors name the option or the file's field."""
    try:
        settings = GenerationSettings(**{f.name: getattr(args, f.name) for f in fields(GenerationSettings)})
    except SettingError as e:
        raise CLIError(f"{_flag(e.field)}: {e}") from None
    if not args.settings:
        return settings
    try:
        sidecar = read_sidecar(args.settings)
        recorded = GenerationSettings.from_dict(sidecar["settings"], source=f"settings file {args.settings}")
    except ValueError as e:
        raise CLIError(str(e)) from None
    _replay_run_options(args, sidecar)
    return recorded.merged(settings)


# how the run was carried out, beside its settings: (sidecar key = argument, the value meaning "not given",
# check)
_RUN_OPTIONS = (
    ("dtype", None, lambda v: v in DTYPE_NAMES),
    ("offload", None, lambda v: v in OFFLOAD_MODES),
    ("vae_tiling", False, lambda v: isinstance(v, bool)),
    ("attention_chunk", None, lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)),
)


def _replay_run_options(args: argparse.Namespace, sidecar: dict) -> None:
    """Take the dtype, offload, tiling and attention chunking of the ``--settings`` sidecar for the options
    not given on the command line, so a replay computes what the recorded run computed."""
    for key, unset, valid in _RUN_OPTIONS:
        if key not in sidecar or getattr(args, key) != unset:
            continue
        value = sidecar[key]
        if not valid(value):
            raise CLIError(f"settings file {args.settings}: {key} = {value!r} is not a valid value")
        setattr(args, key, value)
    _replay_cameras(args, sidecar)


def _replay_cameras(args: argparse.Namespace, sidecar: dict) -> None:
    """The recorded cameras, unless the command line gives its own: SV3D_p's orbit (``sv3d``: every frame's
    elevation and azimuth) and the camera adapter's request (``camera``: a preset name or a JSON path file)."""
    orbit = sidecar.get("sv3d") or {}
    if "azimuths_deg" in orbit and not (args.elevation or args.azimuths or args.orbit):
        try:
            args.elevation, args.azimuths = (",".join(str(float(v)) for v in orbit[k])
                                             for k in ("elevations_deg", "azimuths_deg"))
        except (KeyError, TypeError, ValueError):
            raise CLIError(f"settings file {args.settings}: sv3d = {orbit!r} is not an orbit") from None
    camera = sidecar.get("camera") or {}
    if camera and args.camera is None:
        request = camera.get("request") if isinstance(camera, dict) else None
        if not isinstance(request, str) or request == "tensor":
            raise CLIError(f"settings file {args.settings}: its camera path was given as a tensor in Python and "
                           "cannot be replayed: give --camera")
        args.camera = request
        if getattr(args, "camera_adapter", None) is None and isinstance(camera.get("adapter"), str):
            args.camera_adapter = camera["adapter"]


def _check_output(output: Path, inputs: dict[str, Path | None]) -> None:
    """The output can be written and replaces nothing but an earlier output (never an input: ``inputs`` maps
    what each is, ``image`` or ``video``, to its path)."""
    out = output.resolve()
    for what, path in inputs.items():
        if path is None:
            continue
        source = path.resolve()
        if out == source or (output.exists() and output.is_dir() and source.is_relative_to(out)):
            raise CLIError(f"--output {output} would overwrite the input {what} {path}: write the video elsewhere")
    try:
        check_video_output(output)
    except ValueError as e:
        raise CLIError(f"--output: {e}") from None
    if sidecar_path(output).is_dir():
        raise CLIError(f"--output: the settings file of {output}, {sidecar_path(output)}, would replace a folder")


def _check_cheap(args: argparse.Namespace) -> tuple[Path, Path, GenerationSettings, str]:
    """Everything that can be checked before loading a model, so bad input fails fast."""
    from vidiff.io.video import ImageError, read_image

    image = Path(args.image)
    try:
        read_image(image)
    except ImageError as e:
        raise CLIError(f"--image {e}") from None
    output = Path(args.output)
    try:
        video_format_for(output)
    except ValueError as e:
        raise CLIError(str(e)) from None
    settings = _settings(args)
    check_attention_chunk(args)
    device = resolve_device(args.device)
    _check_output(output, {"image": image})
    return image, output, settings, device


def run(args: argparse.Namespace) -> int:
    if (sv4d := sv4d_requested(args)) is not None:  # an SV4D model: novel-view videos of --video
        return run_sv4d(args, sv4d)
    check_sv3d_arguments(args)
    if args.camera is not None and (text_requested(args) or video_requested(args)):
        raise CLIError(f"--camera {args.camera}: image-to-video only, not --prompt or --video runs")
    if args.parallel is not None and video_requested(args):
        raise CLIError(f"--parallel {args.parallel}: image-to-video and --prompt runs only, not --video runs")
    if text_requested(args):
        return run_text(args)
    if video_requested(args):
        return run_video(args)
    check_single_or_batch(args)
    if args.batch is not None:
        return run_batch(args)  # each job comes back here with its --image and --output
    image_path, output, settings, device = _check_cheap(args)
    device = check_parallel(args, device)  # joins the process group under torchrun --parallel
    check_long_arguments(args, image_path)
    loras = check_adapter_args(args)
    post = postprocess_config(args)

    from vidiff.io.video import read_image

    pipe, model = load_image_pipeline(args, device)
    pipe, camera = sv3d_pipeline(pipe, args, settings)  # SV3D: the orbit pipeline and its camera
    apply_adapters(pipe, loras, args.lora_partial)
    settings = apply_camera(pipe, args, model, settings)  # --camera: its adapter, path and motion bucket
    image = read_image(image_path)
    long = long_requested(args, pipe, settings)
    if long and args.camera is not None:
        raise CLIError(f"--camera {args.camera}: a camera path covers one clip of the model's length, not a long "
                       "video (--num-frames beyond it, --end-image or --long-mode)")
    layout = start_parallel(args, pipe, settings, image, long=long)
    if long:
        return run_long(args, pipe, image, image_path, output, settings, model, post, layout)
    start = time.perf_counter()
    try:
        result = pipe(  # the writer decodes (every rank of a split decode): the others hold the same latents
            image, settings=settings, output_type="pt" if decodes(layout, pipe) else "latent", progress=not args.quiet,
            offload=args.offload,
            max_memory=args.max_memory, vae_tiling=args.vae_tiling, attention_chunk=args.attention_chunk,
            **camera,
        )
    except ValueError as e:
        raise CLIError(str(e)) from None
    seconds = time.perf_counter() - start
    if not is_writer(layout):
        return 0
    frames, post_record = apply_postprocess(result.frames[0], post)
    resolved = result.settings
    try:
        write_video(frames, output, fps=resolved.fps)
    except ValueError as e:
        raise CLIError(str(e)) from None
    except OSError as e:  # a disk that filled up during the run: nothing half-written is left
        raise CLIError(f"cannot write {output}: {e.strerror or e}") from None
    sidecar = {
        "vidiff_version": __version__,
        "model": str(model),
        "image": str(image_path),
        "image_sha256": _sha256(image_path),
        "output": str(output),
        **adapter_record(pipe),  # each LoRA: path, file hash, scale, base-model hash; the camera path
        **result.run,  # device, dtypes, memory plan, tiling, attention chunk, fast path, torch version
        **parallel_record(layout, pipe),  # --parallel: mode, world size, decode split
        "generation_seconds": round(seconds, 3),
        "settings": resolved.to_dict(),
        **post_record,
    }
    write_sidecar(sidecar, output)
    if not args.quiet:
        print(f"wrote {output} ({frames.shape[0]} frames, {frames.shape[-1]}x{frames.shape[-2]}, "
              f"{resolved.fps} fps) in {seconds:.1f} s; settings in {sidecar_path(output)}")
        budget = f" (chosen for --max-memory {args.max_memory})" if args.max_memory else ""
        print(f"memory controls: {result.memory_plan.describe()}{budget}")
    return 0


def write_sidecar(sidecar: dict, output: Path) -> None:
    """Write the settings file of ``output`` (already written: a failure says so and names both files)."""
    try:
        write_json_atomic(sidecar, sidecar_path(output))
    except OSError as e:
        raise CLIError(f"wrote {output}, but not its settings file {sidecar_path(output)}: {e.strerror or e}") from None


def sidecar_path(output: Path) -> Path:
    """Where the settings of a video are written: ``clip.mp4`` -> ``clip.mp4.json``."""
    output = Path(output)
    return output / "settings.json" if video_format_for(output) == "png" else output.with_name(output.name + ".json")
