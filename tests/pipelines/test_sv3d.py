"""SV3D_p (Voleti et al. 2024) against Stability's own ``sgm`` modules, and the orbit pipeline's behaviour.

The golden files under ``tests/data/sv3d/`` were made by ``scripts/make_sv3d_golden.py``, which runs sgm
(generative-models @ 0ad7de9) on a tiny SV3D_p ``VideoUNet`` and SD ``Decoder`` with seeded random weights:
one network forward, sgm's ``GeneralConditioner`` camera vectors (``cond_aug`` / ``polars_rad`` /
``azimuths_rad`` fed as ``simple_video_sample.py`` feeds them), and the script's sampling loop
(``EulerEDMSampler``, ``TrianglePredictionGuider``, ``VScalingWithEDMcNoise``) on fixed noise, decoded.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vidiff.autoencoders import AutoencoderKL, ImageVAEConfig
from vidiff.conditioning import Cond
from vidiff.io.components import Checkpoint, Component
from vidiff.io.keymaps import unet_from_sgm, vae_from_sgm
from vidiff.io.single_file import infer_unet_config
from vidiff.io.weights import load_state_dict_strict
from vidiff.networks import UNetConfig, UNetSpatioTemporal
from vidiff.pipelines.image_to_video import ImageToVideoPipeline
from vidiff.pipelines.loading import LoadedModel
from vidiff.pipelines.memory import MemoryPlan
from vidiff.pipelines.settings import FAMILIES, GenerationSettings
from vidiff.pipelines.sv3d import SV3DPipeline, sv3d_orbit

DATA = Path(__file__).resolve().parents[1] / "data" / "sv3d"
T = 5
UNET, DECODER = "model.diffusion_model.", "first_stage_model."


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(DATA / "golden.safetensors"))


@pytest.fixture(scope="module")
def sgm_weights() -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in load_file(str(DATA / "tiny_sv3d_p.safetensors")).items()}


def _unet_parts(sgm_weights: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """The tiny UNet's diffusers config (inferred as for a released file; head width 32) and tensors."""
    sd = unet_from_sgm({k[len(UNET):]: v for k, v in sgm_weights.items() if k.startswith(UNET)})
    config = infer_unet_config(sd, T)
    config["num_attention_heads"] = [c // 32 for c in config["block_out_channels"]]
    return config, sd


def _vae_parts(sgm_weights: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """SD's per-frame VAE: sgm's tiny decoder, and a seeded random encoder (the golden run feeds latents)."""
    config = ImageVAEConfig(block_out_channels=(32,), layers_per_block=1, use_post_quant_conv=False)
    torch.manual_seed(0)
    state = AutoencoderKL(config).state_dict()
    state.update(vae_from_sgm({k[len(DECODER):]: v for k, v in sgm_weights.items() if k.startswith(DECODER)}))
    return config.to_diffusers(), state


def _pipeline(sgm_weights: dict[str, torch.Tensor]) -> SV3DPipeline:
    ucfg, usd = _unet_parts(sgm_weights)
    unet = UNetSpatioTemporal(UNetConfig.from_diffusers(ucfg)).eval()
    load_state_dict_strict(unet, usd, "unet")
    vcfg, vsd = _vae_parts(sgm_weights)
    vae = AutoencoderKL(ImageVAEConfig.from_diffusers(vcfg)).eval()
    load_state_dict_strict(vae, vsd, "vae")
    model = LoadedModel(unet=unet, vae=vae, image_encoder=None, image_mean=(0.5,) * 3, image_std=(0.5,) * 3,
                        scheduler_config={}, model_type="sv3d_p", layout="single-file", extra={})
    family = replace(FAMILIES["sv3d_p"], height=8, width=8, num_frames=T)
    pipe = SV3DPipeline(model, family=family)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe(sgm_weights: dict[str, torch.Tensor]) -> SV3DPipeline:
    return _pipeline(sgm_weights)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_golden_files_are_small() -> None:
    assert sum(p.stat().st_size for p in DATA.iterdir()) < 2 * 2**20


def test_conditioning_vectors_identical_to_sgm(golden: dict[str, torch.Tensor]) -> None:
    default = sv3d_orbit(21).vector(1e-5)[0]  # sgm's default orbit: 21 frames, elevation 10
    assert torch.equal(default, golden["vector_orbit21"])
    custom = sv3d_orbit(T, golden["custom_elevations"].tolist(), golden["custom_azimuths"].tolist())
    assert torch.equal(custom.vector(1e-5)[0], golden["vector_custom"])


def test_network_forward_matches_sgm(pipe: SV3DPipeline, golden: dict[str, torch.Tensor]) -> None:
    x = torch.cat([golden["forward_x"], golden["concat"].expand(T, -1, -1, -1)], dim=1)[None]
    cond = Cond(crossattn=golden["crossattn"], vector=golden["vector_custom"][None])
    with torch.no_grad():
        out = pipe.unet(x, golden["forward_c_noise"][:1], cond)[0]
    assert _rel(out, golden["forward_out"]) <= 1e-5


def test_sampling_loop_matches_sgm(pipe: SV3DPipeline, golden: dict[str, torch.Tensor]) -> None:
    """The pipeline's own denoising loop and decode (sigmas, v-scaling with EDM c_noise, triangle CFG over
    [uncond, cond], Euler; per-frame SD decode, last frame = input view) on sgm's noise and conditioning."""
    s = pipe._resolve(GenerationSettings(num_inference_steps=4, num_frames=T))
    assert (s.max_guidance_scale, s.min_guidance_scale, s.noise_aug_strength) == (2.5, 1.0, 1e-5)
    orbit = sv3d_orbit(T, golden["custom_elevations"].tolist(), golden["custom_azimuths"].tolist())
    cond = Cond(crossattn=golden["crossattn"], vector=orbit.vector(s.noise_aug_strength), concat=golden["concat"])
    plan = MemoryPlan()
    z = pipe._denoise(cond, cond.zeros_like(), s, plan, None, golden["noise"][None], None, None, False)
    assert (z[0] - golden["samples_z"]).abs().max() <= 1e-4 * golden["samples_z"].abs().max()
    pipe._input_view = golden["image"]
    try:
        frames = pipe._decode(z, s, plan, False)
    finally:
        pipe._input_view = None
    pixels = (frames[0] / 2 + 0.5).clamp(0, 1)
    assert (pixels - golden["samples"]).abs().max() <= 1e-4


def test_call_conditions_every_frame_on_its_camera(pipe: SV3DPipeline) -> None:
    seen: list[torch.Tensor] = []
    hook = pipe.unet.register_forward_pre_hook(lambda _m, a: seen.append(a[2].vector))
    image = torch.rand(3, 8, 8)
    try:
        out = pipe(image, num_inference_steps=2, elevations=[0, 10, 20, 30, 40], azimuths=[72, 144, 216, 288, 0],
                   output_type="pt", seed=3)
    finally:
        hook.remove()
    expected = sv3d_orbit(T, [0, 10, 20, 30, 40], [72, 144, 216, 288, 0]).vector(1e-5)
    assert seen and all(v.shape == (2, T, 1280) for v in seen)  # [uncond, cond], one row per frame
    assert torch.equal(seen[0][1:].float(), expected) and torch.equal(seen[0][:1].float(), expected)
    assert out.frames.shape == (1, T, 3, 8, 8)
    assert torch.allclose(out.frames[0, -1], image, atol=1e-6)  # the input view replaces the last frame
    assert out.run["sv3d"]["elevations_deg"] == [0, 10, 20, 30, 40]
    default = pipe(image, num_inference_steps=1, output_type="pt", seed=3)
    assert default.run["sv3d"]["azimuths_deg"] == pytest.approx([72, 144, 216, 288, 0])
    assert default.run["sv3d"]["elevations_deg"] == [10.0] * T


@pytest.mark.parametrize(("elevations", "azimuths", "message"), [
    ([10, 20], None, "elevations: 2 values given for 5 frames"),
    (None, [0, 90], "azimuths: 2 values given for 5 frames"),
    (91, None, "elevations: elevation 91 is outside [-90, 90]"),
    ([0, 0, -90.5, 0, 0], None, "elevation -90.5 is outside"),
    (float("nan"), None, "not a finite number"),
])  # fmt: skip
def test_bad_cameras_are_refused_before_any_work(pipe: SV3DPipeline, elevations, azimuths, message) -> None:
    calls: list[int] = []
    hook = pipe.unet.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(ValueError, match=message.replace("[", r"\[")):
            pipe(torch.rand(3, 8, 8), num_inference_steps=1, elevations=elevations, azimuths=azimuths)
    finally:
        hook.remove()
    assert not calls


def test_sv3d_u_takes_no_camera_and_svd_is_not_sv3d(pipe: SV3DPipeline) -> None:
    u = SV3DPipeline.from_pipeline(pipe)
    u.family = replace(pipe.family, name="sv3d_u")
    with pytest.raises(ValueError, match="sv3d_u has no camera conditioning"):
        u(torch.rand(3, 8, 8), azimuths=[0] * T)
    svd = SV3DPipeline.from_pipeline(pipe)
    svd.family = replace(pipe.family, name="svd")
    with pytest.raises(ValueError, match="needs an SV3D model"):
        SV3DPipeline.from_pipeline(svd)


def tiny_sv3d_p_checkpoint(sgm_weights: dict[str, torch.Tensor], clip_folder: Path) -> Checkpoint:
    """The tiny SV3D_p of the golden files as a whole model, with the tiny CLIP tower of ``clip_folder`` (the
    shared ``tiny_svd_folder`` fixture)."""
    from vidiff.io.checkpoints import read_checkpoint

    base = read_checkpoint(clip_folder)
    ucfg, usd = _unet_parts(sgm_weights)
    vcfg, vsd = _vae_parts(sgm_weights)
    return Checkpoint(layout="diffusers", components={
        "unet": Component(ucfg, usd), "vae": Component(vcfg, vsd), "image_encoder": base["image_encoder"],
        "feature_extractor": base["feature_extractor"], "scheduler": base["scheduler"]})


def write_tiny_sv3d_p(path: Path, layout: str, clip_folder: Path, *, camera: bool = True) -> Path:
    """Write the tiny SV3D_p at ``path`` in ``layout`` (``single-file`` or ``diffusers``); returns ``path``.
    ``camera=False`` writes a tiny SV3D_u instead: the vector embedding keeps only its first 256 inputs (the
    cond_aug embedding; SV3D_p's 1280 add the polar and azimuth ones)."""
    from vidiff.io.checkpoints import write_checkpoint

    weights = {k: v.float() for k, v in load_file(str(DATA / "tiny_sv3d_p.safetensors")).items()}
    ckpt = tiny_sv3d_p_checkpoint(weights, clip_folder)
    if not camera:
        unet = ckpt["unet"]
        unet.state_dict["add_embedding.linear_1.weight"] = unet.state_dict["add_embedding.linear_1.weight"][:, :256]
        unet.config["projection_class_embeddings_input_dim"] = 256
    write_checkpoint(ckpt, path, layout)
    return path


@pytest.mark.filterwarnings("ignore:8x8 is far from")
def test_both_layouts_load_as_sv3d_p(tiny_svd_folder: Path, tmp_path: Path) -> None:
    """The tiny SV3D_p written as an sgm single file and as a diffusers folder (with the tiny CLIP tower of
    the shared fixture) loads as sv3d_p with the SV3D defaults, and both compute the same orbit."""
    outputs = []
    for path in (write_tiny_sv3d_p(tmp_path / "folder", "diffusers", tiny_svd_folder),
                 write_tiny_sv3d_p(tmp_path / "sv3d_p.safetensors", "single-file", tiny_svd_folder)):
        pipe = (SV3DPipeline if path.suffix else ImageToVideoPipeline).from_pretrained(path)
        assert isinstance(pipe, SV3DPipeline)  # the plain image-to-video loader hands back the orbit pipeline
        assert pipe.family.name == "sv3d_p" and pipe.family.num_frames == T
        s = pipe.default_settings()
        assert (s.num_inference_steps, s.max_guidance_scale, s.noise_aug_strength) == (50, 2.5, 1e-5)
        outputs.append(pipe(torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0)), height=8, width=8,
                            num_inference_steps=1, output_type="pt", azimuths=[10, 20, 30, 40, 50],
                            progress=False).frames)
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize("kind", ["sv3d_u", "sv3d_p"])
def test_released_single_file_keys_load_with_nothing_missing_or_left_over(kind: str, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The tensor names and shapes of the released ``sv3d_u.safetensors`` / ``sv3d_p.safetensors``, written
    down from sgm's module tree (``released_keys.json.gz``, see ``scripts/make_sv3d_golden.py``), read as the
    right model type, fill every tensor of vidiff's modules exactly, and each source tensor is used or
    deliberately ignored (OpenCLIP's text leftovers, the conditioner autoencoder's unused decoder half)."""
    import gzip
    import json

    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    import vidiff.io.single_file as single_file
    from vidiff.pipelines.loading import AUTOENCODERS

    with gzip.open(DATA / "released_keys.json.gz", "rt") as f:
        shapes = json.load(f)[kind]
    tensors = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    monkeypatch.setattr(single_file, "load_safetensors", lambda path, device="cpu": dict(tensors))
    monkeypatch.setattr(single_file, "read_safetensors_metadata", lambda path: {})
    ckpt = single_file.read_single_file(tmp_path / f"{kind}.safetensors", device="meta")
    assert ckpt.model_type == kind
    assert all(k.startswith(("conditioner.embedders.0.open_clip.model.", "conditioner.embedders.1.encoder.decoder.",
                             "conditioner.embedders.1.encoder.post_quant_conv.")) for k in ckpt.ignored)
    used = sum(len(ckpt[name].state_dict or {}) for name in ("unet", "vae", "image_encoder"))
    fused = sum(".attn.in_proj_" in k for k in shapes)  # OpenCLIP's fused q/k/v: three tensors each
    assert used + len(ckpt.ignored) == len(shapes) + 2 * fused

    def build(name: str) -> torch.nn.Module:
        config = ckpt[name].config
        if name == "unet":
            return UNetSpatioTemporal(UNetConfig.from_diffusers(config))
        if name == "vae":
            config_cls, module_cls = AUTOENCODERS[config["_class_name"]]
            return module_cls(config_cls.from_diffusers(config))
        return CLIPVisionModelWithProjection(CLIPVisionConfig(**{k: v for k, v in config.items()
                                                                  if not k.startswith("_")}))

    for name in ("unet", "vae", "image_encoder"):
        with torch.device("meta"):
            module = build(name)
        expected = {k: tuple(v.shape) for k, v in module.state_dict().items() if not k.endswith("position_ids")}
        got = {k: tuple(v.shape) for k, v in ckpt[name].state_dict.items()}
        assert sorted(set(expected) - set(got)) == [], f"{name}: missing"
        assert sorted(set(got) - set(expected)) == [], f"{name}: left over"
        assert got == expected, f"{name}: shapes"
