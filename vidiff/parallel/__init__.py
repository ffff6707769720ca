"""Exact multi-process inference over torch.distributed: CFG, frame (UNet) and sequence (DiT) parallelism, and
the VAE decode split by frames."""

from vidiff.parallel.comm import MODES, Comm, ParallelLayout, init_from_env, parse_mode, split_sizes
from vidiff.parallel.decode import FrameParallelDecode, parallelize_decode
from vidiff.parallel.network import ParallelNetwork, parallelize, slice_batch

__all__ = ["MODES", "Comm", "FrameParallelDecode", "ParallelLayout", "ParallelNetwork", "init_from_env",
           "parallelize", "parallelize_decode", "parse_mode", "slice_batch", "split_sizes"]
