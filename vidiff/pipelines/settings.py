"""The settings of one image-to-video generation: typed, validated, and serialised as the run's sidecar.

The same dataclass drives ``ImageToVideoPipeline.__call__`` defaults resolution, the ``vidiff generate``
options (derived from the fields and their help text) and the JSON sidecar written beside each video,
so a run can be repeated exactly with ``vidiff generate --settings VIDEO.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

SAMPLER_NAMES = ("euler", "heun", "dpmpp_2m", "euler_ancestral", "ddim")
DTYPE_NAMES = ("float32", "float16", "bfloat16")
BEHAVIOURS = ("diffusers", "sgm")


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
        checks = {
            "height": (self.height, 8), "width": (self.width, 8), "num_frames": (self.num_frames, 1),
            "num_inference_steps": (self.num_inference_steps, 1), "fps": (self.fps, 1),
            "decode_chunk_size": (self.decode_chunk_size, 1), "decode_overlap": (self.decode_overlap, 0),
        }
        for name, (value, low) in checks.items():
            if value is not None and (not isinstance(value, int) or value < low):
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        for name in ("min_guidance_scale", "max_guidance_scale", "noise_aug_strength"):
            value = getattr(self, name)
            if value is not None and not (value >= 0 and value == value and value != float("inf")):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.motion_bucket_id is not None and not 0 <= self.motion_bucket_id <= 1023:
            raise ValueError(f"motion_bucket_id must be in 0..1023 (SVD uses 0..255), got {self.motion_bucket_id!r}")
        if self.sampler is not None and self.sampler not in SAMPLER_NAMES:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLER_NAMES)}, got {self.sampler!r}")
        if self.behaviour is not None and self.behaviour not in BEHAVIOURS:
            raise ValueError(f"behaviour must be one of {', '.join(BEHAVIOURS)}, got {self.behaviour!r}")

    def merged(self, other: GenerationSettings) -> GenerationSettings:
        """These settings with every field that ``other`` sets (not None) taken from ``other``."""
        values = {f.name: getattr(other, f.name) for f in fields(self) if getattr(other, f.name) is not None}
        return type(self)(**{**asdict(self), **values})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown generation setting(s): {', '.join(unknown)}")
        return cls(**data)


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """Read a sidecar written by ``vidiff generate`` (its ``settings`` plus run metadata)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ValueError(f"settings file not found: {p}") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"settings file {p} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or "settings" not in data:
        raise ValueError(f"settings file {p} has no 'settings' object (was it written by vidiff generate?)")
    return data
