"""The per-token state-expansion kernel alone, per config, against the time that writing its output takes.

    python bench/prof_expand.py [--reps 20] [--calls 10]

Inputs as fla's GDN chunk forward leaves them (B=8 T=2048 H=12 K=V=64: chunk-start states h and writes
w in bf16, keys bf16, float32 log decays, scalar per head as in GDN / Mamba2 or per key as in GLA).
For each `hooks.scan.triton_states._CONFIGS` entry run as given (``config=``), and for the autotuned
choice: median over ``--reps`` of the CUDA-event time of ``--calls`` back-to-back calls, per call; the
write floor is ``out.fill_(1.0)`` on a preallocated output of the same shape and dtype, timed the same
way. Issue #26's target: expansion within 1.1x of the write floor (fp32 output). Every config's output
is also compared with the first config's (the same operations in the same order, but the compiler may
contract multiply-adds differently per block shape: not always bit-equal on a GPU). Three more floors tell
where the kernel's time goes: the kernel's own stores without its recurrence (the same programs, the same
addresses, each storing a constant-per-step tile after every token); the same programs each storing its tiles
into one contiguous stretch ("linear"); and the recurrence with its stores but without the per-token loads of
k, w, g (the chunk's first k and w, loaded once, and a fixed decay: "no per-token loads"). For the scalar
decay also: the kernel's loads and stores without the recurrence (each token's state formed from the chunk-start
state alone: "loads + stores, no loop"), and the time reading the inputs alone takes. Other designs tried with
this script: BENCHMARKS.md sections 39-40.
"""
import argparse
from datetime import datetime, timezone

import torch
import triton
import triton.language as tl

from bench_states import timeit   # this script runs from bench/, beside it
from hooks.scan import triton_states as ts
from interp.experiment import git_commit


@triton.jit
def _stores_only(out, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
                 LINEAR: tl.constexpr):
    """The expansion's grid (V-block * H + head, chunk, batch) and stores, without loads or recurrence; LINEAR:
    program p stores its BT tiles of K x BV values one after another from p * BT * K * BV on."""
    NV: tl.constexpr = V // BV
    i_v = tl.program_id(0) // H
    i_h = tl.program_id(0) % H
    i_c = tl.program_id(1)
    i_b = tl.program_id(2)
    o_k = tl.arange(0, K)
    o_v = tl.arange(0, BV)
    b = tl.zeros([K, BV], dtype=tl.float32) + 1.0
    p = ((i_b * tl.num_programs(1) + i_c) * (NV * H) + tl.program_id(0)).to(tl.int64)
    for t in range(BT):
        if LINEAR:
            ptr = out + (p * BT + t) * (K * BV) + o_k[:, None] * BV + o_v[None, :]
        else:
            row = (i_b * T + i_c * BT + t).to(tl.int64) * H + i_h
            ptr = out + row * (K * V) + o_k[:, None] * V + (i_v * BV + o_v)[None, :]
        tl.store(ptr, (b + t).to(out.dtype.element_ty))


@triton.jit
def _floor(h, k, w, g, out, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
           CARRY: tl.constexpr):
    """The expansion's grid (one V-block of 64, scalar decay) with half its work, storing a state after every token.
    CARRY: the recurrence S = 0.99 S + k w^T with the chunk's first k and w loaded once before the loop (the loop
    without its per-token loads); else token t's k, w, g are loaded and exp(g_t) h_c + k_t w_t^T stored, nothing
    carried from one token to the next (the bytes the kernel reads and writes, in its order, without its loop)."""
    i_h = tl.program_id(0)
    i_c = tl.program_id(1)
    i_b = tl.program_id(2)
    o_k = tl.arange(0, K)
    o_v = tl.arange(0, V)
    off_kv = o_k[:, None] * V + o_v[None, :]
    row = (i_b * T + i_c * BT).to(tl.int64) * H + i_h
    b_h = tl.load(h + ((i_b * tl.num_programs(1) + i_c) * H + i_h).to(tl.int64) * (K * V) + off_kv).to(tl.float32)
    if CARRY:
        b_s = b_h
        b_k = tl.load(k + row * K + o_k).to(tl.float32)
        b_w = tl.load(w + row * V + o_v).to(tl.float32)
    for t in range(BT):
        if CARRY:
            b_s = b_s * 0.99 + b_k[:, None] * b_w[None, :]
        else:
            b_k = tl.load(k + row * K + o_k).to(tl.float32)
            b_w = tl.load(w + row * V + o_v).to(tl.float32)
            b_s = b_h * tl.exp(tl.load(g + row)) + b_k[:, None] * b_w[None, :]
        tl.store(out + row * (K * V) + off_kv, b_s.to(out.dtype.element_ty))
        row += H


def floor_ms(h, k, w, g, out, carry, a, BT=64):
    """Per-call time of `_floor` (8 warps) writing ``out`` [B, T, H, K, V]."""
    B, T, H, K, V = out.shape
    return timeit(lambda: _floor[(H, T // BT, B)](h, k, w, g, out, T, H=H, K=K, V=V, BT=BT, CARRY=carry,
                                                  num_warps=8), a.reps, calls=a.calls)


def reads_ms(h, k, w, g, a):
    """Per-call time of reading the kernel's inputs alone (a sum over each, so every byte is loaded)."""
    return timeit(lambda: [x.sum(dtype=torch.float32) for x in (h, k, w, g)], a.reps, calls=a.calls)


def stores_only_ms(out, linear, a, BV=64, BT=64):
    """Per-call time of `_stores_only` over ``out`` [B, T, H, K, V] (8 warps, the autotuner's usual choice)."""
    B, T, H, K, V = out.shape
    grid = (V // BV * H, T // BT, B)
    return timeit(lambda: _stores_only[grid](out, T, H=H, K=K, V=V, BT=BT, BV=BV, LINEAR=linear, num_warps=8),
                  a.reps, calls=a.calls)


def inputs(per_key, B=8, T=2048, H=12, K=64, V=64, chunk=64):
    """Random pieces of the benchmark's shape (values only need to stay finite)."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    dev, bf = "cuda", torch.bfloat16
    k = torch.nn.functional.normalize(torch.randn(B, T, H, K, device=dev, generator=gen), dim=-1).to(bf)
    w = (torch.randn(B, T, H, V, device=dev, generator=gen) * 0.1).to(bf)
    h = torch.randn(B, T // chunk, H, K, V, device=dev, generator=gen).to(bf)
    g = -torch.rand(B, T, H, *((K,) if per_key else ()), device=dev, generator=gen) * 0.1
    return h, k, w, g


def name(cfg):
    """A config as a short label."""
    kw = cfg.kwargs
    return f"BV={kw['BV']:<3d} warps={cfg.num_warps}"


def table(per_key, out_dtype, a):
    """One gate kind and output dtype: the floor, every config, the autotuned choice."""
    h, k, w, g = inputs(per_key)
    B, T, H, K = k.shape
    V = w.shape[-1]
    floor_out = torch.empty(B, T, H, K, V, dtype=out_dtype, device="cuda")
    floor = timeit(lambda: floor_out.fill_(1.0), a.reps, calls=a.calls)
    gb = floor_out.numel() * floor_out.element_size() / 1e9
    gate = "per key (GLA)" if per_key else "scalar (GDN, Mamba2)"
    print(f"\ngate {gate}, output {str(out_dtype).replace('torch.', '')}: {gb:.2f} GB written per call", flush=True)
    print(f"{'what':24s} {'ms':>8s} {'x floor':>8s} {'TB/s':>6s}  max |diff| to the first / max |first|",
          flush=True)
    print(f"{'write floor: fill_':24s} {floor:8.3f} {1.0:8.2f} {gb / floor:6.2f}", flush=True)
    for label, linear in (("stores only, its pattern", False), ("stores only, linear", True)):
        ms = stores_only_ms(floor_out, linear, a)
        print(f"{label:24s} {ms:8.3f} {ms / floor:8.2f} {gb / ms:6.2f}", flush=True)
    ms = floor_ms(h, k, w, g, floor_out, True, a)
    print(f"{'loop, no per-token loads':24s} {ms:8.3f} {ms / floor:8.2f} {gb / ms:6.2f}", flush=True)
    if not per_key:
        ms = floor_ms(h, k, w, g, floor_out, False, a)
        print(f"{'loads + stores, no loop':24s} {ms:8.3f} {ms / floor:8.2f} {gb / ms:6.2f}", flush=True)
        ms = reads_ms(h, k, w, g, a)
        print(f"{'reads alone (h, k, w, g)':24s} {ms:8.3f} {ms / floor:8.2f}", flush=True)
    first, best = None, None
    for cfg in ts._CONFIGS:
        meta = dict(cfg.kwargs, num_warps=cfg.num_warps)
        if meta["BV"] > V:
            continue
        got = ts.expand_triton(h, k, w, g, out_dtype=out_dtype, config=meta)
        first = got if first is None else first
        diff = ((got.float() - first.float()).abs().max() / first.float().abs().max()).item()
        del got
        ms = timeit(lambda: ts.expand_triton(h, k, w, g, out_dtype=out_dtype, config=meta), a.reps, calls=a.calls)
        best = min(best or (ms, name(cfg)), (ms, name(cfg)))
        print(f"{name(cfg):24s} {ms:8.3f} {ms / floor:8.2f} {gb / ms:6.2f}  {diff:.1e}", flush=True)
    ms = timeit(lambda: ts.expand_triton(h, k, w, g, out_dtype=out_dtype), a.reps, calls=a.calls)
    print(f"{'autotuned':24s} {ms:8.3f} {ms / floor:8.2f} {gb / ms:6.2f}", flush=True)
    print(f"fastest config: {best[1]} ({best[0] / floor:.2f}x the floor)", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--calls", type=int, default=10)
    a = p.parse_args()
    for flag, v in (("--reps", a.reps), ("--calls", a.calls)):
        if v < 1:
            p.exit(2, f"prof_expand.py: error: {flag} {v}: must be a positive whole number\n")
    if not torch.cuda.is_available():
        raise SystemExit("prof_expand.py needs a CUDA GPU (the kernel is Triton)")
    commit = git_commit()   # INTERP_GIT_COMMIT on a host whose .git is not the tree's
    print(f"device: {torch.cuda.get_device_name()}  date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}"
          f"  torch {torch.__version__}  commit {commit}\ncommand: python bench/prof_expand.py --reps {a.reps}"
          f" --calls {a.calls}", flush=True)
    for per_key in (False, True):
        for out_dtype in (torch.float32, torch.bfloat16):
            table(per_key, out_dtype, a)
    print("\nautotuned configs (key: K, V, all states?, per-key decay?, arg dtypes):")
    for key, cfg in ts._expand_kernel.cache.items():
        print(f"  {key}: {cfg}")


if __name__ == "__main__":
    main()
