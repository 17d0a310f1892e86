"""Triton kernel of the exact effective attention's backwards carry (`hooks.effective`, ``impl="triton"``).

Imported by `hooks.effective` only when the Triton path is chosen (CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1`` in the tests); it needs triton, not fla. Its inputs are the chunk pieces that
`hooks.effective._pieces_all` forms for all chunks at once (module docstring of `hooks.effective`):

    query vectors Q ``[B, H, N, C, K]``, sources U ``[B, H, N, C, K]`` (A block = R U^T),
    transitions Phi ``[B, H, N, K, K]`` (R <- R Phi; diagonal families: ``[B, H, N, K]``, R <- R diag(Phi)),
    the chunks' own blocks ``[B, H, N, C, C]``.

One program per (group of up to BR query rows of one chunk i, batch x head) holds its rows' carried
query vectors R ``[BR, K]`` in registers, stores the own block, zeros for the later chunks, and walks
j = i-1 .. 0: stores A[rows, chunk j] = R U_j^T, then R <- R Phi_j. Every product is a `tl.dot` with
float32 accumulation; ``precision`` ("tf32" as fla's kernels, or "ieee") sets its input precision.
The full pattern takes groups of BR = 64 rows (whole chunks), ``rows=`` groups of 16 rows.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from hooks.scan._common import CHUNK


@triton.jit
def _carry_kernel(Q, U, PHI, D, A, OUT, POS, GCH, T, N, NTOT, NR, K: tl.constexpr, BK: tl.constexpr,
                  C: tl.constexpr, BR: tl.constexpr, DIAG: tl.constexpr, PREC: tl.constexpr):
    """Program (group g, b*H + h): rows OUT[g] (row of A, -1 = padding) at in-chunk positions POS[g]
    of chunk GCH[g]; A ``[B*H, NR, T]``; N chunks of pieces, NTOT chunks of columns."""
    i_g = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    c = tl.load(GCH + i_g)
    o_r = tl.arange(0, BR)
    out = tl.load(OUT + i_g * BR + o_r)
    pos = tl.load(POS + i_g * BR + o_r)
    m_r = out >= 0
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    o_c = tl.arange(0, C)
    qrow = (i_bh * N + c) * C + pos
    R = tl.load(Q + qrow[:, None] * K + o_k[None, :], mask=m_r[:, None] & m_k[None, :], other=0.).to(tl.float32)
    p_a = A + (i_bh * NR + out.to(tl.int64))[:, None] * T
    own = tl.load(D + qrow[:, None] * C + o_c[None, :], mask=m_r[:, None], other=0.)
    col = c * C + o_c
    tl.store(p_a + col[None, :], own.to(A.dtype.element_ty), mask=m_r[:, None] & (col < T)[None, :])
    zero = tl.zeros([BR, C], dtype=A.dtype.element_ty)
    for j in range(c + 1, NTOT):
        col = j * C + o_c
        tl.store(p_a + col[None, :], zero, mask=m_r[:, None] & (col < T)[None, :])
    for jj in range(0, c):
        j = c - 1 - jj
        base = i_bh * N + j
        u = tl.load(U + (base * C + o_c)[:, None] * K + o_k[None, :], mask=m_k[None, :], other=0.).to(tl.float32)
        blk = tl.dot(R, tl.trans(u), input_precision=PREC)
        tl.store(p_a + (j * C + o_c)[None, :], blk.to(A.dtype.element_ty), mask=m_r[:, None])
        if DIAG:
            phi = tl.load(PHI + base * K + o_k, mask=m_k, other=0.).to(tl.float32)
            R = R * phi[None, :]
        else:
            phi = tl.load(PHI + (base * K + o_k)[:, None] * K + o_k[None, :], mask=m_k[:, None] & m_k[None, :],
                          other=0.).to(tl.float32)
            R = tl.dot(R, phi, input_precision=PREC)


def _groups(rows, block, chunk=CHUNK):
    """Query rows (1-D LongTensor, host) -> (OUT, POS ``[G, block]``, GCH ``[G]``): the rows grouped by
    chunk, at most ``block`` a group, the later chunks (longest walks) first; OUT is the row's index in
    ``rows`` (-1: padding), POS its position in its chunk."""
    cp, jp = rows // chunk, rows % chunk
    order = torch.argsort(-cp, stable=True)
    uniq, counts = torch.unique_consecutive(cp[order], return_counts=True)
    ngrp = (counts + block - 1) // block
    start = torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    rank = torch.arange(rows.numel()) - start
    gid = torch.repeat_interleave(ngrp.cumsum(0) - ngrp, counts) + rank // block
    G = int(ngrp.sum())
    out = torch.full((G, block), -1, dtype=torch.int32)
    pos = torch.zeros((G, block), dtype=torch.int32)
    out[gid, rank % block] = order.to(torch.int32)
    pos[gid, rank % block] = jp[order].to(torch.int32)
    return out, pos, torch.repeat_interleave(uniq, ngrp).to(torch.int32)


def carry_triton(Q, U, Phi, own, rows, T, precision="tf32", block=None):
    """Effective attention ``[B, H, P, T]`` (float32) at query ``rows`` (1-D LongTensor on the host,
    positions < T) from the chunk pieces (module docstring; chunks 0 .. N-1 with N > the last row's
    chunk). ``block``: rows a program (default 64 for the full pattern, else 16)."""
    if precision not in ("tf32", "ieee"):
        raise ValueError(f"unknown precision '{precision}'; valid: tf32, ieee")
    B, H, N, C, K = Q.shape
    n = rows.numel()
    A = torch.empty(B, H, n, T, dtype=torch.float32, device=Q.device)
    if n == 0:
        return A
    if block is None:
        block = 64 if n >= T and K <= 64 else 32 if n >= T else 16
    out, pos, gch = (x.to(Q.device) for x in _groups(rows.cpu(), block, C))
    grid = (gch.numel(), B * H)
    _carry_kernel[grid](Q.contiguous(), U.contiguous(), Phi.contiguous(), own.contiguous(), A, out, pos, gch,
                        T, N, triton.cdiv(T, C), n, K=K, BK=max(16, triton.next_power_of_2(K)), C=C, BR=block,
                        DIAG=Phi.dim() == 4, PREC=precision, num_warps=4 if block <= 32 else 8)
    return A
