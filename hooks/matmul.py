"""fp32 linear layers on tensor cores at about fp32 accuracy: three TF32 products of split operands.

TF32 tensor cores multiply fp32 numbers rounded to 10 mantissa bits (relative error 2^-11): about 6x faster than
fp32 GEMMs on an H100 or H200, but too coarse where results must match fp32 (BENCHMARKS section 41: a patching
sweep's normalised logit-diff grid moved by 4.7e-3). Split each operand into its TF32 part and the remainder,

    x = x_hi + x_lo,   x_hi = round_tf32(x),   x_lo = x - x_hi     (exact in fp32; |x_lo| <= 2^-11 |x|)
    x W^T = x_hi W_hi^T + x_hi W_lo^T + x_lo W_hi^T + x_lo W_lo^T,

and drop the last term (<= 2^-22 |x||W| a term). The three products left are TF32 products whose own rounding
(of x_lo and W_lo: 2^-11 of a remainder) is again ~2^-22, so the result is about as accurate as an fp32 GEMM
(a few times 2^-24 relative, fp32 accumulation). They run as three cuBLAS TF32 GEMMs into one fp32 output, the
small terms first:  y = x_lo W_hi^T;  y += x_hi W_lo^T;  y += x_hi W_hi^T.  On the patching sweep's shapes they
take 0.56-0.75x an fp32 GEMM's time with the split included, and the sweep 0.76x (BENCHMARKS section 42, H200);
on an H100 0.66-0.88x and the sweep 0.87x (sections 43-44).
`round_tf32` rounds to nearest (ties away from zero) on the bit pattern.

- `split_tf32_linear(x, w, b)`: ``F.linear`` this way (any float32 tensors; on the CPU the products are fp32,
  as there is no TF32 there, so only the sum is exercised; tests emulate TF32 in float64).
- `split_tf32_linears()`: a context manager; while open, every float32 CUDA ``F.linear`` in this process goes
  this way (``nn.Linear``, HF's projections and our zoo's call it) unless autograd tracks it (`takes`: forwards
  for gradients stay torch's); other devices and dtypes are untouched, and attention's own products (SDPA) stay
  as they were. One process-wide switch: not for concurrent threads.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

MODES = ("fp32", "tf32x3")   # matmul modes a caller may name: as torch is set, or this module's split


def round_tf32(t: torch.Tensor) -> torch.Tensor:
    """``t`` (float32) rounded to TF32's 10 mantissa bits, to nearest with ties away from zero."""
    return ((t.contiguous().view(torch.int32) + 0x1000) & -0x2000).view(torch.float32)


def split(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo): hi = `round_tf32`(t), lo = t - hi (exact in fp32)."""
    hi = round_tf32(t)
    return hi, t - hi


def split_tf32_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, w, b)`` (x [..., K], w [N, K], float32) from three TF32 GEMMs of the split operands (module
    docstring); TF32 is allowed for those GEMMs only and set back after."""
    shape = x.shape[:-1]
    (xh, xl), (wh, wl) = split(x.reshape(-1, x.shape[-1])), split(w)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        y = xl @ wh.T
        y.addmm_(xh, wl.T)
        y.addmm_(xh, wh.T)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    return (y if b is None else y.add_(b)).view(*shape, w.shape[0])


def takes(x, w, b=None) -> bool:
    """Whether `split_tf32_linears` routes this call: float32 CUDA operands, and no gradient to track (the split
    has no backward of its own: under autograd the call stays torch's)."""
    ts = (x, w) if b is None else (x, w, b)
    if not all(t.is_cuda and t.dtype == torch.float32 for t in ts):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in ts))


@contextlib.contextmanager
def split_tf32_linears(enabled: bool = True):
    """While open (and ``enabled``), every float32 CUDA ``F.linear`` runs as `split_tf32_linear`; restores
    ``F.linear`` on exit, also after an error. Nested uses are fine."""
    if not enabled:
        yield
        return
    plain = F.linear

    def linear(x, w, b=None):
        return split_tf32_linear(x, w, b) if takes(x, w, b) else plain(x, w, b)

    F.linear = linear
    try:
        yield
    finally:
        F.linear = plain


def matmul_mode(mode: str):
    """The context for a caller's ``matmul=`` setting: "fp32" (nothing changes: torch's own settings, TF32
    off by default) or "tf32x3" (`split_tf32_linears`). Other values: ValueError naming the valid ones."""
    if mode not in MODES:
        raise ValueError(f"unknown matmul mode '{mode}'; valid: {', '.join(MODES)}")
    return split_tf32_linears(mode == "tf32x3")
