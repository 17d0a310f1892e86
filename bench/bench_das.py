"""DAS training speed and agreement: ours (`interp.interventions.train_das`) against pyvene 0.1.8's
`LowRankRotatedSpaceIntervention` on the same tiny HF Llama, residual site, data, rank, seed, batches,
optimiser and early-stopping rule, in one run (issue 19).

    python bench/bench_das.py --quick                 # CPU, seconds: the smoke run the tests use
    python bench/bench_das.py --device cuda           # the GPU numbers for BENCHMARKS.md

Setting: a randomly initialised `LlamaForCausalLM` (from a config, no download); base and source
prompts share a random context and differ in their last token, 0 in one and 1 in the other (a binary
variable); each prompt's "answer" is the model's own argmax there, and only pairs whose answers differ
are kept (so every kept pair is "answered correctly" and a full patch at the site switches it). The
site is the residual stream entering layer ``--layer`` (our ``blocks.L.resid_pre`` = pyvene's
``block_input``) at the last position. Both sides: R = W^T, W [d, rank] under torch's orthogonal
parametrisation, built as pyvene builds its LowRankRotateLayer after ``torch.manual_seed(seed)`` (the
same W and the same random completion of the parametrisation's base: `interventions.Rotation`); Adam;
the same train/val/test split of pairs and the same seeded batch order; cross-entropy toward the
source's answer at the last position; after each epoch the validation IIA (ties: lower validation
loss) keeps the best R and stops after ``--patience`` epochs without improvement.

Timed per epoch: the training steps only (``train``), and with the validation pass (``epoch``); ours
also prepares once (source activations, the base runs' prefix), reported separately and amortised
over the epochs in ``speed-up incl. preparation``. pyvene runs the source forward inside every step.
Prints a markdown block for BENCHMARKS.md and writes it as JSON with ``--out``. Nothing is asserted
(tests/test_pyvene_oracle.py checks the numbers of ``--quick``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from datetime import datetime, timezone

import torch
import torch.nn.functional as F

from interp import interventions as iv
from interp.interventions.das import DASConfig, split_pairs
from interp.tasks import PairBatch

QUICK = dict(vocab=64, d=32, layers=2, heads=4, T=8, n=160, rank=1, layer=1, batch_size=16, epochs=5, lr=1e-2)
FULL = dict(vocab=512, d=256, layers=8, heads=8, T=32, n=4096, rank=1, layer=4, batch_size=64, epochs=3, lr=1e-2)


def tiny_llama(vocab, d, layers, heads, seed=0, device="cpu"):
    from transformers import AutoModelForCausalLM, LlamaConfig
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=256)
    return AutoModelForCausalLM.from_config(cfg).to(device).eval()


@torch.no_grad()
def self_answered_pairs(model, n, T, vocab, seed=0, batch=256) -> PairBatch:
    """``n`` prompt pairs: a shared random context of T-1 tokens (ids 2..vocab-1), then token 0 in
    one prompt and token 1 in the other (a binary variable at the last position); each prompt's
    answer is the model's argmax there; only pairs whose answers differ are kept (drawn until ``n``)."""
    g = torch.Generator().manual_seed(seed)
    dev = next(model.parameters()).device
    keep = []
    while sum(len(k[0]) for k in keep) < n:
        a = torch.randint(2, vocab, (batch, T), generator=g)
        a[:, -1] = 0
        b = a.clone()
        b[:, -1] = 1
        pa = model(a.to(dev)).logits[:, -1].argmax(-1).cpu()
        pb = model(b.to(dev)).logits[:, -1].argmax(-1).cpu()
        m = pa != pb
        keep.append((a[m], b[m], pa[m], pb[m]))
    a, b, pa, pb = (torch.cat([k[j] for k in keep])[:n] for j in range(4))
    return PairBatch(a, b, torch.full((n,), T - 1), pa, pb, torch.full((n,), T - 1),
                     {"task": "self_answered", "T": T, "vocab": vocab, "seed": seed})


def _pyvene_model(model, layer, rank, seed):
    """pyvene's intervenable model, built after torch.manual_seed(seed) as its users do."""
    import pyvene as pv
    torch.manual_seed(seed)
    cfg = pv.IntervenableConfig(representations=[{"layer": layer, "component": "block_input",
                                                  "low_rank_dimension": rank}],
                                intervention_types=pv.LowRankRotatedSpaceIntervention)
    im = pv.IntervenableModel(cfg, model)
    im.disable_model_gradients()
    im.set_device(next(model.parameters()).device)
    return im, list(im.interventions.values())[0]


def _pyvene_logits(im, ix, rows):
    dev = ix.device
    loc = [[[int(p)] for p in ix.pos[rows, 0]]]
    _, out = im({"input_ids": ix.ip.base[rows].to(dev)}, [{"input_ids": ix.ip.source[rows].to(dev)}],
                {"sources->base": (loc, loc)})
    lg = out.logits
    return lg[torch.arange(len(rows), device=lg.device), ix.ip.answer_pos[rows].to(lg.device)].float()


def _pyvene_eval(im, ix, rows, bs):
    rows = rows[ix.correct[rows]]
    hit = loss = 0.0
    with torch.no_grad():
        for s in range(0, len(rows), bs):
            r = rows[s:s + bs]
            lg = _pyvene_logits(im, ix, r)
            tgt = ix.ip.source_answer[r].to(lg.device)
            hit += float((lg.argmax(-1) == tgt).sum())
            loss += float(F.cross_entropy(lg, tgt, reduction="sum"))
    return hit / max(1, len(rows)), loss / max(1, len(rows))


def pyvene_das(model, ix, splits, cfg: DASConfig, layer: int, eval_bs: int = 64) -> dict:
    """pyvene's DAS with our training rule (see the module docstring); returns R, history, IIAs."""
    im, inter = _pyvene_model(model, layer, cfg.rank, cfg.seed)
    opt = torch.optim.Adam(inter.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(int(cfg.seed))
    train = splits["train"][ix.correct[splits["train"]]]
    best, best_R, hist, bad = None, inter.rotate_layer.weight.detach().T.clone(), [], 0
    for epoch in range(1, cfg.epochs + 1):
        t0, total = time.perf_counter(), 0.0
        perm = train[torch.randperm(len(train), generator=g)]
        for s in range(0, len(perm), cfg.batch_size):
            r = perm[s:s + cfg.batch_size]
            lg = _pyvene_logits(im, ix, r)
            loss = F.cross_entropy(lg, ix.ip.source_answer[r].to(lg.device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(r)
        t_train = time.perf_counter() - t0
        v_iia, v_loss = _pyvene_eval(im, ix, splits["val"], eval_bs)
        hist.append(dict(epoch=epoch, train_loss=total / len(perm), val_iia=v_iia, val_loss=v_loss,
                         seconds_train=t_train, seconds=time.perf_counter() - t0))
        key = (v_iia, -v_loss)
        if best is None or key > best:
            best, best_R, bad = key, inter.rotate_layer.weight.detach().T.clone(), 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    with torch.no_grad():
        inter.rotate_layer.weight = best_R.T.clone()
    iia = {k: _pyvene_eval(im, ix, splits[k], eval_bs)[0] for k in ("train", "val", "test")}
    return dict(R=best_R.cpu(), history=hist, iia=iia)


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _per_epoch(hist, key):
    return sum(h[key] for h in hist) / max(1, len(hist))


def run(p: dict, device="cpu", seed=0, patience=3) -> dict:
    """One comparison with settings ``p`` (QUICK / FULL keys); returns every number."""
    model = tiny_llama(p["vocab"], p["d"], p["layers"], p["heads"], seed, device)
    pairs = self_answered_pairs(model, p["n"], p["T"], p["vocab"], seed)
    site = iv.Site(f"blocks.{p['layer']}.resid_pre")
    cfg = DASConfig(rank=p["rank"], epochs=p["epochs"], lr=p["lr"], batch_size=p["batch_size"], patience=patience,
                    seed=seed, positions=["answer"], random_seeds=(0, 1, 2))
    _sync(device)
    t0 = time.perf_counter()
    cuda = str(device).startswith("cuda")
    ours = iv.train_das(model, pairs, site, config=dataclasses.replace(cfg, cuda_graphs=cuda), model_name="tiny-llama")
    _sync(device)
    t_ours = time.perf_counter() - t0
    ix = iv.Interchanger(model, pairs, site, cfg.positions, cfg.order, max(64, cfg.batch_size))
    splits = split_pairs(ix, cfg.split, cfg.seed)
    t0 = time.perf_counter()
    pv_res = pyvene_das(model, ix, splits, cfg, p["layer"])
    _sync(device)
    t_pv = time.perf_counter() - t0
    h_o, h_p = ours.attrs["history"], pv_res["history"]
    das = ours[ours["subspace"] == "das"].set_index("split")["iia"]
    summ = ours.summary().set_index(["subspace", "split"])["iia"]
    prep = ours.attrs["spec"]["seconds_prepare"]
    out = dict(settings=p, device=str(device), n_kept=int(ix.correct.sum()), n_ordered=len(ix.ip),
               epochs_ours=len(h_o), epochs_pyvene=len(h_p),
               iia_ours={k: float(das[k]) for k in ("train", "val", "test")}, iia_pyvene=pv_res["iia"],
               iia_random_test=float(summ[("random", "test")]), iia_full_test=float(summ[("full", "test")]),
               train_epoch_ours=_per_epoch(h_o, "seconds_train"), train_epoch_pyvene=_per_epoch(h_p, "seconds_train"),
               epoch_ours=_per_epoch(h_o, "seconds"), epoch_pyvene=_per_epoch(h_p, "seconds"),
               prepare_ours=prep, total_ours=t_ours, total_pyvene=t_pv,
               R_ours=ours.R.tolist(), R_pyvene=pv_res["R"].tolist())
    if cuda:      # the same training without CUDA graphs: its time and its numbers
        eager = iv.train_das(model, pairs, site, config=dataclasses.replace(cfg, cuda_graphs=False),
                             model_name="tiny-llama")
        h_e, das_e = eager.attrs["history"], eager[eager["subspace"] == "das"].set_index("split")["iia"]
        out.update(train_epoch_eager=_per_epoch(h_e, "seconds_train"), epoch_eager=_per_epoch(h_e, "seconds"),
                   iia_eager={k: float(das_e[k]) for k in ("train", "val", "test")}, epochs_eager=len(h_e),
                   R_max_abs_diff_graphs_vs_eager=float((ours.R - eager.R).abs().max()))
    out.update(cuda_graphs=ours.attrs["spec"]["cuda_graphs"], seconds_capture=ours.attrs["spec"]["seconds_capture"])
    out["speedup_train"] = out["train_epoch_pyvene"] / out["train_epoch_ours"]
    out["speedup_epoch"] = out["epoch_pyvene"] / out["epoch_ours"]
    out["speedup_incl_prepare"] = out["epoch_pyvene"] / (out["epoch_ours"] + (prep + out["seconds_capture"])
                                                         / max(1, len(h_o)))
    return out


def report(r: dict, cmd: str) -> str:
    s = r["settings"]
    dev = torch.cuda.get_device_name(0) if r["device"].startswith("cuda") else platform.processor() or "cpu"
    try:
        from interp.experiment import git_commit
        commit = git_commit()
    except ImportError:
        commit = "unknown"
    return "\n".join([
        f"DAS, ours vs pyvene 0.1.8 ({dev}, {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, git {commit})",
        f"`{cmd}`: Llama d={s['d']}, {s['layers']} layers, T={s['T']}, site blocks.{s['layer']}.resid_pre at the last "
        f"token, rank {s['rank']}, {r['n_ordered']} ordered pairs ({r['n_kept']} kept), batch {s['batch_size']}, "
        f"lr {s['lr']}, epochs run ours/pyvene {r['epochs_ours']}/{r['epochs_pyvene']}",
        "",
        "| | ours | pyvene | speed-up |",
        "|---|---|---|---|",
        f"| training steps per epoch (s) | {r['train_epoch_ours']:.3f} | {r['train_epoch_pyvene']:.3f} | "
        f"{r['speedup_train']:.1f}x |",
        f"| epoch incl. validation (s) | {r['epoch_ours']:.3f} | {r['epoch_pyvene']:.3f} | {r['speedup_epoch']:.1f}x |",
        f"| epoch incl. our one-off preparation ({r['prepare_ours']:.3f} s) and graph capture "
        f"({r['seconds_capture']:.3f} s) | "
        f"{r['epoch_ours'] + (r['prepare_ours'] + r['seconds_capture']) / max(1, r['epochs_ours']):.3f} | "
        f"{r['epoch_pyvene']:.3f} | "
        f"{r['speedup_incl_prepare']:.1f}x |",
        f"| held-out (test) IIA | {r['iia_ours']['test']:.3f} | {r['iia_pyvene']['test']:.3f} | |",
        f"| val / train IIA | {r['iia_ours']['val']:.3f} / {r['iia_ours']['train']:.3f} | "
        f"{r['iia_pyvene']['val']:.3f} / {r['iia_pyvene']['train']:.3f} | |",
        f"| test IIA: random subspace (3 seeds) / full patch | {r['iia_random_test']:.3f} / "
        f"{r['iia_full_test']:.3f} | | |",
        f"| CUDA graphs | {r['cuda_graphs']} | | |",
    ] + ([
        f"| ours without CUDA graphs: training steps / epoch (s) | {r['train_epoch_eager']:.3f} / "
        f"{r['epoch_eager']:.3f} | | {r['train_epoch_pyvene'] / r['train_epoch_eager']:.1f}x / "
        f"{r['epoch_pyvene'] / r['epoch_eager']:.1f}x |",
        f"| ours without CUDA graphs: test IIA, epochs; max abs R difference to ours | {r['iia_eager']['test']:.3f}, "
        f"{r['epochs_eager']}; {r['R_max_abs_diff_graphs_vs_eager']:.2e} | | |",
    ] if "train_epoch_eager" in r else []))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny CPU setting (seconds)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (CPU runs only; 1 by default: on a shared "
                    "host more threads mostly wait on each other)")
    for k, v in FULL.items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=None,
                        help=f"default {v} ({QUICK[k]} with --quick)")
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    a = ap.parse_args(argv)
    p = {k: (getattr(a, k) if getattr(a, k) is not None else (QUICK if a.quick else FULL)[k]) for k in FULL}
    if not a.device.startswith("cuda"):
        torch.set_num_threads(a.threads)
    r = run(p, a.device, a.seed, a.patience)
    print(report(r, "python bench/bench_das.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:])))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(r, f, indent=1)
    return r


if __name__ == "__main__":
    main()
