"""The memory planner for a video DiT (``vidiff.networks.dit_video``): its denoise-stage prediction bounds the
peak measured on the CPU as ``benchmarks/memory_controls.py`` measures it (growth of the fresh process's
``VmHWM`` over its resident set once the model and inputs exist; the median of three processes, glibc's mmap
threshold fixed), within 2x; attention chunking is not predicted to save anything (the DiT attends over the
whole sequence), so the planner never picks it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vidiff.networks.dit_video import VideoDiTConfig
from vidiff.pipelines.memory import (
    MemoryPlan,
    ModelFootprint,
    RunShape,
    network_shape,
    plan_for_budget,
    stage_activations,
)

REPO = Path(__file__).resolve().parents[2]
CONFIG = {"in_channels": 8, "out_channels": 4, "num_frames": 8, "addition_time_embed_dim": 16, "num_layers": 2,
          "num_attention_heads": 6, "attention_head_dim": 32, "ffn_dim": 768, "freq_dim": 32}
SHAPES = [(8, 256, 256), (4, 384, 256)]  # frames, height, width in pixels (8x latent): 2048 and 1536 tokens

CHILD = r"""
import json, re, sys
from pathlib import Path
import torch
from vidiff.conditioning import Cond
from vidiff.networks.dit_video import VideoDiT, VideoDiTConfig

def resident():
    text = Path("/proc/self/status").read_text()
    return [int(re.search(rf"{k}:\s+(\d+)", text).group(1)) * 1024 for k in ("VmHWM", "VmRSS")]

cfg, (t, h, w) = VideoDiTConfig(**json.loads(sys.argv[1])), json.loads(sys.argv[2])
torch.manual_seed(0)
net = VideoDiT(cfg).eval()
x = torch.randn(1, t, 4, h // 8, w // 8)
cond = Cond(crossattn=torch.zeros(1, 1, 16), vector=torch.randn(1, 48), concat=torch.randn(1, 4, h // 8, w // 8))
with torch.no_grad():
    net(x[:, :1, :, :2, :2], torch.ones(1), Cond(crossattn=cond.crossattn, vector=cond.vector,
        concat=cond.concat[..., :2, :2]))  # first-call workspaces, as the pipeline's warm process has
    Path("/proc/self/clear_refs").write_text("5")
    before = resident()[1]
    out = net(x, torch.full((1,), 500.0), cond)
    peak = resident()[0]
print(json.dumps({"peak": peak - before}))
"""


def _footprint() -> ModelFootprint:
    cfg = VideoDiTConfig(**CONFIG)
    return ModelFootprint(unet_params=0, vae_decoder_params=0, vae_encoder_params=0, clip_params=0,
                          vae_channels=(3,), latent_channels=cfg.out_channels, unet_in_channels=cfg.in_channels,
                          **network_shape(cfg))


def _run(frames: int, height: int, width: int) -> RunShape:
    return RunShape(batch=1, num_frames=frames, height=height, width=width, guidance=False, bytes_per_element=4,
                    device_type="cpu")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's VmHWM reset")
@pytest.mark.parametrize("shape", SHAPES)
def test_dit_prediction_bounds_the_measured_peak_within_2x(shape: tuple[int, int, int]) -> None:
    peaks = []
    # glibc's mmap threshold fixed at its initial 128 KiB: left adaptive, it rose with what the process had freed
    # before (imports, compiling .pyc files), and a heap of freed blocks then measured 21 MB in one fresh clone
    # and 27 MB in another for shape 1; fixed, every tensor is mapped for its lifetime and the peak is that of
    # the live tensors the planner counts (measured 15.7-21.4 MB across three environments, each steady)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}
    for _ in range(3):  # and the median of three fresh processes
        proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(CONFIG), json.dumps(list(shape))],
                              capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        peaks.append(json.loads(proc.stdout.strip().splitlines()[-1])["peak"])
    measured = sorted(peaks)[1]
    predicted = stage_activations(_footprint(), _run(*shape), MemoryPlan())["denoise"]
    assert measured > 0
    assert predicted >= measured, (predicted, measured)
    assert predicted <= 2 * measured, (predicted, measured)


def test_attention_chunking_is_not_a_dit_control() -> None:
    fp, run = _footprint(), _run(8, 256, 256)
    base = stage_activations(fp, run, MemoryPlan())["denoise"]
    assert stage_activations(fp, run, MemoryPlan(attention_chunk=1))["denoise"] == base
    plan, _ = plan_for_budget(fp, run, "64GiB")
    assert plan.attention_chunk is None
