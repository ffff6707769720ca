"""Training a video DiT (``model.backbone: dit``) with flow matching, on the same data pipeline as the UNet.

What differs from the UNet is only the network and the objective; the loop, the data, the per-sample draws,
EMA, checkpoints and exact resume are the UNet's (``vidiff.training.loop``):

* **network** — :class:`~vidiff.networks.dit_video.VideoDiT`: Wan 2.x's transformer (Wan team 2025,
  Sec. 3.2) sized by ``model.dit`` (:class:`DiTSizes`), taking the UNet's conditioning (the image's latent
  as concat channels, the fps / motion-bucket / noise-augmentation sinusoids as cross-attention tokens);
  :func:`build_dit` makes it in place of the UNet in :func:`vidiff.training.model.build_models`.
* **objective** — ``loss.objective: flow``, rectified flow (Liu et al. 2022, eq. 1; Wan 2025, eq. 1–2):
  ``x_t = (1 − t)·x₀ + t·ε``, the network predicts the velocity ``v = ε − x₀`` from ``(x_t, 1000·t)``,
  loss ``‖F(x_t, t) − (ε − x₀)‖²``. It is expressed in EDM's framework (``vidiff.diffusion.flow_matching``):
  EDM's state ``x = x₀ + σε`` with ``σ = t/(1 − t)`` is ``x_t/(1 − t)``, :class:`FlowScaling` gives
  ``D = x_t − t·F``, and ``λ(σ) = 1/t²`` (:class:`~vidiff.diffusion.losses.FlowWeighting`) turns EDM's
  ``λ‖D − x₀‖²`` into exactly the velocity loss. ``t`` is logit-normal (SD3, Esser et al. 2024, eq. 19),
  ``logit t ~ N(p_mean, p_std²)``, which is EDM's log-normal σ with the same parameters
  (``ln σ = logit t``), so the draws are the UNet's. ``loss.per_frame`` draws one t per frame (Wan 2.2's
  per-frame timesteps; diffusion forcing, Chen et al. 2024).

The trained model is exported as ``OUTPUT_DIR/model`` with ``transformer/`` (``config.json`` +
``model.safetensors``), the parameter-free autoencoder's ``vae/config.json`` and the sampling keys in
``scheduler/scheduler_config.json``; :func:`load_trained_dit` reads it back as an image-to-video model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vidiff.networks.dit_video import VideoDiT, VideoDiTConfig

if TYPE_CHECKING:
    from vidiff.training.config import DataConfig, LossConfig, ModelConfig
    from vidiff.training.model import ModelBundle

DEFAULT_TOKEN_DIM = 64  # micro-conditioning token width when model.addition_time_embed_dim is unset


@dataclass(frozen=True)
class DiTSizes:
    """``model.dit``: the transformer's sizes (:class:`~vidiff.networks.dit_wan.WanConfig`'s names).

    The model width is ``num_attention_heads × attention_head_dim``; ``patch_size`` is (frames, height,
    width) in latent cells. The token width of the conditioning is ``model.addition_time_embed_dim``.
    """

    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_layers: int = 8
    num_attention_heads: int = 6
    attention_head_dim: int = 32
    ffn_dim: int = 768
    freq_dim: int = 256

    def __post_init__(self) -> None:
        from vidiff.training.config import _check

        _check(len(self.patch_size) == 3 and min(self.patch_size) >= 1, "model.dit.patch_size",
               f"must be three integers >= 1, got {self.patch_size}")
        for name in ("num_layers", "num_attention_heads", "ffn_dim", "freq_dim"):
            _check(getattr(self, name) >= 1, f"model.dit.{name}", f"must be >= 1, got {getattr(self, name)}")
        _check(self.attention_head_dim >= 6 and self.attention_head_dim % 2 == 0, "model.dit.attention_head_dim",
               f"must be even and >= 6 (3D RoPE splits it over frames, height, width), got {self.attention_head_dim}")


def dit_config(cfg: ModelConfig, data: DataConfig, *, channels: int, concat_channels: int) -> VideoDiTConfig:
    """The :class:`VideoDiTConfig` of ``model.dit`` for latents of ``channels`` and ``concat_channels``."""
    s = cfg.dit
    return VideoDiTConfig(in_channels=channels + concat_channels, out_channels=channels, num_frames=data.num_frames,
                          addition_time_embed_dim=cfg.addition_time_embed_dim or DEFAULT_TOKEN_DIM,
                          patch_size=s.patch_size, num_attention_heads=s.num_attention_heads,
                          attention_head_dim=s.attention_head_dim, ffn_dim=s.ffn_dim, num_layers=s.num_layers,
                          freq_dim=s.freq_dim)


def build_dit(cfg: ModelConfig, data: DataConfig, *, channels: int, concat_channels: int) -> VideoDiT:
    """A fresh :class:`VideoDiT` (the caller seeds the RNG). The latent grid must divide by the patch."""
    dcfg = dit_config(cfg, data, channels=channels, concat_channels=concat_channels)
    return VideoDiT(dcfg)


def check_dit_shapes(cfg: ModelConfig, data: DataConfig, downsample: int) -> None:
    """Refuse, naming the field, a frame count or latent size the DiT's patch does not divide."""
    pt, ph, pw = cfg.dit.patch_size
    h, w = data.height // downsample, data.width // downsample
    if data.num_frames % pt or h % ph or w % pw:
        raise ValueError(f"model.dit.patch_size {tuple(cfg.dit.patch_size)} must divide (data.num_frames, latent "
                         f"height, latent width) = {(data.num_frames, h, w)}")


def flow_parametrisation(loss: LossConfig) -> dict[str, Any]:
    """What a ``loss.objective: flow`` model records for sampling: the ``flow`` scaling (velocity on EDM's
    state, ``vidiff.diffusion.flow_matching.FlowScaling``)."""
    return {"scaling": "flow", "sigma_data": 1.0}


def export_dit(bundle: ModelBundle, weights: dict[str, torch.Tensor], out_dir: Path,
               scheduler: dict[str, Any], dtype: torch.dtype = torch.float32) -> Path:
    """Write the trained DiT (``weights``: the trained module's ``unet.*`` state) as ``out_dir`` with
    ``transformer/``, ``vae/config.json`` (parameter-free autoencoders only) and ``scheduler/``."""
    from vidiff.io import save_safetensors_atomic, write_json_atomic

    out_dir = Path(out_dir)
    sd = {k[len("unet."):]: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
          for k, v in weights.items() if k.startswith("unet.")}
    save_safetensors_atomic(sd, out_dir / "transformer" / "model.safetensors", {"format": "pt"})
    write_json_atomic(bundle.unet.config.to_diffusers(), out_dir / "transformer" / "config.json")
    if bundle.vae is not None:
        write_json_atomic(bundle.vae.config.to_diffusers(), out_dir / "vae" / "config.json")
    extra = bundle.extra
    defaults = {k: extra[k] for k in ("height", "width", "num_frames")}
    if extra.get("guidance") is not None:
        defaults["min_guidance_scale"], defaults["max_guidance_scale"] = map(float, extra["guidance"])
    write_json_atomic({**scheduler, "generation_defaults": defaults, "residual": bool(extra.get("residual"))},
                      out_dir / "scheduler" / "scheduler_config.json")
    return out_dir


def dit_pipeline(path: str | Path, *, num_frames: int | None = None, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> Any:
    """An :class:`~vidiff.pipelines.image_to_video.ImageToVideoPipeline` over a model :func:`export_dit`
    wrote, with the model's own defaults (trained size and frame count, guidance) over the SVD family's —
    what ``ImageToVideoPipeline.from_pretrained`` and ``vidiff generate --model`` give for such a folder."""
    from vidiff.pipelines.image_to_video import ImageToVideoPipeline

    return ImageToVideoPipeline.from_pretrained(path, num_frames=num_frames, dtype=dtype, device=device)
