"""Triton kernels of the exact effective attention: GDN's chunk pieces and the backwards carry (``impl="triton"``).

Imported by `hooks.effective` only when the Triton path is chosen (CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1`` in the tests); it needs triton, and fla only for the optional ``solve_tril``. The carry's inputs are the chunk pieces that
`hooks.effective._pieces_all` forms for all chunks at once (module docstring of `hooks.effective`):

    query vectors Q ``[B, H, N, C, K]``, sources U ``[B, H, N, C, K]`` (A block = R U^T),
    transitions Phi ``[B, H, N, K, K]`` (R <- R Phi; diagonal families: ``[B, H, N, K]``, R <- R diag(Phi)),
    the chunks' own blocks ``[B, H, N, C, C]``.

GDN's pieces have their own two kernels (`gdn_pieces`): a gram kernel forms each chunk's strictly lower
L = beta_t exp(G_t - G_s) k_t.k_s, the triangular solve X = (I + L)^{-1} diag(beta) runs between them (`SOLVE`:
fla's blocked ``solve_tril`` by default, where L is written in fla's ``[B, T, H, 64]`` layout and the pieces
kernel scales the inverse's columns by beta), and the pieces kernel forms Q, U, Phi and the own blocks from X.

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

SOLVES = ("fla", "torch", "kernel")
SOLVE = "fla"   # X = (I + L)^{-1} diag(beta) by fla's blocked solve_tril (torch's where fla is absent), torch's
                # batched triangular solve, or forward substitution in the gram kernel (slowest: section 28)


def _fla_solve_tril():
    """fla's ``solve_tril`` ((I + A)^{-1} of strictly lower 64 x 64 chunk blocks, ``[B, T, H, 64]``) or None."""
    try:
        from fla.ops.utils.solve_tril import solve_tril
    except ImportError:
        return None
    return solve_tril


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


@triton.jit
def _chunk_decays(g, beta, i_bh, j, Tp, C: tl.constexpr):
    """One chunk's in-chunk log decays G_t (cumulative), exp(G_t - G_s) (s <= t, else 0) and beta."""
    o_c = tl.arange(0, C)
    row = i_bh * Tp + j * C + o_c
    G = tl.cumsum(tl.load(g + row).to(tl.float32), 0)
    dec = tl.where(o_c[:, None] >= o_c[None, :], tl.exp(G[:, None] - G[None, :]), 0.)
    return G, dec, tl.load(beta + row).to(tl.float32), row


@triton.jit
def _x_rows(i_bh, j, NT, H, C: tl.constexpr, FLA: tl.constexpr):
    """Row offsets (in elements) of chunk j's C x C block of L / X: ours ``[B, H, NT, C, C]`` or fla's
    ``[B, NT*C, H, C]`` (FLA, the layout of its solve_tril)."""
    o_c = tl.arange(0, C)
    if FLA:
        return (((i_bh // H) * NT * C + j * C + o_c) * H + i_bh % H) * C
    return ((i_bh * NT + j) * C + o_c) * C


@triton.jit
def _gdn_gram_kernel(k, g, beta, L, Tp, NT, H, K: tl.constexpr, BK: tl.constexpr, C: tl.constexpr,
                     PREC: tl.constexpr, SOLVE: tl.constexpr, FLA: tl.constexpr):
    """L[t, s] = beta_t exp(G_t - G_s) k_t.k_s (s < t) of chunk j, or (SOLVE) X = (I + L)^{-1} diag(beta):
    program (j, b*H + h); stored in fla's layout when FLA (`_x_rows`)."""
    j = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    o_c, o_k = tl.arange(0, C), tl.arange(0, BK)
    G, dec, b, row = _chunk_decays(g, beta, i_bh, j, Tp, C)
    kk = tl.load(k + row[:, None] * K + o_k[None, :], mask=o_k[None, :] < K, other=0.).to(tl.float32)
    gram = tl.dot(kk, tl.trans(kk), input_precision=PREC)
    out = tl.where(o_c[:, None] > o_c[None, :], b[:, None] * dec * gram, 0.)
    if SOLVE:                      # X = (I + L)^{-1} diag(beta) by forward substitution, row by row
        x = tl.zeros([C, C], dtype=tl.float32)
        for t in range(0, C):
            lt = tl.sum(tl.where(o_c[:, None] == t, out, 0.), 0)               # row t of L
            bt = tl.sum(tl.where(o_c == t, b, 0.), 0)
            xt = tl.where(o_c == t, bt, 0.) - tl.sum(lt[:, None] * x, 0)
            x = tl.where(o_c[:, None] == t, xt[None, :], x)
        out = x
    tl.store(L + _x_rows(i_bh, j, NT, H, C, FLA)[:, None] + o_c[None, :], out)


@triton.jit
def _gdn_pieces_kernel(q, k, g, beta, X, Qo, Uo, PHI, OWN, Tp, NT, H, K: tl.constexpr, BK: tl.constexpr,
                       C: tl.constexpr, PREC: tl.constexpr, FLA: tl.constexpr):
    """GDN chunk j's pieces from X = (I + L)^{-1} diag(beta) (`hooks.effective` module docstring):
    Q = e^G q - Lqk W, U = X^T K~, Phi = e^G_end I - K~^T W, own = Lqk X; program (j, b*H + h). FLA: X
    holds fla's (I + L)^{-1} in its layout (`_x_rows`), the columns scaled by beta here."""
    j = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    o_c, o_k = tl.arange(0, C), tl.arange(0, BK)
    m_k = o_k[None, :] < K
    G, dec, b, row = _chunk_decays(g, beta, i_bh, j, Tp, C)
    kk = tl.load(k + row[:, None] * K + o_k[None, :], mask=m_k, other=0.).to(tl.float32)
    qq = tl.load(q + row[:, None] * K + o_k[None, :], mask=m_k, other=0.).to(tl.float32)
    base = (i_bh * NT + j) * C + o_c
    x = tl.load(X + _x_rows(i_bh, j, NT, H, C, FLA)[:, None] + o_c[None, :]).to(tl.float32)
    if FLA:
        x = x * b[None, :]
    g_end = tl.sum(tl.where(o_c == C - 1, G, 0.), 0)
    lqk = tl.dot(qq, tl.trans(kk), input_precision=PREC) * dec
    w = tl.dot(x, tl.exp(G)[:, None] * kk, input_precision=PREC)
    kt = tl.exp(g_end - G)[:, None] * kk
    eye = tl.where(o_k[:, None] == o_k[None, :], tl.exp(g_end), 0.)
    phi = eye - tl.dot(tl.trans(kt), w, input_precision=PREC)
    tl.store(PHI + ((i_bh * NT + j) * K + o_k)[:, None] * K + o_k[None, :], phi, mask=(o_k[:, None] < K) & m_k)
    tl.store(Uo + base[:, None] * K + o_k[None, :], tl.dot(tl.trans(x), kt, input_precision=PREC), mask=m_k)
    qv = tl.exp(G)[:, None] * qq - tl.dot(lqk, w, input_precision=PREC)
    tl.store(Qo + base[:, None] * K + o_k[None, :], qv, mask=m_k)
    tl.store(OWN + base[:, None] * C + o_c[None, :], tl.dot(lqk, x, input_precision=PREC))


def gdn_pieces(q, k, g, beta, n, precision="tf32"):
    """GDN's pieces for chunks 0 .. n-1 (as `hooks.effective._pieces_all`, scalar decay): q (scale folded
    in), k ``[B, H, Tp, K]``, g, beta ``[B, H, Tp]`` (Tp a multiple of the chunk). Two kernels and the
    triangular solve (`SOLVE`) in between, float32: (Q, U, Phi, own)."""
    B, H, Tp, K = k.shape
    C = CHUNK
    f = lambda x: x.float().contiguous()  # noqa: E731
    q, k, g, beta = f(q), f(k), f(g), f(beta)
    BK = max(16, triton.next_power_of_2(K))
    kw = dict(K=K, BK=BK, C=C, PREC=precision, num_warps=4 if BK <= 64 else 8)
    if SOLVE not in SOLVES:
        raise ValueError(f"unknown SOLVE '{SOLVE}'; valid: {', '.join(SOLVES)}")
    tril = _fla_solve_tril() if SOLVE == "fla" else None
    fla = tril is not None
    X = torch.empty(*((B, n * C, H, C) if fla else (B, H, n, C, C)), dtype=torch.float32, device=k.device)
    _gdn_gram_kernel[(n, B * H)](k, g, beta, X, Tp, n, H, SOLVE=SOLVE == "kernel", FLA=fla, **kw)
    if fla:
        X = tril(X, output_dtype=torch.float32)                      # (I + L)^{-1}; beta scaled in the kernel
    elif SOLVE != "kernel":
        eye = torch.eye(C, dtype=torch.float32, device=k.device)
        bt = beta.view(B, H, -1, C)[:, :, :n]
        X = torch.linalg.solve_triangular(X + eye, torch.diag_embed(bt), upper=False, unitriangular=True)
    Q, U = torch.empty(B, H, n, C, K, device=k.device), torch.empty(B, H, n, C, K, device=k.device)
    Phi, own = torch.empty(B, H, n, K, K, device=k.device), torch.empty(B, H, n, C, C, device=k.device)
    _gdn_pieces_kernel[(n, B * H)](q, k, g, beta, X.contiguous(), Q, U, Phi, own, Tp, n, H, FLA=fla, **kw)
    return Q, U, Phi, own


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
    BK = max(16, triton.next_power_of_2(K))
    out, pos, gch = (x.to(Q.device) for x in _groups(rows.cpu(), block, C))
    grid = (gch.numel(), B * H)
    _carry_kernel[grid](Q.contiguous(), U.contiguous(), Phi.contiguous(), own.contiguous(), A, out, pos, gch,
                        T, N, triton.cdiv(T, C), n, K=K, BK=BK, C=C, BR=block, DIAG=Phi.dim() == 4, PREC=precision,
                        num_warps=4 if block <= 32 and BK <= 64 else 8)
    return A
