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


def sweep(models: dict, tasks=None, knobs=None, n: int = 200, seed: int = 123,
          progress: bool = True) -> SweepResult:
    """Evaluate each model on each task, moving one knob at a time over its difficulty grid.

    models: {name: model}; tasks: task names (default: all); knobs: optional {task: [knob, ...]}.
    """
    tasks = list(tasks or T.TASKS)
    for t in tasks:
        if t not in T.TASKS:
            raise InterpError(f"unknown task '{t}'; valid tasks: {', '.join(sorted(T.TASKS))}")
    jobs = []
    for t in tasks:
        grid = T.difficulty_grid(t)
        for knob in (knobs or {}).get(t, grid):
            if knob not in grid:
                raise InterpError(f"unknown knob '{knob}' for task '{t}'; valid knobs: {', '.join(grid)}")
            jobs += [(t, knob, v) for v in grid[knob]]
    rows = []
    for t, knob, v in tqdm(jobs, desc="eval", disable=not progress, dynamic_ncols=True):
        batch = T.generate(t, n, seed=seed, **{knob: v})
        for name, model in models.items():
            with torch.no_grad():
                acc = answer_accuracy(model, batch.to(model.device))
            rows.append(dict(model=name, task=t, knob=knob, value=v, accuracy=acc, n=n,
                             seq_len=batch.tokens.shape[1]))
    return SweepResult(rows)
