"""vidiff.io: checkpoints (diffusers folder, original single file, vidiff folder), weights, key maps.

Video reading and writing lives in ``vidiff.io.video`` (import it from there).
"""

from vidiff.io.checkpoints import LAYOUTS, detect_layout, read_checkpoint, write_checkpoint
from vidiff.io.components import Checkpoint, Component
from vidiff.io.weights import (
    CheckpointError,
    check_state_dict,
    load_safetensors,
    load_state_dict_strict,
    save_safetensors_atomic,
    write_json_atomic,
)

__all__ = [
    "LAYOUTS",
    "Checkpoint",
    "CheckpointError",
    "Component",
    "check_state_dict",
    "detect_layout",
    "load_safetensors",
    "load_state_dict_strict",
    "read_checkpoint",
    "save_safetensors_atomic",
    "write_checkpoint",
    "write_json_atomic",
]
