"""``vidiff info``: layout, guessed model type, key config fields and parameter counts."""

from __future__ import annotations

import json
from pathlib import Path

import diffusers
import pytest
import torch
import transformers

from vidiff.cli.main import main
from vidiff.io import Checkpoint, Component, write_checkpoint
from vidiff.io.components import default_feature_extractor_config, default_scheduler_config


def _modules(adm: int, num_frames: int, temporal_vae: bool = True):
    unet = diffusers.UNetSpatioTemporalConditionModel(
        in_channels=8, out_channels=4, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), layers_per_block=1,
        num_attention_heads=(2, 4), cross_attention_dim=32, addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=adm, num_frames=num_frames,
    )  # fmt: skip
    vae_kw = dict(
        block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2, layers_per_block=1
    )
    if temporal_vae:
        vae = diffusers.AutoencoderKLTemporalDecoder(**vae_kw)
    else:
        vae = diffusers.AutoencoderKL(
            up_block_types=("UpDecoderBlock2D",) * 2, use_post_quant_conv=False, **vae_kw
        )
    clip_cfg = transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28,
        patch_size=14, projection_dim=32, hidden_act="gelu",
    )  # fmt: skip
    return unet, vae, transformers.CLIPVisionModelWithProjection(clip_cfg)


def _write(path: Path, layout: str, unet, vae, clip) -> Path:
    def cfg(m):
        return {"_class_name": type(m).__name__, **json.loads(json.dumps(dict(m.config), default=list))}

    ckpt = Checkpoint(
        layout="memory",
        components={
            "unet": Component(cfg(unet), unet.state_dict()),
            "vae": Component(cfg(vae), vae.state_dict()),
            "image_encoder": Component(clip.config.to_dict(), clip.state_dict()),
            "feature_extractor": Component(default_feature_extractor_config()),
            "scheduler": Component(default_scheduler_config()),
        },
    )
    write_checkpoint(ckpt, path, layout)
    return path


@pytest.mark.parametrize(
    "adm, frames, temporal, layout, expected",
    [
        (768, 14, True, "single-file", "svd"),
        (768, 25, True, "vidiff", "svd_xt"),
        (256, 21, False, "single-file", "sv3d_u"),
        (1280, 21, False, "diffusers", "sv3d_p"),
    ],
)
def test_info_reports_type_configs_and_counts(
    tmp_path: Path, capsys, adm, frames, temporal, layout, expected
):
    unet, vae, clip = _modules(adm, frames, temporal)
    path = _write(tmp_path / "ckpt", layout, unet, vae, clip)
    capsys.readouterr()
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert f"layout:     {layout}" in text and f"model type: {expected}" in text
    assert f"projection_class_embeddings_input_dim: {adm}" in text
    for name, module in (("unet", unet), ("vae", vae), ("image_encoder", clip)):
        assert f"({sum(p.numel() for p in module.parameters()):,}) in" in text, name
    assert "scheduler: config only" in text

    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model_type"] == expected
    assert info["components"]["vae"]["parameters"] == sum(p.numel() for p in vae.parameters())
    assert info["components"]["unet"]["config"]["num_frames"] == frames


def test_info_of_a_bad_path_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(torch.randn(8).numpy().tobytes())
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a safetensors file" in err and str(bad) in err


def test_a_reader_that_stops_early_is_not_an_error() -> None:
    """`vidiff info MODEL | head -1`: the closed pipe ends the command quietly, with exit 0."""
    import subprocess
    import sys

    from vidiff.pipelines.image_to_video import bundled_model_path

    piped = subprocess.run(["bash", "-c", f'set -o pipefail; "{sys.executable}" -m vidiff.cli.main info '
                            f'"{bundled_model_path()}" | head -c 5; echo "${{PIPESTATUS[0]}}" >&2'],
                           capture_output=True, text=True)
    assert piped.stdout == "path:"
    assert piped.stderr.strip().splitlines()[-1] == "0", piped.stderr
    assert "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr
