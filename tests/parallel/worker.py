"""One rank of a parallel-inference test, launched by torchrun from the tests of this folder (not a test).

``worker.py SPEC.json``: ``{"runs": [...], "result": path}``; each run names what to compute (``unet``: the
tiny UNet on fixed inputs, ``case`` its arguments; ``dit``: the tiny Wan DiT likewise; ``pipeline``: the
image-to-video ``model`` with ``settings``; ``wan_pipeline``: the tiny Wan text-to-video pipeline;
``decode``, ``decode_pipeline``: the VAE decode split, see ``decode_cases.py``; ``wan_decode``: Wan's causal
VAE decode split, ``preset`` and latent ``frames``) and the ``--parallel`` ``mode``.
Rank 0 saves, per run, every rank's output, the bytes every rank sent in each network call and the shape of
each call's input.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from vidiff.parallel import ParallelLayout, init_from_env, parallelize, parse_mode

sys.path.insert(0, str(Path(__file__).parent))
from cases import pipeline_frames, tiny_dit_case, tiny_unet_case, wan_decode_case, wan_pipeline_frames
from decode_cases import decode_run


def run_one(run: dict[str, Any]) -> dict[str, Any]:
    layout = ParallelLayout.build(*parse_mode(run["mode"]))
    sent: list[int] = []
    if run["kind"] in ("decode", "decode_pipeline"):  # the decode split by frames (decode_cases.py)
        return decode_run(run, layout)
    if run["kind"] in ("unet", "dit"):
        network, calls = (tiny_unet_case if run["kind"] == "unet" else tiny_dit_case)(**run["case"])
        handle = parallelize(network, layout)
        outs = []
        for x, c_noise, cond, indicator in calls:
            layout.reset_counts()
            kwargs = {} if indicator is None else {"image_only_indicator": indicator}
            with torch.no_grad():
                outs.append(network(x, c_noise, cond, **kwargs))
            sent.append(layout.sent)
        handle.remove()
        return {"out": torch.stack(outs), "sent": sent, "shapes": [tuple(c[0].shape) for c in calls]}
    if run["kind"] == "wan_decode":  # Wan's causal VAE decode split by latent frames
        out, nbytes = wan_decode_case(run["preset"], run["frames"], layout=layout)
        return {"out": out, "sent": nbytes, "shapes": []}
    shapes: list[tuple[int, ...]] = []
    if run["kind"] == "wan_pipeline":
        return {"out": wan_pipeline_frames(layout=layout, sent=sent, shapes=shapes), "sent": sent, "shapes": shapes}
    out = pipeline_frames(run["model"], run["settings"], layout=layout, sent=sent, shapes=shapes)
    return {"out": out, "sent": sent, "shapes": shapes}


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(1)
    init_from_env()
    results = []
    for run in spec["runs"]:
        mine = run_one(run)
        everyone: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        results.append({"outs": [e["out"] for e in everyone], "sent": [e["sent"] for e in everyone],
                        "shapes": mine["shapes"]})
    if dist.get_rank() == 0:
        torch.save(results, spec["result"])
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
