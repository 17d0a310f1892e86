"""The zoo-only window fast path of the sweep: a resid_pre, mixer_out or (GDN) rec.state patch at one position,
with attention and Gated DeltaNet layers after it, runs on the suffix window, with the unchanged run's keys and
values as a KV cache and each GDN layer resuming from the state the unchanged run's earlier positions leave.
Padded pairs (left or right) take it too: their runs use the padding mask and the caches are read per pair from
its first real token on (`_real_view`), so the windows run on real positions as for unpadded pairs."""
from __future__ import annotations

import torch

from hooks.scan import gdn as gdn_scan
from interp.patching.run import _answer_metrics
from interp.zoo.gdn import kernel_inputs

# A `Prefix` advances its GDN states over at most this many positions by the step recurrence (`hooks.scan.gdn.naive`,
# a few batched ops), over more by the layer's scan: windows mostly move one position, where a chunked kernel's
# launches and Python cost far more than the step.
STEP_MAX = 4


def _window_ok(hm, site, layer, cells) -> bool:
    """Fast path: a patch at one position (all heads) in a zoo model whose layers that run are attention or
    GDN (`HybridLM.window_ok`): resid_pre, mixer_out (whose layer's mixer is then not run again) or rec.state
    of a GDN layer (the layer resumes from the patched state, `interp.patching.window_state`). Only positions
    >= the patched one change, so the forward runs on the suffix window with the unchanged run's keys/values
    as a KV cache and each GDN layer resuming from the unchanged run's earlier inputs
    (`HybridLM.forward_window`)."""
    m = hm.model
    if not (hm.adapter.family == "zoo" and hasattr(m, "window_ok") and all(p is not None and h is None
                                                                            for p, h in cells)):
        return False
    if site == "rec.state":
        return m.config.layers[layer] == "gdn" and m.window_ok(layer + 1)
    return site in ("resid_pre", "mixer_out") and m.window_ok(layer + (site == "mixer_out"))


class Source:
    """Where a window sweep's rows take their patched activations from: the cache of a run on the source
    tokens, or (both directions stacked in one batch: corrupted rows then clean rows) the base cache itself
    with its two halves swapped (``half`` = the number of pairs)."""

    def __init__(self, cache=None, half=None):
        self.cache, self.half = cache, half

    def swap(self, t):
        return torch.cat([t[self.half:], t[:self.half]])

    def get(self, name, base_cache):
        return self.swap(base_cache[name]) if self.cache is None else self.cache[name]


def _site_names(units, win):
    """The names a window unit reads from the source run: its site (rec.state: the layer's input, from
    which the states at the patched positions are computed)."""
    return {f"blocks.{units[u][1]}.{'resid_pre' if units[u][0] == 'rec.state' else units[u][0]}" for u in win}


def _real_view(cache, names, span):
    """``cache``'s tensors ``names`` as the window path reads those of a padded chunk: each row's real tokens
    from index 0 on (`interp.tasks.padded.to_real`; zeros after them), so position p is the row's p-th real
    token, its keys carry RoPE position p (the masked run counts real tokens) and a GDN scan from index 0 starts
    at its first real token. ``span``: (first real index, real tokens) of the rows, None: unpadded. Right
    padding (every first real index 0) is read as it is: the pads come after the real tokens, which a causal
    model never reads from them."""
    if span is None or not bool(span[0].any()):
        return cache
    from interp.tasks.padded import to_real
    return {n: to_real(cache[n], span, 0.0) for n in names}


def _window_cache(hm, tokens, units, win, mask=None, span=None):
    """The unchanged run's cache that the window units ``win`` read: keys/values of the attention layers and
    inputs of the other layers from the first patched layer on, each unit's site (rec.state: its layer's
    input and mixer output). ``mask``, ``span``: of a padded chunk (run with the mask, read per row from its
    first real token, `_real_view`)."""
    if not win:
        return None
    lo = min(units[u][1] for u in win)
    kinds = hm.model.config.layers
    names = {f"blocks.{i}.attn.{kv}" for i in range(lo, hm.n_layers) if kinds[i] == "attn" for kv in "kv"}
    names |= {f"blocks.{units[u][1]}.{x}" for u in win
              for x in ({"resid_pre", "mixer_out"} if units[u][0] == "rec.state" else {"resid_pre", units[u][0]})}
    names |= {f"blocks.{i}.resid_pre" for i in range(lo, hm.n_layers) if kinds[i] != "attn"}
    return _real_view(hm.run_with_cache(tokens, names=sorted(names), attention_mask=mask)[1], names, span)


def _groups(cells, active, batch_size, half=None):
    """Runs of consecutive (sorted) cells holding <= ``batch_size`` active rows together (a cell with more
    is a run of its own); cells without active rows are left out. Yields lists of cell indices. ``half``:
    the rows are both directions' (`Source`), counted per direction, so that each direction's windows are
    those of a sweep of that direction alone."""
    size = [len(a) if half is None else max(int((a < half).sum()), int((a >= half).sum())) for a in active]
    j = 0
    while j < len(cells):
        k, rows = j, 0
        while k < len(cells) and (k == j or rows + size[k] <= batch_size):
            rows += size[k]
            k += 1
        grp = [c for c in range(j, k) if len(active[c])]
        j = k
        if grp:
            yield grp


class Prefix:
    """What the layers from ``first`` on need of the positions before a window, for rows of the unchanged
    run's cache: attention keys/values; for GDN layers the state those positions leave, for every row,
    advanced as the windows move right (so a unit scans each layer's prefix once, not once per window; by the step
    recurrence over <= `STEP_MAX` positions),
    and their last inputs (for the short convolutions). (The prefix scans run on every row of the cache, a batch
    size the unchanged run's forward met already; q and k enter them normalised, `interp.zoo.gdn.kernel_inputs`.)"""

    def __init__(self, model, cache, first):
        self.model, self.cache, self.at = model, cache, 0
        later = range(first, len(model.blocks))
        self.attn = [i for i in later if model.config.layers[i] == "attn"]
        self.gdn = [i for i in later if model.config.layers[i] == "gdn"]
        self.inputs, self.state = {}, dict.fromkeys(self.gdn)
        for i in self.gdn:
            b = model.blocks[i]
            self.inputs[i] = kernel_inputs(b.mixer.scan_inputs(b.norm1(cache[f"blocks.{i}.resid_pre"])))

    def __call__(self, idx, p0):
        """(kv, prev) of `HybridLM.forward_window` for rows ``idx`` and a window from ``p0``."""
        if p0 < self.at:  # (a sweep's windows only move right) start over
            self.at, self.state = 0, dict.fromkeys(self.gdn)
        for i in self.gdn:
            if p0 > self.at:
                seg = {k: v[:, self.at:p0] if torch.is_tensor(v) else v for k, v in self.inputs[i].items()}
                fn = gdn_scan.naive if p0 - self.at <= STEP_MAX else self.model.blocks[i].mixer.scan_fn
                self.state[i] = fn(**seg, initial_state=self.state[i], output_final_state=True)[1]
        self.at = p0
        kv = {i: tuple(self.cache[f"blocks.{i}.attn.{t}"][idx, :p0] for t in "kv") for i in self.attn}
        prev = {}
        for i in self.gdn:
            tail = max(0, p0 - self.model.blocks[i].mixer.q_conv.kernel_size + 1)
            prev[i] = (self.cache[f"blocks.{i}.resid_pre"][idx, tail:p0],
                       None if self.state[i] is None else self.state[i][idx])
        return kv, prev


def _store(sums, grp, active, got):
    """Write a group's metrics ``got`` (rows in the order of ``active[c]`` for c in ``grp``) into ``sums``."""
    o = 0
    for c in grp:
        act = active[c]
        for m, g in zip(sums[c], got):
            m[act] = g[o:o + len(act)]
        o += len(act)


def _window_unit(model, cache, src, cells, site, layer, ans, batch_size, answers, clean_logp, base_metrics):
    """All cells of one window unit. A row (pair) whose patched activation equals the unchanged one (e.g.
    every position before the changed fact), or whose answer comes before the patch, is not run: its
    metrics are the unchanged run's, exactly. The rest run in groups of <= batch_size rows, each group on
    the window from its first position to its last answer. ``src``: a `Source`. Returns [(ld, prob, kl)
    [n] per cell], in the order of ``cells``. (``rec.state`` units: `interp.patching.window_state.state_unit`.)"""
    name, mixer = f"blocks.{layer}.{site}", site == "mixer_out"
    base, srcs = cache[name], src.get(name, cache)
    given = list(cells)
    cells = sorted(cells)
    active = [((srcs[:, p].to(base.dtype) != base[:, p]).any(-1) & (ans >= p)).nonzero().flatten() for p, _ in cells]
    sums = [[m.clone() for m in base_metrics] for _ in cells]  # start from the unchanged run's per-pair metrics
    prefix = Prefix(model, cache, layer + mixer)
    for grp in _groups(cells, active, batch_size, src.half):
        p0 = cells[grp[0]][0]
        idx = torch.cat([active[c] for c in grp])
        end = int(ans[idx].max()) + 1             # positions after the last answer cannot reach it
        x = base[idx, p0:end].clone()
        r = torch.arange(len(idx), device=x.device)
        ppos = torch.cat([torch.full((len(active[c]),), cells[c][0], device=x.device) for c in grp])
        x[r, ppos - p0] = srcs[idx, ppos].to(x.dtype)
        if mixer:                                 # the patched mixer output joins the unchanged residual stream
            x = cache[f"blocks.{layer}.resid_pre"][idx, p0:end] + x
        kv, prev = prefix(idx, p0)
        lg = model.forward_window(x, layer, p0, kv, at=ans[idx] - p0, prev=prev, mixer_done=mixer)
        _store(sums, grp, active, _answer_metrics(lg, (answers[0][idx], answers[1][idx]), clean_logp[idx]))
    by_cell = {c: tuple(s_) for c, s_ in zip(cells, sums)}
    return [by_cell[c] for c in given]
