"""vidiff.adapters: LoRA and camera-control adapters that wrap a network's layers, and their file formats.

Imports ``networks`` and ``io`` only; pipelines and training use it.
"""

from vidiff.adapters.camera import (
    CAMERA_PRESETS,
    CameraAdapter,
    attach_camera,
    camera_flow,
    camera_preset,
    detach_camera,
    read_camera_adapter,
    resolve_camera,
    write_camera_adapter,
)
from vidiff.adapters.formats import (
    LORA_FORMATS,
    LoRAFile,
    detect_lora_format,
    layer_names,
    read_lora,
    unet_from_config,
    write_lora,
)
from vidiff.adapters.lora import (
    DEFAULT_TARGETS,
    LoRAAdapter,
    LoRALayer,
    attach_lora,
    attached_loras,
    detach_lora,
    fuse_loras,
    match_targets,
    state_sha256,
    sync_hooks,
    targetable_modules,
    unfuse_loras,
)

__all__ = [
    "CAMERA_PRESETS",
    "DEFAULT_TARGETS",
    "LORA_FORMATS",
    "CameraAdapter",
    "LoRAAdapter",
    "LoRAFile",
    "LoRALayer",
    "attach_camera",
    "attach_lora",
    "attached_loras",
    "camera_flow",
    "camera_preset",
    "detach_camera",
    "detach_lora",
    "detect_lora_format",
    "fuse_loras",
    "layer_names",
    "match_targets",
    "read_camera_adapter",
    "read_lora",
    "resolve_camera",
    "state_sha256",
    "sync_hooks",
    "targetable_modules",
    "unet_from_config",
    "unfuse_loras",
    "write_camera_adapter",
    "write_lora",
]
