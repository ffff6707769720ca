"""Image-to-video with SVD-class models: conditioning + UNet + EDM sampler + guidance + temporal VAE.

The pipeline composes the four model packages and holds no math of its own:
``vidiff.conditioning`` builds ``(cond, uncond)`` from the image, ``vidiff.diffusion`` provides the
v-prediction denoiser with EDM's c_noise, the Karras sigmas, the per-frame guidance ramp and the sampler,
and ``vidiff.autoencoders`` encodes the conditioning image and decodes the latents in chunks.

With the same weights, inputs and seed it reproduces diffusers' ``StableVideoDiffusionPipeline``
(same RNG draw order: noise-augmentation noise first, then the initial latents).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from tqdm.auto import tqdm

from vidiff.conditioning import CLIPImageEmbedder, Conditioner
from vidiff.diffusion import (
    SAMPLERS,
    CFGDenoiser,
    Denoiser,
    KnownValuesDenoiser,
    Scaling,
    VScalingEDMcNoise,
    initial_noise_scale,
    karras_sigmas,
    linear_frame_scales,
    per_frame,
    scaling_by_name,
    triangle_frame_scales,
)
from vidiff.networks.fast import FastPath, apply_fast_path
from vidiff.pipelines.defaults import FAMILIES, ModelFamily, default_settings
from vidiff.pipelines.loading import LoadedModel, load_model
from vidiff.pipelines.memory import MemoryPlan, ModelFootprint, RunShape, format_bytes, plan_for_budget
from vidiff.pipelines.offload import SequentialOffload, largest_leaf_params, on_device
from vidiff.pipelines.settings import GenerationSettings

ImageInput = PIL.Image.Image | torch.Tensor | np.ndarray


@dataclass
class ImageToVideoOutput:
    """``frames``: ``(B, T, 3, H, W)`` in [0, 1] for ``"pt"``, ``(B, T, H, W, 3)`` for ``"np"``, lists of PIL
    images for ``"pil"``, latents for ``"latent"``; ``settings``: every resolved setting."""

    frames: Any
    settings: GenerationSettings
    memory_plan: MemoryPlan


def bundled_model_path() -> Path | None:
    """The model shipped inside the package (``vidiff/assets/default_model``), if installed."""
    path = Path(__file__).resolve().parents[1] / "assets" / "default_model"
    return path if (path / "vidiff.json").is_file() else None


def _to_pil(image: ImageInput) -> PIL.Image.Image:
    """A PIL RGB image from PIL, a ``(3, H, W)`` / ``(1, 3, H, W)`` tensor in [0, 1] or an HWC uint8 array."""
    if isinstance(image, PIL.Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        t = image.detach().float().cpu()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim != 3 or t.shape[0] != 3:
            raise ValueError(f"image tensor must be (3, H, W) in [0, 1], got shape {tuple(image.shape)}")
        if not torch.isfinite(t).all():
            raise ValueError("image tensor contains NaN or infinite values")
        image = (t.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"image array must be (H, W, 3) uint8, got {image.dtype} {image.shape}")
        return PIL.Image.fromarray(image).convert("RGB")
    raise TypeError(f"image must be a PIL image, a tensor or a numpy array, got {type(image).__name__}")


def _pil_to_tensor(image: PIL.Image.Image) -> torch.Tensor:
    """``(1, 3, H, W)`` float32 in [0, 1] (x/255, as diffusers' image processor)."""
    arr = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


class ImageToVideoPipeline:
    """SVD / SVD-XT / SV3D image-to-video. Build with :meth:`from_pretrained`, run with ``pipe(image, ...)``."""

    def __init__(self, model: LoadedModel, *, family: ModelFamily, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", fast_path: FastPath | None = None) -> None:
        self.model = model
        self.family = family
        # the model's own defaults (vidiff.json ``generation_defaults``) win over its family's
        self.model_defaults = GenerationSettings.from_dict(dict(model.extra.get("generation_defaults") or {}))
        self.residual = bool(model.extra.get("residual", False))
        self.dtype = dtype
        self.device = torch.device(device)
        self.unet = model.unet.to(dtype=dtype)
        self.vae = model.vae  # encoder/decoder run in float32 unless asked otherwise (force_upcast)
        self.clip = None
        if model.image_encoder is not None:
            self.clip = CLIPImageEmbedder(model.image_encoder.to(dtype=dtype), mean=model.image_mean,
                                          std=model.image_std)
        ucfg = self.unet.config
        self.conditioner = Conditioner(self.clip, self._encode_image, scalar_keys=family.scalar_keys,
                                       scalar_dim=ucfg.addition_time_embed_dim,
                                       crossattn_dim=ucfg.cross_attention_dim)
        sched = model.scheduler_config
        self.sigma_min = float(sched.get("sigma_min", family.sigma_min))
        self.sigma_max = float(sched.get("sigma_max", family.sigma_max))
        self.scaling = _scaling(sched)
        self._offload = "none"
        self._sequential: list[SequentialOffload] = []
        self.fast_path = fast_path or FastPath()
        self._place("none")
        self.set_fast_path(self.fast_path)

    def set_fast_path(self, fast: FastPath) -> None:
        """Switch the UNet's inference speed settings (fused projections, channels-last, compilation; see
        ``vidiff.networks.fast``): they change how it runs, not what it computes."""
        self.fast_path = fast
        if self._offload == "sequential" and fast.fuse_projections:
            # sequential offload moves leaf modules' weights: fused copies of them would stay behind
            fast = replace(fast, fuse_projections=False)
        apply_fast_path(self.unet, fast)

    # ----------------------------------------------------------------------------------------------
    # construction

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu", model_type: str | None = None,
                        num_frames: int | None = None, fast_path: FastPath | None = None) -> ImageToVideoPipeline:
        """Load a diffusers folder, an original single-file ``.safetensors`` or a vidiff folder.

        ``fast_path``: the UNet's speed settings (default ``FastPath()``: fused attention projections)."""
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device} asked for, but this machine has no CUDA device")
        model = load_model(path, num_frames=num_frames)
        hint = model_type or (model.model_type if model.model_type in FAMILIES else None)
        family = FAMILIES[hint] if hint else FAMILIES["svd"]
        unet_frames = model.unet.config.num_frames
        family = replace(family, num_frames=unet_frames or family.num_frames)
        size = model.extra.get("default_size")
        if size:
            family = replace(family, height=size[0], width=size[1])
        own = model.extra.get("generation_defaults") or {}
        family = replace(family, **{k: own[k] for k in ("height", "width", "num_frames") if own.get(k)})
        return cls(model, family=family, dtype=dtype, device=device, fast_path=fast_path)

    # ----------------------------------------------------------------------------------------------
    # placement and memory controls

    def _place(self, offload: str) -> None:
        for hooks in self._sequential:
            hooks.remove()
        self._sequential = []
        modules = [m for m in (self.unet, self.vae, self.clip) if m is not None]
        if offload == "sequential" and self.device.type != "cpu":
            self._sequential = [SequentialOffload(m, self.device) for m in modules]
        else:
            target = "cpu" if offload == "model" else self.device
            for m in modules:
                m.to(target)
        before, self._offload = self._offload, offload
        if (before == "sequential") != (offload == "sequential"):
            self.set_fast_path(self.fast_path)  # fused projections off while layers are offloaded one by one

    def footprint(self) -> ModelFootprint:
        """Parameter counts and widths the memory planner needs."""
        enc = sum(p.numel() for n, p in self.vae.named_parameters() if not n.startswith("decoder"))
        dec = sum(p.numel() for n, p in self.vae.named_parameters() if n.startswith("decoder"))
        cfg = self.unet.config
        # a parameter-free VAE (PatchAutoencoder) has no convolution widths: its pixels are its only tensors
        vae_channels = tuple(getattr(self.vae.config, "block_out_channels", None) or (self.vae_in_channels,))
        return ModelFootprint(
            unet_params=sum(p.numel() for p in self.unet.parameters()), vae_decoder_params=dec,
            vae_encoder_params=enc, clip_params=sum(p.numel() for p in self.clip.parameters()) if self.clip else 0,
            unet_channels=tuple(cfg.block_out_channels), unet_heads=tuple(cfg.per_level("num_attention_heads")),
            vae_channels=vae_channels, latent_channels=cfg.out_channels,
            largest_layer_params=max(largest_leaf_params(m) for m in (self.unet, self.vae)),
        )

    # ----------------------------------------------------------------------------------------------
    # stages

    def _encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unscaled VAE latent mode of ``(B, 3, H, W)`` pixels in [-1, 1] (the concat conditioning)."""
        with on_device(self.vae, self.device, self._offload):
            return self.vae.encode(pixels.to(self.device, torch.float32)).mode()

    @property
    def vae_in_channels(self) -> int:
        return int(getattr(self.vae.config, "in_channels", 3))

    def default_settings(self, behaviour: str = "diffusers") -> GenerationSettings:
        """The family's reference defaults, overridden by the model's own (``generation_defaults``)."""
        return default_settings(self.family, behaviour).merged(self.model_defaults)

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this (the VAE's downsampling: the UNet handles the rest)."""
        return self.vae.config.downsample_factor

    def _resolve(self, settings: GenerationSettings) -> GenerationSettings:
        behaviour = settings.behaviour or "diffusers"
        resolved = self.default_settings(behaviour).merged(settings)
        m = self.size_multiple
        for name in ("height", "width"):
            v = getattr(resolved, name)
            if v % m:
                raise ValueError(f"{name}={v} is not a multiple of {m}: this model's VAE downsamples by {m}")
        trained = (self.family.height, self.family.width)
        if max(resolved.height / trained[0], trained[0] / resolved.height,
               resolved.width / trained[1], trained[1] / resolved.width) > 1.5:
            warnings.warn(
                f"{resolved.width}x{resolved.height} is far from the {trained[1]}x{trained[0]} this model was "
                "trained at; quality drops quickly off the training resolution", stacklevel=3)
        return resolved

    def _choose_plan(self, s: GenerationSettings, *, offload: str | None, max_memory: str | int | None,
                     vae_tiling: bool, attention_chunk: int | None) -> MemoryPlan:
        explicit = MemoryPlan(offload=offload or "none", decode_chunk_size=s.decode_chunk_size,
                              attention_chunk=attention_chunk, vae_tiling=vae_tiling)
        if max_memory is None:
            return explicit
        run = RunShape(batch=1, num_frames=s.num_frames, height=s.height, width=s.width,
                       guidance=s.max_guidance_scale > 1, bytes_per_element=torch.finfo(self.dtype).bits // 8,
                       fused_attention=self.device.type == "cuda")
        plan, peak = plan_for_budget(self.footprint(), run, max_memory)
        print(f"vidiff: max_memory={max_memory}: chose {plan.describe()} (predicted peak {format_bytes(peak)})")
        return plan

    # ----------------------------------------------------------------------------------------------
    # the call

    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int | None = None,
        min_guidance_scale: float | None = None,
        max_guidance_scale: float | None = None,
        fps: int | None = None,
        motion_bucket_id: int | None = None,
        noise_aug_strength: float | None = None,
        decode_chunk_size: int | None = None,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        callback: Callable[[dict[str, Any]], None] | None = None,
        *,
        sampler: str | None = None,
        seed: int | None = None,
        behaviour: str | None = None,
        decode_overlap: int | None = None,
        settings: GenerationSettings | None = None,
        offload: str | None = None,
        max_memory: str | int | None = None,
        vae_tiling: bool = False,
        attention_chunk: int | None = None,
        progress: bool = True,
    ) -> ImageToVideoOutput:
        """Generate ``num_frames`` frames from ``image``; argument names follow diffusers' SVD pipeline.

        Unset arguments take the model's defaults (``behaviour="sgm"`` selects Stability's). ``generator``
        wins over ``seed``; with neither, seed 0 is used so every run is repeatable from its settings.
        """
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be one of pil, np, pt, latent; got {output_type!r}")
        given = GenerationSettings(
            height=height, width=width, num_frames=num_frames, num_inference_steps=num_inference_steps,
            min_guidance_scale=min_guidance_scale, max_guidance_scale=max_guidance_scale, fps=fps,
            motion_bucket_id=motion_bucket_id, noise_aug_strength=noise_aug_strength,
            decode_chunk_size=decode_chunk_size, decode_overlap=decode_overlap, sampler=sampler, seed=seed,
            behaviour=behaviour)
        s = self._resolve((settings or GenerationSettings()).merged(given))
        plan = self._choose_plan(s, offload=offload, max_memory=max_memory, vae_tiling=vae_tiling,
                                 attention_chunk=attention_chunk)
        if plan.offload != self._offload:
            self._place(plan.offload)
        if generator is None:
            generator = torch.Generator("cpu").manual_seed(s.seed)
        pil = _to_pil(image)
        cond, uncond = self._condition(pil, s, generator)
        x = self._denoise(cond, uncond, s, plan, generator, latents, callback, progress)
        if self.residual:  # the model denoised the video minus the image's latents: add them back
            x = x + self._image_latents(pil, s)[:, None].to(x.dtype)
        if output_type == "latent":
            return ImageToVideoOutput(x, s, plan)
        # a flow autoencoder decodes by warping the conditioning image (FlowWarpAutoencoder)
        reference = _resized(pil, s) if getattr(self.vae, "reference_conditioned", False) else None
        frames = self._decode(x, s, plan, progress, reference)
        return ImageToVideoOutput(_postprocess(frames, output_type), s, plan)

    def _condition(self, pil: PIL.Image.Image, s: GenerationSettings, generator: torch.Generator):
        full = _pil_to_tensor(pil) * 2 - 1  # diffusers: CLIP sees the original resolution
        resized = _resized(pil, s)
        clip_input = resized if s.behaviour == "sgm" else full
        with on_device(self.clip, self.device, self._offload):
            cond, uncond = self.conditioner(
                resized.to(self.device), clip_image=clip_input.to(self.device), num_frames=s.num_frames,
                fps=s.fps, motion_bucket_id=s.motion_bucket_id, noise_aug_strength=s.noise_aug_strength,
                generator=generator, dtype=self.dtype)
        return cond, uncond

    def _image_latents(self, pil: PIL.Image.Image, s: GenerationSettings) -> torch.Tensor:
        """Scaled latents ``(1, C, h, w)`` of the clean conditioning image at the output size."""
        with on_device(self.vae, self.device, self._offload):
            return self.vae.encode_latents(_resized(pil, s).to(self.device, torch.float32))

    def _denoise(self, cond, uncond, s: GenerationSettings, plan: MemoryPlan, generator: torch.Generator,
                 latents: torch.Tensor | None, callback, progress: bool) -> torch.Tensor:
        sigmas = karras_sigmas(s.num_inference_steps, self.sigma_min, self.sigma_max, self.family.rho)
        c = self.unet.config.out_channels
        f = self.vae.config.downsample_factor
        shape = (1, s.num_frames, c, s.height // f, s.width // f)
        if latents is None:
            noise = torch.randn(shape, generator=generator, dtype=self.dtype, device=generator.device)
            x = noise.to(self.device).float() * initial_noise_scale(sigmas)
        else:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
            x = latents.to(self.device).float()
        ramp = linear_frame_scales if self.family.guidance_ramp == "linear" else triangle_frame_scales
        scales = per_frame(ramp(s.min_guidance_scale, s.max_guidance_scale, s.num_frames)).to(self.device)
        denoiser = Denoiser(self.unet, self.scaling)
        if s.max_guidance_scale > 1:  # diffusers batches [uncond, cond] whenever the ramp exceeds 1
            denoiser = CFGDenoiser(denoiser, uncond, scales)
        if getattr(self.vae, "zero_first_latent", False):  # frame 0 is the reference: its latent is known
            first = torch.zeros(1, s.num_frames, 1, 1, 1, dtype=torch.bool, device=self.device)
            first[:, 0] = True
            denoiser = KnownValuesDenoiser(denoiser, first, 0.0)
        bar = tqdm(total=s.num_inference_steps, desc="denoising", disable=not progress, leave=False)

        def report(info: dict[str, Any]) -> None:
            bar.update(1)
            if callback is not None:
                callback(info)

        sample = SAMPLERS[s.sampler]
        with on_device(self.unet, self.device, self._offload), self.unet_chunking(plan.attention_chunk):
            x = sample(denoiser, x, sigmas.to(self.device), cond=cond, callback=report, generator=None)
        bar.close()
        return x

    def unet_chunking(self, attention_chunk: int | None):
        from contextlib import nullcontext

        if attention_chunk is None or not hasattr(self.unet, "chunked"):
            return nullcontext()
        return self.unet.chunked(attention_chunk)

    def _decode(self, x: torch.Tensor, s: GenerationSettings, plan: MemoryPlan, progress: bool,
                reference: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {} if reference is None else {"reference": reference.to(self.device)}
        with on_device(self.vae, self.device, self._offload):
            return self.vae.decode_latents(
                x.float(), chunk_size=plan.decode_chunk_size, overlap=s.decode_overlap or 0,
                tiled=plan.vae_tiling, progress=progress, **kwargs)


def _resized(pil: PIL.Image.Image, s: GenerationSettings) -> torch.Tensor:
    """The conditioning image at the output size, ``(1, 3, H, W)`` in [-1, 1] (Lanczos, as diffusers)."""
    return _pil_to_tensor(pil.resize((s.width, s.height), resample=PIL.Image.LANCZOS)) * 2 - 1


def _scaling(scheduler: dict[str, Any]) -> Scaling:
    """The parametrisation the UNet was trained with: vidiff's ``scaling`` key when the scheduler config has
    one (models vidiff trained), else SVD's v-prediction with EDM c_noise (every SVD-class checkpoint)."""
    if "scaling" in scheduler:
        return scaling_by_name(scheduler["scaling"], float(scheduler.get("sigma_data", 1.0)))
    kind = scheduler.get("prediction_type", "v_prediction")
    if kind != "v_prediction":
        raise ValueError(f"scheduler prediction_type {kind!r} is not supported for SVD-class models "
                         "(they are v-prediction); add a vidiff 'scaling' key to the scheduler config")
    return VScalingEDMcNoise()


def _postprocess(frames: torch.Tensor, output_type: str) -> Any:
    """``(B, T, 3, H, W)`` in [-1, 1] -> [0, 1] as the requested type (diffusers' rounding for PIL)."""
    video = (frames.float() / 2 + 0.5).clamp(0, 1).cpu()
    if output_type == "pt":
        return video
    arr = video.permute(0, 1, 3, 4, 2).numpy()
    if output_type == "np":
        return arr
    return [[PIL.Image.fromarray((f * 255).round().astype(np.uint8)) for f in clip] for clip in arr]
