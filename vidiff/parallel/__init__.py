"""Exact multi-process inference over torch.distributed: CFG and frame parallelism (see DESIGN.md)."""

from vidiff.parallel.comm import MODES, Comm, ParallelLayout, init_from_env, parse_mode, split_sizes
from vidiff.parallel.network import ParallelNetwork, parallelize, slice_batch

__all__ = ["MODES", "Comm", "ParallelLayout", "ParallelNetwork", "init_from_env", "parallelize", "parse_mode",
           "slice_batch", "split_sizes"]
