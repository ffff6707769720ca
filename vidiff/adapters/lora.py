"""Low-rank adapters (LoRA, Hu et al. 2021) on the linear and convolution layers of a network.

A LoRA on a layer with weight ``W₀`` adds ``ΔW = (α / r) · B A`` (eq. 3 of the paper; ``A``: ``r × in``
"down", ``B``: ``out × r`` "up", zero at initialisation), scaled once more by the user's ``scale``:

    h = W₀ x + scale · (α / r) · B (A x)

Convolutions get a convolution ``A`` with the layer's kernel, stride and padding and a 1×1 ``B``, so
``ΔW = (α / r) · B·A`` has the layer's kernel shape (kohya's and peft's convention).

Why not peft's layers: peft wraps each target in a new module (``to_q`` becomes ``to_q.base_layer``),
which renames the network's weights under every strict loader and the fused attention snapshot, and its
``unmerge`` subtracts ``ΔW`` again, which does not restore ``W₀`` bit for bit in floating point. Here the
network is left as it is: the low-rank branch runs from a forward hook on the target layer (an
:class:`~vidiff.networks.attention.Attention` whose projection carries a hook computes q, k, v one by one),
and :func:`fuse_loras` keeps a copy of ``W₀`` that :func:`unfuse_loras` puts back, so unfusing is exact.
peft's file format (``lora_A`` / ``lora_B``) is read and written by :mod:`vidiff.adapters.formats`, and
the tests check these layers against peft's on the same weights.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DEFAULT_TARGETS",
    "LoRAAdapter",
    "LoRALayer",
    "attach_lora",
    "attached_loras",
    "detach_lora",
    "fuse_loras",
    "match_targets",
    "state_sha256",
    "sync_hooks",
    "targetable_modules",
    "unfuse_loras",
]

TARGETABLE = (nn.Linear, nn.Conv2d, nn.Conv3d)
# attention projections (spatial and temporal, self and cross) and feed-forward layers; resnet
# convolutions only when asked for (e.g. "*.conv1", "*.conv2")
DEFAULT_TARGETS = ("*.to_q", "*.to_k", "*.to_v", "*.to_out.0", "*.net.0.proj", "*.net.2")


def targetable_modules(net: nn.Module) -> dict[str, nn.Module]:
    """The layers of ``net`` a LoRA can adapt (linear, 2-D and 3-D convolutions), by qualified name."""
    return {name: m for name, m in net.named_modules() if isinstance(m, TARGETABLE) and name}


def match_targets(net: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Names of the targetable layers of ``net`` matching any fnmatch pattern; a pattern matching none is an
    error naming it."""
    names = list(targetable_modules(net))
    unused = [p for p in patterns if not fnmatch.filter(names, p)]
    if unused or not patterns:
        raise ValueError(f"LoRA target patterns {unused or list(patterns)} match no linear or convolution layer "
                         "of the network")
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


class LoRALayer(nn.Module):
    """The low-rank branch of one layer: ``forward(x) = scale · (α / r) · B(A(dropout(x)))``."""

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, TARGETABLE):
            raise TypeError(f"LoRA needs a Linear or Conv2d/Conv3d layer, got {type(base).__name__}")
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        w = base.weight
        self.conv: dict[str, object] | None = None
        if isinstance(base, nn.Linear):
            down, up = (rank, base.in_features), (base.out_features, rank)
        else:
            if base.groups != 1 or base.padding_mode != "zeros":
                raise ValueError("LoRA on grouped or non-zero-padded convolutions is not supported")
            self.conv = {"stride": base.stride, "padding": base.padding, "dilation": base.dilation,
                         "dim": w.ndim - 2}
            down, up = (rank, *w.shape[1:]), (w.shape[0], rank, *([1] * (w.ndim - 2)))
        self.down = nn.Parameter(torch.empty(down, device=w.device, dtype=torch.float32))
        self.up = nn.Parameter(torch.zeros(up, device=w.device, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))  # as peft and kohya initialise A
        self.rank, self.alpha = rank, float(alpha)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scale = 1.0
        self.fused = False

    @property
    def factor(self) -> float:
        """``scale · α / r``: what multiplies ``B A``."""
        return self.scale * self.alpha / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down, up = self.down.to(x), self.up.to(x)  # the adapter follows the network's device and dtype
        x = self.dropout(x)
        if self.conv is None:
            return F.linear(F.linear(x, down), up) * self.factor
        c = self.conv
        conv = F.conv2d if c["dim"] == 2 else F.conv3d
        h = conv(x, down, None, c["stride"], c["padding"], c["dilation"])
        return conv(h, up) * self.factor

    def delta_weight(self) -> torch.Tensor:
        """``(α / r) · B A`` in the base layer's weight shape (float32, without the user's scale)."""
        dw = self.up.detach().flatten(1).float() @ self.down.detach().flatten(1).float()
        return dw.reshape(self.up.shape[0], *self.down.shape[1:]) * (self.alpha / self.rank)


def _escape(name: str) -> str:
    return name.replace(".", "__")  # ModuleDict keys may not hold dots


class LoRAAdapter(nn.Module):
    """One LoRA: a :class:`LoRALayer` per adapted layer of a network, keyed by the layer's qualified name."""

    def __init__(self, layers: Mapping[str, LoRALayer]) -> None:
        super().__init__()
        self.targets = list(layers)
        self.layers = nn.ModuleDict({_escape(k): v for k, v in layers.items()})

    @classmethod
    def create(cls, net: nn.Module, *, rank: int, alpha: float | None = None,
               targets: Sequence[str] = DEFAULT_TARGETS, dropout: float = 0.0) -> LoRAAdapter:
        """A fresh LoRA (``B = 0``: the network is unchanged) on the layers of ``net`` matching ``targets``."""
        modules = targetable_modules(net)
        alpha = float(rank if alpha is None else alpha)
        return cls({n: LoRALayer(modules[n], rank, alpha, dropout) for n in match_targets(net, targets)})

    def layer(self, target: str) -> LoRALayer:
        return self.layers[_escape(target)]  # type: ignore[return-value]

    def items(self) -> Iterable[tuple[str, LoRALayer]]:
        return ((t, self.layer(t)) for t in self.targets)

    def set_scale(self, scale: float) -> None:
        for _, layer in self.items():
            layer.scale = float(scale)

    @property
    def scale(self) -> float:
        return next(layer.scale for _, layer in self.items()) if self.targets else 1.0

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """vidiff's canonical tensors: ``<layer>.lora_down.weight``, ``<layer>.lora_up.weight``, ``<layer>.alpha``."""
        out: dict[str, torch.Tensor] = {}
        for t, layer in self.items():
            out[f"{t}.lora_down.weight"] = layer.down.detach().cpu().clone()
            out[f"{t}.lora_up.weight"] = layer.up.detach().cpu().clone()
            out[f"{t}.alpha"] = torch.tensor(layer.alpha, dtype=torch.float32)
        return out

    @classmethod
    def from_tensors(cls, net: nn.Module, tensors: Mapping[str, torch.Tensor], source: str) -> LoRAAdapter:
        """Build from canonical tensors (:meth:`to_tensors`) whose layers all exist in ``net`` with the shapes
        the file gives (else a ``ValueError`` naming the first mismatch)."""
        modules = targetable_modules(net)
        layers: dict[str, LoRALayer] = {}
        for t in sorted({k.rsplit(".", 2)[0] for k in tensors if k.endswith(".lora_down.weight")}):
            down, up = tensors[f"{t}.lora_down.weight"], tensors[f"{t}.lora_up.weight"]
            alpha = float(tensors[f"{t}.alpha"]) if f"{t}.alpha" in tensors else float(down.shape[0])
            base = modules[t]
            layer = LoRALayer(base, down.shape[0], alpha)
            if layer.down.shape != down.shape or layer.up.shape != up.shape:
                raise ValueError(f"{source}: LoRA for another architecture: {t} has weight "
                                 f"{list(base.weight.shape)}, the file's LoRA gives down {list(down.shape)} "
                                 f"and up {list(up.shape)}")
            with torch.no_grad():
                layer.down.copy_(down.float())
                layer.up.copy_(up.float())
            layers[t] = layer
        return cls(layers)


# -- attaching: forward hooks on the target layers -------------------------------------------------------


def _lora_hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
    for layer in module._vidiff_loras.values():
        if layer.scale != 0 and not layer.fused:  # scale 0 leaves the layer exactly as it was
            out = out + layer(args[0])
    return out


def attached_loras(net: nn.Module) -> dict[str, dict[str, LoRALayer]]:
    """``{layer name: {adapter name: LoRALayer}}`` for every layer of ``net`` carrying a LoRA."""
    return {n: dict(m._vidiff_loras) for n, m in targetable_modules(net).items() if getattr(m, "_vidiff_loras", None)}


def attach_lora(net: nn.Module, adapter: LoRAAdapter, name: str) -> None:
    """Run ``adapter`` alongside the layers of ``net`` it targets (under ``name``, unique per network)."""
    modules = targetable_modules(net)
    for target, layer in adapter.items():
        m = modules[target]
        if name in getattr(m, "_vidiff_loras", {}):
            raise ValueError(f"a LoRA named {name!r} is already attached")
        m._vidiff_loras = {**getattr(m, "_vidiff_loras", {}), name: layer}
    sync_hooks(net)


def sync_hooks(net: nn.Module) -> None:
    """Hook exactly the layers with a LoRA that runs (unfused, scale ≠ 0): the others run as the plain network
    (so fused attention projections, which a hook turns off, stay on and scale 0 is bit for bit the base)."""
    for m in targetable_modules(net).values():
        active = any(x.scale != 0 and not x.fused for x in getattr(m, "_vidiff_loras", {}).values())
        handle = getattr(m, "_vidiff_lora_hook", None)
        if active and handle is None:
            m._vidiff_lora_hook = m.register_forward_hook(_lora_hook)
        elif handle is not None and not active:
            handle.remove()
            m._vidiff_lora_hook = None


def detach_lora(net: nn.Module, name: str) -> None:
    """Remove the LoRA ``name`` from ``net`` (unfuse first: a fused LoRA is part of the weights)."""
    for m in targetable_modules(net).values():
        loras = getattr(m, "_vidiff_loras", None)
        if loras is None or name not in loras:
            continue
        if loras[name].fused:
            raise RuntimeError(f"LoRA {name!r} is fused into the weights; unfuse it before removing it")
        del loras[name]
    sync_hooks(net)


@torch.no_grad()
def fuse_loras(net: nn.Module) -> int:
    """Add every attached, unfused LoRA into its layer's weight (``W = W₀ + Σ scale·ΔW``, in float32);
    ``W₀`` is kept so :func:`unfuse_loras` restores it bit for bit. Returns how many layers changed."""
    changed = 0
    for m in targetable_modules(net).values():
        layers = [x for x in getattr(m, "_vidiff_loras", {}).values() if not x.fused]
        if not layers:
            continue
        if getattr(m, "_vidiff_lora_original", None) is None:
            m._vidiff_lora_original = m.weight.detach().clone()
        w = m.weight.float()
        for layer in layers:
            w = w + layer.scale * layer.delta_weight().to(w.device)
            layer.fused = True
        m.weight.copy_(w.to(m.weight.dtype))
        changed += 1
    sync_hooks(net)
    return changed


@torch.no_grad()
def unfuse_loras(net: nn.Module) -> int:
    """Put back the weights :func:`fuse_loras` changed, exactly as they were. Returns how many layers."""
    changed = 0
    for m in targetable_modules(net).values():
        original = getattr(m, "_vidiff_lora_original", None)
        if original is None:
            continue
        m.weight.copy_(original)
        m._vidiff_lora_original = None
        for layer in m._vidiff_loras.values():
            layer.fused = False
        changed += 1
    sync_hooks(net)
    return changed


def state_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict: names, shapes and float32 values in name order (the "base model hash" a LoRA
    records; the same for a model read from a diffusers folder, a single file or a vidiff folder)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().to("cpu", torch.float32).contiguous()
        h.update(f"{k}:{list(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()
