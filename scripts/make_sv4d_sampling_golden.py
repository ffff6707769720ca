"""Golden files for the SV4D / SV4D 2.0 sampling procedures: Stability's own scripts' helpers run on a tiny case.

SV4D (Xie et al. 2024) and SV4D 2.0 (Yao et al. 2025) render novel-view videos window by window. This script
is NOT part of vidiff and is not run by the tests. It imports ``sgm`` and ``scripts/demo/sv4d_helpers.py`` from
a checkout of Stability-AI/generative-models (its code must not be copied into vidiff) and drives the
helpers the released scripts call (``run_img2vid``; ``prepare_inputs``, ``do_sample_per_step`` and
``decode_latents`` for SV4D's dense windows) through the scripts' outer loops, on a tiny case:

- sgm's ``GeneralConditioner`` with the released configs' embedders (``VideoPredictionEmbedderWithEncoder`` for
  ``cond_frames`` with its σ embedding, ``cond_view`` and ``cond_motion``; ``ConcatTimestepEmbedderND`` for
  ``polar_rad`` and ``azimuth_rad``) around a tiny ``AutoencoderKLModeOnly`` (also the first stage), and a
  stand-in CLIP embedder (mean colour × a matrix: the released one is OpenCLIP ViT-H);
- sgm's ``EulerEDMSampler`` with ``LinearPredictionGuider`` (SV4D 2.0, 4-view) or
  ``SpatiotemporalPredictionGuider`` (SV4D), and ``Denoiser`` with ``VScalingWithEDMcNoise``;
- a *probe network* in place of the SV4D UNet (the procedure is under test, not the network): a per-latent
  function of every input (noisy latent, concat latent, vector, the CLIP token of its frame, the reference
  view of its view, c_noise) plus the previous row's latent, so that a wrong row order, frame order,
  condition or scale changes the result. ``tests/pipelines/test_sv4d.py`` implements the same function.

Windows of ``T = 3`` frames × ``V = 2`` views at 16x16 pixels (8x8 latents), 4 Euler steps: SV4D 2.0 over 5
frames (windows {0, 2}, the first zeroing the reference views) and SV4D over 7 frames (anchor pass, three
dense windows alternating backward/forward conditioning), the SV3D orbit of frame 0 replaced by fixed images.
The conditioning images' σ = 1e-5 noise (``ZeroSampler``) is fixed at zero (``torch.randn_like`` returns
zeros); every other draw is recorded. The helpers' hard-coded ``"cuda"`` moves are sent to the CPU.

Writes ``sampling_golden.safetensors`` (probe runs: weights, inputs, noise, pixels; ~0.6 MB) and
``sampling_golden_unet.safetensors`` (the SV4D loop again with sgm's own tiny ``SpatialUNetModelWithTime``,
sv4d.yaml shrunk to one level of 32 channels with the released vector width 1280, built with
``scripts/make_sv4d_golden.py``'s yaml reader; ~1.1 MB).

Run (the sgm venv; cv2, imageio, torchvision and rembg, imported but unused here, are stubbed)::

    python scripts/make_sv4d_sampling_golden.py --sgm /tmp/gm --out tests/data/sv4d
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import types
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

T, V = 3, 2  # the window
SIZE, LATENT, C, D = 16, 8, 4, 32  # pixels, latent side, latent channels, CLIP token width (the tiny UNet's)
STEPS = 4
SEED = 0
DDCONFIG = {"double_z": True, "z_channels": C, "resolution": SIZE, "in_channels": 3, "out_ch": 3, "ch": 32,
            "ch_mult": [1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0, "attn_type": "vanilla"}
SV4D2_ELEVATIONS, SV4D2_AZIMUTHS = [5.0, -10.0, 20.0], [0.0, 100.0, 250.0]
SV4D_ORBIT, SV4D_SUBSAMPLED = 5, [0, 2, 3]  # a 5-view stand-in SV3D orbit and the views kept
UNCOND_ZERO = ["cond_frames", "cond_frames_without_noise", "cond_view", "cond_motion"]


def stub_imports() -> None:
    """Make ``scripts.demo.sv4d_helpers`` importable without its image-file dependencies (after sgm's own
    imports: pytorch-lightning probes for a real torchvision)."""
    for name in ("cv2", "imageio", "rembg", "torchvision", "torchvision.transforms",
                 "scripts.util.detection.nsfw_and_watermark_dectection"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    sys.modules["torchvision.transforms"].ToTensor = object
    sys.modules["rembg"].remove = None
    sys.modules["scripts.util.detection.nsfw_and_watermark_dectection"].DeepFloydDataFiltering = object


def cpu_only() -> None:
    """The helpers move tensors and modules to ``"cuda"``: keep everything on the CPU."""
    to = torch.Tensor.to

    def on_cpu(a: object) -> object:
        cuda = (isinstance(a, str) and a.startswith("cuda")) or (isinstance(a, torch.device) and a.type == "cuda")
        return "cpu" if cuda else a

    def tensor_to(self: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return to(self, *map(on_cpu, args), **{k: on_cpu(v) for k, v in kwargs.items()})

    torch.Tensor.to = tensor_to
    torch.randn_like = lambda x, **k: torch.zeros_like(x)  # the conditioning images' σ = 1e-5 noise, fixed


class ProbeNet(torch.nn.Module):
    """The stand-in network (sgm's calling convention; see the module docstring)."""

    def __init__(self, g: torch.Generator) -> None:
        super().__init__()
        self.wx = torch.nn.Parameter(torch.randn(C, 2 * C, generator=g) * 0.3)
        self.wy = torch.nn.Parameter(torch.randn(1280, C, generator=g) * 0.02)
        self.wc = torch.nn.Parameter(torch.randn(D, C, generator=g) * 0.3)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, y: torch.Tensor,
                cond_view: torch.Tensor, num_video_frames: int, **_: object) -> torch.Tensor:
        f = num_video_frames
        b = x.shape[0] // f
        xb = x.view(b, f, *x.shape[1:])
        v = cond_view.shape[0] // b
        t_of, v_of = torch.arange(f) // v, torch.arange(f) % v
        out = torch.einsum("oc,bfchw->bfohw", self.wx, xb)
        out = out + (y.view(b, f, -1) @ self.wy)[..., None, None]
        out = out + (context[:, t_of] @ self.wc)[..., None, None]
        out = out + 0.5 * cond_view.view(b, v, *cond_view.shape[1:])[:, v_of]
        out = out + 0.3 * torch.roll(xb[:, :, :C], 1, dims=1)
        out = out + 0.1 * timesteps.view(b, f)[..., None, None, None]
        return torch.tanh(out).reshape(b * f, C, *x.shape[2:])


def build_engine(sgm: types.SimpleNamespace, g: torch.Generator, network: torch.nn.Module | None = None
                 ) -> tuple[object, dict]:
    """A stand-in ``DiffusionEngine`` with what the helpers use (``network``: default the probe), and the
    tensors vidiff's test needs."""
    ae_cfg = {"target": "sgm.models.autoencoder.AutoencoderKLModeOnly",
              "params": {"embed_dim": C, "ddconfig": DDCONFIG, "lossconfig": {"target": "torch.nn.Identity"}}}
    zero = {"target": "sgm.modules.diffusionmodules.sigma_sampling.ZeroSampler"}
    emb = "sgm.modules.encoders.modules."
    models = [
        {"input_key": "cond_frames", "target": emb + "VideoPredictionEmbedderWithEncoder",
         "params": {"is_ae": True, "n_cond_frames": T * V, "n_copies": 1, "encoder_config": ae_cfg,
                    "sigma_cond_config": {"target": emb + "ConcatTimestepEmbedderND", "params": {"outdim": 256}},
                    "sigma_sampler_config": zero}},
        {"input_key": "polar_rad", "target": emb + "ConcatTimestepEmbedderND", "params": {"outdim": 512}},
        {"input_key": "azimuth_rad", "target": emb + "ConcatTimestepEmbedderND", "params": {"outdim": 512}},
        *({"input_key": key, "target": emb + "VideoPredictionEmbedderWithEncoder",
           "params": {"is_ae": True, "n_cond_frames": n, "n_copies": 1, "encoder_config": ae_cfg,
                      "sigma_sampler_config": zero}} for key, n in (("cond_view", V), ("cond_motion", T))),
    ]
    conditioner = sgm.GeneralConditioner(models)
    clip_w = torch.randn(3, D, generator=g)

    class StubCLIP(sgm.AbstractEmbModel):
        def forward(self, vid: torch.Tensor) -> torch.Tensor:  # (b·t, 3, H, W) -> (b, t, D)
            return (vid.mean(dim=(2, 3)) @ clip_w).view(-1, T, D)

    clip = StubCLIP()
    clip.input_key, clip.is_trainable = "cond_frames_without_noise", False
    clip.ucg_rate, clip.legacy_ucg_val = 0.0, None
    conditioner.embedders.insert(0, clip)
    ae = conditioner.embedders[1].encoder
    with torch.no_grad():
        for name, p in sorted(ae.named_parameters()):
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.1 * noise if "norm" in name and name.endswith("weight") else
                    0.2 * noise / max(1.0, p[0].numel() ** 0.5) if p.ndim > 1 else 0.1 * noise)
            p.copy_(p.half().float())  # float16-exact: stored losslessly in half
    for e in conditioner.embedders[4:]:
        e.encoder.load_state_dict(ae.state_dict())
    probe = ProbeNet(g)
    with torch.no_grad():
        for p in (clip_w, *probe.parameters()):
            p.copy_(p.half().float())

    class Engine:
        decode_first_stage = sgm.DiffusionEngine.decode_first_stage

        def __init__(self) -> None:
            self.conditioner = conditioner
            # the released first stage: an AutoencodingEngine whose decode is its Decoder alone (no post_quant_conv)
            self.first_stage_model = types.SimpleNamespace(decoder=ae.decoder, decode=lambda z, **k: ae.decoder(z))
            self.model = sgm.OpenAIWrapper(probe if network is None else network)
            self.denoiser = sgm.Denoiser({"target": "sgm.modules.diffusionmodules.denoiser_scaling."
                                                    "VScalingWithEDMcNoise"})
            self.scale_factor, self.en_and_decode_n_samples_a_time = 0.18215, 2
            self.disable_first_stage_autocast = True

        @contextlib.contextmanager
        def ema_scope(self):
            yield

    tensors = {"clip_w": clip_w, "probe_wx": probe.wx.detach(), "probe_wy": probe.wy.detach(),
               "probe_wc": probe.wc.detach(),
               **{"ae." + k: v for k, v in ae.state_dict().items() if not k.startswith("post_quant_conv.")}}
    return Engine(), tensors


def version_dict(guider: int, cfg: float) -> dict:
    return {"T": T * V, "H": SIZE, "W": SIZE, "C": C, "f": SIZE // LATENT, "options": {
        "discretization": 1, "cfg": cfg, "min_cfg": cfg, "num_views": V, "sigma_min": 0.002, "sigma_max": 700.0,
        "rho": 7.0, "guider": guider, "num_steps": STEPS, "force_uc_zero_embeddings": UNCOND_ZERO,
        "additional_guider_kwargs": {"additional_cond_keys": ["cond_view", "cond_motion"]}}}


def cameras(elevations: list[float], azimuths: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """``polars_rad`` / ``azimuths_rad`` as both scripts compute them."""
    polars = np.array([np.deg2rad(90 - e) for e in elevations])
    azims = np.array([np.deg2rad((a - azimuths[-1]) % 360) for a in azimuths])
    return polars, azims


def run_sv4d2(helpers: types.ModuleType, video: torch.Tensor, draws: list[torch.Tensor]) -> torch.Tensor:
    """``simple_video_sample_4d2.py``'s loop (4-view recipe) over ``video (N, 3, H, W)`` in [-1, 1]."""
    n = video.shape[0]
    engine = ENGINE[0]
    img = [[None] * (V + 1) for _ in range(n)]
    for v in range(V + 1):
        img[0][v] = torch.zeros(1, 3, SIZE, SIZE)
    for t in range(n):
        img[t][0] = video[t:t + 1]
    polars_rad, azimuths_rad = cameras(SV4D2_ELEVATIONS, SV4D2_AZIMUTHS)
    views = np.arange(V) + 1
    for t0 in range(0, n, T):
        t0 = min(t0, n - T)
        frames = t0 + np.arange(T)
        polars = (np.tile(polars_rad[views], T) - polars_rad[0] + np.pi / 2) % (np.pi * 2)
        azims = (np.tile(azimuths_rad[views], T) - azimuths_rad[0]) % (np.pi * 2)
        samples = helpers.run_img2vid(
            version_dict(2, 2.0), engine, img[t0][0], SEED, polars, azims,
            torch.cat([img[t][0] for t in frames]), torch.cat([img[t0][v] for v in views]), 2, cond_mv=t0 != 0)
        samples = samples.view(T, V, 3, SIZE, SIZE)
        for i, t in enumerate(frames):
            for j, v in enumerate(views):
                img[t][v] = samples[i, j][None] * 2 - 1
    return torch.stack([torch.cat(row) for row in img])


def run_sv4d(helpers: types.ModuleType, video: torch.Tensor, orbit: torch.Tensor) -> torch.Tensor:
    """``simple_video_sample_4d.py``'s loop after its SV3D call (``orbit``: the 5 stand-in views)."""
    n = video.shape[0]
    engine = ENGINE[0]
    vd = version_dict(5, 2.0)
    del vd["options"]["min_cfg"]  # simple_video_sample_4d.py sets no min_cfg: the guider's 1.0
    orbit = torch.roll(orbit, 1, 0)
    img = [[None] * (V + 1) for _ in range(n)]
    for i, v in enumerate(SV4D_SUBSAMPLED):
        img[0][i] = orbit[v][None]
    for t in range(n):
        img[t][0] = video[t:t + 1]
    azim_deg = (np.linspace(0, 360, SV4D_ORBIT + 1)[1:] % 360).tolist()
    polars_rad, azimuths_rad = cameras([10.0] * SV4D_ORBIT, azim_deg)
    views = np.arange(V) + 1
    sub = np.array(SV4D_SUBSAMPLED)
    polars = np.tile(polars_rad[sub[1:]], T)
    azims = (np.tile(azimuths_rad[sub[1:]], T) - azimuths_rad[0]) % (np.pi * 2)
    anchors = np.arange(T - 1, n, T - 1)
    samples = helpers.run_img2vid(vd, engine, img[0][0], SEED, polars, azims,
                                  torch.cat([img[t][0] for t in anchors]), torch.cat([img[0][v] for v in views]), 2)
    samples = samples.view(T, V, 3, SIZE, SIZE)
    for i, t in enumerate(anchors):
        for j, v in enumerate(views):
            img[t][v] = samples[i, j][None] * 2 - 1
    for t0 in np.arange(0, n - 1, T - 1):
        frames = t0 + np.arange(T)
        latents = torch.randn(n, V + 1, C, LATENT, LATENT)
        fwd, fwd_frames, bwd, bwd_frames = helpers.prepare_inputs(frames, img, 0, views, engine, vd, SEED,
                                                                  polars, azims)
        for step in range(STEPS):
            (c, uc, extra, sampler), order = (fwd, fwd_frames) if step % 2 == 1 else (bwd, bwd_frames)
            x = latents[order][:, views].flatten(0, 1)
            out = helpers.do_sample_per_step(engine, sampler, x, c, uc, step, extra).view(T, V, C, LATENT, LATENT)
            for i, t in enumerate(order):
                for j, v in enumerate(views):
                    latents[t, v] = out[i, j]
        img = helpers.decode_latents(engine, latents, img, frames, views, T)
    return torch.stack([torch.cat(row) for row in img])


ENGINE: list[object] = []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sgm", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    sys.path.insert(0, str(args.sgm))
    sys.modules.setdefault("open_clip", types.ModuleType("open_clip"))  # used only by the CLIP embedders
    from sgm.models.diffusion import DiffusionEngine
    from sgm.modules.diffusionmodules.denoiser import Denoiser
    from sgm.modules.diffusionmodules.wrappers import OpenAIWrapper
    from sgm.modules.encoders.modules import AbstractEmbModel, GeneralConditioner

    stub_imports()
    cpu_only()
    from scripts.demo import sv4d_helpers as helpers

    make_sampler = helpers.get_sampler_no_st

    def sampler_on_cpu(*a: object, **k: object) -> object:  # sgm's samplers default to device "cuda"
        sampler = make_sampler(*a, **k)
        sampler.device = "cpu"
        return sampler

    helpers.get_sampler_no_st = sampler_on_cpu
    helpers.load_module_gpu = helpers.unload_module_gpu = lambda module: None  # no device moves

    sgm = types.SimpleNamespace(DiffusionEngine=DiffusionEngine, Denoiser=Denoiser, OpenAIWrapper=OpenAIWrapper,
                                AbstractEmbModel=AbstractEmbModel, GeneralConditioner=GeneralConditioner)
    g = torch.Generator().manual_seed(SEED)
    engine, weights = build_engine(sgm, g)
    ENGINE.append(engine)
    out: dict[str, torch.Tensor] = {k: v.half() for k, v in weights.items()}
    video = torch.rand(7, 3, SIZE, SIZE, generator=g) * 2 - 1
    orbit = torch.rand(SV4D_ORBIT, 3, SIZE, SIZE, generator=g) * 2 - 1
    draws: list[torch.Tensor] = []
    randn = torch.randn

    def recorded(*a: object, **k: object) -> torch.Tensor:
        x = randn(*a, **k)
        draws.append(x.clone())
        return x

    torch.randn = recorded
    torch.manual_seed(SEED)
    with torch.no_grad():
        out["sv4d2.frames"] = run_sv4d2(helpers, video[:5], draws)
        out["sv4d2.noise"] = torch.stack([d for d in draws if d.shape == (T * V, C, LATENT, LATENT)])
        draws.clear()
        out["sv4d.frames"] = run_sv4d(helpers, video, orbit)
    out["sv4d.noise"] = window_noise(draws)
    out["video"], out["orbit"] = video, orbit
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, str(args.out / "sampling_golden.safetensors"))
    print(f"wrote {args.out / 'sampling_golden.safetensors'}: {len(out)} tensors")

    # SV4D's loop once more with sgm's own tiny SV4D UNet (scripts/make_sv4d_golden.py's yaml reader) in place
    # of the probe, at the released vector width (1280) and the stand-in CLIP's token width. (SV4D 2.0's view
    # embedding reads the timestep embedding as a vector of adm_in_channels: a tiny one cannot take 1280.)
    net_golden = import_network_golden(args.sgm)
    params = {**net_golden.network_params(NET_SGM, "sv4d"), "adm_in_channels": 1280, "context_dim": D,
              "channel_mult": [1]}  # one level: a smaller file
    torch.manual_seed(SEED)
    unet = NET_SGM.SpatialUNetModelWithTime(**params).eval()
    net_golden.sv3d.randomize(unet, SEED)
    engine.model = sgm.OpenAIWrapper(unet)  # the same conditioner, VAE and stand-in CLIP as above
    draws.clear()
    torch.manual_seed(SEED)
    with torch.no_grad():
        net_out = {"sv4d.frames": run_sv4d(helpers, video, orbit)}
    net_out["sv4d.noise"] = window_noise(draws)
    net_out.update({"unet." + k: v.half() for k, v in unet.state_dict().items()})
    save_file({k: v.contiguous() for k, v in net_out.items()}, str(args.out / "sampling_golden_unet.safetensors"))
    print(f"wrote {args.out / 'sampling_golden_unet.safetensors'}: {len(net_out)} tensors")


NET_SGM = types.SimpleNamespace()


def window_noise(draws: list[torch.Tensor]) -> torch.Tensor:
    """SV4D's initial latents per window, in plan order: the anchor pass's, then each dense window's rows of
    the script's full latent matrix (frames in order, novel views)."""
    anchor = [d for d in draws if d.shape == (T * V, C, LATENT, LATENT)]
    full = [d for d in draws if d.shape == (7, V + 1, C, LATENT, LATENT)]
    dense = [d[t0:t0 + T, 1:].flatten(0, 1) for d, t0 in zip(full, range(0, 6, T - 1), strict=True)]
    return torch.stack(anchor + dense)


def import_network_golden(root: Path) -> types.ModuleType:
    """``scripts/make_sv4d_golden.py`` (the network goldens) and sgm's SV4D UNet class."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import make_sv4d_golden

    NET_SGM.__dict__.update(make_sv4d_golden.import_sgm(root).__dict__)
    return make_sv4d_golden


if __name__ == "__main__":
    main()
