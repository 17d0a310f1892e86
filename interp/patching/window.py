"""The zoo-only window fast path of the sweep: a resid_pre or mixer_out patch at one position, with attention
and Gated DeltaNet layers after it, runs on the suffix window, with the unchanged run's keys and values as a
KV cache and each GDN layer resuming from the state the unchanged run's earlier positions leave."""
from __future__ import annotations

import torch

from interp.patching.run import _answer_metrics


def _window_ok(hm, site, layer, cells) -> bool:
    """Fast path: a resid_pre patch (or a mixer_out patch, whose layer's mixer is then not run again) at one
    position in a zoo model whose layers that run are attention or GDN (`HybridLM.window_ok`). Only positions
    >= the patched one change, so the forward runs on the suffix window with the unchanged run's keys/values
    as a KV cache and each GDN layer resuming from the unchanged run's earlier inputs
    (`HybridLM.forward_window`)."""
    m = hm.model
    first = layer + (site == "mixer_out")
    return (site in ("resid_pre", "mixer_out") and hm.adapter.family == "zoo" and hasattr(m, "window_ok")
            and m.window_ok(first) and all(p is not None and h is None for p, h in cells))


def _window_cache(hm, tokens, units, win):
    if not win:
        return None
    lo = min(units[u][1] for u in win)
    kinds = hm.model.config.layers
    names = {f"blocks.{i}.attn.{kv}" for i in range(lo, hm.n_layers) if kinds[i] == "attn" for kv in "kv"}
    names |= {f"blocks.{units[u][1]}.{x}" for u in win for x in {"resid_pre", units[u][0]}}
    names |= {f"blocks.{i}.resid_pre" for i in range(lo, hm.n_layers) if kinds[i] != "attn"}
    return hm.run_with_cache(tokens, names=sorted(names))[1]


def _window_unit(model, cache, src, cells, site, layer, ans, batch_size, answers, clean_logp, base_metrics):
    """All cells of one resid_pre / mixer_out unit on the window path. A row (pair) whose patched activation
    equals the unchanged one (e.g. every position before the changed fact) is not run: its
    metrics are the unchanged run's, exactly. The rest run in groups of <= batch_size rows, each
    group on the window from its first position. Returns [(ld, prob, kl) [n] per cell], in the
    order of ``cells``."""
    base, mixer = cache[f"blocks.{layer}.{site}"], site == "mixer_out"
    given = list(cells)
    cells = sorted(cells)
    active = [(src[:, p].to(base.dtype) != base[:, p]).any(-1).nonzero().flatten() for p, _ in cells]
    sums = []
    for p, _ in cells:  # start from the unchanged run's per-pair metrics
        sums.append([m.clone() for m in base_metrics])
    j = 0
    while j < len(cells):
        k, rows = j, 0
        while k < len(cells) and (k == j or rows + len(active[k]) <= batch_size):
            rows += len(active[k])
            k += 1
        grp = [(cells[c][0], active[c], c) for c in range(j, k) if len(active[c])]
        j = k
        if not grp:
            continue
        p0 = grp[0][0]
        idx = torch.cat([a for _, a, _ in grp])
        x = base[idx, p0:].clone()
        r = torch.arange(len(idx), device=x.device)
        ppos = torch.cat([torch.full((len(a),), p, device=x.device) for p, a, _ in grp])
        x[r, ppos - p0] = src[idx, ppos].to(x.dtype)
        if mixer:                                 # the patched mixer output joins the unchanged residual stream
            x = cache[f"blocks.{layer}.resid_pre"][idx, p0:] + x
        later = range(layer + mixer, len(model.blocks))
        attn = [i for i in later if model.config.layers[i] == "attn"]
        kv = {i: tuple(cache[f"blocks.{i}.attn.{t}"][idx, :p0] for t in "kv") for i in attn}
        prev = {i: cache[f"blocks.{i}.resid_pre"][idx, :p0] for i in later if i not in attn}
        a = ans[idx]
        lg = model.forward_window(x, layer, p0, kv, at=(a - p0).clamp(min=0), prev=prev, mixer_done=mixer)
        got = _answer_metrics(lg, (answers[0][idx], answers[1][idx]), clean_logp[idx])
        reach = a >= p0  # answers before the window: the patch cannot reach them
        o = 0
        for p, act, c in grp:
            sl = slice(o, o + len(act))
            o += len(act)
            for m, g in zip(sums[c], got):
                m[act[reach[sl]]] = g[sl][reach[sl]]
    by_cell = {c: tuple(s_) for c, s_ in zip(cells, sums)}
    return [by_cell[c] for c in given]
