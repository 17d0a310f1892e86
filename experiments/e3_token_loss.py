"""E3 — which tokens does the hybrid predict better? (token-level loss decomposition)

Causal LMs that share a tokenizer read the same held-out text; every token gets each model's loss and
the difference ``diff = loss(A) - loss(B)`` (> 0: B, the hybrid, predicts it better), stratified by tag
family (closed-class function words vs open-class content words, from the lexicon shipped in
`interp.tokenloss`; code keywords / identifiers from Python's tokenizer), copy features (token inside a
repeated n-gram, n-gram length, distance to the earlier occurrence) and delimiters (opening vs closing
brackets / quotes / HTML tags), separately for prose, code and markup. Library: `interp.tokenloss`.

Models: without ``--model-a`` / ``--model-b`` the experiment trains its own, so the comparison is real: a
byte-level BPE tokenizer trained on the corpus's training split (the `tokenizers` library, nothing
downloaded) and three arms matched in parameter count, randomly initialised: ``olmo3`` (an
Olmo-3-style transformer, full attention in every layer), ``olmo3_swa`` (the same with Olmo 3's layer
pattern: three sliding-window attention layers per full-attention layer, the window half the training
context as Olmo 3's 4096 of 8192) and ``olmo_hybrid`` (an Olmo-Hybrid-style model: three Gated
DeltaNet layers per attention layer). Each arm gets a learning-rate sweep on the first training seed
(four log-spaced rates in the full profile; selection by next-token accuracy on a validation split held
out from training and from the evaluation text; the report says where each chosen rate lies), then
the other training seeds at its chosen rate (`interp.experiment.sweep_and_seeds`). Seed s initialises
every arm's seed-s run and draws its batches, so seed s of two arms saw the same batches; the text is
read in windows drawn without replacement, ``passes`` times (one pass in the full profile: no text is
repeated); the report gives the passes and the loss on training and validation windows at every tenth
of each run (the overfit check). Compared: each transformer against the hybrid (``olmo3`` vs
``olmo_hybrid``, ``olmo3_swa`` vs ``olmo_hybrid``). ``--model-a`` / ``--model-b`` (local HF checkpoint
directories with their tokenizer, e.g. an Olmo-3 and an Olmo-Hybrid checkpoint) compare two given
models instead; nothing is trained and their intervals are over context windows of that one pair.

Verdict rule (fixed before the run). Every number a verdict rests on is computed on each training seed's
models (seed s of both arms, on the same evaluation tokens) and reported as the mean over seeds with a
95% t-interval over seeds (not over the tokens of one run). A finding of the published study
(Li & Merrill 2026) *agrees* when that interval lies wholly on the published side (above 0 for "the
hybrid is better", below 0 for "the advantage shrinks", i.e. a category's difference minus the mean
difference; above 0.5 for "on most tags"), *disagrees* when it lies wholly on the other side, and is
*inconclusive* otherwise, with fewer than three training seeds (`interp.stats.MIN_SEEDS`; the
report then says what the interval alone reads), or when an arm of the comparison did not converge.
An arm *converged* when the 95% interval over seeds of its validation loss lies wholly below the
loss of the training text's unigram distribution (it learned to use context); the report prints how
many arms did not. The synthetic probes follow the same rule on the candidate loss at the answer
(and at closing brackets), seed s against seed s; with one model per arm they give at most
*inconclusive*.

Corpus: ``--corpus PATH`` (files / directories, ``prose:``, ``code:``, ``markup:`` prefixes), else
`interp.tokenloss.default_corpus`: Python's stdlib source (code), HTML / Markdown / RST found on disk
(markup) and the plain-text Python reference manual plus plain-text docs (prose); the report lists
the files and sizes (``corpus.csv``).

Synthetic probes: per-token losses of zoo models (default: the shipped ``transformer``, ``gdn75``,
``gdn100``; ``--probe-models train`` trains a matched transformer / gdn75 / gdn100 on the probe tasks, one
seed) on ``pronoun``, ``entity_tracking`` and ``brackets``, per knob value, at the answer and (brackets)
at every closing bracket.

    python experiments/e3_token_loss.py --quick     # CPU, a few minutes
    python experiments/e3_token_loss.py --device cuda   # GPU; 7-minute calls, call again to continue
    python experiments/e3_token_loss.py --model-a ckpt/olmo3 --model-b ckpt/olmo-hybrid --corpus code:src/

Writes ``<out>/`` (default runs/e3_token_loss/figures, runs/e3_token_loss_quick/figures for --quick): token_loss.png and
token_loss_excess.png (olmo3 vs olmo_hybrid), token_loss_swa.png and token_loss_excess_swa.png (olmo3_swa vs
olmo_hybrid), summary.csv (per pair, category and domain: means and intervals over seeds), summary_seeds.csv
(per seed), findings.csv, tokens.parquet (the first seed's tokens), training.png, overfit.csv, lr_sweep.csv,
probes.png, probes.parquet, probes_summary.csv, corpus.csv and report.md.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import sys
from pathlib import Path

import pandas as pd
import torch

from interp import InterpError
from interp import experiment as X
from interp.cli.options import int_at_least
from interp import tokenloss as TL
# the arms, probes, report sections and seed statistics live in interp.tokenloss; run_name, train_hf and
# pair_configs stay reachable as this script's names (the tests call them)
from interp.tokenloss.pair import (ARMS, TextCfg, TextData, TextRun, arm_configs, checkpoint_fingerprint,  # noqa: F401
                                   n_steps, pair_configs, run_name, token_stream, train_hf, train_text_runs,
                                   train_tokenizer)
from interp.tokenloss.probes import chance_levels, plot_probes, probe_models, probe_note, run_probes, train_probe_runs
from interp.tokenloss.report import F3, arms_section, category_tables, corpus_section, verdict_probes
from interp.tokenloss import seeds as S

NAME = "e3_token_loss"
PROBE_TRAIN = dict(model=dict(d_model=128, n_layers=8, n_heads=4, head_dim=32), steps=2000, batch_size=64,
                   lrs=(1e-3, 3e-3), warmup=150, workers=4, val_n=128, eval_reserve=1.0)
PROFILES = {
    # GPU: three 8-layer d=256 arms, 4 learning rates on seed 0 then seeds 1 and 2 at each arm's best (18 runs),
    # one pass over up to ~36 MB of text (as much as the machine holds), evaluated on ~0.9 MB
    "full": dict(train_bytes=12_000_000, eval_bytes=300_000, val_bytes=100_000, max_doc_bytes=32_000, vocab=4096,
                 model=dict(d=256, layers=8, heads=4, head_dim=64), seq_len=512, batch=16, passes=1,
                 lrs=(3e-4, 1e-3, 3e-3, 1e-2), seeds=(0, 1, 2), warmup=100, val_windows=256, ckpt_windows=32,
                 eval_seq_len=512, eval_batch=16, time_budget=7.0, eval_reserve=2.0, threads=None, pair_workers=6,
                 probe_models="train", probe_n=256, probe_train=PROBE_TRAIN),
    # CPU, a few minutes: three 4-layer d=64 arms, 2 learning rates then a second seed (9 runs of ~120 steps), one
    # pass over ~0.55 MB
    "quick": dict(train_bytes=200_000, eval_bytes=30_000, val_bytes=15_000, max_doc_bytes=12_000, vocab=1024,
                  model=dict(d=64, layers=4, heads=2, head_dim=32), seq_len=128, batch=16, passes=1,
                  lrs=(3e-3, 1e-2), seeds=(0, 1), warmup=20, val_windows=64, ckpt_windows=8, eval_seq_len=128,
                  eval_batch=16, time_budget=0, eval_reserve=0, threads=1, probe_models="transformer,gdn75,gdn100",
                  probe_n=64, probe_train=dict(model=dict(d_model=32, n_layers=4, n_heads=2, head_dim=16), steps=300,
                                               batch_size=32, lrs=(1e-3, 3e-3), warmup=30, workers=1, val_n=32,
                                               eval_reserve=0)),
    # the test suite: seconds
    "test": dict(train_bytes=20_000, eval_bytes=5_000, val_bytes=2_000, max_doc_bytes=3_000, vocab=300,
                 model=dict(d=16, layers=4, heads=2, head_dim=8), seq_len=32, batch=4, steps=3, lrs=(1e-3, 3e-3),
                 seeds=(0, 1), warmup=1, val_windows=8, ckpt_windows=2, eval_seq_len=32, eval_batch=8, time_budget=0,
                 eval_reserve=0, threads=1, probe_models="transformer,gdn75", probe_n=8,
                 probe_train=dict(model=dict(d_model=16, n_layers=4, n_heads=2, head_dim=8), steps=2, batch_size=4,
                                  lrs=(3e-3,), warmup=1, workers=1, val_n=4, eval_reserve=0),
                 probe_grid={"pronoun": {"n_distractors": [2]}, "entity_tracking": {"n_moves": [2]},
                             "brackets": {"depth": [2]}}),
}
SPEC_SKIP = ("time_budget", "threads", "pair_workers", "probe_n", "probe_models", "probe_grid", "probe_train",
             "eval_batch", "eval_reserve")


def make(ctx, unit, spec, lrs, seed):
    """The runs of arm ``unit`` at ``lrs`` for training seed ``seed`` (`X.sweep_and_seeds`)."""
    return [TextRun(unit, lr, seed, spec, ctx.runs) for lr in lrs]


def run_meta(run) -> dict:
    return json.loads((run.out / "meta.json").read_text())


def validate(ctx, runs):
    """Validation rows of finished runs (computed at the end of training, read from each run's meta.json):
    ``val_acc`` = next-token accuracy on the validation split (the sweep's selection score), ``val_loss``."""
    rows = [dict(unit=r.unit, lr=r.lr, seed=r.seed, val_acc=(m := run_meta(r))["val_acc"], val_loss=m["val_loss"])
            for r in runs]
    return pd.DataFrame(rows, columns=["unit", "lr", "seed", "val_acc", "val_loss"])


def compare_seeds(ctx, picked, tok, eval_docs, seq_len, stride):
    """{(pair, seed): per-token losses} of each pair of `S.PAIRS` on every seed where both arms finished
    (cached per pair of runs), or None if the call's time ran out first."""
    from interp.models import load_any
    frames = {}
    for seed in sorted({r.seed for r in picked}):
        have = {r.unit: r for r in picked if r.seed == seed}
        pairs = [(a, b) for a, b in S.PAIRS if a in have and b in have]
        models = {u: load_any(str(have[u].out), device=ctx.device)[0].eval() for u in {x for p in pairs for x in p}}
        for a, b in pairs:
            if ctx.out_of_time(reserve_s=60):
                return None
            frames[(f"{a} vs {b}", seed)] = TL.compare(
                {a: models[a], b: models[b]}, tok, eval_docs, seq_len=seq_len, stride=stride,
                batch_size=ctx.P["eval_batch"], out=ctx.runs / "units" / f"{have[a].name}_vs_{have[b].name}",
                progress=ctx.progress)
        del models
    return frames


def summaries(frames: dict, n_boot: int):
    """(per-seed `stratify` rows, their summary over seeds (with one seed: that seed's rows and bootstrap
    intervals), `S.finding_values` per pair and seed)."""
    per = pd.concat([tl.stratify(n_boot=n_boot).assign(pair=p, seed=s) for (p, s), tl in frames.items()],
                    ignore_index=True)
    one = per.groupby("pair").seed.nunique().max() < 2
    summ = per.drop(columns="seed") if one else S.seed_summary(per)
    vals = pd.DataFrame([dict(pair=p, seed=s, **S.finding_values(tl)) for (p, s), tl in frames.items()])
    return per, summ, vals


def figures(ctx, summ):
    """token_loss[_swa].png and token_loss_excess[_swa].png: one pair each (bars per domain, its intervals)."""
    for i, pair in enumerate(dict.fromkeys(summ.pair)):
        a, b = pair.split(" vs ")
        suffix = "" if i == 0 else "_swa" if a == "olmo3_swa" else f"_{i}"
        g = summ[summ.pair == pair]
        over = "training seeds" if "seeds" in g and g.seeds.max() > 1 else "context windows (one model pair)"
        X.save_with(ctx.out / f"token_loss{suffix}.png", lambda f, g=g, a=a, b=b: TL.plot_summary(
            g, [a, b], f, f"loss({a}) - loss({b}) per token (> 0: {b} better)\nmean and 95% interval over {over}"))
        X.save_with(ctx.out / f"token_loss_excess{suffix}.png", lambda f, g=g, a=a, b=b: TL.plot_summary(
            g, [a, b], f, f"loss({a}) - loss({b}) minus its domain's mean (> 0: {b}'s advantage larger than on the "
                          f"average token)\nmean and 95% interval over {over}", value="excess"))


def training_lines(ctx, tr: dict) -> list[str]:
    """The sweep, the seeds, the convergence count and the passes / overfit check."""
    P, val, best = ctx.P, tr["val"], tr["best"]
    L = arms_section(P, tr["cfgs"], tr["metas"], tr["steps"], tr["train_tokens"], P["seeds"])
    inc = tr["status"][~tr["status"].complete]
    if len(inc):
        L += [f"**{len(inc)} of {len(tr['status'])} runs are not finished** (budget of this call); numbers use "
              "finished runs only. Run the same command again to continue.", ""]
    L += ["## Learning-rate sweep and training seeds", "",
          "`val_acc` below is the next-token accuracy on the validation split (held out from training and from the "
          "evaluation text), the sweep's selection score; `lr_sweep.csv` also has the validation loss.", ""]
    L += X.sweep_lines(val, best, P["lrs"], P["seeds"])
    st = tr["seed_table"]
    L += [f"**Arms that did not converge: {int((st.converged != 'yes').sum())} of {len(st)}** (validation loss's "
          "95% "
          f"interval over seeds not wholly below the unigram loss of the training text, {tr['unigram']:.3f} nats; one "
          "seed gives no interval).", ""] + X.md_table(st) + [""]
    L += ["## Passes over the training text and the overfit check", "",
          "Loss on fixed windows of the training text and of the validation text at every tenth of each run (the "
          "chosen rate, mean over seeds; full table: [overfit.csv](overfit.csv)):", ""]
    L += S.overfit_lines(tr["metas"], tr["overfit"]) + [""]
    piv = tr["overfit"].pivot_table(index="step", columns="arm", values=["train_loss", "val_loss"], sort=False)
    piv.columns = [f"{arm} {'train' if k == 'train_loss' else 'val'}" for k, arm in piv.columns]
    L += X.md_table(piv.reset_index().assign(step=lambda d: d.step.astype(int).astype(str)), F3)
    L += ["", "![training](training.png)", ""]
    return L


def report(ctx, tr, corpus, user_corpus, frames, summ, vals, probes):
    """report.md: the arms and their training (``tr``, None for given checkpoints), corpus, losses per domain,
    the category tables per pair, the probes and the findings table."""
    P, tl0 = ctx.P, next(iter(frames.values()))
    n_seeds = int(summ.seeds.max()) if "seeds" in summ else 1
    over = ("95% t-interval over the training seeds of each seed's paired difference" if n_seeds > 1 else
            "95% bootstrap over context windows of one model pair (1000 resamples; not a claim about the "
            "architectures)" if tr is None else "none: one training seed")
    L = [f"`diff` = loss(A) - loss(B) in nats per token (> 0: B predicts the token better), B = the hybrid. Tokens "
         f"are scored in windows of {tl0.attrs['seq_len']} tokens with stride {tl0.attrs['stride']} (each token sees "
         f"at least {tl0.attrs['seq_len'] - tl0.attrs['stride']} tokens of context except near the start of its "
         f"document). Intervals: {over}; `*`: the interval excludes 0. The verdict rule is stated with the "
         "comparison at the end.", ""]
    if tr is not None:
        L += training_lines(ctx, tr)
    L += corpus_section(corpus, user_corpus)
    dl = S.domain_losses(frames)
    L += ["## Held-out loss per arm and domain (nats/token, mean [95% interval over seeds])", ""]
    piv = dl.assign(cell=[S.fmt3(m, lo, hi) for m, lo, hi in zip(dl.loss, dl.lo, dl.hi)]).pivot(
        index="domain", columns="arm", values="cell")
    L += X.md_table(piv.reset_index()) + [""]
    for i, pair in enumerate(dict.fromkeys(summ.pair)):
        a, b = pair.split(" vs ")
        suffix = "" if i == 0 else "_swa" if a == "olmo3_swa" else f"_{i}"
        g = summ[summ.pair == pair]
        L += [f"## {a} vs {b}: loss difference by token category", "",
              f"Mean of diff = loss({a}) - loss({b}) per category, interval, token count.", "",
              f"![token loss](token_loss{suffix}.png)", ""] + category_tables(g, "diff", "ci_lo", "ci_hi", True)
        L += [f"### {a} vs {b}: excess over the domain's mean difference", "",
              f"The category's difference minus the mean difference over all tokens of its domain (> 0: {b}'s "
              f"advantage is larger on this category than on the average token; < 0: smaller, or {a} better), per "
              "seed, then mean and interval.", "", f"![excess](token_loss_excess{suffix}.png)", ""]
        L += category_tables(g, "excess", "excess_lo", "excess_hi", False)
    L += ["Full tables: [summary.csv](summary.csv) (over seeds), [summary_seeds.csv](summary_seeds.csv) (per seed); "
          "the first seed's tokens: `tokens.parquet` (columns: " + ", ".join(tl0.columns) + ", pair).", ""]
    L += probes["lines"]
    rows = S.findings_rows(vals, set() if tr is None else set(tr["seed_table"].query("converged != 'yes'").arm))
    X.save_table(rows, ctx.out / "findings.csv")
    st = None if tr is None else tr["seed_table"]
    nc = "" if st is None else f"**Arms that did not converge: {int((st.converged != 'yes').sum())} of {len(st)}**; "
    seeds = ", ".join(map(str, P["seeds"])) if tr else "(none: given checkpoints)"
    V = [X.rule_text(__doc__), "", f"{nc}training seeds {seeds}." + (
        " Li & Merrill compared Olmo 3 7B, whose layers are mostly sliding-window, with Olmo Hybrid 7B, so `olmo3_swa "
        "vs olmo_hybrid` is the closer counterpart; `olmo3 vs olmo_hybrid` shows what the window changes." if tr else
        "") + " No setting was tuned toward the published shape.", ""]
    V += S.findings_table(rows) + [""] + probes["verdicts"]
    X.write_report(ctx, "E3 — which tokens does the hybrid predict better? (token-level loss decomposition)", L, V,
                   status=None if tr is None else tr["status"])


def probe_part(ctx, P, spec) -> dict | None:
    """The synthetic probes: {"lines": the report's section, "verdicts": its verdict lines}; None while the
    probe models are unfinished."""
    chance, chance_acc = chance_levels()
    if spec == "none":
        return {"lines": ["## Synthetic probes", "", "Skipped (`--probe-models none`).", ""], "verdicts": []}
    pm, sweep, sources = probe_models(ctx, P, spec)
    if pm is None:
        return None
    first = next(iter(pm.values()))
    ref = next(iter(first))
    trained, note = probe_note(spec, first, P)
    pdf = pd.concat([run_probes(m, ctx, P, sources[s]).assign(seed=-1 if s is None else s) for s, m in pm.items()],
                    ignore_index=True)
    X.save_table(pdf, ctx.out / "probes.parquet")
    ps = TL.paired_summary(pdf, ref=ref, by=("task", "role", "knob", "value", "seed"))
    X.save_table(ps, ctx.out / "probes_summary.csv")
    plot_probes(pdf, ctx.out / "probes.png", chance)
    L = ["## Synthetic probes", "", note, ""]
    if sweep is not None:
        L += ["Learning-rate sweep and seeds of the probe models (validation accuracy, mean over the probe tasks' "
              "grids):", ""]
        L += X.md_table(sweep[["unit", "seed", "lr", "steps_done", "steps", "val_acc"]], F3) + [""]
    L += ["Candidate loss (nats; the answer's loss among the task's candidates: 16 colours, 16 boxes, 4 closing "
          "brackets) pooled over each knob's values and training seeds (per seed and knob value: "
          "[probes_summary.csv](probes_summary.csv)).", ""]
    pooled = pdf.groupby(["task", "role", "model"], sort=False).agg(
        cand_loss=("cand_loss", "mean"), cand_acc=("correct", "mean"), n=("cand_loss", "size")).reset_index()
    L += X.md_table(pooled, F3) + ["", "![probes](probes.png)", ""]
    hyb = "gdn75" if "gdn75" in set(ps.model) else ps.model.iloc[0]
    V = ["", f"Synthetic probes, {hyb} vs {ref} (Li & Merrill 2026: hybrid better on pronoun memory and entity "
         "tracking, transformer better on bracket closing):", ""]
    return {"lines": L, "verdicts": V + verdict_probes(ps, pdf, hyb, ref, chance_acc, trained)}


# --- main ---------------------------------------------------------------------------------------

def build_parser():
    ap = X.parser(NAME, __doc__, PROFILES, seed=True)
    ap.add_argument("--model-a", help="local HF checkpoint dir (model A, e.g. the transformer); None: train a pair")
    ap.add_argument("--model-b", help="local HF checkpoint dir (model B, e.g. the hybrid); None: train a pair")
    ap.add_argument("--corpus", action="append", help="file or directory (repeatable; prefix prose:, code: or "
                                                      "markup: to fix the domain); None: text on this machine")
    ap.add_argument("--probe-models", default=None, help="comma-separated zoo models (default names or dirs) for "
                    "the synthetic probes, the first is the reference; 'train' trains them; 'none' skips; None: the "
                    "profile's")
    ap.add_argument("--seq-len", type=int_at_least(2), default=None, help="evaluation window (tokens; None: the profile's)")
    ap.add_argument("--stride", type=int_at_least(1), default=None, help="evaluation stride (None: seq_len / 2)")
    ap.add_argument("--threads", type=int_at_least(1), default=None, help="torch CPU threads (None: the profile's)")
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    with X.setup(a, NAME, PROFILES, argv, min_budget=3.0) as ctx:   # (scoring keeps 150 s) holds the writer locks
        return experiment(ctx, a)


def load_corpus(ctx, a):
    """(every document, training documents, evaluation documents) of ``--corpus`` or the default corpus."""
    P = ctx.P
    if a.corpus:
        docs = TL.user_corpus(a.corpus)
        train_docs, eval_docs = ([], docs) if a.model_a else TL.split_docs(docs, P["eval_bytes"])
    else:
        docs = TL.default_corpus(bytes_per_domain=P["train_bytes"] + P["eval_bytes"],
                                 max_doc_bytes=P["max_doc_bytes"], seed=ctx.seed)
        train_docs, eval_docs = TL.split_docs(docs, P["eval_bytes"])
        if a.model_a:
            train_docs = []
    missing = [d for d in TL.DOMAINS if not any(x.domain == d for x in eval_docs)]
    if missing and not a.corpus:
        print(f"note: no {', '.join(missing)} text found on this machine", file=sys.stderr)
    return docs, train_docs, eval_docs


def given_models(ctx, a):
    """(tokenizer, {name: model}) of ``--model-a`` / ``--model-b``."""
    from interp.models import load_any
    tok = TL.load_tokenizer(a.model_a)
    if not TL.same_tokenizer(tok, TL.load_tokenizer(a.model_b)):
        raise InterpError(f"'{a.model_a}' and '{a.model_b}' have different tokenizers; per-token losses can only "
                          "be compared on the same tokens")
    models = {}
    for s in (a.model_a, a.model_b):
        m, kind = load_any(s, device=ctx.device)
        if kind != "hf":
            raise InterpError(f"'{s}' is a zoo model: zoo models read the task vocabulary only, so the corpus "
                              "analysis needs HF checkpoints (zoo models go to --probe-models)")
        models[Path(s).name if Path(s).name not in models else s] = m.eval()
    return tok, models


def train_arms(ctx, docs, train_docs, seq_len):
    """Train (or continue) every arm's sweep and seeds; returns (the training facts for the report, the
    tokenizer, the validation documents) or (None, None, None) when nothing is ready to evaluate."""
    P = ctx.P
    train_docs, val_docs = TL.split_docs(train_docs, P["val_bytes"])
    if not train_docs or not val_docs:
        raise InterpError("no training or validation text left after the evaluation split; give a larger --corpus")
    tok = train_tokenizer(train_docs, P["vocab"], ctx.runs / "tokenizer")
    cfgs = arm_configs(len(tok), P["model"], max(P["seq_len"], seq_len), window=max(1, P["seq_len"] // 2))
    stream, val_stream = token_stream(train_docs, tok), token_stream(val_docs, tok)
    steps = n_steps(P, len(stream))
    specs = {arm: TextCfg(cfgs[arm], steps) for arm in ARMS}
    data = TextData(stream, val_stream, ctx.runs / "tokenizer")
    train = lambda runs, **kw: train_text_runs(runs, data, ctx, P, **kw)    # noqa: E731
    status, val, best, runs = X.sweep_and_seeds(ctx, specs, make, validate, train=train)
    X.save_table(status, ctx.out / "lr_sweep_status.csv")
    if not best or ctx.train_only:
        return dict(status=status, done=X.sweep_complete(status, P, len(specs))), None, None
    X.save_table(X.sweep_frame(status, runs, val), ctx.out / "lr_sweep.csv")
    picked = X.chosen(runs, best)
    metas = [run_meta(r) for r in picked]
    unigram = S.unigram_loss(stream, val_stream, len(tok))
    overfit = S.overfit_table(metas)
    X.save_table(overfit, ctx.out / "overfit.csv")
    S.plot_training(overfit, val, best, ctx.out / "training.png")
    tr = dict(status=status, done=X.sweep_complete(status, P, len(specs)), val=val, best=best, picked=picked,
              metas=metas, cfgs=cfgs, steps=steps,
              train_tokens=len(stream), unigram=unigram, overfit=overfit,
              seed_table=S.seed_table(val, best, unigram))
    return tr, tok, val_docs


def experiment(ctx, a) -> int:
    P = ctx.P
    if not ctx.progress:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    threads = a.threads or P.get("threads")
    if threads:
        torch.set_num_threads(threads)
    if ctx.train_only and a.model_a:
        raise InterpError("--train-only trains the experiment's own arms; with --model-a/--model-b there is nothing "
                          "to train")
    if (a.model_a is None) != (a.model_b is None):
        raise InterpError("give both --model-a and --model-b (or neither: the experiment trains its own arms)")
    seq_len = a.seq_len or P["eval_seq_len"]
    spec = a.probe_models or P["probe_models"]     # the synthetic probes' models
    docs, train_docs, eval_docs = load_corpus(ctx, a)
    tr, val_docs = None, []
    if a.model_a:
        tok, models = given_models(ctx, a)
        names = list(models)
    else:
        X.check_spec(ctx.runs, dict(profile=ctx.profile, seed=ctx.seed, P={k: v for k, v in P.items()
                                                                              if k not in SPEC_SKIP},
            corpus=[[d.domain, d.doc_id, hashlib.sha1(d.text.encode()).hexdigest()[:10]] for d in docs]), kind=NAME)
        ctx.P = P = {**P, "seeds": tuple(ctx.seed + s for s in P["seeds"])}    # --seed shifts the training seeds
        # on a GPU the probe models train in worker processes while this process trains the text arms
        bg = (cf.ThreadPoolExecutor(1).submit(train_probe_runs, ctx, P)
              if spec == "train" and ctx.device != "cpu" else None)
        try:
            tr, tok, val_docs = train_arms(ctx, docs, train_docs, seq_len)
        finally:        # the probe-model workers are waited for on every way out
            probe_st = bg.result()[1] if bg is not None else None
        if ctx.train_only:
            left = 0
            if spec == "train":
                if probe_st is None:
                    _, probe_st = train_probe_runs(ctx, P, progress=ctx.progress)
                left = X.n_runs({**P["probe_train"], "seeds": P["seeds"]}, 3) - int(probe_st.complete.sum())
            print(f"--train-only: text arms {'trained' if tr['done'] else 'not finished'}, {left} probe-model runs "
                  "unfinished; no evaluation", file=sys.stderr)
            return 0 if tr["done"] and not left else 3
        if tok is None:
            print("no arm has finished its learning-rate sweep yet; run the same command again to continue",
                  file=sys.stderr)
            return 3
    corpus = pd.concat([TL.corpus_table(train_docs if a.model_a else
                                        [d for d in train_docs if d not in val_docs], "train"),
                        TL.corpus_table(val_docs, "val"), TL.corpus_table(eval_docs, "eval")], ignore_index=True)
    X.save_table(corpus, ctx.out / "corpus.csv")
    if ctx.out_of_time(reserve_s=150):
        print("not enough of this call's time budget left to score the evaluation text; run the same command again "
              "to continue", file=sys.stderr)
        return 3
    # per-token losses (finished units are reused by a later call with the same models and text)
    if a.model_a:
        units = ctx.runs / "units" / ("_vs_".join(names) + "_" + checkpoint_fingerprint(a.model_a, a.model_b))
        frames = {(" vs ".join(names), 0): TL.compare(models, tok, eval_docs, seq_len=seq_len, stride=a.stride,
                                                     batch_size=P["eval_batch"], out=units, progress=ctx.progress)}
        del models
    else:
        frames = compare_seeds(ctx, tr["picked"], tok, eval_docs, seq_len, a.stride)
        if frames is None:
            print("time budget reached while scoring the evaluation text; run the same command again to continue",
                  file=sys.stderr)
            return 3
    first = min(s for _, s in frames)
    X.save_table(pd.concat([tl.assign(pair=p) for (p, s), tl in frames.items() if s == first], ignore_index=True),
                 ctx.out / "tokens.parquet")
    per, summ, vals = summaries(frames, n_boot=1000 if a.model_a else 0)
    X.save_table(per, ctx.out / "summary_seeds.csv")
    X.save_table(summ, ctx.out / "summary.csv")
    figures(ctx, summ)
    probes = probe_part(ctx, P, spec)
    if probes is None:
        print("probe models not finished (time budget); run the same command again to continue", file=sys.stderr)
        return 3
    report(ctx, tr, corpus, bool(a.corpus), frames, summ, vals, probes)
    print(f"wrote {ctx.out}/report.md")
    return 0 if (tr is None or tr["done"]) and not ctx.out_of_time() else 3   # 3: unfinished runs, call again


if __name__ == "__main__":
    X.cli(main)
