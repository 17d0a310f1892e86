"""The patching sweep: plan (site, layer) units and pair chunks, run every unfinished unit in batched
forward passes (or on the KV-window path) and assemble the PatchResult."""
from __future__ import annotations

from contextlib import nullcontext

import torch

import hooks
from interp import InterpError
from interp.patching.result import PatchResult, _assemble
from interp.patching.run import _answer_metrics, _model_device
from interp.patching.sites import DIRECTIONS, SITES, _check_choice, _write, plan_cells
from interp.patching.units import _UnitStore
from interp.patching.window import _window_cache, _window_ok, _window_unit


def sweep(model, pairs, sites=("resid_pre",), layers=None, positions=None, heads=False,
          direction="denoise", batch_size=256, skip_prefix=True, out=None, progress=True,
          model_name="model", device=None, shard=None) -> PatchResult:
    """Patch every cell of ``sites`` x ``layers`` x ``positions`` (x heads) and measure.

    model: a model `hooks` supports (or a HookedModel); pairs: a `tasks.PairBatch`;
    layers: default all that have the site; positions: default every position;
    heads: one cell per head (for head sites; with ``positions=None`` each head at all positions);
    batch_size: rows per forward pass (pairs x cells); out: directory for resumable unit results.
    shard: for one process of a distributed sweep (`interp.distributed.sweep`): a function
    ``shard(items, costs) -> the items this process runs``, items = every (pair chunk, unit) of
    the sweep, costs = {item: estimated cost}; the sweep then writes only those to ``out`` and
    returns None (`merge_units` + `assemble_units` build the result from all processes' ``out``).
    """
    hm, pairs = _prepare(model, pairs, sites, layers, positions, direction, device)
    N, T = pairs.clean.shape
    tokens = (pairs.corrupted, pairs.clean) if direction == "denoise" else (pairs.clean, pairs.corrupted)
    units = _plan_units(hm, sites, layers, positions, heads, T)
    max_cells = max(len(c) for _, _, c in units)
    pair_chunk = max(1, min(N, batch_size))
    chunks = [(a, min(N, a + pair_chunk)) for a in range(0, N, pair_chunk)]
    store = _UnitStore(out, dict(sites=list(sites), layers=layers, positions=positions, heads=heads,
                                 direction=direction, n=N, T=T, model=model_name, meta=pairs.meta))
    todo = _todo(store, len(chunks), units, shard, hm.n_layers, skip_prefix)
    bar = _bar(len(todo) and sum(len(units[u][2]) for _, u in todo), progress, "patching")
    with torch.no_grad():
        for ci, (a, b) in enumerate(chunks):
            if any(c == ci for c, _ in todo):
                _run_chunk(hm, pairs, tokens, units, store, ci, slice(a, b), direction, batch_size, skip_prefix, bar)
    bar.close()
    if shard is not None:
        return None
    return _assemble(store.frame(), store.baselines(), hm, pairs, model_name, direction, max_cells)


# --- planning -------------------------------------------------------------------------------------
def _prepare(model, pairs, sites, layers, positions, direction, device):
    """Check the arguments; return the HookedModel and the pairs on ``device`` (default: the model's)."""
    _check_choice("direction", direction, DIRECTIONS)
    hm = model if isinstance(model, hooks.HookedModel) else hooks.wrap(model)
    for s in sites:
        _check_choice("site", s, SITES)
    n_layers = hm.n_layers
    if layers is not None:
        for i in layers:
            if not 0 <= int(i) < n_layers:
                raise InterpError(f"layer {i} out of range 0..{n_layers - 1}")
    pairs = pairs.to(device or _model_device(hm))
    T = pairs.clean.shape[1]
    if positions is not None:
        bad = [p for p in positions if not 0 <= int(p) < T]
        if bad:
            raise InterpError(f"position {bad[0]} out of range 0..{T - 1}")
    return hm, pairs


def _plan_units(hm, sites, layers, positions, heads, T):
    """The units: (site, layer, cells) for every site x layer; layers that lack a site are skipped
    when ``layers`` is None."""
    units = []
    for s in sites:
        for i in (range(hm.n_layers) if layers is None else [int(x) for x in layers]):
            L = hm.layers[i]
            if layers is None and ((s.startswith("attn.") and L.attn is None) or (s.startswith("rec.") and L.rec is None)):
                continue
            units.append((s, i, plan_cells(hm, s, i, positions, heads, T)))
    if not units:
        raise InterpError(f"no layer of this model has site(s) {', '.join(sites)}")
    return units


def _todo(store, n_chunks, units, shard, n_layers, skip_prefix):
    """The (pair chunk, unit) items still to run; with ``shard`` only this process's share (the
    other processes' items go to ``store.skip``)."""
    todo = [(c, u) for c in range(n_chunks) for u in range(len(units)) if not store.done(c, u)]
    if shard is not None:  # one process of a distributed sweep: only its share of the items
        items = [(c, u) for c in range(n_chunks) for u in range(len(units))]
        mine = set(shard(items, {(c, u): len(units[u][2]) * (n_layers - units[u][1] if skip_prefix else n_layers)
                                 for c, u in items}))
        store.skip = set(items) - mine
        todo = [it for it in todo if it in mine]
    return todo


def _bar(total, progress, desc):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="cell", disable=not progress, leave=False)


# --- one pair chunk -------------------------------------------------------------------------------
def _run_chunk(hm, pairs, tokens, units, store, ci, sl, direction, batch_size, skip_prefix, bar):
    """Every unfinished unit of pair chunk ``ci`` (pair rows ``sl``); its baselines and each unit's
    sums go to ``store``."""
    base_tok, src_tok = (t[sl] for t in tokens)
    ans, answers = pairs.answer_pos[sl], (pairs.clean_answer[sl], pairs.corrupted_answer[sl])
    base, clean_logp, base_metrics = _chunk_baselines(hm, pairs, sl, answers, direction)
    store.add_base(ci, base)
    names = sorted({f"blocks.{i}.{s}" for s, i, _ in units})
    _, src_cache = hm.run_with_cache(src_tok, names=names)
    outs = hm.block_outputs(base_tok) if skip_prefix else None
    win = {ui for ui, u in enumerate(units) if skip_prefix and _window_ok(hm, *u)}
    win_cache = _window_cache(hm, base_tok, units, win)
    for ui, (site, layer, cells) in enumerate(units):
        if store.done(ci, ui):
            continue
        src = src_cache[f"blocks.{layer}.{site}"]
        if ui in win:  # only positions >= the patch, only rows the patch changes
            rows = _window_unit(hm.model, win_cache, src, cells, site, layer, ans, batch_size,
                                answers, clean_logp, base_metrics)
            bar.update(len(cells))
        else:
            rows = _batched_unit(hm, base_tok, src, site, layer, cells, ans, answers, clean_logp, outs,
                                 batch_size, bar)
        store.add(ci, ui, rows)


def _chunk_baselines(hm, pairs, sl, answers, direction):
    """The unpatched runs of one pair chunk: (summed clean and corrupted metrics and n, the clean
    run's log-probs at the answer, per-pair metrics of the run that is patched)."""
    with hm.logits_at(pairs.answer_pos[sl]):
        clean_lg, corr_lg = hm(pairs.clean[sl]), hm(pairs.corrupted[sl])
    clean_logp = clean_lg[:, 0].float().log_softmax(-1)
    base = {}
    for tag, lg in (("clean", clean_lg), ("corrupted", corr_lg)):
        ld, pr, kl = _answer_metrics(lg, answers, clean_logp)
        for k, v in (("ld", ld), ("prob", pr), ("kl", kl)):
            base[f"{tag}_{k}"] = base.get(f"{tag}_{k}", 0.0) + float(v.sum())
    base["n"] = base.get("n", 0) + (sl.stop - sl.start)
    base_metrics = _answer_metrics(corr_lg if direction == "denoise" else clean_lg, answers, clean_logp)
    return base, clean_logp, base_metrics


def _batched_unit(hm, base_tok, src, site, layer, cells, ans, answers, clean_logp, outs, batch_size, bar):
    """One unit's rows on the general path: each forward pass carries up to ``batch_size // n`` cells,
    one block of the chunk's n pairs each; with ``outs`` (the unchanged run's block outputs) the
    blocks before ``layer`` are not recomputed."""
    n = base_tok.shape[0]
    name = f"blocks.{layer}.{site}"
    ca, xa = answers
    rows = []
    cells_per_fwd = max(1, batch_size // n)
    for c0 in range(0, len(cells), cells_per_fwd):
        cc = cells[c0:c0 + cells_per_fwd]
        rep = len(cc)
        fn = (lambda x, _name, cc=cc: _write(x, src, n, cc, site))
        ctx_start = hm.start_at(layer, outs[layer - 1], rep) if (outs is not None and layer > 0) else nullcontext()
        with ctx_start, hm.logits_at(ans.repeat(rep)):
            lg = hm.run_with_hooks(base_tok.repeat(rep, 1), hooks=[(name, fn)])
        ld, pr, kl = _answer_metrics(lg, (ca.repeat(rep), xa.repeat(rep)), clean_logp.repeat(rep, 1))
        for j, (p, h) in enumerate(cc):
            r = slice(j * n, (j + 1) * n)
            rows.append(dict(site=site, layer=layer, position=-1 if p is None else p,
                             head=-1 if h is None else h, ld=float(ld[r].sum()),
                             prob=float(pr[r].sum()), kl=float(kl[r].sum()), n=n))
        bar.update(rep)
    return rows
