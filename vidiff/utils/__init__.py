"""Small tensor helpers shared by every layer of vidiff (a leaf: imports nothing from vidiff)."""

from vidiff.utils.embeddings import timestep_embedding
from vidiff.utils.tensors import append_dims, warp

__all__ = ["append_dims", "timestep_embedding", "warp"]
