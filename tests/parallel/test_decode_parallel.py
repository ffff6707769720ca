"""The VAE decode split by frames (gloo, real processes): SVD's temporal VAE — whole clip, chunks with a tail
shorter than the ranks, context overlap, spatial tiles — and per-frame autoencoders decode the pixels of one
process on every rank, with the bytes of each call as the closed form; and the image-to-video pipeline with
the UNet and the decode split over 3 ranks gives the frames of one process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from vidiff.parallel.decode import decoder_call_bytes, decoder_resnets, gather_bytes
from vidiff.pipelines.image_to_video import ImageToVideoPipeline, bundled_model_path

sys.path.insert(0, str(Path(__file__).parent))
from decode_cases import FLOW, TINY_VAE, decode_frames, decode_pipeline
from launch import max_diff, run_workers

FRAMES = 7  # uneven on 2 (4 + 3) and 3 (3 + 2 + 2) ranks
# (autoencoder, settings): the whole clip at once (diffusers' default when decode_chunk_size covers it); chunks
# of 3 (3, 3, 1: the 1-frame tail runs whole on every rank); chunks of 4 with one frame of context each side;
# 2 x 2 tiles of 6 latents; then the per-frame autoencoders (split once per decode), the flow-warp one also
# drawing a clip toward an end image (decode_between: a long video's --end-image)
DECODES = [("temporal", {}), ("temporal", {"chunk_size": 3}), ("temporal", {"chunk_size": 4, "overlap": 1}),
           ("temporal", {"tile": 6}), ("image", {"chunk_size": 2}), ("flow", {}), ("flow", {"between": True})]
# The bound, for the decode alone and for whole pipelines (both bit-exact here since the temporal
# GroupNorms merge per-frame moments, vidiff.utils.norms; the tiny pipeline moved by 3.0e-5 before).
TOLERANCE = 1e-5


def _expected_bytes(vae: str, shape: tuple[int, ...], ranks: int, rank: int) -> int:
    batch, frames, h, w = shape
    if vae == "temporal":
        return decoder_call_bytes(TINY_VAE, batch=batch, frames=frames, h=h, w=w, ranks=ranks, rank=rank)
    scale = TINY_VAE.downsample_factor if vae == "image" else FLOW.patch_size
    return gather_bytes(batch=batch, frames=frames, channels=3, pixels=h * w * scale ** 2, ranks=ranks)


def test_closed_form_counts_the_decoder_layers() -> None:
    # tiny VAE (32, 64), 1 layer: mid 1 resnet at 8x8; up block 0 (64 ch) 2 at 8x8, up block 1 (32 ch) 2 at 16x16
    assert decoder_resnets(TINY_VAE, 8, 8) == [(64, 64)] * 3 + [(32, 256)] * 2
    assert decoder_call_bytes(TINY_VAE, batch=1, frames=2, h=8, w=8, ranks=3, rank=0) == 0  # too few: whole
    middle = decoder_call_bytes(TINY_VAE, batch=1, frames=7, h=8, w=8, ranks=3, rank=1)
    end = decoder_call_bytes(TINY_VAE, batch=1, frames=7, h=8, w=8, ranks=3, rank=0)
    halo_bytes = (2 * (3 * 64 * 64 + 2 * 32 * 256) + 3 * 256) * 4  # both convs of 5 resnets, time_conv_out
    assert middle - end == halo_bytes  # a middle rank sends one more frame of halos per temporal conv


# (world size, mode): uneven 4 + 3, 3 + 2 + 2 and, under cfg,frames, 2 + 2 + 2 + 1: the decode follows guidance,
# so all 4 ranks share it (not each guidance branch's 2 frame ranks, which would decode the same frames twice)
SETUPS = [(2, "frames"), (3, "frames"), (4, "cfg,frames")]


@pytest.mark.parametrize(("nproc", "mode"), SETUPS, ids=[f"{m}-{n}ranks" for n, m in SETUPS])
def test_decode_split_by_frames_matches_one_process(tmp_path: Path, nproc: int, mode: str) -> None:
    runs = [{"kind": "decode", "mode": mode, "case": {"vae": vae, "frames": FRAMES}, "settings": settings}
            for vae, settings in DECODES]
    ranks = nproc
    torch.set_num_threads(1)
    for (vae, settings), result in zip(DECODES, run_workers(tmp_path, nproc, runs)):
        reference = decode_frames({"vae": vae, "frames": FRAMES}, settings)
        diff = max_diff(result["outs"], reference)
        print(f"{vae} {settings} on {nproc} ranks ({mode}): max |Δ| = {diff:.3g}")
        assert diff <= TOLERANCE, f"{vae} {settings} on {nproc} ranks ({mode}): max |Δ| = {diff:.3g}"
        for rank, per_call in enumerate(result["sent"]):
            expected = [_expected_bytes(vae, shape, ranks, rank % ranks) for shape in result["shapes"]]
            assert per_call == expected, f"{vae} {settings}, rank {rank}"
        if vae == "temporal" and settings.get("chunk_size") == 3:  # 3, 3, 1 per video: the tail is not split
            assert [s[1] for s in result["shapes"]] == [3, 3, 1] * 2 and result["sent"][0][2] == 0


def test_pipeline_with_the_decode_split_over_3_ranks_matches_one_process(tmp_path: Path,
                                                                         tiny_vidiff: Path) -> None:
    # unguided: 7 frames split 3 + 2 + 2 in each UNet call and in the one decoder call (the tiny model decodes
    # the whole clip at once)
    settings = {"num_frames": FRAMES, "num_inference_steps": 2, "height": 64, "width": 64,
                "min_guidance_scale": 1.0, "max_guidance_scale": 1.0, "seed": 0}
    model, bundled = str(tiny_vidiff), str(bundled_model_path())
    result, bundled_result = run_workers(tmp_path, 3, [{"kind": "decode_pipeline", "model": path, "mode": "frames",
                                                        "settings": settings} for path in (model, bundled)])
    torch.set_num_threads(1)
    bundled_diff = max_diff([out[0] for out in bundled_result["outs"]], decode_pipeline(bundled, settings)[0])
    print(f"bundled model, 3 ranks: whole pipeline max |Δ| = {bundled_diff:.3g}")
    assert bundled_diff <= TOLERANCE, f"bundled model on 3 ranks: max |Δ| on pixels = {bundled_diff:.3g}"
    frames, latents = decode_pipeline(model, settings)
    pipe = ImageToVideoPipeline.from_pretrained(model)
    with torch.no_grad():  # the parallel run's own latents decoded by one process: the decode split alone
        decoded = (pipe.vae.decode_latents(result["outs"][0][1]) / 2 + 0.5).clamp(0, 1)
    decode_diff = max_diff([out[0] for out in result["outs"]], decoded)
    diff = max_diff([out[0] for out in result["outs"]], frames)
    latent_diff = max_diff([out[1] for out in result["outs"]], latents)
    print(f"tiny model, 3 ranks: decode split max |Δ| = {decode_diff:.3g}; whole pipeline max |Δ| = {diff:.3g} "
          f"(latents {latent_diff:.3g})")
    assert decode_diff <= TOLERANCE, f"the decode split moved the pixels by {decode_diff:.3g}"
    assert diff <= TOLERANCE, f"max |Δ| on pixels = {diff:.3g}"
    vae, f = pipe.vae.config, pipe.vae.config.downsample_factor
    for rank, (sent,) in enumerate(result["sent"]):  # the decode really was split: its closed-form bytes
        assert sent == decoder_call_bytes(vae, batch=1, frames=FRAMES, h=64 // f, w=64 // f, ranks=3, rank=rank)


def test_under_cfg_the_two_guidance_ranks_share_the_decode(tmp_path: Path, tiny_vidiff: Path) -> None:
    # guided, 2 ranks holding one guidance half each: once guidance is combined both hold the same latents, so
    # the decode splits over both (7 frames: 4 + 3) instead of rank 0 decoding alone
    settings = {"num_frames": FRAMES, "num_inference_steps": 2, "height": 64, "width": 64,
                "min_guidance_scale": 1.0, "max_guidance_scale": 2.5, "seed": 0}
    (result,) = run_workers(tmp_path, 2, [{"kind": "decode_pipeline", "model": str(tiny_vidiff), "mode": "cfg",
                                           "settings": settings}])
    torch.set_num_threads(1)
    frames, _ = decode_pipeline(str(tiny_vidiff), settings)
    diff = max_diff([out[0] for out in result["outs"]], frames)
    print(f"tiny model, cfg on 2 ranks with the decode split: max |Δ| = {diff:.3g}")
    assert diff <= TOLERANCE, f"max |Δ| on pixels = {diff:.3g}"
    vae = ImageToVideoPipeline.from_pretrained(str(tiny_vidiff)).vae.config
    f = vae.downsample_factor
    for rank, (sent,) in enumerate(result["sent"]):  # each rank sent its halves of the split decode
        assert sent == decoder_call_bytes(vae, batch=1, frames=FRAMES, h=64 // f, w=64 // f, ranks=2, rank=rank) > 0
