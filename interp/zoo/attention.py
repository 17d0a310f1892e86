"""Causal softmax attention with RoPE.

The core op is the module attribute ``attn_fn(q, k, v) -> o`` (q, k after RoPE, all
``[B, T, H, D]``), so `hooks` can read q/k/v and the per-head output, recompute the pattern and
intervene without touching the projections."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from interp.zoo.common import apply_rope, rope_cache


def causal_attention(q, k, v):
    """q, k, v: [B, T, H, D] -> o: [B, T, H, D] (SDPA; flash/efficient kernels on CUDA)."""
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       is_causal=True)
    return o.transpose(1, 2)


class Attention(nn.Module):
    family = "attn"

    def __init__(self, d_model: int, n_heads: int, head_dim: int, rope_theta: float = 10000.0):
        super().__init__()
        self.n_heads, self.head_dim, self.rope_theta = n_heads, head_dim, rope_theta
        inner = n_heads * head_dim
        self.q_proj = nn.Linear(d_model, inner, bias=False)
        self.k_proj = nn.Linear(d_model, inner, bias=False)
        self.v_proj = nn.Linear(d_model, inner, bias=False)
        self.o_proj = nn.Linear(inner, d_model, bias=False)
        self.attn_fn = causal_attention

    def forward(self, x):
        B, T, _ = x.shape
        shape = (B, T, self.n_heads, self.head_dim)
        q, k, v = self.q_proj(x).view(shape), self.k_proj(x).view(shape), self.v_proj(x).view(shape)
        cos, sin = rope_cache(T, self.head_dim, self.rope_theta, x.device)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        o = self.attn_fn(q, k, v)
        return self.o_proj(o.reshape(B, T, -1))
