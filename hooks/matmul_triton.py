"""The Triton kernel of `hooks.matmul`: an fp32 matrix's TF32 part and remainder laid side by side in one pass.

Imported by `hooks.matmul` only for CUDA tensors where triton imports (CPU tensors under ``TRITON_INTERPRET=1``
in the tests). ``split3(x, hi_first)``: x [M, K] float32 (contiguous) -> [M, 3K], ``[hi | lo | hi]`` or
``[hi | hi | lo]`` with hi = x rounded to TF32 (to nearest, ties away from zero, on the bit pattern) and
lo = x - hi: one read of x and one write of the result, where torch needs four kernels and temporaries.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _split3(x, y, n, K, HI_FIRST: tl.constexpr, BLOCK: tl.constexpr):
    """Elements ``[pid * BLOCK, ...)`` of x (row-major [M, K], n = M K) to their three places in y [M, 3K]."""
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    v = tl.load(x + o, mask=m, other=0.0)
    hi = ((v.to(tl.int32, bitcast=True) + 0x1000) & -0x2000).to(tl.float32, bitcast=True)
    lo = v - hi
    row, col = o // K, o % K
    base = y + row * 3 * K + col
    tl.store(base, hi, mask=m)
    if HI_FIRST:
        tl.store(base + K, lo, mask=m)
        tl.store(base + 2 * K, hi, mask=m)
    else:
        tl.store(base + K, hi, mask=m)
        tl.store(base + 2 * K, lo, mask=m)


def split3(x: torch.Tensor, hi_first: bool) -> torch.Tensor:
    M, K = x.shape
    y = torch.empty(M, 3 * K, device=x.device, dtype=torch.float32)
    n = M * K
    if n:
        _split3[(triton.cdiv(n, BLOCK),)](x, y, n, K, HI_FIRST=hi_first, BLOCK=BLOCK)
    return y
