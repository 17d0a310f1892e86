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

import torch

from hooks.scan._common import l2norm as _l2norm

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


class Family:
    """Base class of one recurrence family (see the module docstring). Subclasses set ``name`` and
    implement ``canonical``, ``scan`` and ``states``."""
    name = "base"
    inputs = ("q", "k", "v", "decay", "beta")  # the scan inputs it has, as rec.* hook names

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
        """Per-token states S_t (after token t) ``[B, T|P, H, K, V]``, computed in float32, written in
        ``out_dtype``."""
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
        q = c["q"][:, t].float() * c["scale"]
        o = torch.einsum("bhk,bhkv->bhv", q, S.float())
        if c.get("D") is not None:
            o = o + c["v"][:, t].float() * c["D"].view(1, -1, 1).float()
        return o

    def continue_from(self, c: View, o, patched: dict, S_all=None, rows: dict | None = None):
        """Re-run the recurrence so that S_t := patched[t] at each patched position t, continuing
        from it (later readouts change too). o: the layer's readout [B, T, H, V]; S_all: the
        unpatched per-token states [B, T, H, K, V] (optional; needed with ``rows``); ``rows``:
        {t: bool [B]}, the batch rows whose state is replaced at t (default: all rows). Rows not
        replaced at t keep the state their own (possibly already patched) recurrence reaches there,
        so one batch can hold a different patch in every row. Returns (o, S_T, states) where states
        are the states the patched run went through (None if S_all is None).
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
            S = patched[t].float()
            if rows is not None and not bool(rows[t].all()):
                if run is None:  # no earlier patch: the unpatched state is exact
                    here = S_orig[:, t].float()
                else:            # one step of the (already patched) recurrence from the running state
                    here = self.scan(c.sliced(t, t + 1), initial_state=run)[1].float()
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
                    S_all[:, t + 1:end] = self.states(seg)
            run = final.float()
        return o, final, S_all
