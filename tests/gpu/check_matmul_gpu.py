"""GPU check: `hooks.matmul`'s split TF32 linears are as accurate as fp32 ones on the GPU (issue #26).

Run on a CUDA host:  python tests/gpu/check_matmul_gpu.py [--first-config] [--ieee]
1. `split_tf32_linear` on the patching sweep's shapes (rows 256 x 128, d=768, 4d MLP): its max relative error
   against a float64 product (max |diff| / max |reference|) at most 4x cuBLAS fp32's own (TF32 off), where plain
   TF32 is ~100x; a bias and batch dimensions give ``F.linear``'s shape.
2. Random 12-layer d=768 zoo models, logits under `split_tf32_linears()` against a float64 copy of the model
   (max |difference| over max |logit|): the transformer's and gdn75's on its pure-torch scans (``reference``:
   every product is cuBLAS) at most 4x fp32's own; gdn75 on fla's kernels (``auto``) at most 2x fp32's own.
   fla's Triton kernels multiply fp32 as TF32 (Triton's default), so there a change of their inputs as small as
   the split's (~1e-6) can flip roundings and move the logits by ~1e-3 (BENCHMARKS.md sections 1, 43): split
   and fp32 are compared with the float64 model, not with each other. ``--ieee`` makes all of fla's fp32 products
   IEEE fp32 (`hooks.scan.fla_precision.ieee_dots`; tests/gpu/first_config.py for both flags).
Exits 1 if any check fails. GPU only.
"""
import argparse
import sys

import torch
import torch.nn.functional as F

import first_config  # tests/gpu/first_config.py, a sibling of this script
from hooks import matmul
from interp.zoo.randinit import random_zoo


def rel(y, ref):
    return float((y.double() - ref).abs().max() / ref.abs().max())


def check_products(fails):
    g = torch.Generator(device="cuda").manual_seed(1)
    for n, k in [(768, 768), (3072, 768), (768, 3072)]:
        x = torch.randn(256 * 128, k, device="cuda", generator=g)
        w = torch.randn(n, k, device="cuda", generator=g) / k ** 0.5
        ref = x.double() @ w.double().T
        e_split, e_fp32 = rel(matmul.split_tf32_linear(x, w), ref), rel(x @ w.T, ref)
        torch.backends.cuda.matmul.allow_tf32 = True
        e_tf32 = rel(x @ w.T, ref)
        torch.backends.cuda.matmul.allow_tf32 = False
        ok = e_split <= 4 * e_fp32
        print(f"{x.shape[0]} x {k} -> {n}: split {e_split:.1e}, cuBLAS fp32 {e_fp32:.1e}, TF32 {e_tf32:.1e} "
              f"({'ok' if ok else 'FAIL'})")
        fails += [] if ok else [f"product {k}->{n}"]
    x, w, b = (torch.randn(3, 5, 40, device="cuda"), torch.randn(24, 40, device="cuda"), torch.randn(24, device="cuda"))
    y = matmul.split_tf32_linear(x, w, b)
    ok = y.shape == (3, 5, 24) and rel(y, F.linear(x.double(), w.double(), b.double())) < 1e-5
    print(f"bias and batch dims: {'ok' if ok else 'FAIL'}")
    fails += [] if ok else ["bias/batch"]


def errors(m, toks, backend=None):
    """(split, fp32) logits' errors against a float64 copy of the zoo model ``m``; with ``backend``, the fp32 runs
    use that scan backend and the float64 copy the pure-torch ``reference`` (fla's kernels take no float64).
    Leaves ``m`` in float64."""
    if backend:
        m.set_scan_backend(backend)
    fp32 = m(toks)
    with matmul.split_tf32_linears():
        split = m(toks)
    if backend:
        m.set_scan_backend("reference")
    ref = m.double()(toks)
    return rel(split, ref), rel(fp32, ref)


def check_models(fails):
    toks = torch.randint(0, 64, (16, 128), device="cuda", generator=torch.Generator(device="cuda").manual_seed(2))
    with torch.no_grad():
        cases = [("transformer", "transformer", None, 4), ("gdn75, pure-torch scans", "gdn75", "reference", 4),
                 ("gdn75, fla's kernels", "gdn75", "auto", 2)]
        for name, layout, backend, factor in cases:
            e_split, e_fp32 = errors(random_zoo(768, 12, 12, layout, "cuda"), toks, backend)
            ok = e_split <= factor * e_fp32
            print(f"{name}: logits against a float64 copy: split {e_split:.1e}, fp32 {e_fp32:.1e} "
                  f"({'ok' if ok else 'FAIL'}; at most {factor}x fp32's)")
            fails += [] if ok else [name]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    first_config.add_flag(ap)
    first_config.add_ieee_flag(ap)
    first_config.apply(ap.parse_args())
    if not torch.cuda.is_available():
        print("check_matmul_gpu.py: needs a GPU", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    fails = []
    check_products(fails)
    check_models(fails)
    print("FAILED: " + ", ".join(fails) if fails else "all checks passed")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
