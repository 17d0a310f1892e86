"""bench/patch_floor.py: the causal-cone count of a resid_pre sweep equals a brute-force loop over (pair, layer,
position) written here, on random token pairs with the answer before the end."""
import torch

from bench_scripts import load  # tests/, a sibling


def _floor():
    return load("patch_floor")


def test_cone_count_equals_a_loop():
    g = torch.Generator().manual_seed(0)
    N, T, L, share = 5, 9, 3, 0.25
    clean = torch.randint(0, 4, (N, T), generator=g)
    corrupted = torch.where(torch.rand(N, T, generator=g) < 0.2, torch.randint(0, 4, (N, T), generator=g), clean)
    corrupted[0] = clean[0]                                            # one pair with nothing changed
    answer = torch.randint(T // 2, T, (N,), generator=g)
    work, cells = 0.0, 0
    for i in range(N):
        changed = [j for j in range(T) if clean[i, j] != corrupted[i, j]]
        for l in range(L):
            for q in range(T):
                runs = (q in changed) if l == 0 else (bool(changed) and q >= changed[0])
                if runs:
                    cells += 1
                    work += max(0, int(answer[i]) + 1 - q) * ((L - 1 - l) + share)
    fw, n = _floor().cone_forwards(clean, corrupted, answer, L, share)
    assert n == cells
    assert abs(fw - work / (L * T) / N) < 1e-6 * fw
    assert _floor().main(["--pairs", "16", "--seq-len", "32", "--layers", "3"]) > 0
