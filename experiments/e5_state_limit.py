"""E5 — the state-tracking limit: negative eigenvalues, parity, S3 / S5, length generalisation.

Published: linear RNNs whose transition eigenvalues lie in [0, 1] cannot learn parity; allowing [-1, 1]
(DeltaNet / Mamba with negative eigenvalues) solves it and length-generalises (Grazzi et al. 2024, arXiv
2411.12537: train on lengths <= 40, test to 256, 3 seeds), and improves modular counting; transformers and
diagonal SSMs cannot compose S5 at fixed depth (Merrill et al. 2024, "The Illusion of State", arXiv
2404.08819), while S3-type problems are reachable for non-diagonal recurrences.

Tasks, each trained alone: ``parity`` (the `parity` task, a task of its own: no state_recall setting is
parity, its assignments reset a variable), ``mod3`` (the same task with its ``modulus`` knob at 3: counting
the 1 bits modulo 3), ``S3`` and ``S5`` (`permutation` word problems). The answer follows the whole input
(one supervised token a sequence). Arms (``ARMS``): gdn100, gdn100-neg (GDN with beta in (0, 2), transition
eigenvalues in [-1, 1]), gdn75, gdn75-neg, mamba2100, gla100, transformer; 4 layers, d=128, SwiGLU width
matched to the transformer's parameter count. Training lengths: the task's difficulty-grid values up to
``train_max`` (the trainer draws one a batch; parity 2-40, permutation 2-32), test lengths up to 256.
Recipe: `interp.train` (AdamW, warmup + cosine, bf16 autocast on CUDA), reference scans, no induction
warm-up (no recall is needed here; every arm spends all its steps on the task). Learning rates: seed 0 at
each of ``lrs``, the best by validation accuracy (held-out examples at the training lengths), then seeds
1 and 2 at it; an arm whose best learning rate is an edge of the sweep is flagged.

Verdict rule (fixed before the run). Per task, arm and training seed: accuracy *in distribution* = mean
over the test lengths up to the longest training length, *beyond training* = mean over the longer ones.
Over the seeds: mean and 95% t-interval (`interp.stats.seed_interval`); **solves** = lower bound >= 0.9,
**fails** = upper bound < 0.9, else **undecided**; *at chance* = upper bound < chance + 0.1. Differences
between two arms: per-seed differences (independent runs), mean and 95% t-interval; agrees when it excludes
0 in the claimed direction. Claims (`CLAIMS`): a "cannot" claim agrees when every named arm fails beyond
training and disagrees when one solves; a "can" claim the reverse; else inconclusive (arms not run are
named). An arm **did not
converge** on a task when it fails in distribution (it did not learn the training lengths); the report and
stdout list them, a "cannot" verdict resting on such an arm says so, and a "can" (or "improves") claim that only such
arms contradict is inconclusive, not disagreeing.

Then, for the (task, arm) that solve beyond training (``analyse``), seed 0: probes (`interp.probes`) of the
running count / running product on ``resid_post`` and ``rec.state``, at the longest training length and
at 4x it, and distributed alignment search (`interp.interventions.train_das`) at the best probe layer of
each site: a learned subspace whose interchange moves the answer (IIA) against random subspaces of the same
rank and the full site.

    python experiments/e5_state_limit.py --quick     # CPU, about a minute, tiny models (runs/e5_state_limit_quick)
    interp run experiments/e5_state_limit.toml       # GPU, 9-minute calls; call again to continue

Writes ``--out`` (default runs/e5_state_limit/figures; other profiles runs/e5_state_limit_<profile>/figures):
accuracy.png, results.csv, summary.csv, generalisation.csv, lr_sweep.csv, verdicts.csv, probes.csv,
probe_layers.csv, probes_<task>_<arm>.png, das.csv, report.md. Sizing (full): 4 tasks x 7 arms x (3 learning
rates + 2 seeds) = 140 runs of 10000 steps x batch 128 at <= 43 tokens; on a GPU host every visible GPU
trains (``workers_per_gpu`` runs each: on 8 GPUs 64 at once, the sweep's 84 runs, then the seeds' 56); not
measured yet. On CPU, a 2-layer d=32
gdn100-neg learned parity at lengths 2 and 4 (inside its short convolution's window) in 600 steps but not
at 8, and stayed at chance in 1000 steps on lengths up to 16: parity needs many steps, hence 10000 here.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from interp import InterpError, probes
from interp import experiment as X
from interp import interventions as iv
from interp import tasks as T
from interp.stats import seed_interval
from interp.train import answer_accuracy

NAME = "e5_state_limit"
TASKS = {"parity": ("parity", {"modulus": 2}), "mod3": ("parity", {"modulus": 3}),
         "S3": ("permutation", {"group": "S3"}), "S5": ("permutation", {"group": "S5"})}
LENGTH = {"parity": "n_bits", "permutation": "n_steps"}
TARGET = {"parity": "running_count", "permutation": "running_product"}
CLASSES = {"parity": 2, "mod3": 3, "S3": 6, "S5": 120}
ARMS = {"gdn100": {"layout": "gdn100"}, "gdn100-neg": {"layout": "gdn100", "gdn_neg_eig": True},
        "gdn75": {"layout": "gdn75"}, "gdn75-neg": {"layout": "gdn75", "gdn_neg_eig": True},
        "mamba2100": {"layout": "mamba2100"}, "gla100": {"layout": "gla100"}, "transformer": {"layout": "transformer"}}
EIGEN = {"gdn100": "[0, 1], non-diagonal", "gdn100-neg": "[-1, 1], non-diagonal", "gdn75": "[0, 1] + attention",
         "gdn75-neg": "[-1, 1] + attention", "mamba2100": "[0, 1], diagonal", "gla100": "[0, 1], diagonal",
         "transformer": "attention only"}
THETA = 0.9
# (claim, source, task, kind, arms): kind "cannot" / "can" on one task, "improves" = arms[0] minus arms[1]
CLAIMS = [("Eigenvalues in [0, 1] cannot learn parity (at chance beyond training)", "Grazzi et al. 2411.12537",
           "parity", "cannot", ("gdn100", "mamba2100", "gla100")),
          ("Eigenvalues in [-1, 1] solve parity and length-generalise", "Grazzi et al. 2411.12537", "parity", "can",
           ("gdn100-neg",)),
          ("Negative eigenvalues improve modular counting", "Grazzi et al. 2411.12537", "mod3", "improves",
           ("gdn100-neg", "gdn100")),
          ("A transformer cannot compose S5 at fixed depth", "Merrill et al. 2404.08819", "S5", "cannot",
           ("transformer",)),
          ("Diagonal SSMs cannot compose S5", "Merrill et al. 2404.08819", "S5", "cannot", ("mamba2100", "gla100")),
          ("S3 is reachable for a non-diagonal recurrence (GDN, eigenvalues in [-1, 1])", "Grazzi; Merrill", "S3",
           "can", ("gdn100-neg",))]
COMMON = dict(scan_backend="reference", induction_steps=0, val_seed=99, test_seed=123, pair_seed=5)
# what the checkpoints depend on besides their names (task, arm, seed, lr)
SPEC = ("model", "steps", "batch_size", "warmup", "train_max", "scan_backend", "induction_steps", "lrs", "seeds")
PROFILES = {
    "full": dict(COMMON, model=dict(d_model=128, n_layers=4, n_heads=4, head_dim=32), tasks=tuple(TASKS),
                 arms=tuple(ARMS), steps=10000, batch_size=128, warmup=300, lrs=(3e-4, 1e-3, 3e-3), seeds=(0, 1, 2),
                 train_max=40, test_lengths=(8, 16, 32, 40, 64, 128, 256), val_n=256, eval_n=512,
                 workers_per_gpu=8, time_budget=9.0, eval_reserve=2.5, analyse="solves", analyse_max=12,
                 probe_n=256, probe_seeds=(0, 1, 2), das_n=512, das_epochs=10, das_rank=4),
    "quick": dict(COMMON, model=dict(d_model=16, n_layers=2, n_heads=2, head_dim=8), tasks=("parity", "S3"),
                  arms=("gdn100", "gdn100-neg", "gdn75-neg", "mamba2100", "transformer"), steps=40, batch_size=16,
                  warmup=5, lrs=(1e-3, 1e-2), seeds=(0, 1), train_max=16, test_lengths=(4, 8, 16, 32, 64),
                  val_n=32, eval_n=64, workers_per_gpu=1, time_budget=0, eval_reserve=0, analyse="top",
                  analyse_max=1, probe_n=24, probe_seeds=(0,), das_n=24, das_epochs=2, das_rank=2),
    "test": dict(COMMON, model=dict(d_model=16, n_layers=2, n_heads=2, head_dim=8), tasks=("parity", "S3"),
                 arms=("gdn100-neg", "transformer"), steps=3, batch_size=8, warmup=1, lrs=(3e-3, 1e-2), seeds=(0, 1),
                 train_max=8, test_lengths=(4, 8, 16), val_n=8, eval_n=8, workers_per_gpu=1, time_budget=0,
                 eval_reserve=0, analyse="top", analyse_max=1, probe_n=12, probe_seeds=(0,), das_n=12,
                 das_epochs=1, das_rank=1),
}


# --- runs ---------------------------------------------------------------------------------------

def train_lengths(task: str, P) -> list[int]:
    """The lengths the trainer draws for ``task`` (its grid values up to ``train_max``)."""
    tname = TASKS[task][0]
    return [v for v in T.difficulty_grid(tname)[LENGTH[tname]] if v <= P["train_max"]]


def units(P) -> dict:
    """{"<task>.<arm>": training spec} for every task and arm of the profile."""
    models = {a: X.matched({**P["model"], **ARMS[a]}) for a in P["arms"]}
    out = {}
    for task in P["tasks"]:
        tname, fixed = TASKS[task]
        for a in P["arms"]:
            out[f"{task}.{a}"] = {"model": models[a], "tasks": [tname], "knobs": {tname: dict(fixed)},
                                  "grid_max": {tname: {LENGTH[tname]: P["train_max"]}}}
    return out


def make(ctx, unit, spec, lrs, seed):
    P = ctx.P
    return X.unit_runs(ctx, unit, spec, lrs, seed, steps=P["steps"], batch_size=P["batch_size"], warmup=P["warmup"],
                       eval_every=max(1, P["steps"] // 5), eval_n=128, save_every=max(50, P["steps"] // 10),
                       device=ctx.device, scan_backend=P["scan_backend"], induction_steps=P["induction_steps"])


def _model(ctx, r):
    return X.load_run(r, ctx.device).set_scan_backend(ctx.P["scan_backend"])


def _acc(m, task, n, seed, length):
    tname, fixed = TASKS[task]
    return answer_accuracy(m, T.generate(tname, n, seed=seed, **fixed, **{LENGTH[tname]: length}).to(m.device))


def validate(ctx, runs) -> pd.DataFrame:
    """Validation accuracy of finished runs: mean over the training lengths (held-out seed); cached."""
    P, rows = ctx.P, []
    for r in runs:
        if X.out_of_time(ctx.deadline):
            break
        task = r.unit.split(".")[0]

        def one(r=r, task=task):
            m = _model(ctx, r)
            acc = np.mean([_acc(m, task, P["val_n"], P["val_seed"], n) for n in train_lengths(task, P)])
            return pd.DataFrame([dict(unit=r.unit, lr=r.lr, seed=r.seed, val_acc=float(acc))])
        rows.append(X.ResultLog(ctx.runs / "eval" / f"val_{r.name}.csv").once(one))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["unit", "lr", "seed", "val_acc"])


def test(ctx, runs, best) -> pd.DataFrame:
    """Accuracy against length of every finished run at its unit's best learning rate; cached."""
    P, frames = ctx.P, []
    for r in runs:
        if best.get(r.unit) != r.lr or not X.status(r)["complete"] or X.out_of_time(ctx.deadline):
            continue
        task, arm = r.unit.split(".", 1)
        top = max(train_lengths(task, P))

        def one(r=r, task=task, arm=arm, top=top):
            m = _model(ctx, r)
            return pd.DataFrame([dict(task=task, arm=arm, seed=r.seed, lr=r.lr, length=n, beyond=n > top,
                                      accuracy=_acc(m, task, P["eval_n"], P["test_seed"], n), n=P["eval_n"],
                                      chance=1 / CLASSES[task]) for n in P["test_lengths"]])
        frames.append(X.ResultLog(ctx.runs / "eval" / f"test_{r.name}.csv").once(one))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# --- verdicts -------------------------------------------------------------------------------------

def label(lo: float, hi: float, theta: float = THETA) -> str:
    """solves / fails / undecided: the 95% interval [lo, hi] against ``theta`` (`X.label`)."""
    return X.label(lo, hi, theta)


def per_seed(res: pd.DataFrame) -> pd.DataFrame:
    """(task, arm, seed) -> mean accuracy in distribution (``acc_in``) and beyond training (``acc_beyond``)."""
    g = res.groupby(["task", "arm", "seed", "beyond"])["accuracy"].mean().unstack("beyond")
    return pd.DataFrame({"acc_in": g.get(False), "acc_beyond": g.get(True)}).reset_index()


def summary(res: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per task, arm, length: mean [lo, hi] over seeds; per task and arm: in distribution and beyond
    training, with labels and the at-chance flag)."""
    rows = [dict(task=t, arm=a, length=n, **dict(zip(("mean", "lo", "hi"), seed_interval(g.accuracy, bounds=(0, 1)))), seeds=len(g))
            for (t, a, n), g in res.groupby(["task", "arm", "length"], sort=False)]
    cells = []
    for (t, a), g in per_seed(res).groupby(["task", "arm"], sort=False):
        i, b = seed_interval(g.acc_in, bounds=(0, 1)), seed_interval(g.acc_beyond, bounds=(0, 1))
        cells.append(dict(task=t, arm=a, seeds=len(g), in_mean=i[0], in_lo=i[1], in_hi=i[2], in_label=label(*i[1:]),
                          beyond_mean=b[0], beyond_lo=b[1], beyond_hi=b[2], beyond_label=label(*b[1:]),
                          at_chance=bool(b[2] < 1 / CLASSES[t] + 0.1)))
    return pd.DataFrame(rows), pd.DataFrame(cells)


def not_converged(cells: pd.DataFrame) -> pd.DataFrame:
    return cells[cells.in_label == "fails"]


def verdicts(res: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """One row per claim of `CLAIMS` that the finished arms can test, by the rule of the module doc."""
    out, ps = [], per_seed(res)
    for claim, source, task, kind, arms in CLAIMS:
        c = cells[(cells.task == task) & cells.arm.isin(arms)].set_index("arm")
        missing = [a for a in arms if a not in c.index]
        if len(c) == 0 or (kind == "improves" and missing):
            continue
        if kind == "improves":
            a, b = (ps[(ps.task == task) & (ps.arm == x)].sort_values("seed").acc_beyond.to_numpy() for x in arms)
            k = min(len(a), len(b))
            m, lo, hi = seed_interval(a[:k] - b[:k], bounds=(-1, 1))
            verdict = "agrees" if lo > 0 else "disagrees" if hi < 0 else "inconclusive"
            nums = f"{arms[0]} minus {arms[1]} beyond training: {X.fmt(m, lo, hi)}"
            if verdict == "disagrees" and c.loc[arms[0]].in_label == "fails":   # a training failure
                verdict = (f"inconclusive ({arms[0]} did not learn the training lengths: a training problem rather "
                           "than evidence against the claim)")
        else:
            labs = c.beyond_label.tolist()
            good, bad = ("fails", "solves") if kind == "cannot" else ("solves", "fails")
            verdict = "agrees" if all(x == good for x in labs) else "disagrees" if bad in labs else "inconclusive"
            nums = "; ".join(f"{a} {X.fmt(r.beyond_mean, r.beyond_lo, r.beyond_hi)} ({r.beyond_label}"
                             + (", at chance" if r.at_chance else "") + ")" for a, r in c.iterrows())
            stuck = [a for a, r in c.iterrows() if r.in_label == "fails"]
            if kind == "cannot" and verdict == "agrees" and stuck:
                verdict += f" (but {', '.join(stuck)} did not learn the training lengths either)"
            if kind != "cannot" and verdict == "disagrees" and all(
                    a in stuck for a, r in c.iterrows() if r.beyond_label == "fails"):   # a training failure
                verdict = (f"inconclusive ({', '.join(stuck)} did not learn the training lengths: a training "
                           "problem rather than evidence against the claim)")
        if missing:
            verdict += f" (without {', '.join(missing)}: not run)"
        out.append(dict(claim=claim, source=source, task=task, arms=", ".join(arms), ours=nums, verdict=verdict))
    return pd.DataFrame(out)



def run_probes(m, task: str, arm: str, P, out):
    """Probes of the running count / product at resid_post (and rec.state where the model has one), at
    the longest training length and at 4x it; resumable in the probe folder ``out``. (The probes' own
    causal check needs a target whose value is the answer, which these are not; `run_das` does it.)"""
    tname, fixed = TASKS[task]
    top = max(train_lengths(task, P))
    sites = ["resid_post"] + (["rec.state"] if any(k != "attn" for k in m.config.layers) else [])
    return probes.run({arm: m}, task=tname, target=TARGET[tname], sites=sites, n=P["probe_n"],
                      seeds=list(P["probe_seeds"]), sweep={LENGTH[tname]: [top, 4 * top]}, progress=False,
                      causal=None, out=out, **fixed)


def run_das(m, task: str, arm: str, best: pd.DataFrame, P) -> pd.DataFrame:
    """DAS at each site's probe layer (chosen on validation, at the longest training length): IIA on
    held-out pairs of the learned subspace, of random subspaces of its rank (mean of 3) and of the full
    site; a model that answers no pair right on both prompts gets NaN and the reason."""
    tname, fixed = TASKS[task]
    top = max(train_lengths(task, P))
    pairs = T.make_pairs(tname, P["das_n"], seed=P["pair_seed"], **fixed, **{LENGTH[tname]: top})
    rank, rows = min(CLASSES[task] - 1, P["das_rank"]), []
    for b in best[best["load"].astype(str) == str(top)].itertuples():
        s = iv.Site(f"blocks.{int(b.layer)}.{b.site}", side="key" if b.site == "rec.state" else None)
        row = dict(task=task, arm=arm, site=b.site, layer=int(b.layer), probe_acc=float(b.accuracy), rank=rank)
        try:
            sm = iv.train_das(m, pairs, s, rank=rank, epochs=P["das_epochs"], model_name=arm,
                              random_seeds=(0, 1, 2)).summary()
        except InterpError as e:
            rows.append(dict(row, das_iia=np.nan, random_iia=np.nan, full_iia=np.nan, n=0, note=str(e)))
            continue
        iia = {k: sm[(sm.subspace == k) & (sm.split == "test")].iloc[0] for k in ("das", "random", "full")}
        rows.append(dict(row, das_iia=iia["das"].iia, random_iia=iia["random"].iia, full_iia=iia["full"].iia,
                         n=int(iia["das"].n), note=""))
    return pd.DataFrame(rows)


def analyse(ctx, runs, best, cells):
    """Probes and DAS on seed 0 of the (task, arm) that solve beyond training (``analyse='solves'``) or,
    in the CPU profiles, the best ``analyse_max`` of them (a pipeline check); resumable. Returns (best
    probe layers, all probe rows, DAS rows), or Nones; writes probes_<task>_<arm>.png."""
    P, bl, pf, df = ctx.P, [], [], []
    c = cells[cells.beyond_label == "solves"] if P["analyse"] == "solves" else cells
    for task, arm in c.sort_values("beyond_mean", ascending=False, kind="stable").head(P["analyse_max"])[
            ["task", "arm"]].itertuples(index=False):
        unit = f"{task}.{arm}"
        r = next((r for r in runs if r.unit == unit and r.seed == P["seeds"][0] and r.lr == best.get(unit)), None)
        if r is None or X.out_of_time(ctx.deadline):
            continue
        m = _model(ctx, r)
        pr = run_probes(m, task, arm, P, ctx.runs / "analysis" / f"probes_{r.name}")
        pr.plot(ctx.out / f"probes_{task}_{arm}.png", load=max(train_lengths(task, P)))
        b = pr.best_layers()
        bl.append(b.assign(task=task))
        pf.append(pd.DataFrame(pr).assign(task=task))
        df.append(X.ResultLog(ctx.runs / "analysis" / f"das_{r.name}.csv").once(lambda: run_das(m, task, arm, b, P)))
    cat = (lambda fs: pd.concat(fs, ignore_index=True) if fs else None)
    return cat(bl), cat(pf), cat(df)


# --- figures and report -----------------------------------------------------------------------------

STYLE = {"gdn100": ("C0", "-"), "gdn100-neg": ("C0", "--"), "gdn75": ("C1", "-"), "gdn75-neg": ("C1", "--"),
         "mamba2100": ("C2", "-"), "gla100": ("C3", "-"), "transformer": ("k", ":")}


def plot_accuracy(summ: pd.DataFrame, P, path):
    plt = X.pyplot()
    tasks = list(dict.fromkeys(summ.task))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.3 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for arm, g in summ[summ.task == task].groupby("arm", sort=False):
            c, ls = STYLE[arm]
            ax.plot(g.length, g["mean"], color=c, ls=ls, marker="o", ms=3, label=arm)
            ax.fill_between(g.length, g.lo.clip(0, 1), g.hi.clip(0, 1), color=c, alpha=0.12, lw=0)
        ax.axvspan(max(train_lengths(task, P)), max(P["test_lengths"]) * 1.1, color="gray", alpha=0.12, lw=0)
        ax.axhline(1 / CLASSES[task], color="gray", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(P["test_lengths"]), [str(x) for x in P["test_lengths"]], fontsize=7)
        ax.set(ylim=(-0.02, 1.02), xlabel="test length (shaded: beyond training)", title=task)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("answer accuracy (mean, 95% CI over seeds)")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    X.save_figure(fig, path, 110)


def rule_text(doc: str = __doc__) -> str:
    """The paragraph of ``doc`` that states the verdict rule, on one line (`X.rule_text`)."""
    return X.rule_text(doc)


def report(ctx, st, val, best, summ, cells, verd, edges, bl, das):
    P = ctx.P
    L = X.runs_note(st)
    n_par = {a: X.n_params(X.matched({**P["model"], **ARMS[a]})) for a in P["arms"]}
    L += [f"Profile `{ctx.profile}`: {P['model']['n_layers']} layers, d={P['model']['d_model']}; parameters "
          + ", ".join(f"{a} {n / 1e6:.3f}M" for a, n in n_par.items()) + ". Transition eigenvalues: "
          + "; ".join(f"{a} {EIGEN[a]}" for a in P["arms"]) + f". Each task trained alone, {P['steps']} steps x batch "
          f"{P['batch_size']}, training lengths " + "; ".join(f"{t} {train_lengths(t, P)}" for t in P["tasks"])
          + f"; learning rates {', '.join(f'{x:g}' for x in P['lrs'])} on seed {P['seeds'][0]}, then seeds "
          f"{', '.join(map(str, P['seeds'][1:]))} at the best; test: {P['eval_n']} examples per length, seed "
          f"{P['test_seed']}.", "", rule_text(), "", "![accuracy](accuracy.png)", ""]
    if not st.complete.all():
        L += [f"**{int((~st.complete).sum())} of {len(st)} runs are not finished**: the tables use finished runs.", ""]
    for task, g in summ.groupby("task", sort=False):
        piv = g.assign(v=[X.fmt(*x) for x in zip(g["mean"], g.lo, g.hi)]).pivot(index="length", columns="arm",
                                                                               values="v")
        top = max(train_lengths(task, P))
        L += [f"## {task}: accuracy against length (mean [95% CI] over seeds; chance {1 / CLASSES[task]:.3f})", ""]
        L += X.md_table(piv[list(dict.fromkeys(g.arm))].reset_index().assign(
            length=lambda d: [f"{n}" + (" (beyond)" if n > top else "") for n in d.length]))
        L.append("")
    L += ["## In distribution and beyond training (per-seed means, then mean [95% CI] over seeds)", ""]
    cell = (lambda w: [f"{X.fmt(m, lo, hi)} {lab}" for m, lo, hi, lab in
                       zip(cells[f"{w}_mean"], cells[f"{w}_lo"], cells[f"{w}_hi"], cells[f"{w}_label"])])
    L += X.md_table(cells.assign(in_distribution=cell("in"), beyond_training=cell("beyond"))[
        ["task", "arm", "seeds", "in_distribution", "beyond_training", "at_chance"]])
    nc = not_converged(cells)
    L += ["", "**Did not converge** (fails at the training lengths): "
          + (", ".join(f"{t} / {a}" for t, a in zip(nc.task, nc.arm)) or "none") + ".", ""]
    L += ["## Learning-rate sweep (validation accuracy, seed 0; best per task and arm in bold)", ""]
    piv = val[val.seed == P["seeds"][0]].pivot(index="unit", columns="lr", values="val_acc")
    tab = pd.DataFrame({f"{lr:g}": [f"**{x:.3f}**" if x == piv.loc[u].max() else f"{x:.3f}"
                                    for u, x in piv[lr].items()] for lr in piv.columns}, index=piv.index)
    L += X.md_table(tab.reset_index().merge(edges[["unit", "where"]], on="unit"))
    L += ["", "Where the best learning rate lies: " + ", ".join(f"{k} {v}" for k, v in edges["where"].value_counts()
                                                               .items()) + " (edge: the optimum may lie outside).", ""]
    L += ["## The toolkit: where the running state lives", ""]
    if bl is None:
        L += ["No (task, arm) solves beyond training, so none was analysed.", ""]
    else:
        cols = [c for c in ("task", "model", "site", "load", "layer", "accuracy", "val_accuracy", "majority")
                + tuple(c for c in bl if c.startswith("control_")) if c in bl]
        L += [f"Probes ({TARGET['parity']} / {TARGET['permutation']} at every token; logistic regression, "
              f"{len(P['probe_seeds'])} seed(s); layer chosen on validation, accuracy on test; `load` = the "
              "length): the probe layer per model, site and length.", ""]
        L += X.md_table(bl[cols])
        L += ["", "Distributed alignment search at the probe layer (test pairs that differ in one symbol; IIA = the "
                  "answer follows the source after the interchange; random = 3 random subspaces of the same rank; "
                  "full = the whole site):", ""]
        L += X.md_table(das) + [""] + [f"![probes {t} {a}](probes_{t}_{a}.png)"
                                       for t, a in dict.fromkeys(zip(bl.task, bl.model))] + [""]
    vt = ["Rule: see above (fixed before the run).", ""] + X.md_table(verd) if len(verd) else [
        "Not enough arms finished to test any claim."]
    X.write_report(ctx, "E5 — the state-tracking limit", L, vt, status=st)


# --- main ---------------------------------------------------------------------------------------

def build_parser():
    return X.parser(NAME, __doc__, PROFILES, workers=True)


def context(a, argv, name=NAME, profiles=PROFILES):
    """`X.setup` with this experiment's (and E6's) defaults: on a GPU host (``--device cuda``/auto) the runs
    spread over every visible GPU, ``workers_per_gpu`` each."""
    ctx = X.setup(a, name, profiles, argv)
    if ctx.device == "cuda" and ctx.train_devices is None and torch.cuda.device_count() > 1:
        ctx.train_devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if a.workers is None and ctx.device != "cpu":
        ctx.workers = ctx.P["workers_per_gpu"] * len(ctx.train_devices or [ctx.device])
    return ctx


def main(argv=None):
    a = build_parser().parse_args(argv)
    with context(a, argv) as ctx:   # holds the runs and figures folders' writer locks
        return _main(a, ctx)


def _main(a, ctx):
    P, out = ctx.P, ctx.out
    X.check_spec(ctx.runs, {"profile": ctx.profile, **{k: P[k] for k in SPEC}}, kind=NAME)
    torch.manual_seed(0)
    specs = units(P)
    st, val, best, runs = X.sweep_and_seeds(ctx, specs, make, validate)
    X.save_table(st, out / "lr_sweep_status.csv")
    complete = X.sweep_complete(st, P, len(specs))
    if ctx.train_only:
        print(f"--train-only: {int(st.complete.sum())} runs finished; the sweep validated, nothing tested")
        return 0 if complete else 3
    res = test(ctx, runs, best)
    if res.empty:
        print("no finished runs to test yet; run the same command again")
        return 3
    summ, cells = summary(res)
    edges = X.lr_edges(val, P["lrs"], P["seeds"][0])
    verd = verdicts(res, cells)
    nc = not_converged(cells)
    print("did not converge (fail at the training lengths): "
          + (", ".join(f"{t}/{a}" for t, a in zip(nc.task, nc.arm)) or "none"))
    for f, d in (("results", res), ("summary", summ), ("generalisation", cells), ("verdicts", verd)):
        X.save_table(d, out / f"{f}.csv")
    X.save_table(val.assign(task=val.unit.str.split(".").str[0], arm=val.unit.str.split(".", n=1).str[1]).merge(
        edges, on="unit"), out / "lr_sweep.csv")
    plot_accuracy(summ, P, out / "accuracy.png")
    bl, pr, das = analyse(ctx, runs, best, cells)
    if bl is not None:
        for f, d in (("probes", pr), ("probe_layers", bl), ("das", das)):
            X.save_table(d, out / f"{f}.csv")
    report(ctx, st, val, best, summ, cells, verd, edges, bl, das)
    print(f"wrote {out}/report.md")
    return 0 if complete and not X.out_of_time(ctx.deadline) else 3


if __name__ == "__main__":
    X.cli(main)
