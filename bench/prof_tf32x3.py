"""Could fp32-accurate matmuls run faster than cuBLAS' fp32? The patching sweep's GEMMs in four precisions.

    python bench/prof_tf32x3.py [--rows 32768] [--reps 20]

Section 31's floor for the resid_pre sweep assumes the patched forwards run at plain fp32 forward speed; TF32
(section 41) is 3x faster but moves the sweep's grid by ~5e-3, over issue #26's 1e-4. Triton's ``tl.dot``
also offers ``input_precision="tf32x3"`` (each fp32 operand split into a TF32 high part and a TF32 remainder,
three TF32 products: near-fp32 accuracy on tensor cores). This times, for the 12-layer d=768 zoo model's weight
shapes (rows = 256 pairs x 128 tokens; x @ W.T with W of N x K): cuBLAS fp32 (TF32 off), cuBLAS TF32, one
Triton matmul kernel (autotuned over a few block shapes, keyed on the row count's power-of-two bucket) with
``input_precision`` "ieee", "tf32x3" and "tf32", and the toolkit's `hooks.matmul.split_tf32_linear` (the same
three products as three cuBLAS TF32 GEMMs of operands split in torch; at commit b43ec62 this script's own
``split3_mm``, BENCHMARKS section 42), each with its max relative error against a float64 product
(max |diff| / max |reference|).
"""
import argparse
from datetime import datetime, timezone

import torch
import triton
import triton.language as tl

from bench_states import timeit   # this script runs from bench/, beside it
from hooks.matmul import split_tf32_linear
from interp.experiment import git_commit

_CONFIGS = [triton.Config({"BM": bm, "BN": bn, "BK": bk}, num_warps=w, num_stages=s)
            for bm, bn, bk, w, s in [(128, 128, 32, 8, 3), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4),
                                     (128, 128, 16, 8, 4), (128, 256, 32, 8, 3)]]


@triton.autotune(configs=_CONFIGS, key=["MB", "N", "K", "PREC"])
@triton.jit
def _mm(x, w, y, M, N, K, MB, PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """y[M, N] = x[M, K] @ w[N, K].T in fp32 with ``tl.dot(..., input_precision=PREC)``. ``MB``: the row count's
    power-of-two bucket, only the autotuner's key (keyed on ``M`` itself, a patching sweep's many row counts each
    re-benchmarked every block shape: section 41's 280.8 s)."""
    pm, pn = tl.program_id(0), tl.program_id(1)
    om = pm * BM + tl.arange(0, BM)
    on = pn * BN + tl.arange(0, BN)
    ok = tl.arange(0, BK)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(0, K, BK):
        a = tl.load(x + om[:, None] * K + (k0 + ok)[None, :], mask=(om[:, None] < M) & ((k0 + ok)[None, :] < K), other=0.0)
        b = tl.load(w + on[None, :] * K + (k0 + ok)[:, None], mask=(on[None, :] < N) & ((k0 + ok)[:, None] < K), other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PREC)
    tl.store(y + om[:, None] * N + on[None, :], acc, mask=(om[:, None] < M) & (on[None, :] < N))


def triton_mm(x, w, prec):
    M, K = x.shape
    N = w.shape[0]
    y = torch.empty(M, N, device=x.device, dtype=torch.float32)
    _mm[lambda m: (triton.cdiv(M, m["BM"]), triton.cdiv(N, m["BN"]))](x, w, y, M, N, K, triton.next_power_of_2(M),
                                                                     PREC=prec)
    return y


def cublas_mm(tf32):
    def f(x, w):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            return x @ w.T
        finally:
            torch.backends.cuda.matmul.allow_tf32 = False
    return f


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=256 * 128)
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args(argv)
    print(f"device: {torch.cuda.get_device_name()}  date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}"
          f"  torch {torch.__version__}  triton {triton.__version__}  commit {git_commit()}")
    print(f"command: python bench/prof_tf32x3.py --rows {a.rows} --reps {a.reps}\n")
    ways = {"cuBLAS fp32 (TF32 off)": cublas_mm(False), "cuBLAS TF32": cublas_mm(True),
            "Triton ieee": lambda x, w: triton_mm(x, w, "ieee"),
            "Triton tf32x3": lambda x, w: triton_mm(x, w, "tf32x3"),
            "Triton tf32": lambda x, w: triton_mm(x, w, "tf32"),
            "hooks.matmul split_tf32_linear": split_tf32_linear}
    g = torch.Generator(device="cuda").manual_seed(0)
    print("| rows x K -> N | way | ms | TFLOP/s | x cuBLAS fp32 time | max rel error vs float64 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n, k in [(768, 768), (2048, 768), (768, 2048)]:
        x = torch.randn(a.rows, k, device="cuda", generator=g)
        w = torch.randn(n, k, device="cuda", generator=g) / k ** 0.5
        ref = (x.double() @ w.double().T)
        scale = float(ref.abs().max())
        base = None
        for name, f in ways.items():
            err = float((f(x, w).double() - ref).abs().max()) / scale
            ms = timeit(lambda: f(x, w), reps=a.reps, warm=3)
            base = base or ms
            print(f"| {a.rows} x {k} -> {n} | {name} | {ms:.3f} | {2 * a.rows * n * k / ms / 1e9:.1f} | "
                  f"{ms / base:.2f} | {err:.1e} |", flush=True)


if __name__ == "__main__":
    main()
