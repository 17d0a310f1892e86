"""What IEEE fp32 products cost in fla's kernels: fp32 GDN scans and an fp32 gdn75 forward, TF32 vs `ieee_dots`.

    python bench/prof_fla_ieee.py --precision tf32|ieee [--B 8] [--T 2048] [--reps 20] [--out FILE.json]

One precision a process: `hooks.scan.fla_precision.ieee_dots` must run before fla's kernels compile, so compare two
runs (on one machine, one after the other). Times (CUDA events, median of ``--reps`` after 3 warm-up calls, fla's
autotuning done in the warm-up) fla's ``chunk_gated_delta_rule`` through `hooks.scan.gdn.scan` on fp32 inputs
(B x T, 12 heads of K = V = 64, q and k normalised in the kernel), `hooks.scan.gdn.states` (every token's state,
fp32), and the forward of a random 12-layer d=768 `gdn75` zoo model in fp32 on fla's kernels (cuBLAS fp32 for its
linears, TF32 off). Prints device, date, commit, command and one table row per timing; ``--out`` writes them as
JSON. GPU only.
"""
import argparse
import json
import sys
from datetime import datetime, timezone

import torch

from bench_states import timeit   # this script runs from bench/, beside it
from interp.experiment import git_commit


def scan_inputs(B, T, H=12, K=64, dev="cuda"):
    g = torch.Generator(device=dev).manual_seed(0)
    r = lambda *s: torch.randn(*s, device=dev, generator=g)   # noqa: E731
    return dict(q=r(B, T, H, K), k=r(B, T, H, K), v=r(B, T, H, K), g=-torch.rand(B, T, H, device=dev, generator=g),
                beta=torch.rand(B, T, H, device=dev, generator=g), scale=K ** -0.5, use_qk_l2norm_in_kernel=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", choices=["tf32", "ieee"], required=True)
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--T", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("prof_fla_ieee.py: needs a GPU", file=sys.stderr)
        return 2
    set_lines = []
    if a.precision == "ieee":
        from hooks.scan.fla_precision import ieee_dots
        set_lines = ieee_dots()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    from hooks.scan import gdn
    from interp.zoo.randinit import random_zoo
    print(f"device: {torch.cuda.get_device_name()}  date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}"
          f"  torch {torch.__version__}  commit {git_commit()}")
    print(f"command: python bench/prof_fla_ieee.py --precision {a.precision} --B {a.B} --T {a.T} --reps {a.reps}")
    if set_lines:
        print("ieee_dots: " + "; ".join(set_lines))
    kw = scan_inputs(a.B, a.T)
    m = random_zoo(768, 12, 12, "gdn75", "cuda")
    m.set_scan_backend("auto")
    toks = torch.randint(0, 64, (a.B, a.T), device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))
    rows = []
    with torch.no_grad():
        for name, fn in [("gdn scan (fla chunk_gated_delta_rule), fp32", lambda: gdn.scan(**kw)),
                         ("gdn states, every token, fp32", lambda: gdn.states(**kw)),
                         ("gdn75 12-layer d=768 forward, fp32", lambda: m(toks))]:
            ms = timeit(fn, reps=a.reps)
            rows.append(dict(what=name, precision=a.precision, B=a.B, T=a.T, ms=round(ms, 3)))
    print("| what | precision | ms |\n| --- | --- | --- |")
    for r in rows:
        print(f"| {r['what']} | {r['precision']} | {r['ms']:.3f} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
