"""``vidiff convert SRC DST --to {diffusers,single-file,vidiff}``: change a checkpoint's layout.

Every tensor is carried over bit for bit; the source layout is detected. The output is written next to
DST and renamed into place, so a failed conversion leaves whatever was at DST untouched.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vidiff.cli.generate_adapters import LORA_TARGETS, add_lora_convert_arguments, convert_lora
from vidiff.io.checkpoints import LAYOUTS, detect_layout, read_checkpoint, write_checkpoint
from vidiff.io.weights import CheckpointError
from vidiff.pipelines.wan_loading import convert_wan_transformer, is_wan_checkpoint

EXIT_USAGE = 2


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``convert`` subcommand."""
    p = sub.add_parser(
        "convert",
        help="Convert a checkpoint between the diffusers, single-file and vidiff layouts.",
        description=(
            "Convert an SVD-family checkpoint between layouts: a diffusers folder, the original "
            "single-file safetensors (Stability AI / sgm names) or a vidiff folder. Tensors are copied "
            "bit for bit; nothing at DST changes unless the conversion succeeds."
        ),
    )
    p.add_argument("src", metavar="SRC", help="checkpoint to read (folder or .safetensors file)")
    p.add_argument("dst", metavar="DST", help="where to write the converted checkpoint")
    p.add_argument("--to", required=True, choices=LAYOUTS + LORA_TARGETS,
                   help="layout to write (lora-*: SRC is a LoRA file, written in that format)")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument(
        "--num-frames",
        type=int,
        default=None,
        help="frame count to record in the UNet config (single files cannot tell SVD, 14, from "
        "SVD-XT, 25; default: 14, or 21 for SV3D)",
    )
    add_lora_convert_arguments(p)
    return p


def _fail(message: str) -> int:
    print(f"vidiff convert: error: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    """Convert ``args.src`` to ``args.dst``; errors print one line and return exit code 2."""
    src, dst = Path(args.src), Path(args.dst)
    if args.num_frames is not None and args.num_frames < 1:
        return _fail(f"--num-frames must be a positive integer, got {args.num_frames}")
    try:
        source, target = src.resolve(), dst.resolve()
        if source == target:
            return _fail(f"{dst}: is the source itself; write to another path")
        if target in source.parents:
            return _fail(f"{dst}: contains the source {src} (replacing it would delete the source); write to "
                         "another path")
        if source in target.parents:
            return _fail(f"{dst}: is inside the source {src} (writing there would change the source); write to "
                         "another path")
        if (dst.exists() or dst.is_symlink()) and not args.overwrite:
            return _fail(f"{dst}: already exists (pass --overwrite to replace it)")
        if args.to in LORA_TARGETS:
            print(convert_lora(args))
            return 0
        start = time.perf_counter()
        if is_wan_checkpoint(src):  # Wan 2.x transformer: diffusers <-> Wan's original key names
            count = convert_wan_transformer(src, dst, args.to, overwrite=args.overwrite)
            print(f"{src} (Wan) -> {dst} ({args.to}): {count} tensors in {time.perf_counter() - start:.1f} s")
            return 0
        source_layout = detect_layout(src)
        ckpt = read_checkpoint(src, num_frames=args.num_frames)
        write_checkpoint(ckpt, dst, args.to, overwrite=args.overwrite)
    except (CheckpointError, OSError) as e:
        return _fail(str(e))
    tensors = sum(len(c.state_dict or {}) for c in ckpt.components.values())
    print(
        f"{src} ({source_layout}, {ckpt.model_type}) -> {dst} ({args.to}): {tensors} tensors "
        f"in {time.perf_counter() - start:.1f} s"
    )
    if ckpt.ignored:
        print(f"  {len(ckpt.ignored)} source tensors not needed (duplicate or unused copies), not written")
    for note in ckpt.notes:
        print(f"  note: {note}")
    return 0
