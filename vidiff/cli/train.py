"""``vidiff train CONFIG [--key=value ...] [--resume]``: train or fine-tune from a YAML config.

Overrides use the config's dotted field names (``--optim.lr=1e-4``, ``data.root=/videos``); values are
parsed to the field's type. Multi-process: launch this command with ``torchrun --nproc_per_node N``.
A missing config, an unknown key or a bad value is a one-line error with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys

EXIT_USAGE = 2


def _error(message: str) -> int:
    # Reported here rather than raised as CLIError: under ``python -m vidiff.cli.main`` the module runs as
    # ``__main__`` and would not catch ``vidiff.cli.main.CLIError``.
    print(f"vidiff train: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="Train or fine-tune a video diffusion model from a YAML config.",
        description="Train or fine-tune a video diffusion model. CONFIG is a YAML TrainConfig; any "
                    "field can be overridden with --section.field=value (or section.field=value).",
    )
    p.add_argument("config", help="YAML training config (see configs/)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in OUTPUT_DIR/checkpoints")
    p.add_argument("overrides", nargs=argparse.REMAINDER,
                   help="config overrides: --optim.lr=1e-4 data.root=/path ...")
    return p


def run(args: argparse.Namespace) -> int:
    from vidiff.training.config import ConfigError, TrainConfig

    overrides = list(args.overrides or [])
    resume = bool(args.resume)
    if "--resume" in overrides:
        overrides = [o for o in overrides if o != "--resume"]
        resume = True
    if overrides and overrides[0] == "--":
        overrides = overrides[1:]
    try:
        config = TrainConfig.from_yaml(args.config, overrides)
    except ConfigError as e:
        return _error(str(e))

    from vidiff.training.loop import train

    try:
        result = train(config, resume=resume)
    except (ValueError, FileNotFoundError) as e:  # bad values found while building (CheckpointError too)
        return _error(str(e))
    summary = {"output_dir": str(result.output_dir), "step": result.step,
               "final_loss": result.losses[-1] if result.losses else None,
               "model_dir": str(result.model_dir) if result.model_dir else None,
               "resumed_from": result.resumed_from}
    if result.model_dir is not None or result.resumed_from is not None or result.losses:
        print(json.dumps(summary), file=sys.stdout)
    return 0
