"""GPU check: stacked training replayed from CUDA graphs (`train_stacked(..., cuda_graphs=True)`,
`interp.stacked_graph`) trains what the eager stack trains, on E1's arm (issue #26); ``--single``: the same for
single runs (`interp.train.train(..., cuda_graphs=True)`, `interp.train_graph`), one after another.

Run on a CUDA host:  python tests/gpu/check_stacked_graph_gpu.py [--layout gdn75] [--runs 4] [--steps 40] [--split]
                     python tests/gpu/check_stacked_graph_gpu.py --single [--layout gdn75] [--runs 2]
Trains ``--runs`` stacked runs of E1's arm (8 layers, d=128, state_recall, batch 64, bf16 autocast, the
induction warm-up shortened to a quarter of the steps) twice, eagerly and with CUDA graphs, and prints the
largest difference of their logged losses and final weights, how many shapes were captured and whether any
capture failed, and both wall times. A replay launches the eager pass's kernels on the same inputs, so the
two should agree to rounding (tolerance: losses 1e-3, weights 1e-3 of the largest weight: bf16 kernels
that pick another reduction order grow over the steps). Exits 1 if a capture failed or a tolerance is
exceeded. ``--split``: both runs use length groups (``length_split=True``: each step's shorter batches in a second
pass), so the graphs' wiring of the split step is checked against the eager split step. (A split run
against an unsplit one is not bit-equal, as the passes' shapes differ: on an H100 under bf16 autocast,
losses 3.9e-4 and weights 6.1e-3 apart after 40 steps; the float32 equality of split and single runs is
tests/test_stacked_split.py's.) ``--device cpu`` is a smoke test of this script (graphs are off on a CPU).
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from interp import stacked
from interp import train as train_mod
from interp.experiment import matched
from interp.train import TrainConfig, read_log
from interp.zoo import load_model


def configs(root: Path, a) -> list:
    model = matched(dict(d_model=128, n_layers=8, n_heads=4, head_dim=32, layout=a.layout))
    return [TrainConfig(out=str(root / f"seed{s}"), model=model, tasks=["state_recall"], steps=a.steps, batch_size=64,
                        lr=1e-3, warmup=a.steps // 4, eval_every=a.steps, eval_n=64, save_every=10 * a.steps, seed=s,
                        device=a.device, scan_backend=a.scan_backend, induction_steps=a.steps // 4)
            for s in range(a.runs)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layout", default="gdn75")
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--scan-backend", default="reference", choices=["reference", "auto"])
    ap.add_argument("--split", action="store_true", help="both runs with length groups")
    ap.add_argument("--single", action="store_true", help="single runs (interp.train.train) instead of a stack")
    a = ap.parse_args()
    if a.single and a.split:
        ap.error("--split is for stacks; valid: --single or --split, not both")
    root = Path(tempfile.mkdtemp(prefix="check_stacked_graph_"))
    made, wall = {}, {}
    orig, orig_pass = stacked.ShapeGraphs, train_mod.GradPass
    stacked.ShapeGraphs = lambda fn: made.setdefault("g", orig(fn))      # keep the stack's graphs to report on
    train_mod.GradPass = lambda *args: made.setdefault("p", []).append(orig_pass(*args)) or made["p"][-1]
    for name, graphs in (("eager", False), ("graphs", True)):
        t0 = time.perf_counter()
        if a.single:
            for c in configs(root / name, a):
                train_mod.train(c, resume=False, progress=False, cuda_graphs=graphs)
        else:
            stacked.train_stacked(configs(root / name, a), resume=False, progress=False, cuda_graphs=graphs,
                                  length_split=a.split)
        wall[name] = time.perf_counter() - t0
    shapes = [made["g"]] if "g" in made else [p.graphs for p in made.get("p", []) if p.graphs is not None]
    n_graphs, failed = sum(len(x.graphs) for x in shapes), {k: v for x in shapes for k, v in x.failed.items()}
    dl = dw = 0.0
    for s in range(a.runs):
        le, lg = (read_log(root / k / f"seed{s}" / "train_log.jsonl") for k in ("eager", "graphs"))
        dl = max([dl] + [abs(x["loss"] - y["loss"]) for x, y in zip(le, lg)])
        se, sg = (load_model(root / k / f"seed{s}").state_dict() for k in ("eager", "graphs"))
        dw = max([dw] + [float((se[k] - sg[k]).abs().max() / se[k].abs().max().clamp(min=1e-12)) for k in se])
    print(f"{a.layout} x{a.runs}{' single runs' if a.single else ''}, {a.steps} steps, scans {a.scan_backend}, "
          f"{'length groups in both runs, ' if a.split else ''}"
          f"{torch.cuda.get_device_name() if a.device != 'cpu' else 'cpu'}")
    print(f"graphs captured: {n_graphs}, failed: {failed if shapes else 'n/a (not on a GPU)'}")
    print(f"max |loss difference| {dl:.3g} (tol 1e-3); max weight difference / max |weight| {dw:.3g} (tol 1e-3)")
    print(f"wall: eager {wall['eager']:.2f} s, graphs {wall['graphs']:.2f} s ({wall['eager'] / wall['graphs']:.2f}x)")
    ok = dl <= 1e-3 and dw <= 1e-3 and (a.device == "cpu" or (n_graphs > 0 and not failed))
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
