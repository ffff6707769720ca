"""What is trained and how a batch becomes its inputs: model bundle, dataset, batch preparation, export.

Two sources (``ModelConfig``):

* **preset** (from scratch): a UNet preset with random weights and **no autoencoder** — pixel space:
  latents are the frames themselves in [-1, 1] (``in_channels = 2·3``, ``out_channels = 3``) and the concat
  condition is the noise-augmented conditioning image; or a parameter-free one: ``patch`` (pixels folded
  into ``p × p`` patches) or ``flow`` (latents = each frame's flow back to frame 0, exact for synthetic
  camera moves and estimated for real clips; frames = the conditioning image warped by it; the concat
  condition is the image's folded patches). No CLIP encoder: the cross-attention context is a
  zero token of ``cross_attention_dim`` (the conditioning image still reaches the model through the concat
  channels). Small enough to train on a CPU in seconds.
* **init_from** (fine-tuning): an SVD-class checkpoint loaded by the pipeline's strict loader
  (``vidiff.pipelines.loading.load_model``, isolated in :func:`load_pretrained`); its VAE and CLIP image
  encoder stay frozen.
  As SVD (Blattmann et al. 2023): ``x₀`` = VAE mode of every frame × 0.18215; concat = *unscaled* VAE mode of
  the noise-augmented first frame, the same for every frame; crossattn = the CLIP image embedding of the
  clean conditioning image; vector = sinusoids of ``[fps − 1, motion_bucket_id, noise_aug_strength]``.
  Orbit items (``data.dataset: orbits``, ``vidiff.training.orbits``) carry each frame's camera and make the
  model an SV3D_p (Voleti et al. 2024): vector = ``sv3d_camera_vector`` per frame, ``(B, T, 1280)``, or with
  ``model.camera: false`` an SV3D_u: vector = the noise-augmentation sinusoid ``(B, 256)``.

CFG dropout (Ho & Salimans 2022; sgm ``GeneralConditioner.ucg_rate``): per sample, with probability
``loss.ucg_rate``, the CLIP token and the concat latent are zeroed — exactly the unconditional branch the
sampler uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vidiff.conditioning import Cond, drop_conditions, embed_scalars, noise_augment, sv3d_camera_vector
from vidiff.diffusion.scalings import SCALINGS
from vidiff.diffusion.schedules import DiscreteSchedule, beta_schedule_config
from vidiff.networks.motion import MotionPredictor, MotionPredictorConfig
from vidiff.networks.unet_st import UNET_PRESETS, UNetSpatioTemporal
from vidiff.training.config import DataConfig, LossConfig, ModelConfig

PIXEL_CHANNELS = 3
SV3D_P_VECTOR = UNET_PRESETS["sv3d_p"].projection_class_embeddings_input_dim  # 1280: the camera is in the vector


@dataclass
class ModelBundle:
    """The trained UNet, the optional motion head, and the frozen encoders around them."""

    unet: nn.Module
    motion_head: nn.Module | None = None
    vae: nn.Module | None = None
    image_encoder: nn.Module | None = None
    pipeline: Any = None  # the loaded checkpoint (``LoadedModel``) when fine-tuning
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def unet_config(self) -> Any:
        return self.unet.config

    def to(self, device: torch.device) -> ModelBundle:
        for m in (self.unet, self.motion_head, self.vae, self.image_encoder):
            if m is not None:
                m.to(device)
        return self

    def enable_gradient_checkpointing(self) -> None:
        if hasattr(self.unet, "enable_gradient_checkpointing"):
            self.unet.enable_gradient_checkpointing()
        else:
            self.unet.gradient_checkpointing = True


def _freeze(m: nn.Module | None) -> None:
    if m is not None:
        m.eval()
        m.requires_grad_(False)


def load_pretrained(path: str) -> Any:
    """Load an SVD-class checkpoint (diffusers folder, single file or vidiff folder) with the pipeline's
    strict loader (``vidiff.pipelines.loading.load_model``): UNet, VAE, CLIP image encoder, CLIP mean/std."""
    from vidiff.pipelines.loading import load_model

    return load_model(path)


def build_models(cfg: ModelConfig, data: DataConfig, *, seed: int, flow: bool = False) -> ModelBundle:
    """Build the bundle: fresh preset (pixel space) or a checkpoint to fine-tune. Same weights on every
    rank (seeded here)."""
    torch.manual_seed(seed)
    if cfg.init_from is not None:
        loaded = load_pretrained(cfg.init_from)
        if cfg.autoencoder != "checkpoint":
            raise ValueError("model.autoencoder=none with model.init_from: a checkpoint UNet works in latent "
                             "space; use model.autoencoder=checkpoint")
        enc = loaded.image_encoder if cfg.image_encoder == "checkpoint" else None
        clip = None
        if enc is not None:
            from vidiff.conditioning import CLIPImageEmbedder

            clip = CLIPImageEmbedder(enc.float(), mean=loaded.image_mean, std=loaded.image_std)
        bundle = ModelBundle(unet=loaded.unet.float(), vae=loaded.vae.float(), image_encoder=clip,
                             pipeline=loaded)
    else:
        if cfg.backbone == "unet" and cfg.preset not in UNET_PRESETS:
            raise ValueError(f"model.preset {cfg.preset!r} is not one of {sorted(UNET_PRESETS)}")
        vae = None
        channels = concat_channels = PIXEL_CHANNELS
        if cfg.autoencoder in ("patch", "flow"):
            from vidiff.autoencoders import FlowWarpAutoencoder, FlowWarpConfig, PatchAutoencoder, PatchConfig

            if cfg.autoencoder == "flow":
                vae = FlowWarpAutoencoder(FlowWarpConfig(patch_size=cfg.patch_size, in_channels=PIXEL_CHANNELS,
                                                         flow_scale=cfg.flow_scale))
            else:
                vae = PatchAutoencoder(PatchConfig(patch_size=cfg.patch_size, in_channels=PIXEL_CHANNELS))
            channels, concat_channels = vae.config.latent_channels, vae.config.condition_channels
        sizes = {k: getattr(cfg, k) for k in ("block_out_channels", "layers_per_block", "num_attention_heads",
                                              "cross_attention_dim", "addition_time_embed_dim")
                 if getattr(cfg, k) is not None}
        if "addition_time_embed_dim" in sizes:
            sizes["projection_class_embeddings_input_dim"] = 3 * sizes["addition_time_embed_dim"]
        if data.dataset == "orbits":  # SV3D_p: cond_aug 256 + polar 512 + azimuth 512 per frame; SV3D_u: cond_aug
            sv3d = UNET_PRESETS["sv3d_p" if cfg.camera else "sv3d_u"]
            sizes["projection_class_embeddings_input_dim"] = sv3d.projection_class_embeddings_input_dim
            sizes["addition_time_embed_dim"] = sv3d.addition_time_embed_dim
        if cfg.backbone == "dit":  # Wan's transformer in the UNet's place (vidiff.training.dit)
            from vidiff.training.dit import build_dit, check_dit_shapes

            check_dit_shapes(cfg, data, vae.config.downsample_factor if vae is not None else 1)
            net: nn.Module = build_dit(cfg, data, channels=channels, concat_channels=concat_channels)
        else:
            net = UNetSpatioTemporal(UNET_PRESETS[cfg.preset].replace(
                in_channels=channels + concat_channels, out_channels=channels, num_frames=data.num_frames, **sizes))
        bundle = ModelBundle(unet=net, vae=vae)
    # σ range of pixel/patch-space pipelines (ModelConfig.sigma_max / sigma_min): EDM's 80 (Karras et al. 2022, Table 1)
    # already drowns unit-scale pixels; SVD's 700 is for its latents.
    bundle.extra.update({"residual": cfg.residual, "height": data.height, "width": data.width,
                         "num_frames": data.num_frames, "sigma_max": cfg.sigma_max, "sigma_min": cfg.sigma_min})
    _freeze(bundle.vae)
    _freeze(bundle.image_encoder)
    if flow:
        channels = bundle.unet_config.out_channels
        groups = 8 if cfg.motion_head_channels % 8 == 0 else 1
        bundle.motion_head = MotionPredictor(MotionPredictorConfig(
            in_channels=channels, hidden_channels=cfg.motion_head_channels, groups=groups))
    return bundle


# -- data -----------------------------------------------------------------------------------------------
def build_dataset(cfg: DataConfig, *, seed: int) -> torch.utils.data.Dataset:
    """The dataset ``cfg.dataset`` names (``vidiff.training.data``); items depend only on
    ``(seed, epoch, index)`` (``set_epoch``), which exact resume relies on."""
    from vidiff.training import data as data_mod

    size = (cfg.height, cfg.width)
    extra: dict[str, Any] = {"motion_bucket_scale": cfg.motion_bucket_scale}
    if cfg.fps is not None:
        extra["fps"] = cfg.fps
    if cfg.dataset == "mixture":
        sources = [_component_dataset(c, cfg, seed=seed + 1000 * (i + 1), extra=extra)
                   for i, c in enumerate(cfg.components)]
        return data_mod.MixtureDataset(sources, [c.weight for c in cfg.components], num_samples=cfg.num_samples,
                                       seed=seed)
    if cfg.dataset == "orbits":  # SV3D orbits (vidiff.training.orbits): a folder with camera sidecars, or rendered
        from vidiff.training import orbits

        if cfg.root:
            return orbits.OrbitFolderDataset(cfg.root, cfg.num_frames, size)
        return orbits.SyntheticOrbitDataset(cfg.num_samples, cfg.num_frames, size, seed=seed)
    if cfg.dataset == "video_folder":
        return data_mod.VideoFolderDataset(cfg.root, num_frames=cfg.num_frames, size=size, seed=seed,
                                           motion_bucket_id=cfg.motion_bucket_id, **extra)
    cls = data_mod.CameraMoveDataset if cfg.dataset == "camera_move" else data_mod.MovingShapesDataset
    return cls(num_samples=cfg.num_samples, num_frames=cfg.num_frames, size=size, seed=seed, **extra)


def _component_dataset(c: Any, cfg: DataConfig, *, seed: int, extra: dict[str, Any]) -> torch.utils.data.Dataset:
    """One source of a mixture (``vidiff.training.config.MixtureComponent``)."""
    from vidiff.training import data as data_mod

    size = (cfg.height, cfg.width)
    n = c.num_samples or cfg.num_samples
    if c.dataset == "video_folder":
        return data_mod.VideoFolderDataset(data_mod.resolve_root(c.root), num_frames=cfg.num_frames, size=size,
                                           seed=seed, motion_bucket_id=cfg.motion_bucket_id,
                                           flow_width=c.flow_width, flow_pairs=c.flow_pairs,
                                           clips_per_video=c.clips_per_video, crop=c.crop,
                                           exclude=c.exclude_videos, **extra)
    if c.dataset == "moving_shapes":
        return data_mod.MovingShapesDataset(num_samples=n, num_frames=cfg.num_frames, size=size, seed=seed,
                                            **extra)
    if c.images == "skimage":
        images: list[Any] = list(data_mod.skimage_photographs(exclude=c.exclude))
    else:
        images = data_mod.video_frames(data_mod.resolve_root(c.root), c.frames_per_video)
    if not images:
        raise ValueError(f"camera_move source ({c.images}) found no images")
    return data_mod.CameraMoveDataset(images, num_frames=cfg.num_frames, size=size, num_samples=n, seed=seed,
                                      strength=tuple(c.strength), crop_fraction=tuple(c.crop_fraction),
                                      jitter=c.jitter, max_angle=c.max_angle, max_pan=c.max_pan,
                                      pan_angle=c.pan_angle, moves=c.moves, **extra)


def _collate(items: list[dict[str, Any]], device: torch.device) -> dict[str, torch.Tensor]:
    video = torch.stack([torch.as_tensor(it["video"], dtype=torch.float32) for it in items]).to(device)
    cond_image = torch.stack([torch.as_tensor(it.get("cond_image", it["video"][0]), dtype=torch.float32)
                              for it in items]).to(device)
    fps = torch.tensor([float(it["fps"]) for it in items], device=device)
    mbid = torch.tensor([float(it["motion_bucket_id"]) for it in items], device=device)
    batch = {"video": video, "cond_image": cond_image, "fps": fps, "motion_bucket_id": mbid,
             "flows": [it.get("flow") for it in items]}
    if "azimuths_deg" in items[0]:  # orbits: the camera of every frame (vidiff.training.orbits)
        for key in ("elevations_deg", "azimuths_deg"):
            batch[key] = torch.stack([torch.as_tensor(it[key], dtype=torch.float64) for it in items]).to(device)
    return batch


@torch.no_grad()
def _flows_to_first(video: torch.Tensor, known: list[Any]) -> torch.Tensor:
    """Flows of every frame to frame 0, ``(B, T, 2, H, W)``: an item's exact flow where its dataset knows it
    (synthetic camera moves), else estimated from ``video (B, T, 3, H, W)`` in [-1, 1]
    (``vidiff.metrics.flow.flow_to_first``)."""
    from vidiff.metrics.flow import flow_to_first

    return torch.stack([torch.as_tensor(f, dtype=torch.float32).to(v.device) if f is not None
                        else flow_to_first((v.float() + 1) / 2) for f, v in zip(known, video)])


@torch.no_grad()
def _encode_mode(vae: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Unscaled VAE latent (mode of the posterior) of ``pixels (N, 3, H, W)``."""
    return vae.encode(pixels).mode()


@torch.no_grad()
def _clip_embed(embedder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """CLIP image token ``(B, 1, D)`` of ``images (B, 3, H, W)`` in [-1, 1] (``CLIPImageEmbedder``)."""
    emb = embedder(images)
    return emb if emb.ndim == 3 else emb[:, None]


def prepare_batch(bundle: ModelBundle, items: list[dict[str, Any]], device: torch.device
                  ) -> tuple[torch.Tensor, Callable[[Any], Cond], tuple[int, ...]]:
    """Encode a list of dataset items.

    Returns ``x0 (B, T, C, h, w)`` (scaled latents, or pixels in pixel space), a function building the
    :class:`Cond` from the per-sample draws (noise augmentation and CFG dropout), and the shape of the
    conditioning image (for its augmentation noise).
    """
    batch = _collate(items, device)
    video, image = batch["video"], batch["cond_image"]
    b, t = video.shape[:2]
    ucfg = bundle.unet_config
    if getattr(bundle.vae, "reference_conditioned", False):  # flow latents: each frame's flow to frame 0
        flow = _flows_to_first(video, batch["flows"])
        x0 = bundle.vae.encode_flow(flow.flatten(0, 1)) * bundle.vae.scaling_factor
        x0 = x0.reshape(b, t, *x0.shape[1:])
        crossattn = torch.zeros(b, 1, ucfg.cross_attention_dim, device=device)
    elif bundle.vae is not None:
        with torch.no_grad():
            x0 = bundle.vae.encode_latents(video.flatten(0, 1))
            x0 = x0.reshape(b, t, *x0.shape[1:])
            if bundle.extra.get("residual"):  # target = video − conditioning image (scaled latents)
                x0 = x0 - bundle.vae.encode_latents(image)[:, None]
        crossattn = (_clip_embed(bundle.image_encoder, image) if bundle.image_encoder is not None
                     else torch.zeros(b, 1, ucfg.cross_attention_dim, device=device))
    else:
        x0 = video - image[:, None] if bundle.extra.get("residual") else video
        crossattn = torch.zeros(b, 1, ucfg.cross_attention_dim, device=device)

    def make_cond(draws: Any) -> Cond:
        aug = draws.aug_strength.to(device)
        noisy = noise_augment(image, aug, noise=draws.aug_noise)  # SVD conditioning noise augmentation
        concat = _encode_mode(bundle.vae, noisy) if bundle.vae is not None else noisy
        concat = concat[:, None].expand(-1, t, -1, -1, -1)  # the same for every frame
        if "azimuths_deg" in batch and ucfg.projection_class_embeddings_input_dim == SV3D_P_VECTOR:
            # SV3D_p (Voleti et al. 2024): per-frame camera vector (B, T, 1280)
            vector = sv3d_camera_vector(batch["elevations_deg"], batch["azimuths_deg"], aug[:, None]).float()
        elif "azimuths_deg" in batch:  # SV3D_u: the orbit is implicit, the vector the cond_aug sinusoid only
            vector = embed_scalars(aug[:, None], ucfg.addition_time_embed_dim)
        else:
            ids = torch.stack([batch["fps"] - 1, batch["motion_bucket_id"], aug], dim=1)  # (B, 3)
            vector = embed_scalars(ids, ucfg.addition_time_embed_dim)  # (B, 3·dim) sinusoids
        return drop_conditions(Cond(crossattn=crossattn, vector=vector, concat=concat), draws.keep)

    return x0, make_cond, tuple(image.shape[1:])


# -- export ---------------------------------------------------------------------------------------------
def patch_checkpoint(bundle: ModelBundle, unet_sd: dict[str, torch.Tensor]) -> Any:
    """A vidiff-layout :class:`~vidiff.io.Checkpoint` of a patch-space model: the UNet, the parameter-free
    ``PatchAutoencoder`` (config only), no CLIP image encoder, the scheduler, and the model's defaults
    (trained size and frame count; ``residual`` when the UNet denoises the video minus the image)."""
    from vidiff.io import Checkpoint, Component
    from vidiff.io.components import default_scheduler_config

    extra = bundle.extra
    return Checkpoint("vidiff", {
        "unet": Component({"_class_name": "UNetSpatioTemporalConditionModel",
                           **bundle.unet_config.to_diffusers()}, unet_sd),
        "vae": Component(bundle.vae.config.to_diffusers(), None),
        "scheduler": Component({**default_scheduler_config(),
                                **scheduler_keys(extra, float(extra["sigma_min"]), float(extra["sigma_max"]))}),
    }, extra={"residual": bool(extra.get("residual")), "generation_defaults": _generation_defaults(extra)})


def _generation_defaults(extra: dict[str, Any]) -> dict[str, Any]:
    """What the exported model generates by default: its trained size and frame count, and the guidance
    range when the config sets one (``checkpoint.guidance``)."""
    defaults = {k: extra[k] for k in ("height", "width", "num_frames")}
    if extra.get("guidance") is not None:
        defaults["min_guidance_scale"], defaults["max_guidance_scale"] = map(float, extra["guidance"])
    return defaults


def trained_parametrisation(loss: LossConfig) -> dict[str, Any]:
    """The parametrisation ``loss`` trains, as the exported model must record it: ``scaling`` / ``sigma_data``
    (edm), or for ddpm the discrete-time ε scaling (``discrete_eps``: ε output, ``c_noise`` = the integer
    timestep) with its β schedule in diffusers' scheduler keys (``betas``); for flow the ``flow`` scaling."""
    if loss.objective == "flow":
        from vidiff.training.dit import flow_parametrisation

        return flow_parametrisation(loss)
    if loss.objective == "ddpm":
        return {"scaling": "discrete_eps", "sigma_data": 1.0,
                "betas": beta_schedule_config(loss.ddpm_beta_schedule, loss.ddpm_timesteps, loss.ddpm_beta_start,
                                              loss.ddpm_beta_end)}
    return {"scaling": loss.scaling, "sigma_data": loss.sigma_data}


def scheduler_keys(extra: dict[str, Any], sigma_min: float, sigma_max: float) -> dict[str, Any]:
    """Scheduler keys naming the trained parametrisation (:func:`trained_parametrisation`), which the
    pipeline samples with (``vidiff.diffusion.scaling_from_config``): diffusers' ``prediction_type``, vidiff's
    ``scaling`` / ``sigma_data``, and the σ range ``[sigma_min, sigma_max]`` — for a discrete-time model
    narrowed to the σ of its T steps (it never saw others), with its β schedule and discrete timesteps."""
    name = extra.get("scaling", "v_edm")
    keys = {"prediction_type": SCALINGS[name].prediction_type, "scaling": name,
            "sigma_data": float(extra.get("sigma_data", 1.0))}
    if extra.get("betas") is not None:
        schedule = DiscreteSchedule.from_config(extra["betas"])
        sigma_min, sigma_max = max(sigma_min, schedule.sigma_min), min(sigma_max, schedule.sigma_max)
        if not sigma_min < sigma_max:
            raise ValueError(f"model.sigma_min / sigma_max leave no σ of the DDPM schedule {schedule} to sample")
        keys.update(extra["betas"], timestep_type="discrete")
    return {**keys, "sigma_min": float(sigma_min), "sigma_max": float(sigma_max)}


def export_model(bundle: ModelBundle, weights: dict[str, torch.Tensor], out_dir: Path,
                 init_from: str | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Save the trained model; return the folder a pipeline loads.

    ``weights``: the trained module's state (``unet.*``, ``motion_head.*``). Fine-tuned models are written
    as a complete vidiff-layout checkpoint (``vidiff.io.write_checkpoint``: the trained UNet plus the
    source checkpoint's VAE, image encoder, feature extractor and scheduler; floating-point UNet tensors
    stored as ``dtype``), which
    ``ImageToVideoPipeline.from_pretrained`` reads and ``vidiff convert`` turns into a diffusers folder.
    Patch-space and flow models (``model.autoencoder: patch`` or ``flow``) are complete pipelines too
    (:func:`patch_checkpoint`).
    Pixel-space models (no VAE) are not pipelines: only ``unet/`` (``config.json`` in diffusers vocabulary
    + ``model.safetensors``) is written. The motion head, when trained, goes to ``motion_head/`` next to
    ``out_dir`` (it is not a pipeline component).
    """
    from vidiff.io import (
        Component,
        read_checkpoint,
        save_safetensors_atomic,
        write_checkpoint,
        write_json_atomic,
    )

    out_dir = Path(out_dir)
    if not hasattr(bundle.unet_config, "block_out_channels"):  # a DiT (vidiff.training.dit)
        from vidiff.training.dit import export_dit

        extra = bundle.extra
        sched = scheduler_keys(extra, float(extra["sigma_min"]), float(extra["sigma_max"]))
        return export_dit(bundle, weights, out_dir, sched, dtype=dtype)
    unet_sd = {k[len("unet."):]: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
               for k, v in weights.items() if k.startswith("unet.")}
    unet_config = bundle.unet_config.to_diffusers()
    if init_from is not None:
        ckpt = read_checkpoint(init_from)
        config = dict(ckpt["unet"].config)
        config.update({k: v for k, v in unet_config.items() if k not in config})
        ckpt.components["unet"] = Component(config, unet_sd)
        sched = dict(ckpt["scheduler"].config)  # the source's σ range and spacing, the trained parametrisation
        sched.update(scheduler_keys(bundle.extra, float(sched.get("sigma_min", bundle.extra["sigma_min"])),
                                    float(sched.get("sigma_max", bundle.extra["sigma_max"]))))
        ckpt.components["scheduler"] = Component(sched, ckpt["scheduler"].state_dict)
        write_checkpoint(ckpt, out_dir, "vidiff", overwrite=True)
    elif getattr(bundle.vae, "config", None) is not None and hasattr(bundle.vae.config, "patch_size"):
        write_checkpoint(patch_checkpoint(bundle, unet_sd), out_dir, "vidiff", overwrite=True)
    else:
        save_safetensors_atomic(unet_sd, out_dir / "unet" / "model.safetensors", {"format": "pt"})
        write_json_atomic({"_class_name": "UNetSpatioTemporalConditionModel", **unet_config},
                          out_dir / "unet" / "config.json")
    if bundle.motion_head is not None:
        head = {k[len("motion_head."):]: v.detach().cpu().contiguous() for k, v in weights.items()
                if k.startswith("motion_head.")}
        head_dir = out_dir.parent / "motion_head"
        save_safetensors_atomic(head, head_dir / "model.safetensors", {"format": "pt"})
        write_json_atomic(bundle.motion_head.config.to_dict(), head_dir / "config.json")
    return out_dir
