"""GPU check: fla kernel paths of hooks.scan vs the pure-torch references, and the GPU states
path vs the CPU states reference.

    python tests/gpu/check_scan_gpu.py
Prints device, date and a table of max abs / relative errors; exit 1 if over tolerance
(fp32 inputs: 1e-3 relative; bf16 inputs: 2e-2 relative)."""
import sys
from datetime import datetime, timezone

import torch

from hooks.scan import gdn, gla, mamba2, use_kernels


def rel(a, b):
    a, b = a.float().cpu(), b.float().cpu()
    return (a - b).abs().max().item(), ((a - b).abs().max() / b.abs().max().clamp(min=1e-6)).item()


def main():
    dev = "cuda"
    print(f"device: {torch.cuda.get_device_name()}  date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}  "
          f"torch {torch.__version__}  kernels: {use_kernels(torch.empty(1, device=dev))}")
    torch.manual_seed(0)
    B, T, H, K, V = 2, 300, 4, 64, 64
    rows, ok = [], True
    for dtype, tol in ((torch.float32, 1e-3), (torch.bfloat16, 2e-2)):
        q, k, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)
        g, beta = torch.nn.functional.logsigmoid(torch.randn(B, T, H)) / 4, torch.rand(B, T, H)
        gk = torch.nn.functional.logsigmoid(torch.randn(B, T, H, K)) / 16
        S0 = torch.randn(B, H, K, V) * 0.1
        cu = lambda *xs: [x.to(dev, dtype) if x.dtype.is_floating_point and x is not g and x is not gk and x is not beta
                          else x.to(dev) for x in xs]  # noqa: E731
        qd, kd, vd = (x.to(dev, dtype) for x in (q, k, v))
        gd, bd, gkd, S0d = g.to(dev), beta.to(dev, dtype), gk.to(dev), S0.to(dev)
        for neg in (False, True):
            bb, bbd = (beta * 2, bd * 2) if neg else (beta, bd)
            ref_o, ref_s = gdn.chunk_torch(q.to(dtype).float(), k.to(dtype).float(), v.to(dtype).float(), g, bb.to(dtype).float(),
                                           initial_state=S0, output_final_state=True, use_qk_l2norm_in_kernel=True)
            o, s = gdn.scan(qd, kd, vd, gd, bbd, initial_state=S0d, output_final_state=True, use_qk_l2norm_in_kernel=True)
            for what, a, b in (("o", o, ref_o), ("final", s, ref_s)):
                e = rel(a, b)
                rows.append((f"gdn{'-neg' if neg else ''} scan {what}", str(dtype)[6:], *e, tol))
            st = gdn.states(qd, kd, vd, gd, bbd, initial_state=S0d, use_qk_l2norm_in_kernel=True)
            st_ref = gdn.states(q.to(dtype).float(), k.to(dtype).float(), v.to(dtype).float(), g, bb.to(dtype).float(),
                                initial_state=S0, use_qk_l2norm_in_kernel=True)
            rows.append((f"gdn{'-neg' if neg else ''} states all", str(dtype)[6:], *rel(st, st_ref), tol))
            pos = [0, 63, 64, 150, 299]
            stp = gdn.states(qd, kd, vd, gd, bbd, initial_state=S0d, use_qk_l2norm_in_kernel=True, positions=pos)
            rows.append((f"gdn{'-neg' if neg else ''} states pos", str(dtype)[6:], *rel(stp, st_ref[:, pos]), tol))
            rows.append((f"gdn{'-neg' if neg else ''} states[-1] vs final", str(dtype)[6:], *rel(st[:, -1], s), tol))
        ref_o, ref_s = gla.chunk_torch(q.to(dtype).float(), k.to(dtype).float(), v.to(dtype).float(), gk,
                                       initial_state=S0, output_final_state=True)
        o, s = gla.scan(qd, kd, vd, gkd, initial_state=S0d, output_final_state=True)
        rows.append(("gla scan o", str(dtype)[6:], *rel(o, ref_o), tol))
        rows.append(("gla scan final", str(dtype)[6:], *rel(s, ref_s), tol))
        x = torch.randn(B, T, H, V)
        dt = torch.nn.functional.softplus(torch.randn(B, T, H) - 2)
        A = -torch.rand(H) * 4
        Bm, Cm, D = torch.randn(B, T, 1, K), torch.randn(B, T, 1, K), torch.randn(H)
        ref_y, ref_h = mamba2.chunk_torch(x.to(dtype).float(), dt, A, Bm.to(dtype).float(), Cm.to(dtype).float(), D,
                                          output_final_state=True)
        y, h = mamba2.scan(x.to(dev, dtype), dt.to(dev), A.to(dev), Bm.to(dev, dtype), Cm.to(dev, dtype), D.to(dev),
                           output_final_state=True)
        rows.append(("mamba2 scan y", str(dtype)[6:], *rel(y, ref_y), tol))
        rows.append(("mamba2 scan final", str(dtype)[6:], *rel(h, ref_h), tol))
        hs = mamba2.states(x.to(dev, dtype), dt.to(dev), A.to(dev), Bm.to(dev, dtype), Cm.to(dev, dtype))
        rows.append(("mamba2 states[-1] vs final", str(dtype)[6:], *rel(hs[:, -1], ref_h), tol))
    print(f"{'check':30s} {'dtype':9s} {'max_abs':>10s} {'rel':>10s} {'tol':>7s}")
    for name, dt_, a, r, tol in rows:
        good = r <= tol
        ok &= good
        print(f"{name:30s} {dt_:9s} {a:10.3e} {r:10.3e} {tol:7.0e} {'ok' if good else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
