"""Where the Triton effective-attention path spends its time (issue 21), for tuning: one GDN layer at
bench_effective's size (B=8, T=2048, H=12, K=V=64), CUDA only.

    python bench/prof_effective_triton.py

Prints the median CUDA-event milliseconds of: `_prep`; the torch pieces of all chunks (`_pieces_all`); GDN's
Triton pieces (tf32 / ieee); the carry kernel alone for the full pattern at 16, 32 and 64 rows a program
(tf32 / ieee) and for 64 rows; a plain torch.zeros of the full A (the memory-bound floor); and the whole
pattern / 64 rows with the triangular solve by fla's solve_tril, by torch or in the gram kernel (`SOLVE`); then
torch's profiler table of the pieces. Nothing is asserted.
"""
import torch

import hooks.effective_triton as ET
from hooks import effective as E
from hooks import recurrence as R

from bench_effective import FULL, make_kw, timed   # this script runs from bench/, beside it


def tm(fn, n=5):
    """Median milliseconds of ``n`` CUDA-event-timed calls after a warm-up (bench_effective's `timed`)."""
    return timed(fn, torch.device("cuda"), n)[0] * 1e3


@torch.no_grad()
def main():
    torch.backends.cuda.matmul.allow_tf32 = False
    B, T, H, K, V = (FULL[x] for x in "BTHKV")
    c = R.canonical("gdn", make_kw(B, T, H, K, V, torch.device("cuda")))
    P = E._prep("gdn", c)
    args = (P.q, P.k, P.gr(0, P.NT), P.beta, P.NT)
    print(f"prep {tm(lambda: E._prep('gdn', c)):.3f} ms; torch pieces {tm(lambda: E._pieces_all(P, P.NT)):.3f} ms")
    for prec in ("tf32", "ieee"):
        print(f"triton pieces {prec} {tm(lambda: ET.gdn_pieces(*args, prec)):.3f} ms")
    Q, U, Phi, own = ET.gdn_pieces(*args, "tf32")
    every, rows = torch.arange(T), torch.linspace(0, T - 1, 64).round().long()
    for blk in (16, 32, 64):
        for prec in ("tf32", "ieee"):
            print(f"carry kernel, full, {blk} rows a program, {prec}: "
                  f"{tm(lambda: ET.carry_triton(Q, U, Phi, own, every, T, prec, block=blk)):.3f} ms")
    print(f"carry kernel, 64 rows: {tm(lambda: ET.carry_triton(Q, U, Phi, own, rows, T, 'tf32')):.3f} ms")
    print(f"torch.zeros of the full A: {tm(lambda: torch.zeros(B, H, T, T, device='cuda')):.3f} ms")
    for solve in ET.SOLVES:
        ET.SOLVE = solve
        print(f"SOLVE={solve}: pieces {tm(lambda: ET.gdn_pieces(*args, 'tf32')):.3f} ms, full pattern "
              f"{tm(lambda: E.pattern('gdn', c, budget=None, impl='triton')):.3f} ms, 64 rows "
              f"{tm(lambda: E.pattern('gdn', c, rows=rows.tolist(), impl='triton')):.3f} ms")
    ET.SOLVE = "fla"
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as p:
        E._pieces_all(P, P.NT)
        ET.gdn_pieces(*args, "tf32")
        torch.cuda.synchronize()
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=25))


if __name__ == "__main__":
    main()
