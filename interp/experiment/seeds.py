"""Training seeds of an experiment: a learning-rate sweep on the first seed, the other seeds at each unit's best
rate, where that rate lies in the sweep, and verdict labels from intervals over seeds.

A *unit* is what one verdict is about (an arm, or an arm on one task); its runs are `interp.experiment.Run`
objects that carry ``.unit`` and ``.seed`` (made by the experiment's ``make``). `sweep_and_seeds` trains
seed ``seeds[0]`` at every rate of ``lrs``, validates them, picks each unit's best rate (`best_by`: ties go
to the smaller rate) once its whole sweep is finished, then trains the other seeds there, so every number a
report gives about a unit can carry a 95% interval over training seeds (`interp.stats.seed_interval`).
`lr_edges` says whether each best rate lies inside the sweep; `label` reads an interval against a threshold.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from interp import InterpError
from interp.experiment.report import md_table
from interp.experiment.results import ResultLog
from interp.experiment.runs import best_by, load_run, make_runs, status, train_runs
from interp.stats import boot_ci, seed_interval


def unit_runs(ctx, unit: str, spec: dict, lrs, seed: int, **train_kw) -> list:
    """The runs of ``unit`` at each rate of ``lrs`` for training seed ``seed`` (`make_runs` with ``spec`` and
    ``train_kw``; named ``<unit>_s<seed>_lr<lr>``), each with ``.unit`` and ``.seed``: what
    `sweep_and_seeds` expects its ``make`` to return."""
    runs = make_runs(ctx.runs, {f"{unit}_s{seed}": {**spec, "seed": seed}}, lrs, **train_kw)
    for r in runs:
        r.unit, r.seed = unit, seed
    return runs


VAL_COLUMNS = ("unit", "lr", "seed", "val_acc")


def validate_runs(ctx, runs, score, backend: str = "reference") -> pd.DataFrame:
    """Validation rows (unit, lr, seed and the dict ``score(model, run)`` returns, which holds ``val_acc``) of
    the finished ``runs``, each cached in ``<runs>/eval/val_<run>.csv``; stops at the call's deadline."""
    rows = []
    for r in runs:
        if ctx.out_of_time():
            break

        def one(r=r):
            m = load_run(r, ctx.device).set_scan_backend(backend)
            return pd.DataFrame([{"unit": r.unit, "lr": r.lr, "seed": r.seed, **score(m, r)}])
        log = ResultLog(ctx.runs / "eval" / f"val_{r.name}.csv")
        df = log.once(one)
        missing = [c for c in VAL_COLUMNS if c not in df.columns]
        if missing or len(df) != 1:
            raise InterpError(f"cached validation '{log.path}' is damaged ({len(df)} rows, columns "
                              f"{', '.join(map(str, df.columns)) or 'none'}); valid: one row with "
                              f"{', '.join(VAL_COLUMNS)} (delete the file and call again to recompute it)")
        rows.append(df)
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["unit", "lr", "seed", "val_acc"])


def sweep_and_seeds(ctx, specs: dict, make, validate, weight=None, capacity=None, train=None):
    """Seed 0 at every learning rate, validated; then the other seeds at each unit's best learning rate
    (once its sweep is finished). ``make(ctx, unit, spec, lrs, seed)`` -> runs (with ``.unit``, ``.seed``);
    ``validate(ctx, runs)`` -> rows (unit, lr, seed, val_acc). ``ctx.P`` holds ``lrs``, ``seeds`` and
    ``eval_reserve`` (minutes kept for evaluation before the deadline); ``weight`` / ``capacity``: as
    `train_runs` takes them (on a GPU only). ``train``: what trains the runs, with `train_runs`' keywords and
    its status table (default `train_runs`, zoo models; E3 passes its HF-model trainer, whose runs `status`
    reads the same way). Returns (status, validation table, {unit: best lr}, every run)."""
    P = ctx.P
    dl = None if ctx.deadline is None else ctx.deadline - (0 if ctx.train_only else 60 * P["eval_reserve"])
    kw = dict(workers=ctx.workers, progress=ctx.progress, devices=ctx.train_devices, deadline=dl,
              stack=ctx.stack, length_split=ctx.length_split, weight=weight if ctx.device != "cpu" else None,
              capacity=capacity)
    train = train or train_runs
    sweep = [r for u, s in specs.items() for r in make(ctx, u, s, P["lrs"], P["seeds"][0])]
    st = train(sweep, **kw)
    val = validate(ctx, [r for r, c in zip(sweep, st.complete) if c])
    best = {}
    if len(val):
        for u, g in val[val.seed == P["seeds"][0]].groupby("unit", sort=False):
            if len(g) == len(P["lrs"]):
                best[u] = float(best_by(g, key="unit", score="val_acc").lr.iloc[0])
    extra = [r for u, lr in best.items() for s in P["seeds"][1:] for r in make(ctx, u, specs[u], [lr], s)]
    if extra:
        st = pd.concat([st, train(extra, **kw)], ignore_index=True)
        val = pd.concat([val, validate(ctx, [r for r in extra if status(r)["complete"]])], ignore_index=True)
    print(f"{int(st.complete.sum())} of {n_runs(P, len(specs))} runs finished", flush=True)
    return st, val, best, sweep + extra


def n_runs(P: dict, n_units: int) -> int:
    """How many runs `sweep_and_seeds` makes for ``n_units`` units: every rate on the first seed, the other
    seeds at one rate."""
    return n_units * (len(P["lrs"]) + len(P["seeds"]) - 1)


def sweep_complete(status: pd.DataFrame, P: dict, n_units: int) -> bool:
    """Whether every run of the sweep and of the other seeds exists and is finished (the seeds' runs exist only
    once their unit's sweep has been validated)."""
    return bool(status.complete.all()) and len(status) == n_runs(P, n_units)


def chosen(runs, best: dict) -> list:
    """The finished runs at each unit's best learning rate, every seed."""
    return [r for r in runs if best.get(r.unit) == r.lr and status(r)["complete"]]


def sweep_frame(st: pd.DataFrame, runs, val: pd.DataFrame) -> pd.DataFrame:
    """The status table ``st`` of `sweep_and_seeds` with each run's unit, seed and validation row: a report's
    ``lr_sweep.csv``."""
    ids = pd.DataFrame([{"run": r.name, "unit": r.unit, "seed": r.seed} for r in runs])
    return st.merge(ids, on="run").merge(val, on=["unit", "lr", "seed"], how="left")


def lr_edges(val: pd.DataFrame, lrs, seed0: int) -> pd.DataFrame:
    """Per unit: the best learning rate and where it lies: ``inside`` the sweep, at an ``edge`` (better than
    every inner one by more than 0.01), or ``flat`` (all within 0.01: no optimum to place)."""
    rows, lrs = [], sorted(lrs)
    for u, g in val[val.seed == seed0].groupby("unit", sort=False):
        acc = g.set_index("lr").val_acc.reindex(lrs)
        best = float(acc.idxmax())
        inner = acc.iloc[1:-1].max() if len(lrs) > 2 else -np.inf
        where = ("flat" if acc.max() - acc.min() <= 0.01 else
                 "edge" if best in (lrs[0], lrs[-1]) and acc.max() - inner > 0.01 else "inside")
        rows.append(dict(unit=u, best_lr=best, best_val=float(acc.max()), where=where))
    return pd.DataFrame(rows)


def label(lo: float, hi: float, theta: float) -> str:
    """solves / fails / undecided: the 95% interval [lo, hi] against ``theta``."""
    if np.isnan(lo) or np.isnan(hi):
        return "undecided"
    return "solves" if lo >= theta else "fails" if hi < theta else "undecided"


def fmt(m, lo, hi) -> str:
    """``0.93 [0.88, 0.98]`` (the interval left out where it is undefined, e.g. one seed)."""
    return f"{m:.2f}" + ("" if np.isnan(lo) else f" [{lo:.2f}, {hi:.2f}]")


def rule_text(doc: str) -> str:
    """The paragraph of a script's docstring that states its verdict rule (starts "Verdict rule"), on one line."""
    return next((" ".join(x.split()) for x in doc.split("\n\n") if x.startswith("Verdict rule")), "")


VERDICT_WORDS = ("agrees", "disagrees", "inconclusive", "not shown")


def replicated(mean_lines: list[str], per_seed: dict) -> list[str]:
    """``mean_lines`` (verdicts on the mean over seeds) each followed by how the same verdict came out on each
    seed alone (``per_seed``: {seed: that seed's lines, in the same order}), e.g. "per seed: agrees 2 of 3,
    inconclusive 1". A line whose verdict word cannot be read stays as it is."""
    def word(line):
        found = [w for w in VERDICT_WORDS if f"**{w}" in line.lower()]
        return found[-1] if found else None
    out = []
    for i, line in enumerate(mean_lines):
        words = [word(lines[i]) for lines in per_seed.values() if i < len(lines)]
        words = [w for w in words if w]
        if word(line) is None or not words or len(per_seed) < 2:
            out.append(line)
            continue
        counts = {w: words.count(w) for w in VERDICT_WORDS if w in words}
        out.append(f"{line} (per seed: " + ", ".join(f"{w} {n} of {len(words)}" for w, n in counts.items()) + ")")
    return out


def seed_means(res: pd.DataFrame, keys: list, value: str = "accuracy", also=(), bounds=(0, 1)) -> pd.DataFrame:
    """Per ``keys``: ``value``'s mean over the rows (one per training seed) with its 95% t-interval (``lo``,
    ``hi``, clipped to ``bounds``), the number of rows (``seeds``), and the plain mean of each column in ``also``."""
    rows = []
    for k, g in res.groupby(keys, sort=False, dropna=False):     # a key may be NaN (e.g. no training range)
        m, lo, hi = seed_interval(g[value], bounds=bounds)
        rows.append({**dict(zip(keys, k)), value: m, "lo": lo, "hi": hi, "seeds": len(g),
                     **{c: g[c].mean() for c in also}})
    return pd.DataFrame(rows)


def sweep_lines(val: pd.DataFrame, best: dict, lrs, seeds) -> list[str]:
    """Markdown for a report: validation accuracy per unit and rate on the first seed, where each unit's best
    rate lies (`lr_edges`), and the validation accuracy at that rate over every seed (mean [95% interval])."""
    first = val[val.seed == seeds[0]]
    piv = first.pivot_table(index="unit", columns="lr", values="val_acc", sort=False)
    edges = lr_edges(val, lrs, seeds[0])
    over = [dict(unit=u, lr=f"{lr:g}", seeds=int((v := val[(val.unit == u) & (val.lr == lr)].val_acc).size),
                 val_acc=fmt(*seed_interval(v, bounds=(0, 1)))) for u, lr in best.items()]
    return ([f"Validation accuracy, training seed {seeds[0]}, per learning rate:", ""]
            + md_table(piv.reset_index().rename(columns={c: f"{c:g}" for c in piv.columns}).round(3))
            + ["", "Best rate per unit and where it lies (`inside` the sweep, at an `edge`, or `flat`):", ""]
            + md_table(edges.assign(best_lr=[f"{x:g}" for x in edges.best_lr]).round(3))
            + ["", f"Validation accuracy at the best rate over training seeds {', '.join(map(str, seeds))}:", ""]
            + md_table(pd.DataFrame(over)) + [""])


def paired_diff(ex: pd.DataFrame, a: str, b: str, metric: str, by=("task",), n_boot: int = 1000, seed: int = 0,
                keys=("task", "knob", "value", "example")) -> pd.DataFrame:
    """``metric`` of arm ``b`` minus arm ``a`` on the same test examples (rows of ``ex``: arm, the ``keys``,
    optionally ``seed``), per ``by`` group. With two or more training seeds the interval is over seeds: each
    seed's mean difference over its examples, then the mean and 95% t-interval of those (``over`` =
    "seeds"; seed s of one arm is set against seed s of the other, independent runs, as E5 does). With one
    seed it is a 95% bootstrap interval over the examples of that one run (``over`` = "examples"), which
    says nothing about another training run."""
    rng = np.random.default_rng(seed)
    keys = list(keys) + (["seed"] if "seed" in ex else [])
    j = ex[ex.arm == a].merge(ex[ex.arm == b], on=keys, suffixes=("_a", "_b"))
    j["d"] = j[f"{metric}_b"] - j[f"{metric}_a"]
    rows = []
    for k, g in j.groupby(list(by), sort=False):
        k = k if isinstance(k, tuple) else (k,)
        n_seeds = g["seed"].nunique() if "seed" in g else 1
        if n_seeds >= 2:
            m, lo, hi = seed_interval(g.groupby("seed")["d"].mean())
        else:
            m, (lo, hi) = g["d"].mean(), boot_ci(g["d"].to_numpy(float), np.ones(len(g)), n_boot, rng)
        rows.append({**dict(zip(by, k)), "a": a, "b": b, "metric": metric, f"{metric}_a": g[f"{metric}_a"].mean(),
                     f"{metric}_b": g[f"{metric}_b"].mean(), "diff": m, "ci_lo": lo, "ci_hi": hi, "n": len(g),
                     "seeds": n_seeds, "over": "seeds" if n_seeds >= 2 else "examples"})
    return pd.DataFrame(rows)
