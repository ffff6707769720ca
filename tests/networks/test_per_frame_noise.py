"""Per-frame noise levels in the UNet: ``c_noise (B, T)`` against diffusers' UNet on identical random weights.

diffusers' ``UNetSpatioTemporalConditionModel`` takes one timestep per video and repeats its embedding over
the frames (``emb.repeat_interleave(num_frames)``) before its blocks, which consume one embedding per
``(b t)`` exactly as Stability's sgm ``VideoUNet`` does (sgm embeds ``timesteps`` of shape ``(b t)`` and
its ``VideoResBlock`` reshapes ``emb`` to ``b t`` for the temporal resnet). So the oracles are:

* temporal layers off (every blender's α = sigmoid(+∞) = 1, so frames cannot interact): frame ``f`` of
  vidiff's per-frame call equals frame ``f`` of diffusers run once with frame ``f``'s level;
* temporal layers on: diffusers' own blocks fed the per-``(b t)`` embedding that diffusers' own
  ``time_proj``/``time_embedding``/``add_embedding`` make of each frame's level (a pre-hook replaces the
  repeated ``temb`` argument of every block) — Stability's semantics with diffusers' code.
"""

from __future__ import annotations

import math

import pytest
import torch

from vidiff.networks.unet_st import UNET_PRESETS, UNetSpatioTemporal
from vidiff.utils import timestep_embedding

from .test_unet_parity import TOL, _inputs, _oracle, _rel_errors

B, T = 2, 3


def _models(randomize, temporal: bool):
    cfg = UNET_PRESETS["tiny"]
    ref = _oracle(cfg, randomize)
    if not temporal:
        with torch.no_grad():
            for name, p in ref.named_parameters():
                if name.endswith("mix_factor"):
                    p.fill_(math.inf)  # α = 1: the spatial branch only
    model = UNetSpatioTemporal(cfg).eval()
    model.load_state_dict(ref.state_dict(), strict=True)
    return cfg, ref, model


def _case(cfg, cond_cls, seed: int = 1):
    x, concat, crossattn, ids, _ = _inputs(cfg, B, T, 8, 12, 1, seed=seed)
    gen = torch.Generator().manual_seed(seed + 10)
    c_noise = 0.25 * torch.log(torch.rand(B, T, generator=gen) * 50 + 0.01)  # distinct for every frame
    vector = timestep_embedding(ids.flatten(), cfg.addition_time_embed_dim).reshape(B, -1)
    return x, concat, crossattn, ids, c_noise, cond_cls(crossattn=crossattn, vector=vector, concat=concat)


def test_constant_frame_levels_are_bit_identical_to_one_level_per_video(randomize, cond_cls) -> None:
    cfg, _, model = _models(randomize, temporal=True)
    x, concat, crossattn, _, c_noise, cond = _case(cfg, cond_cls)
    per_video = c_noise[:, 0]
    with torch.no_grad():
        assert torch.equal(model(x, per_video[:, None].expand(B, T), cond), model(x, per_video, cond))
        # per-frame added vector (SV3D-style) with per-frame constant levels
        frames = cond_cls(crossattn=crossattn, vector=cond.vector[:, None].expand(B, T, -1), concat=concat)
        assert torch.equal(model(x, per_video[:, None].expand(B, T), frames), model(x, per_video, frames))


def test_bad_frame_level_shapes_are_rejected(randomize, cond_cls) -> None:
    cfg, _, model = _models(randomize, temporal=True)
    x, *_, c_noise, cond = _case(cfg, cond_cls)
    for bad in (c_noise[:, :2], torch.zeros(B + 1, T), c_noise[..., None]):
        with pytest.raises(ValueError, match="c_noise must be"):
            model(x, bad, cond)


def test_without_temporal_layers_each_frame_is_diffusers_at_its_own_level(randomize, cond_cls) -> None:
    cfg, ref, model = _models(randomize, temporal=False)
    x, concat, crossattn, ids, c_noise, cond = _case(cfg, cond_cls)
    with torch.no_grad():
        out = model(x, c_noise, cond)
        # the frames really are independent here: changing frame 0 leaves the others bit for bit
        moved = x.clone()
        moved[:, 0] += 1.0
        assert torch.equal(model(moved, c_noise, cond)[:, 1:], out[:, 1:])
        refs = [ref(torch.cat([x, concat], dim=2), c_noise[:, f], crossattn, ids).sample for f in range(T)]
        for f in range(T):
            assert refs[f].abs().max() > 0.1
            rel, rel_max = _rel_errors(out[:, f], refs[f][:, f])
            assert rel <= TOL and rel_max <= TOL, (f, rel, rel_max)
        # and the levels matter: frame 1 at frame 0's level is something else
        assert _rel_errors(out[:, 1], refs[0][:, 1])[0] > 100 * TOL


def test_with_temporal_layers_frames_get_their_own_embedding_as_in_sgm(randomize, cond_cls) -> None:
    cfg, ref, model = _models(randomize, temporal=True)
    x, concat, crossattn, ids, c_noise, cond = _case(cfg, cond_cls)
    with torch.no_grad():
        t_emb = ref.time_proj(c_noise.reshape(-1)).to(x.dtype)  # (B·T, 320), b-major as sample.flatten(0, 1)
        aug = ref.add_embedding(ref.add_time_proj(ids.flatten()).reshape(B, -1))  # (B, E)
        per_frame = ref.time_embedding(t_emb) + aug.repeat_interleave(T, dim=0)  # (B·T, E)

        def feed_per_frame(module, args, kwargs):
            assert kwargs["temb"].shape == per_frame.shape
            return args, {**kwargs, "temb": per_frame}

        blocks = [*ref.down_blocks, ref.mid_block, *ref.up_blocks]
        hooks = [blk.register_forward_pre_hook(feed_per_frame, with_kwargs=True) for blk in blocks]
        try:
            want = ref(torch.cat([x, concat], dim=2), c_noise[:, 0], crossattn, ids).sample
        finally:
            for h in hooks:
                h.remove()
        out = model(x, c_noise, cond)
        assert want.abs().max() > 0.1
        rel, rel_max = _rel_errors(out, want)
        assert rel <= TOL and rel_max <= TOL, (rel, rel_max)
        # temporal layers couple the frames: frame f is not diffusers' frame f at its own level alone
        alone = ref(torch.cat([x, concat], dim=2), c_noise[:, 1], crossattn, ids).sample[:, 1]
        assert _rel_errors(out[:, 1], alone)[0] > 100 * TOL


@pytest.mark.parametrize("sampler", ["dpmpp_2m"])
def test_pipeline_with_a_constant_frame_schedule_is_bit_identical(tiny_vidiff, sampler, monkeypatch) -> None:
    """The image-to-video pipeline (UNet, per-frame guidance ramp, sampler) run on the schedule matrix whose
    rows all equal its 1-D Karras schedule gives the same latents, bit for bit."""
    from vidiff.diffusion import SAMPLERS
    from vidiff.pipelines import image_to_video
    from vidiff.pipelines.image_to_video import ImageToVideoPipeline

    pipe = ImageToVideoPipeline.from_pretrained(tiny_vidiff)
    image = torch.rand(3, 32, 48, generator=torch.Generator().manual_seed(0))
    kw = dict(height=32, width=48, num_frames=3, num_inference_steps=3, min_guidance_scale=1.0,
              max_guidance_scale=2.5, sampler=sampler, output_type="latent", progress=False, seed=4)
    want = pipe(image, **kw).frames
    shapes = []

    def per_frame(name: str):
        def run(denoiser, x, sigmas, **options):
            matrix = sigmas[None].expand(x.shape[1], -1)

            def seen(x_, sigma, cond):
                shapes.append(tuple(sigma.shape))
                return denoiser(x_, sigma, cond)

            return SAMPLERS[name](seen, x, matrix, **options)
        return run

    monkeypatch.setattr(image_to_video, "sampler_by_name", per_frame)
    got = pipe(image, **kw).frames
    assert set(shapes) == {(1, 3)}
    assert torch.equal(got, want) and want.std() > 0.1
