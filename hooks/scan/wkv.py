"""RWKV-4's WKV recurrence (HF ``rwkv``'s time mix) in the hook names: per channel, a decayed sum of keyed values.

Per channel d (D = ``attention_hidden_size``), with w = -exp(time_decay) (the log decay, negative,
constant in time in the model) and u = time_first (the bonus of the current token)::

    num_t = e^{w} num_{t-1} + e^{k_t} v_t          den_t = e^{w} den_{t-1} + e^{k_t}
    wkv_t = (num_{t-1} + e^{u + k_t} v_t) / (den_{t-1} + e^{u + k_t})
    o_t   = q_t (.) wkv_t                         q = sigmoid(receptance), the output gate

which is HF's ``rwkv_linear_attention_cpu`` exactly (checked against its code: wkv_t reads the state
*before* token t plus the current token with its bonus u; the state after token t takes k_t without it).
The layer returns ``output(q (.) wkv)``. HF computes it with a running max m (its cache keeps the triple
(num', den', m) with num = num' e^m, den = den' e^m): ``naive`` / ``scan`` / ``states`` run that same
stable step loop, op for op, so the final triple equals HF's bit for bit (a per-token ``w`` [B, T, D],
a hooked decay, is used where it is given). There is no GPU kernel here: HF's CUDA kernel is a custom
extension that gives no per-token states; this path is a T-step torch loop of elementwise ops on
``[B, D]`` (any device, differentiable).

State layout. ``rec.state`` is ``[B, T(P), D, 2]``: the pair (num_t, den_t) after token t in its real
scale (num' e^m, den' e^m), float32, not HF's triple. The pair is the state of a linear recurrence
(S_t = e^{w} S_{t-1} + e^{k_t} (v_t, 1)), so a patched, interpolated, averaged or added-to state means
what it says and wkv is a function of it alone; the triple is one of many representations of one state
(any shift of m with num', den' scaled to match), so triples of two runs cannot be mixed. The cost:
the pair leaves float32's range where e^{k} does (keys above ~ 88; float16 states: above ~ 11), where it
is written out as inf or nan; the scans themselves never form it (they carry the triple and form a pair only
where a state is written out), so the readouts stay finite wherever HF's do.
Initial states are accepted as a pair ``[B, D, 2]`` or as HF's triple ``[B, D, 3]`` (decoding from HF's
cache, continued exactly). A hook that changes S_t changes this layer's readouts from t + 1 on (wkv_t
reads S_{t-1}), so ``continue_from`` is this family's own.

Effective attention (``rec.pattern``, one per channel, ``[B, D, T(P), T]``): wkv is a normalised
attention over the values, exactly (a per-channel softmax with logits)::

    L[t, s] = k_s + sum_{s<r<t} w_r   (s < t),   L[t, t] = u + k_t,   -inf for s > t
    A[d, t, s] = q_t[d] e^{L[t, s]} / (sum_{s'<=t} e^{L[t, s']} + den_{-1} e^{sum_{r<t} w_r})
    readout_t[d] = sum_s A[d, t, s] v_s[d]  (+ q_t num_{-1} e^{sum_{r<t} w_r} / (same denominator))

Only ``pattern`` is provided (no contributions / init / skip terms in `hooks.effective`).
"""
from __future__ import annotations

import torch

from hooks.scan._common import expect, norm_positions, work
from hooks.scan.family import Family

NO_STATE = -1e38  # HF's running max before the first token (num' = den' = 0)


def _check(k, v, w, u, r, initial_state):
    if k.dim() != 3:
        raise ValueError(f"k has shape {list(k.shape)}, expected [B, T, D]")
    B, T, D = k.shape
    expect(v, "v", (B, T, D))
    expect(r, "r", (B, T, D))
    expect(u, "u", (D,))
    if w.dim() != 1:
        expect(w, "w", (B, T, D))
    else:
        expect(w, "w", (D,))
    if initial_state is not None and (initial_state.dim() != 3 or tuple(initial_state.shape[:2]) != (B, D)
                                      or initial_state.shape[2] not in (2, 3)):
        raise ValueError(f"initial_state has shape {list(initial_state.shape)}, expected [{B}, {D}, 2] (num, den) "
                         f"or [{B}, {D}, 3] (HF's num', den', max)")


def triple(initial_state, like):
    """(num', den', m) float32 ``[B, D]`` each of an initial state: None -> HF's empty state (0, 0, -1e38);
    a triple ``[B, D, 3]`` as it is; a pair ``[B, D, 2]`` -> (num, den, 0)."""
    if initial_state is None:
        z = torch.zeros_like(like, dtype=torch.float32)
        return z, z.clone(), torch.full_like(z, NO_STATE)
    s = work(initial_state)
    if s.shape[-1] == 3:
        return s[..., 0], s[..., 1], s[..., 2]
    return s[..., 0], s[..., 1], torch.zeros_like(s[..., 0])


def pair(num, den, m):
    """The real state ``[..., 2]`` (num' e^m, den' e^m) of a stable triple."""
    e = m.exp()
    return torch.stack([num * e, den * e], -1)


def to_triple(S):
    """A state as HF's cache triple ``[B, D, 3]``: a triple as it is, a pair (num, den) as (num, den, 0)."""
    if S.shape[-1] == 3:
        return S
    return torch.cat([S, torch.zeros_like(S[..., :1])], -1)


def _loop(k, v, w, u, r, initial_state, want_o, positions, out_dtype):
    """HF's stable step loop. Returns (o [B, T, D] in k's dtype or None, final triple [B, D, 3], states
    [B, P, D, 2] at ``positions`` (a LongTensor, or None for none))."""
    B, T, D = k.shape
    num, den, mx = triple(initial_state, k[:, 0] if T else k.new_zeros(B, D))
    per_token = w.dim() == 3
    wf = w if per_token else work(w)
    o = torch.zeros_like(k) if want_o else None
    want = {}  # position -> the indices of `positions` that ask for it
    for i, p in enumerate([] if positions is None else positions.tolist()):
        want.setdefault(int(p), []).append(i)
    S = None if positions is None else k.new_empty(B, positions.numel(), D, 2, dtype=out_dtype)
    for t in range(T):
        kt, vt = work(k[:, t]), v[:, t]
        wt = work(wf[:, t]) if per_token else wf
        if want_o:
            m_o = torch.maximum(mx, kt + u)
            e1, e2 = torch.exp(mx - m_o), torch.exp(kt + u - m_o)
            o[:, t] = ((e1 * num + e2 * vt) / (e1 * den + e2)).to(o.dtype)
        m_s = torch.maximum(mx + wt, kt)
        e1, e2 = torch.exp(mx + wt - m_s), torch.exp(kt - m_s)
        num, den, mx = e1 * num + e2 * vt, e1 * den + e2, m_s
        if t in want:
            S[:, want[t]] = pair(num, den, mx).to(out_dtype)[:, None]
    if o is not None and r is not None:
        o = r * o
    return o, torch.stack([num, den, mx], -1), S


def naive(k, v, w, u, r=None, initial_state=None, output_final_state=False, **unused):
    """The step loop (HF's ops, in float32; float64 inputs stay float64). k, v ``[B, T, D]``; w the log
    decay ``[D]`` or ``[B, T, D]``; u ``[D]``; r ``[B, T, D]`` the output gate (None: o = wkv).
    Returns (o ``[B, T, D]`` in k's dtype, final state (num, den) ``[B, D, 2]`` or None)."""
    _check(k, v, w, u, r, initial_state)
    o, fin, _ = _loop(k, v, w, work(u), r, initial_state, True, None, torch.float32)
    return o, (pair(*fin.unbind(-1)) if output_final_state else None)


def scan(k, v, w, u, r=None, initial_state=None, output_final_state=False, **unused):
    """``naive`` on every device (module docstring: no kernel)."""
    return naive(k, v, w, u, r, initial_state, output_final_state)


def states(k, v, w, u, initial_state=None, positions=None, out_dtype=torch.float32, **unused):
    """(num_t, den_t) after each token: ``[B, T, D, 2]`` (float32 unless ``out_dtype``), or ``[B, P, D, 2]``
    for a 1-D list / LongTensor of positions."""
    _check(k, v, w, u, None, initial_state)
    pos = norm_positions(positions, k.shape[1])
    pos = torch.arange(k.shape[1]) if pos is None else pos
    return _loop(k, v, w, work(u), None, initial_state, False, pos, out_dtype)[2]


def pattern(k, w, u, r=None, initial_state=None, rows=None, channels=None, **unused):
    """Effective attention ``[B, D, T|P, T]`` (module docstring; r None: the pattern of wkv itself).
    ``rows``: only these query positions; ``channels``: only these channels."""
    B, T, D = k.shape
    ch = None if channels is None else torch.as_tensor(channels, dtype=torch.long).flatten().to(k.device)
    pick = (lambda t, dim: t) if ch is None else (lambda t, dim: t.index_select(dim, ch))  # noqa: E731
    rr = norm_positions(rows.cpu() if torch.is_tensor(rows) else rows, T)
    rr = (torch.arange(T) if rr is None else rr).to(k.device)
    kk = pick(work(k), 2).transpose(1, 2)                                  # [B, D', T]
    ww = pick(work(w.expand(B, T, D) if w.dim() == 1 else w), 2).transpose(1, 2)
    src = torch.arange(T, device=k.device)
    before = src[None, :] < rr[:, None]                                   # [P, T]: r < t
    # suffix sums over r in [s, t-1]: incl[s] = sum_{s<=r<t} w_r; excl[s] = sum_{s<r<t} w_r
    incl = torch.where(before, ww[:, :, None, :], 0).flip(-1).cumsum(-1).flip(-1)    # [B, D', P, T]
    excl = torch.cat([incl[..., 1:], torch.zeros_like(incl[..., :1])], -1)
    L = torch.where(before, excl + kk[:, :, None, :], -float("inf"))
    diag = src[None, :] == rr[:, None]
    L = torch.where(diag, (kk + pick(work(u), 0)[None, :, None])[:, :, None, :], L)
    M = L.amax(-1)                                                        # [B, D', P]
    extra = 0.0
    if initial_state is not None:
        n0, d0, m0 = (pick(x, 1)[:, :, None] for x in triple(initial_state, k[:, 0]))
        lead = incl[..., 0] + m0                                          # sum_{r<t} w_r + m, [B, D', P]
        M = torch.maximum(M, lead)
        extra = d0 * (lead - M).exp()
    E = (L - M[..., None]).exp()
    A = E / (E.sum(-1) + extra)[..., None]
    if r is not None:
        A = A * pick(work(r), 2).transpose(1, 2).index_select(2, rr)[..., None]
    return A


class WKVFamily(Family):
    """RWKV-4's WKV in the hook names (module docstring): q = sigmoid(receptance) (the output gate),
    k, v ``[B, T, D]``, decay = w ``[B, T, D]`` (the channel's -exp(time_decay) at every token), no beta;
    the view also holds the bonus ``u`` (time_first, ``[D]``); states ``[B, T, D, 2]`` = (num, den)."""
    name = "wkv"
    inputs = ("q", "k", "v", "decay")

    def canonical(self, kw, lazy_qk=False):
        k, w = kw["k"], kw["w"]
        if w.dim() == 1:
            w = w.expand(*k.shape).contiguous()  # a tensor of its own: hook functions may write into it
        return self.view(q=kw.get("r"), k=k, v=kw["v"], decay=w, u=kw["u"], scale=1.0,
                         initial_state=kw.get("initial_state"))

    @staticmethod
    def _args(c):
        return dict(k=c["k"], v=c["v"], w=c["decay"], u=c["u"])

    def scan(self, c, initial_state=None):
        """(readout ``[B, T, D]``, final state (num, den) ``[B, D, 2]``)."""
        return scan(**self._args(c), r=c.get("q"), initial_state=initial_state, output_final_state=True)

    def states(self, c, positions=None, out_dtype=torch.float32):
        return states(**self._args(c), initial_state=c["initial_state"], positions=positions, out_dtype=out_dtype)

    def readout_at(self, c, S, t):
        raise NotImplementedError("wkv_t reads the state before token t (S_{t-1}) and token t itself, not S_t; "
                                  "the WKV family continues from a patched state with its own continue_from")

    def pattern(self, c, rows=None, heads=None):
        """`pattern` of a view (``heads``: channels), for `hooks.effective.pattern`."""
        return pattern(c["k"], c["decay"], c["u"], r=c.get("q"), initial_state=c["initial_state"], rows=rows,
                       channels=heads)

    def continue_from(self, c, o, patched, S_all=None, rows=None):
        """As `Family.continue_from` (S_t := patched[t], later readouts and states follow; ``rows``: the
        batch rows replaced at t), except that a patched S_t changes the readouts from t + 1 on: wkv_t was
        read from S_{t-1}."""
        o = o.clone()
        S_orig, T = S_all, o.shape[1]
        S_all = None if S_all is None else S_all.clone()
        if rows is not None and S_orig is None:
            raise ValueError("continue_from with rows= needs S_all, the unpatched states")
        ts = sorted(patched)
        run = None  # the patched run's state after position t - 1 (None before the first patch)
        final = None
        for j, t in enumerate(ts):
            S = work(patched[t])
            if rows is not None and not bool(rows[t].all()):
                here = (work(S_orig[:, t]) if run is None
                        else work(self.scan(c.sliced(t, t + 1), initial_state=run)[1]))
                S = torch.where(rows[t].view(-1, *[1] * (S.dim() - 1)), S, here)
            end = ts[j + 1] if j + 1 < len(ts) else T   # the next patched state overrides from there
            final = S
            if S_all is not None:
                S_all[:, t] = S
            if t + 1 < end:   # states t + 1 .. end - 1 and their readouts follow S_t
                seg = c.sliced(t + 1, end, initial_state=S)
                o_seg, final = self.scan(seg, initial_state=S)
                o[:, t + 1:end] = o_seg.to(o.dtype)
                if S_all is not None:
                    S_all[:, t + 1:end] = self.states(seg, out_dtype=S_all.dtype)
            if end < T:       # readout `end` reads S_{end-1} (this run's), not the S_end patched next
                o[:, end] = self.scan(c.sliced(end, end + 1), initial_state=final)[0][:, 0].to(o.dtype)
            run = work(final)
        return o, final, S_all


FAMILY = WKVFamily()
