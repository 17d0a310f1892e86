"""GPU check: the zoo's fla-kernel path equals its pure-torch reference path, and a checkpoint
saved from GPU loads and runs on CPU with the same logits.

Run on a CUDA host:  python tests/gpu/check_zoo_gpu.py [--out results.json] [--layouts gdn75,gdn100]
Prints a table (max abs / relative logit error per layout and dtype) and exits 1 if any error is
above its tolerance (bf16: 5e-2 relative, bf16 chunk kernels vs fp32 refs; fp32: 2e-3 with ``--ieee``, 5e-3 with
TF32 dots, the default).

fp32 here means fp32 tensors: on TF32-capable GPUs Triton computes fp32 ``tl.dot`` in TF32 unless
``TRITON_F32_DEFAULT=ieee`` (fla's own test suite sets it; fla sets it only for GPUs without TF32),
and fla's GDN chunk kernels leave most dots at that default (fla 0.6.0 asks for TF32 by name in the rest).
``--ieee`` (`hooks.scan.fla_precision.ieee_dots`: the default and fla's named precisions) sets both before any
kernel compiles, to tell TF32 rounding apart from a kernel error (BENCHMARKS.md sections 1 and 45; section 1's
``--ieee`` set the default only). The TF32 tolerance
comes from ``bench/tf32_emulation_cpu.py``: TF32-rounded products in our own chunk scan alone move these
models' logits by 0.9-1.7e-3 on CPU, and the GPU's fp32 errors were 1.7-1.9x the emulated ones for every
model (fla's chunk algorithm has more products), so 2e-3 was tighter than TF32 arithmetic allows.
"""
import argparse
import json
import os
import sys
import tempfile
from datetime import datetime, timezone

import torch

import first_config  # tests/gpu/first_config.py, a sibling of this script

from interp.zoo import HybridLM, ZooConfig, load_model, save_model

LAYOUTS = ["gdn75", "gla75", "mamba275", "gdn75-par", "gdn100"]
TOL = {torch.float32: 5e-3, torch.bfloat16: 5e-2}   # fp32 with TF32 dots; main uses 2e-3 with --ieee


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-6)).item()


def main():
    args, layouts = first_config.parse_check_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), LAYOUTS)
    tol = {**TOL, torch.float32: 2e-3} if args.ieee else TOL
    assert torch.cuda.is_available(), "needs CUDA"
    from hooks.scan import use_kernels
    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name()}  date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}"
          f"  torch {torch.__version__}  fla kernels: {use_kernels(torch.empty(1, device=dev))}"
          f"  fp32 Triton dots: {os.environ.get('TRITON_F32_DEFAULT', 'tf32 (default)')}")
    rows, ok = [], True
    for layout in layouts:
        for neg in ([False, True] if layout == "gdn100" else [False]):
            torch.manual_seed(0)
            cfg = ZooConfig(vocab_size=512, d_model=256, n_layers=4, layout=layout, n_heads=4, head_dim=64,
                            mamba_head_dim=64, mamba_state=64, gdn_neg_eig=neg)
            m = HybridLM(cfg).to(dev).eval()
            x = torch.randint(0, 512, (4, 300), device=dev)
            for dtype in (torch.bfloat16, torch.float32):
                with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                    m.set_scan_backend("auto")
                    k = m(x)
                    m.set_scan_backend("reference")
                    r = m(x)
                m.set_scan_backend("auto")
                e = rel(k, r)
                good = e <= tol[dtype]
                ok &= good
                rows.append(dict(layout=layout + ("+negeig" if neg else ""), dtype=str(dtype).split(".")[-1],
                                 max_abs=(k - r).abs().max().item(), rel=e, tol=tol[dtype], ok=good))
                print(rows[-1], flush=True)
            # checkpoint: GPU -> CPU
            with tempfile.TemporaryDirectory() as d:
                save_model(m, d)
                mc = load_model(d, device="cpu")
                with torch.no_grad():
                    e = rel(m(x[:1, :100]).cpu(), mc(x[:1, :100].cpu()))
                good = e <= tol[torch.float32]
                ok &= good
                rows.append(dict(layout=layout + ("+negeig" if neg else ""), dtype="gpu->cpu load", max_abs=float("nan"),
                                 rel=e, tol=tol[torch.float32], ok=good))
    print(f"{'layout':18s} {'dtype':14s} {'max_abs':>10s} {'rel':>10s} {'tol':>8s} ok")
    for r in rows:
        print(f"{r['layout']:18s} {r['dtype']:14s} {r['max_abs']:10.3e} {r['rel']:10.3e} {r['tol']:8.0e} {r['ok']}")
    if args.out:
        json.dump(rows, open(args.out, "w"), indent=1)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
