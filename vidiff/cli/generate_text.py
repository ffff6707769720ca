"""``vidiff generate --prompt TEXT --model WAN``: text-to-video (and Wan image-to-video with ``--image``).

The flags shared with image-to-video keep their meaning (``--height``, ``--width``, ``--num-frames``,
``--steps``, ``--seed``, ``--fps``, ``--output``, ``--device``, ``--dtype``); the defaults are diffusers' Wan
ones (480×832, 81 frames, 50 steps, guidance 5, 16 fps). ``--max-memory`` chooses how many latent frames the
3D VAE decodes at a time (the planner of ``vidiff.pipelines.memory``); the choice is recorded in the sidecar.
``--parallel cfg|frames|cfg,frames`` under torchrun splits each transformer call as for image-to-video
(frames: the DiT's token sequence, DeepSpeed-Ulysses; ``vidiff.parallel.sequence``); rank 0 writes.
Bad input is a one-line error (exit code 2),
checked before any model is loaded where it can be.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from vidiff.cli.generate_parallel import check_parallel, decodes, is_writer, parallel_record
from vidiff.cli.generate_post import apply_postprocess, postprocess_config
from vidiff.cli.main import CLIError
from vidiff.io.atomic import write_json_atomic
from vidiff.io.video import check_video_output, video_format_for, write_video

__all__ = ["add_text_arguments", "run_text", "text_requested"]

WAN_DEFAULTS = {"height": 480, "width": 832, "num_frames": 81, "num_inference_steps": 50, "fps": 16, "seed": 0}


def add_text_arguments(p: argparse.ArgumentParser) -> None:
    """The text-to-video flags (their own group; the others are shared with image-to-video)."""
    g = p.add_argument_group("text-to-video (Wan 2.x models)")
    g.add_argument("--prompt", default=None, help="what the video shows (needs a model with a text encoder)")
    g.add_argument("--negative-prompt", default=None, help="what it should not show (default: empty)")
    g.add_argument("--guidance-scale", type=float, default=5.0, help="classifier-free guidance (default 5.0)")
    g.add_argument("--guidance-scale-2", type=float, default=None,
                   help="guidance of Wan 2.2's low-noise expert (default: --guidance-scale)")
    g.add_argument("--vae", default=None, help="the VAE of an original-layout Wan transformer file")
    g.add_argument("--flow-shift", type=float, default=None,
                   help="timestep shift (default: the model's scheduler config, else 5.0)")


def text_requested(args: argparse.Namespace) -> bool:
    return getattr(args, "prompt", None) is not None


def _value(args: argparse.Namespace, name: str) -> int:
    value = getattr(args, name, None)
    return WAN_DEFAULTS[name] if value is None else value


def _check_cheap(args: argparse.Namespace) -> tuple[Path, Path]:
    """What can be checked without loading a model."""
    from vidiff.pipelines.text_to_video import check_num_frames

    if not args.prompt.strip():
        raise CLIError("--prompt is empty")
    if args.model is None:
        raise CLIError("--prompt needs --model: a Wan text-to-video model (diffusers folder or original file)")
    if args.output is None:
        raise CLIError("--output is required")
    try:
        check_num_frames(_value(args, "num_frames"))
    except ValueError as e:
        raise CLIError(f"--num-frames: {e}") from None
    for flag, unset in (("offload", None), ("vae_tiling", False), ("attention_chunk", None)):
        if getattr(args, flag, unset) != unset:
            raise CLIError(f"--{flag.replace('_', '-')} is not available for Wan models: use --max-memory")
    if _value(args, "num_inference_steps") < 1:
        raise CLIError(f"--steps must be >= 1, got {args.num_inference_steps}")
    output = Path(args.output)
    try:
        video_format_for(output)
        check_video_output(output)
    except ValueError as e:
        raise CLIError(f"--output: {e}") from None
    model = Path(args.model)
    if not model.exists():
        raise CLIError(f"--model {model}: no such file or folder")
    return model, output


def _start_parallel(args: argparse.Namespace, pipe: Any, settings: dict[str, Any]) -> Any:
    """Split the pipeline's transformer(s) over the ranks as ``--parallel`` asks (None without it); CLIError
    when the run cannot be split so."""
    if getattr(args, "parallel", None) is None:
        return None
    from vidiff.parallel import ParallelLayout, parallelize, parse_mode
    from vidiff.parallel.decode import parallelize_decode
    from vidiff.parallel.sequence import token_split

    cfg, frames = parse_mode(args.parallel)
    scales = (settings["guidance_scale"], settings["guidance_scale_2"] or 0.0)
    if cfg and max(scales) <= 1:
        raise CLIError(f"--parallel {args.parallel}: guidance is off (--guidance-scale <= 1), so there is no "
                       "unconditional half to split off; use --parallel frames")
    try:
        layout = ParallelLayout.build(cfg, frames)
        vae = pipe.vae.config
        latent = ((settings["num_frames"] - 1) // vae.temporal_factor + 1, settings["height"] // vae.spatial_factor)
        if layout.frames > 1:
            token_split(pipe.transformer.config, *latent, layout.frames)
        for transformer in (pipe.transformer, pipe.transformer_2):
            if transformer is not None:
                parallelize(transformer, layout)
        parallelize_decode(pipe, layout)  # the causal VAE's decode by blocks of latent frames, over every rank
    except ValueError as e:
        raise CLIError(f"--parallel {args.parallel}: {e}") from None
    return layout


def run_text(args: argparse.Namespace) -> int:
    """Generate from ``--prompt``; prints the output path and the seconds taken."""
    model, output = _check_cheap(args)
    post = postprocess_config(args)
    from vidiff.cli.generate import resolve_device

    device = check_parallel(args, resolve_device(args.device))  # joins the process group under --parallel

    import torch

    pipe = load_text_pipeline(args, model, device)
    image = None
    if args.image is not None:
        from vidiff.io.video import ImageError, read_image

        try:
            image = read_image(Path(args.image))
        except ImageError as e:
            raise CLIError(f"--image {e}") from None
    settings = text_settings(args)
    seed = _value(args, "seed")
    layout = _start_parallel(args, pipe, settings)
    start = time.perf_counter()
    try:
        result = pipe(**settings, image=image, generator=torch.Generator().manual_seed(seed),
                      output_type="pt" if decodes(layout, pipe) else "latent", max_memory=args.max_memory)
    except ValueError as e:
        raise CLIError(str(e)) from None
    seconds = time.perf_counter() - start
    if not is_writer(layout):
        return 0
    video, post_record = apply_postprocess(result.frames[0], post)
    path = write_video(video, output, fps=_value(args, "fps"))
    sidecar = path / "settings.json" if video_format_for(output) == "png" else path.with_name(path.name + ".json")
    write_json_atomic({**settings, "seed": seed, "flow_shift": pipe.flow_shift, "model": str(model),
                       "device": device, "dtype": str(next(pipe.transformer.parameters()).dtype).removeprefix("torch."),
                       "fps": _value(args, "fps"), "max_memory": args.max_memory,
                       "memory_plan": result.memory_plan.describe(),
                       "decode_chunk_size": result.memory_plan.decode_chunk_size, **parallel_record(layout, pipe),
                       **post_record}, sidecar)
    print(f"{path} ({seconds:.1f} s)")
    return 0


def text_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline's arguments from the command's options (Wan's defaults for those not given)."""
    return {"prompt": args.prompt, "negative_prompt": args.negative_prompt,
            "height": _value(args, "height"), "width": _value(args, "width"),
            "num_frames": _value(args, "num_frames"), "num_inference_steps": _value(args, "num_inference_steps"),
            "guidance_scale": args.guidance_scale, "guidance_scale_2": args.guidance_scale_2}


def load_text_pipeline(args: argparse.Namespace, model: Path, device: str) -> Any:
    """The Wan pipeline of ``--model`` (``--vae``, ``--flow-shift``) on ``device``; the transformers in
    ``--dtype`` (bfloat16 on CUDA by default, as Wan's releases run), the VAE and the encoders as loaded
    (float32). A model that cannot take a prompt is a one-line ``CLIError``."""
    import torch

    from vidiff.io.weights import CheckpointError
    from vidiff.pipelines.wan_loading import is_wan_checkpoint, load_wan_pipeline

    if not is_wan_checkpoint(model):
        raise CLIError(f"--model {model} is not a text-to-video model with a text encoder (a Wan 2.x diffusers "
                       "folder): --prompt cannot be used with it")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.startswith("cuda") else "float32"))
    try:
        pipe = load_wan_pipeline(model, vae=args.vae, dtype=dtype).to(device)
    except (CheckpointError, OSError, ValueError) as e:
        raise CLIError(" ".join(str(e).split())) from None
    if pipe.text is None:
        raise CLIError(f"--model {model} has no text encoder (text_encoder/ and tokenizer/): --prompt needs one")
    if args.flow_shift is not None:
        pipe.flow_shift = args.flow_shift
    return pipe
