"""GPU check: training gradients of zoo models on fla's kernels equal those of the pure-torch reference
path, same weights and batch. On Hopper with Triton < 3.7.1, fla's gated backward runs with
hooks.scan.fla_dqkwg's torch ``chunk_bwd_dqkwg`` in place of the kernel fla refuses (fla #640);
the table says whether it was called (it runs fla's own kernel at 32-wide blocks where that passes its
first-use check, hooks.scan.fla_dqkwg_triton, and the script compares that kernel at 32- and 64-wide blocks
with the torch version at a training size).

Run on a CUDA host:  python tests/gpu/check_grad_gpu.py [--layouts gdn100,mamba2100] [--ieee] [--first-config]
Prints, per layout and dtype, the relative loss difference and the largest relative gradient error over
all parameters (max |g_fla - g_ref| / max |g_ref| per parameter), and exits 1 if one is above its
tolerance (fp32: 1e-2, since fla's fp32 dots run in TF32 unless --ieee; bf16 autocast: 1e-1).
"""
import argparse
import json
import os
import sys
from datetime import datetime, timezone

import torch
import torch.nn.functional as F

import first_config  # tests/gpu/first_config.py, a sibling of this script

LAYOUTS = ["gdn100", "gdn100+negeig", "mamba2100", "gla100", "gdn75"]
TOL = {torch.float32: 1e-2, torch.bfloat16: 1e-1}


def grads(m, x, dtype):
    m.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        logits = m(x[:, :-1])
    loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    return loss.item(), {n: p.grad.detach().float().clone() for n, p in m.named_parameters() if p.grad is not None}


def widths():
    """fla's dqkwg kernel at 32- and 64-wide blocks (64: fla's choice on Hopper for K = 64, the miscompile of
    fla #640) against the torch version at a training size; True where the 32-wide kernel is within tolerance."""
    from hooks.scan import fla_dqkwg, fla_dqkwg_triton as FT
    good = True
    for dtype in (torch.float32, torch.bfloat16):
        for H, HV, w, svf in ((12, 12, True, False), (4, 8, True, False), (12, 12, False, False), (12, 12, True, True)):
            kw = FT.check_inputs("cuda", dtype, H, HV, 64, 64, w, svf, B=8, NT=16, seed=1)
            e32, e64 = (FT.compare(kw, fla_dqkwg.torch_dqkwg, block=b) for b in (32, 64))
            good &= e32 <= FT.TOLERANCE
            print(f"dqkwg kernel vs torch  {str(dtype)[6:]:8s} H={H} HV={HV} dw={w!s:5s} v_first={svf!s:5s}  "
                  f"32-wide: {e32:.2e}  64-wide: {e64:.2e}", flush=True)
    return good


def main():
    args, layouts = first_config.parse_check_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), LAYOUTS)
    assert torch.cuda.is_available(), "needs CUDA"
    from hooks.scan import fla_dqkwg, fla_dqkwg_triton, use_kernels
    from interp.zoo import HybridLM, ZooConfig
    dev = torch.device("cuda")
    kernels = use_kernels(torch.empty(1, device=dev))      # also installs the dqkwg stand-in where needed
    calls = [0]
    orig = fla_dqkwg.chunk_bwd_dqkwg

    def counted(*a, **k):
        calls[0] += 1
        return orig(*a, **k)
    fla_dqkwg.chunk_bwd_dqkwg = counted
    print(f"device: {torch.cuda.get_device_name()}  date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}"
          f"  torch {torch.__version__}  fla kernels: {kernels}  dqkwg stand-in installed: {fla_dqkwg.install()}"
          f"  fp32 Triton dots: {os.environ.get('TRITON_F32_DEFAULT', 'tf32 (default)')}", flush=True)
    rows, ok = [], True
    for name in layouts:
        layout, neg = name.split("+")[0], name.endswith("+negeig")
        torch.manual_seed(0)
        cfg = ZooConfig(vocab_size=512, d_model=256, n_layers=4, layout=layout, n_heads=4, head_dim=64,
                        mamba_head_dim=64, mamba_state=64, gdn_neg_eig=neg)
        m = HybridLM(cfg).to(dev).train()
        x = torch.randint(0, 512, (4, 301), device=dev)     # 300 inputs: not a multiple of the chunk
        for dtype in (torch.float32, torch.bfloat16):
            calls[0] = 0
            m.set_scan_backend("auto")
            lk, gk = grads(m, x, dtype)
            used = calls[0]
            m.set_scan_backend("reference")
            lr, gr = grads(m, x, dtype)
            m.set_scan_backend("auto")
            errs = {n: ((gk[n] - gr[n]).abs().max() / gr[n].abs().max().clamp(min=1e-12)).item() for n in gr}
            worst = max(errs, key=errs.get)
            e = errs[worst]
            le = abs(lk - lr) / abs(lr)
            good = e <= TOL[dtype] and le <= TOL[dtype] and gk.keys() == gr.keys()
            ok &= good
            rows.append(dict(layout=name, dtype=str(dtype).split(".")[-1], loss_rel=le, grad_rel=e, worst=worst,
                             dqkwg_calls=used, tol=TOL[dtype], ok=good))
            print(rows[-1], flush=True)
    print(f"{'layout':14s} {'dtype':9s} {'loss rel':>9s} {'grad rel':>9s} {'dqkwg calls':>11s} {'tol':>6s} ok  worst param")
    for r in rows:
        print(f"{r['layout']:14s} {r['dtype']:9s} {r['loss_rel']:9.2e} {r['grad_rel']:9.2e} {r['dqkwg_calls']:11d} "
              f"{r['tol']:6.0e} {r['ok']!s:5s} {r['worst']}")
    print("fla's dqkwg kernel at 32-wide blocks, first-use checks (config: passed):", fla_dqkwg_triton.checked())
    ok &= widths()
    if args.out:
        json.dump(rows, open(args.out, "w"), indent=1)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
