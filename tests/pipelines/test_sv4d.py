"""SV4D (Xie et al. 2024) / SV4D 2.0 (Yao et al. 2025) sampling against Stability's own scripts' helpers.

``tests/data/sv4d/sampling_golden.safetensors`` was made by ``scripts/make_sv4d_sampling_golden.py``: sgm's
conditioner (the released configs' embedders around a tiny VAE), ``EulerEDMSampler`` with the Linear /
Spatiotemporal guiders and ``VScalingWithEDMcNoise``, driven through ``run_img2vid`` / ``prepare_inputs`` /
``do_sample_per_step`` / ``decode_latents`` by the scripts' outer loops, on a probe network (defined again
below) and fixed noise. vidiff's pipeline must give the same pixels: conditioning assembly, camera vectors,
guidance scales, window plan, SV4D's backward/forward alternation and the decode/re-encode between windows.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vidiff.autoencoders import AutoencoderKL, ImageVAEConfig
from vidiff.conditioning import SV4DCond
from vidiff.io.keymaps import vae_from_sgm
from vidiff.io.weights import load_state_dict_strict
from vidiff.pipelines.sv4d import SV4DPipeline
from vidiff.pipelines.sv4d_schedule import SV4DVariant

DATA = Path(__file__).resolve().parents[1] / "data" / "sv4d"
T, V, C = 3, 2, 4
TINY_SV4D2 = SV4DVariant("tiny_sv4d2", T, V, 4, "linear", 1.0, 2.0, 0.0, (0.0, 100.0, 250.0), True, False, T)
TINY_SV4D = SV4DVariant("tiny_sv4d", T, V, 4, "spatiotemporal", 1.0, 2.0, 10.0, None, False, True, T - 1,
                        orbit_index=(0, 2, 3), orbit_frames=5)


class ProbeNet(torch.nn.Module):
    """The golden script's stand-in network in vidiff's contract ``F(x_in, c_noise, cond)``: per latent
    ``tanh(W_x [x | concat] + W_y vector + W_c token(t) + ½ cond_view(v) + 0.3 x(row − 1) + 0.1 c_noise)``."""

    def __init__(self, wx: torch.Tensor, wy: torch.Tensor, wc: torch.Tensor) -> None:
        super().__init__()
        self.wx, self.wy, self.wc = (torch.nn.Parameter(w.float()) for w in (wx, wy, wc))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: SV4DCond) -> torch.Tensor:
        b, f = x.shape[:2]
        v = cond.cond_view.shape[1]
        t_of, v_of = torch.arange(f) // v, torch.arange(f) % v
        xc = torch.cat([x, cond.concat], dim=2)
        out = torch.einsum("oc,bfchw->bfohw", self.wx, xc)
        out = out + (cond.vector @ self.wy)[..., None, None]
        out = out + (cond.crossattn[:, t_of] @ self.wc)[..., None, None]
        out = out + 0.5 * cond.cond_view[:, v_of]
        out = out + 0.3 * torch.roll(x, 1, dims=1)
        out = out + 0.1 * c_noise.view(b, 1, 1, 1, 1)
        return torch.tanh(out)


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(DATA / "sampling_golden.safetensors"))


def _pipeline(golden: dict[str, torch.Tensor], variant: SV4DVariant) -> SV4DPipeline:
    vae = AutoencoderKL(ImageVAEConfig(block_out_channels=(32, 32), layers_per_block=1, use_post_quant_conv=False))
    state = vae_from_sgm({k[3:]: v.float() for k, v in golden.items() if k.startswith("ae.")})
    load_state_dict_strict(vae, state, "vae")
    clip_w = golden["clip_w"].float()
    network = ProbeNet(golden["probe_wx"], golden["probe_wy"], golden["probe_wc"])
    return SV4DPipeline(network, vae, lambda px: (px.mean(dim=(2, 3)) @ clip_w)[:, None], variant)


def test_golden_files_are_small() -> None:
    names = ("sampling_golden", "sampling_golden_unet")
    assert sum((DATA / f"{name}.safetensors").stat().st_size for name in names) < 2 * 2**20


def test_sv4d2_windows_match_the_script(golden: dict[str, torch.Tensor]) -> None:
    """SV4D 2.0 (4-view recipe): windows {0, 2} of 5 frames, the first with zeroed reference views, Linear
    guidance over the t-major latents, cameras relative in polar and azimuth."""
    pipe = _pipeline(golden, TINY_SV4D2)
    video = (golden["video"][:5] + 1) / 2
    out = pipe(video, elevations=[5.0, -10.0, 20.0], azimuths=[0.0, 100.0, 250.0], num_frames=5,
               noise=list(golden["sv4d2.noise"]), condition_noise=False, decode_chunk_size=2)
    expected = (golden["sv4d2.frames"] + 1) / 2
    assert out.frames.shape == expected.shape == (5, V + 1, 3, 16, 16)
    assert float(expected[:, 1:].std()) > 0.05  # the views are rendered, not saturated or blank
    assert (out.frames - expected).abs().max() <= 1e-4
    assert out.run["windows"] == [[0, 1, 2], [2, 3, 4]]


def test_sv4d_anchor_and_alternating_dense_windows_match_the_script(golden: dict[str, torch.Tensor]) -> None:
    """SV4D: anchor pass over frames {2, 4, 6} on the (stand-in) SV3D views of frame 0, then dense windows
    from 0, 2, 4, each step alternating backward (reversed frames, views of the last frame) and forward."""
    pipe = _pipeline(golden, TINY_SV4D)
    reference = torch.roll(golden["orbit"], 1, 0)[[2, 3]]
    out = pipe((golden["video"] + 1) / 2, noise=list(golden["sv4d.noise"]), reference_views=reference,
               condition_noise=False, decode_chunk_size=3)
    expected = (golden["sv4d.frames"] + 1) / 2
    assert out.frames.shape == expected.shape == (7, V + 1, 3, 16, 16)
    assert (out.frames - expected).abs().max() <= 1e-4
    assert out.settings["num_inference_steps"] == 4 and out.settings["guidance"] == "spatiotemporal"


def test_alternation_matters(golden: dict[str, torch.Tensor]) -> None:
    """The golden pins the order: conditioning every dense step on the forward pass differs from it."""
    pipe = _pipeline(golden, TINY_SV4D)
    forward_only = SV4DPipeline(pipe.network, pipe.vae, pipe.clip, TINY_SV4D)
    import vidiff.pipelines.sv4d as module

    original = module.pass_for_step
    module.pass_for_step = lambda window, step: window.passes[0]
    try:
        out = forward_only((golden["video"] + 1) / 2, noise=list(golden["sv4d.noise"]),
                           reference_views=torch.roll(golden["orbit"], 1, 0)[[2, 3]], condition_noise=False)
    finally:
        module.pass_for_step = original
    assert (out.frames - (golden["sv4d.frames"] + 1) / 2).abs().max() > 1e-3


def test_grid_and_views(golden: dict[str, torch.Tensor]) -> None:
    pipe = _pipeline(golden, TINY_SV4D2)
    out = pipe((golden["video"][:5] + 1) / 2, num_frames=5, num_inference_steps=1, elevations=0.0, seed=1)
    assert out.grid().shape == (5, 3, 16, 16 * (V + 1))
    assert torch.equal(out.grid()[..., 16:32], out.view(1))
    assert torch.allclose(out.view(0), (golden["video"][:5] + 1) / 2, atol=1e-6)
    again = pipe((golden["video"][:5] + 1) / 2, num_frames=5, num_inference_steps=1, elevations=0.0, seed=1)
    assert torch.equal(out.frames, again.frames)


def test_sv4d_with_sgms_own_tiny_unet_matches_the_script(golden: dict[str, torch.Tensor]) -> None:
    """The SV4D loop again, with sgm's tiny ``SpatialUNetModelWithTime`` (sv4d.yaml shrunk: one level of 32
    channels, vector width 1280, token width 32) in place of the probe: vidiff's ``SV4DUNet`` on the same
    weights, fed by the pipeline's conditions, gives the script's pixels."""
    from vidiff.io.sv4d_keymap import sv4d_unet_from_sgm
    from vidiff.networks.sv4d import SV4DUNet
    from vidiff.networks.sv4d_config import SV4D_PRESETS

    net_golden = load_file(str(DATA / "sampling_golden_unet.safetensors"))
    config = SV4D_PRESETS["tiny_sv4d"].replace(channel_mult=(1,), adm_in_channels=1280, num_times=T, num_views=V)
    unet = SV4DUNet(config).eval()
    load_state_dict_strict(unet, sv4d_unet_from_sgm({k[5:]: v.float() for k, v in net_golden.items()
                                                     if k.startswith("unet.")}), "unet")
    pipe = _pipeline(golden, TINY_SV4D)
    pipe.network = unet
    out = pipe((golden["video"] + 1) / 2, noise=list(net_golden["sv4d.noise"]),
               reference_views=torch.roll(golden["orbit"], 1, 0)[[2, 3]], condition_noise=False)
    expected = (net_golden["sv4d.frames"] + 1) / 2
    assert float(expected[:, 1:].std()) > 0.05
    assert (out.frames - expected).abs().max() <= 1e-4


def test_sv3d_orbit_of_frame_0_gives_the_reference_views(golden: dict[str, torch.Tensor]) -> None:
    """SV4D asks SV3D for the orbit of frame 0 (the script's steps, cond_aug 1e-5, sgm behaviour), rolls it
    so the input view comes first and keeps the views at ``orbit_index``: here orbit frames 1 and 2."""
    calls: list[dict] = []

    def sv3d(image: torch.Tensor, **kwargs: object) -> object:
        calls.append({"image": image, **kwargs})
        frames = torch.stack([torch.full((3, 16, 16), i / 10) for i in range(5)])[None]  # frame i = i/10
        return type("Out", (), {"frames": frames})()

    pipe = _pipeline(golden, TINY_SV4D)
    pipe.sv3d = sv3d
    seen: list[torch.Tensor] = []
    pipe.encode = lambda pixels, chunk=None, _encode=pipe.encode: (seen.append(pixels.clone()), _encode(pixels))[1]
    pipe((golden["video"] + 1) / 2, num_inference_steps=1, condition_noise=False)
    (call,) = calls
    assert call["num_inference_steps"] == 1 and call["noise_aug_strength"] == 1e-5 and call["behaviour"] == "sgm"
    assert call["num_frames"] == 5 and torch.allclose(call["image"], (golden["video"][0] + 1) / 2, atol=1e-6)
    anchor_views = seen[1]  # after the input frames: the anchor pass's reference views
    assert torch.allclose(anchor_views, torch.stack([torch.full((3, 16, 16), v / 10) * 2 - 1 for v in (1, 2)]))


def write_released_layout(path: Path, network: dict[str, torch.Tensor], clip_folder: Path) -> Path:
    """An SV4D single file in the released sgm layout at ``path``: ``network`` (``model.diffusion_model.*``),
    the SV3D goldens' tiny VAE written as the three conditioner encoder copies and the first-stage decoder,
    and the tiny CLIP tower of ``clip_folder`` (the shared ``tiny_svd_folder`` fixture) as OpenCLIP's."""
    from safetensors.torch import save_file

    from vidiff.io.single_file import sgm_tensors

    from .test_sv3d import DATA as SV3D_DATA
    from .test_sv3d import tiny_sv3d_p_checkpoint

    sv3d = {k: v.float() for k, v in load_file(str(SV3D_DATA / "tiny_sv3d_p.safetensors")).items()}
    tensors = {k: v for k, v in sgm_tensors(tiny_sv3d_p_checkpoint(sv3d, clip_folder)).items()
               if not k.startswith("model.diffusion_model.")}
    encoder = {k: v for k, v in tensors.items() if k.startswith("conditioner.embedders.1.")}
    for i in (4, 5):
        tensors.update({k.replace("embedders.1.", f"embedders.{i}."): v.clone() for k, v in encoder.items()})
    save_file({**tensors, **network}, str(path))
    return path


def test_released_layout_single_file_loads(tiny_svd_folder: Path, tmp_path: Path) -> None:
    """A single file in the released layout with a tiny network loads strictly, its network config read from
    the tensor shapes (no ``config`` given): the tiny preset's, with the preset's 64-wide heads narrowed to
    the 32-wide levels."""
    from vidiff.networks.sv4d import SV4DUNet
    from vidiff.networks.sv4d_config import SV4D_PRESETS

    path = write_released_layout(tmp_path / "sv4d2_8views.safetensors",
                                 load_file(str(DATA / "tiny_sv4d2.safetensors")), tiny_svd_folder)
    pipe = SV4DPipeline.from_single_file(path)
    assert pipe.variant.name == "sv4d2_8views" and isinstance(pipe.network, SV4DUNet)
    tiny = SV4D_PRESETS["tiny_sv4d2_8views"]
    assert pipe.network.config == tiny.replace(num_head_channels=32, num_times=5, attention_resolutions=())
    tokens = pipe.tokens(torch.rand(2, 3, 16, 16) * 2 - 1)
    latents = pipe.encode(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert tokens.shape[0] == 2 and latents.shape == (2, 4, 16, 16)  # the tiny VAE does not downsample
    assert pipe.decode(latents).shape == (2, 3, 16, 16)
