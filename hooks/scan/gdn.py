"""Gated DeltaNet scan (fla's convention, see fla/ops/gated_delta_rule/naive.py).

    a_t = exp(g_t)
    d_t = beta_t (v_t - a_t S_{t-1}^T k_t)           effective write ("delta")
    S_t = a_t S_{t-1} + k_t d_t^T                    S: [K, V] per head, float32
    o_t = S_t^T (scale q_t)

Shapes: q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, g, beta ``[B, T, H]``, state ``[B, H, K, V]``.

Paths: ``scan`` picks fla's chunk kernel for CUDA tensors and ``chunk_torch`` otherwise;
``naive`` is the step loop; ``states`` returns S_t after every (or selected) token, exactly.

Chunk form (written out because no installed package offers a pure-torch, differentiable,
state-returning chunked GDN): inside a chunk that starts from S0, with G_t = sum_{i<=t} g_i,

    d = (I + A)^{-1} beta (v - exp(G) K S0),   A[t, s] = beta_t exp(G_t - G_s) k_t.k_s  (s < t)
    S_t = exp(G_t) S0 + sum_{s<=t} exp(G_t - G_s) k_s d_s^T
"""
from __future__ import annotations

import torch

from hooks.scan._common import expect, gather_states, l2norm, norm_positions, pad_time, use_kernels

CHUNK = 64


def _prep(q, k, v, g, beta, scale, initial_state, l2):
    B, T, H, K = k.shape
    expect(q, "q", (B, T, H, K))
    expect(v, "v", (B, T, H, None))
    expect(g, "g", (B, T, H))
    expect(beta, "beta", (B, T, H))
    expect(initial_state, "initial_state", (B, H, K, v.shape[-1]))
    if l2:
        q, k = l2norm(q), l2norm(k)
    scale = K ** -0.5 if scale is None else scale
    return q, k, scale


def naive(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
          use_qk_l2norm_in_kernel=False, **unused):
    """Step-by-step reference in float32. Returns (o [B,T,H,V] in v's dtype, S_T or None)."""
    q, k, scale = _prep(q, k, v, g, beta, scale, initial_state, use_qk_l2norm_in_kernel)
    B, T, H, K = k.shape
    S = (initial_state.float() if initial_state is not None
         else torch.zeros(B, H, K, v.shape[-1], device=v.device))
    q, k, vf, g, beta = q.float(), k.float(), v.float(), g.float(), beta.float()
    o = []
    for t in range(T):
        S = S * g[:, t].exp()[..., None, None]
        d = beta[:, t, :, None] * (vf[:, t] - torch.einsum("bhkv,bhk->bhv", S, k[:, t]))
        S = S + k[:, t, :, :, None] * d[:, :, None, :]
        o.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t] * scale))
    return torch.stack(o, 1).to(v.dtype), (S if output_final_state else None)


def _chunks(q, k, v, g, beta, scale, S0, want=None):
    """Chunked forward in float32. q,k [B,T,H,K] (normalised), v [B,T,H,V]; want: None, 'all' or
    a LongTensor of positions. Returns (o, S_T, states or None)."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    C = CHUNK
    tr = lambda x: pad_time(x.float().transpose(1, 2), C)  # noqa: E731  [B, H, Tp, ...]
    q, k, v, g, beta = tr(q) * scale, tr(k), tr(v), tr(g), tr(beta)
    S = S0.float() if S0 is not None else q.new_zeros(B, H, K, V)
    mask_le = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    mask_lt = mask_le.clone().fill_diagonal_(False)
    chunk_ids = None
    if want is not None and not isinstance(want, str):
        chunk_ids = set((want // C).tolist())
    os, states = [], {}
    for c in range(q.shape[2] // C):
        sl = slice(c * C, (c + 1) * C)
        qc, kc, vc, bc = q[:, :, sl], k[:, :, sl], v[:, :, sl], beta[:, :, sl]
        G = g[:, :, sl].cumsum(-1)                                   # [B,H,C]
        diff = G[..., :, None] - G[..., None, :]                     # G_t - G_s
        decay_le = torch.where(mask_le, diff, -float("inf")).exp()   # s <= t
        decay_lt = torch.where(mask_lt, diff, -float("inf")).exp()   # s < t
        A = bc[..., None] * decay_lt * (kc @ kc.transpose(-1, -2))
        rhs = bc[..., None] * (vc - G.exp()[..., None] * (kc @ S))
        eye = torch.eye(C, device=q.device)
        d = torch.linalg.solve_triangular(eye + A, rhs, upper=False, unitriangular=True)
        o = G.exp()[..., None] * (qc @ S) + (decay_le * (qc @ kc.transpose(-1, -2))) @ d
        os.append(o)
        if want is not None and (chunk_ids is None or c in chunk_ids):
            # S_t = exp(G_t) S0 + sum_{s<=t} exp(G_t - G_s) k_s d_s^T  -> [B,H,C,K,V]
            states[c] = (G.exp()[..., None, None] * S[:, :, None]
                         + torch.einsum("bhts,bhsk,bhsv->bhtkv", decay_le, kc, d))
        Gl = G[..., -1:]
        S = Gl.exp()[..., None] * S + (kc * (Gl - G).exp()[..., None]).transpose(-1, -2) @ d
    o = torch.cat(os, 2)[:, :, :T].transpose(1, 2)
    st = None
    if want is not None:
        pos = torch.arange(T) if isinstance(want, str) else want
        st = gather_states(states, pos, C)
    return o, S, st


def chunk_torch(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                use_qk_l2norm_in_kernel=False, **unused):
    """Pure-torch chunked scan (any device, differentiable). Same result as ``naive``."""
    q, k, scale = _prep(q, k, v, g, beta, scale, initial_state, use_qk_l2norm_in_kernel)
    o, S, _ = _chunks(q, k, v, g, beta, scale, initial_state)
    return o.to(v.dtype), (S if output_final_state else None)


def scan(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
         use_qk_l2norm_in_kernel=False, **unused):
    """fla's ``chunk_gated_delta_rule`` for CUDA tensors, ``chunk_torch`` otherwise."""
    if use_kernels(q):
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
        return chunk_gated_delta_rule(q, k, v, g=g, beta=beta, scale=scale, initial_state=initial_state,
                                      output_final_state=output_final_state,
                                      use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel)
    return chunk_torch(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel)


def states(q, k, v, g, beta, scale=None, initial_state=None, use_qk_l2norm_in_kernel=False, positions=None,
           out_dtype=torch.float32, impl="auto"):
    """S_t after each token t: ``[B, T, H, K, V]`` (float32 unless ``out_dtype``), or
    ``[B, P, H, K, V]`` for the given positions (only the chunks holding them are expanded).
    impl: ``auto`` (fla's chunk pieces + torch expansion on CUDA, torch chunks on CPU) or
    ``torch`` (torch chunks anywhere)."""
    q, k, scale = _prep(q, k, v, g, beta, scale, initial_state, use_qk_l2norm_in_kernel)
    pos = norm_positions(positions, k.shape[1], k.device)
    if impl == "auto" and use_kernels(k):
        from hooks.scan import fast_states
        k = k.to(v.dtype)  # l2norm returns float32; the kernels want one dtype
        return fast_states.gdn_states(q, k, v, g, beta, initial_state, pos, out_dtype)
    return _chunks(q, k, v, g, beta, scale, initial_state, want="all" if pos is None else pos)[2].to(out_dtype)


def readout(states_, q, scale=None):
    """o_t = S_t^T (scale q_t) for states [B, T, H, K, V] and q [B, T, H, K]."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.einsum("bthkv,bthk->bthv", states_, q.float() * scale)
