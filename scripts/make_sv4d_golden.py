"""Golden files for SV4D / SV4D 2.0 network parity: Stability's own ``sgm`` modules on tiny random weights.

SV4D (Xie et al. 2024, Sec. 3.2) extends SV3D's video UNet to a grid of V views x T times: every attention
layer becomes spatial attention, then a view block across the views of one time, then a motion block across
the times of one view (sgm: ``SpatialUNetModelWithTime`` with ``PostHocResBlockWithTime`` and
``PostHocSpatialTransformerWithTimeMixingAndMotion``). SV4D 2.0 (Yao et al. 2025) adds a camera-driven view
embedding, a separate motion blend factor and, in its 4-view model, "3D attention" (a different reshape).

This script is NOT part of vidiff and is not run by the tests. It imports ``sgm`` from a checkout of
Stability-AI/generative-models (not on PyPI; its code must not be copied into vidiff), takes each model's
``network_config`` from the checkout's own ``scripts/sampling/configs/{sv4d,sv4d2,sv4d2_8views}.yaml`` and
shrinks only its sizes (:data:`TINY`: two levels of 32 channels, attention in the middle block only, heads of
16, CLIP width 32, ``adm_in_channels`` 128 = 4 · 32 so SV4D 2.0's camera embedding fits), with seeded random
weights (``make_sv3d_golden.randomize`` at unit scale: float16-exact), and writes under ``tests/data/sv4d/``:

- ``tiny_sv4d.safetensors``, ``tiny_sv4d2.safetensors``: the weights under sgm's single-file names
  (``model.diffusion_model.*``), float16. SV4D 2.0's 4-view and 8-view networks have the same tensors (3D
  attention is a reshape), so ``sv4d2_8views`` uses ``tiny_sv4d2``;
- ``golden_{sv4d,sv4d2,sv4d2_8views}.safetensors``: one forward pass of sgm's network on a batch of 2
  with a different noise level for every latent (``x``, ``concat``, ``c_noise`` as ``(B, T·V, ...)``;
  ``crossattn (B, T, 32)``, ``vector (B, T·V, 128)``, ``cond_view (B, V, 4, H, W)``, all float16-exact and
  stored in half; ``out`` in float32), latents 8x6.

The inputs are laid out as Stability's sampling scripts feed the network: ``(b t v)`` rows for x, the
timesteps and the vector, ``context (b, t, d)``, ``cond_view ((b v), c, h, w)``, ``num_video_frames = T·V``,
``image_only_indicator`` zeros.

With ``--open-clip DIR`` (the unpacked ``open_clip`` package of open_clip_torch 2.20) it also writes
``released_keys_{sv4d,sv4d2,sv4d2_8views}.json.gz``: every tensor name and shape of the released single
files, from the reference's module tree built at full size on the meta device from the same yamls:
``model.diffusion_model`` (the network), ``conditioner.embedders.0.open_clip.model`` (OpenCLIP ViT-H-14 minus
its deleted text ``transformer``), ``conditioner.embedders.{1,4,5}.encoder`` (the ``AutoencoderKLModeOnly``
copies of ``cond_frames``, ``cond_view`` and ``cond_motion``), ``first_stage_model.decoder`` (SD ``Decoder``;
the first stage's encoder is Identity). The yamls' xformers attention modes are built as their plain
variants (same tensors; xformers is not installed).

Run (with the venv of make_sv3d_golden.py; torch 2.13 on the CPU)::

    python scripts/make_sv4d_golden.py --sgm /tmp/gm --out tests/data/sv4d [--open-clip /tmp/oc/open_clip]

Functions are meant for reuse (a sampling golden): :func:`network_params`, :func:`build_tiny_sgm_network`,
:func:`sgm_forward`, :func:`forward_inputs`. The tiny per-frame SD decoder of ``make_sv3d_golden.py``
(``tests/data/sv3d/tiny_sv3d_p.safetensors``, ``first_stage_model.decoder.*``) is SV4D's first stage too.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_sv3d_golden as sv3d  # (randomize, import_open_clip: shared with the SV3D goldens)

VARIANTS = {"sv4d": (3, 8), "sv4d2": (3, 4), "sv4d2_8views": (3, 8)}  # tiny (T, V) of each golden
WEIGHTS = {"sv4d": "tiny_sv4d", "sv4d2": "tiny_sv4d2", "sv4d2_8views": "tiny_sv4d2"}
BATCH, HEIGHT, WIDTH = 2, 8, 6
SEED = 0
WEIGHT_SCALE = 1.0
TINY = {  # the only changes to each yaml's network_config
    "model_channels": 32, "channel_mult": [1, 1], "attention_resolutions": [], "num_res_blocks": 1,
    "num_head_channels": 16, "context_dim": 32, "adm_in_channels": 128, "spatial_transformer_attn_type": "softmax",
}
DDCONFIG_FULL = {**sv3d.SV3D_DDCONFIG}  # every SV4D yaml's VAE ddconfig (attn_type vanilla-xformers -> vanilla)


def import_sgm(root: Path) -> types.SimpleNamespace:
    """sgm's SV4D network and the pieces of the released files (``open_clip`` stubbed as for SV3D)."""
    sys.path.insert(0, str(root))
    sys.modules.setdefault("open_clip", types.ModuleType("open_clip"))
    from sgm.modules.diffusionmodules.model import Decoder
    from sgm.modules.diffusionmodules.video_model import SpatialUNetModelWithTime

    return types.SimpleNamespace(root=root, Decoder=Decoder, SpatialUNetModelWithTime=SpatialUNetModelWithTime)


def network_params(sgm: types.SimpleNamespace, variant: str, tiny: bool = True) -> dict:
    """``network_config.params`` of ``scripts/sampling/configs/{variant}.yaml``, shrunk by :data:`TINY`."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(sgm.root / "scripts" / "sampling" / "configs" / f"{variant}.yaml")
    params = OmegaConf.to_container(cfg.model.params.network_config.params, resolve=True)
    if not tiny:
        return {**params, "spatial_transformer_attn_type": "softmax"}
    return {**params, **TINY}


def build_tiny_sgm_network(sgm: types.SimpleNamespace, variant: str, seed: int = SEED) -> torch.nn.Module:
    """sgm's tiny ``SpatialUNetModelWithTime`` of ``variant`` with seeded float16-exact random weights."""
    torch.manual_seed(seed)
    net = sgm.SpatialUNetModelWithTime(**network_params(sgm, variant)).eval()
    # Unit-variance matrices: with SV3D's smaller 0.2 the attention layers moved the output by ~1e-5 only, below
    # the parity tolerance; at 1.0 dropping the middle transformer changes it by ~10 %.
    sv3d.randomize(net, seed, scale=WEIGHT_SCALE)
    return net


def forward_inputs(variant: str, seed: int = SEED + 1) -> dict[str, torch.Tensor]:
    """Random inputs in vidiff's layout (``x (B, T·V, 4, H, W)``, time-major; see the module docstring)."""
    t, v = VARIANTS[variant]
    g = torch.Generator().manual_seed(seed)
    f = t * v
    inputs = {
        "x": torch.randn(BATCH, f, 4, HEIGHT, WIDTH, generator=g),
        "concat": torch.randn(BATCH, f, 4, HEIGHT, WIDTH, generator=g),
        "c_noise": 0.25 * torch.log(torch.rand(BATCH, f, generator=g) * 100 + 0.01),  # 0.25 ln σ, per latent
        "crossattn": torch.randn(BATCH, t, TINY["context_dim"], generator=g),
        "vector": torch.randn(BATCH, f, TINY["adm_in_channels"], generator=g),
        "cond_view": torch.randn(BATCH, v, 4, HEIGHT, WIDTH, generator=g),
    }
    return {k: x.half().float() for k, x in inputs.items()}  # float16-exact: stored in half, losslessly


def sgm_forward(net: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """sgm's forward on ``inputs`` (vidiff layout), fed as the SV4D sampling scripts feed it."""
    b, f = inputs["x"].shape[:2]
    x = torch.cat([inputs["x"], inputs["concat"]], dim=2).flatten(0, 1)  # ((b t v), 8, H, W)
    with torch.no_grad():
        out = net(x, inputs["c_noise"].reshape(-1), context=inputs["crossattn"], y=inputs["vector"].flatten(0, 1),
                  num_video_frames=f, image_only_indicator=torch.zeros(b, f),
                  cond_view=inputs["cond_view"].flatten(0, 1))
    return out.unflatten(0, (b, f))


def released_keys(sgm: types.SimpleNamespace, open_clip_root: Path) -> dict[str, dict[str, list[int]]]:
    """``{variant: {name: shape}}`` of the released single files (see the module docstring)."""
    from sgm.models.autoencoder import AutoencoderKLModeOnly

    oc = sv3d.import_open_clip(open_clip_root)
    clip_cfg = json.loads((open_clip_root / "model_configs" / "ViT-H-14.json").read_text())
    parts: dict[str, torch.nn.Module] = {}
    with torch.device("meta"):
        clip = oc.CLIP(**clip_cfg)
        del clip.transformer  # FrozenOpenCLIPImageEmbedder: ``del model.transformer``
        parts["conditioner.embedders.0.open_clip.model."] = clip
        for i in (1, 4, 5):  # cond_frames, cond_view, cond_motion: VideoPredictionEmbedderWithEncoder.encoder
            parts[f"conditioner.embedders.{i}.encoder."] = AutoencoderKLModeOnly(
                embed_dim=4, ddconfig=DDCONFIG_FULL, lossconfig={"target": "torch.nn.Identity"})
        parts["first_stage_model.decoder."] = sgm.Decoder(**DDCONFIG_FULL)
        out = {}
        for variant in VARIANTS:
            net = sgm.SpatialUNetModelWithTime(**network_params(sgm, variant, tiny=False))
            keys = {f"model.diffusion_model.{k}": list(v.shape) for k, v in net.state_dict().items()}
            for prefix, module in parts.items():
                keys.update({prefix + k: list(v.shape) for k, v in module.state_dict().items()})
            out[variant] = keys
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sgm", type=Path, required=True, help="checkout of Stability-AI/generative-models")
    parser.add_argument("--out", type=Path, default=Path("tests/data/sv4d"))
    parser.add_argument("--open-clip", type=Path, default=None,
                        help="unpacked open_clip package (2.20): also write released_keys_*.json.gz")
    args = parser.parse_args()
    sgm = import_sgm(args.sgm)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.open_clip is not None:
        for variant, keys in released_keys(sgm, args.open_clip).items():
            with gzip.open(args.out / f"released_keys_{variant}.json.gz", "wt") as f:
                json.dump(keys, f, sort_keys=True)
            print(variant, len(keys), "tensors")

    weights: dict[str, dict[str, torch.Tensor]] = {}
    for variant in VARIANTS:
        net = build_tiny_sgm_network(sgm, variant)
        sd = {f"model.diffusion_model.{k}": v.half().contiguous() for k, v in net.state_dict().items()}
        name = WEIGHTS[variant]
        if name in weights:  # the 4- and 8-view SV4D 2.0 networks share their tensors
            assert weights[name].keys() == sd.keys() and all(torch.equal(weights[name][k], sd[k]) for k in sd)
        weights[name] = sd
        inputs = forward_inputs(variant)
        out = sgm_forward(net, inputs)
        golden = {**{k: x.half() for k, x in inputs.items()}, "out": out.contiguous()}
        save_file(golden, str(args.out / f"golden_{variant}.safetensors"))
        print(f"{variant}: |out| mean {out.abs().mean():.4g}, shape {tuple(out.shape)}")
    for name, sd in weights.items():
        save_file(sd, str(args.out / f"{name}.safetensors"))
    sizes = {p.name: p.stat().st_size for p in sorted(args.out.glob("*"))}
    print(f"wrote {sizes}, total {sum(sizes.values())} bytes")


if __name__ == "__main__":
    main()
