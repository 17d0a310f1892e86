"""GPU check of hooks.scan: fla kernel paths vs the pure-torch chunk references, and the GPU
per-token states (fla's chunk pieces + the Triton expansion kernel, or the torch expansion)
vs the pure-torch states, for gdn (beta in (0,1) and in (0,2)), gla and mamba2, fp32 and bf16.

    python tests/gpu/check_scan_gpu.py [--first-config] [--ieee]

The references run in float32 on the same GPU from the same (dtype-rounded) inputs. Error is
max |a - ref| and that divided by max |ref|. Tolerance on the relative error: 5e-3 for fp32
inputs (fla's kernels use TF32 dot products; 1e-4 with ``--ieee``, which makes them all IEEE fp32 through
`hooks.scan.fla_precision.ieee_dots`), 2e-2 for bf16 inputs (fla stores its chunk pieces
in bf16); 0 for rows marked "(0 expected)" (states from the pieces a scan call kept vs a second
pass of the same kernels, and the call's output with and without keeping them). Prints device, date and the table; exits 1 if any row is over tolerance or failed.
"""
import argparse
import sys
import traceback
from datetime import datetime, timezone

import torch

import first_config  # tests/gpu/first_config.py, a sibling of this script

from hooks.scan import gdn, gla, mamba2, use_kernels

TOLS = {torch.float32: 5e-3, torch.bfloat16: 2e-2}


def err(a, ref):
    d = (a.float() - ref.float()).abs().max().item()
    return d, d / max(ref.float().abs().max().item(), 1e-6)


def gdn_rows(dtype, dev, B, T, H, K, V, neg):
    gen = torch.Generator(device=dev).manual_seed(1)
    r = lambda *s: torch.randn(*s, device=dev, generator=gen).to(dtype)  # noqa: E731
    q, k, v = r(B, T, H, K), r(B, T, H, K), r(B, T, H, V)
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, device=dev, generator=gen)) / 4
    beta = (torch.rand(B, T, H, device=dev, generator=gen) * (2 if neg else 1)).to(dtype)
    S0 = torch.randn(B, H, K, V, device=dev, generator=gen) * 0.1
    f = lambda *xs: [x.float() for x in xs]  # noqa: E731
    kw = dict(initial_state=S0, use_qk_l2norm_in_kernel=True)
    ref_o, ref_s = gdn.chunk_torch(*f(q, k, v), g, beta.float(), output_final_state=True, **kw)
    ref_st = gdn.states(*f(q, k, v), g, beta.float(), impl="torch", **kw)
    o, s = gdn.scan(q, k, v, g, beta, output_final_state=True, **kw)
    name = "gdn" + ("-neg" if neg else "")
    rows = [(f"{name} scan o", err(o, ref_o)), (f"{name} scan final state", err(s, ref_s))]
    for impl in ("auto", "triton", "einsum"):
        rows.append((f"{name} states all ({impl})", err(gdn.states(q, k, v, g, beta, impl=impl, **kw), ref_st)))
    pos = [0, 63, 64, T // 2, T - 1]
    for impl in ("auto", "einsum"):
        rows.append((f"{name} states 5 positions ({impl})",
                     err(gdn.states(q, k, v, g, beta, positions=pos, impl=impl, **kw), ref_st[:, pos])))
    rows.append((f"{name} states[-1] vs kernel final", err(gdn.states(q, k, v, g, beta, positions=[T - 1], **kw)[:, 0], s)))
    # states expanded from the pieces the layer's own kernel call computed (what run_with_cache uses)
    with gdn.kept_states(k, g) as got:
        o2, _ = gdn.scan(q, k, v, g, beta, output_final_state=True, **kw)
    kept = gdn.states_from_kept(got)
    rows.append((f"{name} states all (kept pieces of the call)", err(kept, ref_st) if kept is not None
                 else (float("nan"), float("nan"))))
    rows.append((f"{name} kept pieces vs second pass (0 expected)",
                 err(kept, gdn.states(q, k, v, g, beta, **kw)) if kept is not None else (float("nan"), float("nan"))))
    rows.append((f"{name} scan o with pieces kept vs without (0 expected)", err(o2, o)))
    return rows


def gla_rows(dtype, dev, B, T, H, K, V):
    gen = torch.Generator(device=dev).manual_seed(2)
    r = lambda *s: torch.randn(*s, device=dev, generator=gen).to(dtype)  # noqa: E731
    q, k, v = r(B, T, H, K), r(B, T, H, K), r(B, T, H, V)
    gk = torch.nn.functional.logsigmoid(torch.randn(B, T, H, K, device=dev, generator=gen)) / 16
    S0 = torch.randn(B, H, K, V, device=dev, generator=gen) * 0.1
    ref_o, ref_s = gla.chunk_torch(q.float(), k.float(), v.float(), gk, initial_state=S0, output_final_state=True)
    ref_st = gla.states(q.float(), k.float(), v.float(), gk, initial_state=S0, impl="torch")
    o, s = gla.scan(q, k, v, gk, initial_state=S0, output_final_state=True)
    rows = [("gla scan o", err(o, ref_o)), ("gla scan final state", err(s, ref_s))]
    for impl in ("auto", "einsum"):
        rows.append((f"gla states all ({impl})", err(gla.states(q, k, v, gk, initial_state=S0, impl=impl), ref_st)))
    pos = [1, 64, T - 1]
    rows.append(("gla states 3 positions", err(gla.states(q, k, v, gk, initial_state=S0, positions=pos), ref_st[:, pos])))
    return rows


def mamba2_rows(dtype, dev, B, T, H, K, V):
    gen = torch.Generator(device=dev).manual_seed(3)
    r = lambda *s: torch.randn(*s, device=dev, generator=gen)  # noqa: E731
    x, Bm, Cm = r(B, T, H, V).to(dtype), r(B, T, 2, K).to(dtype), r(B, T, 2, K).to(dtype)
    dt = torch.nn.functional.softplus(r(B, T, H) - 2)
    A, D = -torch.rand(H, device=dev, generator=gen) * 4, r(H)
    h0 = r(B, H, K, V) * 0.1
    ref_y, ref_h = mamba2.chunk_torch(x.float(), dt, A, Bm.float(), Cm.float(), D, initial_state=h0,
                                      output_final_state=True)
    ref_st = mamba2.states(x.float(), dt, A, Bm.float(), Cm.float(), initial_state=h0, impl="torch")
    y, h = mamba2.scan(x, dt, A, Bm, Cm, D, initial_state=h0, output_final_state=True)
    rows = [("mamba2 scan y", err(y, ref_y)), ("mamba2 scan final state", err(h, ref_h))]
    rows.append(("mamba2 states all (auto)", err(mamba2.states(x, dt, A, Bm, Cm, initial_state=h0), ref_st)))
    pos = [0, T // 3, T - 1]
    rows.append(("mamba2 states 3 positions",
                 err(mamba2.states(x, dt, A, Bm, Cm, initial_state=h0, positions=pos), ref_st[:, pos])))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    first_config.add_flag(ap)  # on a fresh host fla's fp32 autotuning made this script outlast 400 s
    first_config.add_ieee_flag(ap)
    args = ap.parse_args()
    first_config.apply(args)
    dev = "cuda"
    print(f"device: {torch.cuda.get_device_name()}  date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}  "
          f"torch {torch.__version__}  fla kernels used: {use_kernels(torch.empty(1, device=dev))}")
    print(f"command: python {' '.join(sys.argv)}")
    shape = dict(B=2, T=300, H=12, K=64, V=64)  # H, K, V as in bench_states.py: shares its kernel autotuning
    print("shape: " + " ".join(f"{a}={b}" for a, b in shape.items()) + " (T not a multiple of 64; initial state given)")
    ok = True
    print(f"{'check':52s} {'dtype':9s} {'max_abs':>10s} {'rel':>10s} {'tol':>7s}", flush=True)
    for dtype in (torch.bfloat16, torch.float32):
        tol = 1e-4 if args.ieee and dtype == torch.float32 else TOLS[dtype]
        jobs = [lambda: gdn_rows(dtype, dev, **shape, neg=False), lambda: gdn_rows(dtype, dev, **shape, neg=True),
                lambda: gla_rows(dtype, dev, **shape), lambda: mamba2_rows(dtype, dev, **shape)]
        for job in jobs:
            try:
                rows = job()
            except Exception:  # noqa: BLE001  report and go on with the other families
                traceback.print_exc()
                ok = False
                continue
            for name, (a, r) in rows:
                t = 0.0 if name.endswith("(0 expected)") else tol  # the same kernels on the same inputs
                good = r <= t
                ok &= good
                print(f"{name:52s} {str(dtype)[6:]:9s} {a:10.3e} {r:10.3e} {t:7.0e} {'ok' if good else 'FAIL'}",
                      flush=True)
    print("ALL OK" if ok else "SOME CHECKS FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
