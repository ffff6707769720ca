"""vidiff.networks: backbones ``F(x, c_noise, cond) -> F_x`` (see docs/architecture.md)."""

from vidiff.networks.unet_config import UNET_PRESETS, UNetConfig
from vidiff.networks.unet_st import UNetSpatioTemporal, VideoCond, count_parameters

__all__ = ["UNET_PRESETS", "UNetConfig", "UNetSpatioTemporal", "VideoCond", "count_parameters"]
