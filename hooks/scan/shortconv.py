"""Gated short convolution (LFM2's ``conv`` layers) in the hook names: its state is the window of the last L writes.

Per channel d (D = hidden size, L = the kernel length, HF's ``conv_L_cache``)::

    u_t       = B_t (.) x_t                                     the write (k (.) v)
    S_t[d, j] = u_{t-L+1+j}[d],  j = 0..L-1                     the window after token t, oldest first
              (S_t = shift(S_{t-1}) with u_t appended; entries before the sequence come from S_{-1},
               the initial window, zeros without one)
    y_t[d]    = C_t[d] (sum_j w[d, j] S_t[d, j] + bias[d])      the readout, before out_proj

which is HF's ``y = C * causal_conv1d(B * x)`` exactly: ``S_t`` is the conv cache HF keeps after token t
(``cache.get_conv_state(layer)``, ``[B, D, L]``, newest entry last). In the hook names q = C, k = B,
v = x (as Mamba1: q = C, k = B, v = x), all ``[B, T, D]``; ``rec.state`` is ``[B, T(P), D, L]``, float32
(the writes B (.) x are formed in the layer's dtype first, as HF does, so the states equal its cache
bit for bit); ``rec.readout`` ``[B, T, D]`` is ``C (.) conv`` before ``out_proj``. There is no decay
and no beta: the state is finite-memory, so a changed S_t changes the readouts at t .. t+L-1 and no
later one of this layer (`hooks.scan.family.Family.continue_from` works unchanged: S_t is the whole
state, and the window from t on is rebuilt from it).

Effective attention (``rec.pattern``, one per channel, ``[B, D, T(P), T]``)::

    y_t[d] = sum_s A[d, t, s] x_s[d] + init_t[d] + C_t[d] bias[d]
    A[d, t, s] = C_t[d] w[d, L-1-(t-s)] B_s[d]   for 0 <= t-s <= L-1, else 0
    init_t[d]  = C_t[d] sum_{j < L-1-t} w[d, j] S_{-1}[d, j+t+1]

Everything is pure torch, O(B T D L): there is no GPU kernel and none is needed (the layer's own
``causal_conv1d`` runs the model; these functions give its states, re-run it from changed inputs and
continue from patched windows).
"""
from __future__ import annotations

import torch

from hooks.scan._common import expect, norm_positions, work
from hooks.scan.family import Family


def _check(x, B, C, weight, bias, initial_state):
    if x.dim() != 3:
        raise ValueError(f"x has shape {list(x.shape)}, expected [B, T, D]")
    b, T, D = x.shape
    expect(B, "B", (b, T, D))
    expect(C, "C", (b, T, D))
    expect(weight, "weight", (D, None))
    if bias is not None:
        expect(bias, "bias", (D,))
    expect(initial_state, "initial_state", (b, D, weight.shape[1]))


def writes(x, B):
    """u = B (.) x in the layer's dtype (HF's rounding), then in the working dtype: ``[B, T, D]``."""
    return work(B * x)


def windows(u, L: int, initial_state=None):
    """Every window ``[B, T+1, D, L]``: entry 0 is S_{-1} (``initial_state`` or zeros), entry t+1 is S_t."""
    b, T, D = u.shape
    S0 = u.new_zeros(b, D, L) if initial_state is None else work(initial_state).to(u.dtype)
    padded = torch.cat([S0.transpose(1, 2), u], 1)            # [B, L + T, D], oldest first
    return padded.unfold(1, L, 1)                             # [B, T + 1, D, L]


def read(S, C, weight, bias=None):
    """y = C (.) (sum_j w[:, j] S[..., j] + bias) for windows S ``[..., D, L]`` and gates C ``[..., D]``."""
    y = (S * work(weight).to(S.dtype)).sum(-1)
    if bias is not None:
        y = y + work(bias).to(S.dtype)
    return work(C).to(S.dtype) * y


def naive(x, B, C, weight, bias=None, initial_state=None, output_final_state=False, **unused):
    """Step loop: S_t = shift(S_{t-1}) + u_t appended, y_t = read(S_t). Returns (y [B, T, D] in x's dtype,
    S_T [B, D, L] float32 or None)."""
    _check(x, B, C, weight, bias, initial_state)
    b, T, D = x.shape
    L = weight.shape[1]
    S = x.new_zeros(b, D, L, dtype=torch.float32) if initial_state is None else work(initial_state)
    ys = []
    for t in range(T):
        S = torch.cat([S[..., 1:], writes(x[:, t], B[:, t])[..., None]], -1)
        ys.append(read(S, C[:, t], weight, bias))
    y = torch.stack(ys, 1) if ys else x.new_zeros(b, 0, D, dtype=torch.float32)
    return y.to(x.dtype), (S if output_final_state else None)


def scan(x, B, C, weight, bias=None, initial_state=None, output_final_state=False, **unused):
    """All windows at once (`windows`), any device. Same result as ``naive``."""
    _check(x, B, C, weight, bias, initial_state)
    W = windows(writes(x, B), weight.shape[1], initial_state)
    y = read(W[:, 1:], C, weight, bias)
    final = W[:, -1].contiguous() if output_final_state else None
    return y.to(x.dtype), final


def states(x, B, C, weight, bias=None, initial_state=None, positions=None, out_dtype=torch.float32, **unused):
    """S_t after each token: ``[B, T, D, L]`` (float32 unless ``out_dtype``), or ``[B, P, D, L]`` for a
    1-D list / LongTensor of positions."""
    _check(x, B, C, weight, bias, initial_state)
    W = windows(writes(x, B), weight.shape[1], initial_state)[:, 1:]
    pos = norm_positions(positions, x.shape[1])
    if pos is not None:
        W = W.index_select(1, pos.to(W.device))
    return W.to(out_dtype).contiguous()


def pattern(x, B, C, weight, bias=None, initial_state=None, rows=None, channels=None, **unused):
    """Effective attention ``[B, D, T|P, T]`` (module docstring): y_t = sum_s A[:, t, s] x_s + init_t
    + C_t bias. ``rows``: only these query positions; ``channels``: only these channels."""
    _check(x, B, C, weight, bias, initial_state)
    b, T, D = x.shape
    L = weight.shape[1]
    ch = None if channels is None else torch.as_tensor(channels, dtype=torch.long).flatten().to(x.device)
    pick = (lambda t, dim: t) if ch is None else (lambda t, dim: t.index_select(dim, ch))  # noqa: E731
    r = norm_positions(rows.cpu() if torch.is_tensor(rows) else rows, T)
    r = torch.arange(T) if r is None else r
    r = r.to(x.device)
    lag = r[:, None] - torch.arange(T, device=x.device)[None, :]          # [P, T]: t - s
    band = (lag >= 0) & (lag < L)
    w = pick(work(weight), 0)                                             # [D', L]
    taps = w[:, (L - 1 - lag.clamp(0, L - 1))]                           # [D', P, T]: w[d, L-1-(t-s)]
    Cq = pick(work(C), 2).index_select(1, r).transpose(1, 2)             # [B, D', P]
    Bk = pick(work(B), 2).transpose(1, 2)                                 # [B, D', T]
    return Cq[..., None] * (taps * band)[None] * Bk[:, :, None, :]


class ShortConvFamily(Family):
    """The gated short convolution in the hook names (module docstring): q = C, k = B, v = x ``[B, T, D]``,
    no decay / beta; the view also holds the conv ``weight`` ``[D, L]`` and ``bias``; states ``[B, T, D, L]``."""
    name = "shortconv"
    inputs = ("q", "k", "v")

    def canonical(self, kw, lazy_qk=False):
        return self.view(q=kw["C"], k=kw["B"], v=kw["x"], weight=kw["weight"], bias=kw.get("bias"), scale=1.0,
                         initial_state=kw.get("initial_state"))

    @staticmethod
    def _args(c):
        return dict(x=c["v"], B=c["k"], C=c["q"], weight=c["weight"], bias=c.get("bias"))

    def scan(self, c, initial_state=None):
        """(readout ``[B, T, D]``, final window ``[B, D, L]``)."""
        return scan(**self._args(c), initial_state=initial_state, output_final_state=True)

    def states(self, c, positions=None, out_dtype=torch.float32):
        return states(**self._args(c), initial_state=c["initial_state"], positions=positions, out_dtype=out_dtype)

    def readout_at(self, c, S, t):
        """y_t = C_t (.) (sum_j w[:, j] S[:, :, j] + bias), S ``[B, D, L]``."""
        return read(work(S), c["q"][:, t], c["weight"], c.get("bias"))

    def pattern(self, c, rows=None, heads=None):
        """`pattern` of a view (``heads``: channels), for `hooks.effective.pattern`."""
        return pattern(**self._args(c), initial_state=c["initial_state"], rows=rows, channels=heads)


FAMILY = ShortConvFamily()
