"""vidiff.autoencoders: SD's KL encoder, SVD's temporal decoder, chunked and tiled decoding; patch folding;
flow latents decoded by warping the first frame."""

from vidiff.autoencoders.flow_warp import FlowWarpAutoencoder, FlowWarpConfig
from vidiff.autoencoders.image_vae import AutoencoderKL, ImageDecoder, ImageVAEConfig
from vidiff.autoencoders.kl import DiagonalGaussian, Encoder
from vidiff.autoencoders.patch import PatchAutoencoder, PatchConfig, PatchPosterior
from vidiff.autoencoders.temporal import TemporalDecoder
from vidiff.autoencoders.vae import VAE_PRESETS, AutoencoderKLTemporal, VAEConfig
from vidiff.autoencoders.wan_vae import WAN_VAE_PRESETS, WanVAE, WanVAEConfig

__all__ = [
    "VAE_PRESETS",
    "WAN_VAE_PRESETS",
    "AutoencoderKL",
    "AutoencoderKLTemporal",
    "DiagonalGaussian",
    "Encoder",
    "FlowWarpAutoencoder",
    "FlowWarpConfig",
    "ImageDecoder",
    "ImageVAEConfig",
    "PatchAutoencoder",
    "PatchConfig",
    "PatchPosterior",
    "TemporalDecoder",
    "VAEConfig",
    "WanVAE",
    "WanVAEConfig",
]
