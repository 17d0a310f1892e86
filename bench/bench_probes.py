"""Probe fitting speed: the batched torch backend vs scikit-learn on the same data (issue #4).

    python bench/bench_probes.py                      # 12 layers x 50k x 768, 10 classes (GPU host)
    python bench/bench_probes.py --small              # 3 layers x 3k x 64: a CPU smoke run
    python bench/bench_probes.py --sklearn-layers 4   # fit sklearn on 4 layers only, scale its time x12/4

Synthetic but residual-like features, one block per layer: X = s_l * onehot(y) A + Z B + e with
A a random class code, Z B rank-64 correlated noise with a few large-variance directions
(residual streams are strongly anisotropic) and e isotropic noise; the signal s_l rises with the
layer so test accuracy spans roughly 0.4 to 0.95. 80/20 train/test split, features standardised
with train statistics (`interp.probes.probe` fits the same way on its training split, 60% of the
examples by default, and predicts its val and test points together). Fitted: multinomial logistic
regression, C=1 (same objective for both), tolerance 1e-4 on the gradient:

* sklearn: `LogisticRegression(C=1, solver="lbfgs", tol=1e-4, max_iter=1000)`, one fit per layer,
  on the host CPU (all its BLAS threads);
* torch: `interp.probes.fit_torch`, all layers as one batched problem, on CUDA (timed after a warm
  up, including the host-to-device copy) and on the CPU.

Prints a markdown block (device, date, command, numbers) for BENCHMARKS.md. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone

import numpy as np
import torch

from interp import probes


def features(L, N, D, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (N,), generator=g)
    code = torch.randn(K, D, generator=g)
    R = 64
    B = torch.randn(R, D, generator=g) * torch.linspace(3.0, 0.3, R)[:, None]   # anisotropic noise
    Xs = []
    for layer in range(L):
        s = (0.15 + 0.45 * layer / max(1, L - 1)) * (64 / D) ** 0.5
        X = s * code[y] + torch.randn(N, R, generator=g) @ B / R ** 0.5 + torch.randn(N, D, generator=g)
        Xs.append(X)
    return torch.stack(Xs), y


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="3 layers x 3000 x 64, for a CPU smoke run")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--n", type=int, default=None, help="examples (train + test)")
    ap.add_argument("--dim", type=int, default=None)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--C", type=float, default=1.0)
    ap.add_argument("--sklearn-layers", type=int, default=None,
                    help="fit sklearn on this many layers only and scale its time to all layers (marked)")
    ap.add_argument("--no-cpu", action="store_true", help="skip the torch CPU timing")
    a = ap.parse_args()
    L = a.layers or (3 if a.small else 12)
    N = a.n or (3000 if a.small else 50_000)
    D = a.dim or (64 if a.small else 768)
    K = a.classes
    Ls = min(L, a.sklearn_layers or L)
    cuda = torch.cuda.is_available()
    dev_name = torch.cuda.get_device_name() if cuda else "no CUDA device"
    print(f"device: {dev_name}; CPU: {cpu_name()} ({os.cpu_count()} logical cores, torch threads "
          f"{torch.get_num_threads()})", flush=True)
    print(f"shape: {L} layers x {N} examples x {D} dims, {K} classes, C={a.C}", flush=True)

    X, y = features(L, N, D, K)
    ntr = int(0.8 * N)
    Xtr, Xte = probes._standardize(X[:, :ntr], X[:, ntr:])
    ytr, yte = y[:ntr], y[ntr:]
    rows = []

    def acc(pred):
        return (pred[:, 0] == yte).float().mean(1)

    if cuda:
        probes.fit_torch(Xtr[:1, :512], [ytr[:512]], Xte[:1, :64], K, C=a.C, device="cuda")   # warm up
        torch.cuda.synchronize()
        st = {}
        t = time.perf_counter()
        p_gpu = probes.fit_torch(Xtr, [ytr], Xte, K, C=a.C, device="cuda", stats=st)
        torch.cuda.synchronize()
        rows.append(("torch batched L-BFGS", f"CUDA ({dev_name})", L, time.perf_counter() - t, acc(p_gpu), st))
        print(f"torch cuda: {rows[-1][3]:.2f} s {st}", flush=True)
    if not a.no_cpu or not cuda:
        st = {}
        t = time.perf_counter()
        p_cpu = probes.fit_torch(Xtr, [ytr], Xte, K, C=a.C, device="cpu", stats=st)
        rows.append(("torch batched L-BFGS", f"CPU ({torch.get_num_threads()} threads)", L,
                     time.perf_counter() - t, acc(p_cpu), st))
        print(f"torch cpu: {rows[-1][3]:.2f} s {st}", flush=True)
    t = time.perf_counter()
    p_sk = probes.fit_sklearn(Xtr[:Ls], [ytr], Xte[:Ls], K, C=a.C, max_iter=1000, tol=1e-4)
    t_sk = time.perf_counter() - t
    rows.append(("sklearn LogisticRegression(lbfgs)", f"CPU ({os.cpu_count()} cores)", Ls, t_sk, acc(p_sk), {}))
    print(f"sklearn: {t_sk:.2f} s for {Ls} layers", flush=True)

    import sklearn
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    print("\n```")
    print(f"device: {dev_name}; CPU: {cpu_name()} ({os.cpu_count()} logical cores)")
    print(f"date: {date}; torch {torch.__version__}; scikit-learn {sklearn.__version__}")
    print(f"command: python {' '.join(sys.argv)}")
    print(f"data: {L} layers x {N} examples (80/20 split) x {D} dims, {K} classes, C={a.C}, tol 1e-4")
    print("```\n")
    print("| backend | device | layers fitted | time (s) | time for all layers (s) | mean test acc | "
          "max abs acc diff vs sklearn (points) |")
    print("|---|---|---|---|---|---|---|")
    sk_acc = rows[-1][4]
    t_all = {}
    for name, where, nl, sec, ac, st in rows:
        full = sec * L / nl
        t_all[(name, where)] = full
        diff = (ac[:Ls] - sk_acc).abs().max().item() * 100
        extra = " (scaled from %d layers)" % nl if nl < L else ""
        it = f"; {st['iterations']} iterations, {st['converged']}/{st['problems']} converged" if st else ""
        print(f"| {name}{it} | {where} | {nl} | {sec:.2f} | {full:.2f}{extra} | {ac.mean().item():.4f} | "
              f"{diff:.2f} |")
    sk_full = rows[-1][3] * L / Ls
    print()
    print(f"per-layer test accuracy (sklearn): {' '.join(f'{v:.3f}' for v in sk_acc.tolist())}")
    for name, where, nl, sec, ac, st in rows[:-1]:
        print(f"speed-up of {name} on {where} over sklearn (all {L} layers): {sk_full / (sec * L / nl):.1f}x")


if __name__ == "__main__":
    main()
