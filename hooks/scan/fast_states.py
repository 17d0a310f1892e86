"""GPU path for per-token states.

GDN: fla's chunk forward already computes, per 64-token chunk, the chunk-start state h and the
effective writes d ("v_new", the WY-form new values). Every state is then one decayed cumulative
sum inside its chunk (shared/notes/per-token-states.md):

    S_t = exp(G_t) h_c + sum_{s<=t in chunk c} exp(G_t - G_s) k_s d_s^T

computed here with one batched matmul per chunk group (a torch formulation: it writes the
rank-1-weighted keys first, so it costs a few passes over the output rather than one; a fused
state-writing Triton kernel is the next step, see BENCHMARKS.md). Only the chunks that hold
requested positions are expanded. GLA / Mamba2 use the exact chunked torch formula on the GPU.
"""
from __future__ import annotations

import math

import torch

C = 64


def _fla_gdn_pieces(k, v, g, beta, initial_state):
    from fla.ops.common.chunk_delta_h import chunk_gated_delta_rule_fwd_h
    from fla.ops.gated_delta_rule.chunk_fwd import chunk_gated_delta_rule_fwd_intra
    from fla.ops.utils import chunk_local_cumsum
    from fla.ops.utils.constant import RCP_LN2
    gc = chunk_local_cumsum(g, chunk_size=C, scale=RCP_LN2)  # log2 units, cumulative in each chunk
    w, u, _ = chunk_gated_delta_rule_fwd_intra(k=k, v=v, g=gc, beta=beta, chunk_size=C)
    h, d, _ = chunk_gated_delta_rule_fwd_h(k=k, w=w, u=u, g=gc, initial_state=initial_state,
                                           output_final_state=False, chunk_size=C)
    return h, d, gc.float() * math.log(2.0)


def expand_chunks(h, k, d, G, chunk_ids, out_dtype):
    """h [B,NT,H,K,V] chunk-start states, k [B,T,H,K], d [B,T,H,V], G [B,T,H] natural-log
    cumulative decay within chunks -> states [B, len(chunk_ids)*C, H, K, V]."""
    B, T, H, K = k.shape
    V = d.shape[-1]
    pad = (-T) % C
    if pad:
        k = torch.nn.functional.pad(k, (0, 0, 0, 0, 0, pad))
        d = torch.nn.functional.pad(d, (0, 0, 0, 0, 0, pad))
        G = torch.nn.functional.pad(G, (0, 0, 0, pad))
    NT = k.shape[1] // C
    kc = k.view(B, NT, C, H, K)[:, chunk_ids].permute(0, 1, 3, 2, 4)     # [B,n,H,C,K]
    dc = d.view(B, NT, C, H, V)[:, chunk_ids].permute(0, 1, 3, 2, 4)     # [B,n,H,C,V]
    Gc = G.view(B, NT, C, H)[:, chunk_ids].permute(0, 1, 3, 2)           # [B,n,H,C]
    mask = torch.ones(C, C, dtype=torch.bool, device=k.device).tril()
    W = torch.where(mask, Gc[..., :, None] - Gc[..., None, :], -float("inf")).exp()  # [B,n,H,t,s]
    # sum_s W[t,s] k_s d_s^T  as  (W[t,s] k_s[k]) over s  @  d_s   ->  [B,n,H,t,K,V]
    X = (W[..., None] * kc[..., None, :, :].float()).transpose(-1, -2)   # [B,n,H,t,K,s]
    S = X @ dc[..., None, :, :].float()                                   # [B,n,H,t,K,V]
    S += Gc.exp()[..., None, None] * h[:, chunk_ids].float()[:, :, :, None]
    return S.permute(0, 1, 3, 2, 4, 5).reshape(B, -1, H, K, V).to(out_dtype)


def gdn_states(q, k, v, g, beta, initial_state, positions, out_dtype=torch.float32):
    """k already l2-normalised if the layer normalises (callers pass the scan's own inputs)."""
    h, d, G = _fla_gdn_pieces(k.contiguous(), v.contiguous(), g.float().contiguous(),
                              beta.contiguous(), initial_state)
    T = k.shape[1]
    NT = (T + C - 1) // C
    if positions is None:
        return expand_chunks(h, k, d, G, torch.arange(NT, device=k.device), out_dtype)[:, :T]
    pos = positions.to(k.device)
    ids = torch.unique(pos // C)
    S = expand_chunks(h, k, d, G, ids, out_dtype)
    slot = torch.searchsorted(ids, pos // C) * C + pos % C
    return S[:, slot]


def gla_states(k, v, g, initial_state, positions):
    from hooks.scan import gla
    if g.dim() == 3:
        g = g[..., None].expand(*g.shape, k.shape[-1])
    want = "all" if positions is None else positions
    return gla._chunks(k, k, v, g, 1.0, initial_state, want=want)[2]
