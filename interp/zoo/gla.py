"""Gated Linear Attention mixer (fla's `GatedLinearAttention` layer, reduced).

    q, k, v = silu(conv(W x))                                   [B, T, H, K] / [B, T, H, V]
    g       = logsigmoid(W_2 W_1 x) / 16   (log decay per key dim) [B, T, H, K]
    o, S_T  = scan_fn(q, k, v, g, scale=K**-0.5)      S_t = diag(exp g_t) S_{t-1} + k_t v_t^T
    out     = W_o (rmsnorm(o) * silu(W_g x))
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from hooks.scan import gla as gla_scan
from interp.zoo.common import GatedRMSNorm, ShortConv, proj_conv

GATE_LOGIT_NORMALIZER = 16.0  # fla's default


class GatedLinearAttention(nn.Module):
    family = "gla"

    def __init__(self, d_model: int, n_heads: int, head_dim: int, conv_size: int = 4,
                 low_rank: int = 16, norm_eps: float = 1e-5):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        inner = n_heads * head_dim
        self.q_proj = nn.Linear(d_model, inner, bias=False)
        self.k_proj = nn.Linear(d_model, inner, bias=False)
        self.v_proj = nn.Linear(d_model, inner, bias=False)
        self.gk_proj = nn.Sequential(nn.Linear(d_model, low_rank, bias=False),
                                     nn.Linear(low_rank, inner, bias=True))
        self.g_proj = nn.Linear(d_model, inner, bias=False)
        self.o_proj = nn.Linear(inner, d_model, bias=False)
        self.q_conv, self.k_conv, self.v_conv = (ShortConv(inner, conv_size) for _ in range(3))
        self.o_norm = GatedRMSNorm(head_dim, norm_eps)
        self.scan_fn = gla_scan.scan

    def scan_inputs(self, x):
        B, T, _ = x.shape
        shape = (B, T, self.n_heads, self.head_dim)
        q, k, v, low = proj_conv(x, [(self.q_proj, self.q_conv), (self.k_proj, self.k_conv),
                                     (self.v_proj, self.v_conv)], [self.gk_proj[0]])
        q, k, v = (t.reshape(shape) for t in (q, k, v))
        g = F.logsigmoid(self.gk_proj[1](low).float()).view(shape) / GATE_LOGIT_NORMALIZER
        return dict(q=q, k=k, v=v, g=g, scale=self.head_dim ** -0.5)

    def forward(self, x):
        B, T, _ = x.shape
        o, _ = self.scan_fn(**self.scan_inputs(x))
        gate = self.g_proj(x).view(B, T, self.n_heads, self.head_dim)
        return self.o_proj(self.o_norm(o.to(x.dtype), gate).reshape(B, T, -1))
