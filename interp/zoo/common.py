"""Small building blocks shared by the zoo mixers: RMSNorm, gated RMSNorm, short causal conv, RoPE,
SwiGLU. Plain torch (nanoGPT-style) so one code path runs on CPU and GPU (the short conv may take fla's kernel on
CUDA: `conv_impl`)."""
from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from hooks.scan.kernels import use_kernels

CONV_IMPLS = ("torch", "fla")


def conv_impl() -> str:
    """``HYBRID_INTERP_CONV``: how `ShortConv` runs on CUDA tensors: ``torch`` (default, F.conv1d) or ``fla`` (fla's
    Triton ``causal_conv1d`` with the SiLU fused, the same weights and arithmetic; torch's where fla is absent and on
    the CPU). A bad value raises naming the valid ones."""
    impl = os.environ.get("HYBRID_INTERP_CONV", "torch")
    if impl not in CONV_IMPLS:
        raise ValueError(f"HYBRID_INTERP_CONV={impl!r}; valid: {', '.join(CONV_IMPLS)}")
    return impl


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


class GatedRMSNorm(RMSNorm):
    """Per-head output norm with a SiLU gate: rmsnorm(o) * silu(gate) (fla's FusedRMSNormGated,
    norm before gate)."""

    def forward(self, x, gate):
        return (super().forward(x).float() * F.silu(gate.float())).to(x.dtype)


class ShortConv(nn.Module):
    """Depthwise causal conv over time followed by SiLU. x: [B, T, D] -> [B, T, D].

    Written in torch (F.conv1d) rather than fla's ShortConvolution so the CPU and GPU paths share one
    parameterisation (weight [D, 1, K], as fla's); ``HYBRID_INTERP_CONV=fla`` runs fla's ``causal_conv1d`` on CUDA
    tensors with the same weights (`conv_impl`)."""

    def __init__(self, dim: int, kernel_size: int = 4):
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(dim, 1, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)

    def forward(self, x):
        if conv_impl() == "fla" and use_kernels(x):
            from fla.modules.causal_conv1d import causal_conv1d
            return causal_conv1d(x, self.weight.squeeze(1), activation="silu")[0]
        T = x.shape[1]
        y = F.conv1d(F.pad(x.transpose(1, 2), (self.kernel_size - 1, 0)), self.weight.to(x.dtype),
                     groups=x.shape[-1])
        return F.silu(y[..., :T]).transpose(1, 2)


def rope_cache(T: int, dim: int, theta: float, device, dtype=torch.float32):
    inv = 1.0 / theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
    f = torch.outer(torch.arange(T, device=device, dtype=torch.float32), inv)
    return f.cos().to(dtype), f.sin().to(dtype)


def apply_rope(x, cos, sin):
    """x: [B, T, H, D] with rotate-half convention; cos/sin: [T, D/2]."""
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d].float(), x[..., d:].float()
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, hidden, bias=False)
        self.up_proj = nn.Linear(d_model, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
