"""Device placement for memory control: model offload (per component) and sequential offload (per layer).

- *Model offload* keeps every component on the CPU and moves one to the device only while it runs
  (CLIP, then the VAE encoder, then the UNet for the whole denoising loop, then the VAE decoder).
  The UNet stays resident across steps, so the cost is a few host-device copies per video.
- *Sequential offload* goes further: each leaf module's weights move to the device just before its
  forward and back right after, so only one layer's weights are resident. Slow; for tiny GPUs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def on_device(module: nn.Module | None, device: torch.device, offload: str) -> Iterator[None]:
    """Run a block with ``module`` on ``device``; with ``offload == "model"`` move it back afterwards."""
    if module is None or offload != "model" or device.type == "cpu":
        yield
        return
    module.to(device)
    try:
        yield
    finally:
        module.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _leaf_modules(module: nn.Module) -> Iterator[nn.Module]:
    for m in module.modules():
        if any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False)):
            yield m


class SequentialOffload:
    """Hooks that keep ``module`` on the CPU and bring one leaf's weights to ``device`` per forward call."""

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        self.device = device
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        module.to("cpu")
        for leaf in _leaf_modules(module):
            self.handles.append(leaf.register_forward_pre_hook(self._to_device))
            self.handles.append(leaf.register_forward_hook(self._to_cpu))

    def _to_device(self, m: nn.Module, args: object) -> None:
        for p in m.parameters(recurse=False):
            p.data = p.data.to(self.device, non_blocking=True)
        for name, b in m.named_buffers(recurse=False):
            m._buffers[name] = b.to(self.device)

    def _to_cpu(self, m: nn.Module, args: object, output: object) -> None:
        for _, p in m.named_parameters(recurse=False):
            p.data = p.data.to("cpu")
        for name, b in m.named_buffers(recurse=False):
            m._buffers[name] = b.to("cpu")

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def largest_leaf_params(module: nn.Module) -> int:
    """Parameter count of the largest leaf module (what sequential offload keeps resident)."""
    return max((sum(p.numel() for p in m.parameters(recurse=False)) for m in _leaf_modules(module)), default=0)


def available_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``; ValueError naming it when it is CUDA on a machine without CUDA."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} asked for, but this machine has no CUDA device")
    return device


def device_memory(device: torch.device) -> int:
    """Total memory of ``device`` in bytes: the GPU's, or this machine's physical memory for the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    from vidiff.pipelines.memory import host_memory

    return host_memory()
