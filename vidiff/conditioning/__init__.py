"""vidiff.conditioning: CLIP image token, concat latent and scalar embeddings, as a typed ``Cond``."""

from vidiff.conditioning.clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, CLIPImageEmbedder, resize_antialiased
from vidiff.conditioning.cond import Cond, SV4DCond
from vidiff.conditioning.conditioner import Conditioner, drop_conditions
from vidiff.conditioning.embedders import (
    SV3D_U_SCALARS,
    SVD_SCALARS,
    embed_scalars,
    noise_augment,
    scalar_values,
    sv3d_camera_vector,
    sv3d_default_orbit,
)
from vidiff.conditioning.text import TextCond, UMT5TextEncoder, clip_image_tokens

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "SV3D_U_SCALARS",
    "SVD_SCALARS",
    "CLIPImageEmbedder",
    "Cond",
    "Conditioner",
    "SV4DCond",
    "TextCond",
    "UMT5TextEncoder",
    "clip_image_tokens",
    "drop_conditions",
    "embed_scalars",
    "noise_augment",
    "resize_antialiased",
    "scalar_values",
    "sv3d_camera_vector",
    "sv3d_default_orbit",
]
