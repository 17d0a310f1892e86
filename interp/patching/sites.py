"""Patch sites and cells: the valid names, which layers have a site, the cells of one (site, layer),
and writing a cell's source activation into a batch of patched runs."""
from __future__ import annotations

from hooks import names as HN
from interp import InterpError

METRICS = ("logit_diff", "prob", "kl")
DIRECTIONS = ("denoise", "noise")
RESID_SITES = ("resid_pre", "resid_mid", "resid_post", "mixer_out", "mlp_out")      # [B, T, D]
HEAD_SITES = ("attn.q", "attn.k", "attn.v", "attn.head_out",                         # [B, T, H, ...]
              "rec.q", "rec.k", "rec.v", "rec.decay", "rec.beta", "rec.readout", "rec.state")
SITES = RESID_SITES + HEAD_SITES + ("attn.pattern",)                                 # pattern: [B, H, T, T]


def _check_choice(what, value, valid):
    if value not in valid:
        raise InterpError(f"{what} '{value}' is not valid; valid: {', '.join(valid)}")


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
    raise InterpError(f"cannot tell the number of heads of layer {L.index}'s {site.split('.')[0]} module")


def _write(x, src, rows, cells, site):
    """Return x with, for row block j (rows[j]), cell j's part replaced by src (batch of one block)."""
    y = x.clone()
    for j, (p, h) in enumerate(cells):
        r = slice(j * rows, (j + 1) * rows)
        if site == "attn.pattern":       # [B, H, T(query), T]
            idx = (slice(None), slice(None) if h is None else h, slice(None) if p is None else p)
        else:                            # [B, T, (H, ...)]
            idx = (slice(None), slice(None) if p is None else p) + (() if h is None else (h,))
        y[r][idx] = src[idx].to(y.dtype)
    return y
