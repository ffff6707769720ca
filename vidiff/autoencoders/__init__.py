"""vidiff.autoencoders: SD's KL encoder, SVD's temporal decoder, chunked and tiled decoding."""

from vidiff.autoencoders.kl import DiagonalGaussian, Encoder
from vidiff.autoencoders.temporal import TemporalDecoder
from vidiff.autoencoders.vae import VAE_PRESETS, AutoencoderKLTemporal, VAEConfig

__all__ = ["VAE_PRESETS", "AutoencoderKLTemporal", "DiagonalGaussian", "Encoder", "TemporalDecoder", "VAEConfig"]
