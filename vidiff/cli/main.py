"""The ``vidiff`` command: one subcommand per module, each exposing ``add_parser`` and ``run``.

Errors a user can fix (a missing file, a bad value, a corrupt checkpoint) are printed as one line
naming the problem, with exit code 2; nothing at the output path is touched by a failed run.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from vidiff import __version__

# Subcommand modules under vidiff.cli, in the order `--help` lists them. Imported lazily so that
# `vidiff --help` is fast and a broken optional dependency of one command cannot break the others.
COMMANDS: dict[str, str] = {
    "generate": "Turn an image into a video with an SVD-class model (default: the bundled model).",
    "train": "Train or fine-tune a video diffusion model from a YAML config.",
    "convert": "Convert a checkpoint between the diffusers, single-file and vidiff layouts.",
    "info": "Print what a checkpoint is: layout, model type, configs, parameter counts.",
    "convert-weights": "Convert the weights of a metric network (I3D for FVD, Inception for FID) to safetensors.",
    "eval": "Measure videos (FVD, FID, flicker, motion, seams, drift) and write an HTML report.",
    "serve": "Serve image-to-video as an HTTP job service with a web page (queue, progress, cancel).",
    "deflicker": "Remove frame-to-frame brightness and colour flicker from a video (streaming).",
    "export": "Export a model's UNet, VAE decoder and image encoder to ONNX (onnxruntime, TensorRT).",
    "bench": "Time one generation phase by phase (UNet, decode, the rest) and its peak memory.",
}

EXIT_USAGE = 2


class CLIError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


def _load(name: str) -> ModuleType:
    return importlib.import_module(f"vidiff.cli.{name.replace('-', '_')}")  # convert-weights: convert_weights.py


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidiff",
        description="vidiff: video diffusion (SVD-compatible image-to-video, training, conversion).",
        epilog="Run `vidiff COMMAND --help` for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"vidiff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, summary in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=summary, add_help=False)
            continue
        try:
            module = _load(name)
        except ImportError:
            continue  # the command is not available in this installation
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(_load(args.command).run(args) or 0)
    except CLIError as e:
        # one write of the whole line: ranks under torchrun share stderr, and print's separate newline let
        # two ranks' messages run into one line
        sys.stderr.write(f"vidiff {args.command}: error: {e}\n")
        sys.stderr.flush()
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"vidiff {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`vidiff info ... | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush cannot fail again
        return 0


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy, so that `except CLIError` catches the
    # class the command modules import (python -m would otherwise define CLIError twice).
    from vidiff.cli.main import main as _main

    sys.exit(_main())
