"""Per-token recurrent states on the GPU vs the plain fused forward.

    python bench/bench_states.py [--reps 20]

One GDN layer, B=8 T=2048 H=12 K=V=64 bf16 (q, k l2-normalised in the kernel): median time
(CUDA events, after warmup) of fla's chunk_gated_delta_rule forward; that forward plus all per-token
states expanded from the chunk pieces it computed (what ``run_with_cache`` does for a GDN layer:
`gdn.kept_states`), fp32 and bf16, and plus states at 64 positions; all per-token states
(`hooks.scan.gdn.states`, fp32 output as the API returns, and bf16 output) with the Triton
expansion kernel and with the torch expansion; states at 64 evenly spread positions; the
memory-write floor for all states (fill of a preallocated output, fp32 and bf16); chaining
the kernel over 256 segments (one final state per segment); fla's naive recurrent loop on a
shorter T, scaled linearly to T. Then the same for one GLA layer (per-key decay) and one
Mamba2 layer (simple GLA) at the same size. Ratios are to each family's fused forward.
Targets (GDN): all states <= 2x the fused forward, 64 positions <= 1.3x. Every row is also divided by
the fused forward timed again right after it ("x adjacent"), since that denominator drifted within a run,
and the rows' GPU kernel time alone (torch profiler; launch gaps left out) is divided by the fused forward's.
Last, exactness at a small size: states vs the fp32 pure-torch reference on the same GPU inputs.
"""
import argparse
import sys
from datetime import datetime, timezone

import torch

from hooks.scan import gdn, gla, mamba2
from hooks.scan._common import fla_reference


def timeit(fn, reps=20, warm=3, calls=1):
    """Median over ``reps`` of the CUDA-event time of ``calls`` back-to-back calls of ``fn``, per call (ms),
    after ``warm`` untimed calls."""
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(calls):
            fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) / calls)
    return sorted(ts)[len(ts) // 2]


def kernel_ms(fn, reps=5):
    """GPU time of ``fn``'s kernels alone (ms per call): the summed durations of the device events torch's
    profiler records over ``reps`` calls, after one warm-up. Unlike the CUDA-event time it leaves out the
    gaps in which the GPU waits for the host to launch the next kernel, so it tells whether a row is bound
    by the GPU or by Python launch overhead (the fused forward's event time moved 0.8-1.7 ms across runs)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    us = sum(e.time_range.elapsed_us() for e in p.events() if e.device_type == DeviceType.CUDA)
    return us / 1e3 / reps if us else float("nan")


def table(title, rows):
    """rows: (name, thunk returning (ms, kernel ms or None)), the first the family's fused forward; printed as
    each finishes (a time-out keeps what was done). Each later row is divided by the first row's time, by the
    fused forward timed again right after it ("adjacent": the baseline drifted 1.3x within one run before),
    and by kernel time: its kernels' GPU time over the fused forward's ("kernels")."""
    print(f"\n{title}\n{'what':52s} {'ms':>9s} {'x fused fwd':>12s} {'x adjacent':>11s} {'kernel ms':>10s} "
          f"{'x kernels':>10s}", flush=True)
    (name0, base_fn), *rest = rows
    base, kbase = base_fn()
    print(f"{name0:52s} {base:9.3f} {1.0:12.2f} {1.0:11.2f} {kbase:10.3f} {1.0:10.2f}", flush=True)
    for name, fn in rest:
        ms, k = fn()
        kern = f"{k:10.3f} {k / kbase:10.2f}" if k is not None else f"{'-':>10s} {'-':>10s}"
        print(f"{name:52s} {ms:9.3f} {ms / base:12.2f} {ms / base_fn()[0]:11.2f} {kern}", flush=True)


def print_autotuned():
    """Print the configs the state-expansion kernel's autotuner chose, by key."""
    from hooks.scan.triton_states import _expand_kernel
    print("\nstate-expansion kernel, autotuned configs (key: K, V, all states?, per-key decay?, arg dtypes):")
    for key, cfg in _expand_kernel.cache.items():
        print(f"  {key}: {cfg}")


def exactness(q, k, v, g, beta, gk, x, dt, A, Bm, Cm, pos, T, l2):
    """Print the GPU states' largest error against the fp32 pure-torch reference on the same inputs (batch 0)."""
    print()
    s1 = (slice(0, 1),)
    for name, fast, ref in (
            ("gdn", lambda **kw: gdn.states(q[s1], k[s1], v[s1], g[s1], beta[s1], **l2, **kw),
             lambda **kw: gdn.states(q[s1].float(), k[s1].float(), v[s1].float(), g[s1], beta[s1].float(), **l2,
                                     impl="torch", **kw)),
            ("gla", lambda **kw: gla.states(q[s1], k[s1], v[s1], gk[s1], **kw),
             lambda **kw: gla.states(q[s1].float(), k[s1].float(), v[s1].float(), gk[s1], impl="torch", **kw)),
            ("mamba2", lambda **kw: mamba2.states(x[s1], dt[s1], A, Bm[s1], Cm[s1], **kw),
             lambda **kw: mamba2.states(x[s1].float(), dt[s1], A, Bm[s1].float(), Cm[s1].float(), impl="torch", **kw))):
        for what, kw in (("all states", {}), ("64 positions", dict(positions=pos))):
            st, rf = fast(**kw), ref(**kw)
            e = (st - rf).abs().max().item()
            print(f"{name:7s} {what:13s} max abs error vs fp32 torch reference (batch 0, T={T}): {e:.2e}  "
                  f"relative to max |ref|: {e / rf.abs().max().item():.2e}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    B, T, H, K, V = 8, 2048, 12, 64, 64
    print(f"device: {torch.cuda.get_device_name()}  date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}  "
          f"torch {torch.__version__}\ncommand: python {' '.join(sys.argv)}\nshape: B={B} T={T} H={H} K=V={K} bf16, "
          f"median of {a.reps} (CUDA events)", flush=True)
    spin = torch.randn(4096, 4096, device="cuda")
    for _ in range(200):  # ~1 s of matmuls first, so the first rows do not meet a GPU still raising its clocks
        spin @ spin
    del spin
    torch.manual_seed(0)
    d = dict(device="cuda", dtype=torch.bfloat16)
    q, k, v = torch.randn(B, T, H, K, **d), torch.randn(B, T, H, K, **d), torch.randn(B, T, H, V, **d)
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, device="cuda")) / 8
    beta = torch.rand(B, T, H, **d)
    pos = torch.linspace(0, T - 1, 64).long()
    def t_(fn, reps=a.reps, warm=3, kernels=True):  # a row's thunk: (event ms, kernel ms or None)
        return lambda: (timeit(fn, reps=reps, warm=warm), kernel_ms(fn) if kernels else None)
    l2 = dict(use_qk_l2norm_in_kernel=True)
    gst = lambda **kw: gdn.states(q, k, v, g, beta, **l2, **kw)  # noqa: E731

    def chained(n=256):
        S, seg = None, T // n
        for i in range(n):
            sl = slice(i * seg, (i + 1) * seg)
            _, S = gdn.scan(q[:, sl], k[:, sl], v[:, sl], g[:, sl], beta[:, sl], initial_state=S,
                            output_final_state=True, **l2)

    naive_T = 256
    fla_naive = fla_reference("gated_delta_rule").naive_recurrent_gated_delta_rule
    qn, kn = (torch.nn.functional.normalize(x[:, :naive_T].float(), dim=-1).to(x.dtype) for x in (q, k))
    out32 = torch.empty(B, T, H, K, V, device="cuda")
    out16 = torch.empty(B, T, H, K, V, **d)
    fused = lambda: gdn.scan(q, k, v, g, beta, output_final_state=True, **l2)  # noqa: E731

    def fused_and_states(**kw):  # what run_with_cache does: the layer's own call, its chunk pieces expanded
        with gdn.kept_states(k, g, **kw) as got:
            fused()
        return gdn.states_from_kept(got)

    rows = [("GDN fused chunk forward (o + final state)", t_(fused)),
            ("fused forward + all states from its pieces, fp32", t_(lambda: fused_and_states())),
            ("fused forward + all states from its pieces, bf16", t_(lambda: fused_and_states(out_dtype=torch.bfloat16))),
            ("fused forward + states at 64 positions, fp32", t_(lambda: fused_and_states(positions=pos))),
            ("all states, fp32 out (Triton expansion)", t_(lambda: gst())),
            ("all states, bf16 out (Triton expansion)", t_(lambda: gst(out_dtype=torch.bfloat16))),
            ("all states, fp32 out (torch expansion)", t_(lambda: gst(impl="einsum"), reps=5, kernels=False)),
            ("states at 64 positions, fp32 (Triton)", t_(lambda: gst(positions=pos))),
            ("states at 64 positions, fp32 (torch expansion)", t_(lambda: gst(positions=pos, impl="einsum"))),
            ("write floor: fill all states, fp32", t_(lambda: out32.fill_(1.0))),
            ("write floor: fill all states, bf16", t_(lambda: out16.fill_(1.0))),
            ("chain kernel over 256 segments", t_(chained, reps=3, warm=1, kernels=False)),
            (f"fla naive recurrent, T={naive_T} x {T // naive_T}",
             lambda: (t_(lambda: fla_naive(qn, kn, v[:, :naive_T], beta[:, :naive_T], g[:, :naive_T]), reps=3,
                         warm=1, kernels=False)()[0] * (T // naive_T), None))]
    table("Gated DeltaNet", rows)
    del out16

    gk = torch.nn.functional.logsigmoid(torch.randn(B, T, H, K, device="cuda")) / 16
    rows = [("GLA fused chunk forward (chunk_gla)", t_(lambda: gla.scan(q, k, v, gk, output_final_state=True))),
            ("all states, fp32 out (Triton expansion)", t_(lambda: gla.states(q, k, v, gk))),
            ("states at 64 positions, fp32 (Triton)", t_(lambda: gla.states(q, k, v, gk, positions=pos)))]
    table("GLA (per-key decay)", rows)

    x, Bm, Cm = torch.randn(B, T, H, V, **d), torch.randn(B, T, 1, K, **d), torch.randn(B, T, 1, K, **d)
    dt = torch.nn.functional.softplus(torch.randn(B, T, H, device="cuda") - 2)
    A = -torch.rand(H, device="cuda") * 4
    rows = [("Mamba2 fused chunk forward (chunk_simple_gla)", t_(lambda: mamba2.scan(x, dt, A, Bm, Cm,
                                                                                  output_final_state=True))),
            ("all states, fp32 out (Triton expansion)", t_(lambda: mamba2.states(x, dt, A, Bm, Cm))),
            ("states at 64 positions, fp32 (Triton)", t_(lambda: mamba2.states(x, dt, A, Bm, Cm, positions=pos)))]
    table("Mamba2 (G=1 group)", rows)
    del out32
    print_autotuned()

    exactness(q, k, v, g, beta, gk, x, dt, A, Bm, Cm, pos, T, l2)


if __name__ == "__main__":
    main()
