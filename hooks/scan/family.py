"""Family: what `hooks` needs of one recurrence family (its canonical view in the hook names, scan, per-token
states, readout, continuing from a patched state); each scan module defines one as ``FAMILY``.

The canonical view (`View`) names a scan call's inputs as hooks.names does: q, k, v, decay (log decay
g_t), beta (write strength), plus scale, initial_state and, for the Mamba families, the skip weight D;
states are ``[B, T, H, K, V]`` (Mamba1: ``[B, T, D, N]``). Capture, intervention and "continue the
recurrence from a patched state" are written once here against that view; a family supplies
``canonical`` (its kernel's keyword arguments -> a view), ``scan`` and ``states`` on a view, and may
override the readout and the faster state paths. The algebra: docs/per-token-states.md.

The registry of families is ``hooks.scan.FAMILIES`` (name -> scan module); `hooks.recurrence` dispatches
through it.
"""
from __future__ import annotations

import functools

import torch

from hooks.scan._common import l2norm as _l2norm, work

SEQ_KEYS = ("q", "k", "v", "decay", "beta", "decay_dt")  # per-token entries of a view ([B, T, ...])


def l2norm(x):
    """The scan modules' l2norm (fla's / HF's use_qk_l2norm_in_kernel), in x's dtype."""
    return _l2norm(x).to(x.dtype)


def materialize(c: dict) -> dict:
    """The view with the q, k a lazy view (``canonical(..., lazy_qk=True)``, marked ``qk_l2``) left raw
    l2-normalised (in place)."""
    if c.pop("qk_l2", False):
        c["q"], c["k"] = l2norm(c["q"]), l2norm(c["k"])
    return c


class View(dict):
    """A canonical view: ``{q, k, v, decay, beta?, scale, initial_state, D?}`` of one scan call, held by
    name like any dict. ``family`` is the `Family` it belongs to."""

    def __init__(self, family: "Family", *args, **kw):
        super().__init__(*args, **kw)
        self.family = family

    def sliced(self, a: int, b: int, initial_state=None) -> "View":
        """The view restricted to positions [a, b), starting from ``initial_state``."""
        out = type(self)(self.family, {key: (val[:, a:b] if key in SEQ_KEYS and val is not None else val)
                                       for key, val in self.items() if key != "initial_state"})
        out["initial_state"] = initial_state
        return out


def _changed(a, b):
    """[B, T] bool: where two per-token tensors ``[B, T, ...]`` differ."""
    return (a != b).flatten(2).any(-1) if a.dim() > 2 else a != b


def previous(S, initial_state=None):
    """S_{t-1} for every t: states ``[B, T, ...]`` shifted by one token (S_{-1} = the initial state or 0)."""
    first = (torch.zeros_like(S[:, :1]) if initial_state is None
             else initial_state.to(S.dtype).unsqueeze(1))
    return torch.cat([first, S[:, :-1]], 1)


class Family:
    """Base class of one recurrence family (see the module docstring). Subclasses set ``name`` and
    implement ``canonical``, ``scan`` and ``states``.

    Families whose state is a decayed sum of rank-1 writes (``writes = True``) also give the per-token
    write in factored form, the hook names ``rec.write_k`` / ``rec.write_v``: S_t = decayed_t(S_{t-1}) +
    outer(write_k_t, write_v_t) (`decayed`, `write_factors`, `outer`; the defaults are those of the
    ``[H, K, V]`` families with v' = beta v, GLA / Mamba2), and `rewrite` continues the recurrence from
    changed writes."""
    name = "base"
    inputs = ("q", "k", "v", "decay", "beta")  # the scan inputs it has, as rec.* hook names
    writes = False

    def __repr__(self):
        return f"<recurrence family {self.name}>"

    def view(self, **entries) -> View:
        return View(self, entries)

    def canonical(self, kw: dict, lazy_qk: bool = False) -> View:
        """The layer's scan-kernel kwargs (the signature of ``hooks.scan.<family>.scan``) -> a view."""
        raise NotImplementedError

    def scan(self, c: dict, initial_state=None):
        """Run the recurrence on a view: (readout ``[B, T, H, V]``, final state)."""
        raise NotImplementedError

    def states(self, c: dict, positions=None, out_dtype=torch.float32):
        """Per-token states S_t (after token t) ``[B, T|P, H, K, V]``, computed in float32 (float64 views: float64),
        written in ``out_dtype``."""
        raise NotImplementedError

    def own_states(self, kw: dict, c: dict, positions=None, out_dtype=torch.float32):
        """States from the layer's own kernel kwargs ``kw`` (a family may have a faster path there)."""
        return self.states(c, positions, out_dtype)

    def call_with_states(self, call, kw: dict, c: dict, positions=None, out_dtype=torch.float32):
        """The layer's own kernel call ``call(**kw)`` -> (readout, final state, per-token states as
        `own_states`). ``c`` may be a lazy view (`materialize`)."""
        o, final = call(**kw)
        return o, final, self.own_states(kw, materialize(c), positions, out_dtype)

    def readout_at(self, c: dict, S, t: int):
        """o_t = S_t^T (scale q_t) (+ D v_t where the view has D) for one position; S ``[B, H, K, V]``."""
        q = work(c["q"][:, t]) * c["scale"]
        o = torch.einsum("bhk,bhkv->bhv", q, work(S).to(q.dtype))
        if c.get("D") is not None:
            o = o + work(c["v"][:, t]) * work(c["D"]).view(1, -1, 1)
        return o

    # --- per-token writes ------------------------------------------------------------------------------
    def decayed(self, c: dict, S_prev):
        """a_t S_{t-1} for every t of the view: ``S_prev`` ``[B, T, H, K, V]`` holds S_{t-1} at t; the
        decay is a scalar per head, or per key dim (GLA, KDA: ``[B, T, H, K]``)."""
        a = work(c["decay"]).exp()
        return work(S_prev) * (a[..., None] if a.dim() == S_prev.dim() - 1 else a[..., None, None])

    def write_factors(self, c: dict, S_prev):
        """(write_k ``[B, T, H, K]``, write_v ``[B, T, H, V]``) of every token, float32 (float64 views: float64):
        here k and beta v (v where the family has no beta)."""
        v = work(c["v"])
        if c.get("beta") is not None:
            v = v * work(c["beta"])[..., None]
        return work(c["k"]), v

    def outer(self, wk, wv):
        """The write as the state holds it: ``[..., K, V]`` = write_k write_v^T."""
        return wk[..., :, None] * wv[..., None, :]

    def rewrite(self, c: View, o, S, old, new):
        """Continue the recurrence from changed writes: where (row, t) has ``new`` = (write_k, write_v)
        different from ``old``, S'_t = decayed_t(S'_{t-1}) + outer(new); every other token takes its own
        step from the edited past (so GDN's delta write is recomputed from it). ``S``: the unchanged
        per-token states; ``o``: the readout. Returns (o, final state or None if nothing changed, states).
        Each S'_t is made by `continue_from` from the state its run reached before t (one scan a segment)."""
        diff = _changed(old[0], new[0]) | _changed(old[1], new[1])
        ts = diff.any(0).nonzero().flatten().tolist()
        if not ts:
            return o, None, S
        init = c.get("initial_state")

        def step(t, prev):
            if prev is None:   # before the first changed write the states are the unchanged ones
                prev = work(S[:, t - 1]) if t else (torch.zeros_like(work(S[:, 0])) if init is None
                                                    else work(init).to(work(S).dtype))
            one = c.sliced(t, t + 1, initial_state=prev)
            own = work(self.scan(one, initial_state=prev)[1])
            mine = self.decayed(one, prev[:, None])[:, 0] + self.outer(work(new[0][:, t]), work(new[1][:, t]))
            return torch.where(diff[:, t].view(-1, *[1] * (own.dim() - 1)), mine, own)
        return self.continue_from(c, o, {t: functools.partial(step, t) for t in ts}, S)

    def continue_from(self, c: View, o, patched: dict, S_all=None, rows: dict | None = None):
        """Re-run the recurrence so that S_t := patched[t] at each patched position t, continuing
        from it (later readouts change too); a patched[t] may also be a function of the patched run's
        state before t (None before the first patch) that returns S_t (`rewrite`). o: the layer's
        readout [B, T, H, V]; S_all: the unpatched per-token states [B, T, H, K, V] (optional;
        needed with ``rows``); ``rows``: {t: bool [B]}, the batch rows whose state is replaced at t
        (default: all rows). Rows not replaced at t keep the state their own (possibly already
        patched) recurrence reaches there, so one batch can hold a different patch in every row.
        Returns (o, S_T, states) where states are the states the patched run went through (None if
        S_all is None).
        docs/per-token-states.md, "Patching a state", has the algebra."""
        o = o.clone()
        S_orig = S_all
        S_all = None if S_all is None else S_all.clone()
        T = o.shape[1]
        ts = sorted(patched)
        if rows is not None and S_orig is None:
            raise ValueError("continue_from with rows= needs S_all, the unpatched states")
        run = None  # the patched run's state after position t - 1 (None before the first patch)
        for j, t in enumerate(ts):
            S = work(patched[t](run) if callable(patched[t]) else patched[t])
            if rows is not None and not bool(rows[t].all()):
                if run is None:  # no earlier patch: the unpatched state is exact
                    here = work(S_orig[:, t])
                else:            # one step of the (already patched) recurrence from the running state
                    here = work(self.scan(c.sliced(t, t + 1), initial_state=run)[1])
                S = torch.where(rows[t].view(-1, *[1] * (S.dim() - 1)), S, here)
            o[:, t] = self.readout_at(c, S, t).to(o.dtype)
            end = ts[j + 1] if j + 1 < len(ts) else T  # the next patched state overrides from there
            final = S
            if S_all is not None:
                S_all[:, t] = S
            if t + 1 < end:
                seg = c.sliced(t + 1, end, initial_state=S)
                o_seg, final = self.scan(seg, initial_state=S)
                o[:, t + 1:end] = o_seg.to(o.dtype)
                if S_all is not None:
                    S_all[:, t + 1:end] = self.states(seg, out_dtype=S_all.dtype)
            run = work(final)
        return o, final, S_all
