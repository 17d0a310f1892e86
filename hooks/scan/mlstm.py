"""mLSTM scan (xLSTM's matrix memory with its normaliser and max-state), in HF ``xlstm``'s exact stabilised form.

Per head, with f_t / i_t the forget / input gate pre-activations (after the layer's soft cap), the log forget
gate g_t = logsigmoid(f_t) and the log input gate i_t (the input gate is exp(i_t)); HF's
``mlstm_recurrent_step_native``::

    m_t = max(g_t + m_{t-1}, i_t)                                       max-state (stabiliser)
    f'_t = exp(g_t + m_{t-1} - m_t)      i'_t = exp(i_t - m_t)           stabilised gates, both <= 1
    C_t = f'_t C_{t-1} + i'_t k_t v_t^T                                  C: [K, V]  matrix memory
    n_t = f'_t n_{t-1} + i'_t k_t                                        n: [K]     normaliser
    h_t = C_t^T (scale q_t) / (max(|n_t . (scale q_t)|, exp(-m_t)) + eps)        scale = K^-0.5

(k is not scaled; eps is the config's ``eps``). C_t, n_t are the stabilised states, the ones HF keeps in its
cache (``xLSTMCache.rnn_state[layer] = (C, n, m)``, m ``[B, H, 1]``): the unstabilised memory of the xLSTM
paper, C_t = f_t C_{t-1} + i_t k_t v_t^T with f_t = sigmoid(f_t~), i_t = exp(i_t~), is exp(m_t) C_t (and
exp(m_t) n_t); unrolled, with seg(t, s) = sum_{s<j<=t} g_j (seg(t, -1): all of 0..t) and the initial state
(C_0, n_0, m_0) before token 0::

    m_t = max(seg(t, -1) + m_0, max_{s<=t} seg(t, s) + i_s)
    C_t = exp(seg(t, -1) + m_0 - m_t) C_0 + sum_{s<=t} exp(seg(t, s) + i_s - m_t) k_s v_s^T      (n_t: k_s for v)

Every exponent there is <= 0 (m_t is their maximum), which is how ``chunk_torch`` evaluates it: chunks of
`CHUNK` tokens, seg summed directly inside a chunk (`_common.segsum`), the chunk-start (C, n, m) carried
across chunks; the same chunkwise decomposition as HF's ``mlstm_chunkwise_*`` (whose inter-chunk max-state is
the same m_t). ``naive`` is HF's step loop. Shapes: q, k ``[B, T, H, K]``, v ``[B, T, H, V]``, g, i
``[B, T, H]``; states (C, n, m) ``[B, H, K, V]``, ``[B, H, K]``, ``[B, H, 1]`` (HF's layout).

In the hook names (``FAMILY``): rec.q / rec.k / rec.v as the layer forms them (before scaling), rec.decay =
g_t (log forget gate) ``[B, T, H]``, rec.beta = i_t (log input gate, the write strength is exp(i_t))
``[B, T, H]``, rec.state = the stabilised C_t ``[B, T, H, K, V]``, float32, as HF's cache holds it (its last
one equals the cache's C). n_t and m_t have no hook names: they are functions of k, decay and beta alone
(never of v or C), so `norm_states` gives them from a view. A patched rec.state replaces C_t and keeps n_t and
m_t (the recurrence continues from (C_t', n_t, m_t)); a C taken from another run is stabilised by that run's
m: to move the memory itself, rescale it by exp(m_src - m_dst) (`norm_states` of both views).

Effective attention (``rec.pattern`` ``[B, H, T(P), T]``, `pattern`): the normaliser does not depend on v,
so the readout is exactly linear in the values::

    h_t = sum_{s<=t} A[t, s] v_s + init_t
    A[t, s] = scale (q_t . k_s) exp(seg(t, s) + i_s - m_t) / d_t,      d_t = max(|n_t . scale q_t|, exp(-m_t)) + eps
    init_t  = exp(seg(t, -1) + m_0 - m_t) C_0^T (scale q_t) / d_t       (0 without an initial state)

(A is signed and its rows do not sum to 1.) O(B H T^2 K), as softmax attention.

GPU: the GPU path is this torch reference (CUDA tensors run it on the GPU): fla has no mLSTM op, and NX-AI's
Triton kernels (``mlstm-kernels``, which HF uses only with the external ``xlstm`` package) are no dependency
here. The model's own kernels (HF's chunkwise / sequence / step natives) run the
model; these functions give the states, re-run from changed inputs and continue from patched states.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from hooks.scan._common import CHUNK, expect, norm_positions, segsum, work
from hooks.scan.family import Family


def _check(q, k, v, g, i, initial_state):
    B, T, H, K = k.shape
    expect(q, "q", (B, T, H, K))
    expect(v, "v", (B, T, H, None))
    expect(g, "g", (B, T, H))
    expect(i, "i", (B, T, H))
    if initial_state is not None:
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 3:
            raise ValueError("initial_state is the triple (C [B, H, K, V], n [B, H, K], m [B, H, 1]) or None")
        C0, n0, m0 = initial_state
        expect(C0, "initial C", (B, H, K, v.shape[-1]))
        expect(n0, "initial n", (B, H, K))
        expect(m0, "initial m", (B, H, 1))


def _start(k, v, initial_state):
    """The initial (C, n, m [B, H]) in the working dtype (zeros without one, as HF)."""
    B, _, H, K = k.shape
    if initial_state is None:
        z = work(k).new_zeros
        return z(B, H, K, v.shape[-1]), z(B, H, K), z(B, H)
    C0, n0, m0 = initial_state   # in k's working dtype: a float32 (e.g. patched) state continues a float64 run
    dt = work(k).dtype
    return C0.to(dt), n0.to(dt), m0.to(dt)[..., 0]


def naive(q, k, v, g, i, scale=None, eps=1e-6, initial_state=None, output_final_state=False, **unused):
    """HF's step loop (``mlstm_recurrent_step_native``), in float32 (float64 stays float64). Returns
    (h ``[B, T, H, V]`` in v's dtype, final (C, n, m) or None)."""
    _check(q, k, v, g, i, initial_state)
    scale = k.shape[-1] ** -0.5 if scale is None else scale
    C, n, m = _start(k, v, initial_state)
    q, k, vf, g, i = work(q), work(k), work(v), work(g), work(i)
    out = []
    for t in range(k.shape[1]):
        m_new = torch.maximum(g[:, t] + m, i[:, t])
        fa, ia = torch.exp(g[:, t] + m - m_new), torch.exp(i[:, t] - m_new)
        C = fa[..., None, None] * C + ia[..., None, None] * (k[:, t, :, :, None] * vf[:, t, :, None, :])
        n = fa[..., None] * n + ia[..., None] * k[:, t]
        m = m_new
        qs = q[:, t] * scale
        den = torch.maximum((qs * n).sum(-1).abs(), torch.exp(-m)) + eps
        out.append(torch.einsum("bhk,bhkv->bhv", qs, C) / den[..., None])
    final = (C, n, m[..., None]) if output_final_state else None
    return torch.stack(out, 1).to(v.dtype), final


def _chunk_weights(gc, ic, m0):
    """One chunk (``[B, H, L]`` log gates, m0 ``[B, H]``) -> (W ``[B, H, L, L]`` = exp(seg(t, s) + i_s - m_t)
    (0 above the diagonal), a ``[B, H, L]`` = exp(seg(t, -1) + m0 - m_t), m ``[B, H, L]``)."""
    logw = segsum(gc) + ic[..., None, :]
    logstart = gc.cumsum(-1) + m0[..., None]
    m = torch.maximum(logstart, logw.max(-1).values)
    return torch.exp(logw - m[..., None]), torch.exp(logstart - m), m


def _chunks(q, k, v, g, i, scale, eps, initial_state, want=None):
    """Chunked forward in float32: (h ``[B, H, T, V]``, final (C, n, m ``[B, H]``), {chunk: (C0, n0, m0, W, a,
    m)} for the chunks in ``want`` (a set of chunk indices; None: none kept))."""
    tr = lambda x: work(x).transpose(1, 2)  # noqa: E731  [B, H, T, ...]
    q, k, v, g, i = tr(q) * scale, tr(k), tr(v), tr(g), tr(i)
    C, n, m = _start(k.transpose(1, 2), v.transpose(1, 2), initial_state)
    T = k.shape[2]
    hs, kept = [], {}
    for c, a0 in enumerate(range(0, T, CHUNK)):
        sl = slice(a0, min(a0 + CHUNK, T))
        qc, kc, vc = q[:, :, sl], k[:, :, sl], v[:, :, sl]
        W, a, mc = _chunk_weights(g[:, :, sl], i[:, :, sl], m)
        if want is not None and c in want:
            kept[c] = (C, n, m, W, a, mc)
        Wqk = W * (qc @ kc.transpose(-1, -2))
        num = a[..., None] * (qc @ C) + Wqk @ vc
        qn = a * (qc @ n[..., None])[..., 0] + Wqk.sum(-1)
        hs.append(num / (torch.maximum(qn.abs(), torch.exp(-mc)) + eps)[..., None])
        wl = W[:, :, -1]                                   # the chunk's last row: its end state
        C = a[..., -1, None, None] * C + torch.einsum("bhs,bhsk,bhsv->bhkv", wl, kc, vc)
        n = a[..., -1, None] * n + torch.einsum("bhs,bhsk->bhk", wl, kc)
        m = mc[..., -1]
    h = torch.cat(hs, 2) if hs else v.new_zeros(v.shape)
    return h, (C, n, m), kept


def chunk_torch(q, k, v, g, i, scale=None, eps=1e-6, initial_state=None, output_final_state=False, **unused):
    """Pure-torch chunked scan (any device, differentiable); the same result as ``naive``. Returns (h
    ``[B, T, H, V]`` in v's dtype, final (C, n, m ``[B, H, 1]``) or None)."""
    _check(q, k, v, g, i, initial_state)
    scale = k.shape[-1] ** -0.5 if scale is None else scale
    h, (C, n, m), _ = _chunks(q, k, v, g, i, scale, eps, initial_state)
    return h.transpose(1, 2).to(v.dtype), ((C, n, m[..., None]) if output_final_state else None)


def scan(q, k, v, igate, fgate=None, scale=None, eps=1e-6, initial_state=None, output_final_state=False, g=None,
         **unused):
    """The layer's kernel call in these names (HF's backend arguments, ``[B, T, H, ...]``): ``igate`` / ``fgate``
    the gate pre-activations; ``g`` (log forget gate), when given, replaces logsigmoid(fgate). ``chunk_torch``
    on any device (there is no GPU kernel for this form)."""
    g = F.logsigmoid(fgate) if g is None else g
    return chunk_torch(q, k, v, g, igate, scale, eps, initial_state, output_final_state)


def _per_token(q, k, v, g, i, initial_state, positions, what):
    """Per-token (C or (n, m)) at ``positions`` (None: all), from the chunk weights; see `states`."""
    T = k.shape[1]
    pos = torch.arange(T) if positions is None else positions.cpu()
    want = set((pos // CHUNK).tolist())
    _, _, kept = _chunks(q, k, v, g, i, 1.0, 0.0, initial_state, want)
    kt, vt = work(k).transpose(1, 2), work(v).transpose(1, 2)
    out = []
    for c in sorted(want):
        sel = pos[(pos // CHUNK) == c]
        j = (sel - c * CHUNK).to(k.device)
        C0, n0, m0, W, a, mc = kept[c]
        sl = slice(c * CHUNK, min((c + 1) * CHUNK, T))
        Wj, aj = W[:, :, j], a[:, :, j]                      # [B, H, P, L], [B, H, P]
        if what == "C":
            out.append((aj[..., None, None] * C0[:, :, None]
                        + torch.einsum("bhps,bhsk,bhsv->bhpkv", Wj, kt[:, :, sl], vt[:, :, sl])).transpose(1, 2))
        else:
            nn_ = aj[..., None] * n0[:, :, None] + torch.einsum("bhps,bhsk->bhpk", Wj, kt[:, :, sl])
            out.append((nn_.transpose(1, 2), mc[:, :, j].transpose(1, 2)))
    return out, pos


def _ungroup(pos):
    """The index that puts `_per_token`'s output (grouped by chunk, in the given order inside a chunk) back
    in the order of ``pos``."""
    return torch.argsort(torch.sort(pos // CHUNK, stable=True).indices)


def states(q, k, v, g, i, initial_state=None, positions=None, out_dtype=torch.float32, **unused):
    """The stabilised C_t after each token: ``[B, T, H, K, V]`` (float32 unless ``out_dtype``), or ``[B, P, H, K,
    V]`` for a 1-D list/LongTensor of positions (only those are formed). q does not enter."""
    _check(q, k, v, g, i, initial_state)
    pos = norm_positions(positions, k.shape[1])
    B, T, H, K = k.shape
    if pos is not None and pos.numel() == 0:
        return k.new_zeros(B, 0, H, K, v.shape[-1], dtype=out_dtype)
    out, p = _per_token(q, k, v, g, i, initial_state, pos, "C")
    S = torch.cat(out, 1)
    return S[:, _ungroup(p).to(S.device)].to(out_dtype)


def norm_states(q, k, v, g, i, initial_state=None, positions=None, **unused):
    """(n_t ``[B, T|P, H, K]``, m_t ``[B, T|P, H]``), the normaliser and max-state after each token (or at
    ``positions``), float32; functions of k, g, i (and the initial n, m) only."""
    _check(q, k, v, g, i, initial_state)
    pos = norm_positions(positions, k.shape[1])
    if pos is not None and pos.numel() == 0:
        B, _, H, K = k.shape
        return work(k).new_zeros(B, 0, H, K), work(k).new_zeros(B, 0, H)
    out, p = _per_token(q, k, v, g, i, initial_state, pos, "n")
    back = _ungroup(p)
    n, m = torch.cat([o[0] for o in out], 1), torch.cat([o[1] for o in out], 1)
    return n[:, back.to(n.device)], m[:, back.to(m.device)]


def readout(S, n, m, q, scale=None, eps=1e-6):
    """h_t from states: S ``[B, T, H, K, V]``, n ``[B, T, H, K]``, m ``[B, T, H]``, q ``[B, T, H, K]``."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qs = work(q) * scale
    den = torch.maximum((qs * n.to(qs.dtype)).sum(-1).abs(), torch.exp(-m.to(qs.dtype))) + eps   # q's working dtype
    return torch.einsum("bthk,bthkv->bthv", qs, S.to(qs.dtype)) / den[..., None]


def pattern(q, k, v, g, i, scale=None, eps=1e-6, initial_state=None, rows=None, heads=None, **unused):
    """Effective attention ``[B, H, T|P, T]`` (module docstring): h_t = sum_s A[:, t, s] v_s + init_t. ``rows``:
    only these query positions; ``heads``: only these heads."""
    B, T, H, K = k.shape
    scale = K ** -0.5 if scale is None else scale
    r = norm_positions(rows.cpu() if torch.is_tensor(rows) else rows, T)
    r = torch.arange(T) if r is None else r
    r = r.to(k.device)
    hd = None if heads is None else torch.as_tensor(heads, dtype=torch.long).flatten().to(k.device)
    pick = (lambda x: x) if hd is None else (lambda x: x.index_select(2, hd))  # noqa: E731
    n, m = norm_states(q, k, v, g, i, initial_state=initial_state, positions=r.cpu())    # [B, P, H, K], [B, P, H]
    qs = pick(work(q)).index_select(1, r) * scale                                         # [B, P, H', K]
    den = torch.maximum((qs * pick(n)).sum(-1).abs(), torch.exp(-pick(m))) + eps         # [B, P, H']
    gg, ii = pick(work(g)).transpose(1, 2), pick(work(i)).transpose(1, 2)                 # [B, H', T]
    s = torch.arange(T, device=k.device)
    mask = s[None, :] <= r[:, None]                                                      # [P, T]: s <= t
    # seg(t, s) = sum_{s<j<=t} g_j as suffix sums over j <= t (no differences of cumulative sums)
    incl = torch.where(mask, gg[:, :, None, :], 0).flip(-1).cumsum(-1).flip(-1)           # sum_{s<=j<=t}
    seg = torch.cat([incl[..., 1:], torch.zeros_like(incl[..., :1])], -1)               # sum_{s<j<=t}
    logw = torch.where(mask, seg + ii[:, :, None, :] - pick(m).transpose(1, 2)[..., None], -float("inf"))
    qk = torch.einsum("bphk,bshk->bhps", qs, pick(work(k)))
    return qk * logw.exp() / den.transpose(1, 2)[..., None]


class MLSTMFamily(Family):
    """The mLSTM in the hook names (module docstring): q, k, v, decay = log forget gate, beta = log input gate;
    rec.state = the stabilised matrix memory C_t; the view also holds ``eps`` and the initial state is the
    triple (C, n, m)."""
    name = "mlstm"
    inputs = ("q", "k", "v", "decay", "beta")

    def canonical(self, kw, lazy_qk=False):
        q = kw["q"]
        g = kw.get("g")
        g = F.logsigmoid(kw["fgate"]) if g is None else g
        return self.view(q=q, k=kw["k"], v=kw["v"], decay=g, beta=kw["igate"],
                         scale=kw.get("scale") or q.shape[-1] ** -0.5, eps=kw.get("eps", 1e-6),
                         initial_state=kw.get("initial_state"))

    @staticmethod
    def _args(c):
        return dict(q=c["q"], k=c["k"], v=c["v"], g=c["decay"], i=c["beta"], scale=c["scale"], eps=c["eps"])

    def scan(self, c, initial_state=None):
        """(readout ``[B, T, H, V]``, final (C, n, m))."""
        return chunk_torch(**self._args(c), initial_state=initial_state, output_final_state=True)

    def states(self, c, positions=None, out_dtype=torch.float32):
        return states(**self._args(c), initial_state=c["initial_state"], positions=positions, out_dtype=out_dtype)

    def norm_states(self, c, positions=None):
        """(n_t, m_t) of a view (`norm_states`)."""
        return norm_states(**self._args(c), initial_state=c["initial_state"], positions=positions)

    def pattern(self, c, rows=None, heads=None):
        """`pattern` of a view, for `hooks.effective.pattern`."""
        return pattern(**self._args(c), initial_state=c["initial_state"], rows=rows, heads=heads)

    def readout_at(self, c, S, t, n=None, m=None):
        """h_t from C_t = S ``[B, H, K, V]`` and (n_t, m_t) (those of the view when not given)."""
        if n is None:
            n, m = self.norm_states(c, positions=[t])
            n, m = n[:, 0], m[:, 0]
        return readout(S[:, None], n[:, None], m[:, None], c["q"][:, t:t + 1], c["scale"], c["eps"])[:, 0]

    def continue_from(self, c, o, patched, S_all=None, rows=None):
        """As `Family.continue_from`, the state being C_t: from a patched C_t the recurrence continues with
        the n_t and m_t of the view (they do not depend on C). Returns (o, final (C, n, m), states or None)."""
        o, S_orig = o.clone(), S_all
        S_all = None if S_all is None else S_all.clone()
        if rows is not None and S_orig is None:
            raise ValueError("continue_from with rows= needs S_all, the unpatched states")
        n_all, m_all = self.norm_states(c)
        T, ts, run = o.shape[1], sorted(patched), None
        for j, t in enumerate(ts):
            S = work(patched[t])
            if rows is not None and not bool(rows[t].all()):
                here = work(S_orig[:, t]) if run is None else self.scan(c.sliced(t, t + 1), initial_state=run)[1][0]
                S = torch.where(rows[t].view(-1, 1, 1, 1), S, here)
            n, m = n_all[:, t], m_all[:, t]
            o[:, t] = self.readout_at(c, S, t, n, m).to(o.dtype)
            end = ts[j + 1] if j + 1 < len(ts) else T
            final = (S, n, m[..., None])
            if S_all is not None:
                S_all[:, t] = S
            if t + 1 < end:
                seg = c.sliced(t + 1, end, initial_state=final)
                o_seg, final = self.scan(seg, initial_state=final)
                o[:, t + 1:end] = o_seg.to(o.dtype)
                if S_all is not None:
                    S_all[:, t + 1:end] = self.states(seg, out_dtype=S_all.dtype)
            run = final
        return o, final, S_all


FAMILY = MLSTMFamily()
