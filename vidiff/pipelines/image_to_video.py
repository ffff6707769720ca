"""Image-to-video with SVD-class models: conditioning + UNet + EDM sampler + guidance + temporal VAE.

The pipeline composes the four model packages and holds no math of its own:
``vidiff.conditioning`` builds ``(cond, uncond)`` from the image, ``vidiff.diffusion`` provides the
v-prediction denoiser with EDM's c_noise, the Karras sigmas, the per-frame guidance ramp and the sampler,
and ``vidiff.autoencoders`` encodes the conditioning image and decodes the latents in chunks.

With the same weights, inputs and seed it reproduces diffusers' ``StableVideoDiffusionPipeline``, and takes
its arguments (batches of images, a generator per video, ``num_videos_per_prompt``, ``latents``,
``callback_on_step_end``, ``return_dict``). RNG draw order, as diffusers': the noise augmentation of the
batch of images, then the initial latents, then the sampler's own draws (stochastic samplers only, see
``vidiff.diffusion.samplers``); with a list of generators, video ``b`` draws only from ``generator[b]``
(the noise augmentation of image ``i`` from ``generator[i]``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vidiff.conditioning import CLIPImageEmbedder, Cond, Conditioner
from vidiff.diffusion import (
    CFGDenoiser,
    Denoiser,
    KnownValuesDenoiser,
    frame_scales,
    initial_noise_scale,
    karras_sigmas,
    per_frame,
    sampler_by_name,
)
from vidiff.networks.fast import FastPath, apply_fast_path
from vidiff.pipelines.loading import LoadedModel, load_model, scaling_for_scheduler
from vidiff.pipelines.lora import CameraMixin, LoRAMixin
from vidiff.pipelines.memory import (
    MemoryPlan,
    ModelFootprint,
    RunShape,
    check_fits,
    format_bytes,
    network_shape,
    plan_for_budget,
)
from vidiff.pipelines.offload import (
    SequentialOffload,
    available_device,
    device_memory,
    largest_leaf_params,
    on_device,
)
from vidiff.pipelines.settings import FAMILIES, GenerationSettings, ModelFamily, default_settings, sgm_image_size
from vidiff.utils import randn

logger = logging.getLogger(__name__)

ImageInput = PIL.Image.Image | torch.Tensor | np.ndarray | Sequence[PIL.Image.Image | torch.Tensor | np.ndarray]
# a decoded image: 8-bit (PIL) or float ``(3, H, W)`` in [0, 1], used as given
Image = PIL.Image.Image | torch.Tensor


@dataclass
class ImageToVideoOutput:
    """``frames``: ``(B, T, 3, H, W)`` in [0, 1] for ``"pt"``, ``(B, T, H, W, 3)`` for ``"np"``, lists of PIL
    images for ``"pil"``, latents for ``"latent"``; ``settings``: every resolved setting; ``run``: every
    other input that changes the result (device, dtypes, memory plan, fast path: see
    :meth:`ImageToVideoPipeline.run_record`). ``output[0]`` is ``frames``, as in diffusers' outputs."""

    frames: Any
    settings: GenerationSettings
    memory_plan: MemoryPlan
    run: dict[str, Any]

    def to_tuple(self) -> tuple[Any, ...]:
        return (self.frames,)

    def __getitem__(self, index: int | slice) -> Any:
        return self.to_tuple()[index]


def bundled_model_path() -> Path | None:
    """The model shipped inside the package (``vidiff/assets/default_model``), if installed."""
    path = Path(__file__).resolve().parents[1] / "assets" / "default_model"
    return path if (path / "vidiff.json").is_file() else None


def bundled_example_path() -> Path:
    """The example photograph shipped with the package (``vidiff/assets/example.png``, a crop of
    scikit-image's ``chelsea.png``): what ``make generate`` and ``vidiff bench`` animate by default."""
    return Path(__file__).resolve().parents[1] / "assets" / "example.png"


def image_list(image: ImageInput) -> list[Image]:
    """The batch ``image`` stands for, one entry per image: PIL RGB images (PIL input, HWC uint8 arrays) or
    float ``(3, H, W)`` tensors in [0, 1] (float tensors ``(3, H, W)`` / ``(B, 3, H, W)`` and float
    ``(H, W, 3)`` / ``(B, H, W, 3)`` arrays), kept at full precision as diffusers uses them."""
    if isinstance(image, (list, tuple)):
        if not image:
            raise ValueError("image is an empty list: give at least one image")
        return [one for item in image for one in image_list(item)]
    if isinstance(image, PIL.Image.Image):
        if image.width < 1 or image.height < 1:
            raise ValueError(f"image has size {image.width}x{image.height}: it must be at least 1x1 pixels")
        return [image.convert("RGB")]
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] in (3, 4):
            return image_list(PIL.Image.fromarray(image))
        if not np.issubdtype(image.dtype, np.floating) or image.ndim not in (3, 4) or image.shape[-1] != 3:
            raise ValueError("image array must be (H, W, 3) uint8, or float (H, W, 3) / (B, H, W, 3) in [0, 1]; "
                             f"got {image.dtype} {image.shape}")
        t = torch.from_numpy(np.ascontiguousarray(image))
        return image_list(t.permute(2, 0, 1) if t.ndim == 3 else t.permute(0, 3, 1, 2))
    if isinstance(image, torch.Tensor):
        t = image.detach()
        if t.ndim not in (3, 4) or t.shape[-3] != 3:
            raise ValueError(f"image tensor must be (3, H, W) or (B, 3, H, W) in [0, 1], got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"image tensor must be floating point in [0, 1], got dtype {t.dtype}")
        if t.shape[-1] < 1 or t.shape[-2] < 1 or t.numel() == 0:
            raise ValueError(f"image tensor has size {t.shape[-1]}x{t.shape[-2]} (shape {tuple(t.shape)}): it must "
                             "be at least 1x1 pixels")
        t = t.cpu().float()
        if not torch.isfinite(t).all():
            raise ValueError("image tensor contains NaN or infinite values")
        lo, hi = float(t.min()), float(t.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"image tensor values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]")
        return list(t) if t.ndim == 4 else [t]
    raise TypeError(f"image must be a PIL image, a tensor, a numpy array or a list of them, got {type(image).__name__}")


def _pil_to_tensor(image: PIL.Image.Image) -> torch.Tensor:
    """``(1, 3, H, W)`` float32 in [0, 1] (x/255, as diffusers' image processor)."""
    arr = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


class ImageToVideoPipeline(LoRAMixin, CameraMixin):
    """SVD / SVD-XT / SV3D image-to-video. Build with :meth:`from_pretrained`, run with ``pipe(image, ...)``.

    ``dtype`` applies to every component, as diffusers' ``torch_dtype``; ``vae_dtype`` keeps the VAE in
    another one (e.g. float32 under a float16 UNet: the CLI does so).
    """

    _callback_tensor_inputs: ClassVar[tuple[str, ...]] = ("latents",)  # what callback_on_step_end may replace

    def __init__(self, model: LoadedModel, *, family: ModelFamily, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", fast_path: FastPath | None = None,
                 vae_dtype: torch.dtype | None = None) -> None:
        self.model = model
        self.family = family
        # the model's own defaults (vidiff.json ``generation_defaults``) win over its family's
        self.model_defaults = GenerationSettings.from_dict(dict(model.extra.get("generation_defaults") or {}))
        self.residual = bool(model.extra.get("residual", False))
        self.dtype = dtype
        self.vae_dtype = vae_dtype
        self.device = torch.device(device)
        self.unet = model.unet
        self.vae = model.vae
        self.clip = None
        if model.image_encoder is not None:
            self.clip = CLIPImageEmbedder(model.image_encoder, mean=model.image_mean, std=model.image_std)
        self._cast()
        self._progress_bar_config: dict[str, Any] = {}
        self._num_timesteps = 0
        ucfg = self.unet.config
        self.conditioner = Conditioner(self.clip, self._encode_image, scalar_keys=family.scalar_keys,
                                       scalar_dim=ucfg.addition_time_embed_dim,
                                       crossattn_dim=ucfg.cross_attention_dim)
        sched = model.scheduler_config
        self.sigma_min = float(sched.get("sigma_min", family.sigma_min))
        self.sigma_max = float(sched.get("sigma_max", family.sigma_max))
        self.scaling = scaling_for_scheduler(sched)
        self._offload = "none"
        self._sequential: list[SequentialOffload] = []
        self.decode_split: Callable[..., torch.Tensor] | None = None  # vidiff.parallel.parallelize_decode
        self.fast_path = fast_path or FastPath()
        self._place("none")
        self.set_fast_path(self.fast_path)

    def _cast(self) -> None:
        """Every component in ``dtype`` (the VAE in ``vae_dtype`` when that is set)."""
        self.unet.to(dtype=self.dtype)
        self.vae.to(dtype=self.vae_dtype or self.dtype)
        if self.clip is not None:  # its normalisation constants stay float32, as diffusers' image processor
            self.clip.encoder.to(dtype=self.dtype)

    def to(self, *args: str | torch.device | torch.dtype, device: str | torch.device | None = None,
           dtype: torch.dtype | None = None, vae_dtype: torch.dtype | None = None) -> ImageToVideoPipeline:
        """Move to a device and/or cast every component, as diffusers' ``pipe.to(device, dtype)``
        (positional device and dtype in either order); returns the pipeline."""
        for arg in args:
            if isinstance(arg, torch.dtype):
                dtype = arg
            else:
                device = arg
        if device is not None:
            self.device = available_device(device)
        self.dtype = dtype or self.dtype
        self.vae_dtype = vae_dtype or self.vae_dtype
        self._cast()
        self._place(self._offload)
        self.set_fast_path(self.fast_path)  # fused projections are snapshots of the weights: take them again
        return self

    @property
    def components(self) -> dict[str, Any]:
        """The model's parts under diffusers' names: modules for ``unet``, ``vae``, ``image_encoder`` (when the
        model has one), configs for ``scheduler`` and ``feature_extractor``."""
        parts: dict[str, Any] = {"unet": self.unet, "vae": self.vae}
        if self.clip is not None:
            parts["image_encoder"] = self.clip.encoder
        parts["scheduler"] = dict(self.model.scheduler_config)
        parts["feature_extractor"] = {"image_mean": list(self.model.image_mean),
                                      "image_std": list(self.model.image_std)}
        return parts

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """Options for the progress bars (``tqdm`` keyword arguments, e.g. ``disable=True``), as diffusers."""
        self._progress_bar_config = dict(kwargs)

    @property
    def num_timesteps(self) -> int:
        """Denoising steps of the current (or last) call, as diffusers' pipelines expose it."""
        return self._num_timesteps

    def run_record(self, plan: MemoryPlan) -> dict[str, Any]:
        """Everything besides the settings and the inputs that changes what a run computes, for a sidecar:
        device, dtypes, the memory plan (offload, decode chunk, attention chunk, VAE tiling and its tile
        size), the UNet's fast path and the torch version."""
        vae_tiles = None
        if plan.vae_tiling and hasattr(self.vae, "tile_latent_size"):
            vae_tiles = {"tile_latent_size": self.vae.tile_latent_size,
                         "tile_latent_overlap": self.vae.tile_latent_overlap}
        return {
            "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
            "vae_dtype": str(self.vae.dtype).removeprefix("torch."), "memory_plan": plan.describe(),
            "offload": plan.offload, "decode_chunk_size": plan.decode_chunk_size,
            "attention_chunk": plan.attention_chunk, "vae_tiling": plan.vae_tiling, "vae_tiles": vae_tiles,
            "fast_path": self.fast_path.describe(), "torch": torch.__version__,
        }

    def set_fast_path(self, fast: FastPath) -> None:
        """Switch the UNet's inference speed settings (fused projections, channels-last, compilation; see
        ``vidiff.networks.fast``): they change how it runs, not what it computes."""
        self.fast_path = fast
        if self._offload == "sequential" and fast.fuse_projections:
            # sequential offload moves leaf modules' weights: fused copies of them would stay behind
            fast = replace(fast, fuse_projections=False)
        apply_fast_path(self.unet, fast)

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu", model_type: str | None = None,
                        num_frames: int | None = None, fast_path: FastPath | None = None,
                        vae_dtype: torch.dtype | None = None) -> ImageToVideoPipeline:
        """Load a diffusers folder, an original single-file ``.safetensors`` or a vidiff folder.

        ``dtype`` applies to every component (diffusers' ``torch_dtype``), the VAE's ``vae_dtype`` when
        given; ``fast_path``: the UNet's speed settings (default ``FastPath()``: fused attention projections)."""
        device = available_device(device)
        model = load_model(path, num_frames=num_frames)
        # the model's own defaults, checked here where the file holding them can be named
        GenerationSettings.from_dict(model.extra.get("generation_defaults") or {},
                                     source=f"{Path(path) / 'vidiff.json'}: generation_defaults")
        hint = model_type or (model.model_type if model.model_type in FAMILIES else None)
        family = FAMILIES[hint] if hint else FAMILIES["svd"]
        unet_frames = model.unet.config.num_frames
        family = replace(family, num_frames=unet_frames or family.num_frames)
        if size := model.extra.get("default_size"):
            family = replace(family, height=size[0], width=size[1])
        own = model.extra.get("generation_defaults") or {}
        family = replace(family, **{k: own[k] for k in ("height", "width", "num_frames") if own.get(k)})
        pipe = cls(model, family=family, dtype=dtype, device=device, fast_path=fast_path, vae_dtype=vae_dtype)
        if cls is ImageToVideoPipeline and family.name.startswith("sv3d"):  # orbits: the camera-aware pipeline
            from vidiff.pipelines.sv3d import SV3DPipeline

            pipe = SV3DPipeline.from_pipeline(pipe)
        return pipe

    # -- placement and memory controls -------------------------------------------------------------

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
            vae_channels=vae_channels, latent_channels=cfg.out_channels, **network_shape(cfg),
            largest_layer_params=max(largest_leaf_params(m) for m in (self.unet, self.vae)),
            unet_in_channels=cfg.in_channels,
            vae_tile=getattr(self.vae, "tile_latent_size", 64) * self.vae.config.downsample_factor,
        )

    # -- stages ------------------------------------------------------------------------------------

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

    def _resolve(self, settings: GenerationSettings, image_size: tuple[int, int] | None = None) -> GenerationSettings:
        behaviour = settings.behaviour or "diffusers"
        resolved = self.default_settings(behaviour)
        if behaviour == "sgm" and image_size is not None and None in (settings.height, settings.width):
            resolved = resolved.merged(sgm_image_size(self.family, image_size))  # (width, height) of the image
        resolved = resolved.merged(settings)
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
                     vae_tiling: bool, attention_chunk: int | None, batch: int = 1) -> MemoryPlan:
        explicit = MemoryPlan(offload=offload or "none", decode_chunk_size=s.decode_chunk_size,
                              attention_chunk=attention_chunk, vae_tiling=vae_tiling)
        run = RunShape(batch=batch, num_frames=s.num_frames, height=s.height, width=s.width,
                       guidance=s.max_guidance_scale > 1, bytes_per_element=torch.finfo(self.dtype).bits // 8,
                       vae_bytes_per_element=torch.finfo(self.vae.dtype).bits // 8,
                       downsample=self.vae.config.downsample_factor, decode_overlap=s.decode_overlap or 0,
                       device_type=self.device.type)
        if max_memory is None:  # refuse what cannot fit the device even with every control, before any work
            check_fits(self.footprint(), run, device_memory(self.device), f"device {self.device}")
            return explicit
        plan, peak = plan_for_budget(self.footprint(), run, max_memory)
        logger.info("max_memory=%s: chose %s (predicted peak %s)", max_memory, plan.describe(), format_bytes(peak))
        return plan

    # -- the call ----------------------------------------------------------------------------------

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
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        return_dict: bool = True,
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
    ) -> ImageToVideoOutput | tuple[Any]:
        """Generate ``num_frames`` frames from each image; arguments follow diffusers' SVD pipeline.

        ``image``: a PIL image, a float tensor ``(3, H, W)`` / ``(B, 3, H, W)`` in [0, 1] (used as given), an
        array, or a list of them; each gives ``num_videos_per_prompt`` videos. ``generator``: one, or one per
        video (a list of ``B·num_videos_per_prompt``); it wins over ``seed``; with neither, seed 0 is used
        so every run is repeatable from its settings. ``latents``: initial noise of shape
        ``(B·num_videos_per_prompt, T, C, h, w)``, scaled by the initial noise sigma as diffusers does.
        ``callback_on_step_end(pipe, i, t, tensors) -> tensors``: after each step, with
        ``callback_on_step_end_tensor_inputs`` of :attr:`_callback_tensor_inputs` (``t`` is the network's
        time input, diffusers' timestep); a returned ``latents`` replaces the state. ``callback``: vidiff's
        per-step dict (see ``vidiff.diffusion.samplers``). Unset arguments take the model's defaults
        (``behaviour="sgm"`` selects Stability's). ``return_dict=False`` returns ``(frames,)``.
        """
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be one of pil, np, pt, latent; got {output_type!r}")
        if type(num_videos_per_prompt) is not int or num_videos_per_prompt < 1:
            raise ValueError(f"num_videos_per_prompt must be an integer >= 1, got {num_videos_per_prompt!r}")
        unknown = sorted(set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs))
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs {unknown} not available; "
                             f"choose from {self._callback_tensor_inputs}")
        given = GenerationSettings(
            height=height, width=width, num_frames=num_frames, num_inference_steps=num_inference_steps,
            min_guidance_scale=min_guidance_scale, max_guidance_scale=max_guidance_scale, fps=fps,
            motion_bucket_id=motion_bucket_id, noise_aug_strength=noise_aug_strength,
            decode_chunk_size=decode_chunk_size, decode_overlap=decode_overlap, sampler=sampler, seed=seed,
            behaviour=behaviour)
        images = image_list(image)
        first = images[0]
        size = first.size if isinstance(first, PIL.Image.Image) else (first.shape[-1], first.shape[-2])
        s = self._resolve((settings or GenerationSettings()).merged(given), size)
        n_videos = len(images) * num_videos_per_prompt
        if isinstance(generator, (list, tuple)) and len(generator) != n_videos:
            raise ValueError(f"{len(generator)} generators given for {n_videos} videos ({len(images)} images x "
                             f"num_videos_per_prompt={num_videos_per_prompt}): pass one per video, or one")
        plan = self._choose_plan(s, offload=offload, max_memory=max_memory, vae_tiling=vae_tiling,
                                 attention_chunk=attention_chunk, batch=n_videos)
        if plan.offload != self._offload:
            self._place(plan.offload)
        if generator is None:
            generator = torch.Generator("cpu").manual_seed(s.seed)
        resized = torch.cat([image_at_size(im, s.height, s.width) for im in images])
        # noise augmentation: one draw for the batch of images, or image i from generator[i] (as diffusers)
        aug_generator = generator[: len(images)] if isinstance(generator, (list, tuple)) else generator
        cond, uncond = self._condition(images, resized, s, aug_generator)
        cond, uncond = _repeat(cond, num_videos_per_prompt), _repeat(uncond, num_videos_per_prompt)
        resized = resized.repeat_interleave(num_videos_per_prompt, dim=0)

        step_end = None
        if callback_on_step_end is not None:
            def step_end(info: dict[str, Any]) -> dict[str, Any]:
                t = self.scaling(torch.tensor([info["sigma"]], dtype=torch.float64)).c_noise[0].float()
                wanted = set(callback_on_step_end_tensor_inputs)  # validated: a subset of ("latents",)
                out = callback_on_step_end(self, info["i"], t, {"latents": info["x"]} if "latents" in wanted else {})
                return {"x": (out or {}).get("latents")}

        x = self._denoise(cond, uncond, s, plan, generator, latents, callback, step_end, progress)
        if self.residual:  # the model denoised the video minus the image's latents: add them back
            x = x + self._image_latents(resized)[:, None].to(x.dtype)
        if output_type == "latent":
            frames = x
        else:
            # a flow autoencoder decodes by warping the conditioning image (FlowWarpAutoencoder)
            reference = resized if getattr(self.vae, "reference_conditioned", False) else None
            frames = frames_to_output(self._decode(x, s, plan, progress, reference), output_type)
        if not return_dict:
            return (frames,)
        return ImageToVideoOutput(frames, s, plan, self.run_record(plan))

    def _condition(self, images: list[Image], resized: torch.Tensor, s: GenerationSettings,
                   generator: torch.Generator | Sequence[torch.Generator]) -> tuple[Cond, Cond]:
        """``(cond, uncond)`` for a batch of images; ``resized``: the images at the output size in [-1, 1]."""
        if s.behaviour == "sgm":
            clip_input = resized
        else:  # diffusers: CLIP sees the original resolution (a tensor: as given)
            full = [_pil_to_tensor(im) if isinstance(im, PIL.Image.Image) else im[None] for im in images]
            sizes = {tuple(t.shape[-2:]) for t in full}
            if len(sizes) > 1:
                raise ValueError(f"the images of a batch must share one size (CLIP sees them whole), got "
                                 f"{sorted((w, h) for h, w in sizes)} (width, height)")
            clip_input = torch.cat(full) * 2 - 1
        with on_device(self.clip, self.device, self._offload):
            cond, uncond = self.conditioner(
                resized.to(self.device), clip_image=clip_input.to(self.device), num_frames=s.num_frames,
                fps=s.fps, motion_bucket_id=s.motion_bucket_id, noise_aug_strength=s.noise_aug_strength,
                generator=generator, dtype=self.dtype)
        return cond, uncond

    def _image_latents(self, resized: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``(B, C, h, w)`` of the clean conditioning images at the output size."""
        with on_device(self.vae, self.device, self._offload):
            return self.vae.encode_latents(resized.to(self.device)).float()

    def _bar(self, progress: bool, **kwargs: Any) -> tqdm:
        return tqdm(**{"disable": not progress, "leave": False, **kwargs, **self._progress_bar_config})

    def _denoise(self, cond: Cond, uncond: Cond, s: GenerationSettings, plan: MemoryPlan,
                 generator: torch.Generator | Sequence[torch.Generator], latents: torch.Tensor | None,
                 callback: Callable[[dict[str, Any]], None] | None,
                 step_end: Callable[[dict[str, Any]], dict[str, Any]] | None, progress: bool) -> torch.Tensor:
        sigmas = karras_sigmas(s.num_inference_steps, self.sigma_min, self.sigma_max, self.family.rho)
        c = self.unet.config.out_channels
        f = self.vae.config.downsample_factor
        shape = (cond.batch_size, s.num_frames, c, s.height // f, s.width // f)
        if latents is None:  # drawn in the model's dtype on the generator's device, as diffusers' randn_tensor
            latents = randn(shape, generator, device=self.device, dtype=self.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape} (videos, frames, channels, height/{f}, width/{f}), "
                             f"got {tuple(latents.shape)}")
        # diffusers multiplies the initial latents, drawn or given, by the scheduler's init_noise_sigma
        x = latents.to(self.device).float() * initial_noise_scale(sigmas)
        ramp = frame_scales(self.family.guidance_ramp, s.min_guidance_scale, s.max_guidance_scale, s.num_frames)
        scales = per_frame(ramp).to(self.device)
        denoiser = Denoiser(self.unet, self.scaling)
        if s.max_guidance_scale > 1:  # diffusers batches [uncond, cond] whenever the ramp exceeds 1
            denoiser = CFGDenoiser(denoiser, uncond, scales)
        if getattr(self.vae, "zero_first_latent", False):  # frame 0 is the reference: its latent is known
            first = torch.zeros(1, s.num_frames, 1, 1, 1, dtype=torch.bool, device=self.device)
            first[:, 0] = True
            denoiser = KnownValuesDenoiser(denoiser, first, 0.0)
        self._num_timesteps = s.num_inference_steps
        bar = self._bar(progress, total=s.num_inference_steps, desc="denoising")

        def report(info: dict[str, Any]) -> dict[str, Any] | None:
            bar.update(1)
            if callback is not None:
                callback(info)
            return step_end(info) if step_end is not None else None

        sample = sampler_by_name(s.sampler)
        with on_device(self.unet, self.device, self._offload), self.unet_chunking(plan.attention_chunk):
            x = sample(denoiser, x, sigmas.to(self.device), cond=cond, callback=report, generator=generator)
        bar.close()
        return x

    def unet_chunking(self, attention_chunk: int | None):
        if attention_chunk is None or not hasattr(self.unet, "chunked"):
            return nullcontext()
        return self.unet.chunked(attention_chunk)

    def _decode(self, x: torch.Tensor, s: GenerationSettings, plan: MemoryPlan, progress: bool,
                reference: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {} if reference is None else {"reference": reference.to(self.device)}
        progress = progress and not self._progress_bar_config.get("disable", False)
        with on_device(self.vae, self.device, self._offload):  # split over the ranks with decode_split
            return (self.decode_split or self.vae.decode_latents)(
                x.float(), chunk_size=plan.decode_chunk_size, overlap=s.decode_overlap or 0,
                tiled=plan.vae_tiling, progress=progress, **kwargs)


def image_at_size(image: Image, height: int, width: int) -> torch.Tensor:
    """The conditioning image at the output size, ``(1, 3, H, W)`` in [-1, 1], resized as diffusers' image
    processor does: Lanczos for PIL images, nearest-neighbour interpolation for float tensors."""
    if isinstance(image, PIL.Image.Image):
        return _pil_to_tensor(image.resize((width, height), resample=PIL.Image.LANCZOS)) * 2 - 1
    return F.interpolate(image[None], size=(height, width)) * 2 - 1


def _repeat(cond: Cond, n: int) -> Cond:
    """Each video's conditioning ``n`` times in a row (``num_videos_per_prompt``)."""
    if n == 1:
        return cond
    return Cond(**{f.name: None if (t := getattr(cond, f.name)) is None else t.repeat_interleave(n, dim=0)
                   for f in fields(cond)})


def frames_to_output(frames: torch.Tensor, output_type: str) -> Any:
    """``(B, T, 3, H, W)`` in [-1, 1] -> [0, 1] as the requested type (diffusers' rounding for PIL)."""
    video = (frames.float() / 2 + 0.5).clamp(0, 1).cpu()
    if output_type == "pt":
        return video
    arr = video.permute(0, 1, 3, 4, 2).numpy()
    if output_type == "np":
        return arr
    return [[PIL.Image.fromarray((f * 255).round().astype(np.uint8)) for f in clip] for clip in arr]
