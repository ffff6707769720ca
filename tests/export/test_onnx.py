"""ONNX export: onnxruntime (CPU) reproduces the PyTorch UNet step, VAE decode, image encoder and whole pipeline
runs (≤ 1e-4) for a tiny SVD-layout model saved by diffusers and for the bundled model; external data is one
``.data`` file per graph; the command writes atomically and refuses to replace a folder that is not an export."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from onnx.external_data_helper import convert_model_to_external_data

from vidiff.cli.main import main
from vidiff.conditioning.cond import Cond
from vidiff.export import export_onnx, onnx_pipeline
from vidiff.export.onnx import _external_data
from vidiff.export.runner import OrtGraph
from vidiff.io.video import read_image
from vidiff.pipelines.image_to_video import ImageToVideoPipeline, bundled_model_path

from ..conftest import SKIMAGE_DATA

PHOTO = SKIMAGE_DATA / "coffee.png"
TOL = 1e-4


@pytest.fixture(scope="module")
def tiny(tiny_svd_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageToVideoPipeline, Path]:
    """The tiny diffusers SVD in PyTorch, and its three graphs exported (external data on)."""
    pipe = ImageToVideoPipeline.from_pretrained(tiny_svd_folder)
    folder = tmp_path_factory.mktemp("onnx") / "tiny"
    export_onnx(pipe, folder, external_data=True, model=str(tiny_svd_folder), num_frames=3, latent_size=(4, 6))
    return pipe, folder


@pytest.fixture(scope="module")
def ort(tiny) -> ImageToVideoPipeline:
    """The same model with onnxruntime sessions in place of its three networks."""
    return onnx_pipeline(tiny[1])


def _inputs(pipe: ImageToVideoPipeline, b: int, t: int, h: int, w: int, seed: int) -> tuple:
    cfg = pipe.unet.config
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, cfg.out_channels, h, w, generator=g)
    cond = Cond(crossattn=torch.randn(b, 1, cfg.cross_attention_dim, generator=g),
                vector=torch.randn(b, cfg.projection_class_embeddings_input_dim, generator=g),
                concat=torch.randn(b, cfg.in_channels - cfg.out_channels, h, w, generator=g))
    return x, cond


@pytest.mark.parametrize(("b", "t", "h", "w", "per_frame"), [(1, 3, 4, 6, True), (2, 5, 6, 4, False)])
def test_unet_step_matches_pytorch(tiny, ort, b: int, t: int, h: int, w: int, per_frame: bool) -> None:
    """Other batch, frame count and size than traced: the axes are dynamic; (B,) and (B, T) levels."""
    pipe, ort_unet = tiny[0], ort.unet
    x, cond = _inputs(pipe, b, t, h, w, seed=t)
    c_noise = torch.linspace(-0.5, 1.2, b * t).view(b, t) if per_frame else torch.tensor([0.3, -1.1])[:b]
    with torch.no_grad():
        expected = pipe.unet(x, c_noise, cond)
    got = ort_unet(x, c_noise, cond)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= TOL * max(1.0, expected.abs().max().item())


def test_vae_decode_and_image_encoder_match_pytorch(tiny, ort) -> None:
    pipe = tiny[0]
    g = torch.Generator().manual_seed(1)
    z = torch.randn(1, 4, pipe.vae.config.latent_channels, 5, 7, generator=g)
    with torch.no_grad():
        expected = pipe.vae.decode(z, chunk_size=3)  # chunks of 3 and 1 frames: both run the graph
    got = ort.vae.decode(z, chunk_size=3)
    assert (got - expected).abs().max().item() <= TOL
    pixels = torch.rand(2, 3, 64, 48, generator=g) * 2 - 1
    with torch.no_grad():
        expected_tok = pipe.clip(pixels)
    assert (ort.clip(pixels) - expected_tok).abs().max().item() <= TOL


def test_whole_tiny_pipeline_through_onnxruntime(tiny, ort) -> None:
    """Guidance on (batched cond/uncond), 3 steps, decode in chunks: every network runs in onnxruntime."""
    pipe, folder = tiny
    kw = dict(num_frames=4, num_inference_steps=3, height=32, width=48, decode_chunk_size=2,
              min_guidance_scale=1.0, max_guidance_scale=2.5, output_type="pt", progress=False)
    image = read_image(PHOTO)
    expected = pipe(image, **kw).frames
    assert type(ort.unet).__name__ == "OrtUNet"  # the graphs, not the PyTorch modules, ran
    got = ort(image, **kw).frames
    assert (got - expected).abs().max().item() <= TOL
    manifest = json.loads((folder / "onnx.json").read_text())
    for name in ("unet", "vae_decoder", "image_encoder"):
        graph = manifest["graphs"][name]
        assert graph["external_data"] == f"{name}.onnx.data" and (folder / graph["external_data"]).is_file()


def test_per_tensor_external_files_are_gathered_into_one(tiny, tmp_path: Path) -> None:
    """What the exporter writes for graphs over 2 GiB (one file per tensor) becomes one page-aligned .data file
    the graph points into, and the graph computes the same."""
    _, folder = tiny
    model = onnx.load(str(folder / "unet.onnx"))
    convert_model_to_external_data(model, all_tensors_to_one_file=False, size_threshold=0)
    onnx.save_model(model, str(tmp_path / "unet.onnx"))
    assert len(list(tmp_path.iterdir())) > 20
    assert _external_data(tmp_path / "unet.onnx", "unet") == "unet.onnx.data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.onnx", "unet.onnx.data"]
    feeds = [torch.randn(1, 2, 4, 4, 6), torch.tensor([[0.1, 0.4]]), torch.randn(1, 1, 32), torch.randn(1, 24),
             torch.randn(1, 2, 4, 4, 6)]
    a, b = OrtGraph(folder / "unet.onnx")(*feeds), OrtGraph(tmp_path / "unet.onnx")(*feeds)
    assert torch.equal(a, b)


def test_bundled_model_end_to_end_through_the_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bundled"
    assert main(["export", "--format", "onnx", "--output", str(out), "--external-data", "always", "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["onnx.json", "unet.onnx", "unet.onnx.data", "vae_decoder.onnx"]
    kw = dict(num_frames=5, num_inference_steps=3, height=64, width=64, output_type="pt", progress=False)
    image = read_image(PHOTO)
    expected = ImageToVideoPipeline.from_pretrained(bundled_model_path())(image, **kw).frames
    got = onnx_pipeline(out)(image, **kw).frames
    assert (got - expected).abs().max().item() <= TOL
    # a folder that is not an earlier export is refused, untouched
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    capsys.readouterr()
    assert main(["export", "--format", "onnx", "--output", str(mine), "--targets", "vae_decoder"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and str(mine) in lines[0], lines
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
