"""GPU check: the patching window path's GDN scans at few shapes (`interp.zoo.gdn.scan_rows`: q, k normalised before
fla's kernel, rows back to back in fla's variable-length form or padded to bucket sizes; on by default for CUDA
tensors) give the sweep the window path gave without them, and the general path's numbers, on a random gdn75
(issue #26).

Run on a CUDA host:  python tests/gpu/check_window_gpu.py [--d 256] [--pairs 16] [--seq-len 32] [--layers 0,5,9]
[--first-config] [--ieee] (``--ieee``: all of fla's fp32 products in IEEE fp32, to see whether TF32 is what
separates the plain scans at two batch sizes; tests/gpu/first_config.py)
First checks `hooks.scan.gdn.scan` in fla's variable-length form (the window scans' rows back to back, each from its
own state) against the same rows batched (tolerance 1e-4 of scale). Then prints max |difference| of the per-pair raw
logit difference and p(clean answer) (over the metric's largest magnitude) for: few shapes vs the plain window scans
(tolerance: 1e-4, or twice the plain path's own difference between batch sizes 7 and 20 where that is larger: on an
H100 the two differed by 2.4e-4, above the 1e-4 first set on the belief that only the l2norm's rounding differs;
fla's kernels round fp32 dots to TF32, whose unit roundoff 4.9e-4 can turn such rounding into TF32-sized steps;
BENCHMARKS.md section 34), and few shapes vs the general path (tolerance 5e-3: fla's chunk
kernels round fp32 dots to TF32 and the window path's chunks start at the window, see check_zoo_gpu.py). Exits 1 if
any is above its tolerance. ``--device cpu`` runs the kernel path's inputs through the pure-torch scan instead (a
smoke test of this script).
"""
import argparse
import importlib
import sys
import time

import numpy as np
import torch

import first_config  # tests/gpu/first_config.py, a sibling of this script
from interp import tasks
from interp.patching.plan import plan_sweep, unit_key
from interp.patching.units import MemoryUnits
from interp.zoo import gdn as zgdn
from interp.zoo.randinit import random_zoo

sweep_mod = importlib.import_module("interp.patching.sweep")


def per_pair(m, pairs, **kw):
    plan = plan_sweep(m, pairs, **kw)
    store = MemoryUnits()
    sweep_mod.run_items(plan, store, plan.items, progress=False)
    cells = [[store.get(unit_key(d, c, u)) for c in range(len(plan.chunks))]    # each [cells, pairs of chunk c]
             for d in plan.directions for u in range(len(plan.units))]
    return {m_: np.concatenate([torch.cat([r[m_] for r in rows], dim=-1).numpy().ravel() for rows in cells])
            for m_ in ("ld", "prob")}


def worst(a, b):
    return max(float(np.nanmax(np.abs(a[m] - b[m]))) / max(1.0, float(np.nanmax(np.abs(b[m])))) for m in a)


def varlen_error(device):
    """`interp.zoo.gdn.back_to_back_error` of `hooks.scan.gdn.scan` (fla's variable-length form vs batched)."""
    from hooks.scan import gdn as gdn_scan
    g = torch.Generator().manual_seed(0)
    B, W, H, K = 5, 70, 4, 32
    r = lambda *s: torch.randn(*s, generator=g).to(device)   # noqa: E731
    kw = dict(q=r(B, W, H, K), k=r(B, W, H, K), v=r(B, W, H, K), g=-torch.rand(B, W, H, generator=g).to(device),
              beta=torch.rand(B, W, H, generator=g).to(device), scale=K ** -0.5, use_qk_l2norm_in_kernel=True)
    return zgdn.back_to_back_error(gdn_scan.scan, kw, r(B, H, K, K))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--layers", default="0,5,9", help="layers swept (comma-separated)")
    ap.add_argument("--device", default="cuda")
    first_config.add_flag(ap)
    first_config.add_ieee_flag(ap)
    a = ap.parse_args()
    first_config.apply(a)
    e_var = varlen_error(a.device)
    print(f"{a.device}: scan in the variable-length form vs batched {e_var:.1e} (<= 1e-4)", flush=True)
    m = random_zoo(a.d, 12, 4, "gdn75", a.device)
    pairs = tasks.make_pairs("mqar", a.pairs, seed=0, n_pairs=4, seq_len=a.seq_len).to(a.device)
    kw = dict(sites=["resid_pre", "mixer_out", "rec.state"], direction="both", batch_size=20,
              layers=[int(x) for x in a.layers.split(",")])
    with torch.no_grad():
        zgdn.FEW_SHAPES = None if a.device != "cpu" else True
        t0 = time.time()
        few = per_pair(m, pairs, **kw)
        print(f"few shapes: {time.time() - t0:.1f} s", flush=True)
        zgdn.FEW_SHAPES = False
        t0 = time.time()
        plain = per_pair(m, pairs, **kw)
        print(f"plain window scans: {time.time() - t0:.1f} s", flush=True)
        noise = worst(per_pair(m, pairs, **{**kw, "batch_size": 7}), plain)
        print(f"plain window scans at batch size 7 vs 20 (the path's own rounding under other shapes): {noise:.1e}",
              flush=True)
        real, sweep_mod._window_ok = sweep_mod._window_ok, lambda *_: False
        t0 = time.time()
        general = per_pair(m, pairs, **kw)
        print(f"general path: {time.time() - t0:.1f} s", flush=True)
        sweep_mod._window_ok = real
    e_plain, e_general = worst(few, plain), worst(few, general)
    tol = max(1e-4, 2 * noise)
    ok = e_plain <= tol and e_general <= 5e-3 and e_var <= 1e-4
    print(f"{a.device}: few shapes vs plain window scans {e_plain:.1e} (<= {tol:.1e}), vs general path {e_general:.1e} "
          f"(<= 5e-3): {'ok' if ok else 'FAILED'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
