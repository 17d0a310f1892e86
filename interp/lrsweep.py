"""Learning-rate x seed sweeps of zoo training: the runs, their held-out accuracy per rate with 95% intervals
over training seeds, and whether the best rate lies inside the swept range.

    interp train --layout gdn75 --task mqar --lrs 3e-4,1e-3,3e-3,1e-2 --seeds 0,1,2 --out runs/sweep

trains the 12 runs at once as one stack (`interp.stacked`) into ``runs/sweep/lr<LR>_seed<S>/`` (each a
complete `interp train` output that ``--model`` loads), then writes ``sweep.csv`` (one row per run: its
final held-out accuracy per task, the change over its last evaluation interval, last loss, steps) and
``sweep_summary.csv`` (per rate and task: mean and 95% t-interval over seeds), and prints the summary.
``sweep.json`` holds the sweep's spec (the shared training config, rates, seeds); calling again with
another spec is refused, naming the fields that differ.

The best rate is the one with the highest accuracy averaged over tasks and seeds (ties: the smaller). A
best rate at either end of the range is flagged: the evidence standard asks for the best value inside
the range before an arm's accuracy is read as the architecture's. ``last_gain`` (final accuracy minus
the previous evaluation's) says whether a run had stopped improving.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from interp import InterpError
from interp.stats import seed_interval
from interp.store import atomic_write_json, normalize, read_json, save_csv, spec_diff


def run_dir(root, lr: float, seed: int) -> Path:
    return Path(root) / f"lr{lr:g}_seed{seed}"


def sweep_configs(cfg, lrs, seeds) -> list:
    """One `interp.train.TrainConfig` per (rate, seed): ``cfg`` with its ``lr``, ``seed`` and ``out``
    (`run_dir` under ``cfg.out``) replaced."""
    if len(set(lrs)) < len(lrs):
        raise InterpError(f"--lrs {','.join(f'{x:g}' for x in lrs)} repeats a rate; valid: distinct rates")
    names = [run_dir("", lr, 0).name for lr in lrs]
    same = [lr for lr, n in zip(lrs, names) if names.count(n) > 1]
    if same:
        raise InterpError(f"--lrs {','.join(repr(x) for x in same)} share the run folder {run_dir('', same[0], 0).name}; "
                          "valid: rates that differ in their first 6 significant digits")
    return [dataclasses.replace(cfg, lr=float(lr), seed=int(s), out=str(run_dir(cfg.out, lr, s)))
            for lr in sorted(lrs) for s in seeds]


def sweep_spec(cfgs) -> dict:
    """What defines the sweep: every config field the runs share, the rates and the seeds."""
    shared = dataclasses.asdict(cfgs[0])
    for k in ("out", "lr", "seed", "command", "time_limit"):
        shared.pop(k)
    return {"train": shared, "lrs": sorted({c.lr for c in cfgs}), "seeds": sorted({c.seed for c in cfgs})}


def claim(root, cfgs, resume: bool = True) -> None:
    """Record the sweep's spec in ``root/sweep.json``, or refuse (InterpError) if it holds another one; the
    settings that may change between a run's calls (`interp.runfolder.MAY_CHANGE`: the device within its kind,
    how often it checkpoints) are not compared. ``resume=False`` (``--no-resume``: every run trains again) records
    the new spec over the old one."""
    path, spec = Path(root) / "sweep.json", normalize(sweep_spec(cfgs))
    old = normalize(read_json(path)) if path.is_file() else None
    if resume and old is not None and _comparable(old) != _comparable(spec):
        diff = spec_diff(_comparable(old), _comparable(spec))
        raise InterpError(f"{root} holds a different sweep ({'; '.join(str(d) for d in diff[:4])}); "
                          "valid: the same command, --no-resume to train every run again from step 0 (replacing "
                          "them), or another --out")
    Path(root).mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, spec)


def _comparable(spec: dict) -> dict:
    """A sweep spec without the training settings a resume may change; the device as its kind."""
    from interp.devices import device_type
    from interp.runfolder import MAY_CHANGE
    train = {k: v for k, v in (spec.get("train") or {}).items() if k not in MAY_CHANGE}
    if "device" in (spec.get("train") or {}):
        train["device_type"] = device_type(spec["train"]["device"])
    return {**spec, "train": train}


def collect(cfgs) -> pd.DataFrame:
    """One row per run with a training log: lr, seed, steps, last loss, and per task ``acc/<task>``
    (final held-out accuracy) and ``gain/<task>`` (final minus the previous evaluation's)."""
    from interp.train import read_log
    rows = []
    for c in cfgs:
        log = Path(c.out) / "train_log.jsonl"
        if not log.is_file():
            continue
        evals = [r for r in read_log(log) if any(k.startswith("acc/") for k in r)]
        if not evals:
            continue
        last, prev = evals[-1], (evals[-2] if len(evals) > 1 else {})
        row = {"lr": c.lr, "seed": c.seed, "steps": last["step"], "loss": last.get("loss", float("nan"))}
        for t in c.tasks:
            a = last.get(f"acc/{t}", float("nan"))
            row[f"acc/{t}"] = a
            row[f"gain/{t}"] = a - prev.get(f"acc/{t}", float("nan"))
        rows.append(row)
    return pd.DataFrame(rows)


def summarise(runs: pd.DataFrame, tasks) -> tuple[pd.DataFrame, float, str]:
    """(summary: per lr and task mean / lo / hi / seeds, best lr, a note on where it lies)."""
    rows = []
    for lr, g in runs.groupby("lr"):
        for t in list(tasks) + ["mean"]:
            vals = g[[f"acc/{x}" for x in tasks]].mean(axis=1) if t == "mean" else g[f"acc/{t}"]
            m, lo, hi = seed_interval(vals, (0, 1))
            rows.append({"lr": lr, "task": t, "acc": m, "lo": lo, "hi": hi, "seeds": int(np.isfinite(vals).sum())})
    summ = pd.DataFrame(rows)
    means = summ[summ.task == "mean"].sort_values("lr")
    best = float(means.loc[means.acc.idxmax(), "lr"])
    lrs = sorted(runs.lr.unique())
    if len(lrs) < 2:
        note = f"one rate ({lrs[0]:g}): no sweep"
    elif best in (lrs[0], lrs[-1]):
        note = (f"best rate {best:g} is the {'smallest' if best == lrs[0] else 'largest'} swept: extend the range "
                "before reading the arm's accuracy as its ceiling")
    else:
        note = f"best rate {best:g} lies inside the range {lrs[0]:g}..{lrs[-1]:g}"
    few = int(summ.seeds.min())
    if few < 3:
        note += f"; {few} seed(s) per rate: intervals need 3 or more"
    return summ, best, note


def report(root, cfgs) -> str:
    """Write ``sweep.csv`` and ``sweep_summary.csv`` under ``root``; return the printed summary."""
    runs = collect(cfgs)
    if runs.empty:
        return "no run has evaluated yet"
    tasks = list(cfgs[0].tasks)
    summ, best, note = summarise(runs, tasks)
    save_csv(Path(root) / "sweep.csv", runs, index=False)
    save_csv(Path(root) / "sweep_summary.csv", summ, index=False)
    wide = summ.assign(cell=[f"{a:.3f} [{lo:.3f}, {hi:.3f}]" for a, lo, hi in zip(summ.acc, summ.lo, summ.hi)])
    table = wide.pivot(index="lr", columns="task", values="cell")[tasks + ["mean"]]
    flat = [f"{t}: {runs[f'gain/{t}'].abs().max():.3f}" for t in tasks]
    short = int((runs.steps < cfgs[0].steps).sum()) + len(cfgs) - len(runs)
    head = ([f"UNFINISHED: {short} of {len(cfgs)} runs have not reached step {cfgs[0].steps} (stopped by "
             "--time-limit or interrupted): these numbers are not the sweep's; the same command resumes it"]
            if short else [])
    note = f"so far (not final): {note}" if short else note
    return "\n".join(head + [f"held-out accuracy, mean [95% interval over seeds], {len(runs)} runs:",
                             table.to_string(), note,
                             "largest |change over the last evaluation interval| per task: " + ", ".join(flat),
                             f"wrote {Path(root) / 'sweep.csv'}, {Path(root) / 'sweep_summary.csv'}"])
