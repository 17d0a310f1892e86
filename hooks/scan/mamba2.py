"""Mamba2 / SSD scan in Mamba2's own parameters.

    h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T       h: [N, P] per head, float32
    y_t = h_t^T C_t + D x_t

Shapes: x ``[B, T, H, P]``, dt ``[B, T, H]`` (after softplus and bias), A ``[H]`` (negative),
B, C ``[B, T, G, N]`` (G groups shared by H/G heads each), D ``[H]``, state ``[B, H, N, P]``.

This is scalar-gated linear attention with q = C, k = B, v = dt x, g = dt A and scale 1
(`to_gla_inputs`), so the GPU path is fla's simple-GLA chunk kernel and the CPU path the GLA
chunked reference. ``FAMILY`` is this family for `hooks` (docs/per-token-states.md).
"""
from __future__ import annotations

import torch

from hooks.scan import gla
from hooks.scan._common import expect, work
from hooks.scan.family import Family


def _check(x, dt, A, B, C, D, initial_state):
    b, T, H, P = x.shape
    expect(dt, "dt", (b, T, H))
    expect(A, "A", (H,))
    expect(B, "B", (b, T, None, None))
    expect(C, "C", B.shape)
    if H % B.shape[2]:
        raise ValueError(f"B/C have {B.shape[2]} groups, which must divide the {H} heads of x")
    if D is not None:
        expect(D, "D", (H,))
    expect(initial_state, "initial_state", (b, H, B.shape[-1], P))


def to_gla_inputs(x, dt, A, B, C):
    """(q, k, v, g) of the equivalent simple GLA: q=C, k=B (per head), v=dt*x, g=dt*A [B,T,H]."""
    H = x.shape[2]
    rep = H // B.shape[2]
    q = C.repeat_interleave(rep, dim=2) if rep > 1 else C
    k = B.repeat_interleave(rep, dim=2) if rep > 1 else B
    v = x * dt[..., None].to(x.dtype)
    g = work(dt) * work(A).view(1, 1, -1)
    return q, k, v, g


def _skip(y, x, D):
    return y if D is None else y + x * D.view(1, 1, -1, 1).to(x.dtype)


def naive(x, dt, A, B, C, D=None, initial_state=None, output_final_state=False, **unused):
    """Step loop in Mamba2's own parameters (independent of the GLA mapping)."""
    _check(x, dt, A, B, C, D, initial_state)
    b, T, H, P = x.shape
    rep = H // B.shape[2]
    h = (initial_state.float() if initial_state is not None
         else torch.zeros(b, H, B.shape[-1], P, device=x.device))
    ys = []
    for t in range(T):
        Bt = B[:, t].float().repeat_interleave(rep, 1)          # [b, H, N]
        Ct = C[:, t].float().repeat_interleave(rep, 1)
        dA = torch.exp(dt[:, t].float() * A.float())            # [b, H]
        h = dA[..., None, None] * h + dt[:, t].float()[..., None, None] * Bt[..., None] * x[:, t].float()[:, :, None]
        ys.append(torch.einsum("bhnp,bhn->bhp", h, Ct))
    y = _skip(torch.stack(ys, 1), x.float(), D).to(x.dtype)
    return y, (h if output_final_state else None)


def chunk_torch(x, dt, A, B, C, D=None, initial_state=None, output_final_state=False, **unused):
    _check(x, dt, A, B, C, D, initial_state)
    q, k, v, g = to_gla_inputs(x, dt, A, B, C)
    y, h = gla.chunk_torch(q, k, v, g, scale=1.0, initial_state=initial_state, output_final_state=output_final_state)
    return _skip(y, x, D), h


def scan(x, dt, A, B, C, D=None, initial_state=None, output_final_state=False, **unused):
    """fla's simple-GLA chunk kernel for CUDA tensors, the GLA chunked reference otherwise."""
    _check(x, dt, A, B, C, D, initial_state)
    q, k, v, g = to_gla_inputs(x, dt, A, B, C)
    y, h = gla.scan(q, k, v, g, scale=1.0, initial_state=initial_state, output_final_state=output_final_state)
    return _skip(y, x, D), h


def states(x, dt, A, B, C, initial_state=None, positions=None, out_dtype=torch.float32, impl="auto", **unused):
    """h_t after each token: ``[B, T, H, N, P]`` float32 (unless ``out_dtype``), or ``[B, P', H, N, P]``
    for a 1-D list/LongTensor of positions. impl as in `hooks.scan.gla.states` (CUDA: fla's
    simple-GLA chunk-start states + the Triton expansion kernel)."""
    _check(x, dt, A, B, C, None, initial_state)
    q, k, v, g = to_gla_inputs(x, dt, A, B, C)
    return gla.states(q, k, v, g, scale=1.0, initial_state=initial_state, positions=positions,
                      out_dtype=out_dtype, impl=impl)


def _heads(t, H):
    """[B, T, G, N] -> [B, T, H, N] (group g serves heads g*H/G .. (g+1)*H/G - 1)."""
    G = t.shape[2]
    return t if G == H else t.repeat_interleave(H // G, dim=2)


class Mamba2Family(Family):
    """Mamba2 in the hook names: q = C, k = B (per head), v = x, beta = dt, decay = dt A (scalar per head),
    scale 1, skip weight D; the views run as GLA with v' = beta v and the decay broadcast over the keys."""
    name = "mamba2"
    writes = True   # S_t = a_t S_{t-1} + k_t (beta_t v_t)^T

    def canonical(self, kw, lazy_qk=False):
        x, dt, A = kw["x"], kw["dt"], kw["A"]
        H = x.shape[2]
        return self.view(q=_heads(kw["C"], H), k=_heads(kw["B"], H), v=x, beta=dt,
                         decay=dt * A.view(1, 1, -1).to(dt.dtype), scale=1.0, initial_state=kw.get("initial_state"),
                         D=kw.get("D"))

    @staticmethod
    def _gla(c):
        """(q, k, v', g) of the GLA form of a view: v' = beta v, g the decay broadcast over the keys."""
        K = c["k"].shape[-1]
        return (c["q"], c["k"], c["v"] * c["beta"][..., None].to(c["v"].dtype),
                c["decay"][..., None].expand(*c["decay"].shape, K).contiguous())

    def scan(self, c, initial_state=None):
        o, S = gla.scan(*self._gla(c), scale=1.0, initial_state=initial_state, output_final_state=True)
        if c.get("D") is not None:
            o = o + c["v"] * c["D"].view(1, 1, -1, 1).to(c["v"].dtype)
        return o, S

    def states(self, c, positions=None, out_dtype=torch.float32):
        return gla.states(*self._gla(c), scale=1.0, initial_state=c["initial_state"], positions=positions,
                          out_dtype=out_dtype)

    def own_states(self, kw, c, positions=None, out_dtype=torch.float32):
        """From the kernel's own arguments: `states`, on the scalar-decay (simple GLA) path rather than the
        view's decay broadcast over the keys."""
        return states(kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"], initial_state=kw.get("initial_state"),
                      positions=positions, out_dtype=out_dtype)


FAMILY = Mamba2Family()
