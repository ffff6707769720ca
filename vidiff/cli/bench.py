"""``vidiff bench``: how fast and how big one generation is on this machine, phase by phase.

Image-to-video models (default: the bundled one), or a Wan model with ``--prompt``. Loads a model once,
generates ``--warmup`` videos that are not counted (the first call pays one-off costs: allocator growth,
kernel selection, ``--compile``), then ``--repeats`` measured ones with the same settings, and reports per
video the median wall time and where it goes: the network (every call of the UNet, or of Wan's transformers,
timed from forward hooks), the VAE decode, and the rest (conditioning, sampler arithmetic). Peak memory is
the device's peak allocation on CUDA, the process's peak resident set on the CPU. On CUDA every timed edge
synchronises the device, so phases add up to the wall time they are part of.

It measures vidiff alone; ``benchmarks/svd_speed.py`` sets it against diffusers on the same weights.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vidiff.cli.main import CLIError

EXAMPLES = """\
examples:
  vidiff bench
      the bundled model on the bundled example image, its default settings
  vidiff bench --model svd_xt.safetensors --device cuda --dtype float16 --compile blocks --json xt.json
      SVD-XT on a GPU with the compiled UNet blocks; the report also goes to xt.json
  vidiff bench --model ~/models/svd-xt --max-memory 8GiB --num-frames 14
      what the controls chosen for an 8 GiB budget cost in time
  vidiff bench --model Wan2.1-T2V-1.3B-Diffusers --prompt "a cat runs" --device cuda --num-frames 33
      a Wan text-to-video model: its transformer calls, its causal VAE's decode
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from vidiff.cli.generate import add_device_arguments, add_fast_path_arguments, add_settings_arguments
    from vidiff.cli.generate_text import add_text_arguments

    p = sub.add_parser(
        "bench", help="Time one generation phase by phase (UNet, decode, the rest) and its peak memory.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Generate the same video --warmup + --repeats times from one loaded model and report the "
        "median time per video, per UNet call and for the VAE decode, frames per second and peak memory. "
        "Settings, device and memory options are those of `vidiff generate`.")
    p.add_argument("--model", default=None,
                   help="diffusers folder, single-file .safetensors, or vidiff folder (default: bundled model)")
    p.add_argument("--image", default=None, help="input image (default: the bundled example image)")
    p.add_argument("--repeats", type=int, default=3, help="measured videos (default 3; the median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="videos generated first and not counted (default 1)")
    p.add_argument("--json", default=None, help="also write the report to this JSON file")
    add_settings_arguments(p)
    add_device_arguments(p)
    add_fast_path_arguments(p)
    add_text_arguments(p)
    p.set_defaults(settings=None)  # `generate --settings` replays a sidecar; bench takes options only


@dataclass
class PhaseClock:
    """Seconds spent in timed calls since :meth:`reset` (``calls`` of them; ``batches``: first dimensions)."""

    sync: Callable[[], None]
    seconds: float = 0.0
    calls: int = 0
    batches: list[int] = field(default_factory=list)
    _start: float = 0.0

    def reset(self) -> None:
        self.seconds, self.calls, self.batches = 0.0, 0, []

    def begin(self, batch: int | None = None) -> None:
        self.sync()
        self._start = time.perf_counter()
        if batch is not None:
            self.batches.append(batch)

    def end(self) -> None:
        self.sync()
        self.seconds += time.perf_counter() - self._start
        self.calls += 1


def _time_method(obj: Any, name: str, clock: PhaseClock) -> None:
    """Time every call of ``obj.name`` on ``clock`` (the instance's attribute shadows the class method)."""
    method = getattr(obj, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        clock.begin()
        try:
            return method(*args, **kwargs)
        finally:
            clock.end()

    setattr(obj, name, timed)


def _check(args: argparse.Namespace) -> None:
    for flag, value, low in (("--repeats", args.repeats, 1), ("--warmup", args.warmup, 0)):
        if value < low:
            raise CLIError(f"{flag} must be >= {low}, got {value}")
    from vidiff.cli.generate import check_attention_chunk

    check_attention_chunk(args)
    if args.json is not None and Path(args.json).is_dir():
        raise CLIError(f"--json {args.json} is a folder: give a file name")


@dataclass
class Subject:
    """What is benchmarked: ``generate()`` makes one video and returns ``(frames, settings dict, memory plan)``;
    ``networks`` are timed by forward hooks, ``decode`` names the method ``(owner, name)`` that decodes."""

    name: str
    generate: Callable[[], tuple[int, dict[str, Any], str]]
    networks: list[Any]
    decode: tuple[Any, str]
    network_kind: str


def _image_subject(args: argparse.Namespace, device: str) -> tuple[Subject, str]:
    """The image-to-video pipeline of ``--model`` (default: the bundled one) on ``--image``."""
    from vidiff.cli.generate import _settings, load_image_pipeline
    from vidiff.io.video import ImageError, read_image
    from vidiff.pipelines.image_to_video import bundled_example_path

    settings = _settings(args)
    image_path = Path(args.image) if args.image else bundled_example_path()
    try:
        image = read_image(image_path)
    except ImageError as e:
        raise CLIError(f"--image {e}") from None
    pipe, model = load_image_pipeline(args, device)

    def generate() -> tuple[int, dict[str, Any], str]:
        result = pipe(image, settings=settings, output_type="pt", progress=False, offload=args.offload,
                      max_memory=args.max_memory, vae_tiling=args.vae_tiling, attention_chunk=args.attention_chunk)
        return result.settings.num_frames, result.settings.to_dict(), result.memory_plan.describe()

    return Subject(f"{model} on {image_path}", generate, [pipe.unet], (pipe, "_decode"), "UNet"), str(model)


def _text_subject(args: argparse.Namespace, device: str) -> tuple[Subject, str]:
    """The Wan text-to-video pipeline of ``--model`` with ``--prompt`` (Wan's defaults, as ``generate``)."""
    import torch

    from vidiff.cli.generate_text import _value, load_text_pipeline, text_settings

    if args.model is None or not Path(args.model).exists():
        raise CLIError(f"--prompt needs --model: a Wan text-to-video model, got {args.model}")
    for flag, unset in (("offload", None), ("vae_tiling", False), ("attention_chunk", None)):
        if getattr(args, flag) != unset:
            raise CLIError(f"--{flag.replace('_', '-')} is not available for Wan models: use --max-memory")
    pipe = load_text_pipeline(args, Path(args.model), device)
    settings, seed = text_settings(args), _value(args, "seed")

    def generate() -> tuple[int, dict[str, Any], str]:
        result = pipe(**settings, generator=torch.Generator().manual_seed(seed), output_type="pt",
                      max_memory=args.max_memory)
        return settings["num_frames"], {**settings, "seed": seed}, result.memory_plan.describe()

    networks = [n for n in (pipe.transformer, pipe.transformer_2) if n is not None]
    return Subject(f"{args.model}, prompt {args.prompt!r}", generate, networks, (pipe.vae, "decode_latents"),
                   "transformer"), str(args.model)


def run(args: argparse.Namespace) -> int:
    _check(args)
    from vidiff.cli.generate import resolve_device

    device = resolve_device(args.device)

    import torch

    from vidiff.io.atomic import write_json_atomic

    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    start = time.perf_counter()
    subject, model = (_text_subject if getattr(args, "prompt", None) is not None else _image_subject)(args, device)
    load_s = time.perf_counter() - start
    dtype_name = str(next(subject.networks[0].parameters()).dtype).removeprefix("torch.")  # as the loader chose

    network, decode = PhaseClock(sync), PhaseClock(sync)
    for module in subject.networks:
        module.register_forward_pre_hook(lambda m, a: network.begin(a[0].shape[0]))
        module.register_forward_hook(lambda m, a, out: network.end())
    _time_method(*subject.decode, decode)

    def one() -> tuple[float, tuple[int, dict[str, Any], str]]:
        network.reset()
        decode.reset()
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        sync()
        t = time.perf_counter()
        try:
            made = subject.generate()
        except ValueError as e:
            raise CLIError(str(e)) from None
        sync()
        return time.perf_counter() - t, made

    first_s = one()[0] if args.warmup else None
    for _ in range(args.warmup - 1):
        one()
    runs = []
    for _ in range(args.repeats):
        seconds, made = one()
        runs.append({"video_s": seconds, "network_s": network.seconds, "network_calls": network.calls,
                     "decode_s": decode.seconds, "network_batch": max(network.batches, default=0)})
    report = _report(runs, made, load_s, first_s, model, subject, device, dtype_name)
    report["peak_memory_bytes"] = (torch.cuda.max_memory_allocated(device) if cuda
                                   else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    report["peak_memory_kind"] = "CUDA allocated (last video)" if cuda else "process resident set (whole run)"
    _print(report)
    if args.json is not None:
        try:
            write_json_atomic(report, Path(args.json))
        except OSError as e:
            raise CLIError(f"cannot write --json {args.json}: {e.strerror or e}") from None
    return 0


def _report(runs: list[dict[str, Any]], made: tuple[int, dict[str, Any], str], load_s: float,
            first_s: float | None, model: str, subject: Subject, device: str, dtype: str) -> dict[str, Any]:
    """The medians over ``runs`` and what was measured."""
    med = {k: statistics.median(r[k] for r in runs) for k in ("video_s", "network_s", "decode_s")}
    frames, settings, plan = made
    calls = runs[-1]["network_calls"]
    return {
        "model": model, "subject": subject.name, "network": subject.network_kind, "device": device, "dtype": dtype,
        "settings": settings, "memory_plan": plan, "repeats": len(runs), "load_s": load_s,
        "first_video_s": first_s, "video_s": med["video_s"], "frames_per_s": frames / med["video_s"],
        "network_s": med["network_s"], "network_calls_per_video": calls, "network_batch": runs[-1]["network_batch"],
        "network_call_s": med["network_s"] / calls if calls else None,
        "decode_s": med["decode_s"], "other_s": med["video_s"] - med["network_s"] - med["decode_s"],
        "runs": runs,
    }


def _print(r: dict[str, Any]) -> None:
    from vidiff.pipelines.memory import format_bytes

    s = r["settings"]
    rows = [
        ("model", f"{r['subject']} ({r['device']}, {r['dtype']})"),
        ("video", f"{s['num_frames']} frames at {s['width']}x{s['height']}, {s['num_inference_steps']} steps"),
        ("memory plan", r["memory_plan"]),
        ("load", f"{r['load_s']:.2f} s"),
        ("first video", "not run (--warmup 0)" if r["first_video_s"] is None else f"{r['first_video_s']:.2f} s"),
        (f"video (median of {r['repeats']})", f"{r['video_s']:.3f} s = {r['frames_per_s']:.2f} frames/s"),
        (f"  {r['network']}", f"{r['network_s']:.3f} s: {r['network_calls_per_video']} calls of batch "
         f"{r['network_batch']}" + (f", {r['network_call_s'] * 1000:.1f} ms each" if r["network_call_s"] else "")),
        ("  VAE decode", f"{r['decode_s']:.3f} s"),
        ("  the rest", f"{r['other_s']:.3f} s (conditioning, sampler)"),
        ("peak memory", f"{format_bytes(r['peak_memory_bytes'])} ({r['peak_memory_kind']})"),
    ]
    width = max(len(k) for k, _ in rows)
    sys.stdout.write("".join(f"{k:<{width}}  {v}\n" for k, v in rows))
