"""``vidiff export --format onnx``: the UNet step, VAE decoder and image encoder as ONNX graphs.

The folder written holds ``unet.onnx``, ``vae_decoder.onnx``, ``image_encoder.onnx`` (those the model has),
``.onnx.data`` files for graphs whose weights pass 512 MiB (or as ``--external-data`` says) and ``onnx.json``
(what was exported, from which model, with which dynamic axes). ``vidiff.export.onnx_pipeline(folder)`` samples
with onnxruntime through the same pipeline; the README shows the TensorRT build from these graphs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vidiff.cli.main import CLIError

FORMATS = ("onnx",)
EXTERNAL = {"auto": None, "always": True, "never": False}

EXAMPLES = """\
examples:
  vidiff export --format onnx --output svd_onnx/
      the bundled model's UNet and VAE decoder
  vidiff export --format onnx --model ~/models/svd-xt --output svd_xt_onnx/ --dtype float16
      SVD-XT: UNet, temporal VAE decoder and CLIP image encoder, weights in .onnx.data files
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from vidiff.export.onnx import ONNX_TARGETS

    p = sub.add_parser("export", help="Export a model's networks (ONNX).", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Export the UNet step, the VAE decoder and the image encoder to ONNX, with "
                       "dynamic batch, frame count and size, for onnxruntime or a TensorRT build.")
    p.add_argument("--format", required=True, choices=FORMATS, help="export format")
    p.add_argument("--output", required=True, help="folder to write (replaced only if it is an earlier export)")
    p.add_argument("--model", default=None, help="diffusers folder, single-file .safetensors or vidiff folder "
                   "(default: the bundled model)")
    p.add_argument("--targets", default=",".join(ONNX_TARGETS),
                   help=f"comma-separated graphs to export (default: {','.join(ONNX_TARGETS)})")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                   help="weights and activations of the UNet and image encoder (the VAE stays float32)")
    p.add_argument("--external-data", default="auto", choices=tuple(EXTERNAL),
                   help="weights in a .data file beside each graph: auto (graphs over 512 MiB), always, never")
    p.add_argument("--frames", type=int, default=2, help="frame count traced (the axis stays dynamic; default 2)")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")


def _check(args: argparse.Namespace) -> tuple[Path, tuple[str, ...]]:
    from vidiff.export.onnx import MANIFEST, ONNX_TARGETS

    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    bad = [t for t in targets if t not in ONNX_TARGETS]
    if bad or not targets:
        raise CLIError(f"--targets {args.targets!r}: choose from {','.join(ONNX_TARGETS)}")
    if args.frames < 1:
        raise CLIError(f"--frames must be >= 1, got {args.frames}")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--output {out} is a file: name a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise CLIError(f"--output {out} is a folder that holds no earlier export ({MANIFEST}); refusing to "
                       "replace it: choose a new folder")
    return out, targets


def run(args: argparse.Namespace) -> int:
    out, targets = _check(args)

    import torch

    from vidiff.export.onnx import export_onnx
    from vidiff.io.atomic import atomic_dir, check_writable
    from vidiff.pipelines.image_to_video import ImageToVideoPipeline, bundled_model_path

    try:
        check_writable(out)
    except ValueError as e:
        raise CLIError(f"--output: {e}") from None
    model = args.model or bundled_model_path()
    if model is None:
        raise CLIError("no --model given and no bundled model is installed")
    try:
        pipe = ImageToVideoPipeline.from_pretrained(model, dtype=getattr(torch, args.dtype), vae_dtype=torch.float32)
    except (ValueError, OSError) as e:
        raise CLIError(str(e)) from None
    with atomic_dir(out) as tmp:
        manifest = export_onnx(pipe, tmp, targets, external_data=EXTERNAL[args.external_data], model=str(model),
                               num_frames=args.frames)
    if not args.quiet:
        for g in manifest["graphs"].values():
            data = f" + {g['external_data']}" if g["external_data"] else ""
            print(f"{out / g['file']}{data}: {g['bytes'] / 2**20:.1f} MiB in {g['export_seconds']:.1f} s")
    return 0
