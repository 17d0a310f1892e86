"""Where the resid_pre patching sweep's GPU time goes: matmuls, attention and the rest, per precision (issue 26).

    python bench/prof_sweep_share.py [--layers 0,4,8] [--precision fp32,tf32x3]

Section 31's floor bounds an exact sweep by its cones' arithmetic at plain-forward speed; section 41 asked whether
faster fp32-accurate matmuls could beat it. This bounds that question from the other side: it runs
bench_patch.py's sweep (the random 12-layer d=768 zoo transformer, 256 mqar pairs x 128 tokens, every position of
``--layers``) under torch.profiler and sums the GPU kernels' time in three kinds, by kernel name: matmuls (cuBLAS,
CUTLASS, the Triton matmul), attention (SDPA's kernels) and the rest (norms, activations, residual adds, copies,
indexing, the patch's own scatter). The rest does not shrink with faster matmuls: the whole sweep's time times the
rest's share is a floor for any matmul precision. Each precision is also timed without the profiler. GPU only.
"""
import argparse
from collections import defaultdict
from contextlib import nullcontext
from datetime import datetime, timezone

import torch
from torch.profiler import ProfilerActivity, profile

from bench_patch import precision, timed_sweep   # this script runs from bench/, beside it
from interp import tasks
from interp.experiment import git_commit
from interp.zoo.randinit import random_zoo

# attention first: SDPA's memory-efficient kernels are CUTLASS ones ("fmha_cutlassF_...")
_KINDS = {"attention": ("fmha", "attention", "flash", "mem_eff", "attn"),
          "matmul": ("gemm", "cutlass", "xmma", "sgemm", "cublas", "_mm", "splitk", "s1688", "s16816")}


def kind_of(name):
    """'attention', 'matmul' or 'rest' for one kernel name."""
    n = name.lower()
    return next((k for k, keys in _KINDS.items() if any(s in n for s in keys)), "rest")


def kernel_times(prof):
    """{kind: seconds}, {kernel name: seconds} and the kernel count, summed over the profiler's GPU kernels."""
    kinds, names, count = defaultdict(float), defaultdict(float), 0
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        if t <= 0:
            continue
        kinds[kind_of(e.key)] += t / 1e6
        names[e.key] += t / 1e6
        count += e.count
    return kinds, names, count


def one(m, pairs, layers, batch_size, mode):
    """(wall seconds unprofiled, wall seconds profiled, {kind: s}, {name: s}, kernels) of the sweep of ``layers``."""
    def run():
        return timed_sweep(m, pairs, batch_size, layers=layers)[1]

    with precision(mode) if mode != "fp32" else nullcontext():
        run()                                                                 # warm-up: autotuners, allocator
        t_plain = run()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            t_prof = run()
    kinds, names, count = kernel_times(prof)
    return t_plain, t_prof, kinds, names, count


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="0,4,8")
    ap.add_argument("--precision", default="fp32,tf32x3")
    ap.add_argument("--batch-size", type=int, default=256)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        ap.exit(2, "prof_sweep_share.py: needs a GPU (torch.cuda.is_available() is False)\n")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    layers = [int(x) for x in a.layers.split(",")]
    m = random_zoo(768, 12, 12, "transformer", "cuda")
    pairs = tasks.make_pairs("mqar", 256, seed=0, n_pairs=8, seq_len=128).to("cuda")
    print(f"device: {torch.cuda.get_device_name()}  date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}"
          f"  torch {torch.__version__}  commit {git_commit()}")
    print(f"command: python bench/prof_sweep_share.py --layers {a.layers} --precision {a.precision}\n")
    rows, tops = [], {}
    for mode in a.precision.split(","):
        t_plain, t_prof, kinds, names, count = one(m, pairs, layers, a.batch_size, mode)
        busy = sum(kinds.values())
        rows.append((mode, t_plain, t_prof, busy, kinds, count))
        tops[mode] = sorted(((t, n) for n, t in names.items() if kind_of(n) == "rest"), reverse=True)[:6]
        print(f"{mode}: {t_plain:.2f} s", flush=True)
    print(f"\nThe resid_pre sweep of layers {a.layers} x every position (256 pairs x 128 tokens):\n")
    print("| precision | wall s (no profiler) | wall s (profiled) | GPU kernel s | matmul | attention | rest | "
          "kernels | wall without the matmuls |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for mode, t_plain, t_prof, busy, kinds, count in rows:
        share = {k: kinds.get(k, 0.0) for k in ("matmul", "attention", "rest")}
        print(f"| {mode} | {t_plain:.2f} | {t_prof:.2f} | {busy:.2f} | "
              + " | ".join(f"{v:.2f} ({100 * v / busy:.0f}%)" for v in share.values())
              + f" | {count} | {t_plain - share['matmul']:.2f} ({(t_plain - share['matmul']) / t_plain:.2f}) |")
    for mode, top in tops.items():
        print(f"\n{mode}, the largest 'rest' kernels: "
              + "; ".join(f"{n[:70]} {t:.2f} s" for t, n in top))


if __name__ == "__main__":
    main()
