"""Loading Wan 2.x models: diffusers folders (``WanPipeline`` / ``WanImageToVideoPipeline``) and Wan's original
layout (the Wan-AI release's sharded ``diffusion_pytorch_model*.safetensors``, ComfyUI single files with
``model.diffusion_model.`` keys, the VAE in original keys). Every load is strict (names and shapes).

The transformer config is read from ``config.json`` when there is one, else from the tensors' shapes
(:func:`vidiff.io.wan_keymap.wan_transformer_config`). Components must agree: a transformer whose latent
channels do not fit the VAE (e.g. Wan 2.2 TI2V-5B's 48 channels with Wan 2.1's 16-channel VAE) is an error
naming both files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from vidiff.autoencoders.wan_vae import WanVAE, WanVAEConfig
from vidiff.io.checkpoints import _load_weights
from vidiff.io.components import Checkpoint, Component
from vidiff.io.wan_keymap import (
    is_original_wan_transformer,
    transformer_from_original,
    transformer_to_original,
    vae_from_original,
    wan_transformer_config,
)
from vidiff.io.weights import (
    CheckpointError,
    atomic_output,
    load_safetensors,
    load_state_dict_strict,
    read_json,
    read_safetensors_metadata,
    save_safetensors_atomic,
    write_json_atomic,
)
from vidiff.networks.dit_wan import WanConfig, WanTransformer3D
from vidiff.pipelines.text_to_video import TextToVideoPipeline

__all__ = ["convert_wan_transformer", "is_wan_checkpoint", "load_wan_pipeline", "load_wan_transformer",
           "load_wan_vae", "read_wan_checkpoint", "wan_model_type"]

_WAN_PIPELINES = ("WanPipeline", "WanImageToVideoPipeline")
CONFIG_METADATA_KEY = "wan_config"  # the transformer config vidiff writes into single files it converts


def is_wan_checkpoint(path: str | os.PathLike) -> bool:
    """A diffusers Wan folder, or a safetensors file / folder whose keys are a Wan transformer's."""
    path = Path(path)
    if (path / "model_index.json").is_file():
        return read_json(path / "model_index.json").get("_class_name") in _WAN_PIPELINES
    try:
        keys = _state_dict(path, device="meta").keys()
    except (CheckpointError, OSError):
        return False
    return is_original_wan_transformer(dict.fromkeys(keys)) or "blocks.0.attn1.to_q.weight" in keys


def _state_dict(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    if path.is_dir():
        return _load_weights(path, "diffusion_pytorch_model", device)[0]
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: expected a .safetensors file or a folder of them")
    return load_safetensors(path, device=device)


def _transformer_config(where: Path, sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The folder's ``config.json``, else the config vidiff records in a single file's metadata, else the one
    the tensor shapes imply (128-wide heads, as every released Wan model)."""
    if where.is_dir() and (where / "config.json").is_file():
        return read_json(where / "config.json")
    if where.is_file():
        recorded = read_safetensors_metadata(where).get(CONFIG_METADATA_KEY)
        if recorded:
            return json.loads(recorded)
    return wan_transformer_config(sd)


def load_wan_transformer(path: str | os.PathLike, *, config: WanConfig | None = None,
                         dtype: torch.dtype = torch.float32) -> WanTransformer3D:
    """A ``transformer/`` folder, a single file or an original sharded folder, diffusers or Wan key names.

    The config: ``config``, else the folder's ``config.json``, else read off the tensors (128-wide heads)."""
    path = Path(path)
    sd = _state_dict(path)
    if is_original_wan_transformer(sd):
        sd = transformer_from_original(sd)
    cfg = config or WanConfig.from_dict(_transformer_config(path, sd))
    with torch.device("meta"):
        model = WanTransformer3D(cfg)
    model = model.to_empty(device="cpu")
    load_state_dict_strict(model, sd, f"{path} (Wan transformer)")
    return model.to(dtype).eval()


def load_wan_vae(path: str | os.PathLike, config: WanVAEConfig | None = None) -> WanVAE:
    """A ``vae/`` folder (``config.json`` + weights) or a single safetensors file (``config``, default Wan 2.1's),
    in diffusers' or Wan 2.1's original key names."""
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        config = WanVAEConfig.from_dict(read_json(path / "config.json"))
    cfg = config or WanVAEConfig()
    sd = _state_dict(path)
    if any(k.startswith("encoder.downsamples.") for k in sd):  # Wan's own names
        sd = vae_from_original(sd, num_levels=len(cfg.dim_mult), num_res_blocks=cfg.num_res_blocks)
    vae = WanVAE(cfg)
    load_state_dict_strict(vae, sd, f"{path} (Wan VAE)")
    return vae.eval()


def _check_fit(transformer: WanTransformer3D, vae: WanVAE, where: str) -> None:
    t, v = transformer.config, vae.config
    if t.out_channels != v.z_dim or t.in_channels not in (v.z_dim, 2 * v.z_dim + v.temporal_factor):
        raise CheckpointError(f"{where}: the transformer ({t.in_channels} in / {t.out_channels} out latent channels) "
                              f"is not of the same Wan version as the VAE ({v.z_dim} latent channels)")


def _transformers_component(folder: Path, kind: str) -> Any:
    import transformers  # lazily: transformers is only needed for text and CLIP conditioning

    if kind == "tokenizer":
        return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if kind == "image_processor":
        return transformers.CLIPImageProcessor.from_pretrained(folder, local_files_only=True)
    cls = {"text_encoder": transformers.UMT5EncoderModel, "image_encoder": transformers.CLIPVisionModel}[kind]
    return cls.from_pretrained(folder, local_files_only=True).eval()


def _flow_shift(scheduler_config: dict[str, Any]) -> float:
    return float(scheduler_config.get("flow_shift", scheduler_config.get("shift", 5.0)))


def load_wan_pipeline(path: str | os.PathLike, *, vae: str | os.PathLike | None = None,
                      transformer_config: WanConfig | None = None,
                      dtype: torch.dtype = torch.float32) -> TextToVideoPipeline:
    """A diffusers Wan folder, or an original transformer file/folder plus ``vae`` (file or folder).

    A model without a text encoder loads (prompt embeddings can be given); asking it for a prompt is an
    error then.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if not (path / "model_index.json").is_file():
        if vae is None:
            raise CheckpointError(f"{path}: an original Wan transformer needs its VAE (--vae FILE)")
        transformer = load_wan_transformer(path, config=transformer_config, dtype=dtype)
        wan_vae = load_wan_vae(vae)
        _check_fit(transformer, wan_vae, str(path))
        return TextToVideoPipeline(transformer, wan_vae)
    index = read_json(path / "model_index.json")
    if index.get("_class_name") not in _WAN_PIPELINES:
        raise CheckpointError(f"{path}: not a Wan pipeline (model_index.json names {index.get('_class_name')!r})")
    present = {name for name in ("transformer_2", "text_encoder", "tokenizer", "image_encoder", "image_processor")
               if (path / name).is_dir() and index.get(name, [None])[0] is not None}
    transformer = load_wan_transformer(path / "transformer", dtype=dtype)
    wan_vae = load_wan_vae(path / "vae")
    _check_fit(transformer, wan_vae, str(path))
    extra: dict[str, Any] = {name: _transformers_component(path / name, name)
                             for name in present - {"transformer_2"}}
    if "transformer_2" in present:
        extra["transformer_2"] = load_wan_transformer(path / "transformer_2", dtype=dtype)
        extra["boundary_ratio"] = index.get("boundary_ratio")
    scheduler = path / "scheduler" / "scheduler_config.json"
    sched = read_json(scheduler) if scheduler.is_file() else {}
    sampler = "unipc" if sched.get("_class_name") == "UniPCMultistepScheduler" else "flow_euler"
    return TextToVideoPipeline(transformer, wan_vae, flow_shift=_flow_shift(sched), sampler=sampler,
                               expand_timesteps=bool(index.get("expand_timesteps", False)), **extra)


def wan_model_type(config: WanConfig, two_experts: bool = False) -> str:
    """The Wan release a transformer config matches (``wan2.1-i2v``, ``wan2.2-ti2v``, ...)."""
    if config.in_channels == 48:
        return "wan2.2-ti2v"
    if two_experts:
        return "wan2.2-i2v-a14b" if config.in_channels > config.out_channels else "wan2.2-t2v-a14b"
    if config.pos_embed_seq_len is not None:
        return "wan2.1-flf2v"
    return "wan2.1-i2v" if config.in_channels > config.out_channels else "wan2.1-t2v"


def read_wan_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Shapes and configs of a Wan model (no tensor data read), for ``vidiff info``."""
    path = Path(path)
    folder = (path / "model_index.json").is_file()
    parts = {"transformer": path / "transformer", "transformer_2": path / "transformer_2"} if folder else \
        {"transformer": path}
    components: dict[str, Component] = {}
    for name, where in parts.items():
        if not where.exists():
            continue
        sd = _state_dict(where, device="meta")
        original = is_original_wan_transformer(sd)
        if original:
            sd = transformer_from_original(sd)
        components[name] = Component(_transformer_config(where, sd), sd)
    if folder and (path / "vae").is_dir():
        components["vae"] = Component(read_json(path / "vae" / "config.json"),
                                      _state_dict(path / "vae", device="meta"))
    for name in ("text_encoder", "image_encoder", "scheduler"):
        config_file = path / name / ("scheduler_config.json" if name == "scheduler" else "config.json")
        if folder and config_file.is_file():
            components[name] = Component(read_json(config_file))
    cfg = WanConfig.from_dict(components["transformer"].config)
    kind = wan_model_type(cfg, "transformer_2" in components)
    return Checkpoint("diffusers" if folder else "original", components, notes=[f"Wan model type: {kind}"],
                      extra={"model_type": kind})


def convert_wan_transformer(src: str | os.PathLike, dst: str | os.PathLike, to: str, *,
                            overwrite: bool = False) -> int:
    """Rewrite a Wan transformer (diffusers folder, its ``transformer/`` folder, or an original/ComfyUI file)
    as a diffusers ``transformer`` folder (``to="diffusers"``: ``config.json`` + safetensors) or one file in
    Wan's original key names (``to="single-file"``). Tensors are copied bit for bit; returns their count."""
    src = Path(src)
    where = src / "transformer" if (src / "model_index.json").is_file() else src
    sd = _state_dict(where)
    if is_original_wan_transformer(sd):
        sd = transformer_from_original(sd)
    config = _transformer_config(where, sd)
    WanConfig.from_dict(config)  # validated before anything is written
    if to == "diffusers":
        with atomic_output(dst, overwrite=overwrite) as tmp:
            write_json_atomic({"_class_name": "WanTransformer3DModel", **config}, tmp / "config.json")
            save_safetensors_atomic(sd, tmp / "diffusion_pytorch_model.safetensors")
    elif to == "single-file":
        with atomic_output(dst, overwrite=overwrite, directory=False) as tmp:
            save_safetensors_atomic(transformer_to_original(sd), tmp,
                                    metadata={CONFIG_METADATA_KEY: json.dumps(config)})
    else:
        raise CheckpointError(f"a Wan transformer converts --to diffusers or single-file, not {to!r}")
    return len(sd)
