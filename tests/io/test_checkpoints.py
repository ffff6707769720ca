"""Checkpoint layouts end to end, with diffusers' own save_pretrained / from_pretrained as the oracle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import diffusers
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vidiff.io import (
    CheckpointError,
    detect_layout,
    load_state_dict_strict,
    read_checkpoint,
    write_checkpoint,
)
from vidiff.io.single_file import infer_unet_config, infer_vae_config


@pytest.fixture(scope="module")
def src(tiny_svd_folder: Path) -> Path:
    return tiny_svd_folder


def _files(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {str(p.relative_to(folder)): load_file(str(p)) for p in sorted(folder.rglob("*.safetensors"))}


def _assert_same_folder(a: Path, b: Path) -> None:
    """Same tensors bit for bit (names, dtypes, values) and same configs, file by file."""
    fa, fb = _files(a), _files(b)
    assert fa.keys() == fb.keys()
    for name in fa:
        assert fa[name].keys() == fb[name].keys(), name
        for k, t in fa[name].items():
            assert t.dtype == fb[name][k].dtype and torch.equal(t, fb[name][k]), (name, k)
    for cfg in ("unet/config.json", "vae/config.json", "image_encoder/config.json",
                "scheduler/scheduler_config.json", "feature_extractor/preprocessor_config.json"):  # fmt: skip
        assert json.loads((a / cfg).read_text()) == json.loads((b / cfg).read_text()), cfg


def _outputs(folder: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pipe = diffusers.StableVideoDiffusionPipeline.from_pretrained(folder)
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 2, 8, 8, 8, generator=g)
    ctx = torch.randn(1, 1, 32, generator=g)
    with torch.no_grad():
        u = pipe.unet(
            sample, torch.tensor([0.3]), ctx, added_time_ids=torch.tensor([[6.0, 127.0, 0.02]])
        ).sample
        v = pipe.vae.decode(torch.randn(2, 4, 8, 8, generator=g), num_frames=2).sample
        e = pipe.image_encoder(pixel_values=torch.randn(1, 3, 224, 224, generator=g)).image_embeds
    return u, v, e


def test_diffusers_single_file_diffusers_round_trip(src: Path, tmp_path: Path) -> None:
    one = tmp_path / "svd.safetensors"
    ckpt = read_checkpoint(src)
    assert ckpt.layout == "diffusers" and ckpt["unet"].config["resnet_eps_policy"] == "diffusers"
    write_checkpoint(ckpt, one, "single-file")
    assert detect_layout(one) == "single-file"

    # every single-file tensor is accounted for: one per diffusers tensor plus the documented encoder copy
    with safe_open(str(one), "pt") as f:
        keys = set(f.keys())
    src_count = sum(len(sd) for sd in _files(src).values())
    encoder = {k for k in keys if k.startswith("first_stage_model.encoder.")}
    assert (
        encoder
        and {"conditioner.embedders.3.encoder." + k[len("first_stage_model.") :] for k in encoder} <= keys
    )
    # OpenCLIP fuses each layer's q/k/v weights and biases (6 tensors) into in_proj_weight/bias (2)
    assert len(keys) == src_count + len(encoder) - 4 * 2
    for name in ("model.diffusion_model.input_blocks.1.0.time_stack.in_layers.0.weight",
                 "model.diffusion_model.label_emb.0.0.weight",
                 "first_stage_model.decoder.up.1.block.0.conv1.weight",
                 "first_stage_model.decoder.conv_out.time_mix_conv.weight",
                 "conditioner.embedders.3.encoder.quant_conv.weight",
                 "conditioner.embedders.0.open_clip.model.visual.transformer.resblocks.1.attn.in_proj_weight",
                 "conditioner.embedders.0.open_clip.model.visual.proj"):  # fmt: skip
        assert name in keys, name

    back = read_checkpoint(one)
    assert back.ignored == sorted(encoder)  # the duplicate, compared equal and not used
    out = tmp_path / "back"
    write_checkpoint(back, out, "diffusers")
    _assert_same_folder(src, out)
    for a, b in zip(_outputs(src), _outputs(out)):
        assert torch.equal(a, b)


def test_vidiff_folder_round_trip(src: Path, tmp_path: Path) -> None:
    vd, out = tmp_path / "vd", tmp_path / "back"
    write_checkpoint(read_checkpoint(src), vd, "vidiff")
    manifest = json.loads((vd / "vidiff.json").read_text())
    assert manifest["format_version"] == 1 and set(manifest["components"]) == {
        "unet", "vae", "image_encoder", "feature_extractor", "scheduler"}  # fmt: skip
    assert (vd / "unet" / "model.safetensors").is_file() and not (
        vd / "scheduler" / "model.safetensors"
    ).exists()
    write_checkpoint(read_checkpoint(vd), out, "diffusers")
    _assert_same_folder(src, out)


def test_single_file_without_metadata_infers_configs(src: Path, tmp_path: Path) -> None:
    """A file as Stability AI publishes it (no vidiff metadata): configs come from shapes."""
    one = tmp_path / "plain.safetensors"
    write_checkpoint(read_checkpoint(src), one, "single-file")
    save_file(load_file(str(one)), str(one))  # drop the metadata
    ckpt = read_checkpoint(one, validate=False)
    ref = json.loads((src / "unet" / "config.json").read_text())
    unet = ckpt["unet"].config
    for k in ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "cross_attention_dim",
              "projection_class_embeddings_input_dim", "down_block_types", "up_block_types"):  # fmt: skip
        assert list(unet[k]) == list(ref[k]) if isinstance(ref[k], list) else unet[k] == ref[k], k
    assert unet["resnet_eps_policy"] == "sgm" and unet["num_frames"] == 14
    assert unet["num_attention_heads"] == [1, 1]  # channels // 64 (sgm's 64-dim heads), at least 1
    vae_ref = json.loads((src / "vae" / "config.json").read_text())
    for k in ("block_out_channels", "layers_per_block", "latent_channels", "in_channels", "out_channels"):
        assert ckpt["vae"].config[k] == vae_ref[k], k
    assert ckpt["image_encoder"].config["num_hidden_layers"] == 2
    assert read_checkpoint(one, validate=False, num_frames=25)["unet"].config["num_frames"] == 25
    # the inferred configs describe exactly the tensors present
    assert infer_unet_config(ckpt["unet"].state_dict)["block_out_channels"] == [32, 64]
    assert infer_vae_config(ckpt["vae"].state_dict)["_class_name"] == "AutoencoderKLTemporalDecoder"
    # the tiny model's 2/4 heads are not what sgm's 64-dim rule gives; with the real head count it loads
    ckpt["unet"].config["num_attention_heads"] = ref["num_attention_heads"]
    ckpt["unet"].config["addition_time_embed_dim"] = ref["addition_time_embed_dim"]
    unet_cfg = {k: v for k, v in ckpt["unet"].config.items() if k != "resnet_eps_policy"}
    model = diffusers.UNetSpatioTemporalConditionModel.from_config(unet_cfg)
    load_state_dict_strict(model, ckpt["unet"].state_dict, "unet")


def test_sharded_and_fp16_variants(src: Path, tmp_path: Path) -> None:
    folder = tmp_path / "variants"
    shutil.copytree(src, folder)
    # unet: sharded index; vae: only an fp16 variant; image_encoder: legacy position_ids buffer
    unet = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    names = sorted(unet)
    shards = {"part-1.safetensors": names[: len(names) // 2], "part-2.safetensors": names[len(names) // 2 :]}
    for shard, keys in shards.items():
        save_file({k: unet[k] for k in keys}, str(folder / "unet" / shard))
    index = {"metadata": {}, "weight_map": {k: s for s, ks in shards.items() for k in ks}}
    (folder / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    vae = load_file(str(folder / "vae" / "diffusion_pytorch_model.safetensors"))
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    save_file(
        {k: v.half() for k, v in vae.items()},
        str(folder / "vae" / "diffusion_pytorch_model.fp16.safetensors"),
    )
    clip = load_file(str(folder / "image_encoder" / "model.safetensors"))
    save_file({**clip, "vision_model.embeddings.position_ids": torch.arange(5)[None]},
              str(folder / "image_encoder" / "model.safetensors"))  # fmt: skip

    ckpt = read_checkpoint(folder)
    assert all(torch.equal(ckpt["unet"].state_dict[k], unet[k]) for k in unet) and len(
        ckpt["unet"].state_dict
    ) == len(unet)
    assert ckpt["vae"].state_dict["decoder.conv_in.weight"].dtype == torch.float16
    assert any("fp16" in n for n in ckpt.notes)
    assert ckpt.ignored == ["image_encoder/vision_model.embeddings.position_ids"]
    assert ckpt["image_encoder"].state_dict.keys() == clip.keys()


# ------------------------------------------------------------------------------------------------
# bad checkpoints


def _single(src: Path, tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor], dict[str, str]]:
    one = tmp_path / "good.safetensors"
    write_checkpoint(read_checkpoint(src), one, "single-file")
    with safe_open(str(one), "pt") as f:
        meta = f.metadata()
    return one, load_file(str(one)), meta


def _rewrite(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> Path:
    save_file(tensors, str(path), metadata=meta)
    return path


def test_single_file_with_a_missing_tensor(src: Path, tmp_path: Path) -> None:
    one, t, meta = _single(src, tmp_path)
    del t["model.diffusion_model.input_blocks.1.0.time_stack.in_layers.2.weight"]
    with pytest.raises(
        CheckpointError,
        match=r"unet: .*1 missing: down_blocks\.0\.resnets\.0\.temporal_res_block\.conv1\.weight",
    ):
        read_checkpoint(_rewrite(one, t, meta))


def test_single_file_with_a_renamed_tensor(src: Path, tmp_path: Path) -> None:
    one, t, meta = _single(src, tmp_path)
    t["first_stage_model.decoder.up.0.block.1.norm2.weight_old"] = t.pop(
        "first_stage_model.decoder.up.0.block.1.norm2.weight"
    )
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(_rewrite(one, t, meta))
    msg = str(e.value)
    assert "1 missing: decoder.up_blocks.1.resnets.1.spatial_res_block.norm2.weight" in msg
    assert "1 unexpected: decoder.up_blocks.1.resnets.1.spatial_res_block.norm2.weight_old" in msg


def test_single_file_with_a_wrong_shape(src: Path, tmp_path: Path) -> None:
    one, t, meta = _single(src, tmp_path)
    t["conditioner.embedders.0.open_clip.model.visual.proj"] = torch.zeros(32, 31)
    with pytest.raises(
        CheckpointError,
        match=r"image_encoder: .*visual_projection\.weight \(expected \[32, 32\], got \[31, 32\]\)",
    ):
        read_checkpoint(_rewrite(one, t, meta))


def test_single_file_with_foreign_tensors(src: Path, tmp_path: Path) -> None:
    one, t, meta = _single(src, tmp_path)
    t["model_ema.decay"] = torch.zeros(())
    with pytest.raises(CheckpointError, match=r"1 unexpected tensors .*model_ema\.decay"):
        read_checkpoint(_rewrite(one, t, meta))


def test_diffusers_folder_problems(src: Path, tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(src, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(weights))
    del sd["mid_block.attentions.0.proj_in.bias"]
    save_file(sd, str(weights))
    with pytest.raises(CheckpointError, match=r"unet: .*1 missing: mid_block\.attentions\.0\.proj_in\.bias"):
        read_checkpoint(folder)
    # the same check through a real diffusers module
    model = diffusers.UNetSpatioTemporalConditionModel.from_config(
        json.loads((src / "unet" / "config.json").read_text())
    )
    with pytest.raises(CheckpointError, match=r"mid_block\.attentions\.0\.proj_in\.bias"):
        load_state_dict_strict(model, sd, "unet")
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model\.safetensors: truncated"):
        read_checkpoint(folder)
    shutil.rmtree(folder / "unet")
    with pytest.raises(CheckpointError, match=r"component 'unet' is listed in model_index\.json but missing"):
        read_checkpoint(folder)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    png = tmp_path / "image.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        read_checkpoint(png)
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        read_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no such file"):
        read_checkpoint(tmp_path / "missing")


def test_failed_write_leaves_destination_untouched(src: Path, tmp_path: Path) -> None:
    ckpt = read_checkpoint(src)
    del ckpt["vae"].state_dict["quant_conv.bias"]
    for layout in ("single-file", "diffusers", "vidiff"):
        dst = tmp_path / f"dst-{layout}"
        dst.write_bytes(b"keep me")
        with pytest.raises(CheckpointError, match=r"vae: .*quant_conv\.bias"):
            write_checkpoint(ckpt, dst, layout, overwrite=True)
        assert dst.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst-diffusers", "dst-single-file", "dst-vidiff"]
