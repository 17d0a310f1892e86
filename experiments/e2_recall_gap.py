"""E2 — the recall gap against the attention ratio (after "From Recall to Reasoning: Understanding
the Role of Associative Memory in Hybrid Architectures", ICLR 2026 submission; the controlled
hybrid study).

Zoo models of one size and one parameter count: mixer in {gdn, gla, mamba2} x layout in
{50, 75, 83, 100} (% recurrent layers) plus the transformer, all trained on one mixture of
``mqar`` (recall), ``state_recall`` (state tracking, direct answer), ``state_recall_cot`` (the same with a
chain of thought: the tracked value after every statement, `interp.tasks.state_recall`) and ``word_problems``
(multi-step arithmetic word problems with exact answers). Every arm gets the same learning-rate sweep on training seed 0
(four rates in the full profile; the report says where each best rate lies), then the other training
seeds at its best rate (`interp.experiment.sweep_and_seeds`); accuracies are means over seeds and each
published-shape verdict says how many seeds show it alone. Arms with attention start with the
trainer's induction warm-up (``interp.train.default_induction_steps``), as the shipped defaults did;
attention-free arms (``<mixer>100``) get none. Reported:

* accuracy against the attention percentage, per task; ``mqar`` against the number of pairs, from
  few to past the training range, and against model width (a transformer and ``gdn100`` at more
  widths: recurrent recall should need width that grows with the pairs, attention not);
* parallel test-time scaling: majority voting over N = 1..64 sampled chains of thought on ``state_recall_cot``
  (temperature 0.8, top-p 0.9; every intermediate value and the answer written by the model,
  `interp.voting.chain_vote_rows`), accuracy against N per model (and pass@N, the chance that any sample is
  right); the published-shape verdict uses these. Beside them, votes over single sampled answer tokens on
  ``word_problems`` and ``mqar`` (labelled "single" in votes.csv's ``kind``): they converge to about the
  greedy answer by construction, so they show the baseline, not the claim;
* attention placement for the 83% layout: the preset ({5,11} at 12 layers) vs the start of each
  period ({0,6}) vs the last layer only;
* a mechanical error taxonomy of the wrong word-problem answers (the generator knows every fact:
  `interp.tasks.word_problems.classify`), against the attention percentage;
* optionally (``--judge PATH``, off by default) an LLM judge from a local Hugging Face model with
  an 8-category rubric, on the same wrong answers rendered as text; its labels are compared with
  the mechanical ones.

    python experiments/e2_recall_gap.py --quick      # CPU, a few minutes, tiny models
    python experiments/e2_recall_gap.py              # GPU: 8.5-minute calls; call again to continue

Writes ``--out`` (default runs/e2_recall_gap/figures, runs/e2_recall_gap_quick/figures for --quick): attention.png,
sweeps.png, width.png, votes.png, placement.png, taxonomy.png, results.csv, votes.csv, taxonomy.csv, lr_sweep.csv
(judge.csv) and report.md; checkpoints and cached evaluations go to ``--runs`` (default runs/e2_recall_gap[_quick]).
Also ``interp run experiments/e2_recall_gap.toml``.

Sizing of the full profile (19 arms x (4 rates + 2 seeds) = 114 runs of 1200 steps, 12 layers, d=128,
stacked 4 per process with ``--stack``; main arms first, then placement, then width; not yet run: the
figures in figures/e2_recall_gap/ are the earlier run of 38 one-seed runs at two rates on three tasks,
without ``state_recall_cot`` or chain votes; ``--runs`` of that mixture are refused). The fourth task
keeps every training sequence within 128 tokens (``state_recall_cot`` at its cap of 16 steps: 115) and
takes a quarter of the 1200 round-robin steps. Chain voting adds, per evaluated run, 128 problems x 64
chains x 9 prefills (8 ``is`` markers and the answer) of <= 66 tokens, in chunks of 256 rows: 288
forward passes (about a sixth of a run's training compute in tokens; launch-bound at this size, some
10 s per run at the 13 us per op event below; an estimate, not measured). For the earlier run: op
events per training step counted on CPU (torch profiler) are 5.4k (transformer),
9.2k-12.9k (gdn50..gdn100), 8.1k-10.7k (gla), 7.0k-8.6k (mamba2); at the ~13 us per op event per
process measured when the default set trained on the H100, that is 94 process-minutes: about 9.5
minutes for 10 parallel processes if they scale, 16 if they give 6x, i.e. two (or three) calls.
GLA's pure-torch scan holds [B, H, 64, 64, K] tensors (about 0.8 GB per layer at batch 64), so runs
are started only while their estimated memory (`gpu_gb`) fits in 60 GB.
"""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import torch

# voting, the error taxonomy and the judge live in interp.voting / interp.taxonomy, the figures in
# interp.mixer_figures; the names imported but unused here stay reachable as this script's (the tests use them)
from interp import InterpError  # noqa: F401
from interp import experiment as X
from interp.cli.options import int_at_least
from interp import tasks as T
from interp.mixer_figures import plot_attention, plot_placement, plot_sweeps, plot_taxonomy, plot_votes, plot_width
from interp.tasks import word_problems as W
from interp.tasks.vocab import VOCAB
from interp.taxonomy import (RUBRIC, chance_taxonomy, classify_answers, hf_judge, judge_errors,  # noqa: F401
                             problem_text, taxonomy_rows, wrong_shares)
from interp.train import answer_accuracy
from interp.voting import chain_vote_rows, majority, sample_answers, vote_curve, vote_gains, vote_rows  # noqa: F401
from interp.zoo import ZooConfig
from interp.zoo.layouts import PERCENTS

NAME = "e2_recall_gap"

TASKS = ("mqar", "state_recall", "state_recall_cot", "word_problems")
MIXERS = ("gdn", "gla", "mamba2")
PCTS = (50, 75, 83, 100)
# training caps keep every sequence within two scan chunks (<= 128 tokens): memory of 10 parallel runs
GRID_MAX = {"mqar": {"seq_len": 128}, "state_recall": {"n_steps": 16}, "state_recall_cot": {"n_steps": 16},
            "word_problems": {"n_steps": 8}}
SWEEPS = {"mqar": ("n_pairs", [2, 4, 8, 16, 32, 48, 64]), "state_recall": ("n_steps", [2, 4, 8, 16, 32]),
          "state_recall_cot": ("n_steps", [2, 4, 8, 16, 32]), "word_problems": ("n_steps", [0, 1, 2, 4, 8, 16])}
TAXONOMY_KNOBS = {"n_steps": 4, "n_distractors": 4}
VOTE_TASKS = ("word_problems", "mqar")      # single answers: the vote collapses to about the greedy answer
CHAIN_TASK = "state_recall_cot"            # sampled chains of thought: the test of the published claim
VOTE_NS = (1, 2, 4, 8, 16, 32, 64)
TEMPERATURE, TOP_P = 0.8, 0.9
VAL_SEED, TEST_SEED, VOTE_SEED = 99, 123, 321

PROFILES = {
    # GPU: 19 arms x (4 lrs + 2 seeds) = 114 runs of 12 layers, d=128, stacked in parallel processes (several calls)
    "full": dict(model=dict(d_model=128, n_layers=12, n_heads=4, head_dim=32), mixers=MIXERS, pcts=PCTS,
                 widths=(64, 256), width_archs=("transformer", "gdn100"), steps=1200, batch_size=64,
                 lrs=(3e-4, 1e-3, 3e-3, 1e-2), seeds=(0, 1, 2), stack=4, warmup=100, workers=6, gpu_gb=60,
                 time_budget=8.5, eval_reserve=2.0,
                 val_n=128, eval_n=256, vote_n=256, chain_n=128, tax_n=512),
    # CPU, a few minutes: tiny models, few steps, one lr (numbers near chance; checks the pipeline)
    "quick": dict(model=dict(d_model=16, n_layers=6, n_heads=2, head_dim=8, mamba_head_dim=8, mamba_state=8,
                             gla_low_rank=4), mixers=MIXERS, pcts=PCTS, widths=(32,),
                  width_archs=("transformer", "gdn100"), steps=60, batch_size=16, lrs=(3e-3,), seeds=(0, 1), warmup=10,
                  gpu_gb=None,
                  workers=1, time_budget=0, eval_reserve=0, val_n=32, eval_n=64, vote_n=64, chain_n=32, tax_n=128),
    # the test suite
    "test": dict(model=dict(d_model=16, n_layers=6, n_heads=2, head_dim=8, mamba_head_dim=8, mamba_state=8,
                            gla_low_rank=4), mixers=("gdn",), pcts=(83, 100), widths=(8,),
                 width_archs=("transformer",), steps=2, batch_size=4, lrs=(3e-3, 1e-3), seeds=(0, 1), warmup=1, workers=1,
                 gpu_gb=None,
                 time_budget=0, eval_reserve=0, val_n=8, eval_n=8, vote_n=8, chain_n=4, tax_n=16),
}


# --- arms ---------------------------------------------------------------------------------------

def placement_layouts(n_layers: int, mixer: str = "gdn", pct: int = 83) -> dict:
    """The ablation of the 83% layout: preset (ends of the periods), period starts, last layer."""
    period = PERCENTS[pct]
    preset = [i for i in range(n_layers) if (n_layers - 1 - i) % period == 0]
    start = [i - (period - 1) for i in preset if i - (period - 1) >= 0] or [0]
    names = [f"{mixer}{pct}", f"{mixer}@{','.join(map(str, start))}", f"{mixer}@{n_layers - 1}"]
    return {n: n for n in names}


def arms(P) -> dict:
    """{arm: spec} with spec["model"], ["group"] (main | placement | width), ["mixer"], ["attn_pct"]."""
    base = P["model"]
    L = base["n_layers"]
    out, seen = {}, {}

    def add(name, layout, group, width=None):
        model = X.matched({**base, "layout": layout, **({"d_model": width} if width else {})})
        layers = tuple(ZooConfig(vocab_size=len(VOCAB), **model).layers)
        key = (layers, model["d_model"])
        if key in seen:           # the same model under another name (e.g. placement == preset)
            return
        seen[key] = name
        mixer = next(m for m in ("transformer", "mamba2", "gdn", "gla") if layout.startswith(m))
        out[name] = {"model": model, "group": group, "mixer": mixer,
                     "attn_pct": round(100 * X.attention_fraction(model)), "width": model["d_model"]}
    add("transformer", "transformer", "main")
    for m in P["mixers"]:
        for p in P["pcts"]:
            add(f"{m}{p}", f"{m}{p}", "main")
    for name, layout in placement_layouts(L).items():
        add(name, layout, "placement")
    for a in P["width_archs"]:
        for w in P["widths"]:
            add(f"{a}-d{w}", a, "width", w)
    return out


def gpu_gb(run) -> float:
    """Estimated peak GPU memory (GB) of one training run: measured on CPU for fp32 activations of
    sequences <= 2 scan chunks at batch 64 (GLA's per-key decay holds [B, H, C, C, K] tensors),
    scaled by the batch; plus ~1.5 GB of context and weights. Only schedules the parallel runs."""
    per_layer = {"attn": 0.13, "gdn": 0.26, "mamba2": 0.26, "gla": 0.8}
    layers = ZooConfig(vocab_size=len(VOCAB), **run.cfg.model).layers
    return 1.5 + sum(per_layer[k] for k in layers) * run.cfg.batch_size / 64 * run.cfg.model["d_model"] / 128


def make(ctx, unit, spec, lrs, seed):
    """The runs of arm ``unit`` at ``lrs`` for training seed ``seed`` (`X.sweep_and_seeds`); main arms first."""
    P = ctx.P
    return X.unit_runs(ctx, unit, {"model": spec["model"]}, lrs, seed,
                       priority={f"{unit}_s{seed}": {"main": 0, "placement": 1, "width": 2}[spec["group"]]},
                       tasks=list(TASKS), grid_max=GRID_MAX, steps=P["steps"], batch_size=P["batch_size"],
                       warmup=P["warmup"], eval_every=max(1, P["steps"] // 4), eval_n=128,
                       save_every=max(50, P["steps"] // 10), device=ctx.device, scan_backend=ctx.scan_backend)


# --- evaluation units ---------------------------------------------------------------------------

def validate(ctx, runs):
    """Validation accuracy of every finished run: the mean over the tasks at default knobs (teacher-forced)."""
    P = ctx.P

    def score(m, r):
        accs = {t: answer_accuracy(m, T.generate(t, P["val_n"], seed=VAL_SEED).to(ctx.device)) for t in TASKS}
        return {"val_acc": float(np.mean(list(accs.values()))), **{f"val_{t}": a for t, a in accs.items()}}
    return X.validate_runs(ctx, runs, score)


def evaluate_arm(arm, spec, run, P, root, device):
    """Accuracy sweeps, voting curves and the error taxonomy of one of an arm's runs at its best rate (cached)."""
    m = X.load_run(run, device).set_scan_backend("reference")
    info = dict(arm=arm, seed=run.seed, mixer=spec["mixer"], attn_pct=spec["attn_pct"], group=spec["group"],
                width=spec["width"])

    def acc():
        rows = []
        for t in TASKS:
            rows.append(dict(**info, task=t, knob="default", value="default",
                             accuracy=answer_accuracy(m, T.generate(t, P["eval_n"], seed=TEST_SEED).to(device))))
            knob, values = SWEEPS[t]
            cap = GRID_MAX.get(t, {}).get(knob, max(T.difficulty_grid(t).get(knob, values)))
            for v in values:
                b = T.generate(t, P["eval_n"], seed=TEST_SEED, **{knob: v})
                rows.append(dict(**info, task=t, knob=knob, value=str(v), accuracy=answer_accuracy(m, b.to(device)),
                                 in_training=v <= cap))
        return pd.DataFrame(rows)

    def votes():        # chains first (the figure's first row), then the single answers
        chain = [dict(**info, kind="chain", task=CHAIN_TASK, **r) for r in chain_vote_rows(
            m, T.generate(CHAIN_TASK, P["chain_n"], seed=VOTE_SEED), VOTE_NS, TEMPERATURE, TOP_P, seed=VOTE_SEED)]
        return pd.DataFrame(chain + [dict(**info, kind="single", task=t, **r) for t in VOTE_TASKS for r in vote_rows(
            m, T.generate(t, P["vote_n"], seed=VOTE_SEED), VOTE_NS, TEMPERATURE, TOP_P, seed=VOTE_SEED)])

    def taxonomy():
        b = T.generate("word_problems", P["tax_n"], seed=TEST_SEED, **TAXONOMY_KNOBS)
        types, wrong = classify_answers(m, b, arm=arm)
        X.ResultLog(root / "eval" / f"wrong_{run.name}.csv").replace(wrong)
        return taxonomy_rows(types, len(types), **info)
    d = root / "eval"
    return (X.ResultLog(d / f"acc_{run.name}.csv").once(acc), X.ResultLog(d / f"votes_{run.name}.csv").once(votes),
            X.ResultLog(d / f"taxonomy_{run.name}.csv").once(taxonomy))


# --- report ---------------------------------------------------------------------------------------

def _mono(xs, ys):
    """Spearman rank correlation (no scipy)."""
    if len(xs) < 2 or np.std(xs) == 0 or np.std(ys) == 0:
        return float("nan")
    rx, ry = pd.Series(xs).rank().values, pd.Series(ys).rank().values
    return float(np.corrcoef(rx, ry)[0, 1])


def _rho(r) -> str:
    return "n/a (fewer than 2 layouts, or a constant accuracy)" if np.isnan(r) else f"{r:+.2f}"


STRONG_RHO = 0.8   # a "clear trend" over the 4 attention ratios of one mixer: (nearly) monotone


def shape_verdicts(acc, votes, tax, chance, gains=None) -> list[str]:
    """The published-shape verdicts on ``acc`` / ``votes`` / ``tax`` (seed means or one seed's rows); ``gains``
    (optional): the chain-vote gain per main arm with its interval over training seeds (`X.seed_means`)."""
    out = []
    main = acc[(acc.group == "main")]
    mq = main[(main.task == "mqar") & (main.value == "32")]
    rec = main[(main.mixer != "transformer")]
    for t, label in (("mqar", "recall (mqar, 32 pairs)"), ("word_problems", "word problems")):
        sub = mq if t == "mqar" else main[(main.task == t) & (main.knob == "default")]
        rhos = {m: _mono(g.attn_pct.values, g.accuracy.values) for m, g in sub[sub.mixer != "transformer"]
                .groupby("mixer")}
        ok = [r for r in rhos.values() if not np.isnan(r)]
        n = sub[sub.mixer != "transformer"].groupby("mixer").size().max() if len(sub) else 0
        v = ("**inconclusive** (every model near chance, accuracy < 0.1)" if sub.accuracy.max() < 0.1 else
             "**agrees**" if ok and all(r >= STRONG_RHO for r in ok) else
             f"**weak / inconclusive** (positive, but a rank correlation below {STRONG_RHO} over {n} layouts is "
             "far from a clear trend)" if ok and all(r > 0 for r in ok) else
             "**disagrees**" if ok and all(r <= 0 for r in ok) else "**mixed / inconclusive**")
        out.append(f"* More attention layers, better {label} (paper: a clear trend): Spearman rank correlation of "
                   f"accuracy with attention % per mixer: " + ", ".join(f"{m} {_rho(r)}" for m, r in rhos.items())
                   + f": {v}.")
    if len(rec) and "transformer" in set(main.arm):
        wp = main[(main.task == "word_problems") & (main.knob == "default")]
        gdn = wp[(wp.mixer == "gdn") & (wp.attn_pct > 0)]
        tr = wp[wp.arm == "transformer"].accuracy
        if len(gdn) and len(tr):
            b = gdn.loc[gdn.accuracy.idxmax()]
            v = ("**inconclusive** (both near zero)" if max(b.accuracy, tr.iloc[0]) < 0.1 else
                 "**agrees**" if b.accuracy >= tr.iloc[0] - 0.02 else "**disagrees**")
            out.append(f"* GDN hybrids can match or beat the transformer on the arithmetic problems (paper): best GDN "
                       f"hybrid {b.arm} {b.accuracy:.2f} vs transformer {tr.iloc[0]:.2f}: {v}.")
    out += vote_verdicts(votes, gains)
    t0 = tax[(tax.group == "main") & (tax.attn_pct == 0)]
    if len(t0):
        out.append(binding_verdict(t0, chance))
    return out


def binding_verdict(t0, chance) -> str:
    """The taxonomy verdict over the attention-free models ``t0``: binding's share of the wrong answers that fit
    one type only (answers wrong in more than one way are counted apart; taxonomies without ``only``: first
    type), against the same share for uniform guessing (``chance``)."""
    col = "only" if "only" in t0 and "only" in chance else "count"
    wrong = t0[t0.kind.isin(W.ERROR_TYPES)].groupby("kind")[col].sum()
    amb = 1 - wrong.sum() / max(t0[t0.kind.isin(W.ERROR_TYPES)]["count"].sum(), 1) if col == "only" else 0.0
    mech = wrong.drop("other", errors="ignore")
    top = mech.idxmax() if mech.sum() else "none"
    share = wrong / max(wrong.sum(), 1)
    cw = chance[chance.kind.isin(W.ERROR_TYPES)].set_index("kind")[col].reindex(W.ERROR_TYPES)
    base = cw / max(cw.sum(), 1e-9)
    over = share.get("key_value_binding", 0) / max(base["key_value_binding"], 1e-9)
    what = ("wrong answers that fit one type only" + f" ({amb:.2f} of the wrong answers fit several and are set "
            "apart)" if col == "only" else "wrong answers (first type)")
    return (f"* Recall (binding) errors are the main error of attention-free models (paper, via an LLM judge): our "
            f"mechanical taxonomy over the attention-free models counts, among the {what}: " + ", ".join(
                f"{k} {v:g}" for k, v in wrong.sort_values(ascending=False).items())
            + f"; the most frequent classified type is {top}; binding's share is "
            f"{share.get('key_value_binding', 0):.2f} against {base['key_value_binding']:.2f} for uniform guessing "
            f"({over:.1f}x): "
            + ("**inconclusive** (no classified errors)" if top == "none" else
               "**inconclusive** (these models are near chance, accuracy < 0.1: their errors show which "
               "numbers they emit, not how they reason)"
               if t0[t0.kind == "correct"]["count"].sum() < 0.1 * t0.drop_duplicates("arm")["n"].sum() else
               "**agrees**" if top == "key_value_binding" and over > 1.2 else
               "**not shown** (binding is the largest type but not above its base rate)"
               if top == "key_value_binding" else "**disagrees**") + ".")


def vote_verdicts(votes, gains=None) -> list[str]:
    """Majority voting (paper: helps, and helps more with more attention), tested on sampled chains of thought
    (``kind`` chain); the single-answer votes are reported beside it, not tested (they collapse to about the
    greedy answer). A votes.csv without ``kind`` (older runs) holds single-answer votes only."""
    main = votes[votes.group == "main"]
    main = main.assign(kind=main["kind"] if "kind" in main else "single")
    vc, vs = main[main.kind == "chain"], main[(main.kind == "single") & (main.task == "word_problems")]
    single = ""
    if len(vs):
        g = vote_gains(vs, ["arm"]).gain
        single = (f" Single-answer votes (word problems, one sampled answer token each) gain median {g.median():+.2f}: "
                  "they converge to the mode of one answer distribution, i.e. about the greedy answer, so they "
                  "cannot test the claim.")
    if not len(vc):
        return [f"* Majority voting over sampled reasoning helps, and more attention helps it more (paper): no chain "
                f"votes in these results: **inconclusive**.{single}"]
    g = vote_gains(vc, ["arm"]).set_index("arm").gain
    top = vc[vc.N == vc.N.max()]
    rho = _mono(top.attn_pct.values, top.majority_acc.values)
    n_up = "" if gains is None else (f"; {int((gains.lo > 0).sum())} of {len(gains)} models gain with the 95% "
                                     "interval over training seeds above 0")
    clear = gains is None or (gains.lo > 0).sum() * 2 >= len(gains)
    v = ("**inconclusive** (closed-loop greedy accuracy < 0.2 for every model, chance 0.1)"
         if vc.greedy_acc.max() < 0.2 else "**disagrees / not shown**" if not (g.median() > 0 and rho > 0) else
         "**agrees**" if clear else "**weak / inconclusive** (most models' gains are within seed noise)")
    return [f"* Majority voting over sampled reasoning helps, and more attention helps it more (paper): {CHAIN_TASK}, "
            f"{int(vc.N.max())} chains of thought sampled per problem (every `is` value and the answer written by the "
            f"model), gain from N=1 to N={int(vc.N.max())} per model: median {g.median():+.2f} (range {g.min():+.2f}.."
            f"{g.max():+.2f}){n_up}; rank correlation of accuracy at N={int(vc.N.max())} with attention % {rho:+.2f}: "
            f"{v}.{single}"]


def report(ctx, A, status, val, best, acc, votes, tax, chance, judged, has_width, has_place, verdicts):
    P, profile = ctx.P, ctx.profile
    L = X.runs_note(status)
    mp = P["model"]
    L += [f"Profile `{profile}`: {mp['n_layers']} layers, d={mp['d_model']}; every model's SwiGLU width is matched to "
          f"the transformer's parameter count at its width ({X.n_params(A['transformer']['model']) / 1e6:.3f}M at "
          f"d={mp['d_model']}). Training: the task mixture {', '.join(TASKS)} (round robin), {P['steps']} steps x "
          "batch "
          f"{P['batch_size']}, one difficulty knob drawn from its grid per batch, capped at {GRID_MAX}; learning rates "
          f"{', '.join(f'{x:g}' for x in P['lrs'])} for every arm on training seed {P['seeds'][0]}, best by validation "
          f"accuracy (mean over the {len(TASKS)} tasks at default knobs, teacher-forced, {P['val_n']} examples each, "
          f"seed {VAL_SEED}), then "
          f"training seeds {', '.join(map(str, P['seeds'][1:])) or '(none)'} at that rate. Test: {P['eval_n']} "
          f"examples per point, seed {TEST_SEED}. Accuracies are means over training seeds (tables and figures); "
          "error counts are pooled over them; each verdict says how many seeds show it alone.", ""]
    inc = status[~status.complete]
    if len(inc):
        L += [f"**{len(inc)} of {len(status)} runs are not finished** (time budget of this call): "
              + ", ".join(inc.run) + ". Numbers use finished runs only; run the same command again to continue.", ""]
    L += ["## Accuracy against the attention percentage", "", "![attention](attention.png)", ""]
    cell = acc.assign(cell=[X.fmt(*x) for x in zip(acc.accuracy, acc.lo, acc.hi)]) if "lo" in acc else \
        acc.assign(cell=acc.accuracy.map("{:.2f}".format))     # mean [95% interval over training seeds]
    d = cell[(cell.group == "main") & (cell.knob == "default")]
    piv = d.pivot_table(index=["arm", "attn_pct"], columns="task", values="cell", aggfunc="first",
                        sort=False).reset_index()
    mq32 = cell[(cell.group == "main") & (cell.task == "mqar") & (cell.value == "32")].set_index("arm").cell
    piv["mqar 32 pairs"] = piv.arm.map(mq32)
    L += ["Accuracy at the default knobs: mean [95% interval] over training seeds (`state_recall_cot` teacher-forced, "
          "the gold intermediate values given; its closed-loop accuracy is the chain votes' `greedy_acc` below).", ""]
    L += X.md_table(piv.sort_values(["attn_pct", "arm"]))
    L += ["", "Per-task sweeps (the shaded range is beyond what the models saw in training):", "",
          "![sweeps](sweeps.png)", ""]
    if has_width:
        w = acc[(acc.task == "mqar") & (acc.knob == "n_pairs")]
        w = w[w.arm.isin([a for a in A if a in P["width_archs"] or a.split("-d")[0] in P["width_archs"]])]
        pw = w.pivot_table(index=["arm", "width"], columns="value", values="accuracy", sort=False).reset_index()
        L += ["## MQAR against model width", "", "![width](width.png)", ""] + X.md_table(pw) + [""]
    votes, gains = votes
    L += ["## Majority voting (parallel test-time scaling)", "",
          f"**Sampled chains of thought** (the test of the published claim): {P['chain_n']} `{CHAIN_TASK}` problems; "
          f"{max(VOTE_NS)} chains sampled per problem (temperature {TEMPERATURE}, top-p {TOP_P}), each writing every "
          "value after an `is` marker and then the answer itself (`interp.closedloop.sample_chains`); the vote is over "
          "the chains' final answers. `greedy_acc` is the greedy chain's (closed-loop) accuracy, `chain_acc` the "
          "sampled chains' share of right intermediate values. **Single answers** (kept for comparison): "
          f"{P['vote_n']} problems per task of {', '.join(VOTE_TASKS)}, {max(VOTE_NS)} answer tokens sampled at the "
          "answer position: their vote converges to the mode of one answer distribution, i.e. about the greedy "
          "answer, so it cannot show what the paper claims. Accuracy of the majority of N samples (ties: the earliest "
          "sampled), averaged over the disjoint groups of N, mean [95% interval] over training seeds; dotted in the "
          "figure: pass@N.", "", "![votes](votes.png)", ""]
    vc = votes.assign(cell=[X.fmt(*x) for x in zip(votes.majority_acc, votes.lo, votes.hi)])
    vt = vc[(vc.group == "main")].pivot_table(index=["kind", "task", "arm", "attn_pct", "greedy_acc"], columns="N",
                                              values="cell", aggfunc="first", sort=False).reset_index()
    L += X.md_table(vt) + [""]
    if len(gains):
        L += [f"Chain-vote gain from N=1 to N={max(VOTE_NS)} per model, mean [95% interval] over training seeds:", ""]
        L += X.md_table(gains.assign(gain=[X.fmt(*x) for x in zip(gains.gain, gains.lo, gains.hi)])[
            ["arm", "attn_pct", "greedy_acc", "gain", "seeds"]]) + [""]
    if has_place:
        pl = acc[acc.arm.isin([a for a in A if a.startswith("gdn83")] +
                              [a for a, s in A.items() if s["group"] == "placement"]) & (acc.knob == "default")]
        pp = pl.pivot_table(index="arm", columns="task", values="accuracy", sort=False).reset_index()
        pp.insert(1, "attention layers", [ZooConfig(vocab_size=len(VOCAB), **A[a]["model"]).attention_layers
                                          for a in pp.arm])
        L += ["## Attention placement (83% recurrent)", "", "![placement](placement.png)", ""] + X.md_table(pp) + [""]
    L += ["## Error taxonomy of wrong word-problem answers (mechanical)", "",
          f"{P['tax_n']} problems with knobs {TAXONOMY_KNOBS}; each wrong answer is classified from the generator's "
          "facts (`interp.tasks.word_problems.error_types`; the figure and the first columns take the first type in "
          "this order: " + ", ".join(W.ERROR_TYPES) + "). An answer can be wrong in more than one way (e.g. another "
          "person's count that is also an earlier value of the asked one): `ambiguous` is the share of wrong answers "
          "that fit several types, and the `alone` columns are the shares among those that fit one. Fractions of "
          "all problems:", "", "![taxonomy](taxonomy.png)", ""]
    L += ["Accuracy, and the share of each type among the wrong answers; `uniform guess` is the base rate (a wrong "
          "answer drawn uniformly from 0..63, classified the same way):", ""]
    L += X.md_table(wrong_shares(pd.concat([tax, chance], ignore_index=True))) + [""]
    if judged is not None:
        agree = (judged.kind == judged.judge).mean() if len(judged) else float("nan")
        L += [f"LLM judge ({len(judged)} wrong answers): agreement with the mechanical label {agree:.2f}; "
              "see judge.csv.", ""]
    L += ["## Learning-rate sweep and training seeds", ""] + X.sweep_lines(val, best, P["lrs"], P["seeds"])
    X.write_report(ctx, "E2 — the recall gap against the attention ratio", L, verdicts, status=status)


def build_parser():
    ap = X.parser(NAME, __doc__, PROFILES, workers=True)
    ap.add_argument("--judge", default=None,
                    help="local HF model directory for the optional LLM judge (None: no judge)")
    ap.add_argument("--judge-max", type=int_at_least(1), default=100, help="wrong answers sent to the judge")
    return ap


def main(argv=None):
    a = build_parser().parse_args(argv)
    with X.setup(a, NAME, PROFILES, argv) as ctx:      # holds the runs and figures directories' writer locks
        return experiment(ctx, a)


def experiment(ctx, a):
    P, root, figs, device, deadline = ctx.P, ctx.runs, ctx.out, ctx.device, ctx.deadline
    X.check_spec(root, {"profile": ctx.profile, "steps": P["steps"], "tasks": list(TASKS), **X.backend_spec(P)},
                 kind=NAME)
    judge = hf_judge(a.judge, device) if a.judge else None     # fail early on a bad path
    torch.manual_seed(0)
    A = arms(P)
    status, val, best, runs = X.sweep_and_seeds(ctx, A, make, validate, weight=gpu_gb, capacity=P["gpu_gb"])
    X.save_table(status, figs / "lr_sweep_status.csv")
    if ctx.train_only or not best:
        return 0 if ctx.train_only and X.sweep_complete(status, P, len(A)) else 3
    picked = X.chosen(runs, best)
    accs, votes, taxs = [], [], []
    for r in picked:
        if X.out_of_time(deadline):
            print("time budget reached during evaluation; run the same command again to continue", file=sys.stderr)
            break
        for f, x in zip((accs, votes, taxs), evaluate_arm(r.unit, A[r.unit], r, P, root, device)):
            f.append(x)
    acc, vote, tax = (pd.concat(f, ignore_index=True) for f in (accs, votes, taxs))
    chance = X.ResultLog(root / "eval" / f"taxonomy_chance_{P['tax_n']}.csv").once(
        lambda: chance_taxonomy(P["tax_n"], TEST_SEED, TAXONOMY_KNOBS))
    acc["value"] = acc["value"].astype(str)
    judged = None
    if judge is not None:
        wrong = [X.ResultLog(root / "eval" / f"wrong_{r.name}.csv").frame() for r in picked]
        wrong = pd.concat([w for w in wrong if not w.empty], ignore_index=True).head(a.judge_max)
        items = [(problem_text(p.split()), c, ans) for p, c, ans in zip(wrong.problem, wrong.correct, wrong.answer)]
        judged = wrong.assign(judge=judge_errors(items, judge))
        X.save_table(judged, figs / "judge.csv")
    for df, name in ((acc, "results"), (vote, "votes"), (pd.concat([tax, chance], ignore_index=True), "taxonomy")):
        X.save_table(df, figs / f"{name}.csv")
    X.save_table(X.sweep_frame(status, runs, val), figs / "lr_sweep.csv")
    arm_keys = ["arm", "mixer", "attn_pct", "group", "width"]
    accm = X.seed_means(acc, arm_keys + ["task", "knob", "value", "in_training"])
    votem = X.seed_means(vote, arm_keys + ["kind", "task", "N"], value="majority_acc",
                         also=["pass_at_n", "greedy_acc", "chain_acc"])
    gains = X.seed_means(vote_gains(vote[(vote.kind == "chain") & (vote.group == "main")], arm_keys + ["seed"]),
                         arm_keys, value="gain", also=["greedy_acc"], bounds=(-1, 1))    # chain-vote gain per arm
    taxm = tax.groupby(arm_keys + ["kind"], sort=False)[["count", "n"]].sum().reset_index()   # pooled over seeds
    plot_attention(accm, figs / "attention.png")
    plot_sweeps(accm, figs / "sweeps.png")
    has_width = plot_width(accm, figs / "width.png")
    plot_votes(votem, figs / "votes.png")
    has_place = plot_placement(accm, A, figs / "placement.png")
    plot_taxonomy(taxm, figs / "taxonomy.png")
    per_seed = {sd: shape_verdicts(acc[acc.seed == sd], vote[vote.seed == sd], tax[tax.seed == sd], chance)
                for sd in sorted(acc.seed.unique())}
    verdicts = X.replicated(shape_verdicts(accm, votem, taxm, chance, gains if len(gains) else None), per_seed)
    report(ctx, A, status, val, best, accm, (votem, gains), taxm, chance, judged, has_width, has_place, verdicts)
    print(f"wrote {figs}/report.md")
    return 0 if X.sweep_complete(status, P, len(A)) and not X.out_of_time(ctx.deadline) else 3   # 3: call again


if __name__ == "__main__":
    X.cli(main)
