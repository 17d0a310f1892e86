"""The arithmetic floor of an exact layer x position resid_pre patching sweep, counted in plain forwards (issue 26).

    python bench/patch_floor.py [--pairs 256 --seq-len 128 --layers 12 --last-layer 0.1667]

A patch of resid_pre at (layer l, position q) of one pair changes nothing when the source and base activations
there are equal (layer 0: the same token; later layers: q before the pair's first differing token), and otherwise
changes layers l .. L-1 at positions q .. the answer position a and nothing else (causal attention); an exact
sweep must recompute at least that cone for every changed cell, except that the last layer needs only the keys and
values of those positions plus the answer's own row (``--last-layer``: that share of a layer's arithmetic; 1/6 for
a d x 4d MLP block, K and V being 2 d^2 of 12 d^2). Sums the cones of bench/bench_patch.py's pairs (mqar, seed 0) and
prints them as plain forwards of the whole batch (L x T token-layers per pair): a sweep can only go below this by
skipping arithmetic an exact result needs, or by running it faster than the plain forward does (lower precision).
Both directions cost two such cones (the noising cells are the same cells). Nothing is timed; CPU, seconds.
"""
import argparse

import torch

from interp import tasks


def cone_forwards(clean, corrupted, answer_pos, L, last_share):
    """Plain-forward equivalents of the sweep's cones (module docstring), summed over pairs / number of pairs."""
    N, T = clean.shape
    diff = clean != corrupted
    first = torch.where(diff.any(1), diff.float().argmax(1), torch.full((N,), T)).long()
    q = torch.arange(T)[None, :]
    a = answer_pos.long()[:, None]
    span = (a + 1 - q).clamp(min=0).float()                            # positions q .. a
    per_layer = []
    for l in range(L):
        runs = diff if l == 0 else q >= first[:, None]
        depth = (L - 1 - l) + last_share                               # layers l .. L-2 whole, the last in part
        per_layer.append((runs.float() * span * depth).sum() / (L * T))
    return float(sum(per_layer)) / N, int(sum((diff if l == 0 else q >= first[:, None]).sum() for l in range(L)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--last-layer", type=float, default=1 / 6)
    a = ap.parse_args(argv)
    p = tasks.make_pairs("mqar", a.pairs, seed=0, n_pairs=8, seq_len=a.seq_len)
    fw, cells = cone_forwards(p.clean, p.corrupted, p.answer_pos, a.layers, a.last_layer)
    N, T = p.clean.shape
    print(f"{N} mqar pairs x {T} tokens, {a.layers} layers: {cells} of {N * a.layers * T} (pair, layer, position) "
          f"patches change something; their causal cones = {fw:.1f} plain forwards of the batch "
          f"(last layer counted at {a.last_layer:.3f}); both directions: {2 * fw:.1f}")
    return fw


if __name__ == "__main__":
    main()
