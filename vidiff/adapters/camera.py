"""Camera control: a small adapter that makes a video UNet follow a per-frame camera path.

A **camera path** is ``(T, 4)``: for every frame, relative to frame 0, ``pan_x`` and ``pan_y`` (how far the camera
has moved, as fractions of the frame's width and height; +x right, +y down), ``zoom`` (magnification, > 1 zooms
in) and ``roll`` (degrees; + turns the camera clockwise on screen). Frame 0 is ``(0, 0, 1, 0)``. It is the move
:class:`vidiff.training.data.CameraMoveDataset` renders, and :func:`camera_flow` gives its exact backward flow
to frame 0 (the convention of ``vidiff.metrics.flow``):

    f_k(q) = (R(roll_k) / zoom_k − I) q + (pan_x,k · W, pan_y,k · H),     q = pixel − centre.

The adapter is **MotionCtrl**'s camera-motion control module (Wang et al. 2024; the SVD port, diffusers PR #6844):
each temporal transformer block gains a projection of the per-frame camera pose into its input. MotionCtrl's
``cc_projection`` is ``Linear(C + 12 → C)`` over ``[hidden ‖ RT]`` with the hidden part starting at identity;
here the hidden part stays the identity and the camera part is a shared MLP of the 4 path numbers plus a per-block
head. Measured on the bundled model (README), that vector alone learns pans but not zooms: it is the same for
every pixel, and a zoom's flow depends on the position. So each block also gets the path's own flow at the block's
resolution through a per-token ``Linear(2 → C)``: a dense control signal added to the features, as
**ControlNeXt** (Peng et al. 2024) adds its control features to the UNet's. Every head starts at zero, so an
untrained adapter is the base model bit for bit.

The adapter runs from forward pre-hooks on the targeted ``TemporalTransformerBlock``\\ s; the network is left as
it is. Files are safetensors with ``format: vidiff-camera`` metadata and the base model's hash, like a LoRA.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vidiff.adapters.formats import _json_meta
from vidiff.io.weights import CheckpointError, load_safetensors, read_safetensors_metadata, save_safetensors_atomic
from vidiff.networks.transformer import SpatioTemporalTransformer, TemporalTransformerBlock

__all__ = [
    "CAMERA_FIELDS",
    "CAMERA_FORMAT",
    "CAMERA_PRESETS",
    "CameraAdapter",
    "attach_camera",
    "camera_features",
    "camera_flow",
    "camera_motion",
    "camera_preset",
    "detach_camera",
    "path_record",
    "read_camera_adapter",
    "read_camera_path",
    "resolve_camera",
    "temporal_blocks",
    "write_camera_adapter",
]

CAMERA_FIELDS = ("pan_x", "pan_y", "zoom", "roll")
CAMERA_FORMAT = "vidiff-camera"
# where each preset ends (last frame); paths move at constant speed (zoom geometrically), within what the bundled
# model's camera-move data renders (pans up to 1/4 of the frame, zooms up to x1.5, rolls up to 15 degrees)
CAMERA_PRESETS: dict[str, tuple[float, float, float, float]] = {
    "static": (0.0, 0.0, 1.0, 0.0),
    "pan-left": (-0.15, 0.0, 1.0, 0.0),
    "pan-right": (0.15, 0.0, 1.0, 0.0),
    "pan-up": (0.0, -0.15, 1.0, 0.0),
    "pan-down": (0.0, 0.15, 1.0, 0.0),
    "zoom-in": (0.0, 0.0, 1.3, 0.0),
    "zoom-out": (0.0, 0.0, 1 / 1.25, 0.0),
    "roll-cw": (0.0, 0.0, 1.0, 10.0),
    "roll-ccw": (0.0, 0.0, 1.0, -10.0),
}
# path numbers -> features of order 1 over the trained range (pan 0.25, log zoom 0.4, roll 0.26 rad)
_FEATURE_SCALE = (4.0, 4.0, 2.5, 4.0)


# -- camera paths ---------------------------------------------------------------------------------------------
def camera_preset(name: str, num_frames: int) -> torch.Tensor:
    """The ``(num_frames, 4)`` path of a preset in :data:`CAMERA_PRESETS` (a ``ValueError`` naming an unknown one)."""
    if name not in CAMERA_PRESETS:
        raise ValueError(f"unknown camera {name!r}: use one of {', '.join(CAMERA_PRESETS)} or a path .json")
    px, py, z, r = CAMERA_PRESETS[name]
    u = torch.linspace(0, 1, num_frames, dtype=torch.float64) if num_frames > 1 else torch.zeros(1, dtype=torch.float64)
    return torch.stack([u * px, u * py, z ** u, u * r], dim=1).float()


def read_camera_path(path: str | os.PathLike) -> torch.Tensor:
    """A camera path from JSON: a list of ``[pan_x, pan_y, zoom, roll]`` or of ``{"pan_x": …}`` objects (missing
    keys: no move), optionally under ``"frames"``. Returns ``(T, 4)``; bad content is a ``ValueError`` naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"camera path {path}: cannot read it as JSON ({e})") from None
    frames = data.get("frames") if isinstance(data, dict) else data
    if not isinstance(frames, list) or not frames:
        raise ValueError(f"camera path {path}: expected a non-empty list of frames")
    rows = []
    for i, f in enumerate(frames):
        if isinstance(f, dict):
            unknown = sorted(set(f) - set(CAMERA_FIELDS))
            if unknown:
                raise ValueError(f"camera path {path}: frame {i} has unknown keys {unknown} "
                                 f"(use {list(CAMERA_FIELDS)})")
            f = [f.get(k, d) for k, d in zip(CAMERA_FIELDS, CAMERA_PRESETS["static"], strict=True)]
        if not isinstance(f, list) or len(f) != 4 or not all(isinstance(v, (int, float)) for v in f):
            raise ValueError(f"camera path {path}: frame {i} must be [pan_x, pan_y, zoom, roll], got {f!r}")
        if not all(math.isfinite(v) for v in f) or f[2] <= 0:
            raise ValueError(f"camera path {path}: frame {i} needs finite numbers and zoom > 0, got {f!r}")
        rows.append([float(v) for v in f])
    return torch.tensor(rows, dtype=torch.float32)


def resolve_camera(spec: str | torch.Tensor, num_frames: int) -> torch.Tensor:
    """A preset name, a ``.json`` path or a ``(T, 4)`` tensor -> the ``(num_frames, 4)`` path; a path of another
    length is a ``ValueError`` naming both lengths."""
    if isinstance(spec, torch.Tensor):
        path, source = spec.float(), "camera path"
    elif str(spec).lower().endswith(".json"):
        path, source = read_camera_path(spec), f"camera path {spec}"
    else:
        return camera_preset(str(spec), num_frames)
    if path.ndim != 2 or path.shape[1] != 4:
        raise ValueError(f"{source}: expected shape (frames, 4), got {tuple(path.shape)}")
    if path.shape[0] != num_frames:
        raise ValueError(f"{source} has {path.shape[0]} frames, but num_frames is {num_frames}")
    return path


def camera_features(path: torch.Tensor) -> torch.Tensor:
    """``(..., 4)`` path -> ``(..., 4)`` adapter input ``[pan_x, pan_y, log zoom, roll in radians]``, scaled to
    order 1 over the trained range."""
    zoom, roll = path[..., 2].clamp_min(1e-6).log(), path[..., 3] * (math.pi / 180)
    f = torch.stack([path[..., 0], path[..., 1], zoom, roll], -1)
    return f * f.new_tensor(_FEATURE_SCALE)


def camera_flow(path: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Exact backward flow ``(T, 2, H, W)`` of every frame to frame 0 for a ``(T, 4)`` path (module docstring)."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64) - (height - 1) / 2,
                            torch.arange(width, dtype=torch.float64) - (width - 1) / 2, indexing="ij")
    p = path.double()
    theta = p[:, 3] * (math.pi / 180)
    cos, sin = theta.cos() / p[:, 2], theta.sin() / p[:, 2]  # R(roll) / zoom
    v = lambda t: t.view(-1, 1, 1)  # noqa: E731
    fx = (v(cos) - 1) * xs - v(sin) * ys + v(p[:, 0]) * width
    fy = v(sin) * xs + (v(cos) - 1) * ys + v(p[:, 1]) * height
    return torch.stack([fx, fy], 1).float()


def camera_motion(path: torch.Tensor, height: int, width: int) -> float:
    """Mean displacement of a pixel between consecutive frames of the path, in pixels at ``width``: what
    ``CameraMoveDataset`` turns into a clip's motion bucket (``vidiff.training.data``)."""
    if path.shape[0] < 2:
        return 0.0
    flow = camera_flow(path, height, width).double()  # frame k pixel q -> frame 0: A_k q + d_k
    p = path.double()
    theta = p[:, 3] * (math.pi / 180)
    a = torch.stack([torch.stack([theta.cos(), -theta.sin()], -1), torch.stack([theta.sin(), theta.cos()], -1)], -2)
    a = a / p[:, 2].view(-1, 1, 1)  # (T, 2, 2)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64) - (height - 1) / 2,
                            torch.arange(width, dtype=torch.float64) - (width - 1) / 2, indexing="ij")
    q = torch.stack([xs, ys], 0)  # (2, H, W)
    x0 = q + flow[:-1]  # frame k pixel in frame 0's coordinates; frame k+1 pixel: A_{k+1}^{-1} (x0 − d_{k+1})
    d = flow[1:] + q - torch.einsum("tij,jhw->tihw", a[1:], q)  # flow = A q + d − q
    q_next = torch.einsum("tij,tjhw->tihw", torch.linalg.inv(a[1:]), x0 - d)
    return float((q_next - q).norm(dim=1).mean())


# -- the adapter --------------------------------------------------------------------------------------------------
def temporal_blocks(net: nn.Module) -> dict[str, TemporalTransformerBlock]:
    """The temporal transformer blocks of ``net`` (where MotionCtrl injects the camera), by qualified name."""
    return {n: m for n, m in net.named_modules() if isinstance(m, TemporalTransformerBlock)}


def _escape(name: str) -> str:
    return name.replace(".", "__")


class CameraAdapter(nn.Module):
    """MotionCtrl-style camera input: ``features (…, T, 4) → MLP → per-block head (zero-initialised) → (…, T, C)``,
    added to every token of frame ``t`` entering each targeted temporal block."""

    def __init__(self, channels: dict[str, int], hidden: int = 128) -> None:
        super().__init__()
        self.targets, self.hidden = list(channels), int(hidden)
        self.encoder = nn.Sequential(nn.Linear(len(CAMERA_FIELDS), hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                     nn.SiLU())
        self.heads = nn.ModuleDict({_escape(k): nn.Linear(hidden, c) for k, c in channels.items()})
        # the path's flow at the block's resolution, per token (a dense, ControlNeXt-like control signal)
        self.flow_heads = nn.ModuleDict({_escape(k): nn.Linear(2, c) for k, c in channels.items()})
        for head in [*self.heads.values(), *self.flow_heads.values()]:  # zero: the base model, until trained
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.camera: str | torch.Tensor | None = None  # what set_camera chose: preset name, path, (B, T, 4) batch
        self.last_path: torch.Tensor | None = None  # the path the last forward used (a sidecar records it)
        self._file_path: torch.Tensor | None = None  # a .json camera's path, read by set_camera

    @classmethod
    def create(cls, net: nn.Module, hidden: int = 128) -> CameraAdapter:
        """A fresh adapter on every temporal block of ``net``."""
        blocks = temporal_blocks(net)
        if not blocks:
            raise ValueError("the network has no temporal transformer blocks for a camera adapter")
        return cls({n: b.norm_in.normalized_shape[0] for n, b in blocks.items()}, hidden)

    def config(self) -> dict[str, Any]:
        return {"kind": "motionctrl+flow", "hidden": self.hidden,
                "channels": {t: self.heads[_escape(t)].out_features for t in self.targets}}

    def set_camera(self, camera: str | torch.Tensor | None) -> None:
        """Preset name or ``.json`` (resolved at the video's frame count), a ``(T, 4)`` path for every video, a
        ``(B, T, 4)`` batch of paths, or None (no camera input: the base model)."""
        self._file_path = None
        if isinstance(camera, str) and camera.lower().endswith(".json"):
            self._file_path = read_camera_path(camera)  # read once; its length is checked per video
        elif isinstance(camera, str):
            camera_preset(camera, 2)  # an unknown name fails now, not at the first step
        self.camera = camera

    def path_for(self, num_frames: int) -> torch.Tensor | None:
        """The camera path ``(T, 4)`` or ``(B, T, 4)`` for a video of ``num_frames`` frames."""
        cam = self.camera
        if cam is None:
            return None
        if isinstance(cam, torch.Tensor) and cam.ndim == 3:
            if cam.shape[1] != num_frames:
                raise ValueError(f"camera paths have {cam.shape[1]} frames, but num_frames is {num_frames}")
            return cam
        if self._file_path is not None:
            return resolve_camera(self._file_path, num_frames)
        return resolve_camera(cam, num_frames)

    def embedding(self, target: str, path: torch.Tensor, like: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """``(…, T, HW, C)`` camera embedding of ``path`` for block ``target`` at feature size ``hw``: the
        per-frame MotionCtrl vector plus a projection of the path's flow there (in fractions of the width, ×4)."""
        f = camera_features(path.to(like.device, torch.float32))
        enc = self.encoder.to(like.device)
        vec = self.heads[_escape(target)].to(like.device)(enc(f))  # (…, T, C)
        flow = camera_flow(path.reshape(-1, 4).cpu(), *hw).to(like.device) * (4.0 / hw[1])  # (…·T, 2, H, W)
        flow = flow.flatten(2).transpose(1, 2).reshape(*path.shape[:-1], hw[0] * hw[1], 2)
        dense = self.flow_heads[_escape(target)].to(like.device)(flow)  # (…, T, HW, C)
        return (vec.unsqueeze(-2) + dense).to(like.dtype)


def _camera_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    adapter: CameraAdapter = module._vidiff_camera[1]
    x, context, t = args  # x (B·T, HW, C), the block's (hidden, context, num_frames)
    path = adapter.path_for(int(t))
    if path is None:
        return None
    adapter.last_path = path.detach().cpu()
    e = adapter.embedding(module._vidiff_camera[0], path, x, module._vidiff_camera_hw)  # ([B'], T, HW, C)
    x = x.unflatten(0, (-1, t))  # (B, T, HW, C)
    if e.ndim == 4 and e.shape[0] != x.shape[0]:  # classifier-free guidance batches [cond, uncond]
        if x.shape[0] % e.shape[0]:
            raise ValueError(f"{e.shape[0]} camera paths for a batch of {x.shape[0]} videos")
        e = e.repeat(x.shape[0] // e.shape[0], 1, 1, 1)
    return ((x + e).flatten(0, 1), context, t)


def _size_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
    for block in module.temporal_transformer_blocks:  # the feature size the temporal blocks' tokens come from
        block._vidiff_camera_hw = tuple(args[0].shape[-2:])


def attach_camera(net: nn.Module, adapter: CameraAdapter) -> None:
    """Run ``adapter`` in ``net``'s temporal blocks (one camera adapter per network); a block the adapter names
    that ``net`` lacks, or whose width differs, is a ``ValueError`` naming it (an adapter for another model)."""
    blocks = temporal_blocks(net)
    for t in adapter.targets:
        want = adapter.heads[_escape(t)].out_features
        if t not in blocks or blocks[t].norm_in.normalized_shape[0] != want:
            have = f"{blocks[t].norm_in.normalized_shape[0]} channels" if t in blocks else "no such block"
            raise ValueError(f"camera adapter for another architecture: {t} ({want} channels in the adapter, "
                             f"{have} in the model)")
    if any(hasattr(b, "_vidiff_camera") for b in blocks.values()):
        raise ValueError("a camera adapter is already attached")
    parents = {n: m for n, m in net.named_modules() if isinstance(m, SpatioTemporalTransformer)}
    for t in adapter.targets:
        b = blocks[t]
        b._vidiff_camera = (t, adapter)
        b._vidiff_camera_hook = b.register_forward_pre_hook(_camera_hook)
        parent = parents[t.split(".temporal_transformer_blocks.")[0]]
        if not hasattr(parent, "_vidiff_camera_size_hook"):
            parent._vidiff_camera_size_hook = parent.register_forward_pre_hook(_size_hook)


def detach_camera(net: nn.Module) -> None:
    """Remove the camera adapter from ``net`` (it runs as the plain network again)."""
    for b in temporal_blocks(net).values():
        if hasattr(b, "_vidiff_camera"):
            b._vidiff_camera_hook.remove()
            del b._vidiff_camera, b._vidiff_camera_hook
    for m in net.modules():
        if hasattr(m, "_vidiff_camera_size_hook"):
            m._vidiff_camera_size_hook.remove()
            del m._vidiff_camera_size_hook


# -- files --------------------------------------------------------------------------------------------------------
def write_camera_adapter(adapter: CameraAdapter, path: str | os.PathLike, *, base_model_sha256: str | None = None,
                         unet_config: dict[str, Any] | None = None, motion_bucket_scale: float | None = None) -> None:
    """Write ``adapter`` (safetensors, atomically) with its config, the base model's hash and UNet config, and the
    training data's motion-bucket scale (so a path's motion bucket can be the one its training clips had)."""
    meta = {"format": CAMERA_FORMAT, "format_version": "1", "config": json.dumps(adapter.config()),
            "base_model_sha256": json.dumps(base_model_sha256), "unet_config": json.dumps(unet_config),
            "motion_bucket_scale": json.dumps(motion_bucket_scale)}
    tensors = {k: v.detach().cpu().float().contiguous() for k, v in adapter.state_dict().items()}
    save_safetensors_atomic(tensors, path, metadata=meta)


def read_camera_adapter(path: str | os.PathLike) -> tuple[CameraAdapter, dict[str, Any]]:
    """Read a camera adapter file; returns the adapter and its metadata (``base_model_sha256``, ``unet_config``).
    A file that is not one (or is truncated) is a ``CheckpointError`` naming it."""
    path = Path(path)
    raw = read_safetensors_metadata(path)
    if raw.get("format") != CAMERA_FORMAT:
        raise CheckpointError(f"{path}: not a camera adapter (format {raw.get('format')!r}, "
                              f"expected {CAMERA_FORMAT!r})")
    meta = _json_meta({k: v for k, v in raw.items() if k not in ("format", "format_version")})
    cfg = meta.get("config") or {}
    try:
        adapter = CameraAdapter(dict(cfg["channels"]), int(cfg["hidden"]))
        adapter.load_state_dict(load_safetensors(path), strict=True)
    except (KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: camera adapter tensors do not match its config: {e}") from None
    return adapter, meta


def path_record(path: torch.Tensor | None, spec: str | Sequence[float] | None) -> dict[str, Any]:
    """What a sidecar keeps of a camera path: the request and every frame's ``[pan_x, pan_y, zoom, roll]``."""
    values = None if path is None else [[round(float(v), 6) for v in row] for row in path.reshape(-1, 4)]
    return {"request": spec if isinstance(spec, str) or spec is None else "tensor", "fields": list(CAMERA_FIELDS),
            "path": values}
