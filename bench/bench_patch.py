"""Full layer x position resid_pre patching sweep: interp.patching vs TransformerLens.

    python bench/bench_patch.py                 # 12 layers, d=768, 256 pairs x 128 tokens (GPU)
    python bench/bench_patch.py --small         # CPU sanity check
    python bench/bench_patch.py --skip-tl --extra  # + both directions, and gdn75 sites (issue 26 rows)
    python bench/bench_patch.py --skip-tl --precision tf32x3,tf32,triton-tf32x3  # + the same sweep with
        # matmul="tf32x3" (hooks.matmul), with TF32 matmuls and with a Triton tf32x3 kernel, each against fp32

Same model (a random-init 12-layer d=768 zoo transformer; TransformerLens gets the same weights
through interp.zoo.hf.to_transformer_bridge), same prompts (mqar pairs), same metric (normalised
logit difference), float32 without TF32 for both. Prints a markdown block for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import datetime
import sys
import time
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from interp import patching, tasks
from interp.experiment import git_commit
from interp.zoo.hf import to_transformer_bridge
from interp.zoo.randinit import random_zoo

PRECISIONS = ("tf32x3", "tf32", "triton-tf32x3")


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_plain(m, x):
    """Seconds of one plain forward of ``x`` through ``m``, after an untimed one (no grad)."""
    with torch.no_grad():
        m(x)
        sync()
        t0 = time.perf_counter()
        m(x)
        sync()
        return time.perf_counter() - t0


def timed_sweep(model, pairs, batch_size, site="resid_pre", direction="denoise", matmul="fp32", layers=None):
    """(result, seconds) of one sweep of every layer (or ``layers``) x position of ``site`` over all ``pairs``
    (none filtered)."""
    sync()
    t0 = time.perf_counter()
    res = patching.sweep(model, pairs, sites=[site], layers=layers, direction=direction, batch_size=batch_size,
                         progress=False, keep_all=True, matmul=matmul)
    sync()
    return res, time.perf_counter() - t0


def grid_of(res):
    """The normalised logit diff of a resid_pre sweep as a layer x position array."""
    return res.pivot(index="layer", columns="position", values="logit_diff").to_numpy()


def parse_args(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=256, help="our rows per forward")
    ap.add_argument("--skip-tl", action="store_true")
    ap.add_argument("--extra", action="store_true", help="also time direction='both' on the transformer and a gdn75 "
                    "of the same width and depth at resid_pre, mixer_out and rec.state (every layer and position)")
    ap.add_argument("--skip-both", action="store_true", help="with --extra: leave out the both-directions row")
    ap.add_argument("--gdn75-sites", default="resid_pre,mixer_out,rec.state",
                    help="with --extra: the gdn75 sites to time, in this order (comma-separated; one named twice is "
                    "timed twice)")
    ap.add_argument("--precision", default="", help="comma-separated, each also timed as our sweep with its "
                    "max |difference| from the fp32 grid (the issue's 1e-4): tf32x3 (the sweep's own matmul='tf32x3', "
                    "hooks.matmul), tf32 (TF32 allowed in cuBLAS and cuDNN), triton-tf32x3 (every fp32 F.linear on "
                    "the GPU through bench/prof_tf32x3.py's Triton matmul at input_precision tf32x3)")
    ap.add_argument("--time-budget", type=float, default=420.0, help="seconds: --extra rows that would end after "
                    "this (guessed from the first sweep's time) are skipped (and said so)")
    a = ap.parse_args(argv)
    bad = [p for p in a.precision.split(",") if p.strip() not in ("", *PRECISIONS)]
    if bad:
        ap.exit(2, f"bench_patch.py: unknown --precision '{bad[0]}'; valid: {', '.join(PRECISIONS)}\n")
    return a


def time_tl(m, pairs, b, grid, dev):
    """(seconds, max |difference| from ours) of TransformerLens' resid_pre sweep on the same model and pairs."""
    from transformer_lens import patching as tlp
    bridge = to_transformer_bridge(m)
    r = torch.arange(len(pairs.clean), device=dev)

    def metric(logits):
        ld = (logits[r, pairs.answer_pos, pairs.clean_answer] - logits[r, pairs.answer_pos, pairs.corrupted_answer]).mean()
        return (ld - b["corrupted_logit_diff"]) / (b["clean_logit_diff"] - b["corrupted_logit_diff"])
    with torch.no_grad():
        _, cache = bridge.run_with_cache(pairs.clean)
        sync()
        t0 = time.perf_counter()
        tl = tlp.get_act_patch_resid_pre(bridge, pairs.corrupted, cache, metric)
        sync()
        t_tl = time.perf_counter() - t0
    err = float(np.abs(tl.float().cpu().numpy() - grid).max())
    print(f"TransformerLens: {t_tl:.2f} s, max |diff| {err:.2e}", flush=True)
    return t_tl, err


def main(argv=None):
    a = parse_args(argv)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if a.small:
        a.pairs, a.seq_len, d, L, H = 16, 32, 64, 3, 4
    else:
        d, L, H = 768, 12, 12
    m = random_zoo(d, L, H, "transformer", dev)
    pairs = tasks.make_pairs("mqar", a.pairs, seed=0, n_pairs=8, seq_len=a.seq_len).to(dev)
    N, T = pairs.clean.shape
    print(f"model {m.num_params() / 1e6:.1f}M params, {N} pairs x {T} tokens, device {dev}", flush=True)

    t_fwd = time_plain(m, pairs.clean)   # one plain forward of the whole batch, after a warm-up

    patching.sweep(m, tasks.make_pairs("mqar", 4, seed=1, n_pairs=8, seq_len=a.seq_len).to(dev),
                   sites=["resid_pre"], layers=[L - 1], positions=[T - 3], progress=False, keep_all=True)  # warm-up
    # every pair (the random model answers few correctly), as TransformerLens' metric below averages them all
    ours, t_ours = timed_sweep(m, pairs, a.batch_size)
    grid = grid_of(ours)
    b = ours.attrs["baselines"]
    print(f"ours: {t_ours:.2f} s", flush=True)

    extra = timed_extra(a, m, d, L, H, dev, pairs, ours, t_ours) if a.extra else []
    for prec in [p.strip() for p in a.precision.split(",") if p.strip()]:
        extra.append(timed_precision(a, m, pairs, grid, t_fwd, prec))
    t_tl, err = (None, None) if a.skip_tl else time_tl(m, pairs, b, grid, dev)

    name = torch.cuda.get_device_name() if dev == "cuda" else "CPU"
    cmd = "python bench/bench_patch.py " + " ".join(argv if argv is not None else sys.argv[1:])
    commit = git_commit()
    print(f"\n### Patching sweep: layer x position resid_pre ({datetime.date.today()}, {name})\n")
    print(f"Command: `{cmd.strip()}` (commit {commit or 'n/a'}); {L} layers, d={d}, {m.num_params() / 1e6:.1f}M params, "
          f"{N} pairs x {T} tokens, {L * T} cells, float32 (TF32 off).\n")
    print("| what | seconds | vs one plain forward of the batch |\n|---|---|---|")
    print(f"| one plain forward (all {N} prompts) | {t_fwd:.4f} | 1 |")
    print(f"| interp.patching.sweep (batch {a.batch_size} rows) | {t_ours:.2f} | {t_ours / t_fwd:.0f} |")
    if t_tl is not None:
        print(f"| TransformerLens get_act_patch_resid_pre | {t_tl:.2f} | {t_tl / t_fwd:.0f} |")
    for what, t in extra:
        print(f"| {what} | {t:.2f} | {t / t_fwd:.0f} |" if t is not None else f"| {what} | not run (time budget) | |")
    if t_tl is not None:
        print(f"\nSpeed-up over TransformerLens: **{t_tl / t_ours:.1f}x**; max |difference| of the normalised "
              f"logit diff grid: {err:.1e}.")
    if extra:
        summary(t_ours, extra)
    for what, t in extra:
        if t is not None and t_tl is not None and "precision" in what:
            print(f"{what}: **{t_tl / t:.1f}x** TransformerLens (fp32).")


def timed_extra(a, m, d, L, H, dev, pairs, ours, t_ours):
    """Issue 26's rows: the same sweep with both directions, and a gdn75 zoo model of the same width and
    depth swept at the ``--gdn75-sites`` (default resid_pre, mixer_out, rec.state, in that order) after a warm-up
    on the same pairs; (label, seconds or None when over the budget: a row
    is skipped when it would end after ``--time-budget`` seconds, guessing it takes ``guess`` times the
    one-direction sweep's ``t_ours``). The denoising rows of the both-directions sweep are checked against
    the one-direction sweep ``ours``."""
    start, rows = time.perf_counter(), []

    def one(label, model, site, direction="denoise", guess=1.5):
        if time.perf_counter() - start + guess * t_ours > a.time_budget:
            rows.append((label, None))
            print(f"{label}: skipped (time budget {a.time_budget:.0f} s)", flush=True)
            return None
        res, t = timed_sweep(model, pairs, a.batch_size, site, direction)
        rows.append((label, t))
        print(f"{label}: {rows[-1][1]:.2f} s", flush=True)
        return res

    both = None if a.skip_both else one("transformer resid_pre, direction both", m, "resid_pre", "both", guess=2.0)
    if both is not None:
        den = both[both.direction == "denoise"].reset_index(drop=True)
        err = float(np.abs(den.raw_logit_diff.to_numpy() - ours.raw_logit_diff.to_numpy()).max())
        print(f"  its denoising rows vs the one-direction sweep: max |raw logit diff difference| {err:.1e}", flush=True)
    g = random_zoo(d, L, H, "gdn75", dev)
    sites = [s.strip() for s in a.gdn75_sites.split(",") if s.strip()]
    # warm-up: fla's Triton kernels compile and autotune for each shape key they meet (chunk_local_cumsum: the
    # batch size; l2norm: rows x positions x heads in buckets), so it runs the timed pairs' batch (one cell a site)
    patching.sweep(g, pairs, sites=sites, layers=[1], positions=[pairs.clean.shape[1] // 2], batch_size=a.batch_size,
                   progress=False, keep_all=True)
    for i, site in enumerate(sites):   # a site named twice is timed twice (the second: fla's kernels warm)
        again = ", again" if site in sites[:i] else ""
        one(f"gdn75 {site} (every layer{' with a state' if site == 'rec.state' else ''} x position{again})", g, site)
    return rows


@contextmanager
def precision(mode):
    """While open, fp32 products run in ``mode``: "tf32" allows TF32 in cuBLAS and cuDNN (which kernel torch picks
    for fp32 attention, and how it rounds, is torch's choice as in the fp32 sweep); "triton-tf32x3" sends every
    fp32 ``F.linear`` on the GPU through prof_tf32x3.py's Triton matmul (three TF32 products a multiply;
    attention's products stay torch's); "tf32x3" is the toolkit's own (`hooks.matmul.split_tf32_linears`)."""
    lin = F.linear
    if mode == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    elif mode == "tf32x3":
        from hooks.matmul import split_tf32_linears
        with split_tf32_linears():
            yield
        return
    elif torch.cuda.is_available():   # on the CPU there is nothing to route
        from prof_tf32x3 import triton_mm   # this script runs from bench/, beside it

        def linear(x, w, b=None):
            if not (x.is_cuda and x.dtype == w.dtype == torch.float32):
                return lin(x, w, b)
            y = triton_mm(x.reshape(-1, x.shape[-1]).contiguous(), w.contiguous(), "tf32x3")
            return (y if b is None else y + b).view(*x.shape[:-1], w.shape[0])
        F.linear = linear
    try:
        yield
    finally:
        F.linear = lin
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False


def timed_precision(a, m, pairs, grid, t_fwd, mode):
    """(label, seconds) of our resid_pre sweep under ``precision(mode)``, after one plain forward (timed) and a
    warm-up cell in it; prints the plain forward's time and the sweep's max |difference| of the normalised logit
    diff grid from the fp32 sweep's ``grid``."""
    with precision(mode):
        t_plain = time_plain(m, pairs.clean)
        T, L = pairs.clean.shape[1], len(grid)
        mm = "tf32x3" if mode == "tf32x3" else "fp32"   # the sweep's own setting (its context nests in ours)
        patching.sweep(m, pairs, sites=["resid_pre"], layers=[L - 1], positions=[T - 3], batch_size=a.batch_size,
                       progress=False, keep_all=True, matmul=mm)
        res, t = timed_sweep(m, pairs, a.batch_size, matmul=mm)
    err = float(np.abs(grid_of(res) - grid).max())
    print(f"{mode}: plain forward {t_plain:.4f} s ({t_fwd / t_plain:.2f}x faster than fp32), sweep {t:.2f} s, "
          f"max |diff| from the fp32 grid {err:.1e} (issue 26 asks 1e-4)", flush=True)
    return (f"transformer resid_pre, {mode} precision (max |diff| from fp32 {err:.1e})", t)


def summary(t_ours, extra):
    """Issue 26's table: each row's time over the transformer's one-direction resid_pre sweep, with its target."""
    target = {"direction both": "<= 1.6x"}
    print("\n| sweep (every layer x position) | seconds | vs the transformer's resid_pre, one direction | target |")
    print("| --- | --- | --- | --- |")
    print(f"| transformer resid_pre, denoising | {t_ours:.2f} | 1.00x | |")
    for what, t in extra:
        goal = next((v for k, v in target.items() if k in what), "<= 1.5x" if what.startswith("gdn75") else "")
        print(f"| {what} | {t:.2f} | {t / t_ours:.2f}x | {goal} |" if t is not None else
              f"| {what} | not run (time budget) | | {goal} |")


if __name__ == "__main__":
    main()
