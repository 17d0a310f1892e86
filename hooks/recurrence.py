"""One canonical view of the recurrence families, for hooks and state patching.

Each layer's scan kernel is called with the arguments of ``hooks.scan.<family>.scan``. Here they
are turned into the common names of hooks.names (q, k, v, decay, beta; states [B, T, H, K, V])
and back, so capture, intervention and "continue the recurrence from a patched state" are written
once for all families.

Mamba1 (``mamba1``) has its own shapes (hooks.names): its state is ``[D, N]`` per token (one
scalar recurrence per channel d and state dim n), i.e. GLA with one head per channel, K = N and
V = 1; q = C and k = B are ``[B, T, N]``, v = x and beta = dt ``[B, T, D]``, decay = dt A
``[B, T, D, N]``. Because that decay is as large as all the states, the Mamba1 view forms it only
when it is read (a ``rec.decay`` hook); otherwise the scans form dt A per step.
"""
from __future__ import annotations

import torch

from hooks.scan import gdn, gla, mamba1, mamba2
from hooks.scan._common import l2norm as _l2norm


def l2norm(x):
    """The scan modules' l2norm (fla's / HF's use_qk_l2norm_in_kernel), in x's dtype."""
    return _l2norm(x).to(x.dtype)


def _heads(t, H):
    """[B, T, G, N] -> [B, T, H, N] (group g serves heads g*H/G .. (g+1)*H/G - 1)."""
    G = t.shape[2]
    return t if G == H else t.repeat_interleave(H // G, dim=2)


SEQ_KEYS = ("q", "k", "v", "decay", "beta", "decay_dt")
FAMILIES = ("gdn", "gla", "mamba2", "mamba1")


class Mamba1View(dict):
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


def _is_mamba1(c) -> bool:
    return dict.__contains__(c, "decay_dt")


def _mamba1_args(c):
    """(x, dt, A, B, C) and the decay keywords of a Mamba1 view (plain dict copies work too)."""
    return (c["v"], c["beta"], c["A"], c["k"], c["q"]), dict(g=dict.get(c, "decay"), dt_decay=c["decay_dt"])


def canonical(family: str, kw: dict, lazy_qk: bool = False) -> dict:
    """Kernel kwargs -> {q, k, v, decay, beta?, scale, initial_state, D?}. ``lazy_qk``: a GDN layer
    that l2-normalises q, k in its kernel gets them raw, marked ``qk_l2``, and `materialize` normalises
    them when first needed (capturing states from the layer's own call never needs them)."""
    init = kw.get("initial_state")
    if family == "gdn":
        q, k = kw["q"], kw["k"]
        l2 = bool(kw.get("use_qk_l2norm_in_kernel"))
        if l2 and not lazy_qk:
            q, k = l2norm(q), l2norm(k)
        scale = kw.get("scale") or q.shape[-1] ** -0.5
        c = dict(q=q, k=k, v=kw["v"], decay=kw["g"], beta=kw["beta"], scale=scale, initial_state=init)
        if l2 and lazy_qk:
            c["qk_l2"] = True
        return c
    if family == "gla":
        q = kw["q"]
        scale = kw.get("scale") or q.shape[-1] ** -0.5
        return dict(q=q, k=kw["k"], v=kw["v"], decay=kw["g"], scale=scale, initial_state=init)
    if family == "mamba2":
        x, dt, A = kw["x"], kw["dt"], kw["A"]
        H = x.shape[2]
        return dict(q=_heads(kw["C"], H), k=_heads(kw["B"], H), v=x, beta=dt,
                    decay=dt * A.view(1, 1, -1).to(dt.dtype), scale=1.0, initial_state=init, D=kw.get("D"))
    if family == "mamba1":
        c = Mamba1View(q=kw["C"], k=kw["B"], v=kw["x"], beta=kw["dt"], A=kw["A"],
                       decay_dt=kw.get("dt_decay") if kw.get("dt_decay") is not None else kw["dt"],
                       scale=1.0, initial_state=init, D=kw.get("D"))
        if kw.get("g") is not None:
            c["decay"] = kw["g"]
        return c
    raise ValueError(f"unknown recurrence family '{family}'; valid: {', '.join(FAMILIES)}")


def materialize(c: dict) -> dict:
    """The view with the q, k a ``canonical(..., lazy_qk=True)`` left raw l2-normalised (in place)."""
    if c.pop("qk_l2", False):
        c["q"], c["k"] = l2norm(c["q"]), l2norm(c["k"])
    return c


def scan(family: str, c: dict, initial_state=None):
    """Run the recurrence on a canonical view; returns (readout [B,T,H,V], final_state)
    (Mamba1: [B, T, D] and [B, D, N])."""
    if _is_mamba1(c):
        args, dec = _mamba1_args(c)
        return mamba1.scan(*args, D=c.get("D"), initial_state=initial_state, output_final_state=True, **dec)
    if family == "gdn":
        return gdn.scan(c["q"], c["k"], c["v"], c["decay"], c["beta"], scale=c["scale"],
                        initial_state=initial_state, output_final_state=True)
    if family == "gla":
        return gla.scan(c["q"], c["k"], c["v"], c["decay"], scale=c["scale"],
                        initial_state=initial_state, output_final_state=True)
    # Mamba2 in GLA form with a scalar decay broadcast over keys: v' = beta * v (= dt * x)
    K = c["k"].shape[-1]
    o, S = gla.scan(c["q"], c["k"], c["v"] * c["beta"][..., None].to(c["v"].dtype),
                    c["decay"][..., None].expand(*c["decay"].shape, K).contiguous(), scale=1.0,
                    initial_state=initial_state, output_final_state=True)
    if c.get("D") is not None:
        o = o + c["v"] * c["D"].view(1, 1, -1, 1).to(c["v"].dtype)
    return o, S


def states(family: str, c: dict, positions=None, out_dtype=torch.float32):
    """Per-token states S_t (after token t) [B, T|P, H, K, V] from a canonical view (Mamba1:
    [B, T|P, D, N]), computed in float32 and written in ``out_dtype`` (default float32)."""
    od = dict(positions=positions, out_dtype=out_dtype)
    if _is_mamba1(c):
        args, dec = _mamba1_args(c)
        return mamba1.states(*args, initial_state=c["initial_state"], **od, **dec)
    if family == "gdn":
        return gdn.states(c["q"], c["k"], c["v"], c["decay"], c["beta"], scale=c["scale"],
                          initial_state=c["initial_state"], **od)
    if family == "gla":
        return gla.states(c["q"], c["k"], c["v"], c["decay"], scale=c["scale"],
                          initial_state=c["initial_state"], **od)
    K = c["k"].shape[-1]
    return gla.states(c["q"], c["k"], c["v"] * c["beta"][..., None].to(c["v"].dtype),
                      c["decay"][..., None].expand(*c["decay"].shape, K).contiguous(), scale=1.0,
                      initial_state=c["initial_state"], **od)


def family_states(family: str, kw: dict, c: dict, positions=None, out_dtype=torch.float32):
    """States from the layer's own kernel kwargs where the family module has a faster path."""
    if family == "mamba2":
        return mamba2.states(kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"],
                             initial_state=kw.get("initial_state"), positions=positions, out_dtype=out_dtype)
    return states(family, c, positions, out_dtype)


def call_with_states(family: str, call, kw: dict, c: dict, positions=None, out_dtype=torch.float32):
    """The layer's own kernel call ``call(**kw)`` -> (readout, final state, per-token states as
    `family_states`). For GDN on fla's kernels the states are expanded from the chunk pieces that very
    call computed (`gdn.kept_states`), so capturing them costs no second chunk pass; the call's
    results are the same as without capture. ``c`` may be a lazy view (`materialize`)."""
    if family == "gdn" and not kw.get("use_gate_in_kernel"):
        with gdn.kept_states(c["k"], c["decay"], positions, out_dtype) as got:
            o, final = call(**kw)
        S = gdn.states_from_kept(got)
        if S is not None:
            return o, final, S
    else:
        o, final = call(**kw)
    return o, final, family_states(family, kw, materialize(c), positions, out_dtype)


def readout_at(c: dict, S, t: int):
    """o_t = S_t^T (scale q_t) (+ D v_t for Mamba2) for one position; S: [B, H, K, V]
    (Mamba1: o_t[d] = sum_n S[d, n] C_t[n] + D[d] x_t[d], S: [B, D, N])."""
    if _is_mamba1(c):
        o = (S.float() * c["q"][:, t].float()[:, None, :]).sum(-1)
        if c.get("D") is not None:
            o = o + c["v"][:, t].float() * c["D"].float()
        return o
    q = c["q"][:, t].float() * c["scale"]
    o = torch.einsum("bhk,bhkv->bhv", q, S.float())
    if c.get("D") is not None:
        o = o + c["v"][:, t].float() * c["D"].view(1, -1, 1).float()
    return o


def _slice(c: dict, a: int, b: int) -> dict:
    """The canonical view restricted to positions [a, b) (initial_state dropped)."""
    return {key: (val[:, a:b] if key in SEQ_KEYS and val is not None else val)
            for key, val in c.items() if key != "initial_state"}


def continue_from(family: str, c: dict, o, patched: dict, S_all=None, rows: dict | None = None):
    """Re-run the recurrence so that S_t := patched[t] at each patched position t, continuing
    from it (later readouts change too). o: the layer's readout [B, T, H, V]; S_all: the
    unpatched per-token states [B, T, H, K, V] (optional; needed with ``rows``); ``rows``:
    {t: bool [B]}, the batch rows whose state is replaced at t (default: all rows). Rows not
    replaced at t keep the state their own (possibly already patched) recurrence reaches there,
    so one batch can hold a different patch in every row. Returns (o, S_T, states) where states
    are the states the patched run went through (None if S_all is None)."""
    o = o.clone()
    S_orig = S_all
    S_all = None if S_all is None else S_all.clone()
    T = o.shape[1]
    ts = sorted(patched)
    if rows is not None and S_orig is None:
        raise ValueError("continue_from with rows= needs S_all, the unpatched states")
    run = None  # the patched run's state after position t - 1 (None before the first patch)
    for j, t in enumerate(ts):
        S = patched[t].float()
        if rows is not None and not bool(rows[t].all()):
            if run is None:  # no earlier patch: the unpatched state is exact
                here = S_orig[:, t].float()
            else:            # one step of the (already patched) recurrence from the running state
                here = scan(family, _slice(c, t, t + 1), initial_state=run)[1].float()
            S = torch.where(rows[t].view(-1, *[1] * (S.dim() - 1)), S, here)
        o[:, t] = readout_at(c, S, t).to(o.dtype)
        end = ts[j + 1] if j + 1 < len(ts) else T  # the next patched state overrides from there
        final = S
        if S_all is not None:
            S_all[:, t] = S
        if t + 1 < end:
            seg = _slice(c, t + 1, end)
            o_seg, final = scan(family, seg, initial_state=S)
            o[:, t + 1:end] = o_seg.to(o.dtype)
            if S_all is not None:
                S_all[:, t + 1:end] = states(family, {**seg, "initial_state": S})
        run = final.float()
    return o, final, S_all
