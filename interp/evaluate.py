"""Accuracy of models against each difficulty knob of each task, as a tidy DataFrame."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from interp import InterpError
from interp import tasks as T
from interp.train import answer_accuracy


class SweepResult(pd.DataFrame):
    """Tidy results (model, task, knob, value, accuracy, n). ``.plot()`` draws accuracy against
    each knob, one line per model, one panel per (task, knob); it returns the matplotlib figure."""

    @property
    def _constructor(self):
        return SweepResult

    def pivot(self) -> pd.DataFrame:
        """Accuracy as a wide table: one row per (task, knob, value), one column per model."""
        return self.pivot_table(index=["task", "knob", "value"], columns="model", values="accuracy",
                                sort=False).reindex(columns=list(dict.fromkeys(self["model"])))

    def plot(self, path=None, title=None):  # noqa: D102 - documented on the class
        import matplotlib
        if path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        panels = list(self.groupby(["task", "knob"], sort=False).groups)
        ncol = min(3, len(panels))
        nrow = (len(panels) + ncol - 1) // ncol
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
        for ax, (task, knob) in zip(axes.flat, panels):
            sub = self[(self.task == task) & (self.knob == knob)]
            for model, g in sub.groupby("model", sort=False):
                ax.plot([str(v) for v in g["value"]], g["accuracy"], marker="o", label=model)
            ax.set_title(f"{task}: {knob}", fontsize=10)
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel(knob)
            ax.set_ylabel("answer accuracy")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=8)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            from interp.store import atomic_save
            atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=110, format=Path(path).suffix[1:] or "png"))
            plt.close(fig)
        return fig


def _vocab(model) -> int | None:
    """How many token ids ``model`` embeds (`hooks.HookedModel.vocab_size`); None where it does not say."""
    import hooks
    try:
        return hooks.wrap(model).vocab_size
    except Exception:     # a model hooks cannot wrap: answer_accuracy runs it unchecked, as before
        return None


def _unique(items, what: str) -> list:
    items = list(items)
    twice = [x for x in dict.fromkeys(items) if items.count(x) > 1]
    if twice:
        raise InterpError(f"{what} '{twice[0]}' is given twice; valid: each {what} once")
    return items


def plan_sweep(models: dict, tasks=None, knobs=None, n: int = 200, seed: int = 123) -> list:
    """The checked jobs of `sweep`, before any model runs: [(task, knob, value, batch)]. Refused: no model, a
    task or a knob given twice, knobs of a task not swept, an unknown task or knob, ``n`` below 1, and a batch with
    a token id a model's vocabulary lacks."""
    if not isinstance(models, dict) or not models:
        raise InterpError(f"models {models!r} is not valid; valid: a dict {{name: model}} with at least one model")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InterpError(f"n {n!r} is not valid; valid: integers >= 1 (examples per difficulty point)")
    tasks = _unique([tasks] if isinstance(tasks, str) else tasks or T.TASKS, "task")
    for t in tasks:
        if t not in T.TASKS:
            raise InterpError(f"unknown task '{t}'; valid tasks: {', '.join(sorted(T.TASKS))}")
    other = [t for t in (knobs or {}) if t not in tasks]
    if other:
        raise InterpError(f"knobs are given for task '{other[0]}', which is not swept; valid: knobs of the swept "
                          f"tasks ({', '.join(tasks)})")
    jobs = []
    for t in tasks:
        grid = T.difficulty_grid(t)
        for knob in _unique((knobs or {}).get(t, grid), f"knob of task {t}"):
            if knob not in grid:
                raise InterpError(f"unknown knob '{knob}' for task '{t}'; valid knobs: {', '.join(grid)}")
            jobs += [(t, knob, v, T.generate(t, n, seed=seed, **{knob: v})) for v in grid[knob]]
    hi = max(jobs, key=lambda j: int(j[3].tokens.max()), default=None)     # the job with the largest token id
    for name, model in models.items():
        V = _vocab(model)
        if V and hi is not None and int(hi[3].tokens.max()) >= V:
            raise InterpError(f"model '{name}' cannot read task '{hi[0]}' ({hi[1]}={hi[2]}): token id "
                              f"{int(hi[3].tokens.max())} out of range; valid: 0..{V - 1} (the model's vocabulary)")
    return jobs


def run_sweep(models: dict, jobs: list, progress: bool = True) -> SweepResult:
    """Accuracy of each model on each job of `plan_sweep`."""
    rows = []
    for t, knob, v, batch in tqdm(jobs, desc="eval", disable=not progress, dynamic_ncols=True):
        for name, model in models.items():
            with torch.no_grad():
                acc = answer_accuracy(model, batch.to(model.device))
            rows.append(dict(model=name, task=t, knob=knob, value=v, accuracy=acc, n=batch.tokens.shape[0],
                             seq_len=batch.tokens.shape[1]))
    return SweepResult(rows)


def sweep(models: dict, tasks=None, knobs=None, n: int = 200, seed: int = 123,
          progress: bool = True) -> SweepResult:
    """Evaluate each model on each task, moving one knob at a time over its difficulty grid.

    models: {name: model} (at least one); tasks: task names (default: all), each once; knobs: optional
    {task: [knob, ...]} for tasks among ``tasks``. Everything is checked (`plan_sweep`) before any model runs.
    """
    return run_sweep(models, plan_sweep(models, tasks, knobs, n, seed), progress)
