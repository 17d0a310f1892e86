"""GPU check: DAS with CUDA-graph replay (the default on a GPU) learns the same subspace as DAS run eagerly,
and how much faster its epochs are, on sites of the shipped defaults
(bench/bench_das.py does the random HF Llama).

Run on a CUDA host:  python tests/gpu/check_das_graphs_gpu.py [--n 256] [--epochs 4]
Per case: whether the capture worked (``cuda_graphs``), seconds per epoch of training steps with and
without graphs, test IIA of both, and the largest |R_graphs - R_eager|; exits 1 if the two differ by
more than 1e-4 in R or in any IIA, or if the capture failed at a site other than ``rec.state`` (a state
patch decides on the host which time steps to re-scan from, so those DAS steps run eagerly).
"""
import argparse
import dataclasses
import sys
from datetime import datetime, timezone

import torch

from interp import interventions as iv, tasks as T
from interp.models import load_any

CASES = [("gdn100", "mqar", "blocks.0.rec.state", "key", 32), ("gdn75", "mqar", "blocks.7.resid_pre", None, 8),
         ("transformer", "mqar", "blocks.6.resid_pre", None, 8)]


def one(name, model, pairs, site, cfg):
    res = {}
    for graphs in (True, False):
        r = iv.train_das(model, pairs, site, config=dataclasses.replace(cfg, cuda_graphs=graphs), model_name=name)
        h = r.attrs["history"]
        res[graphs] = dict(R=r.R, iia=r[r.subspace == "das"].set_index("split")["iia"].to_dict(),
                           train=sum(x["seconds_train"] for x in h) / len(h), epochs=len(h),
                           how=r.attrs["spec"]["cuda_graphs"])
    g, e = res[True], res[False]
    diff = float((g["R"] - e["R"]).abs().max())
    iia_diff = max(abs(g["iia"][k] - e["iia"][k]) for k in g["iia"])
    ok = (g["how"] == "on" or site.kind == "state") and diff <= 1e-4 and iia_diff <= 1e-4
    print(f"| {name} | {site.label()} | {g['how']} | {g['train']:.3f} | {e['train']:.3f} | {e['train'] / g['train']:.1f}x "
          f"| {g['iia']['test']:.3f} / {e['iia']['test']:.3f} | {g['epochs']}/{e['epochs']} | {diff:.1e} | "
          f"{'ok' if ok else 'FAIL'} |", flush=True)
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=4)
    a = ap.parse_args()
    dev = "cuda"
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}")
    print("| model | site | cuda_graphs | train s/epoch graphs | eager | speed-up | test IIA graphs / eager | epochs "
          "| max abs R diff | check |\n|---|---|---|---|---|---|---|---|---|---|")
    ok = True
    for name, task, site_name, side, rank in CASES:
        model = load_any(name, device=dev)[0].eval()
        pairs = T.make_pairs(task, a.n, seed=0).to(dev)
        cfg = iv.DASConfig(rank=rank, epochs=a.epochs, patience=a.epochs, random_seeds=(0,))
        ok &= one(name, model, pairs, iv.Site(site_name, side=side), cfg)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
