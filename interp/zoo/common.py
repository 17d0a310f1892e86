"""Small building blocks shared by the zoo mixers: RMSNorm, gated RMSNorm, short causal conv, the mixers' input
projections in one matmul (`proj_conv`), RoPE, SwiGLU. Plain torch (nanoGPT-style) so one code path runs on CPU and
GPU (the short conv and the gated norm may take fla's kernels on CUDA: `conv_impl`, `norm_impl`)."""
from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from hooks.scan.kernels import use_kernels

CONV_IMPLS = ("torch", "fla")
NORM_IMPLS = ("torch", "fla")
FUSE_PROJECTIONS = True   # `proj_conv` in one matmul and one conv (False: one per projection, as before; for benches)


def conv_impl() -> str:
    """``HYBRID_INTERP_CONV``: how `ShortConv` runs on CUDA tensors: ``torch`` (default, F.conv1d) or ``fla`` (fla's
    Triton ``causal_conv1d`` with the SiLU fused, the same weights and arithmetic; torch's where fla is absent and on
    the CPU). A bad value raises naming the valid ones."""
    return _env_choice("HYBRID_INTERP_CONV", CONV_IMPLS)


def norm_impl() -> str:
    """``HYBRID_INTERP_NORM``: how `GatedRMSNorm` runs on CUDA tensors: ``torch`` (default: the composite below) or
    ``fla`` (fla's Triton ``rms_norm_gated``, norm and gate in one kernel each way, float32 inside as here; torch's
    where fla is absent, on the CPU and under torch.vmap, `interp.stacked`). Not the default: on an H100 it saved
    within the host's noise, and gdn100's bf16 gradients against the reference path moved from 9.6e-2 to 1.2e-1 of
    tests/gpu/check_grad_gpu.py's 1e-1 tolerance (BENCHMARKS.md section 36). A bad value raises naming the valid
    ones."""
    return _env_choice("HYBRID_INTERP_NORM", NORM_IMPLS)


def _env_choice(var: str, valid: tuple) -> str:
    """The environment variable ``var``'s value, one of ``valid`` (the first when unset); a bad value raises naming
    the valid ones."""
    impl = os.environ.get(var, valid[0])
    if impl not in valid:
        raise ValueError(f"{var}={impl!r}; valid: {', '.join(valid)}")
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
    norm before gate). ``kernels``: whether fla's kernel may serve (`norm_impl`); the model's scan backend sets it
    (`interp.zoo.model.HybridLM.set_scan_backend`: only ``auto``)."""

    kernels = True

    def forward(self, x, gate):
        # fla's kernel outside functorch transforms only (`interp.stacked` runs the model under torch.vmap, which
        # cannot enter a Triton kernel: a stack's per-model weights stay on the composite)
        if (self.kernels and norm_impl() == "fla" and use_kernels(x)
                and torch._C._functorch.peek_interpreter_stack() is None):
            from fla.modules.norm.fused_norm_gate import rms_norm_gated
            return rms_norm_gated(x, gate, self.weight, None, activation="swish", eps=self.eps)
        return (super().forward(x).float() * F.silu(gate.float())).to(x.dtype)


def short_conv(x, weight):
    """Depthwise causal conv over time, then SiLU: x [B, T, D], weight [D, 1, L] -> [B, T, D] (`ShortConv`)."""
    if conv_impl() == "fla" and use_kernels(x):
        from fla.modules.causal_conv1d import causal_conv1d
        return causal_conv1d(x, weight.squeeze(1), activation="silu")[0]
    T, L = x.shape[1], weight.shape[-1]
    y = F.conv1d(F.pad(x.transpose(1, 2), (L - 1, 0)), weight.to(x.dtype), groups=x.shape[-1])
    return F.silu(y[..., :T]).transpose(1, 2)


def proj_conv(x, convolved, plain=()):
    """``[conv(proj(x)) for proj, conv in convolved] + [proj(x) for proj in plain]`` (bias-free nn.Linear
    projections, `ShortConv`s of one length) from one matmul with the projections' weight rows stacked and one
    conv with the convs' channels stacked: each output element is the same sum, in far fewer kernels (a GDN layer
    launched 5 matmuls and 3 convs with their casts, transposes and SiLUs each way). `FUSE_PROJECTIONS` False:
    one call per projection."""
    if not FUSE_PROJECTIONS:
        return [c(p(x)) for p, c in convolved] + [p(x) for p in plain]
    lins = [p for p, _ in convolved] + list(plain)
    n = [p.out_features for p in lins]
    nc = sum(n[:len(convolved)])
    y = F.linear(x, torch.cat([p.weight for p in lins]))
    c = short_conv(y[..., :nc], torch.cat([c.weight for _, c in convolved]))
    return list(c.split(n[:len(convolved)], -1)) + list(y[..., nc:].split(n[len(convolved):], -1))


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
        return short_conv(x, self.weight)


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
