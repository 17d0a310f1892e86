"""The synthetic probes of the token-loss comparison: their zoo models (shipped defaults, zoo
directories, or a matched transformer / gdn75 / gdn100 trained here on the probe tasks), their
per-token losses cached per knob value, chance levels, the note that says where the models come
from, and the figure."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from interp import InterpError
from interp import tasks as T
from interp.experiment.context import Ctx
from interp.experiment.report import pyplot, save_figure
from interp.experiment.results import ResultLog
from interp.experiment.runs import load_run, matched
from interp.experiment.seeds import chosen, sweep_and_seeds, sweep_complete, sweep_frame, unit_runs, validate_runs
from interp.tokenloss.losses import PROBE_TASKS, task_losses
from interp.tokenloss.pair import checkpoint_fingerprint


def training_tasks(spec: str) -> list | None:
    """The tasks a zoo model (default name or directory) was trained on, from its meta.json; None
    if that is not recorded."""
    from interp.demo import default_model_path
    try:
        d = Path(spec) if Path(spec).is_dir() else default_model_path(spec)
        return list(json.loads((d / "meta.json").read_text())["train_config"]["tasks"])
    except (InterpError, OSError, KeyError, TypeError, ValueError):
        return None


def probe_ctx(ctx: Ctx, P: dict) -> Ctx:
    """The context the probe models train in: runs under ``<runs>/probe_models``, ``P["probe_train"]``'s
    settings (learning rates, steps, ...) with the experiment's training seeds, its worker count on a GPU."""
    import dataclasses
    Q = P["probe_train"]
    return dataclasses.replace(ctx, runs=ctx.runs / "probe_models", P={**Q, "seeds": tuple(P["seeds"])},
                               workers=Q["workers"] if ctx.device != "cpu" else 1)


def probe_specs(P: dict) -> dict:
    """Matched transformer, gdn75 and gdn100 trained on the probe tasks."""
    Q = P["probe_train"]
    return {a: {"model": matched({**Q["model"], "layout": a}), "tasks": list(PROBE_TASKS)}
            for a in ("transformer", "gdn75", "gdn100")}


def _make(c: Ctx, unit: str, spec: dict, lrs, seed: int) -> list:
    Q = c.P
    return unit_runs(c, unit, spec, lrs, seed, steps=Q["steps"], batch_size=Q["batch_size"], warmup=Q["warmup"],
                     eval_every=max(1, Q["steps"] // 4), eval_n=128, save_every=max(50, Q["steps"] // 10),
                     device=c.device, scan_backend=c.scan_backend)


def _validate(c: Ctx, runs) -> pd.DataFrame:
    """Answer accuracy over the probe tasks' grids (validation seed 99), cached per run."""
    from interp.train import answer_accuracy

    def score(m, r):
        grid = [(t, k, v) for t in PROBE_TASKS for k, vs in T.difficulty_grid(t).items() for v in vs]
        return {"val_acc": float(np.mean([answer_accuracy(m, T.generate(t, c.P["val_n"], seed=99, **{k: v}).to(
            m.device)) for t, k, v in grid]))}
    return validate_runs(c, runs, score)


def train_probe_runs(ctx: Ctx, P: dict, progress: bool = False):
    """Train (or continue) the probe models: the learning-rate sweep on the first training seed, then the other
    seeds at each arm's best rate (`interp.experiment.sweep_and_seeds`), until done or until the call's deadline
    less ``eval_reserve``. Returns (sweep_and_seeds' result, its status table). Safe to call again: finished runs
    are skipped (so the GPU path can start it in a thread while the text arms train)."""
    import dataclasses
    c = dataclasses.replace(probe_ctx(ctx, P), progress=progress)
    out = sweep_and_seeds(c, probe_specs(P), _make, _validate)
    return out, out[0]


def _given_models(ctx: Ctx, spec: str):
    """{name: zoo model} and {name: source} of the comma-separated defaults / zoo directories ``spec``."""
    from interp.demo import default_model_path
    from interp.models import load_any
    out, sources = {}, {}
    for s in [x for x in spec.split(",") if x]:
        m, kind = load_any(s, device=ctx.device)
        if kind != "zoo":
            raise InterpError(f"probe model '{s}' is a HF checkpoint; the synthetic probes read the task "
                              "vocabulary, so they take zoo models (a default name or a zoo directory)")
        out[Path(s).name] = m.eval()
        # cached probe rows belong to this checkpoint: a retrained default gets new rows
        d = Path(s) if Path(s).is_dir() else default_model_path(s)
        sources[Path(s).name] = f"{s}@{checkpoint_fingerprint(d)}"
    return out, sources


def probe_models(ctx: Ctx, P: dict, spec: str):
    """{seed: {name: zoo model}}: shipped defaults / zoo directories (one "seed", None), or ``train``: matched
    transformer, gdn75 and gdn100 trained on the probe tasks (learning-rate sweep on the first seed, the other
    seeds at each arm's best rate). Returns (models or None while the training is unfinished, the sweep's
    table or None, {seed: {name: source}})."""
    if spec != "train":
        out, sources = _given_models(ctx, spec)
        return {None: out}, None, {None: sources}
    (st, val, best, runs), _ = train_probe_runs(ctx, P, progress=ctx.progress)
    Q = P["probe_train"]
    if not sweep_complete(st, {**Q, "seeds": P["seeds"]}, len(probe_specs(P))):
        return None, st, None
    models, sources = {}, {}
    for r in chosen(runs, best):
        models.setdefault(r.seed, {})[r.unit] = load_run(r, ctx.device).set_scan_backend("reference")
        sources.setdefault(r.seed, {})[r.unit] = f"train:{r.name}"
    order = list(probe_specs(P))
    models = {s: {a: m[a] for a in order if a in m} for s, m in models.items()}
    return models, sweep_frame(st, runs, val), sources


def probe_note(spec: str, models: dict, P: dict):
    """({model: tasks it was trained on, or None if unknown}, the report's note on where the probe
    models come from) for ``--probe-models`` ``spec`` (not ``none``)."""
    ref = next(iter(models))
    if spec == "train":
        Q = P["probe_train"]
        return {n: list(PROBE_TASKS) for n in models}, (
            f"Probe models trained here on {', '.join(PROBE_TASKS)} (matched parameter count, "
            f"{Q['steps']} steps; learning rates {', '.join(f'{x:g}' for x in Q['lrs'])} on the first training "
            f"seed, the best by validation accuracy, then seeds {', '.join(map(str, P['seeds'][1:])) or '(none)'} "
            f"there). Reference: `{ref}`.")
    trained = {n: training_tasks(x) for n, x in zip(models, [x for x in spec.split(",") if x])}
    untrained = sorted(n for n, t in trained.items() if t is not None and not set(PROBE_TASKS) <= set(t))
    return trained, (f"Probe models: {', '.join(f'`{n}`' for n in models)} (reference `{ref}`)."
                     + (f" **{', '.join(f'`{n}`' for n in untrained)} were trained on "
                        + ", ".join(sorted({t for n in untrained for t in trained[n]}))
                        + " only, not on all the probe tasks**: their losses there measure how a model transfers to "
                        "an unseen format, not the published comparison (the full profile trains models on the probe "
                        "tasks)." if untrained else ""))


def chance_levels():
    """({task: the candidate loss of a uniform guess, nats}, {task: its candidate accuracy}) of the
    probe tasks (16 colours, 16 boxes, 4 closing brackets)."""
    from interp.tasks.vocab import BOXES, CLOSE, COLORS
    sizes = {"pronoun": len(COLORS), "entity_tracking": len(BOXES), "brackets": len(CLOSE)}
    return {t: math.log(k) for t, k in sizes.items()}, {t: 1 / k for t, k in sizes.items()}


def run_probes(models: dict, ctx: Ctx, P: dict, sources: dict | None = None) -> pd.DataFrame:
    """Per-token probe losses of ``models``, cached in ``<runs>/probes.csv`` per (model source, task,
    knob, value) so a later call continues; ``sources`` {name: where the model came from} keeps a
    shipped default apart from a trained model of the same name."""
    sources = sources or {n: n for n in models}
    log = ResultLog(ctx.runs / "probes.csv", ["source", "model", "task", "knob", "value"])
    for task in PROBE_TASKS:
        grid = P.get("probe_grid", {}).get(task)
        for name, m in models.items():
            key = dict(source=sources[name], model=name, task=task)
            todo = {k: [v for v in vs if not log.done(**key, knob=k, value=v)]
                    for k, vs in (grid or T.difficulty_grid(task)).items()}
            todo = {k: vs for k, vs in todo.items() if vs}
            if todo:
                df = task_losses({name: m}, task, n=P["probe_n"], seed=123, grid=todo, progress=ctx.progress)
                log.add(df.assign(source=sources[name]))
    df = log.frame()
    keep = {(sources[n], n) for n in models}
    sel = [(s, m) in keep for s, m in zip(df.source.astype(str), df.model.astype(str))]
    return df[sel].drop(columns="source").reset_index(drop=True)


def plot_probes(df: pd.DataFrame, path, chance: dict):
    """Candidate loss against each knob's values, one panel per (task, role) and knob, one line per
    model; dotted: a uniform guess."""
    plt = pyplot()
    combos = list(dict.fromkeys(zip(df.task, df.role)))
    ncol = max(len(set(df[df.task == t].knob)) for t, _ in combos)
    fig, axes = plt.subplots(len(combos), ncol, figsize=(3.6 * ncol, 2.7 * len(combos)), squeeze=False)
    for i, (task, role) in enumerate(combos):
        sub = df[(df.task == task) & (df.role == role)]
        knobs = list(dict.fromkeys(sub.knob))
        for j in range(ncol):
            ax = axes[i, j]
            if j >= len(knobs):
                ax.axis("off")
                continue
            g = sub[sub.knob == knobs[j]]
            xs = list(dict.fromkeys(g["value"].astype(str)))
            for k, (model, h) in enumerate(g.groupby("model", sort=False)):
                mean = h.groupby(h["value"].astype(str), sort=False)["cand_loss"].mean().reindex(xs)
                ax.plot(range(len(xs)), mean.values, marker="o", color=f"C{k}", label=model)
            ax.axhline(chance[task], color="gray", ls=":", lw=0.8)
            ax.set_xticks(range(len(xs)), xs)
            ax.set_xlabel(knobs[j], fontsize=8)
            ax.set_title(f"{task} / {role}", fontsize=9)
            ax.grid(alpha=0.3)
        axes[i, 0].set_ylabel("candidate loss (nats)", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Synthetic probes: loss among the candidates (dotted: uniform guess)", fontsize=10)
    save_figure(fig, path)
