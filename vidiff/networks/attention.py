"""Multi-head attention for the video backbones, and the single place where the attention kernel is called.

Keys ``to_q``, ``to_k``, ``to_v`` (no bias) and ``to_out.0`` (with bias) match diffusers' ``Attention``.

Two exact savings are built in:

* **Shared context.** A context of batch ``M`` may serve a query batch ``N = M·G``: query rows
  ``g·G … g·G+G−1`` all attend to context row ``g`` (the frames of one video attend to that video's
  CLIP token; the pixels of one video attend, in temporal attention, to that video's first-frame
  token). Instead of repeating keys and values ``G`` times, the ``G`` query rows are concatenated
  along the sequence axis; softmax is per query, so the result is unchanged.
* **One key.** When the key sequence has length 1, softmax over it is exactly 1 and every query gets
  the value itself: the output is ``to_out(to_v(context))`` broadcast over queries, and the q/k
  projections are dead compute. SVD's cross-attention context is a single CLIP token, and temporal
  self-attention over a one-frame clip has one key too.

One inference-time speed-up is switchable: :meth:`Attention.fuse_projections` concatenates the q/k/v
weights (k/v for cross-attention) so each projection is one matrix multiply instead of three (two).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vidiff.networks.layers import Linear, row_invariant_linear


def attention_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention ``softmax(q kᵀ / √d) v`` on ``(batch, heads, seq, head_dim)`` tensors.

    Every attention layer of vidiff's networks goes through here (Vaswani et al. 2017, eq. 1), so a
    different backend (flash, memory-efficient, chunked) is a change to this one function.
    """
    return F.scaled_dot_product_attention(q, k, v)


class Attention(nn.Module):
    """Multi-head self- or cross-attention on ``(N, L, C)`` token sequences."""

    def __init__(self, query_dim: int, heads: int, head_dim: int, context_dim: int | None = None) -> None:
        super().__init__()
        inner = heads * head_dim
        context_dim = context_dim or query_dim
        self.heads = heads
        self.head_dim = head_dim
        self.to_q = Linear(query_dim, inner, bias=False)
        self.to_k = Linear(context_dim, inner, bias=False)
        self.to_v = Linear(context_dim, inner, bias=False)
        # A list of one so the keys read ``to_out.0`` (diffusers' index 1 is a parameter-free dropout).
        self.to_out = nn.ModuleList([Linear(inner, query_dim)])
        # Exact; switchable only so tests can compare it with the full computation.
        self.single_key_shortcut = True
        # Memory control: at most this many query tokens per kernel call (None: all at once).
        self.max_tokens: int | None = None
        # Inference speed: [W_q; W_k; W_v] (self-attention) and [W_k; W_v] (cross), see fuse_projections.
        self.register_buffer("fused_qkv", None, persistent=False)
        self.register_buffer("fused_kv", None, persistent=False)

    @torch.no_grad()
    def fuse_projections(self, enabled: bool = True) -> None:
        """Compute q, k, v with one matrix multiply (k, v with one for a separate context).

        The concatenated weights are a snapshot, not part of the state dict: call this after the weights
        are loaded (pipelines do), and again, or with ``enabled=False``, after changing them (training).
        """
        self.fused_qkv = self.fused_kv = None
        if not enabled or any(m._forward_hooks for m in (self.to_q, self.to_k, self.to_v)):
            return  # a projection with a forward hook (a LoRA, vidiff.adapters) must run as its own layer
        kv = torch.cat([self.to_k.weight, self.to_v.weight])
        self.fused_kv = kv
        if self.to_q.in_features == self.to_k.in_features:
            self.fused_qkv = torch.cat([self.to_q.weight, kv])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """``x (N, L, C)``, ``context (M, S, D)``, ``N % M == 0`` (None: self-attention) -> ``(N, L, C)``."""
        self_attention = context is None
        if context is None:
            context = x
        n, length, _ = x.shape
        m, s, _ = context.shape
        if n % m:
            raise ValueError(f"query batch {n} is not a multiple of the context batch {m}")
        group = n // m  # query rows served by one context row

        if s == 1 and self.single_key_shortcut:
            out = self.to_out[0](self.to_v(context))  # (M, 1, C): softmax over one key is 1
            return out[:, None].expand(m, group, length, out.shape[-1]).reshape(n, length, -1)

        rows = m if self.max_tokens is None else max(1, self.max_tokens // (group * length))
        if rows >= m:
            return self._attend(x, context, self_attention)
        # chunks of whole context rows (each with its G query rows): exact, bounds the live activations
        return torch.cat([self._attend(x[i * group:(i + rows) * group], context[i:i + rows], self_attention)
                          for i in range(0, m, rows)])

    def _attend(self, x: torch.Tensor, context: torch.Tensor, self_attention: bool) -> torch.Tensor:
        n, length, _ = x.shape
        m, s, _ = context.shape
        group, h, d = n // m, self.heads, self.head_dim
        if self.fused_qkv is not None and self_attention:  # M = N, S = L
            q, k, v = row_invariant_linear(x, self.fused_qkv).reshape(n, length, 3, h, d).permute(2, 0, 3, 1, 4)
        else:
            q = self.to_q(x).reshape(m, group * length, h, d).transpose(1, 2)  # (M, h, G·L, d)
            if self.fused_kv is not None:
                k, v = row_invariant_linear(context, self.fused_kv).reshape(m, s, 2, h, d).permute(2, 0, 3, 1, 4)
            else:
                k = self.to_k(context).reshape(m, s, h, d).transpose(1, 2)  # (M, h, S, d)
                v = self.to_v(context).reshape(m, s, h, d).transpose(1, 2)  # (M, h, S, d)
        out = attention_kernel(q, k, v)  # (M, h, G·L, d)
        out = out.transpose(1, 2).reshape(n, length, h * d)  # (N, L, h·d)
        return self.to_out[0](out)
