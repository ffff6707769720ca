"""The tiny components of diffusers' own SVD pipeline tests (``StableVideoDiffusionPipelineFastTests``).

diffusers builds them (same configs and seeds as its ``get_dummy_components``) and saves them with
``safe_serialization=False``, as its save/load tests do: the UNet and VAE weights are pickled ``.bin``
files. vidiff's pipeline reads that folder; diffusers' pipeline on the same in-memory components is the
oracle.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# diffusers' get_dummy_components, reproduced from its test suite (tests/pipelines/stable_video_diffusion)
FAST_UNET = dict(
    block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=8, out_channels=4,
    down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
    up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), cross_attention_dim=32,
    num_attention_heads=8, projection_class_embeddings_input_dim=96, addition_time_embed_dim=32,
)  # fmt: skip
FAST_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
    num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002, steps_offset=1,
    timestep_spacing="leading", timestep_type="continuous", trained_betas=None, use_karras_sigmas=True,
)  # fmt: skip
FAST_CLIP = dict(hidden_size=32, projection_dim=32, num_hidden_layers=5, num_attention_heads=4, image_size=32,
                 intermediate_size=37, patch_size=1)


def fast_components() -> dict:
    """diffusers' dummy SVD components: random weights from fixed seeds, 32x32 images."""
    import diffusers
    import transformers

    torch.manual_seed(0)
    unet = diffusers.UNetSpatioTemporalConditionModel(**FAST_UNET)
    scheduler = diffusers.EulerDiscreteScheduler(**FAST_SCHEDULER)
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLTemporalDecoder(
        block_out_channels=[32, 64], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"], latent_channels=4)
    torch.manual_seed(0)
    image_encoder = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**FAST_CLIP))
    feature_extractor = transformers.CLIPImageProcessor(crop_size=32, size=32)
    return {"unet": unet, "image_encoder": image_encoder, "scheduler": scheduler, "vae": vae,
            "feature_extractor": feature_extractor}


def _fast_inputs(seed: int = 0) -> dict:
    """diffusers' get_dummy_inputs: a float image tensor in [0, 1), 2 frames of 32x32, 2 steps."""
    image = torch.rand((1, 3, 32, 32), generator=torch.Generator().manual_seed(1000 + seed))
    return dict(image=image, generator=torch.Generator("cpu").manual_seed(seed), num_inference_steps=2,
                output_type="pt", min_guidance_scale=1.0, max_guidance_scale=2.5, num_frames=2, height=32,
                width=32)


@pytest.fixture(scope="session")
def fast_inputs():
    """``fast_inputs(seed=0) -> dict``: fresh call arguments (a new generator each time)."""
    return _fast_inputs


@pytest.fixture(scope="session")
def fast_diffusers():
    """diffusers' own SVD pipeline on the dummy components (the oracle)."""
    import diffusers

    pipe = diffusers.StableVideoDiffusionPipeline(**fast_components())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def fast_folder(fast_diffusers, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dummy pipeline saved by diffusers with ``safe_serialization=False`` (pickled .bin weights)."""
    path = tmp_path_factory.mktemp("svd_fast") / "pipe"
    fast_diffusers.save_pretrained(path, safe_serialization=False)
    return path
