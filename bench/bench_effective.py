"""Effective-attention speed (issue 21): the full pattern A of one GDN layer, and its rows for 64 query
positions, against that layer's fused forward (fla's ``chunk_gated_delta_rule`` where fla is installed,
else our chunked torch scan), in one run.

    python bench/bench_effective.py --quick                    # CPU, seconds (smoke run)
    python bench/bench_effective.py --device cuda --out x.json # the numbers for BENCHMARKS.md

Setting: random q, k (l2-normalised in the kernel, as Qwen3-Next's layers do), v, log decays
``logsigmoid(N(0,1)) / 4`` and write strengths ``sigmoid(N(0,1))``; B=8, T=2048, H=12, K=V=64, no
initial state, float32. Each time is the median of ``--reps`` CUDA-event (CPU: perf_counter) timings after
one warm-up call. The readout A implies (sum_s A[t, s] v_s) is checked against the fused output (relative
error printed). The Triton path (`hooks.effective_triton`, CUDA with triton, or CPU under TRITON_INTERPRET=1)
is timed with "tf32" and "ieee" products, full and rows, and compared with the torch path's A (max |diff| /
max |A| and norm-relative). Nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone

import torch
import torch.nn.functional as F

from hooks import effective as E
from hooks import recurrence as R
from hooks.scan import gdn
from hooks.scan.kernels import use_kernels
from interp.experiment import git_commit

FULL = dict(B=8, T=2048, H=12, K=64, V=64, rows=64)
QUICK = dict(B=1, T=256, H=2, K=16, V=16, rows=8)


def make_kw(B, T, H, K, V, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    return dict(q=r(B, T, H, K), k=r(B, T, H, K), v=r(B, T, H, V), g=F.logsigmoid(r(B, T, H)) / 4,
                beta=torch.sigmoid(r(B, T, H)), use_qk_l2norm_in_kernel=True)


def timed(fn, device, reps):
    """Median seconds of ``reps`` calls after warm-up (on CUDA: calls for at least 0.3 s, so that an idle GPU's
    clocks have ramped up before the first timed call); returns (seconds, last result)."""
    out, t0 = fn(), time.perf_counter()
    while device.type == "cuda" and time.perf_counter() - t0 < 0.3:
        out = fn()
        torch.cuda.synchronize(device)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            a.record()
            out = fn()
            b.record()
            torch.cuda.synchronize(device)
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def paired(fn, ref, device, reps):
    """Median over ``reps`` of time(fn) / time(ref), each ``fn`` call timed right after a ``ref`` call (after
    `timed`'s warm-up): a ratio that the card's clock drift between rows does not move. CUDA only."""
    timed(lambda: (ref(), fn()), device, 1)
    ratios = []
    for _ in range(reps):
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
        torch.cuda.synchronize(device)
        ev[0].record()
        ref()
        ev[1].record()
        fn()
        ev[2].record()
        torch.cuda.synchronize(device)
        ratios.append(ev[1].elapsed_time(ev[2]) / ev[0].elapsed_time(ev[1]))
    return statistics.median(ratios)


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def triton_ok(device):
    """Whether the Triton path can run here (CUDA with triton; CPU only under TRITON_INTERPRET=1)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def max_rel(a, b):
    """max |a - b| / max |b|."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def run_triton(c, rows, device, reps, budget, A, Ar, fused=None):
    """The Triton path's times and its differences from the torch path's A (full) and Ar (rows); with
    ``fused`` (CUDA) also the tf32 rows' `paired` ratios to it."""
    out = {}
    for prec in ("tf32", "ieee"):
        E.PRECISION = prec
        full = lambda: E.pattern("gdn", c, budget=budget, impl="triton")  # noqa: E731
        part = lambda: E.pattern("gdn", c, rows=rows, budget=budget, impl="triton")  # noqa: E731
        t, At = timed(full, device, reps)
        out[f"triton_{prec}_full_s"], out[f"triton_{prec}_max_rel"] = t, max_rel(At, A)
        out[f"triton_{prec}_rel_err"] = rel(At, A)
        del At
        t, Atr = timed(part, device, reps)
        out[f"triton_{prec}_rows_s"], out[f"triton_{prec}_rows_max_rel"] = t, max_rel(Atr, Ar)
        if fused is not None and prec == "tf32":
            out["triton_tf32_full_paired"] = paired(full, fused, device, reps)
            out["triton_tf32_rows_paired"] = paired(part, fused, device, reps)
    E.PRECISION = "tf32"
    return out


@torch.no_grad()
def run(p, device, reps):
    kw = make_kw(p["B"], p["T"], p["H"], p["K"], p["V"], device)
    c = R.canonical("gdn", kw)
    budget = 1 << 40
    rows = torch.linspace(0, p["T"] - 1, p["rows"]).round().long().tolist()
    t_fused, (o, _) = timed(lambda: gdn.scan(**kw), device, reps)
    t_torch, _ = timed(lambda: gdn.chunk_torch(**kw), device, reps)
    t_full, A = timed(lambda: E.pattern("gdn", c, budget=budget, impl="torch"), device, reps)
    t_rows, Ar = timed(lambda: E.pattern("gdn", c, rows=rows, budget=budget, impl="torch"), device, reps)
    o_hat = torch.einsum("bhts,bshv->bthv", A, kw["v"])
    o_rows = torch.einsum("bhts,bshv->bthv", Ar, kw["v"])
    res = dict(fused_backend="fla chunk_gated_delta_rule" if use_kernels(kw["q"]) else "torch chunk scan",
               fused_s=t_fused, torch_scan_s=t_torch, full_s=t_full, rows_s=t_rows,
               full_over_fused=t_full / t_fused, rows_over_fused=t_rows / t_fused,
               readout_rel_err=rel(o_hat.float(), o.float()), rows_rel_err=rel(o_rows.float(), o[:, rows].float()),
               pattern_bytes=A.numel() * A.element_size())
    del o_hat, o_rows
    if triton_ok(device):
        res.update(run_triton(c, rows, device, reps, budget, A, Ar,
                              fused=(lambda: gdn.scan(**kw)) if device.type == "cuda" else None))
    return res


def table(res, p):
    """The Markdown table of one run."""
    f = res["fused_s"]
    lines = [f"| what | seconds | vs fused forward |", "|---|---|---|",
             f"| fused forward ({res['fused_backend']}) | {f:.4f} | 1 |",
             f"| torch chunk scan | {res['torch_scan_s']:.4f} | {res['torch_scan_s'] / f:.2f} |",
             f"| full A [B, H, T, T], torch | {res['full_s']:.4f} | {res['full_over_fused']:.2f} |",
             f"| A rows for {p['rows']} query positions, torch | {res['rows_s']:.4f} | {res['rows_over_fused']:.2f} |"]
    for prec in ("tf32", "ieee"):
        if f"triton_{prec}_full_s" in res:
            lines += [f"| full A, triton ({prec}) | {res[f'triton_{prec}_full_s']:.4f} | "
                      f"{res[f'triton_{prec}_full_s'] / f:.2f} |",
                      f"| A rows for {p['rows']} query positions, triton ({prec}) | {res[f'triton_{prec}_rows_s']:.4f} | "
                      f"{res[f'triton_{prec}_rows_s'] / f:.2f} |"]
    lines.append(f"readout from A (torch) vs fused output: rel err {res['readout_rel_err']:.2e} "
                 f"(rows {res['rows_rel_err']:.2e})")
    for prec in ("tf32", "ieee"):
        if f"triton_{prec}_full_s" in res:
            lines.append(f"triton ({prec}) vs torch A: max |diff| / max |A| {res[f'triton_{prec}_max_rel']:.2e}, "
                         f"norm rel {res[f'triton_{prec}_rel_err']:.2e} (rows: max {res[f'triton_{prec}_rows_max_rel']:.2e})")
    if "triton_tf32_full_paired" in res:
        lines.append(f"paired (each call timed right after a fused forward, median of per-call ratios): full A "
                     f"{res['triton_tf32_full_paired']:.2f}x, {p['rows']} rows {res['triton_tf32_rows_paired']:.2f}x "
                     f"the fused forward (tf32)")
    if "triton_tf32_full_s" not in res:
        lines.append("triton path not run (needs CUDA + triton, or TRITON_INTERPRET=1)")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (CPU smoke run)")
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--out", help="also write the numbers as JSON here")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    p = QUICK if a.quick else FULL
    res = dict(p, **run(p, device, a.reps))
    commit = git_commit()   # INTERP_GIT_COMMIT on a host whose .git is not the tree's
    res.update(date=datetime.now(timezone.utc).isoformat(timespec="minutes"), torch=torch.__version__,
               device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
               command="python bench/bench_effective.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
               commit=commit)
    print(table(res, p))
    print(json.dumps(res))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
