"""Wan's causal 3D VAE decode split by blocks of latent frames (``vidiff.parallel.decode``; gloo, real
processes): every rank ends with the pixels one process decodes a latent frame at a time (≤ 1e-5), for Wan
2.1's and Wan 2.2's VAEs and uneven splits, and each rank sends exactly one two-frame tail per causal
convolution to the next rank plus its share of the pixel gather — counted from the one-process decode's own
layer shapes here, not from the code under test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from vidiff.autoencoders.wan_vae_blocks import CausalConv3d
from vidiff.parallel.comm import split_sizes

sys.path.insert(0, str(Path(__file__).parent))
from cases import wan_decode_case
from launch import max_diff, run_workers

TOLERANCE = 1e-5


def _halo_bytes(preset: str, frames: int) -> tuple[int, int]:
    """``(Σ 2·C·H·W·4 over the decoder's causal convolutions, pixels per output frame·4)`` from a one-process
    decode's layer inputs (one latent frame per chunk: each convolution's channels and size, once)."""
    from vidiff.autoencoders.wan_vae import WAN_VAE_PRESETS, WanVAE

    vae = WanVAE(WAN_VAE_PRESETS[preset]).eval()
    seen: dict[int, int] = {}

    def note(module: torch.nn.Module, args: tuple) -> None:
        seen.setdefault(id(module), args[0][0, :, 0].numel())  # C·H·W of one input frame

    hooks = [m.register_forward_pre_hook(note) for m in vae.decoder.modules()
             if isinstance(m, CausalConv3d) and m.causal_pad]
    with torch.no_grad():
        out = vae.decode_latents(torch.zeros(1, frames, vae.config.z_dim, 6, 5))
    for h in hooks:
        h.remove()
    assert len(seen) == len(hooks)  # every causal convolution ran
    return sum(2 * n * 4 for n in seen.values()), out[0, 0].numel() * 4


@pytest.mark.parametrize(("nproc", "frames"), [(2, 5), (3, 7)], ids=["2ranks-5latents", "3ranks-7latents"])
def test_wan_vae_decode_split_matches_one_process(tmp_path: Path, nproc: int, frames: int) -> None:
    presets = ("tiny-2.1", "tiny-2.2")
    results = run_workers(tmp_path, nproc, [{"kind": "wan_decode", "mode": "frames", "preset": p, "frames": frames}
                                           for p in presets])
    torch.set_num_threads(1)
    for preset, result in zip(presets, results):
        reference, _ = wan_decode_case(preset, frames)
        diff = max_diff(result["outs"], reference)
        print(f"Wan VAE {preset}, {frames} latent frames on {nproc} ranks: max |Δ| = {diff:.3g}")
        assert diff <= TOLERANCE, f"{preset} on {nproc} ranks: max |Δ| = {diff:.3g}"
        halo, frame_bytes = _halo_bytes(preset, frames)
        first = 1 + 4 * (split_sizes(frames, nproc)[0] - 1)  # rank 0's output frames: the largest shard
        for rank, sent in enumerate(result["sent"]):
            gather = (nproc - 1) * first * frame_bytes
            assert sent == gather + (halo if rank < nproc - 1 else 0), f"{preset}, rank {rank}"


def test_too_few_latent_frames_decode_whole_on_every_rank(tmp_path: Path) -> None:
    (result,) = run_workers(tmp_path, 2, [{"kind": "wan_decode", "mode": "frames", "preset": "tiny-2.1", "frames": 3}])
    torch.set_num_threads(1)
    assert max_diff(result["outs"], wan_decode_case("tiny-2.1", 3)[0]) == 0 and result["sent"] == [0, 0]
