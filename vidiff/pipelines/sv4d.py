"""SV4D / SV4D 2.0 novel-view video synthesis: a video in, ``V`` novel-view videos out.

SV4D (Xie et al. 2024) and SV4D 2.0 (Yao et al. 2025) denoise windows of ``T`` frames × ``V`` views (the
``T·V`` latents flattened t-major) conditioned on, per latent ``(t, v)``:

- ``concat``: the unscaled VAE latent of input frame ``t`` (the same for every view);
- ``crossattn``: the CLIP image token of each input frame, ``(T, D)``;
- ``vector``: ``[σ 256 | polar 512 | azimuth 512]`` (see :func:`~vidiff.pipelines.sv4d_schedule.camera_vector`);
- ``cond_view``: the unscaled latents of the ``V`` views rendered at the pass's reference frame.

The unconditional branch zeroes the concat latent (with its σ embedding), the CLIP tokens and the reference
views, as sgm's ``force_uc_zero_embeddings``; guidance is per latent (``SV4DVariant.scales``). Which frames
each window renders and on which views it conditions is :mod:`vidiff.pipelines.sv4d_schedule`'s plan. This
module holds no math of its own: the sampler, denoiser, scalings and guidance are ``vidiff.diffusion``'s,
the VAE and CLIP are the image-to-video pipeline's components.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from vidiff.conditioning import SV4DCond, noise_augment
from vidiff.diffusion import (
    CFGDenoiser,
    Denoiser,
    Scaling,
    VScalingEDMcNoise,
    initial_noise_scale,
    karras_sigmas,
    per_frame,
    sample_euler,
)
from vidiff.io.weights import load_state_dict_strict, read_safetensors_shapes
from vidiff.pipelines.memory import ModelFootprint
from vidiff.pipelines.memory_sv4d import SV4DMemoryPlan, SV4DRunShape, sv4d_plan_for_budget
from vidiff.pipelines.sv3d import Angles, Orbit
from vidiff.pipelines.sv4d_schedule import (
    COND_SIGMA,
    SV4D_FRAMES,
    VARIANTS,
    Pass,
    SV4DVariant,
    Window,
    camera_vector,
    pad_frames,
    pass_for_step,
    plan_windows,
    rows,
    sv4d_cameras,
    sv4d_num_frames,
    window_angles,
)
from vidiff.utils import randn

if TYPE_CHECKING:
    from vidiff.networks.sv4d_config import SV4DConfig

DEFAULT_DECODE_CHUNK = 4  # the scripts' ``decoding_t``
DEFAULT_ENCODE_CHUNK = 8  # the scripts' ``encoding_t``
SV3D_COND_AUG = 1e-5  # simple_video_sample_4d.py: ``cond_aug`` of the SV3D_u orbit


@dataclass
class SV4DOutput:
    """``frames``: ``(N, V + 1, 3, H, W)`` in [0, 1], view 0 the input video; ``settings``: every resolved
    setting; ``run``: device, dtype, chunks."""

    frames: Tensor
    settings: dict[str, Any]
    run: dict[str, Any] = field(default_factory=dict)

    def view(self, k: int) -> Tensor:
        """The video of view ``k``, ``(N, 3, H, W)``."""
        return self.frames[:, k]

    def grid(self) -> Tensor:
        """Every view side by side, one video ``(N, 3, H, (V+1)·W)``."""
        n, v, c, h, w = self.frames.shape
        return self.frames.permute(0, 2, 3, 1, 4).reshape(n, c, h, v * w)


Encoder = Callable[[Tensor], Tensor]
_UNET = "model.diffusion_model."
_VIEW_EMBED = ".time_mix_time_embed.0.weight"  # SV4D 2.0 feeds it the timestep + camera embedding


def sv4d_model_type(path: str | Path) -> str | None:
    """``sv4d``, ``sv4d2`` or ``sv4d2_8views`` for an sgm single file of that model, from its header alone;
    None for anything else. SV4D 2.0's two models share every tensor shape: as Stability's script, the file
    name tells them apart (``*8view*`` is the 8-view one)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    try:
        shapes = read_safetensors_shapes(path)
    except (OSError, ValueError):
        return None
    if not any(k.startswith(_UNET) and ".motion_blocks." in k for k in shapes):
        return None
    emb = shapes.get(_UNET + "time_embed.0.weight", (0,))[0]  # the timestep + vector embedding's width
    camera = [s[-1] for k, s in shapes.items() if k.startswith(_UNET) and k.endswith(_VIEW_EMBED)]
    if not camera or any(c != emb for c in camera):
        return "sv4d"  # its view embedding reads the view index at each level's width
    return "sv4d2_8views" if "8view" in path.stem.lower() else "sv4d2"


def network_config(unet: Mapping[str, Any], kind: str) -> SV4DConfig:
    """The ``SV4DConfig`` of an SV4D network state dict (vidiff names) of model type ``kind``: every size from
    the shapes (:meth:`SV4DConfig.from_state_dict`), the rest from the type's preset (window, view grouping,
    camera embedding) and its 64-wide heads, narrowed to the gcd with the level widths for a network narrower
    than the released ones (sgm would give such a level no head at all)."""
    from vidiff.networks.sv4d_config import SV4D_PRESETS, SV4DConfig

    preset = SV4D_PRESETS[kind]
    widths = [int(v.shape[0]) for k, v in unet.items()
              if k.startswith("down_blocks.") and k.endswith(".resnets.0.spatial_res_block.conv1.weight")]
    return SV4DConfig.from_state_dict(
        unet, use_3d_attention=preset.use_3d_attention, use_camera_emb=preset.use_camera_emb,
        num_times=preset.num_times, num_views=preset.num_views,
        num_head_channels=math.gcd(preset.num_head_channels, *widths))


class SV4DPipeline:
    """``pipe(video)``: the ``V`` novel-view videos of an SV4D / SV4D 2.0 model.

    ``network(x_in (B, T·V, C, h, w), c_noise, cond: SV4DCond) -> F_x`` (it concatenates ``cond.concat``
    itself, as vidiff's UNets do); ``vae``: SD's per-frame VAE (``encode(pixels).mode()`` unscaled,
    ``decode_latents``); ``clip``: pixels in [-1, 1] ``(N, 3, H, W)`` -> ``(N, 1, D)``; ``sv3d``: an SV3D
    pipeline rendering SV4D's reference views (SV4D only; or pass ``reference_views``)."""

    def __init__(self, network: Callable[..., Tensor], vae: Any, clip: Encoder, variant: SV4DVariant | str, *,
                 scaling: Scaling | None = None, sv3d: Any = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.network = network
        self.vae = vae
        self.clip = clip
        self.variant = VARIANTS[variant] if isinstance(variant, str) else variant
        self.scaling = scaling or VScalingEDMcNoise()
        self.sv3d = sv3d
        self.device = torch.device(device)
        self.dtype = dtype

    @classmethod
    def from_single_file(cls, path: str | Path, *, model_type: str | None = None, config: SV4DConfig | None = None,
                         sv3d: Any = None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
                         ) -> SV4DPipeline:
        """A released ``sv4d*.safetensors`` (sgm layout), strictly: every tensor used or deliberately ignored.

        ``model_type``: ``sv4d``, ``sv4d2`` or ``sv4d2_8views`` (default: :func:`sv4d_model_type`, from the
        file); ``config``: the network's ``SV4DConfig`` (default: read from the tensor shapes, see
        :func:`network_config`, so a network of any size loads). The VAE runs in float32 (the scripts disable
        first-stage autocast)."""
        from vidiff.autoencoders import AutoencoderKL, ImageVAEConfig
        from vidiff.conditioning import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, CLIPImageEmbedder
        from vidiff.io import load_safetensors
        from vidiff.io.clip_keymap import clip_config_from_state_dict
        from vidiff.io.components import Checkpoint, Component
        from vidiff.io.single_file import infer_vae_config
        from vidiff.io.sv4d_keymap import split_sv4d_single_file
        from vidiff.networks.sv4d import SV4DUNet
        from vidiff.pipelines.loading import _build, _build_image_encoder

        kind = model_type or sv4d_model_type(path)
        if kind not in VARIANTS:
            raise ValueError(f"{path}: not an SV4D / SV4D 2.0 single file (model type {kind!r})")
        parts = split_sv4d_single_file(load_safetensors(path))
        ckpt = Checkpoint("single-file", {
            "vae": Component(infer_vae_config(parts.vae), parts.vae),
            "image_encoder": Component(clip_config_from_state_dict(parts.image_encoder), parts.image_encoder)})
        with torch.device("meta"):
            unet = SV4DUNet(config or network_config(parts.unet, kind))
        unet = unet.to_empty(device="cpu")
        load_state_dict_strict(unet, parts.unet, "unet")
        vae = _build(ckpt, "vae", ImageVAEConfig, AutoencoderKL)
        clip = CLIPImageEmbedder(_build_image_encoder(ckpt), mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
        unet.eval().to(device, dtype)
        vae.eval().to(device)
        clip.encoder.to(device, dtype)
        return cls(unet, vae, clip, kind, sv3d=sv3d, device=device, dtype=dtype)

    # -- memory ----------------------------------------------------------------------------------

    def footprint(self) -> ModelFootprint:
        """Parameter counts and widths the memory planner needs (:mod:`vidiff.pipelines.memory_sv4d`)."""
        cfg = self.network.config
        vae = [(n, p.numel()) for n, p in self.vae.named_parameters()]
        clip = self.clip.parameters() if isinstance(self.clip, torch.nn.Module) else ()
        widths = tuple(cfg.block_out_channels)
        return ModelFootprint(
            unet_params=sum(p.numel() for p in self.network.parameters()),
            vae_decoder_params=sum(k for n, k in vae if n.startswith("decoder")),
            vae_encoder_params=sum(k for n, k in vae if not n.startswith("decoder")),
            clip_params=sum(p.numel() for p in clip), unet_channels=widths,
            unet_heads=tuple(c // cfg.num_head_channels for c in widths),
            unet_layers=(cfg.num_res_blocks,) * len(widths),  # the middle block (deepest level) always attends:
            unet_attention=tuple(cfg.has_attention(i) or i == len(widths) - 1 for i in range(len(widths))),
            vae_channels=tuple(self.vae.config.block_out_channels), latent_channels=cfg.out_channels,
            unet_in_channels=cfg.in_channels)

    def memory_run(self, num_frames: int, height: int, width: int, sv3d: bool) -> SV4DRunShape:
        """The planner's shape of a run of ``num_frames`` frames at ``height`` × ``width`` (``sv3d``: with the
        SV3D orbit of frame 0)."""
        var = self.variant
        return SV4DRunShape(num_frames=num_frames, height=height, width=width, frames=var.frames, views=var.views,
                            downsample=self.vae.config.downsample_factor, bytes_per_element=self.dtype.itemsize,
                            vae_bytes_per_element=self.vae.dtype.itemsize, device_type=self.device.type,
                            sv3d_frames=var.orbit_frames if sv3d else 0)

    def plan_memory(self, run: SV4DRunShape, max_memory: str | int) -> tuple[SV4DMemoryPlan, float]:
        """The cheapest VAE chunks predicted to fit ``max_memory`` and the predicted peak (bytes); a
        ValueError naming the need when even one image per call does not fit."""
        sv3d = self.sv3d.footprint() if run.sv3d_frames and hasattr(self.sv3d, "footprint") else None
        return sv4d_plan_for_budget(self.footprint(), run, max_memory, sv3d)

    # -- conditioning ----------------------------------------------------------------------------

    def encode(self, pixels: Tensor, chunk: int | None = DEFAULT_ENCODE_CHUNK) -> Tensor:
        """Unscaled posterior-mode latents ``(N, C, h, w)`` of ``(N, 3, H, W)`` pixels in [-1, 1], ``chunk``
        images per encoder call (the scripts' ``encoding_t``; per image, so the chunk changes no value)."""
        step = chunk or pixels.shape[0]
        out = [self.vae.encode(pixels[i:i + step].to(self.device, self.vae.dtype)).mode().float()
               for i in range(0, pixels.shape[0], step)]
        return torch.cat(out)

    def decode(self, latents: Tensor, chunk: int | None = DEFAULT_DECODE_CHUNK) -> Tensor:
        """Pixels ``(N, 3, H, W)`` in [-1, 1] of scaled latents ``(N, C, h, w)``, clamped as the scripts do."""
        x = self.vae.decode_latents(latents[None].float(), chunk_size=chunk)[0].float()
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0) * 2 - 1

    def tokens(self, pixels: Tensor) -> Tensor:
        """CLIP image tokens ``(N, D)`` of ``(N, 3, H, W)`` pixels in [-1, 1]."""
        return self.clip(pixels.to(self.device))[:, 0].float()

    def conditions(self, p: Pass, frame_latents: Tensor, frame_tokens: Tensor, view_latents: Tensor | None,
                   vectors: tuple[Tensor, Tensor]) -> tuple[SV4DCond, SV4DCond]:
        """``(cond, uncond)`` of one pass (batch 1). ``frame_latents``/``frame_tokens``: of every input
        frame; ``view_latents (V, C, h, w)``: the reference views (None: zeroed, SV4D 2.0's first window)."""
        v = self.variant.views
        index = list(p.frames)
        concat = frame_latents[index].repeat_interleave(v, dim=0)  # row t·V + v: frame t's latent
        crossattn = frame_tokens[index]
        views = torch.zeros(v, *frame_latents.shape[1:]) if view_latents is None else view_latents
        vec_c, vec_u = vectors
        cond = SV4DCond(crossattn=crossattn[None], vector=vec_c[None], concat=concat[None], cond_view=views[None])
        uncond = SV4DCond(crossattn=torch.zeros_like(cond.crossattn), vector=vec_u[None],
                          concat=torch.zeros_like(cond.concat), cond_view=torch.zeros_like(cond.cond_view))
        return cond.to(self.device, self.dtype), uncond.to(self.device, self.dtype)

    # -- sampling --------------------------------------------------------------------------------

    def sample_window(self, window: Window, noise: Tensor, conds: Sequence[tuple[SV4DCond, SV4DCond]],
                      scales: Tensor, sigmas: Tensor, callback: Callable[[dict[str, Any]], None] | None = None
                      ) -> Tensor:
        """Latents ``(T·V, C, h, w)`` of one window in output order (frames ascending, t-major), from
        ``noise`` in that order. Each step uses its pass's conditions (:func:`pass_for_step`), the state's
        rows permuted into the pass's frame order; one pass is one plain Euler run."""
        x = noise[None].to(self.device).float() * initial_noise_scale(sigmas)
        base = Denoiser(self.network, self.scaling)
        guided = [CFGDenoiser(base, uncond, per_frame(scales).to(self.device)) for _, uncond in conds]
        if len(window.passes) == 1:
            return sample_euler(guided[0], x, sigmas, cond=conds[0][0], callback=callback)[0]
        for i in range(len(sigmas) - 1):
            p = pass_for_step(window, i)
            k = window.passes.index(p)
            order = rows(p, self.variant.views)
            x[:, order] = sample_euler(guided[k], x[:, order], sigmas[i:i + 2], cond=conds[k][0])
            if callback is not None:
                callback({"i": i, "x": x})
        return x[0]

    def reference_views(self, first: Tensor, orbit: Orbit, steps: int, decode_chunk: int | None,
                        generator: torch.Generator) -> Tensor:
        """SV4D's reference views ``(V, 3, H, W)`` in [-1, 1]: the SV3D orbit of frame 0, rolled so the input
        view comes first, at the subsampled orbit indices (``simple_video_sample_4d.py``)."""
        if self.sv3d is None:
            raise ValueError(f"{self.variant.name} conditions on the SV3D orbit of frame 0: give the pipeline an "
                             "SV3D model (sv3d=...) or the reference views (reference_views=...)")
        h, w = first.shape[-2:]
        camera = {"elevations": list(orbit.elevations_deg), "azimuths": list(orbit.azimuths_deg)} \
            if getattr(self.sv3d, "has_camera", False) else {}
        out = self.sv3d(((first + 1) / 2).clamp(0, 1), height=h, width=w, num_frames=len(orbit.azimuths_deg),
                        num_inference_steps=steps, noise_aug_strength=SV3D_COND_AUG,
                        decode_chunk_size=decode_chunk, behaviour="sgm", generator=generator, output_type="pt",
                        progress=False, **camera)
        orbit_frames = torch.roll(out.frames[0] * 2 - 1, 1, 0)  # the input view (last frame) first
        return orbit_frames[list(self.variant.orbit_index[1:])].clamp(-1, 1)

    @torch.no_grad()
    def __call__(self, video: Tensor, *, elevations: Angles = None, azimuths: Angles = None,
                 num_frames: int | None = None, num_inference_steps: int | None = None,
                 min_guidance_scale: float | None = None, max_guidance_scale: float | None = None,
                 seed: int = 23, generator: torch.Generator | None = None, noise: Sequence[Tensor] | None = None,
                 reference_views: Tensor | None = None, decode_chunk_size: int | None = DEFAULT_DECODE_CHUNK,
                 encode_chunk_size: int | None = DEFAULT_ENCODE_CHUNK, condition_noise: bool = True,
                 max_memory: str | int | None = None) -> SV4DOutput:
        """Novel-view videos of ``video (F, 3, H, W)`` in [0, 1] (already at the model's size; a short video
        is played forwards then backwards, a long one cut, to ``num_frames``, default 21).

        ``elevations``: one or one per camera (degrees in [-90, 90]); ``azimuths``: one per camera (SV4D: the
        21 of the SV3D orbit; SV4D 2.0: the input view and the ``V`` novel ones). Defaults are the scripts'
        (steps, guidance, cameras, seed 23). ``noise``: the initial latents of each window
        ``(T·V, C, h, w)``, in plan order (default: drawn from ``generator``, after SV3D's draws).
        ``condition_noise``: add sgm's σ = 1e-5 noise to the conditioning images before encoding them (as its
        ``ZeroSampler`` does; False encodes them clean, the limit the golden tests fix). ``max_memory`` (e.g.
        ``"8GiB"``): choose the encode and decode chunks instead (:mod:`vidiff.pipelines.memory_sv4d`; exact,
        the VAE is per image), before any work; a ValueError naming the need when nothing fits."""
        var = self.variant
        orbit = sv4d_cameras(var, elevations, azimuths)
        n = num_frames or (sv4d_num_frames(var) if var.uses_sv3d else SV4D_FRAMES)
        plan = plan_windows(var, n)  # frame count and coverage checked before any work
        if video.ndim != 4 or video.shape[1] != 3 or video.shape[0] < 1:
            raise ValueError(f"video must be (F, 3, H, W) in [0, 1], got shape {tuple(video.shape)}")
        if noise is not None and len(noise) != len(plan):
            raise ValueError(f"noise: {len(noise)} tensors given for {len(plan)} windows")
        memory: dict[str, Any] = {}
        if max_memory is not None:
            needs_sv3d = var.uses_sv3d and reference_views is None
            chunks, peak = self.plan_memory(self.memory_run(n, *video.shape[-2:], needs_sv3d), max_memory)
            encode_chunk_size, decode_chunk_size = chunks.encode_chunk_size, chunks.decode_chunk_size
            memory = {"max_memory": max_memory, "memory_plan": chunks.describe(), "predicted_peak_bytes": int(peak)}
        frames = video[pad_frames(video.shape[0], n)].float() * 2 - 1  # (N, 3, H, W) in [-1, 1]
        steps = num_inference_steps or var.num_inference_steps
        generator = generator or torch.Generator("cpu").manual_seed(seed)
        out = torch.zeros(n, var.views + 1, *frames.shape[1:])
        out[:, 0] = frames
        if var.uses_sv3d:
            out[0, 1:] = reference_views if reference_views is not None else \
                self.reference_views(frames[0], orbit, steps, decode_chunk_size, generator)

        def encode(pixels: Tensor) -> Tensor:
            noisy = noise_augment(pixels, COND_SIGMA, generator) if condition_noise else pixels
            return self.encode(noisy, encode_chunk_size)

        frame_latents = encode(frames)
        frame_tokens = self.tokens(frames)
        vectors = camera_vector(var, *window_angles(var, orbit))
        lo = var.min_guidance_scale if min_guidance_scale is None else float(min_guidance_scale)
        hi = var.max_guidance_scale if max_guidance_scale is None else float(max_guidance_scale)
        scales = var.scales(lo, hi)
        sigmas = karras_sigmas(steps, var.sigma_min, var.sigma_max, var.rho).to(self.device)
        c, h, w = frame_latents.shape[1], *frame_latents.shape[2:]
        for k, window in enumerate(plan):
            conds = []
            for p in window.passes:
                views = None if p.zero_view else encode(out[p.view_frame, 1:])
                conds.append(self.conditions(p, frame_latents, frame_tokens, views, vectors))
            x0 = noise[k] if noise is not None else randn((var.latents, c, h, w), generator)
            if tuple(x0.shape) != (var.latents, c, h, w):
                raise ValueError(f"noise[{k}] must have shape {(var.latents, c, h, w)} (T·V latents, t-major), got "
                                 f"{tuple(x0.shape)}")
            z = self.sample_window(window, x0, conds, scales, sigmas)
            pixels = self.decode(z, decode_chunk_size).reshape(var.frames, var.views, *frames.shape[1:])
            out[list(window.frames), 1:] = pixels.cpu()
        settings = {"model_type": var.name, "num_frames": n, "num_inference_steps": steps,
                    "min_guidance_scale": lo, "max_guidance_scale": hi,
                    "guidance": var.guidance, "seed": seed, "height": frames.shape[-2], "width": frames.shape[-1],
                    "views": var.views, "window_frames": var.frames, **orbit.to_dict()}
        run = {"device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
               "decode_chunk_size": decode_chunk_size, "encode_chunk_size": encode_chunk_size,
               "windows": [list(wd.frames) for wd in plan], **memory}
        return SV4DOutput(((out + 1) / 2).clamp(0, 1), settings, run)
