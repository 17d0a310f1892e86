"""The patching sweep: run every unfinished (direction, pair chunk, unit) item in batched forward
passes (or on the KV-window path), keep each unit's per-pair metrics in the sweep's store, and
assemble the PatchResult."""
from __future__ import annotations

from contextlib import nullcontext

import torch

from interp.checks import check_count
from interp.patching.plan import base_key, plan_sweep, unit_key
from interp.patching.run import _answer_metrics
from interp.patching.sites import _write
from interp.patching.units import open_units
from interp.patching.window import Source, _real_view, _site_names, _window_cache, _window_ok, _window_unit
from interp.patching.window_state import state_unit


def sweep(model, pairs, sites=("resid_pre",), layers=None, positions=None, heads=False,
          direction="denoise", batch_size=256, skip_prefix=True, out=None, progress=True,
          model_name="model", device=None, overwrite=False, keep_all=False, n_boot=1000, matmul="fp32"):
    """Patch every cell of ``sites`` x ``layers`` x ``positions`` (x heads) and measure.

    model: a model `hooks` supports (or a HookedModel); pairs: a `tasks.PairBatch`;
    layers: default all that have the site; positions: default every position;
    heads: one cell per head (for head sites; with ``positions=None`` each head at all positions);
    direction: 'denoise', 'noise' or 'both' (rows of both, told apart by the ``direction`` column);
    batch_size: rows per forward pass (pairs x cells; also the size of the pair chunks; with 'both', a
    window-path forward carries both directions' rows of its cells: up to 2 x batch_size);
    out: folder of the resumable result (an `interp.store.Store`: one file per finished unit,
    spec-checked, locked; ``overwrite=True`` replaces one made with other settings).
    keep_all: keep every pair (default: only pairs the model answers correctly on both prompts;
    ``res.attrs['pairs']`` says how many were kept); n_boot: bootstrap resamples of the 95%
    intervals over pairs (``*_lo`` / ``*_hi`` columns).
    matmul: "fp32" (torch's settings as they are) or "tf32x3": the model's float32 CUDA linear layers as three
    TF32 GEMMs of split operands (`hooks.matmul`; about fp32's accuracy, 0.56-0.75x an fp32 GEMM's time on an
    H200, 0.66-0.88x on an H100; recorded in the result folder's spec). fla's kernels in a hybrid's mixers
    multiply fp32 as TF32 either way, so there results move by ~1e-3 of the logits, unless
    ``HYBRID_INTERP_FLA_IEEE=1`` (`hooks.scan.fla_precision`) makes them IEEE fp32 (then ``kernels.fla_products: ieee``
    in the spec, `interp.kernels`; BENCHMARKS.md sections 1, 43-45).
    """
    from interp.patching.assemble import assemble
    check_count(n_boot, "n_boot")   # before the sweep, not after it
    plan = plan_sweep(model, pairs, sites, layers, positions, heads, direction, batch_size, skip_prefix,
                      model_name, device, matmul)
    store = open_units(out, plan.spec if out is not None else None, overwrite)
    try:
        run_items(plan, store, [it for it in plan.items if not store.has(unit_key(*it))], progress)
        return assemble(plan, store, keep_all=keep_all, n_boot=n_boot)
    finally:
        store.close()


def run_items(plan, store, items, progress=True):
    """Run the (direction, chunk, unit) ``items`` of ``plan``; each chunk's baselines (unless the
    store has them) and each unit's per-pair metrics go to ``store`` as soon as they are done."""
    from hooks.matmul import matmul_mode
    bar = _bar(sum(len(plan.units[u][2]) for _, _, u in items), progress and bool(items), "patching")
    with torch.no_grad(), matmul_mode(plan.settings.get("matmul", "fp32")):
        for ci in range(len(plan.chunks)):
            mine = [it for it in items if it[1] == ci]
            if mine:
                _run_chunk(plan, store, ci, mine, bar)
    bar.close()


def _bar(total, progress, desc):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="cell", disable=not progress, leave=False)


# --- one pair chunk -------------------------------------------------------------------------------
def _run_chunk(plan, store, ci, items, bar):
    """The ``items`` of pair chunk ``ci``: its baselines, then every unit's metrics. Window units that
    run in both directions run once on a batch of both (`_run_both`); the rest per direction. A padded
    chunk takes the window path as an unpadded one (`_win_unit` with its span)."""
    hm, pairs = plan.hm, plan.pairs
    a, b = plan.chunks[ci]
    sl = slice(a, b)
    answers = (pairs.clean_answer[sl], pairs.corrupted_answer[sl])
    base, clean_logp, runs = _chunk_baselines(hm, pairs, sl, answers, plan.chunk(ci)[0])
    if not store.has(base_key(ci)):
        store.put(base_key(ci), base)
    todo = {d: [u for d_, _, u in items if d_ == d] for d in plan.directions}
    win = {u for u in range(len(plan.units)) if plan.skip_prefix and _window_ok(hm, *plan.units[u])}
    # with both directions a window unit always runs on the batch of both (resuming one direction too, so a
    # resumed sweep equals an uninterrupted one bit for bit)
    both = sorted({u for us in todo.values() for u in us} & win) if len(plan.directions) == 2 else []
    if both:
        _run_both(plan, store, ci, both, todo, answers, clean_logp, runs, bar)
    for direction in plan.directions:
        rest = [u for u in todo[direction] if u not in both]
        if not rest:
            continue
        base_tok, src_tok = ((pairs.corrupted[sl], pairs.clean[sl]) if direction == "denoise"
                             else (pairs.clean[sl], pairs.corrupted[sl]))
        base_metrics = runs["corrupted" if direction == "denoise" else "clean"]
        _run_direction(plan, store, ci, direction, rest, (base_tok, src_tok), answers, clean_logp,
                       base_metrics, win, bar)


def _run_both(plan, store, ci, units_, todo, answers, clean_logp, runs, bar):
    """Window units ``units_`` in both directions at once: one batch of 2n rows, the corrupted prompts
    (denoising: each patched with its clean activation) then the clean ones (noising), so one cached run
    serves as both the unchanged run and (halves swapped) the source, and each window carries both
    directions' rows. Stores the directions ``todo`` asks for. (Padded: both halves have the chunk's mask.)"""
    hm, pairs, units = plan.hm, plan.pairs, plan.units
    a, b = plan.chunks[ci]
    n = b - a
    mask, span = plan.chunk(ci)
    mask, span = (None, None) if mask is None else (mask.repeat(2, 1), tuple(s_.repeat(2) for s_ in span))
    cache = _window_cache(hm, torch.cat([pairs.corrupted[a:b], pairs.clean[a:b]]), units, set(units_), mask, span)
    ans = _real_ans(pairs.answer_pos[a:b].repeat(2), span)
    answers2, clean_logp2 = tuple(x.repeat(2) for x in answers), clean_logp.repeat(2, 1)
    base_metrics = tuple(torch.cat([x, c]) for x, c in zip(runs["corrupted"], runs["clean"]))
    for u in units_:
        site, layer, cells = units[u]
        per_pair = _win_unit(hm.model, cache, Source(half=n), cells, site, layer, ans, plan.batch_size,
                             answers2, clean_logp2, base_metrics, span=span)
        for direction, half in (("denoise", slice(0, n)), ("noise", slice(n, 2 * n))):
            if u in todo[direction]:
                store.put(unit_key(direction, ci, u), _payload(cells, [tuple(m[half] for m in ms) for ms in per_pair]))
                bar.update(len(cells))


def _run_direction(plan, store, ci, direction, todo, tokens, answers, clean_logp, base_metrics, win, bar):
    hm, units = plan.hm, plan.units
    base_tok, src_tok = tokens
    a, b = plan.chunks[ci]
    ans = plan.pairs.answer_pos[a:b]
    mask, span = plan.chunk(ci)
    win = {u for u in todo if u in win}
    names = {f"blocks.{units[u][1]}.{units[u][0]}" for u in todo if u not in win} | _site_names(units, win)
    _, src_cache = hm.run_with_cache(src_tok, names=sorted(names), attention_mask=mask)
    outs = hm.block_outputs(base_tok, mask) if plan.skip_prefix and len(win) < len(todo) else None
    win_cache = _window_cache(hm, base_tok, units, win, mask, span)
    src = Source(_real_view(src_cache, _site_names(units, win), span))
    for u in todo:
        site, layer, cells = units[u]
        if u in win:  # only positions >= the patch, only rows the patch changes
            per_pair = _win_unit(hm.model, win_cache, src, cells, site, layer, _real_ans(ans, span),
                                 plan.batch_size, answers, clean_logp, base_metrics, span=span)
            bar.update(len(cells))
        else:
            per_pair = _batched_unit(hm, base_tok, src_cache[f"blocks.{layer}.{site}"], site, layer, cells, ans,
                                     answers, clean_logp, outs, plan.batch_size, bar, (mask, span))
        store.put(unit_key(direction, ci, u), _payload(cells, per_pair))


def _win_unit(model, cache, src, cells, site, layer, *rest, span=None):
    """One unit on the window path: `state_unit` for ``rec.state``, `_window_unit` for resid_pre / mixer_out.
    ``span`` (first real index, real tokens) of padded rows: the caches and answer positions count each row's
    real tokens (`_real_view`, `_real_ans`) and a row without a cell's position gets NaN metrics there (as on
    the general path)."""
    if site == "rec.state":
        out = state_unit(model, cache, src, cells, layer, *rest)
    else:
        out = _window_unit(model, cache, src, cells, site, layer, *rest)
    if span is None:
        return out
    return [tuple(torch.where(p < span[1], x, torch.nan) for x in m) for (p, _), m in zip(cells, out)]


def _real_ans(ans, span):
    """Answer positions as the window path counts them: from each row's first real token (``span``: of padded
    rows; None: as they are)."""
    return ans if span is None else ans - span[0]


def _payload(cells, per_pair) -> dict:
    """A unit as stored: the per-pair metrics [cells, pairs] (float32) and its cells (position,
    head; -1 = all)."""
    ld, pr, kl = (torch.stack([m[j] for m in per_pair]).float().cpu().contiguous() for j in range(3))
    cell = torch.tensor([[-1 if p is None else p, -1 if h is None else h] for p, h in cells], dtype=torch.int64)
    return {"ld": ld, "prob": pr, "kl": kl, "cells": cell}


def _chunk_baselines(hm, pairs, sl, answers, mask=None):
    """The unpatched runs of one pair chunk (``mask``: its padding mask): (their per-pair metrics as
    stored: logit diff, p(clean answer), the corrupted run's KL to the clean one, each run's top token;
    the clean run's log-probs at the answer; {'clean', 'corrupted'}: (ld, prob, kl) per pair)."""
    with hm.logits_at(pairs.answer_pos[sl]):
        clean_lg, corr_lg = hm(pairs.clean[sl], mask), hm(pairs.corrupted[sl], mask)
    clean_logp = clean_lg[:, 0].float().log_softmax(-1)
    runs, base = {}, {}
    for tag, lg in (("clean", clean_lg), ("corrupted", corr_lg)):
        runs[tag] = _answer_metrics(lg, answers, clean_logp)
        ld, pr, kl = runs[tag]
        base.update({f"{tag}_ld": ld, f"{tag}_prob": pr, f"{tag}_top": lg[:, 0].argmax(-1)})
        if tag == "corrupted":
            base["corrupted_kl"] = kl
    base = {k: v.cpu().contiguous() if k.endswith("_top") else v.float().cpu().contiguous() for k, v in base.items()}
    return base, clean_logp, runs


def _batched_unit(hm, base_tok, src, site, layer, cells, ans, answers, clean_logp, outs, batch_size, bar,
                  padded=(None, None)):
    """One unit's per-pair metrics on the general path: [(ld, prob, kl) [n] per cell]; each forward
    pass carries up to ``batch_size // n`` cells, one block of the chunk's n pairs each; with
    ``outs`` (the unchanged run's block outputs) the blocks before ``layer`` are not recomputed.
    ``padded``: (padding mask, span) of padded pairs: positions count each pair's real tokens and a
    pair without a cell's position gets NaN metrics there."""
    n = base_tok.shape[0]
    mask, span = padded
    name = f"blocks.{layer}.{site}"
    ca, xa = answers
    out = []
    cells_per_fwd = max(1, batch_size // n)
    for c0 in range(0, len(cells), cells_per_fwd):
        cc = cells[c0:c0 + cells_per_fwd]
        rep = len(cc)
        fn = (lambda x, _name, cc=cc: _write(x, src, n, cc, site, span))
        ctx_start = hm.start_at(layer, outs[layer - 1], rep) if (outs is not None and layer > 0) else nullcontext()
        with ctx_start, hm.logits_at(ans.repeat(rep)):
            lg = hm.run_with_hooks(base_tok.repeat(rep, 1), hooks=[(name, fn)],
                                   attention_mask=None if mask is None else mask.repeat(rep, 1))
        ld, pr, kl = _answer_metrics(lg, (ca.repeat(rep), xa.repeat(rep)), clean_logp.repeat(rep, 1))
        for j, (p, _) in enumerate(cc):
            m = tuple(x[j * n:(j + 1) * n] for x in (ld, pr, kl))
            if span is not None and p is not None:   # pairs without position p: no value
                m = tuple(torch.where(p < span[1], x, torch.nan) for x in m)
            out.append(m)
        bar.update(rep)
    return out
