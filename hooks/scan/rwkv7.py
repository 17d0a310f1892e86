"""RWKV-7's generalised delta rule (fla's ``chunk_rwkv7`` / ``fused_mul_recurrent_rwkv7``, i.e. fla's
diagonal-plus-low-rank ``dplr`` delta rule): a state transition that is a diagonal decay plus a rank-1 term.

In our ``[K, V]`` state layout (fla's: its kernels keep ``h`` ``[K, V]`` per head), per head::

    S_t = diag(exp(w_t)) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T      S: [K, V], float32
        = M_t S_{t-1} + k_t v_t^T,        M_t = diag(exp(w_t)) + b_t a_t^T
    o_t = S_t^T (scale q_t)                                               q = r, the receptance

which is RWKV-7's ``S_t = S_{t-1} (diag(w_t) + a_t b_t^T) + v_t k_t^T`` in its ``[V, K]`` layout (transposed),
with w_t there = exp(w_t) here. Both terms of the transition act on S_{t-1}, before the write k_t v_t^T: the
order of fla's ``dplr_recurrence`` (fla/ops/generalized_delta_rule/dplr/naive.py) and of its fused kernels
(``b_h = exp(w) b_h + b (a^T b_h); b_h += k v^T``). fla's RWKV7Attention passes ``a = -kk``, ``b = kk (.) alpha``
(kk: the l2-normalised "removal key" k (.) k_k per head, alpha = sigmoid(a_lora), the in-context learning rate),
so M_t = diag(exp(w_t)) - (kk_t (.) alpha_t) kk_t^T; w_t = -exp(-1/2) sigmoid(w_lora) (log decay per key dim,
in (-0.607, 0)); scale = 1. ``fused_mul_recurrent_rwkv7``'s (kk, alpha) are turned into (a, b) by the adapter.

Shapes: q, k, w, a, b ``[B, T, H, K]``, v ``[B, T, H, V]``, state ``[B, H, K, V]``.

Paths: ``naive`` is the step loop (float32; float64 inputs stay float64, differentiable); ``scan`` and ``states``
run it on every device (no chunked form here: fla's chunk kernel gives no per-token states, and hooks call ``scan``
only on changed inputs or continued states; the layer's own calls run fla's kernels). ``pattern`` is the exact
effective attention (readout_t = sum_s A[t, s] v_s + scale q_t^T M_t .. M_0 S_{-1}):

    A[t, s] = scale q_t^T M_t M_{t-1} .. M_{s+1} k_s     (s <= t)

``FAMILY`` is this family for `hooks`: view ``{q, k, v, decay = w, a, b, scale, initial_state}``, hook names
``rec.q / k / v / decay / a / b / state / readout / pattern / write_k / write_v`` (write_k = k, write_v = v:
S_t = M_t S_{t-1} + write_k_t write_v_t^T).
"""
from __future__ import annotations

import torch

from hooks.scan._common import expect, norm_positions, work
from hooks.scan.family import Family, View


def _check(q, k, v, w, a, b, initial_state):
    B, T, H, K = k.shape
    for t, n in ((q, "q"), (w, "w (log decay per key dim)"), (a, "a"), (b, "b")):
        expect(t, n, (B, T, H, K))
    expect(v, "v", (B, T, H, None))
    expect(initial_state, "initial_state", (B, H, K, v.shape[-1]))


def step(S, w, a, b, k, v):
    """One transition of states ``S`` ``[..., K, V]``: exp(w) S + b (a^T S) + k v^T (inputs ``[..., K]`` / ``[..., V]``,
    in S's dtype)."""
    S2 = w.exp()[..., None] * S + b[..., None] * torch.einsum("...k,...kv->...v", a, S)[..., None, :]
    return S2 + k[..., None] * v[..., None, :]


def _loop(q, k, v, w, a, b, scale, initial_state, want_o, positions, out_dtype):
    B, T, H, K = k.shape
    V = v.shape[-1]
    q, k, v, w, a, b = (work(x) for x in (q, k, v, w, a, b))
    S = work(initial_state) if initial_state is not None else k.new_zeros(B, H, K, V)
    o = k.new_empty(B, T, H, V) if want_o else None
    out = None if positions is None else k.new_empty(B, positions.numel(), H, K, V, dtype=out_dtype)
    where = {}
    for i, p in enumerate([] if positions is None else positions.tolist()):
        where.setdefault(int(p), []).append(i)
    for t in range(T):
        S = step(S, w[:, t], a[:, t], b[:, t], k[:, t], v[:, t])
        if want_o:
            o[:, t] = torch.einsum("bhkv,bhk->bhv", S, q[:, t] * scale)
        if t in where:
            out[:, where[t]] = S.to(out_dtype)[:, None]
    return o, S, out


def naive(q, k, v, w, a, b, scale=1.0, initial_state=None, output_final_state=False, **unused):
    """The step loop. Returns (o ``[B, T, H, V]`` in v's dtype, S_T ``[B, H, K, V]`` (float32) or None).
    ``scale`` None: 1 (RWKV-7's)."""
    _check(q, k, v, w, a, b, initial_state)
    scale = 1.0 if scale is None else scale
    o, S, _ = _loop(q, k, v, w, a, b, scale, initial_state, True, None, torch.float32)
    return o.to(v.dtype), (S if output_final_state else None)


def scan(q, k, v, w, a, b, scale=1.0, initial_state=None, output_final_state=False, **unused):
    """``naive`` on every device (module docstring)."""
    return naive(q, k, v, w, a, b, scale, initial_state, output_final_state)


def states(q, k, v, w, a, b, scale=1.0, initial_state=None, positions=None, out_dtype=torch.float32, **unused):
    """S_t after token t: ``[B, T, H, K, V]`` (float32 unless ``out_dtype``), or ``[B, P, H, K, V]`` for a 1-D
    list / LongTensor of positions. q and scale do not enter."""
    _check(q, k, v, w, a, b, initial_state)
    pos = norm_positions(positions, k.shape[1])
    pos = torch.arange(k.shape[1]) if pos is None else pos
    return _loop(q, k, v, w, a, b, 1.0, initial_state, False, pos, out_dtype)[2]


def pattern(q, k, w, a, b, scale=1.0, rows=None, heads=None):
    """Effective attention ``[B, H', T|P, T]`` (module docstring), float32 (float64 inputs: float64): the
    columns X[:, s] = M_t .. M_{s+1} k_s carried forward one token at a time. ``rows``: only these query
    positions; ``heads``: only these heads."""
    T = k.shape[1]
    pick = (lambda x: x) if heads is None else (  # noqa: E731
        lambda x: x.index_select(2, torch.as_tensor(heads, dtype=torch.long, device=x.device).flatten()))
    q, k, w, a, b = (pick(work(x)).transpose(1, 2) for x in (q, k, w, a, b))   # [B, H', T, K]
    rr = norm_positions(rows.cpu() if torch.is_tensor(rows) else rows, T)
    rr = torch.arange(T) if rr is None else rr
    want = {}
    for i, p in enumerate(rr.tolist()):
        want.setdefault(int(p), []).append(i)
    X = k.new_zeros(*k.shape[:2], k.shape[-1], T)                               # [B, H', K, T]
    A = k.new_zeros(*k.shape[:2], rr.numel(), T)
    for t in range(T):
        X = w[:, :, t].exp()[..., None] * X + b[:, :, t, :, None] * torch.einsum("bhk,bhks->bhs", a[:, :, t], X)[
            :, :, None]
        X[..., t] = k[:, :, t]
        if t in want:
            A[:, :, want[t]] = torch.einsum("bhk,bhks->bhs", q[:, :, t] * scale, X)[:, :, None]
    return A


class RWKV7View(View):
    """A view whose per-token entries include a and b (sliced with q, k, v, decay)."""

    def sliced(self, i: int, j: int, initial_state=None) -> "RWKV7View":
        out = super().sliced(i, j, initial_state)
        out["a"], out["b"] = self["a"][:, i:j], self["b"][:, i:j]
        return out


class RWKV7Family(Family):
    """RWKV-7 in the hook names (module docstring): q = r, k, v, decay = w ``[B, T, H, K]`` (per key dim), a, b
    ``[B, T, H, K]`` (the rank-1 part of the transition), no beta; states ``[B, T, H, K, V]``."""
    name = "rwkv7"
    inputs = ("q", "k", "v", "decay", "a", "b")
    writes = True

    def view(self, **entries) -> RWKV7View:
        return RWKV7View(self, entries)

    def canonical(self, kw, lazy_qk=False):
        scale = kw.get("scale")
        return self.view(q=kw["q"], k=kw["k"], v=kw["v"], decay=kw["w"], a=kw["a"], b=kw["b"],
                         scale=1.0 if scale is None else scale, initial_state=kw.get("initial_state"))

    @staticmethod
    def _args(c):
        return dict(q=c["q"], k=c["k"], v=c["v"], w=c["decay"], a=c["a"], b=c["b"], scale=c["scale"])

    def scan(self, c, initial_state=None):
        return scan(**self._args(c), initial_state=initial_state, output_final_state=True)

    def states(self, c, positions=None, out_dtype=torch.float32):
        return states(**self._args(c), initial_state=c["initial_state"], positions=positions, out_dtype=out_dtype)

    def decayed(self, c, S_prev):
        """M_t S_{t-1} = exp(w_t) S_{t-1} + b_t (a_t^T S_{t-1}) for every t (``S_prev`` ``[B, T, H, K, V]``)."""
        S = work(S_prev)
        ab = torch.einsum("bthk,bthkv->bthv", work(c["a"]).to(S.dtype), S)
        return work(c["decay"]).exp()[..., None] * S + work(c["b"])[..., None] * ab[..., None, :]

    def pattern(self, c, rows=None, heads=None):
        """`pattern` of a view, for `hooks.effective.pattern`."""
        return pattern(c["q"], c["k"], c["decay"], c["a"], c["b"], c["scale"], rows=rows, heads=heads)


FAMILY = RWKV7Family()
