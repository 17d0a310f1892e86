"""Which dictionary latents hold which task values in the shipped default models: one command, figures + CSV + report.

    python bench/sae_figures.py OUTDIR             # GPU host: gdn100 layer 0 and gdn75's 9 GDN layers (~3-4 min)
    python bench/sae_figures.py OUTDIR --quick     # CPU check: tiny token counts, 2 gdn75 layers (~2 min, 1 core)

For `gdn100` block 0 (where patching places both tasks) and every GDN block of `gdn75`, three TopK
dictionaries (eai-sparsify `SparseCoder`, trained by `interp.sae.train`):

* ``mqar readout``:  ``blocks.i.rec.readout`` (all heads, S_t^T q_t), scored at the query keys against the
  value bound to the queried key (``bound_value``, ``--where answer``): what the layer reads out;
* ``mqar write``:    ``blocks.i.rec.write_kd`` (all heads' factored writes [k_t; d_t]), scored one token after
  every key (the value token, whose write stores key -> value; ``--where all --offset 1``): what is stored;
* ``state_recall readout``: ``blocks.i.rec.readout`` at the answer position against the queried variable's
  value (``query_var_value``).

Training rows: one forward per task batch caches the sites of every block of a model at once, kept as a fixed pool
of ``--pool`` batches (no disk) that each dictionary cycles through for ``--steps`` steps (`PoolSource`).
Evaluation (`interp.sae.run_eval`, on the same device; probes and AUROC in scikit-learn): FVU, dead / dense, answer
accuracy with the site spliced in, best-latent AUROC per value against the label-permuted null, latents needed to
reach the raw probe, interchange of aligned latents against random ones. "Which latent holds which value" is then
checked on a second held-out batch: for each value's best latent, its mean activation on every value's points
(`selectivity`; a latent *holds* value v when its AUROC beats the null by > 0.1 and it is most active on v there).

Writes OUTDIR/summary.csv (one row per dictionary), OUTDIR/features.csv (one row per dictionary and value),
OUTDIR/sae_<model>.png (a figure per model), OUTDIR/report.md. Commands a user types for one dictionary are the
`interp sae train|eval` lines in the report."""
from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from interp import tasks as T
from interp.experiment import git_commit
from interp.models import load_any
from interp.sae import SaeSite, run_eval, train
from interp.sae import coder as C
from interp.sae.coder import dense_latents
from interp.sae.data import family_of, site_vectors, wrap
from interp.sae.groundtruth import points
from interp.sae.run import EVAL_SEED
from interp.sae.sites import vectors
from interp.store import save_csv
from interp.tasks.vocab import PAD

# (label, task, site kind, target, where, offset)
DICTS = [("mqar readout", "mqar", "rec.readout", "bound_value", "answer", 0),
         ("mqar write", "mqar", "rec.write_kd", "bound_value", "all", 1),
         ("state_recall readout", "state_recall", "rec.readout", "query_var_value", "answer", 0)]
MARGIN = 0.1  # AUROC above the label-permuted null for a latent to count as holding a value


class PoolSource:
    """Training rows of one site from a pool of forwards made once: ``rows(step)`` = pool[step % len(pool)]."""

    def __init__(self, chunks, spec: dict):
        self.chunks, self._spec = chunks, spec

    def spec(self) -> dict:
        return self._spec

    def rows(self, step: int):
        return self.chunks[step % len(self.chunks)]


def layers_of(name: str, hm, quick: bool) -> list[int]:
    gdn = [i for i, L in enumerate(hm.layers) if L.rec_family == "gdn"]
    if name == "gdn100":
        return gdn[:1]
    return gdn[::8] if quick else gdn


def make_pools(hm, layers, a, dev) -> dict:
    """{(label, layer): [rows of one batch] * pool}: one forward per batch caches every site of every layer."""
    pools, dicts = {}, [d for d in DICTS if d[0] in a.dicts]
    for task in dict.fromkeys(d[1] for d in dicts):
        sites = [(d[0], L, SaeSite(f"blocks.{L}.{d[2]}")) for d in dicts if d[1] == task for L in layers]
        names = sorted({n for _, L, s in sites for n in s.cache_names(family_of(hm, L))})
        for b in range(a.pool):
            tok = T.generate(task, a.batch_size, seed=1_000 + b).tokens.to(dev)
            with torch.no_grad():
                _, cache = hm.run_with_cache(tok, names=names)
            g = torch.Generator().manual_seed(b)
            keep = tok != PAD
            for label, L, s in sites:
                x = vectors(s, cache, family_of(hm, L))[keep]
                pools.setdefault((label, L), []).append(x[torch.randperm(x.shape[0], generator=g).to(x.device)])
    return pools


@torch.no_grad()
def selectivity(hm, coder, site, d, table, n: int, seed: int):
    """[values x values] mean activation of each value's best latent (columns, in value order) on the points of
    each value (rows), on a fresh held-out batch, each column divided by its maximum."""
    task, target, where, offset = d[1], d[3], d[4], d[5]
    batch = T.generate(task, n, seed=seed).to(next(hm.model.parameters()).device)
    X, _ = site_vectors(hm, site, batch.tokens)
    b, t, y = points(batch, target, where, offset)
    Z = dense_latents(coder, X[b, t]).float().cpu().numpy()
    y = y.cpu().numpy()
    vals = list(table.value)
    M = np.full((len(vals), len(vals)), np.nan)
    for i, v in enumerate(vals):
        if (y == v).any():
            M[i] = Z[y == v][:, table.feature.to_numpy()].mean(0)
    M = M / np.where(np.nanmax(M, 0) > 0, np.nanmax(M, 0), 1.0)
    return vals, M


def summarise(ev, model, layer, d, M, train_s, fvu_train) -> tuple[dict, pd.DataFrame]:
    """One summary row of a dictionary and its per-value table."""
    g = lambda sec, met, cond=None: ev.get(sec, met, cond).value  # noqa: E731
    au, nu = g("groundtruth", "auroc").to_numpy(), g("groundtruth", "auroc_null").to_numpy()
    gt = ev.get("groundtruth", "auroc")
    feats = pd.DataFrame({"value": [int(v.split("=")[1]) for v in gt.variable], "feature": gt.feature.to_numpy(),
                          "auroc": au, "auroc_null": nu, "f1": g("groundtruth", "f1").to_numpy(),
                          "fires": g("groundtruth", "fires").to_numpy(), "n_points": gt.n.to_numpy()})
    diag = np.array([np.nanargmax(M[:, j]) == j if np.isfinite(M[:, j]).any() else False for j in range(len(M))])
    feats["top_on_own_value"] = diag
    feats["holds"] = (feats.auroc - feats.auroc_null > MARGIN) & diag
    need = ev.get("needed", "accuracy")
    ic = ev.get("interchange", "iia").groupby("condition").value.mean()
    row = {"model": model, "layer": layer, "dictionary": d[0], "site": f"blocks.{layer}.{d[2]}", "target": d[3],
           "train_s": train_s, "fvu_train": fvu_train, **{f"{k}": float(g("quality", k).iloc[0])
                                                          for k in ("fvu", "dead_frac", "dense_frac", "l0")},
           **{f"acc_{c}": float(g("splice", "accuracy", c).iloc[0]) for c in ("clean", "sae", "mean")},
           "kl_sae": float(g("splice", "kl", "sae").iloc[0]), "n_values": len(feats),
           "auroc_mean": float(au.mean()), "auroc_null_mean": float(nu.mean()),
           "values_held": int(feats.holds.sum()), "distinct_features_held": int(feats[feats.holds].feature.nunique()),
           "probe_raw": float(need[need.condition == "raw"].value.iloc[0]) if len(need) else np.nan,
           "probe_top1": float(need[need.condition == "m=1"].value.iloc[0]) if len(need) else np.nan,
           "probe_top8": float(need[need.condition == "m=8"].value.iloc[0]) if len(need) else np.nan,
           **{f"iia_{c}": float(ic.get(c, np.nan)) for c in ("aligned", "random", "all")}}
    return row, feats.assign(model=model, layer=layer, dictionary=d[0])


def run_model(name, a, dev, log) -> tuple[list, list, dict]:
    model, _ = load_any(name, device=dev)
    hm = wrap(model)
    layers = layers_of(name, hm, a.quick)
    t0 = time.perf_counter()
    pools = make_pools(hm, layers, a, dev)
    log(f"{name}: pools of {a.pool} batches x {a.batch_size} for layers {layers} in {time.perf_counter() - t0:.1f} s")
    coders = {}
    for (label, L), chunks in pools.items():
        if time.perf_counter() - a.t0 > a.time_budget * a.train_share:
            a.skipped.append(f"{name} block {L} {label} (not trained: {a.train_share:.0%} of the time budget spent)")
            continue
        d = next(x for x in DICTS if x[0] == label)
        site = SaeSite(f"blocks.{L}.{d[2]}")
        src = PoolSource(chunks, {"kind": "pool", "task": d[1], "batches": a.pool, "batch_size": a.batch_size})
        t1 = time.perf_counter()
        res = train(model, site, src, k=a.k, features=a.features, steps=a.steps, lr=a.lr, progress=False,
                    model_name=name)
        coders[(label, L)] = (res.coder, time.perf_counter() - t1, float(res.metrics.fvu.iloc[-5:].mean()))
    log(f"{name}: trained {len(coders)} dictionaries in {time.perf_counter() - t0:.1f} s (with pools)")
    rows, feats, mats = [], [], {}
    for (label, L), (coder, ts, fv) in coders.items():
        if time.perf_counter() - a.t0 > a.time_budget:
            a.skipped.append(f"{name} block {L} {label} (trained, not evaluated: time budget spent)")
            continue
        coder = coder.to(dev)  # the saved coder is folded on the CPU; evaluation runs where the model is
        d = next(x for x in DICTS if x[0] == label)
        site = SaeSite(f"blocks.{L}.{d[2]}")
        ev = run_eval(model, coder, site, d[1], n=a.n, n_pairs=a.n_pairs, target=d[3], where=d[4], offset=d[5],
                      model_name=name, seeds=a.seeds)
        vals, M = selectivity(hm, coder, site, d, ev.get("groundtruth", "auroc").assign(
            value=lambda f: [int(v.split("=")[1]) for v in f.variable]), a.n, EVAL_SEED + 1)
        row, ft = summarise(ev, name, L, d, M, ts, fv)
        rows.append(row)
        feats.append(ft)
        mats[(label, L)] = (vals, M)
    log(f"{name}: evaluated in {time.perf_counter() - t0:.1f} s total")
    return rows, feats, mats


def figure(name, summ, mats, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from interp.figsave import save_fig
    s = summ[summ.model == name]
    fig, ax = plt.subplots(2, 3, figsize=(15, 9))
    for j, (label, g) in enumerate(s.groupby("dictionary", sort=False)):
        x = g.layer + 0.12 * (j - 1)  # side by side where the numbers coincide
        ax[0, 0].plot(x, g.values_held / g.n_values, "o-", label=label)
        ax[0, 1].plot(x, g.fvu, "o-", label=label)
        ax[0, 2].plot(x, g.acc_sae, "o-", label=f"{label}: spliced")
        ax[0, 2].plot(x, g.acc_mean, "x:", color=f"C{j}", alpha=0.6)
        ax[0, 2].plot(x, g.acc_clean, "k_", ms=10, label="clean model" if j == 0 else None)
    ax[0, 0].set(title=f"values held by one latent\n(AUROC > null + {MARGIN}, most active on its value, held out)",
                 ylabel="fraction of values", ylim=(-0.02, 1.02))
    ax[0, 1].set(title="held-out FVU", ylabel="FVU", ylim=(0, None))
    ax[0, 2].set(title="answer accuracy, site replaced at every token\n(x: mean-ablated)", ylim=(-0.02, 1.02))
    for x in ax[0]:
        x.set_xlabel("block")
        x.set_xticks(sorted(s.layer.unique()))
        x.set_xlim(s.layer.min() - 0.6, s.layer.max() + 0.6)
    ax[0, 0].legend(fontsize=7, loc="upper right")
    ax[0, 1].legend(fontsize=7, loc="lower right")
    ax[0, 2].legend(fontsize=7, loc="center right", framealpha=0.6)
    for x, (label, g) in zip(ax[1], s.groupby("dictionary", sort=False)):
        best = g.sort_values(["values_held", "auroc_mean"], ascending=False).iloc[0]
        vals, M = mats[(label, int(best.layer))]
        im = x.imshow(M, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        x.set(title=f"{label}, block {int(best.layer)}: each value's best latent\n({int(best.values_held)} of "
              f"{len(vals)} values held; column max = 1)", xlabel="best latent of value (column)",
              ylabel=f"{best.target} of the points (row)")
        step = max(1, len(vals) // 16)
        x.set_xticks(range(0, len(vals), step), vals[::step], fontsize=7)
        x.set_yticks(range(0, len(vals), step), vals[::step], fontsize=7)
        fig.colorbar(im, ax=x, fraction=0.04)
    fig.suptitle(f"{name}: which dictionary latents hold which values (held-out mean activation)", fontsize=12)
    fig.tight_layout()
    save_fig(fig, path, dpi=90)
    plt.close(fig)


def reading(summ) -> list[str]:
    """Sentences read off the numbers (no judgement the numbers do not carry)."""
    out = []
    for (m, label), g in summ.groupby(["model", "dictionary"], sort=False):
        b = g.sort_values(["values_held", "auroc_mean"], ascending=False).iloc[0]
        held = ", ".join(f"{int(r.layer)}: {int(r.values_held)}" for r in g.itertuples())
        out.append(f"- **{m} {label}** (values held per block: {held} of {int(b.n_values)}). Best block "
                   f"{int(b.layer)}: {int(b.values_held)} values each have a latent of their own "
                   f"({int(b.distinct_features_held)} distinct latents); mean best-latent AUROC {b.auroc_mean:.2f} "
                   f"against {b.auroc_null_mean:.2f} for permuted labels. Probe on the raw site {b.probe_raw:.2f}, on "
                   f"the top-1 / top-8 latents per value {b.probe_top1:.2f} / {b.probe_top8:.2f}. Held-out FVU "
                   f"{b.fvu:.2f}; answer accuracy {b.acc_clean:.2f} clean, {b.acc_sae:.2f} with the reconstruction "
                   f"spliced in at every token (mean-ablated {b.acc_mean:.2f}). Interchange accuracy of the aligned "
                   f"latents {b.iia_aligned:.2f} vs random {b.iia_random:.2f} (all latents {b.iia_all:.2f}).")
    return out


def unexplained(summ) -> list[str]:
    ro = summ[summ.dictionary.str.endswith("readout")]
    lines = [f"- Reconstruction: held-out FVU ranges {summ.fvu.min():.2f}-{summ.fvu.max():.2f}; the variance left is "
             f"not described by any latent.",
             f"- Splicing the readout reconstruction in at every token changes answer accuracy by "
             f"{(ro.acc_sae - ro.acc_clean).min():+.2f} to {(ro.acc_sae - ro.acc_clean).max():+.2f} (KL "
             f"{ro.kl_sae.min():.2g}-{ro.kl_sae.max():.2g}): what is lost there is used by the model and is not in "
             f"the dictionary.",
             f"- Values without a latent of their own: {int((summ.n_values - summ.values_held).sum())} of "
             f"{int(summ.n_values.sum())} (dictionary, value) cases; where the raw probe decodes the value better than "
             f"the top latents (probe_raw - probe_top8 up to {(summ.probe_raw - summ.probe_top8).max():.2f}), the value "
             f"is spread over many latents, or not linearly in them, rather than held by one."]
    gap = summ.iia_aligned - summ.iia_random
    lines.append(f"- Causal: aligned-latent interchange beats random latents by {gap.min():+.2f} to {gap.max():+.2f}; "
                 f"a latent that scores well on AUROC but does not move the answer when swapped is a correlate, not "
                 f"(alone) the stored value. For write dictionaries the interchange swaps latents of the write at the "
                 f"query token, while their ground truth is scored at the value tokens that store the binding, and the "
                 f"paired prompts differ in a value written earlier: it does not test the stored binding.")
    lines.append("- Not covered: per-key bindings inside the state (which key slot holds which value) and the "
                 "attention layers of gdn75; one seed, one training run per dictionary.")
    return lines


def report(summ, a, dev, times, out):
    name = torch.cuda.get_device_name() if dev == "cuda" else "CPU"
    cmd = "python bench/sae_figures.py " + " ".join(a.argv)
    cols = ["model", "layer", "dictionary", "fvu", "dead_frac", "acc_clean", "acc_sae", "acc_mean", "values_held",
            "n_values", "auroc_mean", "auroc_null_mean", "probe_raw", "probe_top8", "iia_aligned", "iia_random"]
    from interp.sae.result import markdown
    txt = [f"# Which dictionary latents hold which values: shipped defaults ({datetime.date.today()}, {name})\n",
           f"Command: `{cmd.strip()}` (commit {git_commit() or 'n/a'}); {times}.",
           f"Per dictionary: TopK SparseCoder (eai-sparsify, {a.decoder} sparse decoder), {a.features} latents, k={a.k}, lr {a.lr}, {a.steps} "
           f"steps over a pool of {a.pool} task batches x {a.batch_size} examples (every non-pad token a row); "
           f"evaluation on {a.n} held-out examples ({a.n_pairs} pairs for interchange), selectivity on another "
           f"{a.n}. A value is *held* by a latent when that value's best latent has AUROC > its label-permuted null "
           f"+ {MARGIN} and, on the second held-out batch, is most active on that value.",
           "" if not a.quick else "\n**QUICK CPU RUN: tiny token counts, numbers mean nothing; do not commit.**\n",
           "One dictionary by hand (the CLI streams fresh batches instead of this script's pool), e.g.:\n\n```bash\ninterp sae train --model gdn100 --site blocks.0.rec.readout "
           f"--k {a.k} --features {a.features} --steps {a.steps} --batch-size {a.batch_size} --lr {a.lr} --device cuda "
           "--out runs/sae/gdn100_readout0\ninterp sae eval --coder runs/sae/gdn100_readout0 --model gdn100 "
           "--site blocks.0.rec.readout --target bound_value --device cuda\n```\n",
           *[f"![{m}](sae_{m}.png)" for m in summ.model.unique()], "", markdown(summ[cols], "{:.2f}"),
           "## Reading (generated from the numbers above)\n", *reading(summ),
           "\n## What the dictionaries do not explain\n", *unexplained(summ)]
    if a.skipped:
        txt += ["\n## Skipped (time budget)\n", *[f"- {s}" for s in a.skipped]]
    (Path(out) / "report.md").write_text("\n".join(txt) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default="runs/sae_figures")
    ap.add_argument("--quick", action="store_true", help="CPU check: tiny token counts, 2 gdn75 layers")
    ap.add_argument("--device", default=None, help="default cuda if available (CPU with --quick)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--pool", type=int, default=100, help="task batches per model and task in the training pool")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--features", type=int, default=1024)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--n", type=int, default=256, help="held-out examples for evaluation")
    ap.add_argument("--n-pairs", type=int, default=128)
    ap.add_argument("--models", default="gdn100,gdn75")
    ap.add_argument("--dicts", default=",".join(d[0] for d in DICTS), help="which dictionaries (comma-separated)")
    ap.add_argument("--time-budget", type=float, default=None, help="seconds (default 220; none with --quick): no "
                    "dictionary is trained after --train-share of it, none evaluated after all of it (skipped ones are "
                    "listed in the report)")
    ap.add_argument("--train-share", type=float, default=0.5, help="share of --time-budget after which no "
                    "dictionary is trained (default 0.5)")
    ap.add_argument("--decoder", default="auto", choices=C.DECODERS, help="sparsify's sparse decoder (auto: "
                    "its Triton kernels where Triton imports; bench/sae_decoder_speed.py times both)")
    a = ap.parse_args(argv)
    a.argv = list(argv if argv is not None else sys.argv[1:])
    a.dicts, a.skipped = a.dicts.split(","), []
    unknown = set(a.dicts) - {d[0] for d in DICTS}
    if unknown:
        ap.error(f"unknown --dicts {sorted(unknown)}; valid: {', '.join(d[0] for d in DICTS)}")
    if a.time_budget is None:
        a.time_budget = float("inf") if a.quick else 220.0
    a.decoder = C.use_decoder(a.decoder)
    a.seeds = () if a.quick else (0, 1, 2, 3, 4)  # random-latent seeds of the interchange control (--quick: none)
    if a.quick:
        a.steps, a.pool, a.batch_size, a.features, a.k, a.n, a.n_pairs = 3, 1, 8, 64, 4, 16, 4
    dev = a.device or ("cuda" if torch.cuda.is_available() and not a.quick else "cpu")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = a.t0 = time.perf_counter()
    log = lambda s: print(f"[{time.perf_counter() - t0:6.1f} s] {s}", flush=True)  # noqa: E731
    rows, feats, mats = [], [], {}
    for name in a.models.split(","):
        r, f, m = run_model(name, a, dev, log)
        rows += r
        feats += f
        mats.update({(name, *k): v for k, v in m.items()})
        if r:
            figure(name, pd.DataFrame(rows), {k[1:]: v for k, v in mats.items() if k[0] == name},
                   out / f"sae_{name}.png")
    summ = pd.DataFrame(rows)
    save_csv(out / "summary.csv", summ, index=False)
    save_csv(out / "features.csv", pd.concat(feats, ignore_index=True), index=False)
    report(summ, a, dev, f"{time.perf_counter() - t0:.0f} s in all, training and evaluation on {dev}", out)
    log(f"wrote {out}/report.md, summary.csv, features.csv, " + ", ".join(f"sae_{m}.png" for m in summ.model.unique()))
    return summ


if __name__ == "__main__":
    main()
