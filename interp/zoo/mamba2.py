"""Mamba2 (SSD) mixer, as in the Mamba2 paper / HF `Mamba2Mixer`, one group.

    z, xBC, dt = W_in x
    x, B, C    = silu(conv(xBC))            x: [B, T, H, P]   B, C: [B, T, 1, N]
    dt         = softplus(dt + dt_bias)     [B, T, H];   A = -exp(A_log)  [H]
    y, h_T     = scan_fn(x, dt, A, B, C, D) h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T,  y_t = h_t^T C_t + D x_t
    out        = W_out rmsnorm(y * silu(z))
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from hooks.scan import mamba2 as mamba2_scan
from interp.zoo.common import RMSNorm, ShortConv


class Mamba2(nn.Module):
    family = "mamba2"

    def __init__(self, d_model: int, n_heads: int, head_dim: int, d_state: int, conv_size: int = 4,
                 norm_eps: float = 1e-5):
        super().__init__()
        self.n_heads, self.head_dim, self.d_state = n_heads, head_dim, d_state
        inner = n_heads * head_dim
        self.in_proj = nn.Linear(d_model, 2 * inner + 2 * d_state + n_heads, bias=False)
        self.conv = ShortConv(inner + 2 * d_state, conv_size)
        dt = torch.exp(torch.rand(n_heads) * (math.log(0.1) - math.log(0.001)) + math.log(0.001)).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.empty(n_heads).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(n_heads))
        self.norm = RMSNorm(inner, norm_eps)
        self.out_proj = nn.Linear(inner, d_model, bias=False)
        self.scan_fn = mamba2_scan.scan

    def _split(self, x):
        inner, N = self.n_heads * self.head_dim, self.d_state
        z, xbc, dt = torch.split(self.in_proj(x), [inner, inner + 2 * N, self.n_heads], dim=-1)
        return z, xbc, dt

    def _gate_and_scan_inputs(self, x):
        B_, T, _ = x.shape
        inner, N = self.n_heads * self.head_dim, self.d_state
        z, xbc, dt = self._split(x)
        xs, Bm, Cm = torch.split(self.conv(xbc), [inner, N, N], dim=-1)
        return z, dict(x=xs.view(B_, T, self.n_heads, self.head_dim),
                       dt=F.softplus(dt.float() + self.dt_bias), A=-self.A_log.float().exp(),
                       B=Bm.view(B_, T, 1, N), C=Cm.view(B_, T, 1, N), D=self.D)

    def scan_inputs(self, x):
        return self._gate_and_scan_inputs(x)[1]

    def forward(self, x):
        B_, T, _ = x.shape
        z, inputs = self._gate_and_scan_inputs(x)
        y, _ = self.scan_fn(**inputs)
        y = y.reshape(B_, T, -1).to(x.dtype) * F.silu(z)
        return self.out_proj(self.norm(y))
