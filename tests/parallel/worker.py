"""One rank of a parallel-inference test, launched by torchrun from the tests of this folder (not a test).

``worker.py SPEC.json``: ``{"runs": [...], "result": path}``; each run names what to compute (``unet``: the
tiny UNet on fixed inputs, ``case`` its arguments; ``pipeline``: the image-to-video ``model`` with
``settings``) and the ``--parallel`` ``mode``. Rank 0 saves, per run, every rank's output, the bytes every
rank sent in each network call and the shape of each call's input.
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
from cases import pipeline_frames, tiny_unet_case


def run_one(run: dict[str, Any]) -> dict[str, Any]:
    layout = ParallelLayout.build(*parse_mode(run["mode"]))
    sent: list[int] = []
    if run["kind"] == "unet":
        unet, calls = tiny_unet_case(**run["case"])
        handle = parallelize(unet, layout)
        outs = []
        for x, c_noise, cond, indicator in calls:
            layout.reset_counts()
            with torch.no_grad():
                outs.append(unet(x, c_noise, cond, image_only_indicator=indicator))
            sent.append(layout.sent)
        handle.remove()
        return {"out": torch.stack(outs), "sent": sent, "shapes": [tuple(c[0].shape) for c in calls]}
    shapes: list[tuple[int, ...]] = []
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
