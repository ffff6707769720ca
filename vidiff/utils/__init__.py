"""Small tensor helpers shared by every layer of vidiff (a leaf: imports nothing from vidiff)."""

from vidiff.utils.embeddings import timestep_embedding
from vidiff.utils.registry import build_named
from vidiff.utils.tensors import Generators, append_dims, randn, warp

__all__ = ["Generators", "append_dims", "build_named", "randn", "timestep_embedding", "warp"]
