"""The settings of one image-to-video generation: typed, validated, and serialised as the run's sidecar.

The same dataclass drives ``ImageToVideoPipeline.__call__`` defaults resolution, the ``vidiff generate``
options (derived from the fields and their help text) and the JSON sidecar written beside each video,
so a run can be repeated exactly with ``vidiff generate --settings VIDEO.json``.

Per-model defaults (``default_settings``) follow the reference implementations. diffusers'
``StableVideoDiffusionPipeline`` uses one set of defaults for SVD and SVD-XT (25 steps, guidance 1.0 -> 3.0, fps
7, motion bucket 127, noise augmentation 0.02, 576x1024, decode all frames at once). Stability's sgm scripts
differ (svd: guidance 1.0 -> 2.5; svd_xt: 1.5 -> 3.0 and 30 steps; decoding 14 frames at a time; sv3d: 50 steps,
triangle guidance max 2.5, 576x576, 21 frames). Their script (``scripts/sampling/simple_video_sample.py``) also
seeds with 23 and renders SVD at the input image's own size, each side rounded down to a multiple of 64;
``behaviour="sgm"`` follows both.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from vidiff.diffusion.samplers import SAMPLERS

SAMPLER_NAMES = tuple(SAMPLERS)  # the sampler registry's names: one list, vidiff.diffusion.samplers
DTYPE_NAMES = ("float32", "float16", "bfloat16")
BEHAVIOURS = ("diffusers", "sgm")


MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 64-bit seeds


class SettingError(ValueError):
    """An invalid value of one setting; ``field`` names it (the CLI maps it to its option)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _opt(help: str, **kw: Any) -> Any:
    return field(default=None, metadata={"help": help, **kw})


@dataclass(frozen=True)
class GenerationSettings:
    """Every knob of a generation. ``None`` means "the model's default" until resolved."""

    height: int | None = _opt("output height in pixels (default: the model's training height)")
    width: int | None = _opt("output width in pixels (default: the model's training width)")
    num_frames: int | None = _opt("frames to generate (default: the model's, 14 for SVD, 25 for SVD-XT)")
    num_inference_steps: int | None = _opt("denoising steps (default 25)", flag="--steps")
    min_guidance_scale: float | None = _opt("guidance on the first frame (default 1.0)", flag="--min-guidance")
    max_guidance_scale: float | None = _opt("guidance on the last frame (default 3.0)", flag="--max-guidance")
    fps: int | None = _opt("frames per second the model is conditioned on and the video is written at (default 7)")
    motion_bucket_id: int | None = _opt("how much motion, 0-255 (default 127): higher moves more")
    noise_aug_strength: float | None = _opt("noise added to the conditioning image (default 0.02)")
    decode_chunk_size: int | None = _opt("frames the VAE decodes at once (default: all): lower saves memory")
    decode_overlap: int | None = _opt("frames of temporal context around each decode chunk (default 0)")
    sampler: str | None = _opt("ODE/SDE sampler (default euler, as SVD)", choices=SAMPLER_NAMES)
    seed: int | None = _opt("random seed (default 0)")
    behaviour: str | None = _opt(
        "follow diffusers (default) or Stability's sgm where they differ: CLIP on the resized image, "
        "sgm's guidance and step defaults", choices=BEHAVIOURS)

    def __post_init__(self) -> None:
        for f in fields(self):  # types first: a settings file may hold anything JSON can
            value, kind = getattr(self, f.name), str(f.type).removesuffix(" | None")
            ok = {"int": (int,), "float": (int, float), "str": (str,)}[kind]
            if value is not None and (isinstance(value, bool) or not isinstance(value, ok)):
                expected = {"int": "an integer", "float": "a number", "str": "a string"}[kind]
                raise SettingError(f.name, f"{f.name} must be {expected}, got {value!r}")
        checks = {
            "height": (self.height, 8), "width": (self.width, 8), "num_frames": (self.num_frames, 1),
            "num_inference_steps": (self.num_inference_steps, 1), "fps": (self.fps, 1),
            "decode_chunk_size": (self.decode_chunk_size, 1), "decode_overlap": (self.decode_overlap, 0),
        }
        for name, (value, low) in checks.items():
            if value is not None and value < low:
                raise SettingError(name, f"{name} must be an integer >= {low}, got {value!r}")
        for name in ("min_guidance_scale", "max_guidance_scale", "noise_aug_strength"):
            value = getattr(self, name)
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise SettingError(name, f"{name} must be a finite number >= 0, got {value!r}")
        if self.motion_bucket_id is not None and not 0 <= self.motion_bucket_id <= 1023:
            raise SettingError("motion_bucket_id",
                               f"motion_bucket_id must be in 0..1023 (SVD uses 0..255), got {self.motion_bucket_id!r}")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise SettingError("seed", f"seed must be an integer in 0..{MAX_SEED} (2**64 - 1), got {self.seed!r}")
        if self.sampler is not None and self.sampler not in SAMPLER_NAMES:
            raise SettingError("sampler", f"sampler must be one of {', '.join(SAMPLER_NAMES)}, got {self.sampler!r}")
        if self.behaviour is not None and self.behaviour not in BEHAVIOURS:
            raise SettingError("behaviour", f"behaviour must be one of {', '.join(BEHAVIOURS)}, "
                               f"got {self.behaviour!r}")

    def merged(self, other: GenerationSettings) -> GenerationSettings:
        """These settings with every field that ``other`` sets (not None) taken from ``other``."""
        values = {f.name: getattr(other, f.name) for f in fields(self) if getattr(other, f.name) is not None}
        return type(self)(**{**asdict(self), **values})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: object = None) -> GenerationSettings:
        """Settings from a JSON object; ``source`` (a file, a model) prefixes any error, which says what
        holds the bad value."""
        where = f"{source}: " if source is not None else ""
        if not isinstance(data, dict):
            raise ValueError(f"{where}generation settings must be a JSON object, got {data!r}")
        unknown = sorted(str(k) for k in set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"{where}unknown generation setting(s): {', '.join(unknown)}")
        try:
            return cls(**data)
        except SettingError as e:
            raise SettingError(e.field, f"{where}{e}") from None


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """Read a sidecar written by ``vidiff generate`` (its ``settings`` plus run metadata)."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"settings file {p} is a folder, not a sidecar JSON file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"settings file not found: {p}") from None
    except UnicodeDecodeError:
        raise ValueError(f"settings file {p} is not a JSON sidecar (binary content, not UTF-8 text)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"settings file {p} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("settings"), dict):
        raise ValueError(f"settings file {p} has no 'settings' object (was it written by vidiff generate?)")
    return data


@dataclass(frozen=True)
class ModelFamily:
    """What a model type needs beyond its weights: sizes, conditioning inputs, guidance shape, sigmas."""

    name: str
    height: int
    width: int
    num_frames: int
    scalar_keys: tuple[str, ...]  # conditioning scalars embedded into the UNet's vector input
    guidance_ramp: str  # "linear" over frames (SVD) or "triangle" (SV3D)
    sigma_min: float = 0.002
    sigma_max: float = 700.0
    rho: float = 7.0


FAMILIES: dict[str, ModelFamily] = {
    "svd": ModelFamily("svd", 576, 1024, 14, ("fps", "motion_bucket_id", "noise_aug_strength"), "linear"),
    "svd_xt": ModelFamily("svd_xt", 576, 1024, 25, ("fps", "motion_bucket_id", "noise_aug_strength"), "linear"),
    "sv3d_u": ModelFamily("sv3d_u", 576, 576, 21, ("noise_aug_strength",), "triangle"),
    # SV3D_p's vector adds per-frame camera sinusoids to cond_aug's (vidiff.pipelines.sv3d builds it)
    "sv3d_p": ModelFamily("sv3d_p", 576, 576, 21, ("noise_aug_strength",), "triangle"),
}

_DIFFUSERS = GenerationSettings(
    num_inference_steps=25, min_guidance_scale=1.0, max_guidance_scale=3.0, fps=7, motion_bucket_id=127,
    noise_aug_strength=0.02, decode_chunk_size=None, decode_overlap=0, sampler="euler", seed=0,
    behaviour="diffusers",
)

_SGM: dict[str, GenerationSettings] = {
    "svd": GenerationSettings(min_guidance_scale=1.0, max_guidance_scale=2.5, decode_chunk_size=14),
    "svd_xt": GenerationSettings(num_inference_steps=30, min_guidance_scale=1.5, max_guidance_scale=3.0,
                                 decode_chunk_size=14),
    "sv3d_u": GenerationSettings(num_inference_steps=50, min_guidance_scale=1.0, max_guidance_scale=2.5,
                                 noise_aug_strength=1e-5, decode_chunk_size=14),
}
_SGM["sv3d_p"] = _SGM["sv3d_u"]  # simple_video_sample.py: the same steps, cond_aug, guider and decoding_t


SGM_SEED = 23  # simple_video_sample.py: ``sample(..., seed: int = 23)``
SGM_SIZE_MULTIPLE = 64  # simple_video_sample.py: ``width, height = map(lambda x: x - x % 64, (w, h))``


def sgm_image_size(family: ModelFamily, image_size: tuple[int, int]) -> GenerationSettings:
    """The size Stability's script renders an image of ``image_size`` (width, height) at: its own size with
    each side rounded down to a multiple of 64 (SV3D: always the family's 576x576)."""
    if family.name.startswith("sv3d"):
        return GenerationSettings(height=family.height, width=family.width)
    w, h = (side - side % SGM_SIZE_MULTIPLE for side in image_size)
    if not (w and h):
        raise ValueError(f"behaviour='sgm' renders at the image's own size rounded down to a multiple of "
                         f"{SGM_SIZE_MULTIPLE} (as Stability's script), but the image is only {image_size[0]}x"
                         f"{image_size[1]}: pass height and width")
    return GenerationSettings(height=h, width=w)


def default_settings(family: ModelFamily, behaviour: str = "diffusers", *, height: int | None = None,
                     width: int | None = None, num_frames: int | None = None) -> GenerationSettings:
    """The reference defaults for ``family``; ``height``/``width``/``num_frames`` override the family's."""
    base = _DIFFUSERS.merged(GenerationSettings(
        height=height or family.height, width=width or family.width, num_frames=num_frames or family.num_frames))
    if family.name.startswith("sv3d"):
        base = base.merged(_SGM[family.name])  # sv3d has no diffusers pipeline: sgm's values are the reference
    if behaviour == "sgm":
        sgm = GenerationSettings(behaviour="sgm", seed=SGM_SEED)
        base = base.merged(_SGM.get(family.name, GenerationSettings())).merged(sgm)
    return base
