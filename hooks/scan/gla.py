"""Gated Linear Attention scan (fla's convention, see fla/ops/gla/naive.py).

    S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T         g: log decay per key dim
    o_t = S_t^T (scale q_t)

Shapes: q, k, g ``[B, T, H, K]``, v ``[B, T, H, V]``, state ``[B, H, K, V]``.
A scalar decay per head (``g`` of shape ``[B, T, H]``) is accepted too (simple GLA / Mamba2).

Chunk form, with G_t = sum_{i<=t} g_i inside a chunk starting from S0 (differences of G are
exponentiated, never exp(G_t) * exp(-G_s), which overflows under strong decay):

    S_t = exp(G_t) * S0 + sum_{s<=t} (exp(G_t - G_s) * k_s) v_s^T
"""
from __future__ import annotations

import torch

from hooks.scan._common import expect, gather_states, norm_positions, pad_time, use_kernels

CHUNK = 64


def _prep(q, k, v, g, initial_state):
    B, T, H, K = k.shape
    expect(q, "q", (B, T, H, K))
    expect(v, "v", (B, T, H, None))
    if g.dim() == 3:
        expect(g, "g", (B, T, H))
        g = g[..., None].expand(B, T, H, K)
    expect(g, "g", (B, T, H, K))
    expect(initial_state, "initial_state", (B, H, K, v.shape[-1]))
    return g


def naive(q, k, v, g, scale=None, initial_state=None, output_final_state=False, **unused):
    """Step-by-step reference in float32."""
    g = _prep(q, k, v, g, initial_state)
    B, T, H, K = k.shape
    scale = K ** -0.5 if scale is None else scale
    S = (initial_state.float() if initial_state is not None
         else torch.zeros(B, H, K, v.shape[-1], device=v.device))
    o = []
    for t in range(T):
        S = g[:, t].float().exp()[..., None] * S + k[:, t].float()[..., None] * v[:, t].float()[:, :, None]
        o.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t].float() * scale))
    return torch.stack(o, 1).to(v.dtype), (S if output_final_state else None)


def _chunks(q, k, v, g, scale, S0, want=None):
    B, T, H, K = k.shape
    V = v.shape[-1]
    C = CHUNK
    tr = lambda x: pad_time(x.float().transpose(1, 2), C)  # noqa: E731
    q, k, v, g = tr(q) * scale, tr(k), tr(v), tr(g)
    S = S0.float() if S0 is not None else q.new_zeros(B, H, K, V)
    mask = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()[..., None]
    strict = torch.ones(C, C, dtype=torch.bool, device=q.device).tril(-1)[..., None]
    chunk_ids = None if want is None or isinstance(want, str) else set((want // C).tolist())
    os, states = [], {}
    for c in range(q.shape[2] // C):
        sl = slice(c * C, (c + 1) * C)
        qc, kc, vc, gc = q[:, :, sl], k[:, :, sl], v[:, :, sl], g[:, :, sl]
        G = gc.cumsum(2)                                                     # [B,H,C,K]
        # seg[t, s] = sum_{s<i<=t} g_i summed directly, not as G_t - G_s: the difference of two
        # large cumulative sums loses float32 precision under strong decay
        seg = torch.where(strict, gc[:, :, :, None].expand(-1, -1, -1, C, -1), 0).cumsum(2)
        dec = torch.where(mask, seg, -float("inf")).exp()                   # [B,H,t,s,K]
        A = torch.einsum("bhtk,bhtsk,bhsk->bhts", qc, dec, kc)
        os.append((qc * G.exp()) @ S + A @ vc)
        if want is not None and (chunk_ids is None or c in chunk_ids):
            states[c] = (G.exp()[..., None] * S[:, :, None]
                         + torch.einsum("bhtsk,bhsk,bhsv->bhtkv", dec, kc, vc))
        Gl = G[:, :, -1:]
        S = Gl[:, :, 0, :, None].exp() * S + (kc * dec[:, :, -1]).transpose(-1, -2) @ vc
    o = torch.cat(os, 2)[:, :, :T].transpose(1, 2)
    st = None
    if want is not None:
        st = gather_states(states, torch.arange(T) if isinstance(want, str) else want, C)
    return o, S, st


def chunk_torch(q, k, v, g, scale=None, initial_state=None, output_final_state=False, **unused):
    """Pure-torch chunked scan (any device, differentiable)."""
    g = _prep(q, k, v, g, initial_state)
    scale = k.shape[-1] ** -0.5 if scale is None else scale
    o, S, _ = _chunks(q, k, v, g, scale, initial_state)
    return o.to(v.dtype), (S if output_final_state else None)


def scan(q, k, v, g, scale=None, initial_state=None, output_final_state=False, **unused):
    """fla's ``chunk_gla`` (or ``chunk_simple_gla`` for a scalar decay) for CUDA tensors,
    ``chunk_torch`` otherwise."""
    if use_kernels(q):
        if g.dim() == 3:
            from fla.ops.simple_gla import chunk_simple_gla
            return chunk_simple_gla(q, k, v, g=g, scale=scale, initial_state=initial_state,
                                    output_final_state=output_final_state)
        from fla.ops.gla import chunk_gla
        return chunk_gla(q, k, v, g=g, scale=scale, initial_state=initial_state,
                         output_final_state=output_final_state)
    return chunk_torch(q, k, v, g, scale, initial_state, output_final_state)


def states(q, k, v, g, scale=None, initial_state=None, positions=None, **unused):
    """S_t after each token: ``[B, T|P, H, K, V]`` float32."""
    scalar = g.dim() == 3
    g_full = _prep(q, k, v, g, initial_state)
    pos = norm_positions(positions, k.shape[1], k.device)
    if use_kernels(k):
        from hooks.scan import fast_states
        return fast_states.gla_states(k, v, g if scalar else g_full, initial_state, pos)
    return _chunks(q, k, v, g_full, 1.0, initial_state, want="all" if pos is None else pos)[2]
