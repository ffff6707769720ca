"""``vidiff convert``: real subprocesses and in-process ``main``; diffusers is the oracle for the folders."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import diffusers
import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vidiff.cli.main import main

REPO = Path(__file__).resolve().parents[2]


def _pipeline_folder(path: Path) -> Path:
    torch.manual_seed(1)
    unet = diffusers.UNetSpatioTemporalConditionModel(
        sample_size=8, in_channels=8, out_channels=4, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), layers_per_block=1,
        num_attention_heads=(2, 4), cross_attention_dim=32, addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24, num_frames=3,
    )  # fmt: skip
    vae = diffusers.AutoencoderKLTemporalDecoder(
        block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2, layers_per_block=1
    )
    with torch.no_grad():
        for p in [*unet.parameters(), *vae.parameters()]:
            p.add_(torch.randn_like(p) * 0.05)
    clip = transformers.CLIPVisionModelWithProjection(
        transformers.CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            image_size=28, patch_size=14, projection_dim=32, hidden_act="gelu",
        )
    )  # fmt: skip
    scheduler = diffusers.EulerDiscreteScheduler(
        prediction_type="v_prediction", use_karras_sigmas=True, sigma_min=0.002, sigma_max=700.0,
        timestep_spacing="leading", steps_offset=1, timestep_type="continuous",
    )  # fmt: skip
    diffusers.StableVideoDiffusionPipeline(
        vae=vae, image_encoder=clip, unet=unet, scheduler=scheduler,
        feature_extractor=transformers.CLIPImageProcessor(crop_size=28, size={"shortest_edge": 28}),
    ).save_pretrained(path)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _pipeline_folder(tmp_path_factory.mktemp("cli") / "src")


def _cli(*args: str | Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run(
        [sys.executable, "-m", "vidiff.cli.main", *map(str, args)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for p in sorted(folder.rglob("*.safetensors")):
        out.update({f"{p.relative_to(folder)}:{k}": v for k, v in load_file(str(p)).items()})
    return out


def _snapshot(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _unet_out(folder: Path) -> torch.Tensor:
    pipe = diffusers.StableVideoDiffusionPipeline.from_pretrained(folder)
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 2, 8, 8, 8, generator=g), torch.randn(1, 1, 32, generator=g)
    with torch.no_grad():
        return pipe.unet(
            x, torch.tensor([0.5]), ctx, added_time_ids=torch.tensor([[6.0, 127.0, 0.02]])
        ).sample


def test_convert_round_trips_through_every_layout(src: Path, tmp_path: Path, capsys) -> None:
    one, vd, back1, back2 = (tmp_path / n for n in ("m.safetensors", "vd", "back1", "back2"))
    r = _cli("convert", src, one, "--to", "single-file")  # a real process, as a user runs it
    assert r.returncode == 0, r.stderr
    assert "single-file" in r.stdout and one.is_file()
    assert main(["convert", str(one), str(back1), "--to", "diffusers"]) == 0
    assert main(["convert", str(back1), str(vd), "--to", "vidiff"]) == 0
    assert main(["convert", str(vd), str(back2), "--to", "diffusers"]) == 0
    capsys.readouterr()
    ref = _tensors(src)
    for out in (back1, back2):
        got = _tensors(out)
        assert got.keys() == ref.keys()
        assert all(got[k].dtype == ref[k].dtype and torch.equal(got[k], ref[k]) for k in ref)
        assert json.loads((out / "unet/config.json").read_text()) == json.loads(
            (src / "unet/config.json").read_text()
        )
    assert torch.equal(_unet_out(src), _unet_out(back2))


def test_convert_refuses_to_overwrite_without_flag(src: Path, tmp_path: Path, capsys) -> None:
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    assert main(["convert", str(src), str(dst), "--to", "vidiff"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and "--overwrite" in err
    assert _snapshot(dst) == {"keep.txt": b"mine"}
    assert main(["convert", str(src), str(dst), "--to", "vidiff", "--overwrite"]) == 0
    assert (dst / "vidiff.json").is_file() and not (dst / "keep.txt").exists()


def _broken_sources(src: Path, root: Path) -> dict[str, tuple[Path, str]]:
    """name -> (bad source, text the error must contain)."""
    good = root / "good.safetensors"
    assert main(["convert", str(src), str(good), "--to", "single-file"]) == 0
    tensors, out = load_file(str(good)), {}
    with safe_open(str(good), "pt") as f:
        meta = f.metadata()

    def variant(name: str, change) -> Path:
        t = dict(tensors)
        change(t)
        p = root / f"{name}.safetensors"
        save_file(t, str(p), metadata=meta)
        return p

    missing = "model.diffusion_model.middle_block.1.proj_out.weight"
    out["missing"] = (variant("missing", lambda t: t.pop(missing)), "mid_block.attentions.0.proj_out.weight")
    old = "first_stage_model.decoder.mid.attn_1.k.bias"
    out["renamed"] = (
        variant("renamed", lambda t: t.__setitem__(old + "2", t.pop(old))),
        "decoder.mid_block.attentions.0.to_k.bias2",
    )
    key = "model.diffusion_model.out.2.weight"
    out["shape"] = (
        variant("shape", lambda t: t.__setitem__(key, torch.zeros(5, 32, 3, 3))),
        "conv_out.weight",
    )
    trunc = root / "truncated.safetensors"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out["truncated"] = (trunc, "truncated")
    png = root / "picture.png"
    rng = random.Random(0)
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + rng.randbytes(200))
    out["png"] = (png, "not a safetensors file")
    noise = root / "noise.safetensors"
    noise.write_bytes(rng.randbytes(4096))
    out["random"] = (noise, "safetensors file")
    folder = root / "no-unet"
    shutil.copytree(src, folder)
    shutil.rmtree(folder / "unet")
    out["no-unet"] = (folder, "'unet'")
    return out


def test_convert_errors_are_one_line_and_leave_dst_alone(src: Path, tmp_path: Path, capsys) -> None:
    cases = _broken_sources(src, tmp_path)
    capsys.readouterr()
    for name, (bad, expected) in cases.items():
        for layout, existing in (("diffusers", "folder"), ("single-file", "file")):
            dst = tmp_path / f"dst-{name}-{layout}"
            if existing == "file":
                dst.write_bytes(b"previous file")
            else:
                dst.mkdir()
                (dst / "model_index.json").write_text('{"previous": true}')
            before = _snapshot(dst)
            code = main(["convert", str(bad), str(dst), "--to", layout, "--overwrite"])
            err = capsys.readouterr().err
            assert code == 2, (name, err)
            assert err.count("\n") == 1 and err.startswith("vidiff convert: error: "), err
            assert expected in err, (name, err)
            assert _snapshot(dst) == before, name
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not leftovers  # no temporary files or folders left behind


def test_convert_error_exit_code_in_a_real_process(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not weights at all")
    dst = tmp_path / "out.safetensors"
    dst.write_bytes(b"old")
    r = _cli("convert", bad, dst, "--to", "single-file", "--overwrite")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and str(bad) in r.stderr and "Traceback" not in r.stderr
    assert dst.read_bytes() == b"old"
