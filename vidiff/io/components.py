"""The in-memory checkpoint: components in diffusers vocabulary, default configs and model-type guessing.

Whatever the layout on disk, a :class:`Checkpoint` holds ``unet`` and ``vae`` (diffusers config dicts and
diffusers state-dict names), ``image_encoder`` (transformers ``CLIPVisionConfig`` dict and
``CLIPVisionModelWithProjection`` names), and the config-only ``feature_extractor`` (CLIPImageProcessor's
``preprocessor_config.json``) and ``scheduler`` (``scheduler_config.json``).

``image_encoder`` and ``feature_extractor`` are optional (:data:`OPTIONAL_COMPONENTS`): a model without them
conditions on a zero CLIP token. A ``vae`` whose config names ``_class_name`` ``PatchAutoencoder`` or
``FlowWarpAutoencoder`` (``vidiff.autoencoders``: space-to-depth, or flow latents that warp the first frame)
has no tensors. ``Checkpoint.extra`` holds model-level settings the vidiff layout stores in ``vidiff.json``
(e.g. ``generation_defaults``).

vidiff extension to the UNet config: ``resnet_eps_policy`` is ``"sgm"`` for weights read from an original
single file (its resnets were trained with GroupNorm eps 1e-5 everywhere, svd_spec §5) and
``"diffusers"`` (the default when absent) for diffusers folders.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from vidiff.io.shapes import expected_shapes
from vidiff.io.weights import CheckpointError, check_state_dict

__all__ = [
    "COMPONENTS",
    "OPTIONAL_COMPONENTS",
    "REQUIRED_COMPONENTS",
    "WEIGHTED_COMPONENTS",
    "Checkpoint",
    "Component",
    "check_plain_name",
    "check_scheduler_config",
    "default_feature_extractor_config",
    "default_scheduler_config",
    "guess_model_type",
    "is_parameter_free",
    "validate_checkpoint",
]

COMPONENTS = ("unet", "vae", "image_encoder", "feature_extractor", "scheduler")
WEIGHTED_COMPONENTS = ("unet", "vae", "image_encoder")
OPTIONAL_COMPONENTS = ("image_encoder", "feature_extractor")
REQUIRED_COMPONENTS = tuple(c for c in COMPONENTS if c not in OPTIONAL_COMPONENTS)
PARAMETER_FREE_VAES = ("PatchAutoencoder", "FlowWarpAutoencoder")
RESNET_EPS_POLICY = "resnet_eps_policy"


@dataclass
class Component:
    """One component: its config (as the diffusers / transformers JSON) and its tensors (or None)."""

    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor] | None = None

    def num_parameters(self) -> int:
        """Total number of tensor elements (0 for config-only components)."""
        return sum(t.numel() for t in (self.state_dict or {}).values())


@dataclass
class Checkpoint:
    """A model read from (or to be written to) one of the layouts ``diffusers``, ``single-file``, ``vidiff``.

    ``ignored`` lists source tensors that were recognised and deliberately not used (duplicate encoder
    copies, OpenCLIP text-tower leftovers, ...); ``notes`` are human-readable remarks about the read.
    ``extra``: model-level settings (JSON values) kept in ``vidiff.json`` by the vidiff layout.
    """

    layout: str
    components: dict[str, Component]
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Component:
        if name not in self.components:
            raise CheckpointError(f"checkpoint has no {name!r} component (has: {', '.join(self.components)})")
        return self.components[name]

    @property
    def model_type(self) -> str:
        """``svd``, ``svd_xt``, ``sv3d_u``, ``sv3d_p`` or ``unknown`` (see :func:`guess_model_type`)."""
        return guess_model_type(self)


def default_scheduler_config() -> dict[str, Any]:
    """SVD's ``EulerDiscreteScheduler`` config as published with the diffusers weights (svd_spec §2)."""
    return {
        "_class_name": "EulerDiscreteScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "interpolation_type": "linear",
        "num_train_timesteps": 1000,
        "prediction_type": "v_prediction",
        "sigma_max": 700.0,
        "sigma_min": 0.002,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "timestep_type": "continuous",
        "use_karras_sigmas": True,
    }


def default_feature_extractor_config() -> dict[str, Any]:
    """CLIPImageProcessor settings of SVD (OpenAI CLIP mean/std, 224 px)."""
    return {
        "crop_size": {"height": 224, "width": 224},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "CLIPImageProcessor",
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": 224},
    }


def guess_model_type(ckpt: Checkpoint) -> str:
    """Guess the model family from the UNet's conditioning width and the VAE decoder type.

    768 = 3 x 256 (fps, motion bucket, noise aug) is SVD; 256 (noise aug) SV3D_u; 1280 (+ 512 polar and
    512 azimuth) SV3D_p. SVD and SVD-XT share every shape: the UNet's ``num_frames`` (14 / 25) decides.
    """
    unet = ckpt.components.get("unet")
    if unet is None:
        return "unknown"
    adm = unet.config.get("projection_class_embeddings_input_dim")
    if adm is None and unet.state_dict and "add_embedding.linear_1.weight" in unet.state_dict:
        adm = unet.state_dict["add_embedding.linear_1.weight"].shape[1]
    if adm == 768:
        return "svd_xt" if unet.config.get("num_frames") == 25 else "svd"
    return {256: "sv3d_u", 1280: "sv3d_p"}.get(adm, "unknown")


def is_parameter_free(name: str, config: dict[str, Any]) -> bool:
    """Whether component ``name`` with ``config`` has no tensors (the ``PatchAutoencoder`` VAE)."""
    return name == "vae" and config.get("_class_name") in PARAMETER_FREE_VAES


def validate_checkpoint(ckpt: Checkpoint) -> None:
    """Check every weighted component's tensors against the shapes its config implies (optional
    components may be absent; a parameter-free VAE must have no tensors)."""
    for name in WEIGHTED_COMPONENTS:
        if name not in ckpt.components:
            if name in OPTIONAL_COMPONENTS:
                continue
            raise CheckpointError(f"checkpoint has no {name} component")
        comp = ckpt.components[name]
        if is_parameter_free(name, comp.config):
            check_state_dict({}, comp.state_dict or {}, name)
            continue
        if comp.state_dict is None:
            raise CheckpointError(f"{name}: no tensors")
        check_state_dict(expected_shapes(name, comp.config), comp.state_dict, name)


def copy_config(config: dict[str, Any]) -> dict[str, Any]:
    """A deep copy, so that writers never change the caller's dicts."""
    return copy.deepcopy(config)


def check_plain_name(name: Any, source: object, what: str, *, nested: bool = True) -> str:
    """``name`` if it is a plain relative name inside the model folder (``unet``, ``x/y.safetensors``), else a
    :class:`CheckpointError` naming ``source``: no absolute paths, ``..``, empty parts or backslashes, so a
    crafted checkpoint cannot make a reader or writer touch anything outside its folder. ``nested=False``
    also refuses ``/`` (a name that must be an entry of the folder itself)."""
    if not isinstance(name, str):
        raise CheckpointError(f"{source}: {what} must be a string, found {name!r}")
    parts = name.split("/")
    if "\\" in name or "\0" in name or any(p in ("", ".", "..") for p in parts) or (len(parts) > 1 and not nested):
        raise CheckpointError(f"{source}: {what} {name!r} is not a plain relative name inside the model folder")
    return name


def check_scheduler_config(config: dict[str, Any], source: object) -> None:
    """The sampling range a scheduler config sets must be usable: ``sigma_min`` < ``sigma_max``, both finite
    and > 0 (a negative ``sigma_max`` would sample from NaN noise levels); ``sigma_data`` > 0."""
    values: dict[str, float] = {}
    for key in ("sigma_min", "sigma_max", "sigma_data"):
        if key not in config:
            continue
        v = config[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise CheckpointError(f"{source}: {key} must be a finite number > 0, found {v!r}")
        values[key] = float(v)
    if "sigma_min" in values and "sigma_max" in values and values["sigma_min"] >= values["sigma_max"]:
        raise CheckpointError(f"{source}: sigma_min ({values['sigma_min']}) must be below sigma_max "
                              f"({values['sigma_max']})")
