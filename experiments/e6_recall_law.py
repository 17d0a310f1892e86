"""E6 — the recall law: Zoology-style multi-query associative recall (MQAR) against width, depth, state
size and learning rate.

Published: attention solves MQAR at small width; recurrent models need a state that grows with the number
of key-value pairs (Arora et al. 2023, "Zoology", arXiv 2312.04927); recurrent models' recall succeeds
only in a narrow window of learning rates, transformers are robust to it, and recurrent models prefer
width over depth (Okpekpe & Orvieto 2025, arXiv 2508.19029).

Design. MQAR only, every key queried once and every query supervised: the `mqar` task with ``n_queries =
n_pairs`` (`interp.train`'s loss is the cross-entropy at every position a task marks, and mqar marks every
query), the context padded with filler to ``seq_len`` tokens (256; 2 + 4 x pairs where that is longer:
258 at 64 pairs). One model per (arm, width, depth, pairs), the per-configuration protocol of both papers:
each run fixes all three mqar knobs (the trainer draws one grid knob a batch, so one run cannot mix pair
counts with the queries tied to them). Arms: transformer, gdn100, gla100, mamba2100, gdn50, gdn75; widths
64 / 128 / 256 (heads of 32), 2 and 4 layers; a layout equal to an earlier arm's at a depth (gdn75 at 2
layers is gdn50: attention at layer 1) is trained once, under the earlier name. Recipe: `interp.train`
(AdamW, warmup + cosine, bf16 autocast on CUDA) with its induction warm-up for layouts with attention,
reference scans. Learning rates: every one of ``lrs`` on seed 0, the best by validation accuracy (held-out
examples), then seeds 1 and 2 at it; a best learning rate at an edge of the sweep is flagged.

Verdict rule (fixed before the run). Per configuration and seed: test accuracy over every query of
``eval_n`` held-out examples; over the seeds the mean and 95% t-interval (`interp.stats.seed_interval`):
**solves** = lower bound >= 0.9, **fails** = upper bound < 0.9, else undecided. (1) Attention solves MQAR at
small width: agrees when the transformer at the smallest width and depth solves every pair count,
disagrees when it fails one. (2) Recurrent state must grow with the pairs: for each attention-free arm at
the smallest depth, the smallest width that solves each pair count (its state size beside it) must not
shrink as pairs grow and must be larger (or none) at the most pairs than at the fewest: agrees; disagrees
when one width solves every pair count; inconclusive when no width solves the fewest. (3) Recurrent recall
is learning-rate sensitive, attention robust (seed 0, so no interval): the window of a configuration solved
(validation >= 0.9) at its best learning rate is the fraction of learning rates that also reach 0.9; agrees
when every attention-free arm's mean window is below the transformer's, disagrees when none is. (4)
Recurrent models prefer width over depth: per seed k, the mean over pair counts and widths w (but the
largest) of acc(next width, smallest depth) - acc(w, largest depth); agrees for an arm when the 95%
t-interval over seeds is above 0, disagrees when below, and overall when all attention-free arms do. A
configuration **did not converge** when it is not solved at the fewest pairs (a training failure, not a
capacity limit; claim (1) resting on one is inconclusive); the report and stdout list them.

Then the toolkit on one solved and one failed attention-free model (seed 0; the arm, width and depth with the
largest accuracy drop from a pair count it solves to one it fails): probes of the bound value (resid_post,
rec.state@key, rec.state@query) with their causal check (interchange along the probe's subspace), and
interchanges of each recurrent layer's state, whole and along the write key (`interp.interventions`).

    python experiments/e6_recall_law.py --quick     # CPU, about a minute, tiny models (runs/e6_recall_law_quick)
    interp run experiments/e6_recall_law.toml       # GPU, 9-minute calls; call again to continue

Writes ``--out`` (default runs/e6_recall_law/figures; other profiles runs/e6_recall_law_<profile>/figures):
accuracy.png, lr.png, results.csv, summary.csv, width_needed.csv, lr_sweep.csv, verdicts.csv,
probes.csv, probes.png, interventions.csv, report.md. Sizing (full): 11 (arm, depth) layouts x 3 widths x 5
pair counts = 165 configurations x (4 learning rates + 2 seeds) = 990 runs of 2000 steps x batch 64 x
256-258 tokens; on a GPU host every visible GPU trains (``workers_per_gpu`` runs each). ``--seq-len 512``
adds the 512-token configurations (their own runs, same directory).
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import hooks
from interp import InterpError, probes
from interp import experiment as X
from interp import interventions as iv
from interp import tasks as T
from interp.stats import seed_interval
from interp.train import answer_accuracy
from interp.zoo import HybridLM, ZooConfig
from interp.zoo.layouts import resolve_layout

E5 = X.load_experiment(Path(__file__).resolve().with_name("e5_state_limit.py"))   # shared: the sweep, context
NAME = "e6_recall_law"
ARMS = ("transformer", "gdn100", "gla100", "mamba2100", "gdn50", "gdn75")
THETA = 0.9
COMMON = dict(head_dim=32, n_values=64, scan_backend="reference", val_seed=99, test_seed=123, pair_seed=5)
PROFILES = {
    "full": dict(COMMON, arms=ARMS, widths=(64, 128, 256), depths=(2, 4), pairs=(4, 8, 16, 32, 64), seq_lens=(256,),
                 steps=2000, batch_size=64, warmup=100, lrs=(3e-4, 1e-3, 3e-3, 1e-2), seeds=(0, 1, 2), val_n=256,
                 eval_n=512, workers_per_gpu=8, time_budget=9.0, eval_reserve=3.0, probe_n=256, probe_seeds=(0, 1, 2),
                 iv_n=256),
    "quick": dict(COMMON, head_dim=8, n_values=8, arms=("transformer", "gdn100"), widths=(16, 32), depths=(1, 2),
                  pairs=(2, 8), seq_lens=(32,), steps=30, batch_size=16, warmup=5, lrs=(1e-3, 1e-2), seeds=(0, 1),
                  val_n=16, eval_n=32, workers_per_gpu=1, time_budget=0, eval_reserve=0, probe_n=48,
                  probe_seeds=(0,), iv_n=16),
    "test": dict(COMMON, head_dim=8, n_values=8, arms=("transformer", "gdn100"), widths=(16, 32), depths=(1, 2),
                 pairs=(2, 4), seq_lens=(16,), steps=3, batch_size=8, warmup=1, lrs=(3e-3, 1e-2), seeds=(0, 1), val_n=8,
                 eval_n=8, workers_per_gpu=1, time_budget=0, eval_reserve=0, probe_n=12, probe_seeds=(0,), iv_n=8),
}
KEYS = ["arm", "width", "depth", "pairs", "seq_len"]
# what the checkpoints depend on besides their names (arm, width, depth, pairs, length, seed, lr)
SPEC = ("steps", "batch_size", "warmup", "head_dim", "n_values", "scan_backend", "lrs", "seeds")


# --- configurations and runs --------------------------------------------------------------------

def mqar_knobs(pairs: int, seq_len: int, n_values: int = 64) -> dict:
    """Every key queried once (all supervised), the context padded to ``seq_len`` tokens in all."""
    return {"n_pairs": pairs, "n_queries": pairs, "seq_len": max(seq_len, 2 + 4 * pairs), "n_values": n_values}


def model_spec(arm: str, width: int, depth: int, P) -> dict:
    return dict(d_model=width, n_layers=depth, n_heads=max(1, width // P["head_dim"]), head_dim=P["head_dim"],
                layout=arm)


def aliases(P) -> dict:
    """{(arm, depth): the earlier arm with the same layout at that depth} (trained once, under that name)."""
    out = {}
    for d in P["depths"]:
        seen = {}
        for a in P["arms"]:
            first = seen.setdefault(tuple(resolve_layout(a, d)), a)
            if first != a:
                out[(a, d)] = first
    return out


@functools.lru_cache(maxsize=None)
def state_size(arm: str, width: int, depth: int, head_dim: int) -> tuple:
    """(H x K x V of one recurrent layer's state as a string, recurrent layers, parameters), read off a
    hooked model's ``rec.state``."""
    m = HybridLM(ZooConfig(vocab_size=len(T.VOCAB), **model_spec(arm, width, depth, {"head_dim": head_dim})))
    hm = hooks.wrap(m)
    names = [n for n in hm.hook_names if n.endswith(".rec.state")]
    if not names:
        return "-", 0, m.num_params()
    _, c = hm.run_with_cache(torch.ones(1, 2, dtype=torch.long), names=names[:1], positions=[0])
    return "x".join(map(str, c[names[0]].shape[2:])), len(names), m.num_params()


def units(P, seq_lens) -> dict:
    """{"<arm>.w<width>.L<depth>.P<pairs>.T<seq_len>": (key values, training spec)}, aliases left out."""
    skip = aliases(P)
    return {f"{a}.w{w}.L{d}.P{p}.T{t}": (dict(zip(KEYS, (a, w, d, p, t))), {
            "model": model_spec(a, w, d, P), "tasks": ["mqar"], "knobs": {"mqar": mqar_knobs(p, t, P["n_values"])}})
            for a in P["arms"] for d in P["depths"] if (a, d) not in skip
            for w in P["widths"] for p in P["pairs"] for t in seq_lens}


def make(ctx, unit, spec, lrs, seed):
    P = ctx.P
    return X.unit_runs(ctx, unit, spec, lrs, seed, steps=P["steps"], batch_size=P["batch_size"], warmup=P["warmup"],
                       eval_every=max(1, P["steps"] // 5), eval_n=64, save_every=max(50, P["steps"] // 10),
                       device=ctx.device, scan_backend=P["scan_backend"])


def _evaluate(ctx, runs, split: str) -> pd.DataFrame:
    """Accuracy over every query of held-out examples (``split`` val or test) of finished runs; cached."""
    P, rows = ctx.P, []
    n, seed = (P["val_n"], P["val_seed"]) if split == "val" else (P["eval_n"], P["test_seed"])
    for r in runs:
        if X.out_of_time(ctx.deadline):
            break

        def one(r=r):
            m = X.load_run(r, ctx.device).set_scan_backend(P["scan_backend"])
            p, t = (int(x[1:]) for x in r.unit.split(".")[3:5])
            b = T.generate("mqar", n, seed=seed, **mqar_knobs(p, t, P["n_values"]))
            return pd.DataFrame([dict(unit=r.unit, lr=r.lr, seed=r.seed, acc=answer_accuracy(m, b.to(m.device)))])
        rows.append(X.ResultLog(ctx.runs / "eval" / f"{split}_{r.name}.csv").once(one))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["unit", "lr", "seed", "acc"])


def validate(ctx, runs):
    return _evaluate(ctx, runs, "val").rename(columns={"acc": "val_acc"})


def test(ctx, runs, best, specs) -> pd.DataFrame:
    """Test accuracy of every finished run at its unit's best learning rate, with its configuration."""
    res = _evaluate(ctx, X.chosen(runs, best), "test").rename(columns={"acc": "accuracy"})
    if res.empty:
        return res
    keys = pd.DataFrame([{"unit": u, **k} for u, (k, _) in specs.items()])
    res = keys.merge(res, on="unit")
    st = [state_size(a, w, d, ctx.P["head_dim"]) for a, w, d in zip(res.arm, res.width, res.depth)]
    return res.assign(state=[s[0] for s in st], rec_layers=[s[1] for s in st], params=[s[2] for s in st],
                      n_queries=ctx.P["eval_n"] * res.pairs)


# --- verdicts -------------------------------------------------------------------------------------

def summary(res: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for k, g in res.groupby(KEYS, sort=False):
        m, lo, hi = seed_interval(g.accuracy, bounds=(0, 1))
        rows.append(dict(zip(KEYS, k), mean=m, lo=lo, hi=hi, seeds=len(g), label=E5.label(lo, hi, THETA),
                         state=g.state.iloc[0], rec_layers=int(g.rec_layers.iloc[0]), params=int(g.params.iloc[0])))
    return pd.DataFrame(rows)


def attention_free(arms) -> list[str]:
    return [a for a in arms if a.endswith("100")]


def width_needed(summ: pd.DataFrame) -> pd.DataFrame:
    """(arm, depth, pairs, seq_len) -> the smallest width that solves it (NaN: none) and its state."""
    rows = []
    for (a, d, p, t), g in summ.groupby(["arm", "depth", "pairs", "seq_len"], sort=False):
        ok = g[g.label == "solves"].sort_values("width")
        rows.append(dict(arm=a, depth=d, pairs=p, seq_len=t, width=float(ok.width.iloc[0]) if len(ok) else np.nan,
                         state=ok.state.iloc[0] if len(ok) else "-", rec_layers=int(g.rec_layers.iloc[0])))
    return pd.DataFrame(rows)


def lr_window(val: pd.DataFrame, specs: dict, seed0: int) -> pd.DataFrame:
    """Per unit solved at its best learning rate (seed 0): the fraction of learning rates reaching THETA."""
    v = val[val.seed == seed0]
    rows = [dict(unit=u, arm=specs[u][0]["arm"], window=float((g.val_acc >= THETA).mean()))
            for u, g in v.groupby("unit", sort=False) if g.val_acc.max() >= THETA]
    return pd.DataFrame(rows, columns=["unit", "arm", "window"])


def _overall(per: dict) -> str:
    vs = set(per.values())
    return (vs.pop() if len(vs) == 1 else "mixed") if vs else "inconclusive"


def verdicts(summ: pd.DataFrame, res: pd.DataFrame, win: pd.DataFrame, P) -> pd.DataFrame:
    """One row per claim (module doc) that the finished configurations can test."""
    w0, d0, d1, t0 = min(P["widths"]), min(P["depths"]), max(P["depths"]), min(P["seq_lens"])
    base, out = summ[summ.seq_len == t0], []
    free = [a for a in attention_free(P["arms"]) if a in set(base.arm)]
    tr = base[(base.arm == "transformer") & (base.width == w0) & (base.depth == d0)]
    if len(tr):
        labs = tr.sort_values("pairs").label.tolist()
        verdict = ("agrees" if all(x == "solves" for x in labs) else "disagrees" if labs[0] == "solves" and "fails"
                   in labs else "inconclusive" + (" (did not converge: a training problem)" * (labs[0] != "solves")))
        out.append(("Attention solves MQAR at small width", "Arora et al. 2312.04927",
                    f"transformer d={w0}, {d0} layers: " + "; ".join(
                        f"{p} pairs {X.fmt(m, lo, hi)}" for p, m, lo, hi in zip(tr.pairs, tr["mean"], tr.lo, tr.hi)),
                    verdict))
    wn, per, nums = width_needed(base[base.depth == d0]), {}, []
    for a in free:
        ws = wn[wn.arm == a].sort_values("pairs").width.fillna(np.inf).tolist()
        per[a] = ("inconclusive" if np.isinf(ws[0]) else "disagrees" if ws[-1] == ws[0] else
                  "agrees" if all(x <= y for x, y in zip(ws, ws[1:])) else "inconclusive")
        nums.append(f"{a}: " + ", ".join("none" if np.isinf(x) else f"{x:.0f}" for x in ws) + f" ({per[a]})")
    if per:
        out.append(("Recurrent models need state growing with the pairs", "Arora et al. 2312.04927",
                    f"smallest width solving {', '.join(map(str, sorted(set(wn.pairs))))} pairs, {d0} layers: "
                    + "; ".join(nums), _overall(per)))
    wt = win[win.arm == "transformer"].window.mean() if len(win) else np.nan
    wf = {a: win[win.arm == a].window.mean() for a in free if a in set(win.arm)}
    if not np.isnan(wt) and wf:
        out.append(("Recurrent recall is learning-rate sensitive; transformers are robust", "Okpekpe & Orvieto "
                    "2508.19029", f"mean share of learning rates reaching {THETA} where the best does: transformer "
                    f"{wt:.2f}; " + "; ".join(f"{a} {x:.2f}" for a, x in wf.items()) + " (seed 0, no interval)",
                    "agrees" if all(x < wt for x in wf.values()) else
                    "disagrees" if all(x >= wt for x in wf.values()) else "mixed"))
    acc = res[res.seq_len == t0].set_index(KEYS + ["seed"]).accuracy
    per, nums, ws = {}, [], sorted(P["widths"])
    for a in free if d1 > d0 and len(ws) > 1 else []:
        d = [np.nanmean([acc.get((a, w2, d0, p, t0, s), np.nan) - acc.get((a, w, d1, p, t0, s), np.nan)
                         for p in P["pairs"] for w, w2 in zip(ws, ws[1:])] or [np.nan]) for s in P["seeds"]]
        m, lo, hi = seed_interval(d)
        per[a] = "agrees" if lo > 0 else "disagrees" if hi < 0 else "inconclusive"
        nums.append(f"{a} {X.fmt(m, lo, hi)} ({per[a]})")
    if per:
        out.append(("Recurrent models prefer width over depth", "Okpekpe & Orvieto 2508.19029",
                    f"acc(next width, {d0} layers) - acc(width, {d1} layers), mean over pairs and widths: "
                    + "; ".join(nums), _overall(per)))
    return pd.DataFrame(out, columns=["claim", "source", "ours", "verdict"])


def not_converged(summ: pd.DataFrame) -> pd.DataFrame:
    first = summ[summ.pairs == summ.pairs.min()]
    return first[first.label != "solves"]


# --- the toolkit on one solved and one failed recurrent model ------------------------------------------

def pick(summ: pd.DataFrame, P):
    """((solved-to-failed, drop), arm, width, depth, seq_len, pairs, more pairs): the attention-free arm, width
    and depth with the largest accuracy drop from a pair count it solves to one it fails, else (False, ...) from
    any pair count to a larger one; None if there is none."""
    best = None
    for (a, w, d, t), g in summ[summ.arm.isin(attention_free(P["arms"]))].groupby(
            ["arm", "width", "depth", "seq_len"], sort=False):
        g = g.sort_values("pairs")
        m, p, lab = g["mean"].to_numpy(), g.pairs.to_numpy(), g.label.to_numpy()
        for i in range(len(p)):
            for j in range(i + 1, len(p)):
                key = (bool(lab[i] == "solves" and lab[j] == "fails"), float(m[i] - m[j]))
                if best is None or key > best[0]:
                    best = (key, a, int(w), int(d), int(t), int(p[i]), int(p[j]))
    return best


def interchanges(m, name: str, pairs: int, seq_len: int, P) -> pd.DataFrame:
    """IIA of each recurrent layer's state patched whole and along the write key (the key of the changed
    value; the state just before the last query)."""
    pb = T.make_pairs("mqar", P["iv_n"], seed=P["pair_seed"], **mqar_knobs(pairs, seq_len, P["n_values"]))
    hm = hooks.wrap(m)
    layers = sorted({int(n.split(".")[1]) for n in hm.hook_names if n.endswith(".rec.state")})
    return pd.concat([pd.DataFrame(iv.intervene(hm, pb, iv.Site(f"blocks.{i}.rec.state"),
                                                subspaces=["full", "write_key"], model_name=name)) for i in layers],
                     ignore_index=True)


def analyse(ctx, runs, best, summ):
    """Probes (with their causal check) and state interchanges on the models `pick` names; resumable.
    Returns (probe layers, interchanges, the pick) or Nones; writes probes_<role>.png (solved / failed)."""
    P, pk = ctx.P, pick(summ, ctx.P)
    if pk is None:
        return None, None, None
    (strict, _), a, w, d, t, p_ok, p_bad = pk
    pf, xf = [], []   # roles "higher" / "lower" where no configuration both solves and fails (labels in the report)
    for role, p in zip(("solved", "failed") if strict else ("higher", "lower"), (p_ok, p_bad)):
        unit = f"{a}.w{w}.L{d}.P{p}.T{t}"
        r = next((r for r in runs if r.unit == unit and r.seed == P["seeds"][0] and r.lr == best.get(unit)), None)
        if r is None or X.out_of_time(ctx.deadline):
            continue
        m, name = X.load_run(r, ctx.device).set_scan_backend(P["scan_backend"]), f"{a} d={w} L={d} P={p}"
        pr = probes.run({name: m}, task="mqar", target="bound_value", sites=["resid_post", "rec.state@key",
                        "rec.state@query"], n=P["probe_n"], seeds=list(P["probe_seeds"]), progress=False,
                        causal_pairs=P["iv_n"], out=ctx.runs / "analysis" / f"probes_{r.name}",
                        **mqar_knobs(p, t, P["n_values"]))
        pr.plot(ctx.out / f"probes_{role}.png")
        pf.append(pd.DataFrame(pr.best_layers()).assign(role=role, pairs=p))
        xf.append(X.ResultLog(ctx.runs / "analysis" / f"iv_{r.name}.csv").once(
            lambda: interchanges(m, name, p, t, P)).assign(role=role, pairs=p))
    return (pd.concat(pf, ignore_index=True) if pf else None), (pd.concat(xf, ignore_index=True) if xf else None), pk


# --- figures and report -----------------------------------------------------------------------------

COLOR = {"transformer": "k", "gdn100": "C0", "gla100": "C3", "mamba2100": "C2", "gdn50": "C1", "gdn75": "C4"}


def plot_accuracy(summ: pd.DataFrame, P, path):
    plt = X.pyplot()
    t0 = min(P["seq_lens"])
    ds, ws = sorted(set(summ.depth)), sorted(set(summ.width))
    fig, axes = plt.subplots(len(ds), len(ws), figsize=(3.6 * len(ws), 3.0 * len(ds)), squeeze=False, sharey=True)
    for i, d in enumerate(ds):
        for j, w in enumerate(ws):
            ax = axes[i][j]
            for a, g in summ[(summ.depth == d) & (summ.width == w) & (summ.seq_len == t0)].groupby("arm", sort=False):
                ax.plot(g.pairs, g["mean"], color=COLOR.get(a), marker="o", ms=3, label=a)
                ax.fill_between(g.pairs, g.lo.clip(0, 1), g.hi.clip(0, 1), color=COLOR.get(a), alpha=0.12, lw=0)
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(P["pairs"]), [str(p) for p in P["pairs"]], fontsize=7)
            ax.set(ylim=(-0.02, 1.02), title=f"d={w}, {d} layers", xlabel="key-value pairs" if i == len(ds) - 1 else "")
            ax.axhline(THETA, color="gray", lw=0.8, ls=":")
            ax.grid(alpha=0.3)
        axes[i][0].set_ylabel("MQAR accuracy\n(mean, 95% CI over seeds)")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    X.save_figure(fig, path, 110)


def plot_lr(val: pd.DataFrame, specs: dict, P, path):
    """Seed-0 validation accuracy (mean over pair counts) against learning rate, one panel per arm."""
    plt = X.pyplot()
    v = val[val.seed == P["seeds"][0]].merge(pd.DataFrame([{"unit": u, **k} for u, (k, _) in specs.items()]), on="unit")
    arms = list(dict.fromkeys(v.arm))
    fig, axes = plt.subplots(1, len(arms), figsize=(3.3 * len(arms), 3.0), squeeze=False, sharey=True)
    for ax, a in zip(axes[0], arms):
        for (w, d), g in v[v.arm == a].groupby(["width", "depth"]):
            m = g.groupby("lr").val_acc.mean()
            ax.plot(m.index, m.values, marker="o", ms=3, ls="-" if d == min(P["depths"]) else "--",
                    color=f"C{sorted(P['widths']).index(w)}", label=f"d={w}, {d} layers")
        ax.set(xscale="log", ylim=(-0.02, 1.02), title=a, xlabel="learning rate")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy\n(seed 0, mean over pairs)")
    axes[0][-1].legend(fontsize=6)
    X.save_figure(fig, path, 110)


def _pivot(summ, cols, fmt):
    out = summ.assign(v=[fmt(r) for r in summ.itertuples()]).pivot(index=["arm", "width"], columns=cols, values="v")
    return out.reset_index()


def report(ctx, st, val, summ, wn, edges, win, verd, pb, xf, pk, specs):
    P = ctx.P
    L = X.runs_note(st)
    al = aliases(P)
    L += [f"Profile `{ctx.profile}`: arms {', '.join(P['arms'])}; widths {list(P['widths'])} (heads of "
          f"{P['head_dim']}), depths {list(P['depths'])}, pairs {list(P['pairs'])}, sequence length(s) "
          f"{list(P['seq_lens'])}; {P['steps']} steps x batch {P['batch_size']} per run; learning rates "
          f"{', '.join(f'{x:g}' for x in P['lrs'])} on seed {P['seeds'][0]}, seeds {list(P['seeds'][1:])} at the best; "
          f"test: {P['eval_n']} examples (every query), seed {P['test_seed']}."
          + (" Trained once under an earlier arm's name (same layout): " + ", ".join(
              f"{a} at {d} layers = {b}" for (a, d), b in al.items()) + "." if al else ""), "",
          E5.rule_text(__doc__), "", "![accuracy](accuracy.png)", "", "![learning rate](lr.png)", ""]
    if not st.complete.all():
        L += [f"**{int((~st.complete).sum())} of {len(st)} runs are not finished**: the tables use finished runs.", ""]
    for (d, t), g in summ.groupby(["depth", "seq_len"], sort=False):
        L += [f"## Accuracy, {d} layers, {t} tokens (mean [95% CI] over seeds; state of a recurrent layer H x K x V)",
              ""]
        tab = _pivot(g, "pairs", lambda r: X.fmt(r.mean, r.lo, r.hi))
        L += X.md_table(tab.merge(g[["arm", "width", "state", "params"]].drop_duplicates(), on=["arm", "width"])) + [""]
    L += ["## Width needed: the smallest width that solves each pair count (its state per recurrent layer)", ""]
    tab = wn.assign(v=["none" if np.isnan(w) else f"{w:.0f} ({s} x {n})" for w, s, n in zip(
        wn.width, wn.state, wn.rec_layers)]).pivot(index=["arm", "depth", "seq_len"], columns="pairs", values="v")
    L += X.md_table(tab.reset_index()) + [""]
    nc = not_converged(summ)
    L += ["**Did not converge** (not solved at the fewest pairs): " + (", ".join(
        f"{a} d={w} L={d}" for a, w, d in zip(nc.arm, nc.width, nc.depth)) or "none") + ".", ""]
    arm_of = {u: k["arm"] for u, (k, _) in specs.items()}
    e = edges.assign(arm=edges.unit.map(arm_of)).groupby(["arm", "where"]).size().unstack(fill_value=0)
    L += ["## Learning rates (seed 0, validation)", "", "Where each configuration's best learning rate lies (edge: "
          "better than every inner one by > 0.01, so the optimum may lie outside the sweep; flat: all within 0.01):",
          ""] + X.md_table(e.reset_index()) + [""]
    if len(win):
        L += [f"Share of learning rates reaching {THETA} where the best one does (mean over such configurations): "
              + ", ".join(f"{a} {g.window.mean():.2f} (n={len(g)})" for a, g in win.groupby("arm", sort=False)), ""]
    L += ["## The toolkit on a solved and a failed recurrent model", ""]
    if pb is None:
        L += ["No attention-free configuration pair to compare (or no time left in this call).", ""]
    else:
        L += [] if pk[0][0] else ["No attention-free configuration solves one pair count and fails a larger one: "
                                  "these are the largest drop in accuracy (roles higher / lower).", ""]
        at = summ.set_index(KEYS)
        row = (lambda p: at.loc[(pk[1], pk[2], pk[3], p, pk[4])])
        L += [f"{pk[1]}, d={pk[2]}, {pk[3]} layers, seed 0: " + " against ".join(
            f"{p} pairs ({row(p).label}, mean {row(p)['mean']:.2f})" for p in pk[5:]) + ". Probes of the bound "
            "value at the query keys (layer chosen on validation, test accuracy; causal check: IIA of interchanging the "
            "probe's subspace, against random subspaces of its rank and the whole site):", ""]
        cols = [c for c in ("role", "pairs", "site", "layer", "accuracy", "majority", "iia", "iia_random", "iia_full",
                            "n_iia") if c in pb]
        L += X.md_table(pb[cols]) + [""] + [f"![{r}](probes_{r}.png)\n" for r in pb.role.unique()] + [
                                     "Interchange of each recurrent layer's state before the last query (full; "
                                     "write_key: rank 1 along the key that wrote the changed value):", ""]
        L += X.md_table(xf[["role", "pairs", "layer", "subspace", "iia", "n", "n_total"]]) + [""]
    vt = ["Rule: see above (fixed before the run).", ""] + X.md_table(verd) if len(verd) else [
        "Not enough configurations finished to test any claim."]
    X.write_report(ctx, "E6 — the recall law", L, vt, status=st)


# --- main ---------------------------------------------------------------------------------------

def build_parser():
    ap = X.parser(NAME, __doc__, PROFILES, workers=True)
    ap.add_argument("--seq-len", type=int, action="append", default=None,
                    help="sequence length(s) of the configurations (repeatable; default: the profile's, 256)")
    return ap


def main(argv=None):
    a = build_parser().parse_args(argv)
    ctx = E5.context(a, argv, NAME, PROFILES)
    check_seq_len(a, ctx.P)                            # before the call claims its folders
    with ctx:                                          # holds the runs and figures folders' writer locks
        return _main(a, ctx)


def check_seq_len(a, P):
    """``--seq-len`` into the profile ``P``, checked against its pair counts and the task's range."""
    if a.seq_len:
        P["seq_lens"] = tuple(sorted(set(a.seq_len)))
        need = 2 + 4 * min(P["pairs"])
        if min(P["seq_lens"]) < need:
            raise InterpError(f"--seq-len {min(P['seq_lens'])} is shorter than the {need} tokens that the profile's "
                              f"fewest pairs ({min(P['pairs'])}) take, so it would change nothing; valid: --seq-len "
                              f">= {need} (configurations whose pairs need more are padded to 2 + 4 x pairs)")
        for t in P["seq_lens"]:       # the task's own range, before any run is trained (TaskError: exit 2)
            for p in P["pairs"]:
                T.generate("mqar", 1, seed=0, **mqar_knobs(p, t))


def _main(a, ctx):
    P, out = ctx.P, ctx.out
    X.check_spec(ctx.runs, {"profile": ctx.profile, **{k: P[k] for k in SPEC}}, kind=NAME)
    torch.manual_seed(0)
    specs = units(P, P["seq_lens"])
    st, val, best, runs = X.sweep_and_seeds(ctx, {u: s for u, (_, s) in specs.items()}, make, validate)
    X.save_table(st, out / "lr_sweep_status.csv")
    complete = X.sweep_complete(st, P, len(specs))
    if ctx.train_only:
        print(f"--train-only: {int(st.complete.sum())} runs finished; the sweep validated, nothing tested")
        return 0 if complete else 3
    res = test(ctx, runs, best, specs)
    if res.empty:
        print("no finished runs to test yet; run the same command again")
        return 3
    summ = summary(res)
    wn, edges, win = width_needed(summ), X.lr_edges(val, P["lrs"], P["seeds"][0]), lr_window(val, specs, P["seeds"][0])
    verd = verdicts(summ, res, win, P)
    nc = not_converged(summ)
    print("did not converge (not solved at the fewest pairs): "
          + (", ".join(f"{a} d={w} L={d}" for a, w, d in zip(nc.arm, nc.width, nc.depth)) or "none"))
    keys = pd.DataFrame([{"unit": u, **k} for u, (k, _) in specs.items()])
    for f, d in (("results", res), ("summary", summ), ("width_needed", wn), ("verdicts", verd),
                 ("lr_sweep", keys.merge(val, on="unit").merge(edges, on="unit", how="left"))):
        X.save_table(d, out / f"{f}.csv")
    plot_accuracy(summ, P, out / "accuracy.png")
    plot_lr(val, specs, P, out / "lr.png")
    pb, xf, pk = analyse(ctx, runs, best, summ)
    if pb is not None:
        X.save_table(pb, out / "probes.csv")
        X.save_table(xf, out / "interventions.csv")
    report(ctx, st, val, summ, wn, edges, win, verd, pb, xf, pk, specs)
    print(f"wrote {out}/report.md")
    return 0 if complete and not X.out_of_time(ctx.deadline) else 3


if __name__ == "__main__":
    X.cli(main)
