"""Shared pieces of the scan modules: input checks, chunk padding, kernel availability."""
from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=None)
def fla_available() -> bool:
    """True when fla's Triton kernels can be imported (a CUDA host with triton)."""
    try:
        import triton  # noqa: F401
        import fla.ops  # noqa: F401
        return torch.cuda.is_available()
    except Exception:
        return False


def use_kernels(t: torch.Tensor) -> bool:
    """Kernels only for CUDA tensors: CPU tensors must never reach Triton."""
    return t.is_cuda and fla_available()


def expect(t, name: str, shape: tuple):
    """Check ``t`` against a shape spec whose entries are ints or None (any)."""
    if t is None:
        return
    if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name} has shape {list(t.shape)}, expected {want}")


def l2norm(x):
    # the kernels' use_qk_l2norm_in_kernel: x / sqrt(sum x^2 + 1e-6), not F.normalize's clamp
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + 1e-6)


def norm_positions(positions, T: int, device):
    if positions is None:
        return None
    p = torch.as_tensor(positions, dtype=torch.long).flatten()
    if p.numel() and (p.min() < 0 or p.max() >= T):
        raise ValueError(f"positions must lie in 0..{T - 1}, got {p.tolist()}")
    return p


def pad_time(x, C: int):
    """Pad dim 2 ([B, H, T, ...]) with zeros up to a multiple of C."""
    T = x.shape[2]
    n = (-T) % C
    if n == 0:
        return x
    pad = [0, 0] * (x.dim() - 3) + [0, n]
    return torch.nn.functional.pad(x, pad)


def gather_states(chunks_states: list, positions, C: int):
    """chunks_states[c] = [B, H, C, K, V] (states at every position of chunk c) -> [B, P, H, K, V]."""
    out = [chunks_states[int(p) // C][:, :, int(p) % C] for p in positions]
    return torch.stack(out, 1)
