"""Gated DeltaNet scan (fla's convention, see fla/ops/gated_delta_rule/naive.py).

    a_t = exp(g_t)
    d_t = beta_t (v_t - a_t S_{t-1}^T k_t)           effective write ("delta")
    S_t = a_t S_{t-1} + k_t d_t^T                    S: [K, V] per head, float32
    o_t = S_t^T (scale q_t)

Shapes: q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, g, beta ``[B, T, H]``, state ``[B, H, K, V]``.

Paths: ``scan`` picks fla's chunk kernel for CUDA tensors and ``chunk_torch`` otherwise;
``naive`` is the step loop; ``states`` returns S_t after every (or selected) token, exactly
(CUDA: fla's chunk pieces + `hooks.scan.triton_states`). The pure-torch paths compute in
float32 (float64 inputs stay float64) and are differentiable.

Chunk form (written out because no installed package offers a pure-torch, differentiable,
state-returning chunked GDN): inside a chunk that starts from S0, with G_t = sum_{i<=t} g_i,

    d = (I + A)^{-1} beta (v - exp(G) K S0),   A[t, s] = beta_t exp(G_t - G_s) k_t.k_s  (s < t)
    S_t = exp(G_t) S0 + sum_{s<=t} exp(G_t - G_s) k_s d_s^T

with G_t - G_s summed directly as sum_{s<i<=t} g_i (`_common.segsum`), never exp(G_t) exp(-G_s)
(docs/per-token-states.md). ``naive`` and ``chunk_torch`` with ``per_key_decay=True`` (and the chunk
form) take a decay per key dim, g ``[B, T, H, K]`` (exp(G) then a diagonal matrix): Kimi Delta
Attention, `hooks.scan.kda`.
``FAMILY`` is this family for `hooks` (canonical view, states, patching).
"""
from __future__ import annotations

import contextlib

import torch

from hooks.scan._common import (CHUNK, expand_states, expect, l2norm, norm_positions, pad_time, segsum, torch_impl,
                                 work)
from hooks.scan.family import Family, materialize
from hooks.scan.kernels import use_kernels


def _prep(q, k, v, g, beta, scale, initial_state, l2, per_key=False):
    B, T, H, K = k.shape
    expect(q, "q", (B, T, H, K))
    expect(v, "v", (B, T, H, None))
    expect(g, "g", (B, T, H, K) if per_key else (B, T, H))
    expect(beta, "beta", (B, T, H))
    expect(initial_state, "initial_state", (B, H, K, v.shape[-1]))
    if l2:
        q, k = l2norm(q), l2norm(k)
    scale = K ** -0.5 if scale is None else scale
    return q, k, scale


def naive(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
          use_qk_l2norm_in_kernel=False, per_key_decay=False, **unused):
    """Step-by-step reference in float32. Returns (o [B,T,H,V] in v's dtype, S_T or None).
    ``per_key_decay``: g is ``[B, T, H, K]`` (KDA, `hooks.scan.kda`)."""
    q, k, scale = _prep(q, k, v, g, beta, scale, initial_state, use_qk_l2norm_in_kernel, per_key_decay)
    B, T, H, K = k.shape
    S = (initial_state.float() if initial_state is not None
         else torch.zeros(B, H, K, v.shape[-1], device=v.device))
    q, k, vf, g, beta = q.float(), k.float(), v.float(), g.float(), beta.float()
    o = []
    a = g.exp()[..., None, None] if g.dim() == 3 else g.exp()[..., None]  # scalar / per key dim (KDA)
    for t in range(T):
        S = S * a[:, t]
        d = beta[:, t, :, None] * (vf[:, t] - torch.einsum("bhkv,bhk->bhv", S, k[:, t]))
        S = S + k[:, t, :, :, None] * d[:, :, None, :]
        o.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t] * scale))
    return torch.stack(o, 1).to(v.dtype), (S if output_final_state else None)


def chunk_decays(gc):
    """One chunk's log decays gc ``[B, H, C]`` (scalar) or ``[B, H, C, K]`` (per key dim, KDA) ->
    (exp(G_t) broadcastable against ``[B, H, C, K]``, gram(x, y, mask=None, rows=None) =
    [rows_t exp(G_t - G_s) x_t.y_s]_{t,s} (s <= t, 0 above; times a 0/1 ``mask``; ``rows`` ``[B, H, C]``),
    exp(G_end - G_s) broadcastable against ``[B, H, C, K]``). The scalar case multiplies in the order
    GDN always has (rows * (dec * mask)) * (x y^T), so its results are unchanged to the bit."""
    if gc.dim() == 3:
        dec = segsum(gc).exp()                                   # exp(G_t - G_s), s <= t

        def gram(x, y, mask=None, rows=None):
            m = dec if mask is None else dec * mask
            return (m if rows is None else rows[..., None] * m) * (x @ y.transpose(-1, -2))
        return gc.cumsum(-1).exp()[..., None], gram, dec[:, :, -1, :, None]
    dec = segsum(gc.transpose(-1, -2)).exp()                     # [B, H, K, t, s]

    def gram(x, y, mask=None, rows=None):
        out = torch.einsum("bhtk,bhkts,bhsk->bhts", x, dec, y)
        out = out if mask is None else out * mask
        return out if rows is None else rows[..., None] * out
    return gc.cumsum(2).exp(), gram, dec[:, :, :, -1].transpose(-1, -2)


def _chunks(q, k, v, g, beta, scale, S0, keep=False):
    """Chunked forward in float32. q, k ``[B, T, H, K]`` (normalised), v ``[B, T, H, V]``, g ``[B, T, H]``
    or, per key dim (KDA), ``[B, T, H, K]``. Returns (o, S_T, h, d): h ``[B, NT, H, K, V]`` chunk-start
    states and d ``[B, T, H, V]`` the effective writes when ``keep``, else None."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    C = CHUNK
    tr = lambda x: pad_time(work(x).transpose(1, 2), C)  # noqa: E731  [B, H, Tp, ...]
    q, k, v, g, beta = tr(q) * scale, tr(k), tr(v), tr(g), tr(beta)
    S = work(S0).to(q.dtype) if S0 is not None else q.new_zeros(B, H, K, V)
    strict = torch.ones(C, C, dtype=torch.bool, device=q.device).tril(-1)
    eye = torch.eye(C, device=q.device, dtype=q.dtype)
    os, hs, ds = [], [], []
    for c in range(q.shape[2] // C):
        sl = slice(c * C, (c + 1) * C)
        qc, kc, vc, bc, gc = q[:, :, sl], k[:, :, sl], v[:, :, sl], beta[:, :, sl], g[:, :, sl]
        eG, gram, tail = chunk_decays(gc)                            # exp(G_t), gram, exp(G_end - G_s)
        A = gram(kc, kc, strict, rows=bc)
        scalar = gc.dim() == 3
        rhs = bc[..., None] * (vc - (eG * (kc @ S) if scalar else (eG * kc) @ S))
        d = torch.linalg.solve_triangular(eye + A, rhs, upper=False, unitriangular=True)
        os.append((eG * (qc @ S) if scalar else (eG * qc) @ S) + gram(qc, kc) @ d)
        if keep:
            hs.append(S)
            ds.append(d)
        S = eG[:, :, -1, :, None] * S + (kc * tail).transpose(-1, -2) @ d
    o = torch.cat(os, 2)[:, :, :T].transpose(1, 2)
    if not keep:
        return o, S, None, None
    return o, S, torch.stack(hs, 1), torch.cat(ds, 2)[:, :, :T].transpose(1, 2)


def chunk_torch(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                use_qk_l2norm_in_kernel=False, per_key_decay=False, **unused):
    """Pure-torch chunked scan (any device, differentiable). Same result as ``naive``."""
    q, k, scale = _prep(q, k, v, g, beta, scale, initial_state, use_qk_l2norm_in_kernel, per_key_decay)
    o, S, _, _ = _chunks(q, k, v, g, beta, scale, initial_state)
    return o.to(v.dtype), (S if output_final_state else None)


def scan(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
         use_qk_l2norm_in_kernel=False, cu_seqlens=None, **unused):
    """fla's ``chunk_gated_delta_rule`` for CUDA tensors, ``chunk_torch`` otherwise. ``cu_seqlens`` (fla's
    variable-length form; a LongTensor [N + 1], best on the CPU): the inputs' one row (B = 1) holds N sequences back
    to back, sequence n at positions cu_seqlens[n] .. cu_seqlens[n+1]-1, each scanned alone from initial_state[n]
    (``[N, H, K, V]`` or None); the final state is then ``[N, H, K, V]``."""
    if cu_seqlens is not None and q.shape[0] != 1:
        raise ValueError(f"scan with cu_seqlens takes one row (B = 1) of sequences back to back, got B = {q.shape[0]}")
    if use_kernels(q):
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
        var = {} if cu_seqlens is None else dict(cu_seqlens=cu_seqlens.to(q.device, non_blocking=True),
                                                 cu_seqlens_cpu=cu_seqlens.cpu())
        return chunk_gated_delta_rule(q, k, v, g=g, beta=beta, scale=scale, initial_state=initial_state,
                                      output_final_state=output_final_state,
                                      use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel, **var)
    if cu_seqlens is not None:
        return _varlen_torch(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel,
                             cu_seqlens)
    return chunk_torch(q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel)


scan.takes_cu_seqlens = True   # (callers may pass fla's variable-length form, e.g. interp.zoo.gdn.scan_rows)


def _varlen_torch(q, k, v, g, beta, scale, initial_state, output_final_state, l2, cu_seqlens):
    """``scan``'s variable-length form off the kernel path: each sequence by ``chunk_torch`` alone."""
    cu = [int(x) for x in cu_seqlens.tolist()]
    n = len(cu) - 1
    expect(initial_state, "initial_state", (n, q.shape[2], q.shape[3], v.shape[-1]))
    outs, states = [], []
    for i in range(n):
        sl = slice(cu[i], cu[i + 1])
        o, S = chunk_torch(q[:, sl], k[:, sl], v[:, sl], g[:, sl], beta[:, sl], scale,
                           None if initial_state is None else initial_state[i:i + 1], True, l2)
        outs.append(o)
        states.append(S)
    return torch.cat(outs, 1), (torch.cat(states) if output_final_state else None)


def states(q, k, v, g, beta, scale=None, initial_state=None, use_qk_l2norm_in_kernel=False, positions=None,
           out_dtype=torch.float32, impl="auto"):
    """S_t, the state after writing token t: ``[B, T, H, K, V]`` (float32 unless ``out_dtype``),
    or ``[B, P, H, K, V]`` for a 1-D list/LongTensor of positions (only those are formed).

    impl: ``auto`` (CUDA with fla: ``triton``; otherwise ``torch``), ``triton`` (fla's chunk
    pieces h, d + the Triton state kernel), ``einsum`` (fla's pieces + the torch expansion),
    ``torch`` (the pure-torch chunked path, any device, differentiable)."""
    _prep(q, k, v, g, beta, scale, initial_state, False)  # checks only; q does not enter the states
    pos = norm_positions(positions, k.shape[1])
    if impl != "torch" and use_kernels(k):
        from hooks.scan import triton_states
        return triton_states.gdn_states(k, v, g, beta, initial_state, pos, out_dtype, impl, l2=use_qk_l2norm_in_kernel)
    torch_impl(impl)
    k = l2norm(k) if use_qk_l2norm_in_kernel else k
    _, _, h, d = _chunks(q, k, v, g, beta, 1.0, initial_state, keep=True)
    return expand_states(h, k, d, g, pos, out_dtype)


@contextlib.contextmanager
def kept_states(k, g, positions=None, out_dtype=torch.float32):
    """For CUDA tensors with fla: fla's chunked forward, called inside the block with log decays g
    ``[B, T, H]``, expands its per-token states (as ``states``) from the chunk pieces it computes
    (`triton_states.kept_gdn_pieces`), as soon as they exist, so capture runs no second chunk pass and
    the expansion overlaps the rest of the call's host work. Read the result with `states_from_kept`.
    Otherwise (pure-torch path) nothing is recorded."""
    if not use_kernels(k):
        yield []
        return
    from hooks.scan import triton_states
    pos = norm_positions(positions, g.shape[1])
    pos = None if pos is None else pos.to(k.device)  # copied now, not in the middle of the call

    def expand(k_, h, d):
        return triton_states.expand_kept([(k_, h, d)], g, pos, out_dtype)
    with triton_states.kept_gdn_pieces(expand) as got:
        yield got


def states_from_kept(got):
    """The states `kept_states` recorded for exactly one call, or None (nothing or more than one call
    recorded, or a call whose pieces cannot be expanded here, e.g. grouped value heads)."""
    return got[0] if len(got) == 1 else None


def readout(states_, q, scale=None):
    """o_t = S_t^T (scale q_t) for states [B, T, H, K, V] and q [B, T, H, K]."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.einsum("bthkv,bthk->bthv", states_, q.float() * scale)


class GDNFamily(Family):
    """Gated DeltaNet in the hook names: q, k (l2-normalised where the layer asks), v, decay = g, beta.
    ``run_scan`` / ``run_states`` are the module-level paths `scan` and `states` call (a subclass with the
    same view and other paths, e.g. `hooks.scan.kda`, sets its own)."""
    name = "gdn"
    run_scan, run_states = staticmethod(scan), staticmethod(states)
    writes = True

    def write_factors(self, c, S_prev):
        """(k_t, d_t): the delta-rule write d_t = beta_t (v_t - (a_t S_{t-1})^T k_t), k after its l2-norm."""
        k = work(materialize(c)["k"])
        dec = self.decayed(c, S_prev)
        pred = torch.einsum("...hkv,...hk->...hv", dec, k.to(dec.dtype))
        return k, work(c["beta"])[..., None] * (work(c["v"]) - pred)

    def canonical(self, kw, lazy_qk=False):
        """A view of a `scan` call; ``lazy_qk``: a layer that l2-normalises q, k in its kernel gets them
        raw, marked ``qk_l2``, and `hooks.scan.family.materialize` normalises them when first needed
        (capturing states from the layer's own call never needs them)."""
        q, k = kw["q"], kw["k"]
        l2 = bool(kw.get("use_qk_l2norm_in_kernel"))
        if l2 and not lazy_qk:
            q, k = l2norm(q).to(q.dtype), l2norm(k).to(k.dtype)
        c = self.view(q=q, k=k, v=kw["v"], decay=kw["g"], beta=kw["beta"], scale=kw.get("scale") or q.shape[-1] ** -0.5,
                      initial_state=kw.get("initial_state"))
        if l2 and lazy_qk:
            c["qk_l2"] = True
        return c

    def scan(self, c, initial_state=None):
        return self.run_scan(c["q"], c["k"], c["v"], c["decay"], c["beta"], scale=c["scale"],
                             initial_state=initial_state, output_final_state=True)

    def states(self, c, positions=None, out_dtype=torch.float32):
        return self.run_states(c["q"], c["k"], c["v"], c["decay"], c["beta"], scale=c["scale"],
                               initial_state=c["initial_state"], positions=positions, out_dtype=out_dtype)

    def call_with_states(self, call, kw, c, positions=None, out_dtype=torch.float32):
        """On fla's kernels the states are expanded from the chunk pieces that very call computed
        (`kept_states`), so capturing them costs no second chunk pass; the call's results are the same
        as without capture."""
        if kw.get("use_gate_in_kernel"):
            return super().call_with_states(call, kw, c, positions, out_dtype)
        with kept_states(c["k"], c["decay"], positions, out_dtype) as got:
            o, final = call(**kw)
        S = states_from_kept(got)
        if S is None:
            S = self.own_states(kw, materialize(c), positions, out_dtype)
        return o, final, S


FAMILY = GDNFamily()
