"""Wan 2.x text-to-video and image-to-video (Wan team 2025) with diffusers' ``WanPipeline`` /
``WanImageToVideoPipeline`` argument names, built on vidiff's flow-matching denoiser and samplers.

The sampler state is the rectified-flow interpolant ``x_t`` (see :mod:`vidiff.diffusion.flow_matching`);
guidance is :class:`vidiff.diffusion.CFGDenoiser` (``D_u + s·(D_c − D_u)``, which equals diffusers' guidance of
the velocity); Wan 2.2 A14B switches from the high-noise expert to the low-noise one once ``1000·t`` falls
below ``boundary_ratio·1000``. Image-to-video (Wan 2.1 I2V/FLF2V, Wan 2.2 I2V-A14B) appends a 4-channel
"known frame" mask and the VAE latent of the image followed by black frames; Wan 2.1 also attends to the
image's CLIP tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vidiff.autoencoders.wan_vae import WanVAE
from vidiff.conditioning.text import TextCond, UMT5TextEncoder, clip_image_tokens
from vidiff.diffusion import CFGDenoiser, Denoiser, sample_euler
from vidiff.diffusion.flow_matching import (
    NUM_TRAIN_TIMESTEPS,
    FlowTimeScaling,
    flow_euler_times,
    flow_unipc_times,
    sample_flow_unipc,
)
from vidiff.networks.dit_wan import WanTransformer3D
from vidiff.pipelines.image_to_video import frames_to_output, image_at_size, image_list
from vidiff.pipelines.memory import (
    MemoryPlan,
    ModelFootprint,
    RunShape,
    causal_vae_shape,
    check_fits,
    network_shape,
    plan_for_budget,
)
from vidiff.pipelines.offload import available_device, device_memory
from vidiff.utils import randn

__all__ = ["SAMPLERS", "TextToVideoOutput", "TextToVideoPipeline", "check_num_frames"]

# Wan's samplers: name -> (flow-time schedule of diffusers' scheduler, sampler on the flow-time denoiser)
SAMPLERS = {"flow_euler": (flow_euler_times, sample_euler), "unipc": (flow_unipc_times, sample_flow_unipc)}


@dataclass
class TextToVideoOutput:
    """``frames``: ``(B, T, H, W, 3)`` in [0, 1] for ``"np"``, ``(B, T, 3, H, W)`` for ``"pt"``, PIL lists for
    ``"pil"``, normalised latents ``(B, t, C, h, w)`` for ``"latent"``; ``memory_plan``: the decode chunk used
    (chosen by the planner under ``max_memory``)."""

    frames: Any
    memory_plan: MemoryPlan | None = None

    def __getitem__(self, index: int) -> Any:
        return (self.frames,)[index]


def check_num_frames(num_frames: int, temporal_factor: int = 4) -> None:
    """Wan's causal VAE takes ``1 + 4k`` frames; anything else is a ValueError naming the value."""
    if not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % temporal_factor:
        raise ValueError(f"num_frames={num_frames!r}: Wan generates 1 + {temporal_factor}k frames "
                         f"(e.g. {temporal_factor + 1}, 33, 81)")


class _ExpertSwitch:
    """Wan 2.2 A14B: the high-noise denoiser while ``1000·t ≥ boundary``, then the low-noise one."""

    def __init__(self, high: Any, low: Any, boundary: float) -> None:
        self.high, self.low, self.boundary = high, low, boundary

    def __call__(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        timestep = NUM_TRAIN_TIMESTEPS * t.reshape(-1)[0].float()  # as the reference compares its timesteps
        return (self.high if timestep >= self.boundary else self.low)(x, t, cond)


class _KnownFirstFrame:
    """Wan 2.2 TI2V image-to-video: the first latent frame is the image's latent, at timestep 0, in every
    network call (its own state is never read); the other frames see the current timestep."""

    def __init__(self, network: WanTransformer3D, first: Tensor) -> None:
        self.network, self.first = network, first

    def parameters(self) -> Any:
        return self.network.parameters()

    def __call__(self, x: Tensor, c_noise: Tensor, cond: Any) -> Tensor:
        x = torch.cat([self.first.to(x.dtype).expand(x.shape[0], -1, -1, -1, -1), x[:, 1:]], dim=1)
        c = c_noise.reshape(-1, 1).expand(x.shape[0], x.shape[1]).clone()
        c[:, 0] = 0
        return self.network(x, c, cond)


class TextToVideoPipeline:
    """Wan text/image-to-video: ``pipe(prompt, image=None, height, width, num_frames, ...) -> frames``."""

    def __init__(self, transformer: WanTransformer3D, vae: WanVAE, text_encoder: torch.nn.Module | None = None,
                 tokenizer: Any = None, *, transformer_2: WanTransformer3D | None = None,
                 boundary_ratio: float | None = None, image_encoder: torch.nn.Module | None = None,
                 image_processor: Any = None, flow_shift: float = 5.0, sampler: str = "flow_euler",
                 expand_timesteps: bool = False) -> None:
        if (transformer_2 is None) != (boundary_ratio is None):
            raise ValueError("a second (low-noise) transformer needs boundary_ratio, and boundary_ratio needs it")
        self.transformer, self.transformer_2, self.boundary_ratio = transformer, transformer_2, boundary_ratio
        self.vae = vae
        self.decode_split: Any = None  # vidiff.parallel.parallelize_decode: the VAE decode over the ranks
        self.text = UMT5TextEncoder(tokenizer, text_encoder) if text_encoder is not None else None
        self.image_encoder, self.image_processor = image_encoder, image_processor
        self.flow_shift = flow_shift
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown Wan sampler {sampler!r}; choose from {sorted(SAMPLERS)}")
        self.sampler = sampler
        self.expand_timesteps = expand_timesteps  # Wan 2.2 TI2V: per-frame timesteps, image as frame 0

    @property
    def is_image_to_video(self) -> bool:
        return self.transformer.config.in_channels > self.vae.config.z_dim

    def encode_prompt(self, prompt: str | list[str], max_sequence_length: int = 512) -> Tensor:
        if self.text is None:
            raise ValueError("this model has no text encoder: pass prompt_embeds, or load a model with a "
                             "text_encoder/ and tokenizer/")
        return self.text(prompt, max_sequence_length, device=self.device)

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def to(self, device: str | torch.device) -> TextToVideoPipeline:
        """Move every component (transformers, VAE, text and image encoders) to ``device``, each keeping its
        dtype; returns the pipeline. ValueError for a CUDA device on a machine without one."""
        device = available_device(device)
        modules = [self.transformer, self.transformer_2, self.vae, self.image_encoder,
                   None if self.text is None else self.text.text_encoder]
        for module in modules:
            if module is not None:
                module.to(device)
        return self

    def _check(self, height: int, width: int, num_frames: int, image: Any) -> None:
        check_num_frames(num_frames, self.vae.config.temporal_factor)
        multiple = self.vae.config.spatial_factor * self.transformer.config.patch_size[1]
        if height % multiple or width % multiple:
            raise ValueError(f"height={height} and width={width} must be multiples of {multiple} for this model")
        if self.is_image_to_video and image is None:
            raise ValueError("this is an image-to-video model: pass image=")
        if not (self.is_image_to_video or self.expand_timesteps) and image is not None:
            raise ValueError("this is a text-to-video model: it takes no image")

    def _image_condition(self, image: Any, last_image: Any, batch: int, height: int, width: int,
                         num_frames: int) -> Tensor:
        """Mask channels and the normalised VAE latent of [image, black frames(, last_image)],
        ``(B, t, 4 + z, h, w)``."""
        first = image_at_size(image_list(image)[0], height, width).to(self.device)  # (1, 3, H, W) in [-1, 1]
        video = torch.zeros(1, num_frames, 3, height, width, device=self.device)
        video[:, 0] = first[0]
        known = torch.zeros(num_frames)
        known[0] = 1
        if last_image is not None:
            video[:, -1] = image_at_size(image_list(last_image)[0], height, width)[0].to(self.device)
            known[-1] = 1
        latent = self.vae.encode_latents(video.to(self.vae.dtype)).float()  # (1, t, z, h, w)
        f = self.vae.config.temporal_factor
        # frame 0 stands for f sub-frames, as in the VAE; each latent frame gets f mask channels
        mask = torch.cat([known[:1].repeat(f), known[1:]]).reshape(-1, f).to(self.device)  # (t, f)
        mask = mask[None, :, :, None, None].expand(1, -1, -1, *latent.shape[-2:])
        return torch.cat([mask, latent], dim=2).repeat(batch, 1, 1, 1, 1)

    def footprint(self) -> ModelFootprint:
        """Parameter counts and widths the memory planner needs (both experts of Wan 2.2 A14B are resident)."""
        def count(*modules: torch.nn.Module | None) -> int:
            return sum(p.numel() for m in modules if m is not None for p in m.parameters())

        encoders = [m for m in (self.text.text_encoder if self.text else None, self.image_encoder) if m is not None]
        text_cfg = getattr(self.text.text_encoder, "config", None) if self.text else None
        cfg = self.transformer.config
        return ModelFootprint(
            unet_params=count(self.transformer, self.transformer_2),
            vae_decoder_params=count(self.vae.decoder, self.vae.post_quant_conv),
            vae_encoder_params=count(self.vae.encoder, self.vae.quant_conv), clip_params=count(*encoders),
            vae_channels=(self.vae.config.base_dim,), latent_channels=cfg.out_channels,
            unet_in_channels=cfg.in_channels, causal_vae=causal_vae_shape(self.vae.config),
            text_encoder=None if text_cfg is None else (text_cfg.d_model, text_cfg.d_ff, text_cfg.num_heads),
            clip_bytes_per_element=max((next(m.parameters()).element_size() for m in encoders), default=None),
            **network_shape(cfg))

    def choose_plan(self, batch: int, height: int, width: int, num_frames: int, guided: bool,
                    max_memory: str | int | None, decode_chunk_size: int | None,
                    max_sequence_length: int = 512) -> MemoryPlan:
        """The decode chunk (latent frames) to use: the cheapest predicted to fit ``max_memory`` (the planner
        of :mod:`vidiff.pipelines.memory`), else ``decode_chunk_size`` once the device is checked to fit the
        most frugal one. A budget or device too small is a ValueError naming the memory needed."""
        run = RunShape(batch=batch, num_frames=num_frames, height=height, width=width, guidance=guided,
                       bytes_per_element=self.transformer.proj_out.weight.element_size(),
                       vae_bytes_per_element=self.vae.dtype.itemsize, downsample=self.vae.config.spatial_factor,
                       device_type=self.device.type, temporal_downsample=self.vae.config.temporal_factor,
                       text_tokens=max_sequence_length)
        if max_memory is None:
            check_fits(self.footprint(), run, device_memory(self.device), f"device {self.device}")
            return MemoryPlan(decode_chunk_size=decode_chunk_size)
        return plan_for_budget(self.footprint(), run, max_memory)[0]

    def _denoiser(self, network: WanTransformer3D, uncond: TextCond | None, scale: float,
                  first: Tensor | None = None) -> Any:
        # diffusers' UniPC hands the network integer timesteps; its flow-Euler scheduler, float ones
        net = network if first is None else _KnownFirstFrame(network, first)
        denoiser = Denoiser(net, FlowTimeScaling(integer_timesteps=self.sampler == "unipc"))
        return CFGDenoiser(denoiser, uncond, scale) if uncond is not None and scale > 1.0 else denoiser

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        image: Any = None,
        height: int = 480,
        width: int = 832,
        num_frames: int = 81,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        guidance_scale_2: float | None = None,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | None = None,
        latents: Tensor | None = None,
        prompt_embeds: Tensor | None = None,
        negative_prompt_embeds: Tensor | None = None,
        image_embeds: Tensor | None = None,
        last_image: Any = None,
        output_type: str = "np",
        max_sequence_length: int = 512,
        decode_chunk_size: int | None = 1,
        max_memory: str | int | None = None,
    ) -> TextToVideoOutput:
        """Generate ``num_frames`` frames; names and defaults as diffusers' Wan pipelines. ``decode_chunk_size``:
        latent frames the VAE decodes at a time (exact; 1: the reference, None: all); ``max_memory`` (e.g.
        ``"8GiB"``) chooses it instead: the fastest predicted to fit."""
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of prompt and prompt_embeds")
        self._check(height, width, num_frames, image)
        batch = (1 if prompt_embeds is None and isinstance(prompt, str) else
                 len(prompt) if prompt_embeds is None else prompt_embeds.shape[0]) * num_videos_per_prompt
        guided = guidance_scale > 1.0 or (guidance_scale_2 is not None and guidance_scale_2 > 1.0)
        plan = self.choose_plan(batch, height, width, num_frames, guided, max_memory, decode_chunk_size,
                                max_sequence_length)
        cond_text = self.encode_prompt(prompt, max_sequence_length) if prompt_embeds is None else prompt_embeds
        cond_text = cond_text.repeat_interleave(num_videos_per_prompt, dim=0)
        uncond_text = None
        if guided:
            if negative_prompt_embeds is None:
                negative = negative_prompt or ""
                negative = [negative] * (batch // num_videos_per_prompt) if isinstance(negative, str) else negative
                negative_prompt_embeds = self.encode_prompt(negative, max_sequence_length)
            uncond_text = negative_prompt_embeds.repeat_interleave(num_videos_per_prompt, dim=0)

        concat = clip = first = None
        if image is not None and self.expand_timesteps:  # TI2V: the image's latent is frame 0
            pixels = image_at_size(image_list(image)[0], height, width).to(self.device, self.vae.dtype)
            first = self.vae.encode_latents(pixels[:, None]).float()  # (1, 1, z, h, w)
        elif image is not None:
            concat = self._image_condition(image, last_image, batch, height, width, num_frames)
            if self.transformer.config.has_image_attention:
                if image_embeds is None:
                    if self.image_encoder is None:
                        raise ValueError("this Wan 2.1 image-to-video model needs its CLIP image_encoder")
                    shown = image if last_image is None else [image, last_image]
                    image_embeds = clip_image_tokens(self.image_encoder, self.image_processor, shown)
                # FLF2V's two images become one sequence of 2N tokens per video
                clip = image_embeds.to(self.device).reshape(1, -1, image_embeds.shape[-1]).repeat(batch, 1, 1)
        cond = TextCond(crossattn=cond_text, concat=concat, image=clip)
        uncond = None if uncond_text is None else TextCond(crossattn=uncond_text, concat=concat, image=clip)

        # Initial noise drawn as (B, C, t, h, w), the reference's layout, so a seed gives the same video.
        f, s = self.vae.config.temporal_factor, self.vae.config.spatial_factor
        shape = (batch, self.vae.config.z_dim, (num_frames - 1) // f + 1, height // s, width // s)
        if latents is None:
            # drawn on the generator's device (a CPU generator on the CPU), then moved: one seed, one video
            latents = randn(shape, generator, device=self.device, dtype=torch.float32)
        x = latents.to(self.device, torch.float32).transpose(1, 2)  # (B, t, C, h, w)

        denoiser = self._denoiser(self.transformer, uncond, guidance_scale, first)
        if self.transformer_2 is not None:
            low = self._denoiser(self.transformer_2, uncond,
                                 guidance_scale if guidance_scale_2 is None else guidance_scale_2, first)
            denoiser = _ExpertSwitch(denoiser, low, self.boundary_ratio * NUM_TRAIN_TIMESTEPS)
        schedule, sample = SAMPLERS[self.sampler]
        x = sample(denoiser, x, schedule(num_inference_steps, self.flow_shift).to(self.device), cond=cond)
        if first is not None:
            x = torch.cat([first.expand(x.shape[0], -1, -1, -1, -1), x[:, 1:]], dim=1)

        if output_type == "latent":
            return TextToVideoOutput(x, plan)
        decode = self.decode_split or self.vae.decode_latents  # split over the ranks: parallelize_decode
        frames = decode(x.to(self.vae.dtype), chunk_frames=plan.decode_chunk_size)
        return TextToVideoOutput(frames_to_output(frames, output_type), plan)
