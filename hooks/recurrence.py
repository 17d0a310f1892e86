"""One canonical view of the recurrence families, for hooks and state patching: the public functions
over the registry ``hooks.scan.FAMILIES``.

Each layer's scan kernel is called with the arguments of ``hooks.scan.<family>.scan``. Here they
are turned into the common names of hooks.names (q, k, v, decay, beta; states [B, T, H, K, V])
and back, so capture, intervention and "continue the recurrence from a patched state" are written
once for all families (`hooks.scan.family.Family`; each family's ``FAMILY`` object supplies its
canonical view, scan, states and readout). The algebra: docs/per-token-states.md.

Mamba1 (``mamba1``) has its own shapes (hooks.names): its state is ``[D, N]`` per token (one
scalar recurrence per channel d and state dim n), i.e. GLA with one head per channel, K = N and
V = 1; q = C and k = B are ``[B, T, N]`` (zamba: ``[B, T, H, N]``, per mamba head), v = x and
beta = dt ``[B, T, D]``, decay = dt A ``[B, T, D, N]``. Because that decay is as large as all the
states, the Mamba1 view forms it only when it is read (a ``rec.decay`` hook); otherwise the scans
form dt A per step.
"""
from __future__ import annotations

import torch

from hooks.scan import FAMILIES as _REGISTRY
from hooks.scan.family import SEQ_KEYS, Family, View, l2norm, materialize  # noqa: F401  (public here)
from hooks.scan.mamba1 import Mamba1View  # noqa: F401

FAMILIES = tuple(_REGISTRY)


def get_family(name: str) -> Family:
    """The `Family` registered as ``name`` (ValueError naming the valid ones otherwise)."""
    mod = _REGISTRY.get(name)
    if mod is None:
        raise ValueError(f"unknown recurrence family '{name}'; valid: {', '.join(_REGISTRY)}")
    return mod.FAMILY


def canonical(family: str, kw: dict, lazy_qk: bool = False) -> dict:
    """Kernel kwargs -> {q, k, v, decay, beta?, scale, initial_state, D?}. ``lazy_qk``: a GDN layer
    that l2-normalises q, k in its kernel gets them raw, marked ``qk_l2``, and `materialize` normalises
    them when first needed (capturing states from the layer's own call never needs them)."""
    return get_family(family).canonical(kw, lazy_qk=lazy_qk)


def scan(family: str, c: dict, initial_state=None):
    """Run the recurrence on a canonical view; returns (readout [B,T,H,V], final_state)
    (Mamba1: [B, T, D] and [B, D, N])."""
    return get_family(family).scan(c, initial_state=initial_state)


def states(family: str, c: dict, positions=None, out_dtype=torch.float32):
    """Per-token states S_t (after token t) [B, T|P, H, K, V] from a canonical view (Mamba1:
    [B, T|P, D, N]), computed in float32 and written in ``out_dtype`` (default float32)."""
    return get_family(family).states(c, positions, out_dtype)


def family_states(family: str, kw: dict, c: dict, positions=None, out_dtype=torch.float32):
    """States from the layer's own kernel kwargs where the family module has a faster path."""
    return get_family(family).own_states(kw, c, positions, out_dtype)


def call_with_states(family: str, call, kw: dict, c: dict, positions=None, out_dtype=torch.float32):
    """The layer's own kernel call ``call(**kw)`` -> (readout, final state, per-token states as
    `family_states`). For GDN on fla's kernels the states are expanded from the chunk pieces that very
    call computed (`hooks.scan.gdn.kept_states`), so capturing them costs no second chunk pass; the call's
    results are the same as without capture. ``c`` may be a lazy view (`materialize`)."""
    return get_family(family).call_with_states(call, kw, c, positions, out_dtype)


def readout_at(c: dict, S, t: int, family: str | None = None):
    """o_t = S_t^T (scale q_t) (+ D v_t for Mamba2) for one position; S: [B, H, K, V]
    (Mamba1: o_t[d] = sum_n S[d, n] C_t[n] + D[d] x_t[d], S: [B, D, N]). ``c``: a canonical view
    (its family is known), or a plain dict with ``family`` named."""
    return (get_family(family) if family is not None else c.family).readout_at(c, S, t)


def continue_from(family: str, c: View, o, patched: dict, S_all=None, rows: dict | None = None):
    """Re-run the recurrence so that S_t := patched[t] at each patched position t, continuing
    from it (later readouts change too); see `hooks.scan.family.Family.continue_from`. Returns
    (o, S_T, states the patched run went through or None)."""
    fam = get_family(family)
    return fam.continue_from(c if isinstance(c, View) else fam.view(**c), o, patched, S_all, rows)
