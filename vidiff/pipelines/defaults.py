"""Per-model defaults for image-to-video, as the reference implementations set them.

diffusers' ``StableVideoDiffusionPipeline`` uses one set of defaults for SVD and SVD-XT (25 steps,
guidance 1.0 -> 3.0, fps 7, motion bucket 127, noise augmentation 0.02, 576x1024, decode all frames
at once). Stability's sgm scripts differ (svd: guidance 1.0 -> 2.5; svd_xt: 1.5 -> 3.0 and 30 steps;
decoding 14 frames at a time; sv3d: 50 steps, triangle guidance max 2.5, 576x576, 21 frames). Their
script (``scripts/sampling/simple_video_sample.py``) also seeds with 23 and renders SVD at the input image's
own size, each side rounded down to a multiple of 64; ``behaviour="sgm"`` follows both.
"""

from __future__ import annotations

from dataclasses import dataclass

from vidiff.pipelines.settings import GenerationSettings


@dataclass(frozen=True)
class ModelFamily:
    """What a model type needs beyond its weights: sizes, conditioning inputs, guidance shape, sigmas."""

    name: str
    height: int
    width: int
    num_frames: int
    scalar_keys: tuple[str, ...]  # conditioning scalars embedded into the UNet's vector input
    guidance_ramp: str  # "linear" over frames (SVD) or "triangle" (SV3D)
    sigma_min: float = 0.002
    sigma_max: float = 700.0
    rho: float = 7.0


FAMILIES: dict[str, ModelFamily] = {
    "svd": ModelFamily("svd", 576, 1024, 14, ("fps", "motion_bucket_id", "noise_aug_strength"), "linear"),
    "svd_xt": ModelFamily("svd_xt", 576, 1024, 25, ("fps", "motion_bucket_id", "noise_aug_strength"), "linear"),
    "sv3d_u": ModelFamily("sv3d_u", 576, 576, 21, ("noise_aug_strength",), "triangle"),
    # SV3D_p's vector adds per-frame camera sinusoids to cond_aug's (vidiff.pipelines.sv3d builds it)
    "sv3d_p": ModelFamily("sv3d_p", 576, 576, 21, ("noise_aug_strength",), "triangle"),
}

_DIFFUSERS = GenerationSettings(
    num_inference_steps=25, min_guidance_scale=1.0, max_guidance_scale=3.0, fps=7, motion_bucket_id=127,
    noise_aug_strength=0.02, decode_chunk_size=None, decode_overlap=0, sampler="euler", seed=0,
    behaviour="diffusers",
)

_SGM: dict[str, GenerationSettings] = {
    "svd": GenerationSettings(min_guidance_scale=1.0, max_guidance_scale=2.5, decode_chunk_size=14),
    "svd_xt": GenerationSettings(num_inference_steps=30, min_guidance_scale=1.5, max_guidance_scale=3.0,
                                 decode_chunk_size=14),
    "sv3d_u": GenerationSettings(num_inference_steps=50, min_guidance_scale=1.0, max_guidance_scale=2.5,
                                 noise_aug_strength=1e-5, decode_chunk_size=14),
}
_SGM["sv3d_p"] = _SGM["sv3d_u"]  # simple_video_sample.py: the same steps, cond_aug, guider and decoding_t


SGM_SEED = 23  # simple_video_sample.py: ``sample(..., seed: int = 23)``
SGM_SIZE_MULTIPLE = 64  # simple_video_sample.py: ``width, height = map(lambda x: x - x % 64, (w, h))``


def sgm_image_size(family: ModelFamily, image_size: tuple[int, int]) -> GenerationSettings:
    """The size Stability's script renders an image of ``image_size`` (width, height) at: its own size with
    each side rounded down to a multiple of 64 (SV3D: always the family's 576x576)."""
    if family.name.startswith("sv3d"):
        return GenerationSettings(height=family.height, width=family.width)
    w, h = (side - side % SGM_SIZE_MULTIPLE for side in image_size)
    if not (w and h):
        raise ValueError(f"behaviour='sgm' renders at the image's own size rounded down to a multiple of "
                         f"{SGM_SIZE_MULTIPLE} (as Stability's script), but the image is only {image_size[0]}x"
                         f"{image_size[1]}: pass height and width")
    return GenerationSettings(height=h, width=w)


def default_settings(family: ModelFamily, behaviour: str = "diffusers", *, height: int | None = None,
                     width: int | None = None, num_frames: int | None = None) -> GenerationSettings:
    """The reference defaults for ``family``; ``height``/``width``/``num_frames`` override the family's."""
    base = _DIFFUSERS.merged(GenerationSettings(
        height=height or family.height, width=width or family.width, num_frames=num_frames or family.num_frames))
    if family.name.startswith("sv3d"):
        base = base.merged(_SGM[family.name])  # sv3d has no diffusers pipeline: sgm's values are the reference
    if behaviour == "sgm":
        sgm = GenerationSettings(behaviour="sgm", seed=SGM_SEED)
        base = base.merged(_SGM.get(family.name, GenerationSettings())).merged(sgm)
    return base
