"""Training sweeps: learning-rate sweeps of zoo models, trained in parallel worker processes under a
time budget and resumable across calls, and the best run per arm.

A *run* is one (arm, learning rate); an *arm* is one architecture / training variant. Runs go to
``<root>/runs/<arm>_lr<lr>/`` (`interp.train` checkpoints, ``meta.json`` with ``steps_done``). A
call trains what is not finished, highest priority first, and stops every run cleanly before its
deadline (`TrainConfig.time_limit` leaves a checkpoint); calling again continues.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from interp.store import atomic_write_json, read_json
from interp.tasks import VOCAB
from interp.train import TrainConfig, default_induction_steps, train
from interp.zoo import HybridLM, ZooConfig, load_model, load_trainer_state, match_params


# --- model specs --------------------------------------------------------------------------------

def matched(model: dict, ref_layout: str = "transformer") -> dict:
    """``model`` with its SwiGLU width set so its parameter count matches ``ref_layout`` at the
    same width and depth (as the shipped default set is matched)."""
    ref = HybridLM(ZooConfig(vocab_size=len(VOCAB), **{**model, "layout": ref_layout, "mlp_hidden": 0}))
    cfg = match_params(ZooConfig(vocab_size=len(VOCAB), **{**model, "mlp_hidden": 0}), ref.num_params())
    return {**model, "mlp_hidden": cfg.mlp_hidden}


def n_params(model: dict) -> int:
    return HybridLM(ZooConfig(vocab_size=len(VOCAB), **model)).num_params()


def attention_fraction(model: dict) -> float:
    cfg = ZooConfig(vocab_size=len(VOCAB), **model)
    return len(cfg.attention_layers) / cfg.n_layers


# --- runs ---------------------------------------------------------------------------------------

@dataclass
class Run:
    arm: str
    lr: float
    cfg: TrainConfig
    priority: int = 0

    @property
    def name(self) -> str:
        return f"{self.arm}_lr{self.lr:g}"

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)


def make_runs(root, arms: dict, lrs, priority=None, **train_kw) -> list[Run]:
    """One Run per (arm, lr). arms: {name: {"model": {...}, optional "knobs", "tasks"}}."""
    runs = []
    for i, (arm, spec) in enumerate(arms.items()):
        for j, lr in enumerate(lrs):
            kw = {**train_kw, **{k: v for k, v in spec.items() if k != "model"}}
            # the trainer's induction warm-up for arms with attention, as for the shipped defaults
            kw.setdefault("induction_steps", default_induction_steps(spec["model"], kw.get("steps", 0)))
            cfg = TrainConfig(out=str(Path(root) / "runs" / f"{arm}_lr{lr:g}"), model=dict(spec["model"]), lr=lr, **kw)
            runs.append(Run(arm, lr, cfg, priority=(priority or {}).get(arm, 0) * 1000 + j * 100 + i))
    return runs


def status(run: Run) -> dict:
    meta = run.out / "meta.json"
    done = read_json(meta)["steps_done"] if meta.is_file() else 0
    if not meta.is_file() and (run.out / "checkpoint" / "trainer.pt").is_file():   # read as data: no code runs
        done = load_trainer_state(run.out / "checkpoint" / "trainer.pt")["step"]
    peak = run.out / "gpu_peak.json"
    return {"run": run.name, "arm": run.arm, "lr": run.lr, "steps_done": done, "steps": run.cfg.steps,
            "complete": done >= run.cfg.steps,
            "gpu_peak_gb": round(read_json(peak)["peak_gb"], 2) if peak.is_file() else None}


def load_run(run: Run, device="cpu"):
    return load_model(run.out, device=device).eval()


def best_by(scores: pd.DataFrame, key="arm", score="val_acc") -> pd.DataFrame:
    """The row with the highest score per arm (ties: the smaller lr, i.e. the earlier row)."""
    idx = scores.sort_values(["lr"]).groupby(key, sort=False)[score].idxmax()
    return scores.loc[idx].set_index(key)


# --- training in worker processes ---------------------------------------------------------------

def _train_job(cfg_dicts: list, deadline: float | None, threads: int, length_split: bool = False) -> str:
    """Worker: train (or resume) one run, or several as one stack (`interp.stacked.train_stacked`, with
    ``length_split``), until done or until the deadline; the output goes to the first run's ``<out>/train.out``
    (and the peak GPU memory to each run's ``<out>/gpu_peak.json``)."""
    import torch
    torch.set_num_threads(threads)
    cfgs = [TrainConfig(**c) for c in cfg_dicts]
    dev = str(cfgs[0].device)
    if dev.startswith("cuda:"):
        torch.cuda.set_device(dev)      # no stray context on cuda:0 for a run placed elsewhere
    if deadline is not None:
        left = (deadline - time.time()) / 60
        if left < 0.25:
            return "skipped"
        for c in cfgs:
            c.time_limit = left - 0.1
    for c in cfgs:
        Path(c.out).mkdir(parents=True, exist_ok=True)
    with open(Path(cfgs[0].out) / "train.out", "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        try:
            if len(cfgs) == 1:
                train(cfgs[0], resume=True, progress=False)
            else:
                from interp.stacked import train_stacked
                print(f"stack of {len(cfgs)} runs: {', '.join(c.out for c in cfgs)}", flush=True)
                train_stacked(cfgs, resume=True, progress=False, length_split=length_split)
        except Exception as e:  # noqa: BLE001 - one failed run (e.g. out of GPU memory) must not stop the others
            import traceback
            traceback.print_exc()
            return f"failed: {type(e).__name__}: {e}"
        finally:
            if torch.cuda.is_available() and dev != "cpu":
                for c in cfgs:
                    atomic_write_json(Path(c.out) / "gpu_peak.json", {
                        "peak_gb": torch.cuda.max_memory_allocated(dev) / 1e9, "device": dev})
    return "ran"


def jobs_of(todo: list[Run], stack: int) -> list[list[Run]]:
    """``todo`` (in priority order) as jobs: with ``stack`` > 1, runs that may train as one stack (equal but
    for `interp.stacked.MAY_DIFFER`, and at the same step so far) go together, at most ``stack`` per job,
    in the order of their first run; else one run per job."""
    if stack <= 1:
        return [[r] for r in todo]
    from interp.stacked import MAY_DIFFER
    groups: dict = {}
    for r in todo:
        key = (repr(sorted((k, repr(v)) for k, v in dataclasses.asdict(r.cfg).items() if k not in MAY_DIFFER)),
               status(r)["steps_done"])
        groups.setdefault(key, []).append(r)
    jobs = [g[i:i + stack] for g in groups.values() for i in range(0, len(g), stack)]
    order = {r.name: i for i, r in enumerate(todo)}
    return sorted(jobs, key=lambda j: order[j[0].name])


_NOWHERE = object()


def place(loads: dict, w: float, capacity: float | None):
    """The device a run of weight ``w`` starts on: of ``loads`` ({device: weights of its running
    runs}), the one with the fewest running runs (first listed on ties), if the run fits within
    ``capacity`` there or nothing runs there; else ``_NOWHERE`` (the run waits)."""
    dev = min(loads, key=lambda d: (len(loads[d]), list(loads).index(d)))
    return dev if capacity is None or sum(loads[dev]) + w <= capacity or not loads[dev] else _NOWHERE


def _train_parallel(jobs: list, errors: dict, bar, workers: int, deadline, threads: int, weight, capacity,
                    devices, length_split: bool = False) -> None:
    """`train_runs` with ``workers`` spawned processes, one job (a run or a stack, `jobs_of`) each; every
    run's outcome goes to ``errors``."""
    from interp.workers import spawn_pool
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    pending, running = list(jobs), {}       # running: future -> (job, weight, device)
    devs = list(devices or [None])
    with spawn_pool(workers) as ex:         # (its workers stop with this process: interrupted or killed)
        while (pending or running) and not any(e.startswith("failed: BrokenProcessPool") for e in errors.values()):
            i = 0
            while i < len(pending) and len(running) < workers:
                w = sum(weight(r) for r in pending[i]) if weight else 1.0
                dev = place({d: [x for _, x, rd in running.values() if rd == d] for d in devs}, w, capacity)
                if dev is not _NOWHERE:
                    job = pending.pop(i)
                    cfgs = [{**dataclasses.asdict(r.cfg), **({"device": dev} if dev is not None else {})} for r in job]
                    try:
                        running[ex.submit(_train_job, cfgs, deadline, threads, length_split)] = (job, w, dev)
                    except cf.process.BrokenProcessPool as e:   # a worker died: the pool is gone
                        errors.update({r.name: f"failed: BrokenProcessPool: {e}" for r in job})
                        break
                else:
                    i += 1
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for f in done:
                job, _, _ = running.pop(f)
                try:
                    out = f.result()
                except Exception as e:  # noqa: BLE001 - a worker process died
                    out = f"failed: {type(e).__name__}: {e}"
                errors.update({r.name: out for r in job})
                bar.set_postfix_str(job[0].name)
                bar.update(len(job))


def train_runs(runs: list[Run], workers: int = 1, deadline: float | None = None, threads: int = 1,
               progress: bool = True, weight=None, capacity: float | None = None,
               devices: list[str] | None = None, stack: int = 1, length_split: bool = False) -> pd.DataFrame:
    """Train every unfinished run, highest priority (lowest number) first; ``workers`` > 1 uses that
    many spawned processes (each with ``threads`` torch threads), starting a job only while the
    summed ``weight(run)`` of the running ones stays within ``capacity`` (e.g. estimated GPU GB; a
    job that does not fit waits and lighter ones go first). ``devices`` (e.g. ``["cuda:0",
    "cuda:1"]``) spreads the jobs over several GPUs: each goes to the device with the fewest
    running jobs, and ``capacity`` holds per device (a run's seed and steps do not depend on where it
    trains). ``stack`` > 1: runs that differ only in seed / learning rate train up to ``stack`` at a
    time as one stacked module (`jobs_of`; `interp.stacked`: the same losses as single runs up to float
    rounding), a step's shorter batches in a second pass with ``length_split``. A run that fails is reported
    (column ``error``; its traceback in ``<out>/train.out``, of the stack's first run) and retried by the next
    call. Returns the status table."""
    todo = sorted((r for r in runs if not status(r)["complete"]), key=lambda r: r.priority)
    jobs = jobs_of(todo, stack)
    errors = {}
    from tqdm.auto import tqdm
    bar = tqdm(total=len(todo), desc="train runs", disable=not progress, dynamic_ncols=True)
    if workers <= 1:
        for job in jobs:
            bar.set_postfix_str(job[0].name)
            out = _train_job([dataclasses.asdict(r.cfg) for r in job], deadline, threads, length_split)
            errors.update({r.name: out for r in job})
            bar.update(len(job))
    else:
        _train_parallel(jobs, errors, bar, workers, deadline, threads, weight, capacity, devices, length_split)
    bar.close()
    for name, e in errors.items():
        if e.startswith("failed"):
            print(f"run {name} {e}", file=sys.stderr)
    return pd.DataFrame([{**status(r), "trained_now": errors.get(r.name) == "ran",
                          "error": errors.get(r.name, "") if errors.get(r.name, "").startswith("failed") else ""}
                         for r in runs])
