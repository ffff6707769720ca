"""Inference speed switches for the video backbones, applied to a built network in place.

None of them changes the math; each changes how it is executed:

* ``fuse_projections``: q/k/v (self-attention) and k/v (cross-attention) as one matrix multiply each
  (:meth:`vidiff.networks.attention.Attention.fuse_projections`): fewer, larger GEMMs.
* ``channels_last``: 2-D convolution weights (and so their activations) in NHWC order, the layout that
  tensor-core convolution kernels read natively; the transformers' ``(B·T, C, H, W) -> (B·T, HW, C)``
  permute then becomes free.
* ``compile``: ``torch.compile`` of the repeated blocks (``blocks``: every spatio-temporal resnet and
  transformer; identical blocks share compiled code, so it compiles in a fraction of whole-model time,
  fusing GroupNorm + SiLU, the α-blend and the residual adds) or of the whole network (``unet``).
  ``compile_mode="reduce-overhead"`` adds CUDA graphs.

Outputs stay equal to the unswitched network up to floating-point reassociation (tests bound it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vidiff.networks.attention import Attention
from vidiff.networks.resnet import SpatioTemporalResBlock
from vidiff.networks.transformer import SpatioTemporalTransformer

__all__ = ["COMPILE_MODES", "COMPILE_TARGETS", "FastPath", "apply_fast_path"]

COMPILE_TARGETS = ("none", "blocks", "unet")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
REPEATED_BLOCKS = (SpatioTemporalResBlock, SpatioTemporalTransformer)


@dataclass(frozen=True)
class FastPath:
    """Which inference speed switches are on (see the module docstring). ``compile_backend`` is
    ``torch.compile``'s backend (``inductor`` generates kernels; ``eager`` only traces, for tests)."""

    fuse_projections: bool = True
    channels_last: bool = False
    compile: str = "none"
    compile_mode: str = "default"
    compile_backend: str = "inductor"

    def __post_init__(self) -> None:
        if self.compile not in COMPILE_TARGETS:
            raise ValueError(f"FastPath.compile must be one of {list(COMPILE_TARGETS)}, got {self.compile!r}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"FastPath.compile_mode must be one of {list(COMPILE_MODES)}, "
                             f"got {self.compile_mode!r}")

    def describe(self) -> str:
        on = [name for name in ("fuse_projections", "channels_last") if getattr(self, name)]
        if self.compile != "none":
            on.append(f"compile={self.compile} ({self.compile_mode})")
        return ", ".join(on) or "none"


def apply_fast_path(net: nn.Module, fast: FastPath) -> nn.Module:
    """Switch ``net`` (in place) to exactly the settings of ``fast``, undoing earlier ones; returns ``net``.

    Call it after the weights are loaded: fused projections are snapshots of them.
    """
    fmt = torch.channels_last if fast.channels_last else torch.contiguous_format
    for module in net.modules():
        module._compiled_call_impl = None  # what nn.Module.compile set, if anything: back to eager
        if isinstance(module, Attention):
            module.fuse_projections(fast.fuse_projections)
        elif isinstance(module, nn.Conv2d):  # only 2-D convolutions have a channels-last layout
            module.weight.data = module.weight.data.contiguous(memory_format=fmt)
    if fast.compile == "none":
        return net
    mode = None if fast.compile_mode == "default" else fast.compile_mode
    targets = [m for m in net.modules() if isinstance(m, REPEATED_BLOCKS)] if fast.compile == "blocks" else [net]
    for module in targets:
        module.compile(mode=mode, backend=fast.compile_backend, dynamic=False)
    return net
