"""Patch sites and cells: the valid names, which layers have a site (`sites_of`), checking layers
and positions, the cells of one (site, layer), and writing a cell's source activation into a batch
of patched runs."""
from __future__ import annotations

import numbers
from collections.abc import Iterable

from hooks import names as HN
from interp import InterpError

METRICS = ("logit_diff", "prob", "kl")
DIRECTIONS = ("denoise", "noise")
DIRECTION_CHOICES = DIRECTIONS + ("both",)
RESID_SITES = ("resid_pre", "resid_mid", "resid_post", "mixer_out", "mlp_out")      # [B, T, D]
HEAD_SITES = ("attn.q", "attn.k", "attn.v", "attn.head_out",                         # [B, T, H, ...]
              "rec.q", "rec.k", "rec.v", "rec.decay", "rec.beta", "rec.readout", "rec.state")
SITES = RESID_SITES + HEAD_SITES + ("attn.pattern",)                                 # pattern: [B, H, T, T]


def _check_choice(what, value, valid):
    if value not in valid:
        raise InterpError(f"{what} '{value}' is not valid; valid: {', '.join(valid)}")


def directions_of(direction) -> tuple:
    """'denoise' | 'noise' | 'both' -> the directions a sweep runs."""
    _check_choice("direction", direction, DIRECTION_CHOICES)
    return DIRECTIONS if direction == "both" else (direction,)


def _ints(values, what: str) -> list:
    """``values`` (an int, or an iterable of them: Python, numpy or 0-d torch ints) as a list of ints; a bool, float
    or string is an InterpError naming it, never truncated (`hooks.names.as_int`)."""
    if (isinstance(values, numbers.Integral) and not isinstance(values, bool)) or getattr(values, "ndim", None) == 0:
        values = [values]   # one int (also a numpy or 0-d torch one)
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise InterpError(f"{what}s={values!r} is not valid; valid: an int or a list of ints")
    try:
        out = [HN.as_int(v, what) for v in values]
    except HN.HookError as e:
        raise InterpError(f"{e}; valid: an int") from None
    twice = sorted({v for v in out if out.count(v) > 1})
    if twice:
        raise InterpError(f"{what} {twice[0]} is given twice; valid: distinct {what}s (each cell once)")
    return out


def check_layers(layers, n_layers: int, what="layer"):
    """``layers`` (None = every layer) as checked ints: a value out of range or an empty list is an
    InterpError naming it and the valid range."""
    if layers is None:
        return None
    layers = _ints(layers, what)
    if not layers:
        raise InterpError(f"no {what} selected; valid: 0..{n_layers - 1} (e.g. 3, 3,7 or 0:4)")
    for i in layers:
        if not 0 <= i < n_layers:
            raise InterpError(f"{what} {i} out of range 0..{n_layers - 1}")
    return layers


def check_positions(positions, T: int, what="position"):
    """``positions`` (None = every position) as checked ints in 0..T-1 (negative positions are
    refused, not counted from the end)."""
    if positions is None:
        return None
    positions = _ints(positions, what)
    if not positions:
        raise InterpError(f"no {what} selected; valid: 0..{T - 1} (e.g. 3,5,9 or 0:{T})")
    bad = [p for p in positions if not 0 <= p < T]
    if bad:
        shown = ",".join(map(str, bad[:5])) + (",..." if len(bad) > 5 else "")
        raise InterpError(f"{what}{'s' if len(bad) > 1 else ''} {shown} out of range: the prompts have {T} tokens; "
                          f"valid: 0..{T - 1} (e.g. 0:{T})")
    return positions


def sites_of(hook_names, layers) -> list:
    """Every patchable site (``attn.pattern`` aside) that ``layers`` have, in `SITES` order; with
    ``layers`` None: ``['resid_pre']``."""
    if layers is None:
        return ["resid_pre"]
    layers = {int(i) for i in layers}
    have = {n.split(".", 2)[2] for n in hook_names if n.startswith("blocks.") and int(n.split(".")[1]) in layers}
    sites = [s for s in SITES if s in have and s != "attn.pattern"]
    if not sites:
        raise InterpError(f"layer(s) {', '.join(map(str, sorted(layers)))} have no patchable site")
    return sites


def layer_kind(L) -> str:
    if L.attn is not None and L.rec is not None:
        return f"attn+{L.rec_family}"
    return "attn" if L.attn is not None else (L.rec_family or "other")


def plan_cells(hm, site: str, layer: int, positions, heads: bool, T: int):
    """The cells of one (site, layer): [(position|None, head|None)]."""
    L = hm.layers[layer]
    if site.startswith("attn.") and L.attn is None:
        raise InterpError(f"site '{site}' needs attention, but layer {layer} is {layer_kind(L)}")
    if site.startswith("rec.") and L.rec is None:
        raise InterpError(f"site '{site}' needs a recurrent mixer, but layer {layer} is {layer_kind(L)}")
    HN.check([f"blocks.{layer}.{site}"], hm.hook_names)
    pos = list(range(T)) if positions is None else list(positions)
    if heads:
        if site in RESID_SITES:
            raise InterpError(f"site '{site}' has no heads; per-head patching needs one of "
                              f"{', '.join(HEAD_SITES + ('attn.pattern',))}")
        H = _n_heads(L, site)
        return [(p, h) for h in range(H) for p in pos] if positions is not None else [(None, h) for h in range(H)]
    return [(p, None) for p in pos]


def _n_heads(L, site):
    mod = L.attn if site.startswith("attn.") else L.rec
    for a in ("n_heads", "num_heads", "num_attention_heads", "num_v_heads"):
        if isinstance(getattr(mod, a, None), int):
            return getattr(mod, a)
    n = getattr(getattr(mod, "config", None), "num_attention_heads", None) if site.startswith("attn.") else None
    if isinstance(n, int):          # HF attention modules (llama, gemma, phi3, ...) keep it in their config
        return n
    raise InterpError(f"cannot tell the number of heads of layer {L.index}'s {site.split('.')[0]} module")


def _write(x, src, rows, cells, site, span=None):
    """Return x with, for row block j (rows[j]), cell j's part replaced by src (batch of one block). ``span``
    (first real index [rows], real tokens [rows]) of a padded block: a cell's position counts each row's real
    tokens, and a row without that position is left alone."""
    y = x.clone()
    for j, (p, h) in enumerate(cells):
        if span is not None and p is not None:
            i = (p < span[1]).nonzero().flatten()
            t = span[0][i] + p
            idx = (i, slice(None), t) if site == "attn.pattern" else (i, t)
            if h is not None:
                idx = (i, h, t) if site == "attn.pattern" else (i, t, h)
            y[(j * rows + i,) + idx[1:]] = src[idx].to(y.dtype)
            continue
        r = slice(j * rows, (j + 1) * rows)
        if site == "attn.pattern":       # [B, H, T(query), T]
            idx = (slice(None), slice(None) if h is None else h, slice(None) if p is None else p)
        else:                            # [B, T, (H, ...)]
            idx = (slice(None), slice(None) if p is None else p) + (() if h is None else (h,))
        y[r][idx] = src[idx].to(y.dtype)
    return y
