"""Training FLOPs of zoo runs: torch's FlopCounterMode on one forward+backward per sequence length, summed over the
batches a run trained on.

`step_flops(model, T)` counts what ``torch.utils.flop_counter.FlopCounterMode`` counts (matrix products: linear
layers, the attention and the recurrent scans' einsums/bmm, scaled-dot-product attention) in one forward and
backward of a ``[1, T]`` sequence through the model (the same for every weight value); elementwise work
(norms, gates, activations, the optimizer) is not counted. `run_flops` rebuilds the shape of every training
batch of a run from its config (`interp.train.batch_spec`: the same task, knobs and seeds as the trainer drew,
the induction warm-up included) and gives the cumulative FLOPs at each logged step, so accuracy can be read
against compute as well as against steps.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from interp import tasks as T


def step_flops(model, T_len: int, cache: dict | None = None) -> int:
    """FLOPs of one forward+backward of a ``[1, T_len]`` sequence (module docstring); ``cache``: a dict reused
    across calls for the same model."""
    if cache is not None and T_len in cache:
        return cache[T_len]
    from torch.utils.flop_counter import FlopCounterMode
    dev = next(model.parameters()).device
    x = torch.zeros(1, T_len, dtype=torch.long, device=dev)
    params = [p for p in model.parameters() if p.requires_grad]
    was = model.training
    model.train()
    try:   # the backward of every parameter, as training runs it, without touching their .grad
        with FlopCounterMode(display=False) as fc:
            torch.autograd.grad(model(x).float().logsumexp(-1).mean(), params)
    finally:
        model.train(was)
    n = int(fc.get_total_flops())
    if cache is not None:
        cache[T_len] = n
    return n


def _length(task: str, knobs: dict, lengths: dict, cfg) -> int:
    """The token length of a training batch of ``task`` with ``knobs`` (one example generated, cached)."""
    if task == "induction":
        return 2 * cfg.induction_len + 2
    key = (task, tuple(sorted(knobs.items())))
    if key not in lengths:
        lengths[key] = int(T.generate(task, 1, seed=0, **knobs).tokens.shape[1])
    return lengths[key]


def warmup_end(out) -> int | None:
    """The step the induction warm-up ended at (the log's ``induction_done_at`` row), or None."""
    f = Path(out) / "train_log.jsonl"
    if not f.is_file():
        return None
    for line in f.read_text().splitlines():
        if line.strip() and "induction_done_at" in (row := json.loads(line)):
            return int(row["induction_done_at"])
    return None


def run_flops(model, cfg, steps) -> dict:
    """{step: cumulative training FLOPs after ``step`` steps} for the logged ``steps`` of a run trained with
    TrainConfig ``cfg`` (its batches rebuilt with `interp.train.batch_spec`; ``cfg.out``'s log says where the
    induction warm-up ended)."""
    from interp.train import batch_spec
    done_at = warmup_end(cfg.out) if cfg.induction_steps else 0
    done_at = cfg.induction_steps if done_at is None else done_at   # a log without the row: the longest warm-up
    want, out, total = sorted(set(int(s) for s in steps)), {}, 0
    lengths, per_len = {}, {}
    for step in range(max(want, default=0)):
        rng = np.random.default_rng([cfg.seed, step])
        warming = step < done_at
        task, knobs, _ = batch_spec(cfg, step, rng, warming)
        total += cfg.batch_size * step_flops(model, _length(task, knobs, lengths, cfg), per_len)
        if step + 1 in want:
            out[step + 1] = total
    return out


def accuracy_vs_flops(runs: dict, tasks, device="cpu"):
    """One row per logged step of each run (``runs``: {arm: interp.experiment Run}): arm, step, cumulative
    training ``flops`` and the held-out accuracy of each of ``tasks`` at that step (the run's log)."""
    import pandas as pd

    from interp.experiment.runs import load_run
    from interp.train import read_log
    rows = []
    for arm, run in runs.items():
        f = Path(run.out) / "train_log.jsonl"
        if not f.is_file():
            continue
        log = read_log(f)
        fl = run_flops(load_run(run, device), run.cfg, [r["step"] for r in log])
        rows += [dict(arm=arm, step=r["step"], flops=fl[r["step"]], **{t: r.get(f"acc/{t}", float("nan"))
                                                                       for t in tasks}) for r in log]
    return pd.DataFrame(rows)
