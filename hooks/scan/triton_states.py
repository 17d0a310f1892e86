"""GPU path for per-token states (CUDA tensors with fla and Triton only; never import on CPU).

Every family is a decayed cumulative sum of rank-1 writes, S_t = diag(exp(g_t)) S_{t-1} + k_t w_t^T
(docs/per-token-states.md). fla's chunk forward already computes, per 64-token chunk,
the chunk-start states h ``[B, NT, H, K, V]`` and (for Gated DeltaNet) the effective writes
w = d ("v_new": checked equal to d_t = beta_t (v_t - exp(g_t) S_{t-1}^T k_t), see
tests/test_scan_gdn.py::test_fla_pieces_interpreted). From those:

* all states: `expand_triton`, one Triton program per (V-block, head, chunk, batch) that loads the
  chunk-start state into registers and steps through the chunk, S = exp(g_t) S + k_t w_t^T,
  storing S after every token. It reads T*(K+V) and writes T*K*V per head: memory bound (1.2-1.3x
  the time `fill_` takes to write the same bytes on an H100, the same as its loads and stores take
  without the recurrence: BENCHMARKS.md sections 39-40). Chunks are independent, so all run in parallel.
* selected positions: the same kernel with one program per (V-block, head, position, batch),
  stepping from the start of the position's chunk (at most 64 steps) and storing one state.
* ``impl="einsum"``: `hooks.scan._common.expand_states`, the torch closed form
  S_p = exp(seg(p, -1)) h_c + sum_{s<=p} exp(seg(p, s)) k_s w_s^T (fallback and cross-check).

The pieces (fla's h and d) are stored in the input dtype by fla's GDN kernel, so bf16 inputs
give states within bf16 rounding of the fp32 reference (tests/gpu/check_scan_gpu.py).
No autograd through this path: use ``impl="torch"`` for gradients.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from hooks.scan._common import CHUNK, expand_states


def _prune(configs, named_args, **kwargs):
    """Drop V-blocks wider than V needs or holding more than 8192 state values per program."""
    K, V = kwargs.get("K", named_args.get("K")), kwargs.get("V", named_args.get("V"))
    BK = triton.next_power_of_2(K)
    cap = max(16, min(triton.next_power_of_2(V), 8192 // BK))
    kept = [c for c in configs if c.kwargs["BV"] <= cap]
    return kept or configs[:1]


# The first config is the one this kernel used before it was autotuned (and the one `--first-config`
# check runs take); the others trade V-block width (programs in flight) against warps per program.
# Tried on an H100 and not kept (no gain; bench/prof_expand.py, BENCHMARKS.md sections 39-40): K-blocks,
# chunks cut into 2 or 4 programs, TMA stores through a tensor descriptor, loading k, w, g two or three
# tokens ahead or four tokens at a time, persistent programs, k and w loaded in the state's layout
# (section 40); on an H200, streaming ".cs" stores (section 3).
# Kept: the grid's heads-first order (1-2% faster).
_CONFIGS = [triton.Config(dict(BV=bv), num_warps=nw) for bv, nw in
            [(64, 4), (64, 8), (32, 4), (32, 2), (16, 2), (128, 8)]]


@triton.autotune(configs=_CONFIGS, key=["K", "V", "ALL", "GATE_K"], prune_configs_by=dict(early_config_prune=_prune))
@triton.jit
def _expand_kernel(h, k, w, g, out, pos, T, NT, NP, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                   BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATE_K: tl.constexpr, ALL: tl.constexpr):
    """h [B,NT,H,K,V], k [B,T,H,K], w [B,T,H,V], g [B,T,H] or [B,T,H,K] (GATE_K).
    ALL: program (i_v * H + h, chunk, b) steps through its chunk storing S after every token into
    out [B,T,H,K,V]; else program (i_v * H + h, i, b) steps from the start of the chunk holding
    pos[i] up to pos[i] and stores that one state into out [B,NP,H,K,V]. Heads come first in the grid,
    so programs launched together write neighbouring heads of the same tokens.
    Token t+1's k, w, g are loaded before token t's state is formed and stored, so the loads'
    latency hides behind the store instead of stalling every step."""
    i_v = tl.program_id(0) // H
    i_h = tl.program_id(0) % H
    i_p = tl.program_id(1)
    i_b = tl.program_id(2)
    if ALL:
        i_c = i_p
        t_end = tl.minimum((i_c + 1) * BT, T)
    else:
        p = tl.load(pos + i_p)
        i_c = p // BT
        t_end = p + 1
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    off_kv = o_k[:, None] * V + o_v[None, :]
    p_h = h + ((i_b * NT + i_c) * H + i_h).to(tl.int64) * (K * V)
    b_s = tl.load(p_h + off_kv, mask=m_kv, other=0.).to(tl.float32)
    row = (i_b * T + i_c * BT).to(tl.int64) * H + i_h          # flat index of (b, t, h)
    b_k = tl.load(k + row * K + o_k, mask=m_k, other=0.).to(tl.float32)
    b_w = tl.load(w + row * V + o_v, mask=m_v, other=0.).to(tl.float32)
    if GATE_K:
        b_g = tl.load(g + row * K + o_k, mask=m_k, other=0.).to(tl.float32)
    else:
        b_g = tl.load(g + row).to(tl.float32)
    for t in range(i_c * BT, t_end):
        nrow = row + H                                       # token t + 1 (loads masked off past the end)
        more = t + 1 < t_end
        n_k = tl.load(k + nrow * K + o_k, mask=m_k & more, other=0.).to(tl.float32)
        n_w = tl.load(w + nrow * V + o_v, mask=m_v & more, other=0.).to(tl.float32)
        if GATE_K:
            n_g = tl.load(g + nrow * K + o_k, mask=m_k & more, other=0.).to(tl.float32)
            b_s = b_s * tl.exp(b_g)[:, None]
        else:
            n_g = tl.load(g + nrow, mask=more, other=0.).to(tl.float32)
            b_s = b_s * tl.exp(b_g)
        b_s += b_k[:, None] * b_w[None, :]
        if ALL:
            tl.store(out + row * (K * V) + off_kv, b_s.to(out.dtype.element_ty), mask=m_kv)
        row, b_k, b_w, b_g = nrow, n_k, n_w, n_g
    if not ALL:
        p_o = out + ((i_b * NP + i_p) * H + i_h).to(tl.int64) * (K * V)
        tl.store(p_o + off_kv, b_s.to(out.dtype.element_ty), mask=m_kv)


def _grid(B, H, V, NP):
    """The launch grid for a config's V-block width: (V-blocks x heads, chunks or positions, batch)."""
    return lambda meta: (triton.cdiv(V, meta["BV"]) * H, NP, B)  # noqa: E731


def expand_triton(h, k, w, g, positions=None, out_dtype=torch.float32, chunk=CHUNK, config=None):
    """Per-token states from chunk-start states h ``[B, NT, H, K, V]``, keys k ``[B, T, H, K]``,
    writes w ``[B, T, H, V]`` and per-step log decays g ``[B, T, H]`` or ``[B, T, H, K]``
    (natural log): ``[B, T, H, K, V]``, or ``[B, P, H, K, V]`` for a 1-D LongTensor of positions
    (each formed from its chunk start, at most 64 steps). Same result as `_common.expand_states`.
    The V-block width and warps are autotuned once per (K, V, dtype, mode) (`_CONFIGS`); ``config``
    (a dict with BV and num_warps) runs that one instead (benchmarks and tests)."""
    B, T, H, K = k.shape
    V = w.shape[-1]
    NT = triton.cdiv(T, chunk)
    if h.shape != (B, NT, H, K, V):
        raise ValueError(f"h has shape {list(h.shape)}, expected [{B}, {NT}, {H}, {K}, {V}]")
    every = positions is None
    pos = k if every else positions.to(device=k.device, dtype=torch.long).contiguous()  # k: unused pointer
    NP = NT if every else pos.numel()
    out = torch.empty(B, T if every else NP, H, K, V, dtype=out_dtype, device=k.device)
    if NP == 0:
        return out
    kernel, meta = (_expand_kernel, {}) if config is None else (_expand_kernel.fn, dict(config))
    grid = _grid(B, H, V, NP)
    kernel[grid if config is None else grid(meta)](
        h.contiguous(), k.contiguous(), w.contiguous(), g.float().contiguous(), out, pos, T, NT, NP,
        H=H, K=K, V=V, BT=chunk, BK=triton.next_power_of_2(K), GATE_K=g.dim() == 4, ALL=every, **meta)
    return out


@contextlib.contextmanager
def kept_gdn_pieces(expand=None):
    """Within the block, every call of fla's chunked GDN forward appends to the yielded list its chunk
    pieces ``(k, h, d)``: k ``[B, T, H, K]`` as the kernel saw it (l2-normalised where the call asks),
    h ``[B, NT, H, K, V]`` chunk-start states, d ``[B, T, H, V]`` effective writes (fla's ``v_new``),
    i.e. what `gdn_pieces` would compute again - or None for a call this module cannot expand
    (variable lengths, state_v_first, another chunk size). With ``expand``, it appends ``expand(k, h, d)``
    instead, called as soon as the pieces exist: the work it queues on the GPU (the state expansion)
    then runs while the host still launches the call's output kernel. The call's own results are untouched.
    Why by hand: fla returns only o and the final state; its pieces are locals of
    ``chunk_gated_delta_rule_fwd``, which looks ``chunk_gated_delta_rule_fwd_h`` up in its module."""
    import fla.ops.gated_delta_rule.chunk as chunk_mod
    orig = chunk_mod.chunk_gated_delta_rule_fwd_h
    got = []

    def keep(*args, **kw):
        out = orig(*args, **kw)
        usable = (not args and kw.get("cu_seqlens") is None and not kw.get("state_v_first")
                  and kw.get("chunk_size", CHUNK) == CHUNK)
        rec = (kw["k"], out[0], out[1]) if usable else None
        got.append(expand(*rec) if expand is not None and rec is not None else rec)
        return out

    chunk_mod.chunk_gated_delta_rule_fwd_h = keep
    try:
        yield got
    finally:
        chunk_mod.chunk_gated_delta_rule_fwd_h = orig


def expand_kept(got, g, positions, out_dtype=torch.float32):
    """States from the pieces `kept_gdn_pieces` recorded for exactly one call with per-token log
    decays g ``[B, T, H]``; None when there is not exactly one usable record or its heads differ
    from g's (grouped value heads: `gdn_pieces` handles those)."""
    if len(got) != 1 or got[0] is None:
        return None
    k, h, d = got[0]
    if k.shape[:3] != g.shape or d.shape[:3] != g.shape:
        return None
    return expand_triton(h, k, d, g, positions, out_dtype)


def gdn_pieces(k, v, g, beta, initial_state, chunk=CHUNK):
    """fla's GDN chunk pieces: (h [B,NT,H,K,V] chunk-start states, d [B,T,H,V] effective writes),
    both in k's dtype. k as the scan sees it (already l2-normalised if the layer normalises)."""
    from fla.ops.common.chunk_delta_h import chunk_gated_delta_rule_fwd_h
    from fla.ops.gated_delta_rule.chunk_fwd import chunk_gated_delta_rule_fwd_intra
    from fla.ops.utils import chunk_local_cumsum
    from fla.ops.utils.constant import RCP_LN2
    k, v, beta = k.contiguous(), v.contiguous(), beta.contiguous()
    gc = chunk_local_cumsum(g.float().contiguous(), chunk_size=chunk, scale=RCP_LN2)  # log2, per chunk
    w, u, _ = chunk_gated_delta_rule_fwd_intra(k=k, v=v, g=gc, beta=beta, chunk_size=chunk)
    h0 = None if initial_state is None else initial_state.float().contiguous()
    h, d, _ = chunk_gated_delta_rule_fwd_h(k=k, w=w, u=u, g=gc, initial_state=h0, output_final_state=False,
                                           chunk_size=chunk)
    return h, d


def gla_pieces(k, v, g, initial_state, chunk=CHUNK):
    """fla's chunk-start states h ``[B, NT, H, K, V]`` (float32) for GLA (g ``[B, T, H, K]``) or
    simple GLA / Mamba2 (scalar g ``[B, T, H]``)."""
    from fla.ops.common.chunk_h import chunk_fwd_h
    from fla.ops.utils import chunk_local_cumsum
    from fla.ops.utils.constant import RCP_LN2
    gc = chunk_local_cumsum(g.float().contiguous(), chunk_size=chunk, scale=RCP_LN2)
    gate = dict(gk=gc) if g.dim() == 4 else dict(g=gc)
    h0 = None if initial_state is None else initial_state.float().contiguous()
    h, _ = chunk_fwd_h(k=k.contiguous(), v=v.contiguous(), h0=h0, output_final_state=False,
                       chunk_size=chunk, states_in_fp32=True, **gate)
    return h


def _expand(h, k, w, g, positions, out_dtype, impl):
    """impl ``auto`` / ``triton``: the Triton kernel; ``einsum``: the torch formula."""
    if impl not in ("auto", "triton", "einsum"):
        raise ValueError(f"unknown impl '{impl}'; valid: auto, triton, einsum, torch")
    if impl == "einsum":
        return expand_states(h, k, w, g, positions, out_dtype)
    return expand_triton(h, k, w, g, positions, out_dtype)


def gdn_states(k, v, g, beta, initial_state, positions, out_dtype=torch.float32, impl="auto", l2=False):
    """Per-token GDN states ``[B, T|P, H, K, V]``. l2: normalise k with fla's kernel first (as
    chunk_gated_delta_rule(use_qk_l2norm_in_kernel=True) does)."""
    if l2:
        from fla.modules.norm.l2norm import l2norm_fwd
        k, _ = l2norm_fwd(k.contiguous())
    k = k.to(v.dtype)  # fla's kernels take one dtype for k and v
    h, d = gdn_pieces(k, v, g, beta, initial_state)
    return _expand(h, k, d, g, positions, out_dtype, impl)


def gla_states(k, v, g, initial_state, positions, out_dtype=torch.float32, impl="auto"):
    """Per-token GLA / simple-GLA states ``[B, T|P, H, K, V]``."""
    h = gla_pieces(k, v, g, initial_state)
    return _expand(h, k, v, g, positions, out_dtype, impl)
