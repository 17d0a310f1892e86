"""Per-token GDN states on the GPU vs the plain fused forward (one layer, B=8 T=2048 H=12
K=V=64 bf16, as in the issue).

    python bench/bench_states.py
Prints device, date, command, a table of median times (CUDA events) and the ratios to the fused
chunk forward: all states (bf16 and fp32 output), states at 64 positions, the memory-write floor
for all states, and chaining the kernel over 256 segments."""
import sys
from datetime import datetime, timezone

import torch

from hooks.scan import gdn


def timeit(fn, reps=20, warm=3):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return sorted(ts)[len(ts) // 2]


def main():
    B, T, H, K, V = 8, 2048, 12, 64, 64
    print(f"device: {torch.cuda.get_device_name()}  date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}  "
          f"torch {torch.__version__}\ncommand: python {' '.join(sys.argv)}\nshape: B={B} T={T} H={H} K=V={K} bf16")
    torch.manual_seed(0)
    d = dict(device="cuda", dtype=torch.bfloat16)
    q, k, v = torch.randn(B, T, H, K, **d), torch.randn(B, T, H, K, **d), torch.randn(B, T, H, V, **d)
    k = torch.nn.functional.normalize(k.float(), dim=-1).to(torch.bfloat16)
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, device="cuda")) / 8
    beta = torch.rand(B, T, H, **d)
    pos = torch.linspace(0, T - 1, 64).long()
    out = torch.empty(B, T, H, K, V, **d)
    fwd = lambda: gdn.scan(q, k, v, g, beta, output_final_state=True)  # noqa: E731

    def chained(n=256):
        S, seg = None, T // n
        for i in range(n):
            sl = slice(i * seg, (i + 1) * seg)
            _, S = gdn.scan(q[:, sl], k[:, sl], v[:, sl], g[:, sl], beta[:, sl], initial_state=S, output_final_state=True)
    rows = [("fused chunk forward (o + final state)", timeit(fwd)),
            ("all states, bf16 out", timeit(lambda: gdn.states(q, k, v, g, beta, out_dtype=torch.bfloat16))),
            ("all states, fp32 out", timeit(lambda: gdn.states(q, k, v, g, beta))),
            ("states at 64 positions", timeit(lambda: gdn.states(q, k, v, g, beta, positions=pos))),
            ("write floor: fill all states (bf16)", timeit(lambda: out.fill_(1.0))),
            ("chain kernel over 256 segments", timeit(chained, reps=5, warm=1))]
    base = rows[0][1]
    print(f"{'what':40s} {'ms':>9s} {'x fused fwd':>12s}")
    for name, ms in rows:
        print(f"{name:40s} {ms:9.3f} {ms / base:12.2f}")
    # exactness at this size: GPU states vs the torch chunk formula on the same GPU inputs in fp32
    st = gdn.states(q[:1], k[:1], v[:1], g[:1], beta[:1], positions=pos)
    ref = gdn.states(q[:1].float(), k[:1].float(), v[:1].float(), g[:1], beta[:1].float(), positions=pos, impl="torch")
    print(f"max rel error of states (64 positions, batch 0) vs fp32 torch reference: "
          f"{((st - ref).abs().max() / ref.abs().max()).item():.2e}")


if __name__ == "__main__":
    main()
