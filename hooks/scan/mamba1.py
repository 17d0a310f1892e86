"""Mamba1 selective scan (S6) in Mamba1's own parameters.

    h_t[d, n] = exp(dt_t[d] A[d, n]) h_{t-1}[d, n] + dt_t[d] B_t[n] x_t[d]      h: [D, N], float32
    y_t[d]    = sum_n h_t[d, n] C_t[n] + D[d] x_t[d]

Shapes: x, dt ``[B, T, D]`` (D = d_inner channels; dt after its bias and softplus), A ``[D, N]``
(negative), B, C ``[B, T, N]`` (shared by all channels) or ``[B, T, G, N]`` (grouped: group g's
B_t, C_t serve channels g D/G .. (g+1) D/G - 1; zamba's mamba heads), D ``[D]``, state
``[B, D, N]``; the per-token states are ``[B, T, D, N]``. Optional ``g`` ``[B, T, D, N]``: the log
decay, replacing ``dt A`` (a hook changed it); optional ``dt_decay`` ``[B, T, D]``: the dt that
enters the decay when it differs from the dt of the write (a hook changed only the write strength).

In the terms of hooks.scan.gla this is GLA with one head per channel (H = D), K = N, V = 1:
q = C, k = B, v = dt x, g = dt A. Every (d, n) is an independent scalar recurrence, so the
paths here are elementwise, not matrix products:

* ``naive``: the step loop (T steps).
* ``chunk_torch`` / ``scan`` / ``states``: a two-level scan. Time is cut into NT chunks of C
  steps (C ~ sqrt(T)); (1) all chunks run their C steps at once from a zero state, giving each
  chunk's own end state and total log decay; (2) NT steps carry the state across chunk
  starts; (3) all chunks run their C steps again, now from their true start states, and emit
  y_t, h_t at every position, or only at the requested ones. 2C + NT sequential elementwise
  steps on ``[B, NT, D, N]`` tensors, memory O(B NT D N) besides the output, no exponentials
  of differences (so no overflow under strong decay), any device, differentiable.

The fused kernels (mamba-ssm's ``selective_scan_fn``, HF's slow path) are what models run; the
adapters pass the layer's own kernel through unchanged and use these functions for states,
for changed scan inputs and to continue from a patched state (``FAMILY``, with its view
`Mamba1View`; docs/per-token-states.md).
"""
from __future__ import annotations

import math

import torch

from hooks.scan._common import expect, norm_positions, torch_impl, work
from hooks.scan.family import Family, View


def _check(x, dt, A, B, C, D, initial_state, g=None, dt_decay=None):
    if x.dim() != 3:
        raise ValueError(f"x has shape {list(x.shape)}, expected [B, T, D]")
    b, T, Dn = x.shape
    expect(dt, "dt", (b, T, Dn))
    expect(A, "A", (Dn, None))
    N = A.shape[1]
    if B.dim() == 4:  # grouped: [B, T, G, N]
        expect(B, "B", (b, T, None, N))
        if Dn % B.shape[2]:
            raise ValueError(f"B/C have {B.shape[2]} groups, which must divide the {Dn} channels of x")
    else:
        expect(B, "B", (b, T, N))
    expect(C, "C", tuple(B.shape))
    if D is not None:
        expect(D, "D", (Dn,))
    expect(initial_state, "initial_state", (b, Dn, N))
    expect(g, "g", (b, T, Dn, N))
    expect(dt_decay, "dt_decay", (b, T, Dn))


def per_channel(t, Dn: int, grouped: bool):
    """A slice of B or C, ``[..., N]`` (shared) or ``[..., G, N]`` (``grouped``), as ``[..., 1 | D, N]``:
    broadcast over the D channels, or each group repeated for its D/G channels."""
    return t.repeat_interleave(Dn // t.shape[-2], dim=-2) if grouped else t.unsqueeze(-2)


def _log_decay(dt, A, g, dt_decay):
    """A function of a time slice -> the log decay there, [B, t, D, N] float32."""
    if g is not None:
        return lambda sl: work(g[:, sl])
    src = dt if dt_decay is None else dt_decay
    Af = work(A)
    return lambda sl: work(src[:, sl])[..., None] * Af


def naive(x, dt, A, B, C, D=None, initial_state=None, output_final_state=False, g=None, dt_decay=None,
          **unused):
    """Step-by-step reference in float32. Returns (y [B, T, D] in x's dtype, h_T [B, D, N] or None)."""
    _check(x, dt, A, B, C, D, initial_state, g, dt_decay)
    b, T, Dn = x.shape
    dec = _log_decay(dt, A, g, dt_decay)
    h = work(initial_state) if initial_state is not None else x.new_zeros(b, Dn, A.shape[1], dtype=torch.float32)
    ys, grp = [], B.dim() == 4
    for t in range(T):
        h = (dec(slice(t, t + 1))[:, 0].exp() * h
             + (work(dt[:, t]) * work(x[:, t]))[..., None] * per_channel(work(B[:, t]), Dn, grp))
        ys.append((h * per_channel(work(C[:, t]), Dn, grp)).sum(-1))
    y = torch.stack(ys, 1) if ys else x.new_zeros(b, 0, Dn, dtype=torch.float32)
    if D is not None:
        y = y + work(x) * work(D)
    return y.to(x.dtype), (h if output_final_state else None)


def _chunk_len(T: int, chunk) -> int:
    return max(1, int(chunk) if chunk else math.isqrt(max(T - 1, 0)) + 1)


def _two_level(x, dt, A, B, C, initial_state, g, dt_decay, chunk, want_y, positions, all_states, out_dtype):
    """The three passes of the module docstring. Returns (y [B,T,D] f32 or None, h_T, states or None)."""
    b, T, Dn = x.shape
    N = A.shape[1]
    wt = work(x).dtype   # float32; float64 inputs stay float64
    if T == 0:
        h0 = work(initial_state) if initial_state is not None else x.new_zeros(b, Dn, N, dtype=wt)
        P = 0 if positions is None else positions.numel()
        return x.new_zeros(b, 0, Dn, dtype=wt), h0, x.new_zeros(b, P, Dn, N, dtype=out_dtype)
    Cn = _chunk_len(T, chunk)
    NT = -(-T // Cn)
    pad = NT * Cn - T

    def tiles(t, fill=0.0):  # [B, T, ...] -> [B, NT, C, ...] float32 (padding: no write, no decay)
        t = work(t)
        if pad:
            t = torch.cat([t, t.new_full((b, pad, *t.shape[2:]), fill)], 1)
        return t.view(b, NT, Cn, *t.shape[2:])

    u = tiles(work(dt) * work(x))                        # dt x    [B, NT, C, D]
    Bt = tiles(B)                                         # [B, NT, C, (G,) N]
    grp = B.dim() == 4
    Bj = lambda j: per_channel(Bt[:, :, j], Dn, grp)  # noqa: E731   [B, NT, 1 | D, N]
    Ct = tiles(C) if want_y else None
    if g is not None:
        gt = tiles(g)                                     # [B, NT, C, D, N]
        G = lambda j: gt[:, :, j]  # noqa: E731
    else:                                                 # dt A formed per step: O(NT D N) at a time
        dtt, Af = tiles(dt if dt_decay is None else dt_decay), work(A)
        G = lambda j: dtt[:, :, j, :, None] * Af  # noqa: E731

    # (1) every chunk from a zero state: its end state and its total log decay
    h = x.new_zeros(b, NT, Dn, N, dtype=wt)
    tot = torch.zeros_like(h)                             # [B, NT, D, N]
    for j in range(Cn):
        gj = G(j)
        tot += gj
        h = gj.exp() * h + u[:, :, j, :, None] * Bj(j)
    # (2) carry the state across chunk starts
    start = []
    s = work(initial_state) if initial_state is not None else x.new_zeros(b, Dn, N, dtype=wt)
    for c in range(NT):
        start.append(s)
        s = tot[:, c].exp() * s + h[:, c]
    final = s
    # (3) every chunk again from its true start state; emit what is wanted
    h = torch.stack(start, 1)
    ys = x.new_zeros(b, NT, Cn, Dn, dtype=wt) if want_y else None
    S_all = x.new_empty(b, NT, Cn, Dn, N, dtype=out_dtype) if all_states else None
    S_pos = None
    if positions is not None:
        S_pos = x.new_empty(b, positions.numel(), Dn, N, dtype=out_dtype)
        pc, pj = positions // Cn, positions % Cn
    if want_y or all_states or (positions is not None and positions.numel()):
        for j in range(Cn):
            h = G(j).exp() * h + u[:, :, j, :, None] * Bj(j)
            if want_y:
                ys[:, :, j] = (h * per_channel(Ct[:, :, j], Dn, grp)).sum(-1)
            if all_states:
                S_all[:, :, j] = h
            if S_pos is not None:
                sel = (pj == j).nonzero().flatten()
                if sel.numel():
                    S_pos[:, sel.to(S_pos.device)] = h[:, pc[sel].to(h.device)].to(out_dtype)
    y = ys.view(b, NT * Cn, Dn)[:, :T] if want_y else None
    if all_states:
        S_all = S_all.view(b, NT * Cn, Dn, N)[:, :T]
    return y, final, (S_pos if positions is not None else S_all)


def chunk_torch(x, dt, A, B, C, D=None, initial_state=None, output_final_state=False, g=None, dt_decay=None,
                chunk=None, **unused):
    """Two-level elementwise scan (any device). Same result as ``naive``."""
    _check(x, dt, A, B, C, D, initial_state, g, dt_decay)
    y, final, _ = _two_level(x, dt, A, B, C, initial_state, g, dt_decay, chunk, True, None, False, torch.float32)
    if D is not None:
        y = y + work(x) * work(D)
    return y.to(x.dtype), (final if output_final_state else None)


def scan(x, dt, A, B, C, D=None, initial_state=None, output_final_state=False, g=None, dt_decay=None, **unused):
    """The pure-torch two-level scan on every device (the fused kernels belong to the models;
    see the module docstring)."""
    return chunk_torch(x, dt, A, B, C, D, initial_state, output_final_state, g=g, dt_decay=dt_decay)


def states(x, dt, A, B, C, initial_state=None, positions=None, out_dtype=torch.float32, impl="auto", g=None,
           dt_decay=None, chunk=None, **unused):
    """h_t after each token: ``[B, T, D, N]`` float32 (unless ``out_dtype``), or ``[B, P, D, N]``
    for a 1-D list/LongTensor of positions (then only O(B P D N) is written)."""
    _check(x, dt, A, B, C, None, initial_state, g, dt_decay)
    torch_impl(impl)
    pos = norm_positions(positions, x.shape[1])
    _, _, S = _two_level(x, dt, A, B, C, initial_state, g, dt_decay, chunk, False, pos, pos is None, out_dtype)
    return S


class Mamba1View(View):
    """The canonical view of a Mamba1 scan. ``decay`` (dt A, ``[B, T, D, N]``) is formed from
    ``decay_dt`` and ``A`` the first time it is read; until then the scans form it per step.
    ``decay_dt`` is the dt of the layer's own call, so a hook that changes ``beta`` (dt of the
    write) leaves the decay as it was, as for Mamba2."""

    def __contains__(self, key):
        return key == "decay" or dict.__contains__(self, key)

    def __missing__(self, key):
        if key != "decay":
            raise KeyError(key)
        dt = self["decay_dt"]
        g = dt[..., None] * self["A"].to(dt.dtype)
        self["decay"] = g
        return g


def _args(c):
    """(x, dt, A, B, C) and the decay keywords of a Mamba1 view (a decay not yet formed stays None)."""
    return (c["v"], c["beta"], c["A"], c["k"], c["q"]), dict(g=dict.get(c, "decay"), dt_decay=c["decay_dt"])


class Mamba1Family(Family):
    """Mamba1 in the hook names, with its own shapes (hooks.names): q = C and k = B ``[B, T, N]`` (grouped:
    ``[B, T, G, N]``), v = x and beta = dt ``[B, T, D]``, decay = dt A ``[B, T, D, N]`` (formed when read,
    `Mamba1View`), skip weight D; states ``[B, T, D, N]``."""
    name = "mamba1"

    def view(self, **entries):
        return Mamba1View(self, entries)

    def canonical(self, kw, lazy_qk=False):
        c = self.view(q=kw["C"], k=kw["B"], v=kw["x"], beta=kw["dt"], A=kw["A"],
                       decay_dt=kw.get("dt_decay") if kw.get("dt_decay") is not None else kw["dt"],
                       scale=1.0, initial_state=kw.get("initial_state"), D=kw.get("D"))
        if kw.get("g") is not None:
            c["decay"] = kw["g"]
        return c

    def scan(self, c, initial_state=None):
        """(readout ``[B, T, D]``, final state ``[B, D, N]``)."""
        args, dec = _args(c)
        return scan(*args, D=c.get("D"), initial_state=initial_state, output_final_state=True, **dec)

    def states(self, c, positions=None, out_dtype=torch.float32):
        args, dec = _args(c)
        return states(*args, initial_state=c["initial_state"], positions=positions, out_dtype=out_dtype, **dec)

    writes = True   # S_t[d, n] = exp(decay_t[d, n]) S_{t-1}[d, n] + (beta_t v_t)[d] k_t[n]

    def decayed(self, c, S_prev):
        """exp(dt A) (.) S_{t-1}, elementwise ``[B, T, D, N]``."""
        return work(S_prev) * work(c["decay"]).exp()

    def write_factors(self, c, S_prev):
        """(write_k = B_t ``[B, T, N]`` (grouped ``[B, T, G, N]``), write_v = dt_t x_t ``[B, T, D]``)."""
        return work(c["k"]), work(c["beta"]) * work(c["v"])

    def outer(self, wk, wv):
        """``[..., D, N]``: write_v[d] write_k[n] (write_k of d's group when grouped)."""
        return wv[..., :, None] * per_channel(wk, wv.shape[-1], wk.dim() == wv.dim() + 1)

    def readout_at(self, c, S, t):
        """o_t[d] = sum_n S[d, n] C_t[n] + D[d] x_t[d] (C_t of d's group when grouped), S ``[B, D, N]``."""
        q = work(c["q"][:, t])
        o = (work(S).to(q.dtype) * per_channel(q, S.shape[1], c["q"].dim() == 4)).sum(-1)
        if c.get("D") is not None:
            o = o + work(c["v"][:, t]) * work(c["D"])
        return o


FAMILY = Mamba1Family()
