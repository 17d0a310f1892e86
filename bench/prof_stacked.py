"""Where a stacked training step's time goes (issue 26): wall vs GPU-busy time per step, kernels per step.

    python bench/prof_stacked.py [--runs 8,32] [--graphs off,on] [--split off,on] [--scan-backend reference,auto]

For every combination, trains ``runs`` stacked runs of E1's arm (8 layers, d=128, state_recall, batch 64, bf16
autocast on CUDA, no induction warm-up) with `interp.stacked.train_stacked`, and around its step function
(`_Stack.step`: the batch to the device, the pass, AdamW) measures: after ``--skip`` steps (compiling, autotuning,
the graphs' captures), the wall time of ``--time`` steps; then profiles ``--prof`` more steps with torch's
profiler and reports the GPU's kernel time and kernel count per step and the kernels that take the most GPU
time. GPU busy far below the wall time means the step is bound by host work (launches, Python); GPU busy near
the wall with many short kernels means it is bound by the kernels' count, not their arithmetic. Padding %:
the share of the timed steps' tokens that are padding (every run's batch is padded to the stack's longest,
or its length group's with --split on; a GPU-bound stack pays for it). Nothing is asserted.
``--device cpu --quick`` is a smoke test of this script.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import torch

from interp import stacked
from interp.experiment import matched
from interp.train import TrainConfig

E1 = dict(d_model=128, n_layers=8, n_heads=4, head_dim=32)
QUICK = dict(d_model=16, n_layers=2, n_heads=2, head_dim=8)


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class StepClock:
    """Wraps ``_Stack.step``: times steps [skip, skip + n_time), profiles the next ``n_prof``."""

    def __init__(self, device, skip: int, n_time: int, n_prof: int):
        self.device, self.skip, self.n_time, self.n_prof = device, skip, n_time, n_prof
        self.calls, self.t0, self.wall, self.prof = 0, 0.0, None, None
        self.real = self.padded = 0     # tokens of the timed steps: the runs' own, and after padding to the stack's

    def count(self, mixture, split: bool):
        """Add one step's tokens: each run's own length, and padded as the stack pads them (to the longest of
        the step, or of its length group)."""
        lengths = [t.shape[1] for _, t, _ in mixture]
        self.real += sum(lengths)
        groups = stacked.split_groups(lengths) if split else [range(len(lengths))]
        self.padded += sum(len(g) * max(lengths[m] for m in g) for g in groups)

    def wrap(self, step_fn):
        def wrapped(stack, step, mixture):
            i, self.calls = self.calls, self.calls + 1
            if i == self.skip:
                sync(self.device)
                self.t0 = time.perf_counter()
            if i == self.skip + self.n_time:
                sync(self.device)
                self.wall = (time.perf_counter() - self.t0) / self.n_time
                acts = [torch.profiler.ProfilerActivity.CPU]
                if torch.device(self.device).type == "cuda":
                    acts.append(torch.profiler.ProfilerActivity.CUDA)
                self.prof = torch.profiler.profile(activities=acts)
                self.prof.__enter__()
            if self.skip <= i < self.skip + self.n_time:
                self.count(mixture, stack.length_split)
            out = step_fn(stack, step, mixture)
            if i == self.skip + self.n_time + self.n_prof - 1:
                sync(self.device)
                self.prof.__exit__(None, None, None)
            return out
        return wrapped


def kernels(prof) -> list:
    """[(name, device time in us)] of every GPU kernel the profiler saw."""
    return [(e.name, e.device_time) for e in prof.events()
            if e.device_type == torch.autograd.DeviceType.CUDA and e.device_time > 0]


def one(a, runs: int, graphs: bool, split: bool, backend: str, root: Path) -> dict:
    """Train one stack under the clock; the row of its numbers and its top kernels."""
    steps = a.skip + a.time + a.prof + 1
    model = matched({**(QUICK if a.quick else E1), "layout": a.layout})
    cfgs = [TrainConfig(out=str(root / f"seed{s}"), model=model, tasks=["state_recall"], steps=steps,
                        batch_size=4 if a.quick else 64, lr=1e-3, warmup=5, eval_every=steps, eval_n=16,
                        save_every=10 * steps, seed=s, device=a.device, scan_backend=backend, induction_steps=0)
            for s in range(runs)]
    clock, orig = StepClock(a.device, a.skip, a.time, a.prof), stacked._Stack.step
    stacked._Stack.step = clock.wrap(orig)
    try:
        stacked.train_stacked(cfgs, resume=False, progress=False, cuda_graphs=graphs, length_split=split)
    finally:
        stacked._Stack.step = orig
    ks = kernels(clock.prof)
    by: dict = {}
    for name, us in ks:
        n, t = by.get(name, (0, 0.0))
        by[name] = (n + 1, t + us)
    busy = sum(us for _, us in ks) / a.prof / 1e3
    row = dict(runs=runs, graphs=graphs, split=split, scans=backend, wall_ms=clock.wall * 1e3, gpu_busy_ms=busy,
               kernels_per_step=len(ks) / a.prof, steps_per_s=1 / clock.wall, run_steps_per_s=runs / clock.wall,
               pad_pct=100 * (1 - clock.real / max(clock.padded, 1)))
    top = sorted(by.items(), key=lambda kv: -kv[1][1])[:a.top]
    return row, [(name[:70], n / a.prof, t / a.prof / 1e3) for name, (n, t) in top]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layout", default="gdn75")
    ap.add_argument("--runs", default="8,32", help="stack sizes (comma-separated)")
    ap.add_argument("--graphs", default="off,on", help="off, on or both (comma-separated)")
    ap.add_argument("--split", default="off", help="length groups (train_stacked's length_split): off, on or both")
    ap.add_argument("--scan-backend", default="reference", help="reference, auto or both (comma-separated)")
    ap.add_argument("--skip", type=int, default=15, help="steps before timing (compiling, captures)")
    ap.add_argument("--time", type=int, default=30, help="steps timed")
    ap.add_argument("--prof", type=int, default=5, help="steps profiled after the timed ones")
    ap.add_argument("--top", type=int, default=8, help="kernels listed per combination")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny models (a smoke test of this script)")
    a = ap.parse_args(argv)
    try:
        runs = [int(x) for x in a.runs.split(",")]
        flags = [{"off": False, "on": True}[x] for x in a.graphs.split(",")]
        splits = [{"off": False, "on": True}[x] for x in a.split.split(",")]
        backends = a.scan_backend.split(",")
        assert all(b in ("reference", "auto") for b in backends) and all(r > 0 for r in runs)
    except (ValueError, KeyError, AssertionError):
        print(f"bad --runs '{a.runs}' / --graphs '{a.graphs}' / --split '{a.split}' / --scan-backend "
              f"'{a.scan_backend}': runs are positive integers, graphs and split off|on, scan backends "
              "reference|auto (comma-separated)", file=sys.stderr)
        return 2
    dev = torch.cuda.get_device_name() if torch.device(a.device).type == "cuda" else "cpu"
    print(f"{a.layout}, E1 arm{' (quick)' if a.quick else ''}, {dev}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| runs | graphs | split | scans | wall ms/step | GPU kernels ms/step | kernels/step | run-steps/s | "
          "padding % |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    tops = []
    with tempfile.TemporaryDirectory(prefix="prof_stacked_") as tmp:
        for i, (r, g, sp, b) in enumerate(itertools.product(runs, flags, splits, backends)):
            row, top = one(a, r, g, sp, b, Path(tmp) / str(i))
            print(f"| {r} | {'on' if g else 'off'} | {'on' if sp else 'off'} | {b} | {row['wall_ms']:.1f} | "
                  f"{row['gpu_busy_ms']:.1f} | "
                  f"{row['kernels_per_step']:.0f} | {row['run_steps_per_s']:.1f} | {row['pad_pct']:.0f} |", flush=True)
            tops.append((row, top))
    for row, top in tops:
        print(f"\nruns {row['runs']}, graphs {'on' if row['graphs'] else 'off'}, split "
              f"{'on' if row['split'] else 'off'}, scans {row['scans']}: "
              "top kernels (calls/step, GPU ms/step)")
        for name, n, ms in top:
            print(f"  {ms:8.2f} ms  {n:6.1f}x  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
