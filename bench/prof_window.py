"""Where the window path of a patching sweep spends its time on the GPU (issue 26): gdn75 vs the transformer.

    python bench/prof_window.py [--layers 0,4] [--site resid_pre]

bench_patch's model size and pairs (12 layers, d=768, 256 mqar pairs x 128 tokens, float32, TF32 off). For each
model: a warm-up cell, the sweep at ``--layers`` timed twice (the first may still compile fla's kernels for new
shapes), then once under torch's profiler with the window path's parts labelled (prefix scans, GDN / attention
windows, the GDN scans, the cache run, the metrics). Prints the wall times, the GPU's busy time over the profiled
sweep and the profiler's table of the labelled parts. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import functools
import time

import torch

import importlib

import interp.patching.window as W
import interp.patching.window_state as WS
import interp.zoo.gdn as ZG
from interp import patching, tasks
from interp.zoo.attention import Attention
from interp.zoo.randinit import random_zoo

LABELS = []  # (owner, attribute, label): the functions wrapped in record_function while profiling


def _label(owner, attr, name):
    fn = getattr(owner, attr)

    @functools.wraps(fn)
    def wrapped(*a, **k):
        with torch.profiler.record_function(name):
            return fn(*a, **k)
    setattr(owner, attr, wrapped)
    LABELS.append((owner, attr, fn))


def _unlabel():
    while LABELS:
        owner, attr, fn = LABELS.pop()
        setattr(owner, attr, fn)


def _labelled():
    _label(W.Prefix, "__call__", "#prefix scans")
    _label(ZG.GatedDeltaNet, "forward_window", "#gdn window layer")
    _label(Attention, "forward_window", "#attn window layer")
    _label(ZG, "scan_rows", "#gdn scan_rows")
    _label(WS, "scan_rows", "#gdn scan_rows (state)")
    _label(importlib.import_module("interp.patching.sweep"), "_window_cache", "#unchanged run cache")
    _label(W, "_answer_metrics", "#metrics")
    _label(W, "_store", "#store")


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default="0,4")
    ap.add_argument("--site", default="resid_pre")
    ap.add_argument("--archs", default="transformer,gdn75")
    ap.add_argument("--small", action="store_true", help="CPU smoke test: d=64, 16 pairs x 32 tokens")
    a = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    d, n, t = (64, 16, 32) if a.small else (768, 256, 128)
    torch.backends.cuda.matmul.allow_tf32 = False
    layers = [int(x) for x in a.layers.split(",")]
    pairs = tasks.make_pairs("mqar", n, seed=0, n_pairs=8, seq_len=t).to(dev)
    T = pairs.clean.shape[1]
    for arch in a.archs.split(","):
        m = random_zoo(d, 12, 4 if a.small else 12, arch, dev)
        run = lambda: patching.sweep(m, pairs, sites=[a.site], layers=layers, batch_size=256,  # noqa: E731
                                     progress=False, keep_all=True)
        patching.sweep(m, pairs, sites=[a.site], layers=[1], positions=[T // 2], batch_size=256, progress=False,
                       keep_all=True)
        times = []
        for _ in range(2):
            sync()
            t0 = time.perf_counter()
            run()
            sync()
            times.append(time.perf_counter() - t0)
        _labelled()
        try:
            acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev == "cuda" else [])
            with torch.profiler.profile(activities=acts) as p:
                t0 = time.perf_counter()
                run()
                sync()
                wall = time.perf_counter() - t0
        finally:
            _unlabel()
        ev = p.key_averages()
        busy = sum(e.self_device_time_total for e in ev) / 1e6
        print(f"\n## {arch} {a.site} layers {layers}: first {times[0]:.2f} s, second {times[1]:.2f} s; profiled "
              f"{wall:.2f} s wall, GPU kernels {busy:.2f} s")
        print(ev.table(sort_by="cpu_time_total", row_limit=30, max_name_column_width=60))
        print(ev.table(sort_by="self_device_time_total", row_limit=15, max_name_column_width=60))


if __name__ == "__main__":
    main()
