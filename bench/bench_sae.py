"""Speed of dictionary training on recurrent writes, streamed from the forward, against final states only.

    python bench/bench_sae.py                      # 12 layers, d=768, gdn75 layout (9 GDN layers x 12 heads), GPU
    python bench/bench_sae.py --quick              # CPU smoke run (tiny model, seconds)
    python bench/bench_sae.py --out runs/bench_sae.json

Model: a random-init 12-layer d=768 zoo `gdn75` (`interp.zoo.randinit.random_zoo`, as bench/bench_patch.py),
12 heads of K = V = 64, on mqar batches of ``--batch-size`` x ``--seq-len`` tokens (fresh each step, made on
the CPU: that cost is part of streaming). Float32, TF32 off. Rows (a)-(c), each after warm-up steps:

(a) per-token writes of one GDN layer: the hook names ``rec.write_k`` / ``rec.write_v`` (write_t = k_t d_t^T,
    K + V numbers) cached from the GPU forward and fed, head by head, to one rank-1 write dictionary per head
    (`interp.sae.rank1.Rank1Coder`, WriteSAE's form; one Adam step each). No disk. Reported: the forward alone
    and forward + training, in writes (token x head) per second.
(b) final state only (one K x V state per sequence and head, as a model cache exposes): ``rec.state`` cached at
    the last position only (`run_with_cache(positions=[-1])`: no per-token state is made) and fed to one TopK
    SAE per head (eai-sparsify `SparseCoder` on the flattened K*V state, `interp.sae.train`'s step).
(c) one rank-1 dictionary per head for every GDN layer: one forward per step caches the writes of all GDN
    layers and every dictionary takes one step on its head's rows. ``--steps`` steps are timed; the time to
    give every dictionary ``--tokens`` training writes is an EXTRAPOLATION from that (printed as such), and so
    is the same with one forward per dictionary (a dictionary trained alone).

Prints a markdown block for BENCHMARKS.md; ``--out`` writes the numbers as JSON. ``--time-budget``: rows that
would start after it are skipped (and said so)."""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

from hooks import wrap
from interp import tasks
from interp.experiment import git_commit
from interp.sae import coder as C
from interp.sae.rank1 import Rank1Coder
from interp.sae.rank1 import _step as rank1_step
from interp.sae.train import _one_step as sae_step
from interp.tasks.vocab import PAD
from interp.zoo.randinit import random_zoo


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def batch(a, step: int, dev):
    return tasks.generate("mqar", a.batch_size, seed=step, n_pairs=8, seq_len=a.seq_len).tokens.to(dev)


def token_writes(hm, tokens, layers):
    """{layer: (key [N, H, K], val [N, H, V])} of every non-pad token's write, from one forward."""
    names = [f"blocks.{i}.rec.write_{x}" for i in layers for x in "kv"]
    with torch.no_grad():
        _, cache = hm.run_with_cache(tokens, names=names)
    keep = tokens != PAD
    return {i: (cache[f"blocks.{i}.rec.write_k"][keep].float(), cache[f"blocks.{i}.rec.write_v"][keep].float())
            for i in layers}


@torch.no_grad()
def plain(m, tokens):
    return m(tokens)


def final_states(hm, tokens, layer):
    """[B, H, K, V] states after the last token (only the last position is computed and kept)."""
    with torch.no_grad():
        _, cache = hm.run_with_cache(tokens, names=[f"blocks.{layer}.rec.state"], positions=[-1])
    return cache[f"blocks.{layer}.rec.state"][:, -1].float()


def rank1_dicts(n, K, V, a, dev):
    out = []
    for i in range(n):
        c = Rank1Coder(K, V, a.features, a.k, seed=i).to(dev)
        out.append((c, torch.optim.Adam(c.parameters(), lr=1e-3)))
    return out


def train_rank1_heads(dicts, key, val):
    """One step of each head's dictionary on its rows (key [N, H, K], val [N, H, V]); writes trained on."""
    for h, (c, opt) in enumerate(dicts):
        rank1_step(c, opt, key[:, h], val[:, h])
    return key.shape[0] * key.shape[1]


def timed(fn, steps: int, warm: int = 2):
    """(seconds per call, mean of fn's return) over ``steps`` calls after ``warm`` untimed ones."""
    for s in range(warm):
        fn(s)
    sync()
    t0, n = time.perf_counter(), 0
    for s in range(warm, warm + steps):
        n += fn(s)
    sync()
    return (time.perf_counter() - t0) / steps, n / steps


def measure(a, m, dev, budget_start):
    hm = wrap(m)
    gdn = [i for i, L in enumerate(hm.layers) if L.rec_family == "gdn"]
    L0 = gdn[0]
    key, val = token_writes(hm, batch(a, 0, dev), [L0])[L0]
    (n_tok, H, K), V = key.shape, val.shape[-1]
    r = {"gdn_layers": gdn, "heads": H, "K": K, "V": V, "tokens_per_forward": n_tok}
    r["fwd_s"], _ = timed(lambda s: (plain(m, batch(a, s, dev)), 0)[1], a.steps)
    r["writes_fwd_s"], _ = timed(lambda s: (token_writes(hm, batch(a, s, dev), [L0]), 0)[1], a.steps)
    d1 = rank1_dicts(H, K, V, a, dev)
    r["writes_train_s"], r["writes_per_step"] = timed(
        lambda s: train_rank1_heads(d1, *token_writes(hm, batch(a, s, dev), [L0])[L0]), a.steps)
    r["final_fwd_s"], _ = timed(lambda s: (final_states(hm, batch(a, s, dev), L0), 0)[1], a.steps)
    sae = [C.new(K * V, a.k, a.features, seed=h).to(dev) for h in range(H)]
    opts = [torch.optim.Adam(c.parameters(), lr=2e-4 / (a.features / 2 ** 14) ** 0.5) for c in sae]

    def final_step(s):
        S = final_states(hm, batch(a, s, dev), L0).flatten(2)
        for h, (c, o) in enumerate(zip(sae, opts)):
            x = S[:, h]
            sae_step(c, o, x / x.pow(2).mean().sqrt().clamp_min(1e-12), None, None, 0.0)
        return S.shape[0] * H
    r["final_train_s"], r["final_per_step"] = timed(final_step, a.steps)
    if time.perf_counter() - budget_start > a.time_budget:
        r["all_skipped"] = True
        return r
    dall = {i: rank1_dicts(H, K, V, a, dev) for i in gdn}
    steps_all = max(1, a.steps // 2)

    def all_step(s):
        w = token_writes(hm, batch(a, s, dev), gdn)
        return sum(train_rank1_heads(dall[i], *w[i]) for i in gdn)
    r["all_fwd_s"], _ = timed(lambda s: (token_writes(hm, batch(a, s, dev), gdn), 0)[1], steps_all, warm=1)
    r["all_train_s"], r["all_writes_per_step"] = timed(all_step, steps_all, warm=1)
    r["all_steps_timed"] = steps_all
    return r


def derive(r, a) -> dict:
    """Rates, ratios and the clearly labelled extrapolations of ``r`` (seconds per step)."""
    n_tok, H = r["tokens_per_forward"], r["heads"]
    d = {"writes_per_s_fwd": n_tok * H / r["writes_fwd_s"], "writes_per_s_train": r["writes_per_step"] / r["writes_train_s"],
         "final_states_per_s_fwd": a.batch_size * H / r["final_fwd_s"],
         "final_states_per_s_train": r["final_per_step"] / r["final_train_s"],
         "examples_per_forward_per_head_writes": n_tok, "examples_per_forward_per_head_final": a.batch_size}
    d["ratio_examples_per_s"] = d["writes_per_s_train"] / d["final_states_per_s_train"]
    d["ratio_examples_per_forward"] = n_tok / a.batch_size
    if "all_train_s" in r:
        n_dict = len(r["gdn_layers"]) * H
        steps = a.tokens / n_tok  # each dictionary sees one row per token of each forward
        d.update(n_dicts=n_dict, extrap_steps=steps, extrap_all_shared_s=steps * r["all_train_s"],
                 extrap_all_alone_s=steps * n_dict * (r["writes_fwd_s"] + (r["writes_train_s"] - r["writes_fwd_s"]) / H))
    return d


def markdown(r, d, a, dev, cmd) -> str:
    name = torch.cuda.get_device_name() if dev == "cuda" else "CPU"
    lines = [f"### Dictionary training on recurrent writes: streamed per-token writes vs final states "
             f"({datetime.date.today()}, {name})\n",
             f"Command: `{cmd}` (commit {git_commit() or 'n/a'}); random-init zoo `gdn75`, {a.layers} layers, "
             f"d={a.d}, {r['heads']} heads of K=V={r['K']} ({len(r['gdn_layers'])} GDN layers), {r['params_m']:.1f}M "
             f"params; mqar, {a.batch_size} x {a.seq_len} tokens per forward ({r['tokens_per_forward']} non-pad); "
             f"dictionaries: {a.features} latents, k={a.k} (state SAE: sparsify's {a.decoder} sparse decoder); float32, TF32 off; {a.steps} timed steps after warm-up.\n",
             "| what (layer %d unless said) | s / step | examples / forward / head | examples / s (all heads) |" %
             r["gdn_layers"][0], "|---|---|---|---|",
             f"| plain forward | {r['fwd_s']:.4f} | | |",
             f"| forward + cache per-token writes (`rec.write_k`/`write_v`) | {r['writes_fwd_s']:.4f} | "
             f"{r['tokens_per_forward']} writes | {d['writes_per_s_fwd']:,.0f} writes |",
             f"| ... + one rank-1 dictionary step per head ({r['heads']}) | {r['writes_train_s']:.4f} | "
             f"{r['tokens_per_forward']} writes | **{d['writes_per_s_train']:,.0f} writes** |",
             f"| forward + cache the final state only | {r['final_fwd_s']:.4f} | {a.batch_size} states | "
             f"{d['final_states_per_s_fwd']:,.0f} states |",
             f"| ... + one TopK SAE step per head on the K*V state | {r['final_train_s']:.4f} | {a.batch_size} states "
             f"| **{d['final_states_per_s_train']:,.0f} states** |"]
    lines.append(f"\nPer-token writes give {d['ratio_examples_per_forward']:.0f}x the training examples per forward "
                 f"of final states and {d['ratio_examples_per_s']:.1f}x the examples per second of training "
                 f"(a write is K+V = {r['K'] + r['V']} numbers, a state K*V = {r['K'] * r['V']}).")
    if "all_train_s" in r:
        lines.append(f"\nAll {d['n_dicts']} per-head rank-1 dictionaries ({len(r['gdn_layers'])} GDN layers x "
                     f"{r['heads']} heads) fed by one forward per step: {r['all_train_s']:.3f} s / step measured "
                     f"({r['all_fwd_s']:.3f} s of it the forward caching all layers' writes; {r['all_steps_timed']} "
                     f"steps), {r['all_writes_per_step'] / r['all_train_s']:,.0f} writes / s. **Extrapolation** "
                     f"(measured s / step x steps) to {a.tokens:,.0f} training writes per dictionary "
                     f"({d['extrap_steps']:,.0f} steps): {d['extrap_all_shared_s'] / 60:,.1f} min with the shared "
                     f"forward; {d['extrap_all_alone_s'] / 60:,.1f} min training each dictionary alone (its own "
                     f"forward per step).")
    else:
        lines.append("\nAll-layers row: not run (time budget).")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="CPU smoke run: tiny model and sizes")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--features", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per row (the all-layers row: half)")
    ap.add_argument("--tokens", type=float, default=1e7, help="training writes per dictionary for the extrapolation")
    ap.add_argument("--time-budget", type=float, default=150.0, help="seconds: the all-layers row is skipped if the "
                    "rows before it took longer")
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    ap.add_argument("--decoder", default="auto", choices=C.DECODERS, help="sparsify's sparse decoder for the "
                    "state SAE (auto: its Triton kernels where Triton imports)")
    a = ap.parse_args(argv)
    a.decoder = C.use_decoder(a.decoder)
    dev = "cuda" if torch.cuda.is_available() and not a.quick else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    a.d, a.layers, H = (64, 4, 4) if a.quick else (768, 12, 12)
    if a.quick:
        a.batch_size, a.seq_len, a.features, a.k, a.steps = 4, 32, 64, 4, 2
    t0 = time.perf_counter()
    m = random_zoo(a.d, a.layers, H, "gdn75", dev)
    r = measure(a, m, dev, t0)
    r["params_m"] = m.num_params() / 1e6
    d = derive(r, a)
    cmd = "python bench/bench_sae.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = markdown(r, d, a, dev, cmd.strip())
    print(md, flush=True)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"device": torch.cuda.get_device_name() if dev == "cuda" else "CPU",
                                           "date": str(datetime.date.today()), "commit": git_commit(),
                                           "args": vars(a), "measured": r, "derived": d, "markdown": md}, indent=1))
    return {"measured": r, "derived": d}


if __name__ == "__main__":
    main()
