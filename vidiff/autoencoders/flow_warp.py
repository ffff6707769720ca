"""A parameter-free "flow autoencoder": a video is its first frame warped by one flow field per frame.

Latent flow diffusion (Ni et al. 2023, "Conditional Image-to-Video Generation with Latent Flow Diffusion
Models"): instead of pixels, the diffusion model generates the motion, and the frames are the
conditioning image warped by it. Here the representation is exact and needs no training:

* the latent of frame ``t`` is its backward flow to the reference frame, ``frame_t(q) ≈ ref(q + f_t(q))``
  (the convention of :func:`vidiff.utils.warp`), average-pooled over ``p × p`` cells and expressed in units
  of the frame width (``z = f / W · flow_scale``), so latents do not depend on the resolution;
* decoding upsamples the flow bilinearly and warps the reference image with it (Jaderberg et al. 2015,
  bilinear sampling), so every frame is made of the input's own pixels: frame 0 (zero flow) *is* the input;
* the conditioning image is encoded for the UNet's concat input as its ``p × p`` patches folded into
  channels (:class:`~vidiff.autoencoders.PatchAutoencoder`), so the UNet sees every pixel at ``1/p`` of
  the resolution.

Flows are *estimated* from real videos (``vidiff.metrics.flow``) or known exactly for synthetic camera
moves; that happens where the data is prepared (``vidiff.training``), not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from vidiff.autoencoders.patch import PatchAutoencoder, PatchConfig
from vidiff.utils import warp

__all__ = ["FlowWarpAutoencoder", "FlowWarpConfig"]

CLASS_NAME = "FlowWarpAutoencoder"
FLOW_CHANNELS = 2  # (dx, dy)
PADDING_MODES = ("reflection", "border", "zeros")


@dataclass(frozen=True)
class FlowWarpConfig(PatchConfig):
    """``patch_size`` p (latent grid = frame / p), pixel ``in_channels``, ``flow_scale`` (latent units per
    frame width of displacement) and the warp's ``padding_mode`` for points that leave the frame."""

    patch_size: int = 8
    flow_scale: float = 16.0
    padding_mode: str = "reflection"
    class_name: ClassVar[str] = CLASS_NAME

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.flow_scale > 0:
            raise ValueError(f"FlowWarpConfig.flow_scale must be positive, got {self.flow_scale!r}")
        if self.padding_mode not in PADDING_MODES:
            raise ValueError(f"FlowWarpConfig.padding_mode must be one of {PADDING_MODES}, "
                             f"got {self.padding_mode!r}")

    @property
    def latent_channels(self) -> int:
        return FLOW_CHANNELS

    @property
    def condition_channels(self) -> int:
        """Channels of the encoded conditioning image (the UNet's concat input): the folded patches."""
        return self.in_channels * self.patch_size ** 2



class FlowWarpAutoencoder(PatchAutoencoder):
    """Flow latents in, warped reference frames out; ``encode`` folds the conditioning image into patches.

    ``reference_conditioned``: decoding needs the reference image (pipelines pass the conditioning image).
    ``zero_first_latent``: the first frame's latent is zero by definition (it is the reference, its own
    flow is zero), so samplers may use that value exactly (``vidiff.diffusion.KnownValuesDenoiser``).
    """

    reference_conditioned = True
    zero_first_latent = True

    def __init__(self, config: FlowWarpConfig | None = None) -> None:
        super().__init__(config or FlowWarpConfig())

    def encode_flow(self, flow: torch.Tensor) -> torch.Tensor:
        """Backward flows ``(N, 2, H, W)`` in pixels -> latents ``(N, 2, H/p, W/p)`` (cell means, width units)."""
        p = self.config.patch_size
        if flow.ndim != 4 or flow.shape[1] != FLOW_CHANNELS or flow.shape[-2] % p or flow.shape[-1] % p:
            raise ValueError(f"flow must be (N, 2, H, W) with H, W multiples of {p}, got {tuple(flow.shape)}")
        return F.avg_pool2d(flow, p) * (self.config.flow_scale / flow.shape[-1])

    def decode_flow(self, z: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Latents ``(N, 2, h, w)`` -> flows ``(N, 2, H, W)`` in pixels at ``size = (H, W)`` (bilinear)."""
        h, w = size
        # cell means sit at cell centres: align_corners=False interpolation puts them there
        flow = F.interpolate(z.float(), size=(h, w), mode="bilinear", align_corners=False)
        return flow * (w / self.config.flow_scale)

    def decode(self, z: torch.Tensor, chunk_size: int | None = None, overlap: int = 0, *, tiled: bool = False,
               progress: bool = False, reference: torch.Tensor | None = None) -> torch.Tensor:
        """Flow latents ``(B, T, 2, h, w)`` -> ``(B, T, C, h·p, w·p)``: ``reference (B, C, H, W)`` warped by
        each frame's flow (chunking and tiling are moot: each frame is one ``grid_sample``)."""
        if reference is None:
            raise ValueError("FlowWarpAutoencoder.decode needs the reference image (reference=...)")
        if z.ndim != 5 or z.shape[2] != FLOW_CHANNELS:
            raise ValueError(f"z must be (B, T, 2, h, w), got {tuple(z.shape)}")
        b, t, _, h, w = z.shape
        p = self.config.patch_size
        if reference.ndim != 4 or reference.shape[0] != b or tuple(reference.shape[-2:]) != (h * p, w * p):
            raise ValueError(f"reference must be ({b}, C, {h * p}, {w * p}) for latents {tuple(z.shape)}, "
                             f"got {tuple(reference.shape)}")
        flow = self.decode_flow(z.flatten(0, 1), (h * p, w * p))  # (B·T, 2, H, W)
        ref = reference.float().repeat_interleave(t, dim=0)
        frames = warp(ref, flow, padding_mode=self.config.padding_mode)
        return frames.unflatten(0, (b, t))

    def decode_between(self, z: torch.Tensor, reference: torch.Tensor, end_reference: torch.Tensor,
                       end_z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Flow latents ``(B, T, 2, h, w)`` of a clip that ends on a given image -> frames drawn from both ends.

        The end image is the start image warped by the end latent's flow ``f_end``, so frame ``t`` is also
        the end image warped by ``f_t − f_end`` (the flows are linear in the latents; exact for pans and where
        ``f_end`` is smooth). Each frame blends the two warps with ``weights (T,)`` toward the end (``w_t``, as
        TRF weighs the two directions) and counts a reference only where its sample point lies inside it: the
        strip a camera move reveals comes from the image that shows it. ``w = 0`` on an unmoved frame gives
        the start image, ``w = 1`` on ``z_t = end_z`` the end image (both up to the sample grid's rounding).
        """
        b, t, _, h, w = z.shape
        size = (h * self.config.patch_size, w * self.config.patch_size)
        frames, inside = [], []
        for ref, lat in ((reference, z), (end_reference, z - end_z.reshape(b, 1, *z.shape[2:]))):
            flow = self.decode_flow(lat.flatten(0, 1), size)  # (B·T, 2, H, W)
            frames.append(warp(ref.float().repeat_interleave(t, dim=0), flow, padding_mode=self.config.padding_mode))
            inside.append(_inside(flow))
        wt = weights.to(z.device, torch.float32).view(1, t).expand(b, t).reshape(-1, 1, 1, 1)
        a, e = (1 - wt) * inside[0], wt * inside[1]
        neither = (a + e) == 0  # both sample points outside: the plain blend
        a, e = torch.where(neither, 1 - wt, a), torch.where(neither, wt, e)
        return ((a * frames[0] + e * frames[1]) / (a + e)).unflatten(0, (b, t))

    def decode_latents_between(self, z: torch.Tensor, reference: torch.Tensor, end_reference: torch.Tensor,
                               end_z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """:meth:`decode_between` for latents produced by diffusion (both divided by the scaling factor)."""
        return self.decode_between(z / self.scaling_factor, reference, end_reference, end_z / self.scaling_factor,
                                   weights)

    def decode_latents(self, z: torch.Tensor, chunk_size: int | None = None, overlap: int = 0, *,
                       tiled: bool = False, progress: bool = False,
                       reference: torch.Tensor | None = None) -> torch.Tensor:
        """``decode(z / scaling_factor, reference=...)`` for latents produced by diffusion."""
        return self.decode(z / self.scaling_factor, chunk_size, overlap, tiled=tiled, progress=progress,
                           reference=reference)


def _inside(flow: torch.Tensor) -> torch.Tensor:
    """``(N, 1, H, W)``: 1 where the backward warp by ``flow (N, 2, H, W)`` samples inside the image, else 0."""
    h, w = flow.shape[-2:]
    x = torch.arange(w, device=flow.device, dtype=flow.dtype) + flow[:, 0]
    y = torch.arange(h, device=flow.device, dtype=flow.dtype).view(h, 1) + flow[:, 1]
    return ((x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)).unsqueeze(1).to(flow.dtype)
