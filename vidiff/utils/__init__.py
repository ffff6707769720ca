"""Small tensor helpers shared by every layer of vidiff (a leaf: imports nothing from vidiff)."""

from vidiff.utils.embeddings import timestep_embedding
from vidiff.utils.registry import build_named, dataclass_from_config
from vidiff.utils.tensors import Generators, append_dims, randn, warp

__all__ = ["Generators", "append_dims", "build_named", "dataclass_from_config", "randn", "timestep_embedding", "warp"]
