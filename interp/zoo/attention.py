"""Causal softmax attention with RoPE.

The core op is the module attribute ``attn_fn(q, k, v) -> o`` (q, k after RoPE, all
``[B, T, H, D]``), so `hooks` can read q/k/v and the per-head output, recompute the pattern and
intervene without touching the projections."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from interp.zoo.common import apply_rope, rope_cache


def causal_attention(q, k, v, mask=None):
    """q, k, v: [B, T, H, D] -> o: [B, T, H, D] (SDPA; flash/efficient kernels on CUDA). ``mask``: a boolean
    ``[B, 1, T, T]`` of the keys each query may read (padded batches, `pad_mask`), else causal."""
    if mask is None:
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=True)
    else:
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=mask)
    return o.transpose(1, 2)


def pad_mask(pad):
    """The keys each query may read in a padded batch (``pad`` [B, T] bool, True: a real token): causal, real
    keys only; a padding query reads itself alone (its output is never used, but stays finite)."""
    T = pad.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=pad.device).tril()
    eye = torch.eye(T, dtype=torch.bool, device=pad.device)
    return ((causal & pad[:, None, :]) | (eye & ~pad[:, :, None]))[:, None]


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

    def forward(self, x, pad=None):
        """x [B, T, D]; ``pad`` [B, T] bool (True: a real token) for left/right padded batches: positions count
        real tokens only (RoPE) and padding keys are not read."""
        B, T, _ = x.shape
        shape = (B, T, self.n_heads, self.head_dim)
        q, k, v = self.q_proj(x).view(shape), self.k_proj(x).view(shape), self.v_proj(x).view(shape)
        cos, sin = rope_cache(T, self.head_dim, self.rope_theta, x.device)
        if pad is None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            o = self.attn_fn(q, k, v)
        else:
            pos = (pad.long().cumsum(-1) - 1).clamp(min=0)                 # [B, T]
            q, k = _rope_at(q, cos[pos], sin[pos]), _rope_at(k, cos[pos], sin[pos])
            o = self.attn_fn(q, k, v, mask=pad_mask(pad))
        return self.o_proj(o.reshape(B, T, -1))

    def forward_window(self, x, offset: int, k_prev, v_prev, at=None):
        """The output at positions ``offset .. offset+W-1`` given their inputs x [B, W, D] and the
        keys/values of positions ``0 .. offset-1`` (after RoPE) k_prev, v_prev [B, offset, H, D]
        (as a KV cache would hold them): equals ``forward`` on the full sequence at those positions.
        ``at`` [B]: only the query at this window index of each row -> [B, 1, D]."""
        B, W, _ = x.shape
        shape = (B, W, self.n_heads, self.head_dim)
        k, v = self.k_proj(x).view(shape), self.v_proj(x).view(shape)
        cos, sin = rope_cache(offset + W, self.head_dim, self.rope_theta, x.device)
        k = apply_rope(k, cos[offset:], sin[offset:])
        k, v = torch.cat([k_prev.to(k.dtype), k], 1), torch.cat([v_prev.to(v.dtype), v], 1)
        keys = torch.arange(offset + W, device=x.device)
        if at is None:
            q = apply_rope(self.q_proj(x).view(shape), cos[offset:], sin[offset:])
            mask = keys[None, :] <= torch.arange(W, device=x.device)[:, None] + offset  # [W, offset + W]
        else:
            rows = torch.arange(B, device=x.device)
            pos = at.to(x.device) + offset                                               # [B]
            q = self.q_proj(x[rows, at]).view(B, 1, self.n_heads, self.head_dim)
            q = _rope_rows(q, cos[pos], sin[pos])
            mask = (keys[None, :] <= pos[:, None])[:, None, None, :]                    # [B, 1, 1, S]
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=mask).transpose(1, 2)
        return self.o_proj(o.reshape(B, q.shape[1], -1))


def _rope_at(x, cos, sin):
    """Rotate-half RoPE with a position per row and token: x [B, T, H, D], cos/sin [B, T, D/2]."""
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d].float(), x[..., d:].float()
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


def _rope_rows(x, cos, sin):
    """Rotate-half RoPE with one position per row: x [B, 1, H, D], cos/sin [B, D/2]."""
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d].float(), x[..., d:].float()
    c, s = cos[:, None, None, :], sin[:, None, None, :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)
