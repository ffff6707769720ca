"""Attention: the one-key shortcut, the shared-context grouping, and the full path, against plain SDPA."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vidiff.networks.attention import Attention


def _reference(attn: Attention, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Textbook multi-head attention with every query row paired with its own (repeated) context row."""
    n, length, _ = x.shape
    context = context.repeat_interleave(n // context.shape[0], dim=0)
    h, d = attn.heads, attn.head_dim
    q = attn.to_q(x).reshape(n, length, h, d).transpose(1, 2)
    k = attn.to_k(context).reshape(n, -1, h, d).transpose(1, 2)
    v = attn.to_v(context).reshape(n, -1, h, d).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, dim=-1)
    return attn.to_out[0]((weights @ v).transpose(1, 2).reshape(n, length, h * d))


def _make(seed: int = 0) -> tuple[Attention, torch.Tensor]:
    torch.manual_seed(seed)
    attn = Attention(query_dim=32, heads=2, head_dim=16, context_dim=24)
    return attn, torch.randn(6, 10, 32)


def test_one_token_shortcut_equals_sdpa_with_one_key() -> None:
    attn, x = _make()
    context = torch.randn(6, 1, 24)
    with torch.no_grad():
        fast = attn(x, context)
        attn.single_key_shortcut = False
        full = attn(x, context)
        q = attn.to_q(x).reshape(6, 10, 2, 16).transpose(1, 2)
        k = attn.to_k(context).reshape(6, 1, 2, 16).transpose(1, 2)
        v = attn.to_v(context).reshape(6, 1, 2, 16).transpose(1, 2)
        sdpa = attn.to_out[0](F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(6, 10, 32))
    torch.testing.assert_close(fast, sdpa, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(full, sdpa, rtol=1e-6, atol=1e-6)


def test_shortcut_skips_query_and_key() -> None:
    attn, x = _make()
    attn(x, torch.randn(6, 1, 24)).sum().backward()
    assert attn.to_q.weight.grad is None and attn.to_k.weight.grad is None
    assert attn.to_v.weight.grad is not None


def test_two_tokens_use_full_attention() -> None:
    attn, x = _make()
    context = torch.randn(6, 2, 24)
    with torch.no_grad():
        out = attn(x, context)
        ref = _reference(attn, x, context)
        value_only = attn.to_out[0](attn.to_v(context)).mean(dim=1, keepdim=True)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    # The output depends on the queries (rows differ): not the one-token formula.
    assert (out - out[:, :1]).abs().max() > 1e-3
    assert (out - value_only).abs().max() > 1e-3


def test_shared_context_equals_repeated_context() -> None:
    """A per-video context serving its frames gives the same result as a per-frame copy of it."""
    attn, x = _make()
    for tokens in (1, 3):
        context = torch.randn(2, tokens, 24)  # 2 videos, 3 frames each
        with torch.no_grad():
            shared = attn(x, context)
            repeated = attn(x, context.repeat_interleave(3, dim=0))
            ref = _reference(attn, x, context)
        torch.testing.assert_close(shared, repeated, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(shared, ref, rtol=1e-5, atol=1e-6)


def test_self_attention_matches_reference() -> None:
    torch.manual_seed(1)
    attn = Attention(query_dim=32, heads=4, head_dim=8)
    x = torch.randn(3, 7, 32)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), _reference(attn, x, x), rtol=1e-5, atol=1e-6)
