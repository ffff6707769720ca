"""CFG and frame parallelism through the whole image-to-video pipeline (gloo, 2 real processes): the frames of
one process (≤ 1e-5 on pixels, float32) for a tiny SVD-layout model and for the bundled model, identical on
every rank, and the bytes of each UNet call (one exchange per
sampler step under CFG) as the closed form."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from vidiff.parallel.network import unet_call_bytes
from vidiff.pipelines.image_to_video import ImageToVideoPipeline, bundled_model_path

sys.path.insert(0, str(Path(__file__).parent))
from cases import pipeline_frames
from launch import max_diff, run_workers

# guided (the scale ramp exceeds 1), so the UNet sees [uncond, cond] batches of 2; 7 frames split 4 + 3
SETTINGS = {"num_frames": 7, "num_inference_steps": 2, "height": 64, "width": 64, "min_guidance_scale": 1.0,
            "max_guidance_scale": 2.5, "seed": 0}
# The bound. Both modes are bit-exact on this CPU (one thread per rank): few-row products are computed a
# row at a time (vidiff.networks.layers.row_invariant_linear) and the temporal GroupNorms merge per-frame moments
# (vidiff.utils.norms); before those, the tiny random model moved by 2.0e-5 (cfg) and 2.9e-5 (frames).
TOLERANCE = 1e-5


def test_cfg_and_frame_parallel_pipelines_match_one_process(tmp_path: Path, tiny_vidiff: Path) -> None:
    models = {"tiny": str(tiny_vidiff), "bundled": str(bundled_model_path())}
    runs = [{"kind": "pipeline", "model": path, "mode": mode, "settings": SETTINGS}
            for path in models.values() for mode in ("cfg", "frames")]
    results = iter(run_workers(tmp_path, 2, runs))
    torch.set_num_threads(1)
    for name, path in models.items():
        reference = pipeline_frames(path, SETTINGS)
        config = ImageToVideoPipeline.from_pretrained(path).unet.config
        for mode in ("cfg", "frames"):
            result = next(results)
            diff = max_diff(result["outs"], reference)
            print(f"{name} --parallel {mode} on 2 ranks: max |Δ| on pixels = {diff:.3g}")
            assert diff <= TOLERANCE, f"{name} model, --parallel {mode}: max |Δ| on pixels = {diff:.3g}"
            assert len(result["shapes"]) == SETTINGS["num_inference_steps"]  # Euler: one UNet call per step
            for batch, frames, _, h, w in result["shapes"]:
                cfg = mode == "cfg"
                for rank, per_call in enumerate(result["sent"]):
                    expected = unet_call_bytes(config, batch=batch // 2 if cfg else batch, frames=frames, h=h, w=w,
                                               frame_ranks=1 if cfg else 2, rank=0 if cfg else rank,
                                               cfg_parallel=cfg)
                    assert set(per_call) == {expected}, f"{name} model, {mode}, rank {rank}"
