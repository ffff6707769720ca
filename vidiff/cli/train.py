"""``vidiff train CONFIG [--key=value ...] [--resume | --export [CHECKPOINT]]``: train or fine-tune from a
YAML config, or export a saved checkpoint as a model.

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
    one_line = " ".join(message.splitlines())
    print(f"vidiff train: error: {one_line}", file=sys.stderr)
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
    p.add_argument("--export", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                   help="train nothing: export a saved checkpoint (default: the latest in OUTPUT_DIR/checkpoints) "
                   "as OUTPUT_DIR/model, with the config's export settings")
    p.add_argument("overrides", nargs=argparse.REMAINDER,
                   help="config overrides: --optim.lr=1e-4 data.root=/path ...")
    return p


def _flags_after_config(rest: list[str], resume: bool, export: str | None) -> tuple[list[str], bool, str | None]:
    """``--resume`` and ``--export [CHECKPOINT]`` given after CONFIG land among the overrides (argparse's
    REMAINDER): take them out. Overrides are ``key=value``, so a following word without ``=`` is a path."""
    overrides: list[str] = []
    i = 0
    while i < len(rest):
        word = rest[i]
        if word == "--resume":
            resume = True
        elif word == "--export" or word.startswith("--export="):
            export = word.partition("=")[2] or "latest"
            nxt = rest[i + 1] if i + 1 < len(rest) else ""
            if word == "--export" and nxt and "=" not in nxt and not nxt.startswith("-"):
                export, i = nxt, i + 1
        else:
            overrides.append(word)
        i += 1
    return overrides, resume, export


def run(args: argparse.Namespace) -> int:
    from vidiff.training.config import ConfigError, TrainConfig

    overrides, resume, export = _flags_after_config(list(args.overrides or []), bool(args.resume), args.export)
    if resume and export is not None:
        return _error("--resume and --export exclude each other (one trains, the other only exports)")
    if overrides and overrides[0] == "--":
        overrides = overrides[1:]
    try:
        config = TrainConfig.from_yaml(args.config, overrides)
    except ConfigError as e:
        return _error(str(e))

    from vidiff.training.checkpoint import CheckpointCorruptError
    from vidiff.training.loop import export_checkpoint, train

    # bad values found before any training (a file as output_dir, a missing data folder, a stage matching
    # nothing, an unreadable checkpoint; vidiff.io's CheckpointError is a ValueError)
    user_errors = (ValueError, FileNotFoundError, CheckpointCorruptError)
    if export is not None:
        try:
            model_dir = export_checkpoint(config, None if export == "latest" else export)
        except user_errors as e:
            return _error(str(e))
        print(json.dumps({"model_dir": str(model_dir)}), file=sys.stdout)
        return 0
    try:
        result = train(config, resume=resume)
    except user_errors as e:
        return _error(str(e))
    summary = {"output_dir": str(result.output_dir), "step": result.step,
               "final_loss": result.losses[-1] if result.losses else None,
               "model_dir": str(result.model_dir) if result.model_dir else None,
               "resumed_from": result.resumed_from}
    if result.model_dir is not None or result.resumed_from is not None or result.losses:
        print(json.dumps(summary), file=sys.stdout)
    return 0
