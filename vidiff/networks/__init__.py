"""vidiff.networks: backbones ``F(x, c_noise, cond) -> F_x`` (see docs/architecture.md)."""

from vidiff.networks.dit_wan import WAN_PRESETS, WanConfig, WanTransformer3D
from vidiff.networks.sv4d import SV4DUNet
from vidiff.networks.sv4d_config import SV4D_PRESETS, SV4DConfig
from vidiff.networks.unet_config import UNET_PRESETS, UNetConfig
from vidiff.networks.unet_st import UNetSpatioTemporal, VideoCond, count_parameters

__all__ = ["SV4D_PRESETS", "UNET_PRESETS", "WAN_PRESETS", "SV4DConfig", "SV4DUNet", "UNetConfig",
           "UNetSpatioTemporal", "VideoCond", "WanConfig", "WanTransformer3D", "count_parameters"]
