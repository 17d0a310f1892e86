"""Gated Linear Attention scan (fla's convention, see fla/ops/gla/naive.py).

    S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T         g: log decay per key dim
    o_t = S_t^T (scale q_t)

Shapes: q, k, g ``[B, T, H, K]``, v ``[B, T, H, V]``, state ``[B, H, K, V]``.
A scalar decay per head (``g`` of shape ``[B, T, H]``) is accepted too (simple GLA / Mamba2).

Chunk form, with G_t = sum_{i<=t} g_i inside a chunk starting from S0 (G_t - G_s is summed
directly as sum_{s<i<=t} g_i, see `_common.segsum`, never formed as exp(G_t) * exp(-G_s), which
overflows under strong decay):

    S_t = exp(G_t) * S0 + sum_{s<=t} (exp(G_t - G_s) * k_s) v_s^T

Paths: ``scan`` picks fla's ``chunk_gla`` / ``chunk_simple_gla`` for CUDA tensors and
``chunk_torch`` otherwise; ``naive`` is the step loop; ``states`` gives S_t after every (or
selected) token, exactly (CUDA: `hooks.scan.triton_states`). ``FAMILY`` is this family for `hooks`
(docs/per-token-states.md).
"""
from __future__ import annotations

import torch

from hooks.scan._common import (CHUNK, expand_states, expect, norm_positions, pad_time, segsum, torch_impl,
                                 work)
from hooks.scan.family import Family
from hooks.scan.kernels import use_kernels


def _prep(q, k, v, g, initial_state):
    B, T, H, K = k.shape
    expect(q, "q", (B, T, H, K))
    expect(v, "v", (B, T, H, None))
    expect(g, "g", (B, T, H) if g.dim() == 3 else (B, T, H, K))
    expect(initial_state, "initial_state", (B, H, K, v.shape[-1]))


def naive(q, k, v, g, scale=None, initial_state=None, output_final_state=False, **unused):
    """Step-by-step reference in float32. Returns (o [B,T,H,V] in v's dtype, S_T or None)."""
    _prep(q, k, v, g, initial_state)
    B, T, H, K = k.shape
    g = g[..., None].expand(B, T, H, K) if g.dim() == 3 else g
    scale = K ** -0.5 if scale is None else scale
    S = (initial_state.float() if initial_state is not None
         else torch.zeros(B, H, K, v.shape[-1], device=v.device))
    o = []
    for t in range(T):
        S = g[:, t].float().exp()[..., None] * S + k[:, t].float()[..., None] * v[:, t].float()[:, :, None]
        o.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t].float() * scale))
    return torch.stack(o, 1).to(v.dtype), (S if output_final_state else None)


def _chunks(q, k, v, g, scale, S0, keep=False):
    """Chunked forward in float32; g ``[B, T, H, K]`` or scalar ``[B, T, H]``. Returns (o, S_T, h):
    h ``[B, NT, H, K, V]`` chunk-start states when ``keep``, else None."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    C = CHUNK
    scalar = g.dim() == 3
    tr = lambda x: pad_time(work(x).transpose(1, 2), C)  # noqa: E731  [B, H, Tp, ...]
    q, k, v, g = tr(q) * scale, tr(k), tr(v), tr(g)
    S = work(S0).to(q.dtype) if S0 is not None else q.new_zeros(B, H, K, V)
    os, hs = [], []
    for c in range(q.shape[2] // C):
        sl = slice(c * C, (c + 1) * C)
        qc, kc, vc, gc = q[:, :, sl], k[:, :, sl], v[:, :, sl], g[:, :, sl]
        eG = gc.cumsum(2).exp()                                               # [B,H,C(,K)]
        if scalar:
            dec = segsum(gc).exp()                                            # [B,H,t,s]
            A = (qc @ kc.transpose(-1, -2)) * dec
            os.append(eG[..., None] * (qc @ S) + A @ vc)
            kw, eGl = kc * dec[:, :, -1, :, None], eG[:, :, -1, None, None]
        else:
            dec = segsum(gc.transpose(-1, -2)).exp().permute(0, 1, 3, 4, 2)   # [B,H,t,s,K]
            A = torch.einsum("bhtk,bhtsk,bhsk->bhts", qc, dec, kc)
            os.append((qc * eG) @ S + A @ vc)
            kw, eGl = kc * dec[:, :, -1], eG[:, :, -1, :, None]
        if keep:
            hs.append(S)
        S = eGl * S + kw.transpose(-1, -2) @ vc
    o = torch.cat(os, 2)[:, :, :T].transpose(1, 2)
    return o, S, (torch.stack(hs, 1) if keep else None)


def chunk_torch(q, k, v, g, scale=None, initial_state=None, output_final_state=False, **unused):
    """Pure-torch chunked scan (any device, differentiable). Same result as ``naive``."""
    _prep(q, k, v, g, initial_state)
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


def states(q, k, v, g, scale=None, initial_state=None, positions=None, out_dtype=torch.float32, impl="auto",
           **unused):
    """S_t after each token: ``[B, T, H, K, V]`` float32 (unless ``out_dtype``), or
    ``[B, P, H, K, V]`` for a 1-D list/LongTensor of positions. q and scale do not enter.

    impl as in `hooks.scan.gdn.states`: ``auto`` (CUDA with fla: ``triton``, i.e. fla's
    chunk-start states + the Triton state kernel; otherwise ``torch``), ``einsum``, ``torch``."""
    _prep(q, k, v, g, initial_state)
    pos = norm_positions(positions, k.shape[1])
    if impl != "torch" and use_kernels(k):
        from hooks.scan import triton_states
        return triton_states.gla_states(k, v, g, initial_state, pos, out_dtype, impl)
    torch_impl(impl)
    _, _, h = _chunks(q, k, v, g, 1.0, initial_state, keep=True)
    return expand_states(h, k, v, g, pos, out_dtype)


class GLAFamily(Family):
    """GLA in the hook names: q, k, v, decay = g (per key dim); no write strength (no rec.beta)."""
    name = "gla"
    inputs = ("q", "k", "v", "decay")
    writes = True   # S_t = diag(a_t) S_{t-1} + k_t v_t^T

    def canonical(self, kw, lazy_qk=False):
        q = kw["q"]
        return self.view(q=q, k=kw["k"], v=kw["v"], decay=kw["g"], scale=kw.get("scale") or q.shape[-1] ** -0.5,
                         initial_state=kw.get("initial_state"))

    def scan(self, c, initial_state=None):
        return scan(c["q"], c["k"], c["v"], c["decay"], scale=c["scale"], initial_state=initial_state,
                    output_final_state=True)

    def states(self, c, positions=None, out_dtype=torch.float32):
        return states(c["q"], c["k"], c["v"], c["decay"], scale=c["scale"], initial_state=c["initial_state"],
                      positions=positions, out_dtype=out_dtype)


FAMILY = GLAFamily()
