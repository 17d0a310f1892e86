"""Activation patching: which activations does the model *use* for recall and state tracking?

    from interp import patching, tasks
    pairs = tasks.make_pairs("mqar", 64, seed=0)
    res = patching.sweep(model, pairs, sites=["resid_pre"])          # layer x position
    res = patching.sweep(model, pairs, sites=["rec.state"], layers=[2])  # state patched through the recurrence
    res.plot()                                                        # heatmap, attention layers marked

A clean/corrupted pair differs in one controlled fact (the task generators say which) and so in
the answer. **Denoising** runs the corrupted prompt and writes one clean activation into it;
**noising** runs the clean prompt and writes one corrupted activation. Metrics at the answer
position, reported for every patch:

* ``logit_diff``: normalised logit difference, (LD - LD_corrupted) / (LD_clean - LD_corrupted)
  with LD = logit[clean answer] - logit[corrupted answer] averaged over pairs (0 = corrupted run,
  1 = clean run; the IOI-paper convention, also TransformerLens' demos);
* ``prob``: mean probability of the clean answer;
* ``kl``: mean KL(clean run || patched run) of the next-token distribution.

Sites are hook names without the block prefix (``resid_pre``, ``mixer_out``, ``attn.head_out``,
``rec.state``, ...; see `hooks.names`). A patch is a *cell* (site, layer, position, head): position
``None`` = every position, head ``None`` = every head. ``rec.state`` cells replace the recurrent
state S_t (all heads or one head) and the corrupted run continues its recurrence from it, so later
tokens and layers see the change (TransformerLens' state hook only changes the same-position
read-out).

Speed, written by hand because neither TransformerLens nor nnsight does it: many cells run in one
forward pass (each block of batch rows carries a different cell); blocks before the patched layer
are not recomputed (`HookedModel.start_at` returns the unchanged run's block output); logits are
computed only at the answer position (`HookedModel.logits_at`). Work is split into units (a pair
chunk x a site and layer); each finished unit's sums are appended to ``<out>/units.csv`` so an
interrupted sweep resumes where it stopped.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import hooks
from hooks import names as HN
from interp import InterpError

METRICS = ("logit_diff", "prob", "kl")
DIRECTIONS = ("denoise", "noise")
RESID_SITES = ("resid_pre", "resid_mid", "resid_post", "mixer_out", "mlp_out")      # [B, T, D]
HEAD_SITES = ("attn.q", "attn.k", "attn.v", "attn.head_out",                         # [B, T, H, ...]
              "rec.q", "rec.k", "rec.v", "rec.decay", "rec.beta", "rec.readout", "rec.state")
SITES = RESID_SITES + HEAD_SITES + ("attn.pattern",)                                 # pattern: [B, H, T, T]


# --- results ------------------------------------------------------------------------------------
class PatchResult(pd.DataFrame):
    """One row per patched cell: model, task, direction, site, layer, layer_kind, position (-1 =
    all), head (-1 = all), logit_diff, prob, kl, raw_logit_diff, n. ``attrs['baselines']`` holds the
    clean and corrupted runs' metrics. ``.plot()`` draws a heatmap (layer x position, or site x
    position for one layer), attention layers marked; ``.ranked()`` sorts cells by effect."""

    _metadata = ["attrs"]

    @property
    def _constructor(self):
        return PatchResult

    def ranked(self, metric="logit_diff", k=20) -> pd.DataFrame:
        _check_choice("metric", metric, METRICS)
        key = (self[metric] - (0.0 if metric == "logit_diff" else self.attrs.get("baselines", {}).get(
            f"corrupted_{metric}", 0.0))).abs()
        cols = ["site", "layer", "layer_kind", "position", "token", "head", metric]
        cols = [c for c in cols if c in self.columns]
        return pd.DataFrame(self.loc[key.sort_values(ascending=False).index[:k], cols]).reset_index(drop=True)

    def plot(self, path=None, metric="logit_diff", title=None):
        import matplotlib
        if path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        _check_choice("metric", metric, METRICS)
        df = self[self.position >= 0]
        if df.empty:
            raise InterpError("nothing to plot: no per-position cells (plot needs position >= 0)")
        panels = list(dict.fromkeys(zip(df.model, df.direction)))
        one_layer = df.layer.nunique() == 1
        fig, axes = plt.subplots(len(panels), 1, squeeze=False,
                                 figsize=(min(18, 3 + 0.32 * df.position.nunique()), 1.2 + 0.45 * len(panels)
                                          * max(4, df.layer.nunique() if not one_layer else df.site.nunique())))
        for ax, (model, direction) in zip(axes[:, 0], panels):
            sub = df[(df.model == model) & (df.direction == direction)]
            if one_layer:
                rows = list(dict.fromkeys(sub.site + sub["head"].map(lambda h: "" if h < 0 else f"[h{h}]")))
                key = sub.site + sub["head"].map(lambda h: "" if h < 0 else f"[h{h}]")
                labels = rows
                kinds = {}
            else:
                key = sub.site + sub.layer.map(lambda i: f"|{i:03d}") + sub["head"].map(lambda h: "" if h < 0 else f"[h{h}]")
                rows = sorted(set(key))
                kinds = dict(zip(key, sub.layer_kind))
                lay = dict(zip(key, sub.layer))
                labels = [f"L{lay[r]} {kinds[r]}" + (f" {r.split('|')[0]}" if sub.site.nunique() > 1 else "")
                          + (r[r.index('['):] if '[' in r else "") for r in rows]
            pos = sorted(sub.position.unique())
            grid = np.full((len(rows), len(pos)), np.nan)
            ri, pi = {r: i for i, r in enumerate(rows)}, {p: i for i, p in enumerate(pos)}
            for r, p, v in zip(key, sub.position, sub[metric]):
                grid[ri[r], pi[p]] = v
            vmax = np.nanmax(np.abs(grid)) if metric == "logit_diff" else None
            im = ax.imshow(grid, aspect="auto", cmap="RdBu_r" if metric == "logit_diff" else "viridis",
                           vmin=-vmax if vmax else None, vmax=vmax, interpolation="nearest")
            ax.set_yticks(range(len(rows)), labels, fontsize=7)
            for t, r in zip(ax.get_yticklabels(), rows):
                if kinds.get(r, "").startswith("attn"):
                    t.set_color("C3")
                    t.set_fontweight("bold")
            toks = dict(zip(sub.position, sub["token"])) if "token" in sub else {}
            ax.set_xticks(range(len(pos)), [f"{toks.get(p, '')} {p}" for p in pos], rotation=90, fontsize=6)
            lyr = f" layer {sub.layer.iloc[0]} ({sub.layer_kind.iloc[0]})" if one_layer else ""
            ax.set_title(title or f"{model}: {direction} {metric}{lyr} (attention layers in red)", fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.02)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
            plt.close(fig)
        return fig


def _check_choice(what, value, valid):
    if value not in valid:
        raise InterpError(f"{what} '{value}' is not valid; valid: {', '.join(valid)}")


# --- planning -----------------------------------------------------------------------------------
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


# --- one patch ------------------------------------------------------------------------------------
def run_patched(model, base_tokens, source_tokens, site: str, layer: int, position=None, head=None):
    """Logits of ``base_tokens`` with ``blocks.{layer}.{site}`` at ``position`` (None = all) and
    ``head`` (None = all) taken from the run on ``source_tokens`` (same shape)."""
    hm = model if isinstance(model, hooks.HookedModel) else hooks.wrap(model)
    _check_choice("site", site, SITES)
    if not 0 <= int(layer) < hm.n_layers:
        raise InterpError(f"layer {layer} out of range 0..{hm.n_layers - 1}")
    name = f"blocks.{layer}.{site}"
    plan_cells(hm, site, layer, [], False, base_tokens.shape[1])  # validates site vs layer
    with torch.no_grad():
        _, src = hm.run_with_cache(source_tokens, names=[name])
        return hm.run_with_hooks(base_tokens, hooks=[(name, lambda x, _: _write(x, src[name], x.shape[0],
                                                                                [(position, head)], site))])


# --- the sweep ------------------------------------------------------------------------------------
def _answer_metrics(logits, pairs_rows, clean_logp=None):
    """logits [R, 1, V] at the answer -> (logit diff [R], p(clean answer) [R], KL(clean||run) [R])."""
    lg = logits[:, 0].float()
    ca, xa = pairs_rows
    ld = lg.gather(1, ca[:, None])[:, 0] - lg.gather(1, xa[:, None])[:, 0]
    logp = lg.log_softmax(-1)
    prob = logp.gather(1, ca[:, None])[:, 0].exp()
    kl = torch.zeros_like(ld) if clean_logp is None else (clean_logp.exp() * (clean_logp - logp)).sum(-1)
    return ld, prob, kl


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
    _check_choice("direction", direction, DIRECTIONS)
    hm = model if isinstance(model, hooks.HookedModel) else hooks.wrap(model)
    for s in sites:
        _check_choice("site", s, SITES)
    n_layers = hm.n_layers
    if layers is not None:
        for i in layers:
            if not 0 <= int(i) < n_layers:
                raise InterpError(f"layer {i} out of range 0..{n_layers - 1}")
    device = device or _model_device(hm)
    pairs = pairs.to(device)
    N, T = pairs.clean.shape
    if positions is not None:
        bad = [p for p in positions if not 0 <= int(p) < T]
        if bad:
            raise InterpError(f"position {bad[0]} out of range 0..{T - 1}")
    base_tok, src_tok = (pairs.corrupted, pairs.clean) if direction == "denoise" else (pairs.clean, pairs.corrupted)

    # units: (site, layer) with their cells; layers that lack a site are skipped when layers=None
    units = []
    for s in sites:
        for i in (range(n_layers) if layers is None else [int(x) for x in layers]):
            L = hm.layers[i]
            if layers is None and ((s.startswith("attn.") and L.attn is None) or (s.startswith("rec.") and L.rec is None)):
                continue
            units.append((s, i, plan_cells(hm, s, i, positions, heads, T)))
    if not units:
        raise InterpError(f"no layer of this model has site(s) {', '.join(sites)}")
    max_cells = max(len(c) for _, _, c in units)
    pair_chunk = max(1, min(N, batch_size))
    chunks = [(a, min(N, a + pair_chunk)) for a in range(0, N, pair_chunk)]

    store = _UnitStore(out, dict(sites=list(sites), layers=layers, positions=positions, heads=heads,
                                 direction=direction, n=N, T=T, model=model_name, meta=pairs.meta))
    todo = [(c, u) for c in range(len(chunks)) for u in range(len(units)) if not store.done(c, u)]
    if shard is not None:  # one process of a distributed sweep: only its share of the items
        items = [(c, u) for c in range(len(chunks)) for u in range(len(units))]
        mine = set(shard(items, {(c, u): len(units[u][2]) * (n_layers - units[u][1] if skip_prefix else n_layers)
                                 for c, u in items}))
        store.skip = set(items) - mine
        todo = [it for it in todo if it in mine]
    bar = _bar(len(todo) and sum(len(units[u][2]) for _, u in todo), progress, "patching")
    ans = pairs.answer_pos
    with torch.no_grad():
        base = {}
        for ci, (a, b) in enumerate(chunks):
            if not any(c == ci for c, _ in todo):
                continue
            sl = slice(a, b)
            n = b - a
            ca, xa = pairs.clean_answer[sl], pairs.corrupted_answer[sl]
            with hm.logits_at(ans[sl]):
                clean_lg, corr_lg = hm(pairs.clean[sl]), hm(pairs.corrupted[sl])
            clean_logp = clean_lg[:, 0].float().log_softmax(-1)
            for tag, lg in (("clean", clean_lg), ("corrupted", corr_lg)):
                ld, pr, kl = _answer_metrics(lg, (ca, xa), clean_logp)
                for k, v in (("ld", ld), ("prob", pr), ("kl", kl)):
                    base[f"{tag}_{k}"] = base.get(f"{tag}_{k}", 0.0) + float(v.sum())
            base["n"] = base.get("n", 0) + n
            store.add_base(ci, base)
            base_metrics = _answer_metrics(corr_lg if direction == "denoise" else clean_lg, (ca, xa), clean_logp)
            names = sorted({f"blocks.{i}.{s}" for s, i, _ in units})
            _, src_cache = hm.run_with_cache(src_tok[sl], names=names)
            outs = hm.block_outputs(base_tok[sl]) if skip_prefix else None
            win = {ui for ui, u in enumerate(units) if skip_prefix and _window_ok(hm, *u)}
            win_cache = _window_cache(hm, base_tok[sl], units, win)
            cells_per_fwd = max(1, batch_size // n)
            for ui, (site, layer, cells) in enumerate(units):
                if store.done(ci, ui):
                    continue
                name = f"blocks.{layer}.{site}"
                src = src_cache[name]
                rows = []
                if ui in win:  # only positions >= the patch, only rows the patch changes
                    rows = _window_unit(hm.model, win_cache, src, cells, site, layer, ans[sl], batch_size,
                                        (ca, xa), clean_logp, base_metrics)
                    bar.update(len(cells))
                    store.add(ci, ui, rows)
                    continue
                for c0 in range(0, len(cells), cells_per_fwd):
                    cc = cells[c0:c0 + cells_per_fwd]
                    rep = len(cc)
                    fn = (lambda x, _name, cc=cc: _write(x, src, n, cc, site))
                    ctx_start = hm.start_at(layer, outs[layer - 1], rep) if (skip_prefix and layer > 0) else _null()
                    with ctx_start, hm.logits_at(ans[sl].repeat(rep)):
                        lg = hm.run_with_hooks(base_tok[sl].repeat(rep, 1), hooks=[(name, fn)])
                    ld, pr, kl = _answer_metrics(lg, (ca.repeat(rep), xa.repeat(rep)), clean_logp.repeat(rep, 1))
                    for j, (p, h) in enumerate(cc):
                        r = slice(j * n, (j + 1) * n)
                        rows.append(dict(site=site, layer=layer, position=-1 if p is None else p,
                                         head=-1 if h is None else h, ld=float(ld[r].sum()),
                                         prob=float(pr[r].sum()), kl=float(kl[r].sum()), n=n))
                    bar.update(rep)
                store.add(ci, ui, rows)
            base = {}
    bar.close()
    if shard is not None:
        return None
    return _assemble(store.frame(), store.baselines(), hm, pairs, model_name, direction, max_cells)


def _window_ok(hm, site, layer, cells) -> bool:
    """Fast path: a resid_pre patch at one position in a zoo model whose layers from ``layer`` on
    are all attention. Only positions >= the patched one change, so the forward runs on the
    suffix window with the unchanged run's keys/values as a KV cache (`HybridLM.forward_window`)."""
    m = hm.model
    return (site == "resid_pre" and hm.adapter.family == "zoo" and hasattr(m, "forward_window")
            and all(k == "attn" for k in m.config.layers[layer:])
            and all(p is not None and h is None for p, h in cells))


def _window_cache(hm, tokens, units, win):
    if not win:
        return None
    lo = min(units[u][1] for u in win)
    names = {f"blocks.{i}.attn.{kv}" for i in range(lo, hm.n_layers) for kv in "kv"}
    names |= {f"blocks.{units[u][1]}.resid_pre" for u in win}
    return hm.run_with_cache(tokens, names=sorted(names))[1]


def _window_unit(model, cache, src, cells, site, layer, ans, batch_size, answers, clean_logp, base_metrics):
    """All cells of one resid_pre unit on the window path. A row (pair) whose patched activation
    equals the unchanged one (e.g. every position before the changed fact) is not run: its
    metrics are the unchanged run's, exactly. The rest run in groups of <= batch_size rows, each
    group on the window from its first position."""
    base = cache[f"blocks.{layer}.resid_pre"]
    n = base.shape[0]
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
        kv = {i: tuple(cache[f"blocks.{i}.attn.{t}"][idx, :p0] for t in "kv") for i in range(layer, len(model.blocks))}
        a = ans[idx]
        lg = model.forward_window(x, layer, p0, kv, at=(a - p0).clamp(min=0))
        got = _answer_metrics(lg, (answers[0][idx], answers[1][idx]), clean_logp[idx])
        reach = a >= p0  # answers before the window: the patch cannot reach them
        o = 0
        for p, act, c in grp:
            sl = slice(o, o + len(act))
            o += len(act)
            for m, g in zip(sums[c], got):
                m[act[reach[sl]]] = g[sl][reach[sl]]
    return [dict(site=site, layer=layer, position=p, head=-1, ld=float(s_[0].sum()), prob=float(s_[1].sum()),
                 kl=float(s_[2].sum()), n=n) for (p, _), s_ in zip(cells, sums)]


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _model_device(hm):
    for p in hm.model.parameters():
        return p.device
    return torch.device("cpu")


def _bar(total, progress, desc):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="cell", disable=not progress, leave=False)


class _UnitStore:
    """Per-unit sums; in memory, or appended to ``out/units.csv`` (+ baselines) for resuming."""

    def __init__(self, out, spec):
        self.rows, self.base, self.keys = [], [], set()
        self.skip = set()  # items another process of a distributed sweep runs
        self.out = None if out is None else Path(out)
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        sp = self.out / "spec.json"
        spec = json.loads(json.dumps(spec, default=str))
        if sp.exists():
            old = json.loads(sp.read_text())
            if old != spec:
                diff = [k for k in spec if old.get(k) != spec.get(k)]
                raise InterpError(f"{self.out} holds a sweep with different settings ({', '.join(diff)}); "
                                  "use another --out or delete it")
        else:
            sp.write_text(json.dumps(spec, indent=1))
        uf, bf = self.out / "units.csv", self.out / "baselines.csv"
        if uf.exists():
            df = pd.read_csv(uf)
            self.rows = df.to_dict("records")
            self.keys = set(zip(df.chunk, df.unit))
        if bf.exists():
            self.base = pd.read_csv(bf).to_dict("records")

    def done(self, c, u):
        return (c, u) in self.keys or (c, u) in self.skip

    def add_base(self, c, base):
        if any(b["chunk"] == c for b in self.base):
            return
        self.base.append(dict(chunk=c, **base))
        self._append("baselines.csv", [self.base[-1]])

    def add(self, c, u, rows):
        rows = [dict(chunk=c, unit=u, **r) for r in rows]
        self.rows += rows
        self.keys.add((c, u))
        self._append("units.csv", rows)

    def _append(self, fname, rows):
        if self.out is not None:
            f = self.out / fname
            pd.DataFrame(rows).to_csv(f, mode="a", index=False, header=not f.exists())

    def frame(self):
        return pd.DataFrame(self.rows)

    def baselines(self):
        b = pd.DataFrame(self.base).drop_duplicates("chunk")
        return b.drop(columns="chunk").sum().to_dict()


def _assemble(units, base, hm, pairs, model_name, direction, _):
    g = units.groupby(["site", "layer", "position", "head"], sort=False)[["ld", "prob", "kl", "n"]].sum().reset_index()
    n = base["n"]
    ld_clean, ld_corr = base["clean_ld"] / n, base["corrupted_ld"] / n
    denom = ld_clean - ld_corr
    if abs(denom) < 1e-6:
        raise InterpError(f"clean and corrupted runs have the same mean logit difference ({ld_clean:.4f}): "
                          "the model does not tell the pair apart, so normalised effects are undefined")
    from interp.tasks import VOCAB
    tok0 = pairs.clean[0].tolist()
    res = PatchResult(dict(
        model=model_name, task=pairs.meta.get("task", ""), direction=direction, site=g.site,
        layer=g.layer.astype(int), layer_kind=[layer_kind(hm.layers[i]) for i in g.layer],
        position=g.position.astype(int), token=[VOCAB.decode([tok0[p]])[0] if p >= 0 and _is_zoo_vocab(hm) else ""
                                                for p in g.position],
        head=g["head"].astype(int), logit_diff=(g.ld / g.n - ld_corr) / denom, prob=g.prob / g.n,
        kl=g.kl / g.n, raw_logit_diff=g.ld / g.n, n=g.n.astype(int)))
    res.attrs["baselines"] = {"clean_logit_diff": ld_clean, "corrupted_logit_diff": ld_corr,
                              "clean_prob": base["clean_prob"] / n, "corrupted_prob": base["corrupted_prob"] / n,
                              "corrupted_kl": base["corrupted_kl"] / n, "n": int(n)}
    return res


def _is_zoo_vocab(hm):
    return hm.adapter.family == "zoo"


# --- merging the parts of a distributed sweep (interp.distributed) ------------------------------
def merge_units(dirs, out=None):
    """Merge the unit sums that several processes wrote (each ran a share of one sweep, see
    ``sweep(shard=)``; one directory each) into what a single-process sweep writes: a unit found
    in several directories is taken from the first, rows are ordered by (chunk, unit) as one
    process runs them, floats are read back exactly. Returns (units, baselines) DataFrames; with
    ``out`` also writes ``out/units.csv``, ``baselines.csv`` and ``spec.json`` (a single-process
    ``sweep(out=out)`` then finds every unit done)."""
    specs, units, bases, seen = {}, [], [], set()
    for d in map(Path, dirs):
        if (d / "spec.json").is_file():
            specs[str(d)] = json.loads((d / "spec.json").read_text())
        if (d / "units.csv").is_file():
            df = read_csv_exact(d / "units.csv")
            key = list(zip(df.chunk, df.unit))
            df = df[[k not in seen for k in key]]
            seen |= set(key)
            units.append(df)
        if (d / "baselines.csv").is_file():
            bases.append(read_csv_exact(d / "baselines.csv"))
    if len({json.dumps(v, sort_keys=True) for v in specs.values()}) > 1:
        raise InterpError(f"the parts to merge hold sweeps with different settings: {', '.join(specs)}")
    if not units or not bases:
        raise InterpError(f"nothing to merge in {', '.join(map(str, dirs))}")
    u = pd.concat(units, ignore_index=True).sort_values(["chunk", "unit"], kind="stable").reset_index(drop=True)
    b = pd.concat(bases, ignore_index=True).drop_duplicates("chunk").sort_values("chunk", kind="stable")
    b = b.reset_index(drop=True)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        if specs:
            (out / "spec.json").write_text(json.dumps(next(iter(specs.values())), indent=1))
        for name, df in (("units.csv", u), ("baselines.csv", b)):
            df.to_csv(out / (name + ".tmp"), index=False)
            (out / (name + ".tmp")).replace(out / name)
    return u, b


def read_csv_exact(path) -> pd.DataFrame:
    """pd.read_csv with floats read back bit for bit (pandas >= 3 does by default)."""
    if int(pd.__version__.split(".")[0]) < 3:
        return pd.read_csv(path, float_precision="round_trip")
    return pd.read_csv(path)


def assemble_units(units, baselines, model, pairs, model_name="model", direction="denoise") -> PatchResult:
    """The PatchResult of a sweep from its unit sums and per-chunk baselines (`merge_units`)."""
    hm = model if isinstance(model, hooks.HookedModel) else hooks.wrap(model)
    base = baselines.drop_duplicates("chunk").drop(columns="chunk").sum().to_dict()
    return _assemble(units, base, hm, pairs, model_name, direction, None)


# --- attribution patching (gradient screen) -----------------------------------------------------
def attribution(model, pairs, sites=("resid_pre",), layers=None, heads=False, model_name="model",
                device=None) -> PatchResult:
    """First-order estimate of the *denoising* effect of every cell, from one forward and one
    backward pass (Nanda's attribution patching): effect(a) ~ (a_clean - a_corrupted) . dLD/da at
    the corrupted run, normalised like ``logit_diff``. Same frame as `sweep` (``logit_diff`` holds
    the estimate; ``prob`` and ``kl`` are NaN). ``rec.state`` is not on the forward path of the
    kernels (states are recomputed beside it), so it has no gradient here: use `sweep` for it."""
    hm = model if isinstance(model, hooks.HookedModel) else hooks.wrap(model)
    for s in sites:
        _check_choice("site", s, SITES)
        if s in ("rec.state", "attn.pattern"):
            raise InterpError(f"attribution does not support site '{s}' (not on the gradient path of "
                              "the fused ops); use patching.sweep for it")
    device = device or _model_device(hm)
    pairs = pairs.to(device)
    N, T = pairs.clean.shape
    names = []
    for s in sites:
        for i in (range(hm.n_layers) if layers is None else [int(x) for x in layers]):
            if not 0 <= i < hm.n_layers:
                raise InterpError(f"layer {i} out of range 0..{hm.n_layers - 1}")
            L = hm.layers[i]
            if (s.startswith("attn.") and L.attn is None) or (s.startswith("rec.") and L.rec is None):
                if layers is not None:
                    plan_cells(hm, s, i, None, False, T)  # raises the clear error
                continue
            names.append((s, i, f"blocks.{i}.{s}"))
    ans, ca, xa = pairs.answer_pos, pairs.clean_answer, pairs.corrupted_answer
    with torch.no_grad(), hm.logits_at(ans):
        _, clean_cache = hm.run_with_cache(pairs.clean, names=[n for *_, n in names])
        ld_clean = _answer_metrics(hm(pairs.clean), (ca, xa))[0].mean()
    grads, acts = {}, {}

    def grab(x, name):
        y = x + 0          # a fresh node on the graph: its grad is dLD/d(activation)
        y.retain_grad()
        acts[name] = y
        return y

    def leaf_embed(x, name):  # makes the graph start at the embeddings even with frozen weights
        return x.detach().requires_grad_(True)
    with torch.enable_grad(), hm.logits_at(ans), _reference_scans(hm):
        lg = hm.run_with_hooks(pairs.corrupted, hooks=[("embed", leaf_embed)] + [(n, grab) for *_, n in names])
        ld = _answer_metrics(lg, (ca, xa))[0]
        ld.sum().backward()
    for *_, n in names:
        grads[n] = acts[n].grad.detach()
    ld_corr = float(ld.mean().detach())
    denom = float(ld_clean) - ld_corr
    rows = []
    for s, i, n in names:
        d = (clean_cache[n].float() - acts[n].detach().float()) * grads[n].float()  # [N, ...]
        if s == "attn.pattern":
            continue
        per = d.sum(0)                                   # [T, (H, ...)]
        if s in RESID_SITES or not heads:
            v = per.reshape(T, -1).sum(-1) / N
            rows += [dict(site=s, layer=i, position=p, head=-1, ld=float(v[p])) for p in range(T)]
        else:
            v = per.reshape(T, per.shape[1], -1).sum(-1) / N
            rows += [dict(site=s, layer=i, position=p, head=h, ld=float(v[p, h]))
                     for h in range(per.shape[1]) for p in range(T)]
    df = pd.DataFrame(rows)
    from interp.tasks import VOCAB
    tok0 = pairs.clean[0].tolist()
    res = PatchResult(dict(
        model=model_name, task=pairs.meta.get("task", ""), direction="attribution", site=df.site,
        layer=df.layer, layer_kind=[layer_kind(hm.layers[i]) for i in df.layer], position=df.position,
        token=[VOCAB.decode([tok0[p]])[0] if _is_zoo_vocab(hm) else "" for p in df.position],
        head=df["head"], logit_diff=df.ld / denom, prob=np.nan, kl=np.nan, raw_logit_diff=df.ld, n=N))
    res.attrs["baselines"] = {"clean_logit_diff": float(ld_clean), "corrupted_logit_diff": ld_corr, "n": N}
    return res


class _reference_scans:
    """Zoo models on CUDA: run the backward through the pure-torch reference scans. fla 0.6.0
    refuses its gated chunk backward on Hopper with Triton < 3.7.1 (fla issue #640); the reference
    computes the same recurrence."""

    def __init__(self, hm):
        m = hm.model
        self.m = m if hasattr(m, "set_scan_backend") and _model_device(hm).type == "cuda" else None

    def __enter__(self):
        if self.m is not None:
            self.saved = [(mod, mod.scan_fn) for mod in self.m.modules() if hasattr(mod, "scan_fn")]
            self.m.set_scan_backend("reference")

    def __exit__(self, *a):
        if self.m is not None:
            for mod, fn in self.saved:
                mod.scan_fn = fn
        return False
