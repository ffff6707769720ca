"""UNet features beyond the diffusers interface: gradient checkpointing, per-frame vectors (SV3D_p),
image-only frames, per-video concat latents, input checks."""

from __future__ import annotations

import pytest
import torch

from vidiff.networks.unet_st import UNET_PRESETS, UNetSpatioTemporal

CFG = UNET_PRESETS["tiny"]


def _model(randomize) -> UNetSpatioTemporal:
    return randomize(UNetSpatioTemporal(CFG))


def _inputs(b: int = 2, t: int = 3, h: int = 8, w: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, 4, h, w, generator=gen)
    concat = torch.randn(b, t, 4, h, w, generator=gen)
    crossattn = torch.randn(b, 1, CFG.cross_attention_dim, generator=gen)
    vector = torch.randn(b, CFG.projection_class_embeddings_input_dim, generator=gen)
    c_noise = torch.randn(b, generator=gen)
    return x, c_noise, crossattn, vector, concat


def test_gradient_checkpointing_gives_same_gradients(randomize, cond_cls) -> None:
    model = _model(randomize).train()
    x, c_noise, crossattn, vector, concat = _inputs()
    x.requires_grad_(True)
    cond = cond_cls(crossattn=crossattn, vector=vector, concat=concat)

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        x.grad = None
        (model(x, c_noise, cond) ** 2).mean().backward()
        out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        out["<input>"] = x.grad.clone()
        return out

    plain = grads()
    model.enable_gradient_checkpointing()
    assert model.gradient_checkpointing
    checkpointed = grads()
    model.disable_gradient_checkpointing()
    assert not model.gradient_checkpointing
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_per_frame_vector_equal_rows_match_per_video(randomize, cond_cls) -> None:
    model = _model(randomize).eval()
    x, c_noise, crossattn, vector, concat = _inputs()
    per_frame = vector[:, None].expand(-1, x.shape[1], -1)  # (B, T, D)
    with torch.no_grad():
        a = model(x, c_noise, cond_cls(crossattn=crossattn, vector=vector, concat=concat))
        b = model(x, c_noise, cond_cls(crossattn=crossattn, vector=per_frame, concat=concat))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_image_only_frames_are_independent_with_per_frame_vectors(randomize, cond_cls) -> None:
    """With every frame flagged as an image (α = 1) the temporal layers drop out, so each frame of a clip
    with per-frame vectors equals that frame run alone with its own vector."""
    model = _model(randomize).eval()
    x, c_noise, crossattn, vector, concat = _inputs()
    t = x.shape[1]
    vectors = torch.randn(x.shape[0], t, vector.shape[-1], generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        clip = model(x, c_noise, cond_cls(crossattn=crossattn, vector=vectors, concat=concat),
                     image_only_indicator=torch.ones(x.shape[0], t))
        video = model(x, c_noise, cond_cls(crossattn=crossattn, vector=vectors, concat=concat))
        for j in range(t):
            single = model(x[:, j : j + 1], c_noise,
                           cond_cls(crossattn=crossattn, vector=vectors[:, j], concat=concat[:, j : j + 1]),
                           image_only_indicator=torch.ones(x.shape[0], 1))
            torch.testing.assert_close(clip[:, j : j + 1], single, rtol=1e-5, atol=1e-5)
    assert (clip - video).abs().max() > 1e-3  # the temporal layers do matter for video frames


def test_per_video_concat_broadcasts_over_frames(randomize, cond_cls) -> None:
    model = _model(randomize).eval()
    x, c_noise, crossattn, vector, concat = _inputs()
    first = concat[:, 0]  # (B, C, H, W): one conditioning latent per video, as SVD's
    with torch.no_grad():
        a = model(x, c_noise, cond_cls(crossattn=crossattn, vector=vector, concat=first))
        b = model(x, c_noise, cond_cls(crossattn=crossattn, vector=vector,
                                       concat=first[:, None].expand(-1, x.shape[1], -1, -1, -1)))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_input_checks(randomize, cond_cls) -> None:
    model = _model(randomize).eval()
    x, c_noise, crossattn, vector, concat = _inputs()
    with pytest.raises(ValueError, match="in_channels"):
        model(x, c_noise, cond_cls(crossattn=crossattn, vector=vector, concat=None))
    with pytest.raises(ValueError, match="vector"):
        model(x, c_noise, cond_cls(crossattn=crossattn, vector=vector[:, None].expand(-1, 5, -1),
                                   concat=concat))
    with pytest.raises(ValueError, match="crossattn"):
        model(x, c_noise, cond_cls(crossattn=crossattn[0], vector=vector, concat=concat))


def test_single_key_shortcut_switch(randomize, cond_cls) -> None:
    """Off, every parameter takes part in the graph (DDP without find_unused_parameters); same output."""
    model = _model(randomize).train()
    x, c_noise, crossattn, vector, concat = _inputs(t=2)
    cond = cond_cls(crossattn=crossattn, vector=vector, concat=concat)
    fast = model(x, c_noise, cond)
    model.set_single_key_shortcut(False)
    full = model(x, c_noise, cond)
    full.sum().backward()
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    assert all(p.grad is not None for p in model.parameters())


def test_bfloat16_forward(randomize, cond_cls) -> None:
    """Low-precision weights: sinusoids and α are computed in float32 then cast; output stays close."""
    model = _model(randomize).eval()
    x, c_noise, crossattn, vector, concat = _inputs(t=2)
    cond = cond_cls(crossattn=crossattn, vector=vector, concat=concat)
    with torch.no_grad():
        ref = model(x, c_noise, cond)
        out = model.to(torch.bfloat16)(x.bfloat16(), c_noise, cond)
    assert out.dtype == torch.bfloat16
    assert ((out.float() - ref).norm() / ref.norm()).item() < 5e-2


@pytest.mark.parametrize("frames", [1, 2])
def test_chunked_attention_and_feed_forward_are_exact(randomize, cond_cls, frames: int) -> None:
    """The memory control splits attention and MLP calls into chunks of whole sequences: same output,
    including full (two-token) cross-attention and temporal attention across the chunk boundaries."""
    model = _model(randomize).eval()
    x, c_noise, _, vector, concat = _inputs(t=5, h=8, w=12)
    crossattn = torch.randn(2, 2, CFG.cross_attention_dim, generator=torch.Generator().manual_seed(3))
    cond = cond_cls(crossattn=crossattn, vector=vector, concat=concat)
    with torch.no_grad():
        whole = model(x, c_noise, cond)
        with model.chunked(frames):
            assert all(m.max_tokens is None for m in model.modules() if hasattr(m, "max_tokens"))
            parts = model(x, c_noise, cond)
            assert any(m.max_tokens == frames * 8 * 12 for m in model.modules() if hasattr(m, "max_tokens"))
        model(x, c_noise, cond)  # leaving the context restores whole calls
    assert all(m.max_tokens is None for m in model.modules() if hasattr(m, "max_tokens"))
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="attention chunk"):
        model.set_attention_chunk(0)


@pytest.mark.parametrize("rows", [2, 3, 7, 31])
def test_few_row_products_round_each_row_as_alone(rows: int) -> None:
    # MKL computes a one-row product (gemv) and few-row products with other kernels than a large one; a row's
    # bits must not depend on how many rows share the call (the condition for bit-exact CFG parallelism)
    from vidiff.networks.layers import Linear

    gen = torch.Generator().manual_seed(rows)
    layer = Linear(320, 1280)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(1280, 320, generator=gen))
        x = torch.randn(rows, 1, 320, generator=gen)
        together = layer(x)
        assert all(torch.equal(together[i], layer(x[i:i + 1])[0]) for i in range(rows))
        torch.testing.assert_close(together, torch.nn.functional.linear(x, layer.weight, layer.bias), rtol=1e-5,
                                   atol=1e-4)  # values ~20: float32 rounding


def test_a_video_gets_the_same_bits_alone_or_in_a_batch(randomize, cond_cls) -> None:
    # the guidance pair [uncond, cond] as one batch of 2 or as two calls of 1 (as CFG-parallel ranks make them),
    # one thread per process as torchrun runs ranks (oneDNN splits a threaded 3D convolution by batch)
    model = _model(randomize).eval()
    x, c_noise, crossattn, vector, concat = _inputs(b=2, t=5)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.no_grad():
        both = model(x, c_noise, cond_cls(crossattn=crossattn, vector=vector, concat=concat))
        for i in range(2):
            one = model(x[i:i + 1], c_noise[i:i + 1], cond_cls(crossattn=crossattn[i:i + 1], vector=vector[i:i + 1],
                                                               concat=concat[i:i + 1]))
            assert torch.equal(both[i:i + 1], one), f"video {i}: max |Δ| = {(both[i:i + 1] - one).abs().max():.3g}"
    torch.set_num_threads(threads)
