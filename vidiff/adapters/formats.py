"""LoRA files in the three formats people share, read and written without loss.

* ``vidiff``: ``<diffusers layer>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` with metadata
  (``format: vidiff-lora``, rank, alpha, target patterns, the base model's hash and UNet config).
* ``peft`` (diffusers' ``save_lora_weights``): ``unet.<diffusers layer>.lora_A.weight`` / ``.lora_B.weight``;
  α lives in the ``lora_adapter_metadata`` JSON (``unet.lora_alpha``, per-layer ``unet.alpha_pattern``).
* ``kohya`` (ComfyUI, A1111): ``lora_unet_<sgm key>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``
  where ``<sgm key>`` is Stability's original name (``model.diffusion_model.`` and ``.weight`` removed)
  with dots as underscores: ComfyUI's ``model_lora_keys_unet`` rule, so these load there.

In memory every LoRA is vidiff's canonical tensors (diffusers layer names); the kohya names need the
UNet's layout, taken from a network (:func:`layer_names`) or from the UNet config a file records.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vidiff.adapters.lora import targetable_modules
from vidiff.io.keymaps import unet_to_sgm
from vidiff.io.weights import CheckpointError, load_safetensors, read_safetensors_metadata, save_safetensors_atomic

__all__ = ["LORA_FORMATS", "LoRAFile", "detect_lora_format", "kohya_names", "layer_names", "read_lora",
           "unet_from_config", "write_lora"]

LORA_FORMATS = ("vidiff", "peft", "kohya")
VIDIFF_FORMAT = "vidiff-lora"
_PEFT_META = "lora_adapter_metadata"
_PEFT_PREFIXES = ("unet.", "base_model.model.")  # diffusers pipelines; peft's save_pretrained
_SUFFIX = {"down": ".lora_down.weight", "up": ".lora_up.weight", "alpha": ".alpha"}
_PEFT_SUFFIX = {"down": ".lora_A.weight", "up": ".lora_B.weight"}


@dataclass
class LoRAFile:
    """A LoRA in vidiff's canonical tensors plus its metadata (``rank``, ``alpha``, ``targets``,
    ``base_model_sha256``, ``unet_config``, whatever the file recorded)."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    format: str = "vidiff"

    @property
    def layers(self) -> list[str]:
        return sorted(k[: -len(_SUFFIX["down"])] for k in self.tensors if k.endswith(_SUFFIX["down"]))


def layer_names(net: nn.Module) -> dict[str, str]:
    """``{kohya name: diffusers layer name}`` for every targetable layer of a spatio-temporal UNet."""
    return kohya_names(net.state_dict(), targetable_modules(net))


def kohya_names(state: dict[str, Any], layers: dict[str, Any]) -> dict[str, str]:
    sgm = unet_to_sgm({k: k for k in state})  # type: ignore[arg-type]  (renames keys; values ride along)
    out = {}
    for s, d in sgm.items():
        if d.endswith(".weight") and d[: -len(".weight")] in layers:
            out["lora_unet_" + s[: -len(".weight")].replace(".", "_")] = d[: -len(".weight")]
    return out


def unet_from_config(config: dict[str, Any]) -> nn.Module:
    """A UNet of ``config`` on the meta device (names and shapes only, no memory)."""
    from vidiff.networks.unet_config import UNetConfig
    from vidiff.networks.unet_st import UNetSpatioTemporal

    cfg = dict(config)
    for k, v in cfg.items():
        if isinstance(v, list):
            cfg[k] = tuple(v)
    with torch.device("meta"):
        return UNetSpatioTemporal(UNetConfig(**cfg))


def detect_lora_format(keys: list[str], metadata: dict[str, str]) -> str:
    """``vidiff``, ``peft`` or ``kohya`` from a file's tensor names and metadata."""
    if metadata.get("format") == VIDIFF_FORMAT:
        return "vidiff"
    if any(k.endswith(_PEFT_SUFFIX["down"]) for k in keys):
        return "peft"
    if any(k.startswith("lora_unet_") for k in keys):
        return "kohya"
    if any(k.endswith(_SUFFIX["down"]) for k in keys):
        return "vidiff"
    raise CheckpointError("not a LoRA: no lora_down / lora_A tensors")


def _json_meta(meta: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            out[k] = v
    return out


def _split(key: str) -> tuple[str, str]:
    for part, suffix in {**_SUFFIX, **{"A": _PEFT_SUFFIX["down"], "B": _PEFT_SUFFIX["up"]}}.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], {"A": "down", "B": "up"}.get(part, part)
    return key, ""


def read_lora(path: str | os.PathLike, names: dict[str, str] | None = None, *,
              partial: bool = False) -> tuple[LoRAFile, list[str]]:
    """Read a LoRA file in any of :data:`LORA_FORMATS` as canonical tensors.

    ``names``: ``{kohya name: diffusers layer}`` of the target network (:func:`layer_names`); without it a
    kohya file needs the ``unet_config`` its metadata records. Tensors naming no layer are an error listing
    them, or with ``partial`` are left out and returned as the second value.
    """
    path = Path(path)
    raw_meta = read_safetensors_metadata(path)
    tensors = load_safetensors(path)
    fmt = detect_lora_format(list(tensors), raw_meta)
    meta = _json_meta({k: v for k, v in raw_meta.items() if k not in ("format", "format_version")})
    peft_meta = meta.pop(_PEFT_META, None) or {}
    if isinstance(peft_meta, str):
        peft_meta = json.loads(peft_meta)
    peft_meta = {k.removeprefix("unet."): v for k, v in peft_meta.items()}
    if fmt == "kohya" and names is None:
        if "unet_config" not in meta:
            raise CheckpointError(f"{path}: a kohya LoRA without a recorded unet_config: name the model it is for")
        net = unet_from_config(meta["unet_config"])
        names = layer_names(net)
    out: dict[str, torch.Tensor] = {}
    unmatched: list[str] = []
    for key, t in tensors.items():
        layer, part = _split(key)
        if fmt == "peft":
            for p in _PEFT_PREFIXES:
                layer = layer.removeprefix(p)
        elif fmt == "kohya":
            if layer not in names:  # type: ignore[operator]
                unmatched.append(key)
                continue
            layer = names[layer]  # type: ignore[index]
        if not part:
            unmatched.append(key)
            continue
        out[layer + _SUFFIX[part]] = t
    if fmt == "peft":  # α from the adapter metadata (peft's default: α = r)
        for layer in {k.rsplit(".", 2)[0] for k in out if k.endswith(_SUFFIX["down"])}:
            rank = out[layer + _SUFFIX["down"]].shape[0]
            alpha = (peft_meta.get("alpha_pattern") or {}).get(layer, peft_meta.get("lora_alpha", rank))
            out[layer + _SUFFIX["alpha"]] = torch.tensor(float(alpha), dtype=torch.float32)
    bad = [k for k in out if k.endswith(_SUFFIX["down"]) and k[: -len(_SUFFIX["down"])] + _SUFFIX["up"] not in out]
    if bad:
        raise CheckpointError(f"{path}: LoRA layers without their up weight: {', '.join(bad[:5])}")
    if unmatched and not partial:
        raise CheckpointError(f"{path}: {len(unmatched)} LoRA keys match no layer of the model: "
                              f"{', '.join(unmatched[:8])}{' ...' if len(unmatched) > 8 else ''} "
                              "(--lora-partial loads the rest)")
    meta.setdefault("rank", peft_meta.get("r"))
    meta.setdefault("alpha", peft_meta.get("lora_alpha"))
    return LoRAFile(out, meta, fmt), unmatched


def write_lora(lora: LoRAFile, path: str | os.PathLike, fmt: str = "vidiff",
               names: dict[str, str] | None = None) -> None:
    """Write ``lora`` in ``fmt`` (atomically). kohya names come from ``names`` or the recorded ``unet_config``."""
    if fmt not in LORA_FORMATS:
        raise ValueError(f"LoRA format must be one of {list(LORA_FORMATS)}, got {fmt!r}")
    meta = {k: v for k, v in lora.metadata.items() if v is not None}
    layers = lora.layers
    alphas = {t: float(lora.tensors[t + _SUFFIX["alpha"]]) for t in layers if t + _SUFFIX["alpha"] in lora.tensors}
    out: dict[str, torch.Tensor] = {}
    if fmt == "vidiff":
        out = dict(lora.tensors)
    elif fmt == "peft":
        default = meta.get("alpha")
        for t in layers:
            out[f"unet.{t}{_PEFT_SUFFIX['down']}"] = lora.tensors[t + _SUFFIX["down"]]
            out[f"unet.{t}{_PEFT_SUFFIX['up']}"] = lora.tensors[t + _SUFFIX["up"]]
        rank = meta.get("rank") or (lora.tensors[layers[0] + _SUFFIX["down"]].shape[0] if layers else 0)
        pattern = {t: a for t, a in alphas.items() if default is None or a != float(default)}
        meta[_PEFT_META] = {"unet.r": rank, "unet.lora_alpha": default if default is not None else rank,
                            "unet.alpha_pattern": pattern, "unet.target_modules": layers}
    else:
        if names is None:
            if "unet_config" not in meta:
                raise CheckpointError("writing a kohya LoRA needs the model's layout: no unet_config recorded")
            names = layer_names(unet_from_config(meta["unet_config"]))
        inverse = {d: k for k, d in names.items()}
        missing = [t for t in layers if t not in inverse]
        if missing:
            raise CheckpointError(f"no original (sgm) name for LoRA layers {missing[:5]}")
        for t in layers:
            for part in ("down", "up", "alpha"):
                if t + _SUFFIX[part] in lora.tensors:
                    out[inverse[t] + _SUFFIX[part]] = lora.tensors[t + _SUFFIX[part]]
    text = {k: json.dumps(v) for k, v in meta.items()}  # every value JSON: a hex hash is never read as a number
    if fmt == "vidiff":
        text.update(format=VIDIFF_FORMAT, format_version="1")
    save_safetensors_atomic(out, path, metadata=text)
