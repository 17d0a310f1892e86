"""Runs finished per GPU-hour for E1-size training: one process per run, K processes at once, and M runs
stacked in one process (`interp.stacked`), side by side in one call (issue 26, "Training many small models").

    python bench/bench_train_many.py --steps 300 --out figures/bench_train_many.json     # GPU
    python bench/bench_train_many.py --steps 300 --layouts gdn75 --modes 1x1,6x1,1x8,1x16,2x8
    python bench/bench_train_many.py --quick                                             # CPU smoke, seconds

A mode ``PxS`` starts P processes at once on one device; each trains S runs (S = 1: `interp.train.train`,
today's one process per run; S > 1: `interp.stacked.train_stacked`), so P*S runs, seeds 0 .. P*S-1;
``PxSg``: each step's pass replays from CUDA graphs (``cuda_graphs=True``: `interp.stacked_graph` for stacks,
`interp.train_graph` for single runs, ``Px1g``); without g every run steps eagerly, as one-run processes did before
single runs had graphs (``Px1``: today's baseline); ``PxSs`` / ``PxSgs``: a step's shorter batches run in a second,
shorter pass (``length_split=True``, `interp.stacked.split_groups`).
Every run is an arm of E1's full profile (experiments/e1_state_recall.py): 8 layers, d=128, 4 heads of
32, the SwiGLU width matched to the transformer's parameter count, ``state_recall`` (``--training
cot``: its cot variant), batch 64, lr 1e-3, learning-rate warm-up 150 steps, the default induction
warm-up (min(2000, steps/4) steps for layouts with attention), evaluation every steps/4 on 128
held-out examples, a checkpoint every max(50, steps/10) steps, E1's pure-torch reference scans
(``--scan-backend auto``: fla kernels), for ``--steps`` steps (E1 trains 4000).

Each process is a fresh interpreter (start-up, imports and CUDA context included, as a run pays them; one untimed
process first warms the page cache; ``--warm-steps N`` first runs each mode untimed for N steps, so that fla's
kernels are compiled before any timing, as on a machine that has trained before); wall time runs from starting the
mode's processes to the last one's exit, and runs per GPU-hour = runs * 3600 / wall. Ratios are to the layout's
first eager mode of one run per process (1x1, 6x1, ...; else its first Px1g). ``acc`` is the runs' mean final held-out ``state_recall``
accuracy (sd: their standard deviation; JSON ``accs``: each run's) and ``acc seed 0`` that of seed 0, which every
mode trains: they show the modes train the same models (seed 0's runs differ by rounding alone, which bf16 on CUDA
can grow over hundreds of steps). Prints a markdown table with device, date, command and commit; ``--out`` writes
it as JSON (after every row). Nothing is asserted on timings.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

E1 = dict(model=dict(d_model=128, n_layers=8, n_heads=4, head_dim=32), batch_size=64, lr=1e-3, warmup=150,
          eval_n=128)
QUICK = dict(model=dict(d_model=16, n_layers=4, n_heads=2, head_dim=8), batch_size=4, lr=1e-3, warmup=2,
             eval_n=16)


def run_configs(layout: str, seeds, steps: int, root: Path, a) -> list:
    """The TrainConfigs of E1 arm ``layout`` (module doc) for ``seeds``, written under ``root``."""
    from interp.experiment import matched
    from interp.train import TrainConfig, default_induction_steps
    P = QUICK if a.quick else E1
    model = matched({**P["model"], "layout": layout})
    knobs = {"state_recall": {"cot": True}} if a.training == "cot" else {}
    return [TrainConfig(out=str(root / f"seed{s}"), model=model, tasks=["state_recall"], knobs=knobs, steps=steps,
                        batch_size=P["batch_size"], lr=P["lr"], warmup=P["warmup"], eval_every=max(1, steps // 4),
                        eval_n=P["eval_n"], save_every=max(50, steps // 10), seed=s, device=a.device,
                        scan_backend=a.scan_backend, induction_steps=default_induction_steps(model, steps))
            for s in seeds]


def child(spec: str) -> int:
    """A worker process: train the runs of ``spec`` (JSON: TrainConfig dicts and the CPU threads to use);
    ``spec`` "warm:<device>": only import what a run imports and touch the device (page cache warm)."""
    import torch
    from interp.stacked import train_stacked
    from interp.train import TrainConfig, train
    if spec.startswith("warm:"):
        torch.zeros(1, device=spec[5:])
        return 0
    d = json.loads(spec)
    torch.set_num_threads(d["threads"])
    cfgs = [TrainConfig(**c) for c in d["cfgs"]]
    if len(cfgs) == 1:
        train(cfgs[0], resume=False, progress=False, cuda_graphs=d.get("graphs", False))
    else:
        train_stacked(cfgs, resume=False, progress=False, cuda_graphs=d.get("graphs", False),
                      length_split=d.get("split", False))
    return 0


def final_acc(out: Path) -> float:
    from interp.train import read_log
    return read_log(out / "train_log.jsonl")[-1]["acc/state_recall"]


def measure(layout: str, procs: int, stack: int, graphs: bool, split: bool, a, root: Path) -> dict:
    """Train ``procs`` x ``stack`` runs of ``layout`` at once (module doc; ``graphs``: steps replayed from CUDA
    graphs; ``split``: with length groups); their wall time and accuracy."""
    mode = f"{procs}x{stack}{'g' if graphs else ''}{'s' if split else ''}"
    root = root / f"{layout}_{mode}"
    threads = max(1, (os.cpu_count() or 1) // procs)
    cfgs = run_configs(layout, range(procs * stack), a.steps, root, a)
    root.mkdir(parents=True, exist_ok=True)
    jobs, t0 = [], time.perf_counter()
    for p in range(procs):
        spec = json.dumps({"cfgs": [dataclasses.asdict(c) for c in cfgs[p * stack:(p + 1) * stack]],
                           "threads": threads, "graphs": graphs, "split": split})
        log = open(root / f"proc{p}.log", "w")
        jobs.append((subprocess.Popen([sys.executable, __file__, "--child", spec], stdout=log,
                                      stderr=subprocess.STDOUT), log))
    codes = [j.wait() for j, _ in jobs]
    wall = time.perf_counter() - t0
    for _, log in jobs:
        log.close()
    row = dict(layout=layout, mode=mode, procs=procs, stack=stack, runs=procs * stack,
               steps=a.steps, wall_s=round(wall, 2), runs_per_gpu_hour=round(procs * stack * 3600 / wall, 1))
    failed = [p for p, c in enumerate(codes) if c != 0]
    if failed:
        tail = (root / f"proc{failed[0]}.log").read_text()[-2000:]
        print(f"{layout} {mode}: process {failed[0]} failed (exit {codes[failed[0]]}):\n{tail}",
              file=sys.stderr)
        return {**row, "runs_per_gpu_hour": None, "error": f"exit {codes[failed[0]]}"}
    accs = [final_acc(Path(c.out)) for c in cfgs]
    sd = statistics.stdev(accs) if len(accs) > 1 else float("nan")
    return {**row, "acc": round(statistics.mean(accs), 4), "acc_sd": round(sd, 4), "acc_seed0": round(accs[0], 4),
            "accs": [round(x, 4) for x in accs]}


def table(rows: list[dict]) -> str:
    base = {}   # per layout: its first eager mode of one run per process (1x1, 6x1, ...; else Px1g) that finished
    for r in sorted(rows, key=lambda r: r["mode"].endswith("g")):
        if r["stack"] == 1 and r["runs_per_gpu_hour"]:
            base.setdefault(r["layout"], (r["mode"], r["runs_per_gpu_hour"]))
    out = ["| layout | mode (procs x stacked) | runs | wall s | runs / GPU-hour | vs one run per process | acc (sd) "
           "| acc seed 0 |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        rate, (bmode, b) = r["runs_per_gpu_hour"], base.get(r["layout"], (None, None))
        ratio = f"{rate / b:.2f}x ({bmode})" if rate and b else "n/a"
        acc = f"{r['acc']} ({r['acc_sd']})" if "acc_sd" in r else r.get("acc", "n/a")
        out.append(f"| {r['layout']} | {r['mode']} | {r['runs']} | {r['wall_s']} | {rate if rate else r.get('error')} "
                   f"| {ratio} | {acc} | {r.get('acc_seed0', 'n/a')} |")
    return "\n".join(out)


def header(a) -> dict:
    import torch
    from interp.experiment import git_commit
    cuda = str(a.device).startswith("cuda")
    return dict(device=torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)",
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                command="python " + " ".join(shlex.quote(x) for x in sys.argv), commit=git_commit(),
                torch=torch.__version__)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300, help="steps per run (E1 trains 4000)")
    ap.add_argument("--layouts", default="gdn75,transformer", help="comma-separated zoo layouts")
    ap.add_argument("--modes", default=None,
                    help="comma-separated PxS: P processes of S stacked runs (PxSg: with CUDA graphs, S >= 1; s: "
                         "length groups, S >= 2); default 1x1,6x1,1x8,1x16 (--quick: 1x1,2x1,1x2)")
    ap.add_argument("--training", default="direct", choices=["direct", "cot"], help="E1's training variant")
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    ap.add_argument("--scan-backend", default="reference", choices=["reference", "auto"],
                    help="recurrent scans: the pure-torch reference (as E1 trains) or fla kernels on CUDA")
    ap.add_argument("--quick", action="store_true",
                    help="CPU smoke run: tiny models, 4 steps (modes 1x1,2x1,1x2 unless --modes)")
    ap.add_argument("--out", help="write the header and rows as JSON here")
    ap.add_argument("--warm-steps", type=int, default=0,
                    help="before timing a mode, run it once untimed for this many steps (fills Triton's cache with "
                         "fla's kernels, so that the first mode timed does not pay for compiling them alone); 0: off")
    ap.add_argument("--keep", help="keep the trained runs in this directory (default: a temporary one, removed)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.warm_steps < 0:
        ap.error(f"--warm-steps {a.warm_steps} is out of range; valid: integers >= 0 (0: no warm-up)")
    if a.quick:
        a.steps, a.device = 4, "cpu"
    a.modes = a.modes or ("1x1,2x1,1x2" if a.quick else "1x1,6x1,1x8,1x16")
    a.modes = [parse_mode(m, ap) for m in a.modes.split(",")]
    return a


def parse_mode(m: str, ap) -> tuple[int, int, bool, bool]:
    """(procs, stacked runs, CUDA graphs, length groups) of a mode ``PxS[g][s]``; a bad one exits 2 naming it."""
    core = m.rstrip("gs")
    flags = m[len(core):]
    parts = core.split("x")
    if (len(parts) != 2 or not all(x.isdigit() and int(x) > 0 for x in parts) or flags not in ("", "g", "s", "gs")
            or ("s" in flags and int(parts[1]) < 2)):
        ap.error(f"mode {m!r} is not valid; valid: PxS, PxSg, PxSs or PxSgs with integers P, S >= 1 (s: S >= 2), "
                 "e.g. 2x8g, 6x1g")
    return int(parts[0]), int(parts[1]), "g" in flags, "s" in flags


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.child:
        return child(a.child)
    head = header(a)
    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench_train_many_"))
    print(f"device: {head['device']}  date: {head['date']}  torch {head['torch']}\ncommand: {head['command']}\n"
          f"commit: {head['commit']}\nE1 arm ({'quick, tiny' if a.quick else '8 layers, d=128'}), {a.training}, "
          f"{a.steps} steps per run, scans: {a.scan_backend}\n")
    subprocess.run([sys.executable, __file__, "--child", f"warm:{a.device}"], check=True)  # not timed
    rows = []
    try:
        for layout in a.layouts.split(","):
            for procs, stack, graphs, split in a.modes:
                if a.warm_steps > 0:  # untimed: compiling and autotuning fla's kernels for this mode's shapes
                    warm = argparse.Namespace(**{**vars(a), "steps": a.warm_steps})
                    w = measure(layout, procs, stack, graphs, split, warm, root / "warm")
                    print(f"  warm-up ({a.warm_steps} steps, not timed): {w['wall_s']} s", flush=True)
                rows.append(measure(layout, procs, stack, graphs, split, a, root))
                print(f"  {rows[-1]}", flush=True)
                if a.out:  # after every row: a call stopped half-way keeps what it measured
                    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
                    Path(a.out).write_text(json.dumps({**head, "steps": a.steps, "training": a.training,
                                                       "scan_backend": a.scan_backend, "rows": rows}, indent=2) + "\n")
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    print("\n" + table(rows))
    return 0 if all(r["runs_per_gpu_hour"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
