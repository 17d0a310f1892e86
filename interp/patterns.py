"""Who reads the fact: per layer and head, the share of the answer position's pattern that falls on the task's
ground-truth source token, for softmax attention and recurrent mixers alike; and single-example pattern figures.

Patterns are the hook points ``blocks.{i}.attn.pattern`` (softmax weights) and ``blocks.{i}.rec.pattern`` (the
exact effective attention of a recurrent layer, `hooks.effective`: readout_t = sum_s A[t, s] v_s + D v_t), both
read at the answer rows only (``positions=``). For a head with pattern A, answer row t and source token src:

    weight share = |A[t, src]| / sum_{s <= t} |A[t, s]|
    value share  = ||A[t, src] v_src|| / sum_{s <= t} ||A[t, s] v_s|| = |A[t, src]| ||v_src|| / sum_s |A[t, s]| ||v_s||

The weight share is the map's measure. For softmax heads it *is* the attention weight on src, so attention and
recurrent heads are read on one scale. A recurrent A is signed (the delta rule's key removal) and does not sum to
1: the share is the fraction of the row's |A| mass on src. The value share weighs each source by the size of the
vector it adds (the per-source contribution norms of `hooks.effective.contributions`). Neither counts the skip
D v_t of Mamba layers. Mamba1 layers have one pattern per channel, not per head: not mapped (use `contributions`).

Ground-truth source (`fact_sources`): mqar, the value token bound to the queried key; state_recall, the value token
of the last statement that wrote the queried variable (with ``complexity=assign``, the default here, the answer).
Only answers the model gets right are kept; intervals are 95% bootstraps over examples (`interp.stats.boot_ci`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

import hooks
from hooks.core import HookedModel
from interp import InterpError
from interp import tasks as T
from interp.stats import boot_ci
from interp.figsave import save_fig
from interp.store import atomic_write_text, save_csv
from interp.tasks.vocab import PAD

SOURCE_TASKS = ("mqar", "state_recall")
DEFAULT_KNOBS = {"mqar": {}, "state_recall": {"complexity": "assign"}}
PER_CHANNEL = ("mamba1", "shortconv", "wkv")   # recurrences with one pattern per channel, not per head


def _hm(model) -> HookedModel:
    return model if isinstance(model, HookedModel) else hooks.wrap(model)


# --- the fact and where it sits --------------------------------------------------------------------
def fact_sources(batch) -> tuple[list[int], torch.Tensor]:
    """(rows, src): the answer rows (positions whose next token is an answer; the same in every example)
    and the ground-truth source position of each answer ``[N, Q]`` (module docstring)."""
    task = batch.meta.get("task")
    if task not in SOURCE_TASKS:
        raise InterpError(f"no ground-truth source token for task '{task}'; valid: {', '.join(SOURCE_TASKS)}")
    ap = batch.answer_pos
    if (ap < 0).any() or not bool((ap == ap[:1]).all()):
        raise InterpError("the answer positions differ between examples; use a fixed-length batch "
                          "(mqar without seq_len varies nothing, state_recall never does)")
    if task == "mqar":          # write_distance at a query key: tokens since its key was written
        src = ap - batch.labels["write_distance"].gather(1, ap) + 1
    else:
        if batch.meta["knobs"].get("cot") or batch.meta["knobs"].get("query_first"):
            raise InterpError("state_recall with cot=True or query_first=True is not supported here (its layout "
                              "differs)")
        Tn = batch.tokens.shape[1]
        since = batch.labels["steps_since_write"][:, Tn - 2]        # statements since xq last changed
        S = (Tn - 4) // 4                                           # <bos>, S statements of 4, '? xq a'
        src = (1 + 4 * (S - since - 1) + 2)[:, None]                # the third token of that statement
    return ap[0].tolist(), src


def example_marks(batch, example: int) -> tuple[list[int], list[int]]:
    """(answer rows, their ground-truth sources) of one example, for marking a figure; no sources (and
    the answer rows alone) for a task without them."""
    one = replace(batch, labels={k: v[example:example + 1] for k, v in batch.labels.items()}, **{
        f: getattr(batch, f)[example:example + 1] for f in ("tokens", "answer_pos", "answers", "loss_mask")})
    k = batch.meta["knobs"]
    if batch.meta.get("task") not in SOURCE_TASKS or k.get("cot") or k.get("query_first"):
        return [int(p) for p in one.answer_pos[0] if p >= 0], []
    rows, src = fact_sources(one)
    return rows, src[0].tolist()


# --- per-head shares --------------------------------------------------------------------------------
class Unit(NamedTuple):
    layer: int
    kind: str           # 'attn' or the recurrence family
    pattern: str        # its pattern hook name
    v: str              # its value hook name


def units(hm) -> list[Unit]:
    """The attention and multi-head recurrent mixers of a model, in layer order (a parallel layer has both)."""
    out = []
    for L in hm.layers:
        p = f"blocks.{L.index}"
        if L.attn is not None:
            out.append(Unit(L.index, "attn", f"{p}.attn.pattern", f"{p}.attn.v"))
        if L.rec is not None:
            if L.rec_family in PER_CHANNEL:
                raise InterpError(f"layer {L.index} is {L.rec_family}: its effective attention is one pattern per "
                                  "channel, not per head; use interp.patterns.contributions for it")
            out.append(Unit(L.index, L.rec_family, f"{p}.rec.pattern", f"{p}.rec.v"))
    return out


def _shares(A, v, src):
    """Weight and value shares ``[N, Q, H]`` from a pattern ``[N, H, Q, T]``, values ``[N, T, Hv, Dv]``
    (Hv divides H: GQA groups are repeated) and sources ``[N, Q]``."""
    H = A.shape[1]
    vn = v.float().norm(dim=-1)
    vn = vn.repeat_interleave(H // vn.shape[2], dim=2) if vn.shape[2] != H else vn
    W = A.float().abs()
    C = W * vn.permute(0, 2, 1)[:, :, None, :]
    idx = src[:, None, :, None].expand(-1, H, -1, 1).to(A.device)
    share = lambda M: (M.gather(-1, idx)[..., 0] / M.sum(-1).clamp_min(1e-30)).permute(0, 2, 1)  # noqa: E731
    return share(W), share(C)


def head_shares(model, tokens, rows, src, batch_size: int = 64):
    """(preds ``[N, Q]``, {unit: (weight share, value share) ``[N, Q, H]``}): one forward per batch with
    the patterns cached at ``rows`` only and the values read (whole) by hook functions."""
    hm = _hm(model)
    us = units(hm)
    preds, out = [], {u: ([], []) for u in us}
    for a in range(0, tokens.shape[0], batch_size):
        vs = {}
        grab = lambda x, name: vs.__setitem__(name, x.detach())  # noqa: E731
        with torch.no_grad():
            lg, cache = hm.run_with_cache(tokens[a:a + batch_size], names=[u.pattern for u in us], positions=rows,
                                          hooks=[(u.v, grab) for u in us])
        preds.append(lg[:, rows].argmax(-1).cpu())
        for u in us:
            for got, x in zip(out[u], _shares(cache[u.pattern], vs[u.v], src[a:a + batch_size])):
                got.append(x.cpu())
    return torch.cat(preds), {u: (torch.cat(w), torch.cat(c)) for u, (w, c) in out.items()}


@dataclass
class WhoReads:
    """Per (layer, kind, head): mean weight / value share on the source over the kept answers with 95%
    bootstrap intervals (``table``), from ``n`` examples of which ``kept`` answers (of ``items``) were right;
    ``uniform``: the share a flat row would give, 1/(t+1) averaged over the answer rows t."""
    model: str
    task: str
    knobs: dict
    seed: int
    n: int
    items: int
    kept: int
    uniform: float
    table: object = field(repr=False)     # pandas DataFrame


def _mean_ci(x, keep, n_boot, rng):
    sums = (x * keep).sum(1).numpy().astype(float)
    counts = keep.sum(1).numpy().astype(float)
    mean = sums.sum() / max(counts.sum(), 1e-12)
    return (mean, *boot_ci(sums, counts, n_boot, rng))


def who_reads(model, task: str, n: int = 128, seed: int = 0, name: str = "model", batch_size: int = 64,
              n_boot: int = 2000, knobs=None) -> WhoReads:
    """The who-reads-the-fact table of one model on one task (module docstring). ``knobs``: task knobs
    (default `DEFAULT_KNOBS`)."""
    import pandas as pd
    for what, v, lo in (("n", n, 2), ("n_boot", n_boot, 1), ("batch_size", batch_size, 1)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:   # (n: an interval needs two)
            raise InterpError(f"{what}={v!r} is out of range; valid: integers >= {lo}")
    knobs = dict(DEFAULT_KNOBS.get(task, {}) if knobs is None else knobs)
    batch = T.generate(task, n, seed=seed, **knobs)
    rows, src = fact_sources(batch)
    preds, sh = head_shares(model, batch.tokens, rows, src, batch_size)
    keep = (preds == batch.answers).float()
    rng = np.random.default_rng(seed)
    recs = []
    for u, (w, c) in sh.items():
        for h in range(w.shape[-1]):
            m, lo, hi = _mean_ci(w[..., h], keep, n_boot, rng)
            vm, vlo, vhi = _mean_ci(c[..., h], keep, n_boot, rng)
            recs.append(dict(model=name, task=task, layer=u.layer, kind=u.kind, head=h, share=m, lo=lo, hi=hi,
                             value_share=vm, value_lo=vlo, value_hi=vhi))
    return WhoReads(name, task, batch.meta["knobs"], seed, n, keep.numel(), int(keep.sum()),
                    float(np.mean([1 / (t + 1) for t in rows])), pd.DataFrame(recs))


# --- per-source contribution vectors ----------------------------------------------------------------
class Contributions(NamedTuple):
    """``contributions`` A[t, s] v_s ``[B, P, T, H, V]`` (Mamba1 ``[B, P, T, D]``), the layer's ``readout`` at
    those rows ``[B, P, H, V]`` (Mamba1 ``[B, P, D]``) and ``rest`` = readout - sum_s contributions (the
    skip D v_t of Mamba layers; zero for GDN / GLA), for query rows ``positions``."""
    contributions: torch.Tensor
    readout: torch.Tensor
    rest: torch.Tensor
    positions: list


def contributions(model, tokens, layer: int, positions) -> Contributions:
    """What each source token adds to recurrent layer ``layer``'s readout at the query ``positions``: one
    forward with ``rec.pattern`` and ``rec.readout`` cached at ``positions`` and the whole ``rec.v`` read by a
    hook function; exact (`hooks.effective`), contributions.sum(2) + rest == readout."""
    hm = _hm(model)
    if not 0 <= layer < hm.n_layers or hm.layers[layer].rec is None:
        raise InterpError(f"layer {layer} has no recurrent mixer; recurrent layers: "
                          f"{[L.index for L in hm.layers if L.rec is not None]}")
    positions = [int(p) for p in positions]
    p, vs = f"blocks.{layer}.rec", {}
    with torch.no_grad():
        _, cache = hm.run_with_cache(tokens, names=[f"{p}.pattern", f"{p}.readout"], positions=positions,
                                     hooks=[(f"{p}.v", lambda x, name: vs.__setitem__("v", x.detach()))])
    A, v = cache[f"{p}.pattern"], vs["v"].float().to(cache[f"{p}.pattern"].device)
    con = torch.einsum("bdps,bsd->bpsd" if hm.layers[layer].rec_family in PER_CHANNEL else "bhps,bshv->bpshv", A, v)
    o = cache[f"{p}.readout"].float()
    return Contributions(con, o, o - con.sum(2), positions)


# --- one example's pattern --------------------------------------------------------------------------
def _read_patterns(hm, toks, mixers) -> list:
    """The pattern ``[H, T, T]`` (numpy) of each ``(layer, 'attn' | 'rec')`` in ``mixers``, all from one
    forward of ``toks`` ``[1, T]``; Mamba1 layers give their reduced view (`example_pattern`)."""
    vs = {}
    grab = lambda i: (lambda x, n: vs.__setitem__(i, x.detach()))  # noqa: E731
    names = [f"blocks.{i}.{k}.pattern" for i, k in mixers]
    fns = [(f"blocks.{i}.rec.v", grab(i)) for i, k in mixers if k == "rec" and hm.layers[i].rec_family in PER_CHANNEL]
    with torch.no_grad():
        _, cache = hm.run_with_cache(toks, names=names, hooks=fns)
    out = []
    for (i, k), name in zip(mixers, names):
        A = cache[name][0].float()
        if k == "rec" and i in vs:                                   # Mamba1's reduced view
            A = (A * vs[i][0].float().T[:, None, :]).norm(dim=0, keepdim=True)
        out.append(A.cpu().numpy())
    return out


def _example_tokens(batch, example: int):
    if not isinstance(example, (int, np.integer)) or isinstance(example, bool) or not 0 <= example < len(batch):
        raise InterpError(f"example {example!r} out of range; valid: 0..{len(batch) - 1}")
    toks = batch.tokens[example]
    return toks[:int((toks != PAD).nonzero().max()) + 1][None]


def _kind(L, kind) -> str:
    return "attn" if kind == "attn" else L.rec_family


def check_mixer(model, layer, kind: str | None = None) -> str:
    """The mixer ``kind`` ('attn' or 'rec'; left out: the only one) of ``layer``, else an InterpError saying why."""
    hm = _hm(model)
    if not isinstance(layer, (int, np.integer)) or isinstance(layer, bool) or not 0 <= layer < hm.n_layers:
        raise InterpError(f"layer {layer!r} out of range; valid: integers 0..{hm.n_layers - 1}")
    L = hm.layers[layer]
    have = [k for k, m in (("attn", L.attn), ("rec", L.rec)) if m is not None]
    kind = kind or (have[0] if len(have) == 1 else None)
    if kind not in have:
        raise InterpError(f"layer {layer} has {' and '.join(have) or 'no attention or recurrent mixer'}"
                          f"{f', not {kind}' if kind else ': pick one'}; valid: {', '.join(have) or 'another layer'}")
    return kind


def example_pattern(model, batch, layer: int, example: int = 0, kind: str | None = None):
    """(pattern ``[H, T, T]`` as numpy, kind, words) of one example at ``layer``: the softmax pattern
    (``kind='attn'``) or the recurrent layer's effective attention (``kind='rec'``; Mamba1: the reduced
    view, the norm over channels of A[d, t, s] x_s[d], one map). ``kind`` may be left out where the layer
    has one mixer (`check_mixer`)."""
    hm = _hm(model)
    kind = check_mixer(hm, layer, kind)
    toks = _example_tokens(batch, example)
    A, = _read_patterns(hm, toks, [(layer, kind)])
    return A, _kind(hm.layers[layer], kind), batch.words(example)[:toks.shape[1]]


def example_patterns(model, batch, example: int = 0):
    """([(layer, kind, pattern ``[H, T, T]``)], words): every attention and recurrent mixer's pattern of one
    example (`example_pattern`'s, a parallel layer giving both), in layer order, from one forward."""
    hm = _hm(model)
    toks = _example_tokens(batch, example)
    mixers = [(L.index, k) for L in hm.layers for k, m in (("attn", L.attn), ("rec", L.rec)) if m is not None]
    if not mixers:
        raise InterpError("this model has no attention or recurrent mixer to draw")
    As = _read_patterns(hm, toks, mixers)
    return ([(i, _kind(hm.layers[i], k), A) for (i, k), A in zip(mixers, As)],
            batch.words(example)[:toks.shape[1]])


# --- figures and the report -------------------------------------------------------------------------
def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _label_axes(ax, words, rows=(), src=()):
    """Tokens on both axes (every k-th for long sequences); answer rows' labels orange, sources' green."""
    Tn = len(words)
    step = max(1, -(-Tn // 60))
    fs = max(3.5, min(8.0, 360 / max(Tn, 1)))
    ticks = sorted(set(range(0, Tn, step)) | set(rows) | set(src))
    ax.set_xticks(ticks, [words[t] for t in ticks], rotation=90, fontsize=fs)
    ax.set_yticks(ticks, [f"{words[t]} {t}" for t in ticks], fontsize=fs)
    for labels, marked, color in ((ax.get_yticklabels(), rows, "darkorange"), (ax.get_xticklabels(), src, "green")):
        for t, lab in zip(ticks, labels):
            if t in marked:
                lab.set_color(color)
                lab.set_fontweight("bold")


def _check_drawing(A, words, rows, src):
    """An InterpError unless ``A`` is a pattern [H >= 1, T, T] of T ``words`` and the marks lie in 0..T-1."""
    shape = tuple(getattr(A, "shape", ()))
    if len(shape) != 3 or 0 in shape or shape[1] != shape[2] or shape[2] != len(words):
        raise InterpError(f"a pattern of shape {shape} with {len(words)} words; valid: [H >= 1, T, T] with T words")
    bad = [t for t in [*rows, *src] if not isinstance(t, (int, np.integer)) or not 0 <= t < shape[2]]
    if bad:
        raise InterpError(f"marked row or source {bad[0]!r} is out of range; valid: positions 0..{shape[2] - 1}")


def _what(kind: str) -> str:
    return "softmax weights" if kind == "attn" else ("||A[d,t,s] x_s[d]||_d" if kind in PER_CHANNEL
                                                     else f"{kind} effective attention A (signed)")


def plot_pattern(A, kind: str, words, path, title: str = "", rows=(), src=()):
    """One panel per head of a pattern ``[H, T, T]`` (query rows down, source tokens across), tokens on
    both axes; the labels of the answer ``rows`` are orange, those of their sources green, and each
    (row, ``src``) cell is outlined in green. Softmax weights and Mamba1's norms on a white-blue scale from
    0, a recurrent A on a red-blue scale centred at 0 (it is signed). Writes ``path`` (png), returns it."""
    from matplotlib.patches import Rectangle
    _check_drawing(A, words, rows, src)
    plt = _plt()
    H, Tn = A.shape[0], A.shape[-1]
    ncol = min(H, 2 if H <= 4 else 4)
    nrow, side = -(-H // ncol), min(7.0, max(3.8, Tn * 0.11))
    fig, axes = plt.subplots(nrow, ncol, figsize=(side * ncol + 1, side * nrow + 0.6), squeeze=False)
    signed, what = kind not in ("attn",) + PER_CHANNEL, _what(kind)
    for ax in axes.flat[H:]:
        ax.axis("off")
    for h, ax in enumerate(axes.flat[:H]):
        m = float(np.abs(A[h]).max()) or 1.0
        im = ax.imshow(A[h], cmap="RdBu_r" if signed else "Blues", vmin=-m if signed else 0, vmax=m,
                       interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        _label_axes(ax, words, rows, src)
        for r, s in zip(rows, src):
            ax.add_patch(Rectangle((s - 0.5, r - 0.5), 1, 1, fill=False, ec="lime", lw=1.8))
        ax.set_title(f"head {h}: {what}" if H > 1 else what, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_fig(fig, path, dpi=120)
    plt.close(fig)
    return Path(path)


def circuitsvis_js() -> str:
    """circuitsvis's bundled JavaScript (``dist/cdn/iife.js``, what its own offline rendering inlines)."""
    try:
        import circuitsvis
    except ImportError:
        raise InterpError("the interactive HTML view needs circuitsvis: pip install circuitsvis") from None
    f = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    if not f.is_file():
        raise InterpError(f"circuitsvis {getattr(circuitsvis, '__version__', '?')} has no bundled {f.name}: "
                          "pip install circuitsvis==1.43.3")
    return f.read_text(encoding="utf-8").replace("</script", "<\\/script")


def _panel(n: int, layer: int, kind: str, A, words) -> list[str]:
    """One circuitsvis AttentionHeads view: heading, its div and the script that renders into it."""
    import html
    import json
    m = float(np.abs(A).max()) or 1.0
    signed = kind not in ("attn",) + PER_CHANNEL
    props = dict(attention=np.round(A.astype(np.float64), max(0, 4 - int(np.floor(np.log10(m))))).tolist(),
                 tokens=[str(w) for w in words], maskUpperTri=True, maxValue=m, minValue=-m if signed else 0.0,
                 attentionHeadNames=[f"L{layer} h{h}" for h in range(A.shape[0])],
                 positiveColor="red" if signed else "blue", negativeColor="blue")
    scale = f"blue &lt; 0 &lt; red, |A| up to {m:.3g}" if signed else f"0 to {m:.3g}"
    js = json.dumps(props).replace("</", "<\\/").replace("<!--", "<\\u0021--")  # nothing that ends a script
    return [f"<h3>layer {layer}: {html.escape(_what(kind))} ({scale})</h3>", f'<div id="p{n}"></div>',
            f"<script>CircuitsVis.render('p{n}', CircuitsVis.AttentionHeads, {js});</script>"]


def pattern_html(panels, words, path, title: str = "", rows=(), src=()):
    """An interactive page of one example's patterns, one circuitsvis ``AttentionHeads`` view per panel (click a
    head to enlarge it, hover a cell for its value), its JavaScript inlined (opens offline). ``panels``: [(layer,
    kind, A ``[H, T, T]``)] (`example_patterns`); colours as in `plot_pattern`, one scale per panel, values to 4
    significant digits of its max; the answer ``rows`` and their sources ``src`` listed above the views. Needs
    circuitsvis (else an InterpError naming ``pip install circuitsvis``). Writes ``path`` (html), returns it."""
    import html
    for _, _, A in panels:
        _check_drawing(A, words, rows, src)
    js = circuitsvis_js()
    body = [f"<h2>{html.escape(title)}</h2>"] if title else []
    w = [html.escape(repr(str(x))) for x in words]
    if rows:
        marks = [f"{r} {w[r]}" + (f" &rarr; source {s} {w[s]}" if s is not None else "")
                 for r, s in zip(rows, [*src, *[None] * len(rows)])]
        body.append(f"<p>answer rows: {'; '.join(marks)}</p>")
    for n, (layer, kind, A) in enumerate(panels):
        body += _panel(n, layer, kind, A, words)
    page = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8">', f"<title>{html.escape(title or 'patterns')}</title>",
            f"<script>{js}</script>", '</head><body style="font-family: sans-serif">', *body, "</body></html>"]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(page) + "\n")   # UTF-8, whole or absent
    return Path(path)


def _grid(table):
    """(unit labels, is-attention flags, share matrix [U, Hmax]) of one WhoReads table."""
    keys = list(dict.fromkeys(zip(table.layer, table.kind)))
    Hm = int(table["head"].max()) + 1
    M = np.full((len(keys), Hm), np.nan)
    for r in table.itertuples():
        M[keys.index((r.layer, r.kind)), r.head] = r.share
    return [f"L{i} {k}" for i, k in keys], [k == "attn" for _, k in keys], M


def plot_who_reads(results, path, title="Who reads the fact: share of the answer row's |pattern| on the source"):
    """Heatmaps layers x heads of the weight share, one panel per (task, model) of ``results`` (WhoReads);
    attention layers labelled in red, recurrent ones in blue. Writes ``path`` and returns it."""
    pairs = [(getattr(r, "model", None), getattr(r, "task", None)) for r in results or []]
    if not results or not all(isinstance(r, WhoReads) for r in results) or len(set(pairs)) < len(pairs):
        raise InterpError(f"results {str(pairs):.80} are not valid; valid: a non-empty list of WhoReads (who_reads), "
                          "one per (model, task): models of one name need distinct names")
    plt = _plt()
    tasks = list(dict.fromkeys(r.task for r in results))
    models = list(dict.fromkeys(r.model for r in results))
    fig, axes = plt.subplots(len(tasks), len(models), figsize=(3.4 * len(models) + 1.2, 4.8 * len(tasks)),
                             squeeze=False, gridspec_kw=dict(wspace=0.42, hspace=0.3))
    im = None
    for r in results:
        ax = axes[tasks.index(r.task), models.index(r.model)]
        labels, attn, M = _grid(r.table)
        im = ax.imshow(M, cmap="viridis", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        for (i, j), x in np.ndenumerate(M):
            if np.isfinite(x):
                ax.text(j, i, f"{x:.2f}", ha="center", va="center", fontsize=6.5, color="black" if x > 0.6 else "white")
        ax.set_yticks(range(len(labels)), labels, fontsize=7.5)
        for t, a in zip(ax.get_yticklabels(), attn):
            t.set_color("tab:red" if a else "tab:blue")
            t.set_fontweight("bold" if a else "normal")
        ax.set_xticks(range(M.shape[1]), [f"h{h}" for h in range(M.shape[1])], fontsize=7.5)
        ax.set_title(f"{r.model} / {r.task}\nkept {r.kept}/{r.items} answers; flat row {r.uniform:.3f}", fontsize=9)
    fig.colorbar(im, ax=axes, fraction=0.025, pad=0.02, label="weight share on the source")
    fig.suptitle(title, fontsize=10)
    save_fig(fig, path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def _cell(r, value=False):
    """'mean [lo, hi]' of one head's record (a dict of its `WhoReads` table row)."""
    return "{:.2f} [{:.2f}, {:.2f}]".format(*(r[("value_" if value else "") + k] for k in ("share", "lo", "hi")))


def report_lines(results, n_boot: int) -> list[str]:
    """The markdown of `write_who_reads`: setting, kept counts, the best head of every layer and the top
    heads of every (model, task), with 95% bootstrap intervals."""
    r0 = results[0]
    lines = ["# Who reads the fact", "",
             f"{r0.n} examples per (model, task), data seed {r0.seed} (held out: training data seeds are >= 1e6); "
             "one training seed per model; only correctly answered answers kept; 95% bootstrap intervals over examples "
             f"({n_boot} resamples). Measure: weight share |A[t, src]| / sum_s |A[t, s]| at the answer row t "
             "(the attention weight for softmax heads); value share: the same with each source weighed by "
             "||v_s|| (interp/patterns.py).", "",
             f"`interp patterns --who-reads --n {r0.n} --seed {r0.seed} --n-boot {n_boot}"
             + "".join(f" --model {m}" for m in dict.fromkeys(r.model for r in results))
             + "".join(f" --task {t}" for t in dict.fromkeys(r.task for r in results)) + "`", "",
             "![who reads](who_reads.png)", "",
             "| model | task | knobs | answers kept | flat-row share 1/(t+1) |", "|---|---|---|---|---|"]
    lines += [f"| {r.model} | {r.task} | {r.knobs} | {r.kept}/{r.items} | {r.uniform:.3f} |" for r in results]
    for task in dict.fromkeys(r.task for r in results):
        rs = [r for r in results if r.task == task]
        lines += ["", f"## {task}: the head with the largest weight share in each layer", "",
                  "| layer | " + " | ".join(r.model for r in rs) + " |", "|---" * (len(rs) + 1) + "|"]
        for layer in sorted({int(x) for r in rs for x in r.table.layer}):
            cells = []
            for r in rs:
                t = r.table[r.table.layer == layer]
                best = [t[t.kind == k].sort_values("share").iloc[-1].to_dict() for k in dict.fromkeys(t.kind)]
                cells.append(" / ".join(f"{b['kind']} h{b['head']} {_cell(b)}" for b in best))
            lines.append(f"| {layer} | " + " | ".join(cells) + " |")
        lines += ["", f"## {task}: top 3 heads per model", "", "| model | layer | kind | head | weight share | "
                  "value share |", "|---|---|---|---|---|---|"]
        for r in rs:
            for b in r.table.sort_values("share", ascending=False).head(3).to_dict("records"):
                lines.append(f"| {r.model} | {b['layer']} | {b['kind']} | {b['head']} | {_cell(b)} | {_cell(b, True)} |")
    return lines


def write_who_reads(results, out, n_boot: int = 2000) -> Path:
    """``out``/who_reads.png (`plot_who_reads`), results.csv (every head) and report.md (`report_lines`)."""
    import pandas as pd
    out = Path(out)
    plot_who_reads(results, out / "who_reads.png")      # (checks the results, then makes the folder)
    save_csv(out / "results.csv", pd.concat([r.table for r in results]), index=False, float_format="%.4f")
    atomic_write_text(out / "report.md", "\n".join(report_lines(results, n_boot)) + "\n")
    return out
