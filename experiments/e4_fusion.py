"""E4 — inter-layer vs intra-layer fusion (sequential striped vs parallel hybrids).

Same parameter budget (every arm's SwiGLU width is set by `interp.zoo.match_params` to the
transformer's count at the same width and depth): the **sequential** (inter-layer) hybrid ``gdn75``
(Gated DeltaNet layers with attention every 4th layer) against the **parallel** (intra-layer)
hybrid ``gdn75-par``, whose attention layers are ``attn+gdn``: attention and a GDN with half of
the heads each read the same normalised input and their outputs are summed (`interp.zoo.layouts`).
The full profile adds references: the transformer, attention-free ``gdn100`` and ``par-all``
(``attn+gdn`` in every layer). Expected shape (Bae et al. 2025, arXiv 2510.04800): parallel at
least as good as sequential, both better than the homogeneous models; the report says where ours differs.

Each arm is trained with `interp.train` on ``mqar`` (recall) and ``state_recall`` (state
tracking): a learning-rate sweep on the first training seed (four rates in the full profile; the report
says where each best rate lies), then the other seeds at the arm's best rate (`X.sweep_and_seeds`).
Reported: answer accuracy and answer loss (cross-entropy at the answer) as each difficulty knob moves
on its own (means over seeds), paired differences with 95% intervals over training seeds
(`X.paired_diff`; with one seed, over test examples, which is not a model-level claim), and
throughput measured here: tokens/s of forward+backward (the training step without the optimizer)
and of the forward pass, per sequence length, one arm at a time on an otherwise idle device.

    python experiments/e4_fusion.py --quick        # CPU, tiny models, a few minutes
    python experiments/e4_fusion.py --device cuda  # GPU; 7-minute calls, call again to continue

Also held-out accuracy against cumulative training FLOPs (`interp.flops`), next to the throughput.

Writes ``<out>/`` (default runs/e4_fusion/figures, runs/e4_fusion_quick/figures for --quick): accuracy.png, loss.png,
flops.png, throughput.png, training.png, results.csv (per knob value), examples.parquet (per example), flops.csv,
throughput.csv, lr_sweep.csv and report.md.
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from interp import InterpError
from interp import experiment as X
from interp.cli.options import int_at_least
from interp import tasks as T
from interp.flops import accuracy_vs_flops
from interp.tasks.vocab import VOCAB
from interp.zoo import HybridLM, ZooConfig

NAME = "e4_fusion"
TASKS = ("mqar", "state_recall")
LAYOUTS = {"transformer": "transformer", "gdn100": "gdn100", "gdn75": "gdn75", "gdn75-par": "gdn75-par",
           "par-all": "par-all"}   # par-all: attn+gdn in every layer (resolved per depth)
SEQUENTIAL, PARALLEL = "gdn75", "gdn75-par"
F3 = "{:.3f}"                       # the report's tables: floats to 3 decimals
PROFILES = {
    # GPU: 30 runs (5 arms x (4 lrs + 2 seeds)) of 4000 steps (at 2000 the transformer's warm-up ends before its
    # recall circuit forms, BENCHMARKS.md section 12), 8 layers d=128, stacked in parallel processes; not yet run
    "full": dict(model=dict(d_model=128, n_layers=8, n_heads=4, head_dim=32),
                 arms=("transformer", "gdn100", "gdn75", "gdn75-par", "par-all"), steps=4000, batch_size=64,
                 lrs=(3e-4, 1e-3, 3e-3, 1e-2), seeds=(0, 1, 2), stack=4, warmup=150, workers=6, time_budget=7.0,
                 eval_reserve=2.5, val_n=128,
                 eval_n=256, thr_seq=(256, 1024, 4096), thr_tokens=16384, thr_iters=10, threads=None),
    # CPU, a few minutes: the two hybrids, tiny, a few hundred steps
    "quick": dict(model=dict(d_model=32, n_layers=4, n_heads=2, head_dim=16), arms=("gdn75", "gdn75-par"),
                  steps=300, batch_size=32, lrs=(1e-3, 3e-3), seeds=(0, 1), warmup=30, workers=1, time_budget=0,
                  eval_reserve=0,
                  val_n=32, eval_n=64, thr_seq=(64, 256), thr_tokens=1024, thr_iters=3, threads=1),
    # the test suite: seconds (mamba_head_dim=8: ZooConfig checks for even mamba heads in any parallel layer)
    "test": dict(model=dict(d_model=16, n_layers=2, n_heads=2, head_dim=8, mamba_head_dim=8),
                 arms=("gdn75", "gdn75-par"), steps=3,
                 batch_size=8, lrs=(3e-3,), seeds=(0, 1), warmup=1, workers=1, time_budget=0, eval_reserve=0,
                 val_n=8, eval_n=8,
                 thr_seq=(32,), thr_tokens=64, thr_iters=1, threads=1,
                 grid={"mqar": {"n_pairs": [2, 4]}, "state_recall": {"n_steps": [2, 4]}}),
}
VAL_SEED, TEST_SEED = 99, 123


def layout(arm: str, n_layers: int):
    if arm == "par-all":
        return ",".join(["attn+gdn"] * n_layers)
    return LAYOUTS[arm]


def arms(P) -> dict:
    bad = [a for a in P["arms"] if a not in LAYOUTS]
    if bad:
        raise InterpError(f"arm '{bad[0]}' is not valid; valid: {', '.join(LAYOUTS)}")
    return {a: {"model": X.matched({**P["model"], "layout": layout(a, P["model"]["n_layers"])}),
                "tasks": list(TASKS)} for a in P["arms"]}


def grid(P) -> dict:
    return P.get("grid") or {t: T.difficulty_grid(t) for t in TASKS}


def layers_str(model: dict) -> str:
    cfg = ZooConfig(vocab_size=len(VOCAB), **model)
    return " ".join({"attn": "A", "gdn": "G"}.get(k, k.replace("attn+gdn", "A+G")) for k in cfg.layers)


# --- evaluation ---------------------------------------------------------------------------------

@torch.no_grad()
def per_example(model, task: str, n: int, seed: int, **knobs) -> pd.DataFrame:
    """Per example: answer accuracy (all answers right / fraction right) and mean answer loss."""
    b = T.generate(task, n, seed=seed, **knobs).to(model.device)
    logits = model(b.tokens).float()
    valid = b.answer_pos >= 0
    pos = b.answer_pos.clamp(min=0)
    lg = logits.gather(1, pos[..., None].expand(-1, -1, logits.shape[-1]))     # [N, Q, V]
    loss = F.cross_entropy(lg.flatten(0, 1), b.answers.clamp(min=0).flatten(), reduction="none").view(pos.shape)
    right = (lg.argmax(-1) == b.answers) & valid
    q = valid.sum(1).clamp(min=1)
    return pd.DataFrame({"example": np.arange(n), "correct": ((right.sum(1)) / q).cpu().numpy(),
                         "loss": ((loss * valid).sum(1) / q).cpu().numpy()})


def make(ctx, unit, spec, lrs, seed):
    """The runs of arm ``unit`` at ``lrs`` for training seed ``seed`` (`X.sweep_and_seeds`)."""
    P = ctx.P
    return X.unit_runs(ctx, unit, spec, lrs, seed, steps=P["steps"], batch_size=P["batch_size"], warmup=P["warmup"],
                       eval_every=max(1, P["steps"] // 6), eval_n=128, save_every=max(50, P["steps"] // 10),
                       device=ctx.device, scan_backend=ctx.scan_backend)


def validate(ctx, runs):
    """Mean answer accuracy over the grid points of both tasks (validation seed)."""
    P = ctx.P
    return X.validate_runs(ctx, runs, lambda m, r: {"val_acc": float(np.mean([
        per_example(m, t, P["val_n"], VAL_SEED, **{k: v})["correct"].mean()
        for t, g in grid(P).items() for k, vs in g.items() for v in vs]))})


def test_eval(picked, ctx, P) -> pd.DataFrame:
    """Per test example: every run in ``picked`` (each arm's runs at its best rate, one per seed)."""
    log = X.ResultLog(ctx.runs / "eval" / "test_examples.csv", ["arm", "lr", "seed", "task", "knob", "value"])
    from tqdm.auto import tqdm
    for run in picked:
        m, arm = None, run.unit
        pts = [(t, k, v) for t, g in grid(P).items() for k, vs in g.items() for v in vs]
        for t, k, v in tqdm(pts, desc=f"test {arm} seed {run.seed}", disable=not ctx.progress, dynamic_ncols=True):
            if log.done(arm=arm, lr=run.lr, seed=run.seed, task=t, knob=k, value=v):
                continue
            m = m or X.load_run(run, ctx.device).set_scan_backend("reference")
            df = per_example(m, t, P["eval_n"], TEST_SEED, **{k: v})
            log.add(df.assign(arm=arm, lr=run.lr, seed=run.seed, task=t, knob=k, value=str(v)))
    ex = log.frame()
    keep = {(r.unit, r.lr, r.seed) for r in picked}
    ex = ex[[x in keep for x in zip(ex.arm, ex.lr, ex.seed)]].copy()
    ex["value"] = ex["value"].astype(str)
    return ex.reset_index(drop=True)


paired = X.paired_diff     # the tests and E4's verdicts: over training seeds, or examples of one run


# --- throughput ---------------------------------------------------------------------------------

def throughput(A: dict, ctx: X.Ctx, P: dict) -> pd.DataFrame:
    """Tokens/s of forward+backward (loss.backward(), no optimizer step) and of the forward pass,
    per arm and sequence length, measured here one arm at a time (``thr_tokens`` tokens per batch,
    ``thr_iters`` timed iterations after one warm-up). Scans: the pure-torch reference (what
    training used); on CUDA also fla's kernels (``auto``), whose backward may refuse (fla #640)."""
    log = X.ResultLog(ctx.runs / "throughput.csv", ["device", "arm", "backend", "seq_len", "mode"])
    dev = torch.device(ctx.device)
    where = X.device_name(ctx.device)
    backends = ["reference"] + (["auto"] if dev.type == "cuda" else [])
    for arm, spec in A.items():
        for be in backends:
            for T_ in P["thr_seq"]:
                if all(log.done(device=where, arm=arm, backend=be, seq_len=T_, mode=md) for md in ("fwd+bwd", "fwd")):
                    continue
                torch.manual_seed(0)
                m = HybridLM(ZooConfig(vocab_size=len(VOCAB), **spec["model"])).to(dev).set_scan_backend(be)
                B = max(1, P["thr_tokens"] // T_)
                x = torch.randint(1, len(VOCAB), (B, T_), device=dev)
                rows = []
                for mode in ("fwd+bwd", "fwd"):
                    def step():
                        if mode == "fwd":
                            with torch.no_grad():
                                m(x)
                        else:
                            logits = m(x)
                            F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten()).backward()
                            m.zero_grad(set_to_none=True)
                    err = ""
                    try:
                        step()
                        if dev.type == "cuda":
                            torch.cuda.synchronize()
                        t0 = time.perf_counter()
                        for _ in range(P["thr_iters"]):
                            step()
                        if dev.type == "cuda":
                            torch.cuda.synchronize()
                        dt = (time.perf_counter() - t0) / P["thr_iters"]
                    except Exception as e:  # noqa: BLE001 - a kernel that refuses is a result, not a crash
                        dt, err = float("nan"), f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                    rows.append(dict(device=where, arm=arm, backend=be, seq_len=T_, mode=mode, batch=B,
                                     ms_per_iter=1e3 * dt,
                                     tokens_per_s=B * T_ / dt if dt == dt else float("nan"), error=err))
                log.add(rows)
                del m
    df = log.frame()
    df["error"] = df["error"].astype(object).where(df["error"].notna(), "") if "error" in df else ""
    # this device's rows first, then any other device's measured earlier into the same cache (e.g. a GPU
    # host's `--throughput-only` rows next to a CPU report)
    df = df[df.arm.isin(list(A))].assign(_here=lambda d: d.device != where)
    return df.sort_values("_here", kind="stable").drop(columns="_here").reset_index(drop=True)


def write_throughput(A: dict, ctx: X.Ctx, P: dict) -> pd.DataFrame:
    """`throughput` for the arms ``A``, written to ``<out>/throughput.csv`` and ``throughput.png``."""
    thr = throughput(A, ctx, P)
    X.save_table(thr, ctx.out / "throughput.csv")
    plot_throughput(thr, ctx.out / "throughput.png")
    return thr


# --- figures ------------------------------------------------------------------------------------

def plot_metric(res: pd.DataFrame, metric: str, path, ylabel: str, ylim=None):
    plt = X.pyplot()
    panels = list(dict.fromkeys(zip(res.task, res.knob)))
    ncol = min(3, len(panels))
    nrow = (len(panels) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.1 * nrow), squeeze=False)
    for ax, (task, knob) in zip(axes.flat, panels):
        sub = res[(res.task == task) & (res.knob == knob)]
        xs = list(dict.fromkeys(sub["value"]))
        for i, (arm, g) in enumerate(sub.groupby("arm", sort=False)):
            ax.plot([xs.index(v) for v in g["value"]], g[metric], marker="o", label=arm,
                    ls="--" if arm.endswith("par") or arm == "par-all" else "-")
        ax.set_xticks(range(len(xs)), xs)
        ax.set_title(f"{task}: {knob}", fontsize=10)
        ax.set_xlabel(knob)
        ax.set_ylabel(ylabel)
        if ylim:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    X.save_figure(fig, path)


def plot_throughput(thr: pd.DataFrame, path):
    plt = X.pyplot()
    modes = ["fwd+bwd", "fwd"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    devices = list(dict.fromkeys(thr.device))
    arms = list(dict.fromkeys(thr.arm))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, mode in zip(axes, modes):  # colour: arm; line: backend; marker: device
        sub = thr[(thr["mode"] == mode) & thr.tokens_per_s.notna()]
        for (dev, arm, be), g in sub.groupby(["device", "arm", "backend"], sort=False):
            short = "" if len(devices) < 2 else f", {str(dev).split(' (')[0]}"
            ax.plot(g.seq_len, g.tokens_per_s, marker="os^dv"[devices.index(dev) % 5],
                    color=colors[arms.index(arm) % len(colors)], ls="-" if be == "reference" else ":",
                    label=f"{arm} ({be}{short})")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel("tokens / s")
        ax.set_title(mode, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    X.save_figure(fig, path)


def plot_training(runs0: dict, path):
    """Training curves of one run per arm (``runs0``: {arm: run}, the first seed at the best rate)."""
    from interp.train import read_log
    plt = X.pyplot()
    fig, axes = plt.subplots(1, len(TASKS) + 1, figsize=(4 * (len(TASKS) + 1), 3.1))
    for arm, run in runs0.items():
        f = run.out / "train_log.jsonl"
        if not f.is_file():
            continue
        log = read_log(f)
        steps = [r["step"] for r in log]
        axes[0].plot(steps, [r["loss"] for r in log], marker=".", label=f"{arm} (lr {run.lr:g})")
        for ax, t in zip(axes[1:], TASKS):
            ax.plot(steps, [r.get(f"acc/{t}", np.nan) for r in log], marker=".", label=arm)
    axes[0].set_ylabel("train loss (last batch)")
    for ax, t in zip(axes, ("loss",) + TASKS):
        ax.set_xlabel("step")
        ax.set_title(t if t == "loss" else f"held-out accuracy: {t}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    X.save_figure(fig, path)


def plot_flops(fl: pd.DataFrame, path):
    """Held-out accuracy against cumulative training FLOPs (log scale), one panel per task."""
    plt = X.pyplot()
    fig, axes = plt.subplots(1, len(TASKS), figsize=(4.2 * len(TASKS), 3.1), squeeze=False)
    for ax, t in zip(axes[0], TASKS):
        for arm, g in fl.groupby("arm", sort=False):
            ax.plot(g.flops, g[t], marker=".", label=arm)
        ax.set(xlabel="training FLOPs (fwd+bwd matmuls)", ylabel="held-out accuracy", title=f"{t} (first seed)",
               ylim=(-0.02, 1.02))
        if len(fl) and fl.flops.max() > 20 * fl.flops.min():   # log scale where the FLOPs span decades
            ax.set_xscale("log")
        else:
            ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    X.save_figure(fig, path)


# --- report -------------------------------------------------------------------------------------

def chance(task: str) -> float:
    """Accuracy of a uniform guess over the task's answer values (its default knobs)."""
    k = T.TASKS[task].knobs
    return 1.0 / (k["n_values"].default if task == "mqar" else k["modulus"].default)


PUBLISHED = ("Published shape (Bae et al. 2025, *Hybrid Architectures for Language Models: Systematic Analysis and "
             "Design Insights*, arXiv 2510.04800; Mamba + attention, language modelling at up to 1B scale): at equal "
             "compute both fusions beat the homogeneous models, and intra-layer (parallel) hybrids reach the best "
             "quality / efficiency trade-off, i.e. expected here: **parallel at least as good as sequential**, both "
             "hybrids better than the transformer and the attention-free model. That study measured language-model "
             "quality; these are synthetic recall / state-tracking tasks at a much smaller scale.")


def verdicts(ex: pd.DataFrame) -> list[str]:
    if not {SEQUENTIAL, PARALLEL} <= set(ex.arm):
        return ["Both hybrids are needed for the comparison; one of them has not finished."]
    n_seeds = ex.seed.nunique() if "seed" in ex else 1
    over = (f"95% t-interval over {n_seeds} training seeds of each seed's mean difference" if n_seeds >= 2 else
            "95% bootstrap interval over the examples of one training run: **not a model-level claim**")
    out = [PUBLISHED, "", f"Paired differences, parallel minus sequential, on the same test examples ({over}; all "
           "knob values pooled):", ""]
    acc = ex.groupby(["arm", "task"])["correct"].mean()
    near = {t: max(acc[SEQUENTIAL, t], acc[PARALLEL, t]) < chance(t) + 0.05 for t in TASKS if (SEQUENTIAL, t) in acc}
    for metric, better in (("correct", "higher"), ("loss", "lower")):
        p = paired(ex, SEQUENTIAL, PARALLEL, metric)
        for r in p.itertuples():
            sig = r.ci_lo > 0 or r.ci_hi < 0
            if near.get(r.task):
                who = (f"**inconclusive**: both hybrids are within 0.05 of chance accuracy ({chance(r.task):.3f}) on "
                       f"{r.task}, so this difference says nothing about fusion")
            elif not sig:
                who = "no difference the interval can resolve (consistent with the published 'at least as good')"
            else:
                par_better = (r.diff > 0) == (better == "higher")
                who = (f"**{PARALLEL} better: agrees** with the published shape" if par_better else
                       f"**{SEQUENTIAL} better: disagrees** with the published shape")
            name = "accuracy" if metric == "correct" else "answer loss"
            out.append(f"* {r.task}, {name}: {SEQUENTIAL} {getattr(r, f'{metric}_a'):.3f}, {PARALLEL} "
                       f"{getattr(r, f'{metric}_b'):.3f}, difference {r.diff:+.3f} [{r.ci_lo:+.3f}, {r.ci_hi:+.3f}] "
                       f"(n={r.n}): {who}.")
    homo = [a for a in ("transformer", "gdn100") if a in set(ex.arm)]
    if homo:
        out += ["", "Hybrids vs the homogeneous models (accuracy, paired, all knob values pooled):", ""]
        for h in homo:
            for hyb in (SEQUENTIAL, PARALLEL):
                for r in paired(ex, h, hyb, "correct").itertuples():
                    if max(acc[h, r.task], acc[hyb, r.task]) < chance(r.task) + 0.05:
                        v = "**inconclusive** (both near chance)"
                    elif r.ci_lo > 0:
                        v = "**agrees** (hybrid better)"
                    elif r.ci_hi < 0:
                        v = f"**disagrees** ({h} better)"
                    else:
                        v = "no difference the interval can resolve (the published shape expects the hybrid better)"
                    out.append(f"* {r.task}: {hyb} {r.correct_b:.3f} vs {h} {r.correct_a:.3f}, difference "
                               f"{r.diff:+.3f} [{r.ci_lo:+.3f}, {r.ci_hi:+.3f}]: {v}.")
    if all(near.values()):
        out += ["", "* Both hybrids are near chance on every task: the comparison is **inconclusive** at this training "
                "budget."]
    return out


def report(ctx, P, A, status, val, best, res, ex, thr, runs0, fl):
    L = []
    L += [f"Arms (profile `{ctx.profile}`): {P['model']['n_layers']} layers, d={P['model']['d_model']}, "
          f"{P['model']['n_heads']} heads of {P['model']['head_dim']}; SwiGLU width matched to the transformer's "
          "parameter count. Layers: A attention, G Gated DeltaNet, A+G attention and GDN in parallel (half the "
          "heads each, outputs summed).", ""]
    L += X.md_table(pd.DataFrame([dict(arm=a, layers=layers_str(s["model"]), mlp_hidden=s["model"]["mlp_hidden"],
                                       params=f"{X.n_params(s['model']) / 1e6:.4f}M") for a, s in A.items()]), F3)
    L += ["", f"Training (`interp.train`): {', '.join(TASKS)} round-robin, one difficulty knob drawn from its grid "
              f"per batch; {P['steps']} steps x batch {P['batch_size']}, AdamW, warmup {P['warmup']}, cosine; "
              f"learning rates {', '.join(f'{x:g}' for x in P['lrs'])} for every arm on training seed "
              f"{P['seeds'][0]}, then seeds {', '.join(map(str, P['seeds'][1:])) or '(none)'} at its best rate (tables "
              "and figures: means over seeds; the training curves: the first seed); scans on the pure-torch "
              f"reference path. Validation (model selection): mean answer accuracy over both tasks' grids, "
              f"{P['val_n']} examples per point (seed {VAL_SEED}); test: {P['eval_n']} per point (seed {TEST_SEED}).",
          ""]
    inc = status[~status.complete]
    if len(inc):
        L += [f"**{len(inc)} of {len(status)} runs are not finished** (budget of this call); numbers use finished "
              "runs only. Run the same command again to continue.", ""]
    L += ["## Learning-rate sweep and training seeds", ""] + X.sweep_lines(val, best, P["lrs"], P["seeds"])
    L += ["![training](training.png)", ""]
    L += ["## Accuracy and answer loss per difficulty knob (each arm at its best rate, mean over seeds)", "", "![accuracy](accuracy.png)", "",
          "![loss](loss.png)", ""]
    for (task, knob), g in res.groupby(["task", "knob"], sort=False):
        piv = g.pivot_table(index="value", columns="arm", values=["accuracy", "loss"], sort=False)
        cols = [a for a in A if a in g.arm.unique()]
        L += [f"### {task} — {knob} (accuracy / answer loss)", "",
              "| " + knob + " | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for v in piv.index:
            L.append("| " + str(v) + " | " + " | ".join(f"{piv.loc[v, ('accuracy', a)]:.2f} / "
                                                      f"{piv.loc[v, ('loss', a)]:.2f}" for a in cols) + " |")
        L.append("")
    L += ["## Accuracy against training FLOPs", "", "Held-out accuracy of each arm's first-seed run against its "
          "cumulative training FLOPs (`interp.flops`: matrix products of forward+backward as torch's FlopCounterMode "
          "counts them, summed over the batches the run trained on; elementwise work not counted). FLOPs to first "
          "reach 0.9 accuracy (- : never):", "", "![flops](flops.png)", ""]
    L += X.md_table(pd.DataFrame([dict(arm=a, **{t: next((f"{r.flops:.3g}" for r in g.itertuples() if getattr(r, t) >= 0.9),
                                                     "-") for t in TASKS}) for a, g in fl.groupby("arm", sort=False)]), F3)
    devs = list(dict.fromkeys(thr.device))
    L += ["", "## Throughput", "",
          f"Forward+backward (the training step without the optimizer) and forward-only, {P['thr_tokens']} tokens per "
          f"batch, mean of {P['thr_iters']} iterations after a warm-up, one arm at a time, measured on "
          + "; ".join(f"`{d}`" for d in devs) + " (the first is this call's device; others were measured into the "
          "same `--runs` cache with `--throughput-only`).", "",
          "![throughput](throughput.png)", ""]
    t = thr.copy()
    t["tokens_per_s"] = [f"{x:,.0f}" if x == x else "failed" for x in t.tokens_per_s]
    t["ms_per_iter"] = [f"{x:.1f}" if x == x else "" for x in t.ms_per_iter]
    cols = ["arm", "backend", "mode", "seq_len", "batch", "ms_per_iter", "tokens_per_s"]
    L += X.md_table(t[(["device"] if t.device.nunique() > 1 else []) + cols], F3)
    errs = thr[thr.error.astype(str) != ""]
    if len(errs):
        L += ["", "Failed measurements: " + "; ".join(f"{r.arm} {r.backend} {r.mode} T={r.seq_len}: {r.error}"
                                                       for r in errs.itertuples())]
    tr = []
    for arm, run in runs0.items():
        f = run.out / "train_log.jsonl"
        if f.is_file():
            from interp.train import read_log
            last = read_log(f)[-1]
            tr.append(f"{arm} {last.get('tokens_per_s', float('nan')):,.0f}")
    if tr:
        L += ["", "Training-loop tokens/s from the first seed's logs (includes data generation and evaluation; runs "
                  "may have shared the device or a stack with other runs): " + ", ".join(tr) + "."]
    X.write_report(ctx, "E4 — inter-layer vs intra-layer fusion", L, verdicts(ex), status=status)


def build_parser():
    ap = X.parser(NAME, __doc__, PROFILES, seed=True, workers=True)
    ap.add_argument("--threads", type=int_at_least(1), default=None, help="torch CPU threads (None: the profile's)")
    ap.add_argument("--throughput-only", action="store_true",
                    help="measure the throughput table on --device for every arm (no training, no checkpoints "
                         "needed), write throughput.csv / .png and stop")
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    with X.setup(a, NAME, PROFILES, argv) as ctx:      # holds the runs and figures directories' writer locks
        return experiment(ctx, a)


def experiment(ctx, a):
    P = ctx.P
    threads = a.threads or P.get("threads")
    if threads:
        torch.set_num_threads(threads)
    A = arms(P)
    if a.throughput_only:
        write_throughput(A, ctx, P)
        print(f"wrote {ctx.out}/throughput.csv")
        return 0
    X.check_spec(ctx.runs, dict(profile=ctx.profile, seed=ctx.seed, arms=A, P={k: v for k, v in P.items() if k in (
        "steps", "batch_size", "lrs", "seeds", "warmup", "val_n", "eval_n", "grid", "scan_backend")}), kind=NAME)
    ctx.P = P = {**P, "seeds": tuple(ctx.seed + s for s in P["seeds"])}    # --seed shifts the training seeds
    status, val, best, runs = X.sweep_and_seeds(ctx, A, make, validate)
    X.save_table(status, ctx.out / "lr_sweep_status.csv")
    if ctx.train_only or not best:
        return 0 if ctx.train_only and X.sweep_complete(status, P, len(A)) else 3
    X.save_table(X.sweep_frame(status, runs, val), ctx.out / "lr_sweep.csv")
    picked = X.chosen(runs, best)
    ex = test_eval(picked, ctx, P)
    X.save_table(ex, ctx.out / "examples.parquet")
    res = ex.groupby(["arm", "seed", "task", "knob", "value"], sort=False).agg(
        accuracy=("correct", "mean"), loss=("loss", "mean"), n=("example", "size")).reset_index()
    X.save_table(res, ctx.out / "results.csv")
    resm = res.groupby(["arm", "task", "knob", "value"], sort=False)[["accuracy", "loss"]].mean().reset_index()
    plot_metric(resm, "accuracy", ctx.out / "accuracy.png", "answer accuracy (mean over seeds)", (-0.02, 1.02))
    plot_metric(resm, "loss", ctx.out / "loss.png", "answer loss (nats, mean over seeds)")
    runs0 = {r.unit: r for r in picked if r.seed == P["seeds"][0]}
    plot_training(runs0, ctx.out / "training.png")
    fl = accuracy_vs_flops(runs0, TASKS)
    X.save_table(fl, ctx.out / "flops.csv")
    plot_flops(fl, ctx.out / "flops.png")
    thr = write_throughput({k: A[k] for k in best}, ctx, P)
    report(ctx, P, A, status, val, best, resm, ex, thr, runs0, fl)
    print(f"wrote {ctx.out}/report.md")
    return 0 if X.sweep_complete(status, P, len(A)) and not X.out_of_time(ctx.deadline) else 3   # 3: call again


if __name__ == "__main__":
    X.cli(main)
