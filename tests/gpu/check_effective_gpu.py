"""GPU check of hooks.effective's Triton path (hooks.effective_triton) against its pure-torch path, on CUDA:
the full pattern and rows for 64 query positions, "tf32" and "ieee" products, for GDN at the benchmark's
size (B=8, T=2048, H=12, K=V=64; GVA and beta in (0, 2) in a second, smaller row) and KDA, GLA, Mamba2,
Mamba1 at smaller sizes; and GDN's readout from the Triton pattern vs fla's fused forward.

    python tests/gpu/check_effective_gpu.py

Both paths run in float32 on the same GPU (torch matmuls without TF32). Error: max |a - ref| / max |ref|.
Tolerance 1e-4 for "ieee", 5e-3 for "tf32" (fla's kernels use TF32 dot products too). Prints device, date
and the table; exits 1 if any row is over tolerance or failed.
"""
import sys
import traceback
from datetime import datetime, timezone

import torch
import torch.nn.functional as F

from hooks import effective as E
from hooks import recurrence as R
from hooks.scan import gdn

TOLS = {"ieee": 1e-4, "tf32": 5e-3}


def err(a, ref):
    return ((a.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


def kwargs(family, B, T, H, K, V, dev, gva=False, neg=False):
    g = torch.Generator(device="cpu").manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(dev)  # noqa: E731
    u = lambda *s: torch.rand(*s, generator=g).to(dev)   # noqa: E731
    Hk = H // 2 if gva else H
    if family == "gdn":
        return dict(q=r(B, T, Hk, K), k=r(B, T, Hk, K), v=r(B, T, H, V), g=F.logsigmoid(r(B, T, H)) / 4,
                    beta=u(B, T, H) * (2 if neg else 1), use_qk_l2norm_in_kernel=True)
    if family == "kda":
        return dict(q=r(B, T, H, K), k=F.normalize(r(B, T, H, K), dim=-1), v=r(B, T, H, V),
                    g=F.logsigmoid(r(B, T, H, K)) / 8, beta=2 * u(B, T, H))
    if family == "gla":
        return dict(q=r(B, T, H, K), k=r(B, T, H, K), v=r(B, T, H, V), g=F.logsigmoid(r(B, T, H, K)) / 8)
    if family == "mamba2":
        return dict(x=r(B, T, H, V), dt=u(B, T, H) * 0.1, A=-u(H), B=r(B, T, 1, K), C=r(B, T, 1, K), D=r(H))
    return dict(x=r(B, T, H), dt=u(B, T, H) * 0.1, A=-u(H, K), B=r(B, T, K), C=r(B, T, K), D=r(H))


CASES = [("gdn", dict(B=8, T=2048, H=12, K=64, V=64)), ("gdn", dict(B=2, T=1000, H=4, K=128, V=64, gva=True, neg=True)),
         ("kda", dict(B=2, T=1000, H=4, K=64, V=64)), ("gla", dict(B=2, T=1000, H=4, K=64, V=64)),
         ("mamba2", dict(B=2, T=1000, H=8, K=128, V=64)), ("mamba1", dict(B=1, T=700, H=64, K=16, V=1))]


def check(family, size, dev):
    kw = kwargs(family, dev=dev, **size)
    c = R.canonical(family, kw)
    T = size["T"]
    rows = torch.linspace(0, T - 1, 64).round().long().tolist()
    out = []
    with torch.no_grad():
        ref, ref_rows = E.pattern(family, c, budget=None, impl="torch"), E.pattern(family, c, rows=rows, impl="torch")
        for prec in ("ieee", "tf32"):
            E.PRECISION = prec
            A = E.pattern(family, c, budget=None, impl="triton")
            out += [(f"{family} {size} full {prec}", err(A, ref), TOLS[prec]),
                    (f"{family} {size} rows {prec}", err(E.pattern(family, c, rows=rows, impl="triton"), ref_rows),
                     TOLS[prec])]
            if family == "gdn" and prec == "tf32" and not size.get("gva"):
                o = gdn.scan(**kw)[0]
                o_hat = torch.einsum("bhts,bshv->bthv", A, kw["v"])
                out.append((f"{family} {size} readout from A vs fused forward", err(o_hat, o), 5e-3))
            del A
        E.PRECISION = "tf32"
    return out


def main():
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(dev)}, {datetime.now(timezone.utc).isoformat(timespec='minutes')}")
    print("| case | max err / max ref | tol | ok |\n|---|---|---|---|")
    ok = True
    for family, size in CASES:
        try:
            for name, e, tol in check(family, size, dev):
                ok &= e <= tol
                print(f"| {name} | {e:.2e} | {tol:g} | {'yes' if e <= tol else 'NO'} |")
        except Exception:
            ok = False
            print(f"| {family} {size} | failed | | NO |")
            traceback.print_exc()
        torch.cuda.empty_cache()
    print("ALL OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
