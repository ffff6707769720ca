"""The inference fast path changes how the UNet runs, never what it computes: fused projections,
channels-last convolutions and compiled repeated blocks against the plain network."""

from __future__ import annotations

import pytest
import torch

from vidiff.networks.attention import Attention
from vidiff.networks.fast import FastPath, apply_fast_path
from vidiff.networks.resnet import SpatioTemporalResBlock
from vidiff.networks.transformer import SpatioTemporalTransformer
from vidiff.networks.unet_st import UNET_PRESETS, UNetSpatioTemporal

CFG = UNET_PRESETS["tiny"]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs().max() / b.abs().max()).detach())


def _unet_inputs(cond_cls, b: int = 2, t: int = 3, h: int = 8, w: int = 12):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(b, t, 4, h, w, generator=gen)
    cond = cond_cls(crossattn=torch.randn(b, 2, CFG.cross_attention_dim, generator=gen),  # 2 tokens: full attn
                    vector=torch.randn(b, CFG.projection_class_embeddings_input_dim, generator=gen),
                    concat=torch.randn(b, t, 4, h, w, generator=gen))
    return x, torch.randn(b, generator=gen), cond


@pytest.mark.parametrize("chunk", [None, 5])
def test_fused_projections_match_separate_ones(chunk: int | None) -> None:
    torch.manual_seed(0)
    attn = Attention(16, heads=2, head_dim=8, context_dim=12)
    self_attn = Attention(16, heads=4, head_dim=4)
    x = torch.randn(6, 7, 16)
    ctx = torch.randn(3, 4, 12)  # each context row serves two query rows
    for layer in (attn, self_attn):
        layer.max_tokens = chunk
    want_cross, want_self = attn(x, ctx), self_attn(x)
    attn.fuse_projections()
    self_attn.fuse_projections()
    assert attn.fused_qkv is None and attn.fused_kv is not None  # q reads x, k/v read the context
    assert self_attn.fused_qkv is not None
    assert _rel(attn(x, ctx), want_cross) < 1e-6
    assert _rel(self_attn(x), want_self) < 1e-6
    assert not any("fused" in k for k in self_attn.state_dict())  # checkpoints keep diffusers' keys
    # the fused weights really are used: a changed snapshot changes the output, unfusing restores it
    self_attn.fused_qkv.mul_(2)
    assert _rel(self_attn(x), want_self) > 1e-2
    self_attn.fuse_projections(False)
    assert self_attn.fused_qkv is None and torch.equal(self_attn(x), want_self)


def test_fast_path_keeps_the_unet_output(randomize, cond_cls) -> None:
    unet = randomize(UNetSpatioTemporal(CFG)).eval()
    x, c_noise, cond = _unet_inputs(cond_cls)
    with torch.no_grad():
        want = unet(x, c_noise, cond)
        apply_fast_path(unet, FastPath(fuse_projections=True, channels_last=True))
        conv = unet.conv_in.weight
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
        got = unet(x, c_noise, cond)
        assert _rel(got, want) < 1e-5
        apply_fast_path(unet, FastPath(fuse_projections=False, channels_last=False))  # back to plain
        assert unet.conv_in.weight.is_contiguous()
        assert all(m.fused_qkv is None for m in unet.modules() if isinstance(m, Attention))
        assert torch.equal(unet(x, c_noise, cond), want)


def test_compiled_blocks_trace_whole_and_match(randomize, cond_cls) -> None:
    """``compile=blocks`` wraps exactly the repeated blocks, which trace as one graph each (no graph
    breaks: every GroupNorm + SiLU, blend and residual add can fuse) and compute the same output."""
    import torch._dynamo as dynamo

    unet = randomize(UNetSpatioTemporal(CFG)).eval()
    x, c_noise, cond = _unet_inputs(cond_cls)
    with torch.no_grad():
        want = unet(x, c_noise, cond)
        dynamo.reset()
        dynamo.utils.counters.clear()
        apply_fast_path(unet, FastPath(compile="blocks", compile_backend="eager"))
        compiled = [m for m in unet.modules() if m._compiled_call_impl is not None]
        blocks = [m for m in unet.modules() if isinstance(m, (SpatioTemporalResBlock, SpatioTemporalTransformer))]
        assert compiled == blocks and blocks
        got = unet(x, c_noise, cond)
        assert sum(dynamo.utils.counters["graph_break"].values()) == 0, dict(dynamo.utils.counters["graph_break"])
        assert dynamo.utils.counters["stats"]["unique_graphs"] >= 2
        assert _rel(got, want) < 1e-5
        apply_fast_path(unet, FastPath(fuse_projections=False))
        assert all(m._compiled_call_impl is None for m in unet.modules())
    dynamo.reset()


def test_fast_path_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"FastPath\.compile must be one of"):
        FastPath(compile="everything")
    with pytest.raises(ValueError, match=r"FastPath\.compile_mode"):
        FastPath(compile="blocks", compile_mode="fastest")
    assert FastPath().describe() == "fuse_projections"
    assert "compile=blocks (reduce-overhead)" in FastPath(compile="blocks", compile_mode="reduce-overhead").describe()
