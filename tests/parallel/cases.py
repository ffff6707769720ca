"""The models and inputs the parallel-inference tests run, the same in the test process and in every rank."""

from __future__ import annotations

from typing import Any

import torch

from vidiff.conditioning import Cond
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


def pipeline_frames(model: str, settings: dict[str, Any], *, layout: Any = None, sent: list[int] | None = None,
                    shapes: list[tuple[int, ...]] | None = None) -> torch.Tensor:
    """Frames ``(1, T, 3, H, W)`` in [0, 1] of an image-to-video model on a fixed image (parallel over
    ``layout`` when given: the bytes each network call sent are appended to ``sent``, its input's shape to
    ``shapes``)."""
    from vidiff.parallel import parallelize
    from vidiff.pipelines.image_to_video import ImageToVideoPipeline

    pipe = ImageToVideoPipeline.from_pretrained(model)
    image = torch.linspace(0, 1, 3 * 64 * 64).reshape(3, 64, 64)
    handle = None
    if layout is not None:
        def before(module: Any, args: tuple) -> None:  # runs before the split: sees the whole call
            layout.reset_counts()
            if shapes is not None:
                shapes.append(tuple(args[0].shape))

        pipe.unet.register_forward_pre_hook(before)
        handle = parallelize(pipe.unet, layout)
        if sent is not None:
            pipe.unet.register_forward_hook(lambda *_: sent.append(layout.sent))
    out = pipe(image, output_type="pt", progress=False, **settings).frames
    if handle is not None:
        handle.remove()
    return out
