"""The models and inputs the parallel-inference tests run, the same in the test process and in every rank."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from vidiff.conditioning import Cond
from vidiff.conditioning.text import TextCond
from vidiff.networks.dit_video import VideoDiT, VideoDiTConfig
from vidiff.networks.dit_wan import WAN_PRESETS, WanTransformer3D
from vidiff.networks.unet_st import UNetConfig, UNetSpatioTemporal

TINY = UNetConfig(in_channels=8, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                  num_attention_heads=(2, 4), cross_attention_dim=32, addition_time_embed_dim=8,
                  projection_class_embeddings_input_dim=24, num_frames=5)


def tiny_unet_case(frames: int, batch: int = 2, size: int = 8, per_frame: bool = True,
                   seed: int = 0) -> tuple[UNetSpatioTemporal, list[tuple[Any, ...]]]:
    """A tiny SVD-layout UNet with random, non-trivial weights and two calls' inputs: per-frame ``c_noise``,
    per-frame vector and an image-only ramp when ``per_frame`` (the second call plain ``(B,)`` levels)."""
    torch.manual_seed(seed)
    unet = UNetSpatioTemporal(TINY).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    g = torch.Generator().manual_seed(seed + 1)
    calls = []
    for i in range(2):
        x = torch.randn(batch, frames, 4, size, size, generator=g)
        concat = torch.randn(batch, 4, size, size, generator=g)
        context = torch.randn(batch, 1, 32, generator=g)
        if per_frame and i == 0:
            c_noise = torch.randn(batch, frames, generator=g)
            vector = torch.randn(batch, frames, 24, generator=g)
            indicator = torch.zeros(batch, frames)
            indicator[:, : frames // 3] = 1  # the first frames are images (joint image/video ramp)
        else:
            c_noise, vector, indicator = torch.randn(batch, generator=g), torch.randn(batch, 24, generator=g), None
        calls.append((x, c_noise, Cond(crossattn=context, vector=vector, concat=concat), indicator))
    return unet, calls

# Wan 2.1 I2V layout (text and CLIP-image cross-attention, concat channels) with 6 heads: 2 and 3 ranks divide
TINY_DIT = WAN_PRESETS["tiny-i2v"].replace(num_attention_heads=6, attention_head_dim=8, added_kv_proj_dim=48)
TINY_VIDEO_DIT = VideoDiTConfig(in_channels=8, out_channels=4, addition_time_embed_dim=8, num_attention_heads=2,
                                attention_head_dim=12, ffn_dim=32, num_layers=2, freq_dim=16)


def _perturb(network: torch.nn.Module) -> torch.nn.Module:
    """Random, non-trivial weights (VideoDiT's output projection starts at zero)."""
    with torch.no_grad():
        for p in network.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return network.eval()


def tiny_dit_case(frames: int, batch: int = 2, size: int = 4, video_dit: bool = False,
                  seed: int = 0) -> tuple[torch.nn.Module, list[tuple[Any, ...]]]:
    """A tiny Wan DiT (``TINY_DIT``; ``TINY_VIDEO_DIT`` in a ``VideoDiT`` when ``video_dit``) with random
    weights and two calls' inputs: per-frame ``c_noise`` and concat first, then ``(B,)`` and one concat per
    video. The fourth entry of each call (the UNet's indicator) is None."""
    torch.manual_seed(seed)
    network = _perturb(VideoDiT(TINY_VIDEO_DIT) if video_dit else WanTransformer3D(TINY_DIT))
    g = torch.Generator().manual_seed(seed + 1)
    calls = []
    for i in range(2):
        x = torch.randn(batch, frames, 4, size, size, generator=g)
        concat_shape = (batch, frames, 4 if video_dit else 8, size, size)
        concat = torch.randn(*concat_shape if i == 0 else concat_shape[:1] + concat_shape[2:], generator=g)
        c_noise = 1000 * torch.rand(batch, frames, generator=g) if i == 0 else 1000 * torch.rand(batch, generator=g)
        if video_dit:
            cond = Cond(crossattn=torch.randn(batch, 3, 8, generator=g), vector=torch.randn(batch, 24, generator=g),
                        concat=concat)
        else:
            cond = TextCond(crossattn=torch.randn(batch, 5, 16, generator=g), concat=concat,
                            image=torch.randn(batch, 3, 8, generator=g))
        calls.append((x, c_noise, cond, None))
    return network, calls


def instrument(network: torch.nn.Module, layout: Any, sent: list[int] | None,
               shapes: list[tuple[int, ...]] | None) -> Any:
    """``parallelize(network, layout)``, recording per call the bytes sent (``sent``) and the whole input's shape
    (``shapes``); returns the handle."""
    from vidiff.parallel import parallelize

    def before(module: Any, args: tuple) -> None:  # runs before the split: sees the whole call
        layout.reset_counts()
        if shapes is not None:
            shapes.append(tuple(args[0].shape))

    network.register_forward_pre_hook(before)
    handle = parallelize(network, layout)
    if sent is not None:
        network.register_forward_hook(lambda *_: sent.append(layout.sent))
    return handle


# a guided (CFG) text-to-video run of 9 frames: 3 latent frames of 4 x 4, split 2 + 1 on 2 ranks
WAN_SETTINGS = {"height": 16, "width": 16, "num_frames": 9, "num_inference_steps": 2, "guidance_scale": 4.0}


def wan_pipeline_frames(*, layout: Any = None, sent: list[int] | None = None,
                        shapes: list[tuple[int, ...]] | None = None) -> torch.Tensor:
    """Frames ``(1, T, 3, H, W)`` of a tiny random Wan text-to-video pipeline on fixed text embeddings
    (``WAN_SETTINGS``), parallel over ``layout`` when given (as :func:`pipeline_frames`)."""
    from vidiff.autoencoders.wan_vae import WAN_VAE_PRESETS, WanVAE
    from vidiff.pipelines.text_to_video import TextToVideoPipeline

    torch.manual_seed(0)
    transformer = _perturb(WanTransformer3D(WAN_PRESETS["tiny-t2v"]))
    pipe = TextToVideoPipeline(transformer, WanVAE(WAN_VAE_PRESETS["tiny-2.1"]).eval())
    g = torch.Generator().manual_seed(1)
    text, negative = torch.randn(2, 1, 6, 16, generator=g)
    handle = None if layout is None else instrument(transformer, layout, sent, shapes)
    out = pipe(prompt_embeds=text, negative_prompt_embeds=negative, output_type="pt",
               generator=torch.Generator().manual_seed(2), **WAN_SETTINGS).frames
    if handle is not None:
        handle.remove()
    return out


def pipeline_frames(model: str, settings: dict[str, Any], *, layout: Any = None, sent: list[int] | None = None,
                    shapes: list[tuple[int, ...]] | None = None) -> torch.Tensor:
    """Frames ``(1, T, 3, H, W)`` in [0, 1] of an image-to-video model on a fixed image (parallel over
    ``layout`` when given: the bytes each network call sent are appended to ``sent``, its input's shape to
    ``shapes``)."""
    from vidiff.pipelines.image_to_video import ImageToVideoPipeline

    pipe = ImageToVideoPipeline.from_pretrained(model)
    image = torch.linspace(0, 1, 3 * 64 * 64).reshape(3, 64, 64)
    handle = None if layout is None else instrument(pipe.unet, layout, sent, shapes)
    if layout is not None:  # the VAE decode split over every rank too, as vidiff generate does
        from vidiff.parallel.decode import parallelize_decode

        parallelize_decode(pipe, layout)
    out = pipe(image, output_type="pt", progress=False, **settings).frames
    if handle is not None:
        handle.remove()
    return out


def wan_decode_case(preset: str, frames: int, *, layout: Any = None) -> tuple[torch.Tensor, int]:
    """Pixels of a tiny random Wan VAE (``preset``) decoding ``frames`` fixed latent frames (one process, a
    latent frame at a time; split over ``layout``'s ranks when given) and the bytes this rank sent."""
    from vidiff.autoencoders.wan_vae import WAN_VAE_PRESETS, WanVAE
    from vidiff.parallel.decode import parallelize_decode

    torch.manual_seed(0)
    vae = _perturb(WanVAE(WAN_VAE_PRESETS[preset]).eval())
    z = torch.randn(1, frames, vae.config.z_dim, 6, 5, generator=torch.Generator().manual_seed(1))
    pipe = SimpleNamespace(vae=vae, decode_split=None)
    if layout is not None:
        parallelize_decode(pipe, layout)
        layout.reset_counts()
    with torch.no_grad():
        out = (pipe.decode_split or vae.decode_latents)(z, chunk_frames=1)
    return out, 0 if layout is None else layout.sent
