"""LoRA on the spatio-temporal UNet: exact fuse/unfuse, scale 0, peft as the oracle, lossless formats, the
ComfyUI key rule checked against a real single-file checkpoint, and one LoRA across checkpoint layouts."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from vidiff.adapters import (
    LoRAAdapter,
    LoRAFile,
    attach_lora,
    detach_lora,
    fuse_loras,
    layer_names,
    read_lora,
    state_sha256,
    unfuse_loras,
    write_lora,
)
from vidiff.io.checkpoints import read_checkpoint, write_checkpoint
from vidiff.pipelines.image_to_video import ImageToVideoPipeline, bundled_model_path
from vidiff.pipelines.loading import load_model

TARGETS = ("*.to_q", "*.to_k", "*.to_v", "*.to_out.0", "*.net.0.proj", "*.net.2", "*.conv1", "*.time_emb_proj")
SMALL = dict(num_frames=3, num_inference_steps=2, height=48, width=64, output_type="pt", progress=False)


@pytest.fixture(scope="module")
def unet(tiny_svd_folder: Path) -> torch.nn.Module:
    return load_model(tiny_svd_folder).unet.float().eval()


def _lora(net: torch.nn.Module, seed: int = 0, rank: int = 4, alpha: float = 6.0, std: float = 0.1) -> LoRAAdapter:
    """A LoRA with non-zero up weights (a fresh one is the identity) on attention, FF, resnet convs (2-D
    and 3-D) and the time-embedding projections."""
    adapter = LoRAAdapter.create(net, rank=rank, alpha=alpha, targets=TARGETS)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in adapter.items():
            layer.up.copy_(torch.randn(layer.up.shape, generator=g) * std)
    return adapter


def _inputs(net: torch.nn.Module, seed: int = 1) -> tuple:
    from vidiff.conditioning import Cond

    g = torch.Generator().manual_seed(seed)
    c = net.config
    x = torch.randn(1, 3, c.in_channels - 4, 8, 8, generator=g)
    cond = Cond(crossattn=torch.randn(1, 1, c.cross_attention_dim, generator=g),
                vector=torch.randn(1, c.projection_class_embeddings_input_dim, generator=g),
                concat=torch.randn(1, 3, 4, 8, 8, generator=g))
    return x, torch.tensor([0.3]), cond


def _file(net: torch.nn.Module, adapter: LoRAAdapter) -> LoRAFile:
    meta = {"rank": 4, "alpha": 6.0, "targets": list(TARGETS), "base_model_sha256": state_sha256(net.state_dict()),
            "unet_config": net.config.to_dict()}
    return LoRAFile(adapter.to_tensors(), meta)


def test_fuse_then_unfuse_restores_every_bit_and_matches_unfused(unet: torch.nn.Module) -> None:
    net = copy.deepcopy(unet)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    adapter = _lora(net)
    attach_lora(net, adapter, "a")
    attach_lora(net, _lora(net, seed=5), "b")  # two LoRAs on the same layers
    x, c_noise, cond = _inputs(net)
    with torch.no_grad():
        base = unet(x, c_noise, cond)
        unfused = net(x, c_noise, cond)
        assert fuse_loras(net) > 0
        changed = sum(not torch.equal(before[k], v) for k, v in net.state_dict().items())
        fused = net(x, c_noise, cond)
    assert changed >= len(adapter.targets)  # the weights did change
    assert (unfused - base).abs().max() > 1e-3  # the LoRAs do something
    assert (fused - unfused).abs().max() <= 1e-5 * max(1.0, unfused.abs().max().item())
    unfuse_loras(net)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # bit for bit
    detach_lora(net, "a")
    detach_lora(net, "b")
    with torch.no_grad():
        assert torch.equal(net(x, c_noise, cond), base)


def test_scale_zero_is_the_base_model_exactly(unet: torch.nn.Module) -> None:
    net = copy.deepcopy(unet)
    adapter = _lora(net)
    attach_lora(net, adapter, "a")
    adapter.set_scale(0.0)
    x, c_noise, cond = _inputs(net)
    with torch.no_grad():
        assert torch.equal(net(x, c_noise, cond), unet(x, c_noise, cond))
        fuse_loras(net)
        assert torch.equal(net(x, c_noise, cond), unet(x, c_noise, cond))


def test_same_output_as_peft_on_the_same_weights(unet: torch.nn.Module) -> None:
    """peft (the oracle) wraps the same layers with the same A, B and α: the outputs agree."""
    from peft import LoraConfig, inject_adapter_in_model

    net = copy.deepcopy(unet)
    adapter = _lora(net, rank=4, alpha=6.0)
    attach_lora(net, adapter, "a")
    other = copy.deepcopy(unet)
    names = list(adapter.targets)
    other = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=6.0, target_modules=names), other)
    with torch.no_grad():
        modules = dict(other.named_modules())
        for name, layer in adapter.items():
            modules[name].lora_A["default"].weight.copy_(layer.down)
            modules[name].lora_B["default"].weight.copy_(layer.up)
    x, c_noise, cond = _inputs(net)
    with torch.no_grad():
        ours, theirs = net(x, c_noise, cond), other(x, c_noise, cond)
    assert (ours - unet(x, c_noise, cond)).abs().max() > 1e-3
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_round_trips_between_the_three_formats_keep_every_tensor(unet: torch.nn.Module, tmp_path: Path) -> None:
    original = _file(unet, _lora(unet))
    original.tensors["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.alpha"] = torch.tensor(2.5)
    path, lora = tmp_path / "start.safetensors", original
    write_lora(lora, path, "vidiff")
    for fmt in ("peft", "kohya", "vidiff", "kohya", "peft", "vidiff"):
        lora, unmatched = read_lora(path)
        path = tmp_path / f"{fmt}-{len(list(tmp_path.iterdir()))}.safetensors"
        write_lora(lora, path, fmt)
        back, _ = read_lora(path)
        assert back.format == fmt and not unmatched
        assert set(back.tensors) == set(original.tensors)
        for k, v in original.tensors.items():
            assert back.tensors[k].dtype == v.dtype and torch.equal(back.tensors[k], v), (fmt, k)
        assert back.metadata["base_model_sha256"] == original.metadata["base_model_sha256"]


def test_kohya_keys_follow_comfyui_rule_on_a_real_single_file(tiny_svd_folder: Path, unet: torch.nn.Module,
                                                              tmp_path: Path) -> None:
    """ComfyUI (``model_lora_keys_unet``) maps each ``diffusion_model.<key>.weight`` of the original checkpoint
    to ``lora_unet_<key with dots as underscores>``: every key we write must be one of those."""
    single = tmp_path / "svd.safetensors"
    write_checkpoint(read_checkpoint(tiny_svd_folder), single, "single-file")
    with safe_open(str(single), "pt") as f:
        comfy = {"lora_unet_" + k[len("model.diffusion_model."):-len(".weight")].replace(".", "_")
                 for k in f.keys() if k.startswith("model.diffusion_model.") and k.endswith(".weight")}  # noqa: SIM118
    path = tmp_path / "kohya.safetensors"
    lora = _file(unet, _lora(unet))
    write_lora(lora, path, "kohya")
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
    assert len(keys) == len(lora.tensors)
    stems = {k.split(".")[0] for k in keys}
    assert stems <= comfy and len(stems) == len(lora.layers)
    assert {k.split(".", 1)[1] for k in keys} == {"lora_down.weight", "lora_up.weight", "alpha"}


def test_one_lora_applies_to_the_model_in_every_layout(tiny_svd_folder: Path, tmp_path: Path) -> None:
    """A LoRA made on the diffusers-layout model gives the same frames on the same model read from the original
    single file; the base-model hash is the same for both."""
    single = tmp_path / "model.safetensors"
    write_checkpoint(read_checkpoint(tiny_svd_folder), single, "single-file")
    pipe = ImageToVideoPipeline.from_pretrained(tiny_svd_folder)
    lora = _file(pipe.unet, _lora(pipe.unet))
    write_lora(lora, tmp_path / "l.safetensors", "kohya")
    other = ImageToVideoPipeline.from_pretrained(single)
    assert other.base_model_sha256() == pipe.base_model_sha256() == lora.metadata["base_model_sha256"]
    image = torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(0))
    base = pipe(image, generator=torch.Generator().manual_seed(0), **SMALL).frames
    frames = []
    for p in (pipe, other):
        p.load_lora(tmp_path / "l.safetensors", 0.8)
        frames.append(p(image, generator=torch.Generator().manual_seed(0), **SMALL).frames)
    assert (frames[0] - base).abs().max() > 1e-3
    assert torch.equal(frames[0], frames[1])
    record = pipe.lora_records()[0]
    assert record["scale"] == 0.8 and len(record["sha256"]) == 64


def test_pipeline_fuse_unfuse_scales_and_unload(tmp_path: Path) -> None:
    """On the bundled model: fused frames within 1e-5 of unfused ones, scale 0 (fused or not) and unloading give
    the base frames bit for bit, unfusing gives the base weights bit for bit."""
    pipe = ImageToVideoPipeline.from_pretrained(bundled_model_path())
    write_lora(_file(pipe.unet, _lora(pipe.unet, std=0.05)), tmp_path / "l.safetensors", "peft")
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    settings = dict(num_frames=4, num_inference_steps=3, height=64, width=64, output_type="pt", progress=False)

    def run() -> torch.Tensor:
        return pipe(image, generator=torch.Generator().manual_seed(0), **settings).frames

    base = run()
    pipe.load_lora(tmp_path / "l.safetensors", 1.0, name="style")
    unfused = run()
    pipe.fuse_lora()
    fused = run()
    assert (unfused - base).abs().max() > 1e-3
    assert (fused - unfused).abs().max() <= 1e-5
    pipe.set_lora_scales({"style": 0.0})  # re-fused at scale 0: the base weights
    assert torch.equal(run(), base)
    pipe.unfuse_lora()
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())
    pipe.set_lora_scales(1.0)
    assert torch.equal(run(), unfused)
    pipe.unload_lora()
    assert torch.equal(run(), base) and pipe.lora_records() == []


def test_lora_for_another_architecture_is_refused(tiny_vidiff: Path, unet: torch.nn.Module, tmp_path: Path) -> None:
    """Same layer names, other widths (the diffusers tiny UNet's cross-attention is 32 wide, the vidiff copy's
    too, so make the LoRA on a UNet of other channels)."""
    from vidiff.networks.unet_config import UNetConfig
    from vidiff.networks.unet_st import UNetSpatioTemporal

    cfg = dict(unet.config.to_dict(), block_out_channels=(64, 64))
    wide = UNetSpatioTemporal(UNetConfig(**cfg))
    write_lora(_file(wide, _lora(wide)), tmp_path / "wide.safetensors", "vidiff")
    pipe = ImageToVideoPipeline.from_pretrained(tiny_vidiff)
    with pytest.raises(ValueError, match="another architecture: down_blocks") as e:
        pipe.load_lora(tmp_path / "wide.safetensors")
    assert "\n" not in str(e.value) and pipe.lora_records() == []


def test_unmatched_keys_are_an_error_listing_them_or_a_warning(tiny_vidiff: Path, unet: torch.nn.Module,
                                                                tmp_path: Path) -> None:
    from safetensors.torch import save_file

    lora = _file(unet, _lora(unet))
    write_lora(lora, tmp_path / "k.safetensors", "kohya")
    with safe_open(str(tmp_path / "k.safetensors"), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118
    tensors["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(4, 8)
    tensors["lora_unet_no_such_block_0.lora_up.weight"] = torch.zeros(8, 4)
    save_file(tensors, str(tmp_path / "extra.safetensors"), metadata=meta)
    pipe = ImageToVideoPipeline.from_pretrained(tiny_vidiff)
    with pytest.raises(ValueError, match=r"2 LoRA keys match no layer.*lora_te_text_model.*lora_unet_no_such"):
        pipe.load_lora(tmp_path / "extra.safetensors")
    with pytest.warns(UserWarning, match="lora_unet_no_such_block_0"):
        pipe.load_lora(tmp_path / "extra.safetensors", partial=True)
    assert len(pipe.loras["extra"].adapter.targets) == len(lora.layers)
    assert json.loads(meta["rank"]) == 4 and set(layer_names(unet).values()) >= set(lora.layers)
