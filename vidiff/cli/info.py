"""``vidiff info PATH``: what a checkpoint is (layout, model type, key config fields, parameter counts).

Only tensor shapes are read (the safetensors headers), so this is fast even for multi-GB files.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from vidiff.io.checkpoints import read_checkpoint
from vidiff.io.components import COMPONENTS, Checkpoint
from vidiff.io.weights import CheckpointError
from vidiff.pipelines.wan_loading import is_wan_checkpoint, read_wan_checkpoint

EXIT_USAGE = 2

# The config fields worth a glance, per component (others are printed with --json).
KEY_FIELDS: dict[str, tuple[str, ...]] = {
    "unet": (
        "_class_name", "in_channels", "out_channels", "block_out_channels", "layers_per_block",
        "num_attention_heads", "cross_attention_dim", "projection_class_embeddings_input_dim",
        "addition_time_embed_dim", "num_frames", "resnet_eps_policy",
    ),
    "vae": ("_class_name", "block_out_channels", "layers_per_block", "latent_channels", "scaling_factor"),
    "image_encoder": (
        "hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size", "image_size",
        "projection_dim",
    ),
    "feature_extractor": ("image_processor_type", "crop_size", "image_mean", "image_std"),
    "scheduler": ("_class_name", "prediction_type", "sigma_min", "sigma_max", "use_karras_sigmas"),
}


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``info`` subcommand."""
    p = sub.add_parser(
        "info",
        help="Print what a checkpoint is: layout, model type, configs, parameter counts.",
        description="Describe a checkpoint (diffusers folder, original single file or vidiff folder).",
    )
    p.add_argument("path", metavar="PATH", help="checkpoint folder or .safetensors file")
    p.add_argument("--json", action="store_true", help="print everything as one JSON object")
    return p


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def describe(ckpt: Checkpoint) -> dict[str, Any]:
    """A JSON-able summary of ``ckpt``: layout, model type, configs and per-component counts."""
    out: dict[str, Any] = {"layout": ckpt.layout, "model_type": ckpt.extra.get("model_type", ckpt.model_type),
                           "components": {}}
    for name, comp in ckpt.components.items():
        entry: dict[str, Any] = {"config": comp.config}
        if comp.state_dict is not None:
            dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in comp.state_dict.values()})
            entry.update(tensors=len(comp.state_dict), parameters=comp.num_parameters(), dtypes=dtypes)
        out["components"][name] = entry
    out["ignored_tensors"] = len(ckpt.ignored)
    out["notes"] = list(ckpt.notes)
    return out


def run(args: argparse.Namespace) -> int:
    """Print the description of ``args.path``; errors print one line and return exit code 2."""
    try:
        ckpt = read_wan_checkpoint(args.path) if is_wan_checkpoint(args.path) else read_checkpoint(args.path,
                                                                                                  device="meta")
    except (CheckpointError, OSError) as e:
        print(f"vidiff info: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USAGE
    info = describe(ckpt)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True, default=str))
        return 0
    print(f"path:       {args.path}")
    print(f"layout:     {info['layout']}")
    print(f"model type: {info['model_type']}")
    total = 0
    for name in [*COMPONENTS, *(c for c in info["components"] if c not in COMPONENTS)]:
        entry = info["components"].get(name)
        if entry is None:
            continue
        config = entry["config"]
        if "parameters" in entry:
            total += entry["parameters"]
            print(f"{name}: {_human(entry['parameters'])} parameters ({entry['parameters']:,}) in "
                  f"{entry['tensors']} tensors, {'/'.join(entry['dtypes'])}")
        else:
            print(f"{name}: config only")
        for key in KEY_FIELDS.get(name, ()):
            if key in config:
                print(f"  {key}: {json.dumps(config[key])}")
    print(f"total: {_human(total)} parameters ({total:,})")
    if info["ignored_tensors"]:
        print(f"{info['ignored_tensors']} source tensors recognised but unused (duplicates / text tower)")
    for note in info["notes"]:
        print(f"note: {note}")
    return 0
