"""E3 — which tokens does the hybrid predict better? (token-level loss decomposition)

Two causal LMs that share a tokenizer read the same held-out text; every token gets both losses
and its difference ``diff = loss(A) - loss(B)`` (> 0: B, the hybrid, predicts it better),
stratified by tag family (closed-class function words vs open-class content words, from the
lexicon shipped in `interp.tokenloss`; code keywords / identifiers from Python's tokenizer), copy
features (token inside a repeated n-gram, n-gram length, distance to the earlier occurrence) and
delimiters (opening vs closing brackets / quotes / HTML tags), separately for prose, code and
markup. Library: `interp.tokenloss`.

Models: ``--model-a`` / ``--model-b`` (local HF checkpoint directories with their tokenizer, e.g.
an Olmo-3 and an Olmo-Hybrid checkpoint you have). Without them the experiment builds its own
pair, so the comparison is real: a byte-level BPE tokenizer trained on the corpus's training split
(the `tokenizers` library, nothing downloaded), an Olmo-3-style transformer (``olmo3``, all
full attention) and an Olmo-Hybrid-style model (``olmo_hybrid``: 3 Gated DeltaNet layers per
attention layer), matched in parameter count, randomly initialised and trained on the same batches.

Corpus: ``--corpus PATH`` (files / directories, ``prose:``, ``code:``, ``markup:`` prefixes), else
`interp.tokenloss.default_corpus`: Python's stdlib source (code), HTML / Markdown / RST found on disk
(markup) and the plain-text Python reference manual plus plain-text docs (prose); the report lists
the files and sizes (``corpus.csv``).

Synthetic probes: per-token losses of zoo models (default: the shipped ``transformer``, ``gdn75``,
``gdn100``; the full profile also trains a matched transformer / gdn75 / gdn100 on the probe tasks)
on ``pronoun``, ``entity_tracking`` and ``brackets``, per knob value, at the answer and (brackets)
at every closing bracket.

    python experiments/e3_token_loss.py --quick     # CPU, a few minutes
    python experiments/e3_token_loss.py --device cuda   # GPU; 7-minute calls, call again to continue
    python experiments/e3_token_loss.py --model-a ckpt/olmo3 --model-b ckpt/olmo-hybrid --corpus code:src/

Writes ``<out>/`` (default figures/e3_token_loss; figures/e3_token_loss_quick for --quick): token_loss.png,
token_loss_excess.png, summary.csv, tokens.parquet, probes.png, probes.parquet, probes_summary.csv, corpus.csv,
training.png (own pair), report.md.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import sys
from pathlib import Path

import pandas as pd
import torch

from interp import InterpError
from interp import experiment as X
from interp import tokenloss as TL
# the pair, probes and report sections live in interp.tokenloss; run_name, train_hf and overfit_note stay
# reachable as this script's names (the tests call them)
from interp.tokenloss.pair import (checkpoint_fingerprint, pair_configs, plot_training, run_name,  # noqa: F401
                                   token_stream, train_hf, train_pair, train_tokenizer)
from interp.tokenloss.probes import chance_levels, plot_probes, probe_models, probe_note, run_probes, train_probe_runs
from interp.tokenloss.report import (F3, category_tables, corpus_section, corpus_verdicts, overfit_note,  # noqa: F401
                                     pair_section, verdict_probes)

NAME = "e3_token_loss"
PROFILES = {
    # GPU: an 8-layer d=256 pair (2 learning rates each) trained on up to ~9 MB of text, evaluated on ~0.9 MB
    "full": dict(train_bytes=3_000_000, eval_bytes=300_000, val_bytes=100_000, max_doc_bytes=32_000, vocab=4096,
                 model=dict(d=256, layers=8, heads=4, head_dim=64), seq_len=512, batch=32, steps=2000,
                 lrs=(1e-3, 3e-3), warmup=200, val_windows=256, eval_seq_len=512, eval_batch=16, time_budget=7.0,
                 threads=None, pair_workers=4, probe_models="train", probe_n=256, probe_train=dict(
                     model=dict(d_model=128, n_layers=8, n_heads=4, head_dim=32), steps=2000, batch_size=64,
                     lrs=(1e-3, 3e-3), warmup=150, workers=4, val_n=128, eval_reserve=1.0)),
    # CPU, a few minutes: a 4-layer d=64 pair (2 learning rates each), 250 steps on ~1.2 MB
    "quick": dict(train_bytes=400_000, eval_bytes=40_000, val_bytes=15_000, max_doc_bytes=12_000, vocab=1024,
                  model=dict(d=64, layers=4, heads=2, head_dim=32), seq_len=128, batch=16, steps=250,
                  lrs=(3e-3, 1e-2), warmup=25, val_windows=64, eval_seq_len=128, eval_batch=16, time_budget=0,
                  threads=1, probe_models="transformer,gdn75,gdn100", probe_n=64,
                  probe_train=dict(model=dict(d_model=32, n_layers=4, n_heads=2, head_dim=16), steps=300,
                                   batch_size=32, lrs=(1e-3, 3e-3), warmup=30, workers=1, val_n=32, eval_reserve=0)),
    # the test suite: seconds
    "test": dict(train_bytes=20_000, eval_bytes=5_000, val_bytes=2_000, max_doc_bytes=3_000, vocab=300,
                 model=dict(d=16, layers=2, heads=2, head_dim=8), seq_len=32, batch=4, steps=3, lrs=(3e-3,),
                 warmup=1, val_windows=8, eval_seq_len=32, eval_batch=8, time_budget=0, threads=1,
                 probe_models="transformer,gdn75", probe_n=8,
                 probe_train=dict(model=dict(d_model=16, n_layers=4, n_heads=2, head_dim=8), steps=2, batch_size=4,
                                  lrs=(3e-3,), warmup=1, workers=1, val_n=4, eval_reserve=0),
                 probe_grid={"pronoun": {"n_distractors": [2]}, "entity_tracking": {"n_moves": [2]},
                             "brackets": {"depth": [2]}}),
}


def report(ctx, P, names, metas, corpus, user_corpus, tl, summ, pdf, ps, note, probe_sweep, chance, chance_acc,
           probe_trained=None):
    a, b = names
    L = []
    L += [f"Model A = `{a}`, model B = `{b}`; `diff` = loss(A) - loss(B) in nats per token (> 0: **{b}** "
          "predicts the token better). Tokens are scored in windows of "
          f"{tl.attrs['seq_len']} tokens with stride {tl.attrs['stride']} (each token sees at least "
          f"{tl.attrs['seq_len'] - tl.attrs['stride']} tokens of context except near the start of its document); "
          "intervals: 95% bootstrap over context windows (1000 resamples; none for a category found in fewer than "
          f"{TL.MIN_CLUSTERS} windows); `*`: the interval excludes 0.", ""]
    if metas:
        L += pair_section(P, ctx.seed, metas)
    L += corpus_section(corpus, user_corpus)
    L += ["## Held-out loss per domain", ""]
    dom = tl.groupby("domain").agg(tokens=("diff", "size"), loss_a=("loss_a", "mean"), loss_b=("loss_b", "mean"),
                                   diff=("diff", "mean")).reset_index()
    L += X.md_table(dom.rename(columns={"loss_a": f"loss {a}", "loss_b": f"loss {b}"}), F3) + [""]
    L += ["## Loss difference by token category", "",
          f"Mean of diff = loss({a}) - loss({b}) per category, 95% interval, token count.", "",
          "![token loss](token_loss.png)", ""]
    L += category_tables(summ, "diff", "ci_lo", "ci_hi", True)
    L += ["## Which tokens gain more than average (excess over the domain's mean difference)", "",
          f"A model that is better overall is better on most categories; the question *which tokens does {b} "
          f"predict better* is answered by the **excess**: the category's mean difference minus the mean difference "
          f"over all tokens of its domain (> 0: {b}'s advantage is larger than on the average token; < 0: smaller, "
          f"or {a} better). Intervals: the same cluster bootstrap, category and domain mean resampled together.", "",
          "![excess](token_loss_excess.png)", ""]
    L += category_tables(summ, "excess", "excess_lo", "excess_hi", False)
    L += ["Full table: [summary.csv](summary.csv); every token: `tokens.parquet` (columns: "
          + ", ".join(tl.columns) + ").", ""]
    L += ["## Synthetic probes", "", note, ""]
    if probe_sweep is not None:
        L += ["Learning-rate sweep of the probe models (validation accuracy, mean over the probe tasks' grids):", ""]
        L += X.md_table(probe_sweep[["arm", "lr", "steps_done", "steps", "val_acc"]], F3) + [""]
        bl = probe_sweep.sort_values("lr").groupby("arm", sort=False)["val_acc"].idxmax()
        L += X.sweep_edge_note({a: probe_sweep.loc[i, "lr"] for a, i in bl.items()}, P["probe_train"]["lrs"])
    if ps is not None and len(ps):
        L += ["Candidate loss (nats; the answer's loss among the task's candidates: 16 colours, 16 boxes, 4 closing "
              "brackets) pooled over each knob's values; diff = loss(ref) - loss(model) with a 95% bootstrap "
              "interval over examples.", ""]
        pooled = pdf.groupby(["task", "role", "model"], sort=False).agg(
            cand_loss=("cand_loss", "mean"), cand_acc=("correct", "mean"), n=("cand_loss", "size")).reset_index()
        L += X.md_table(pooled, F3) + ["", "![probes](probes.png)", "",
                                        "Per knob value: [probes_summary.csv](probes_summary.csv).", ""]
    # verdicts
    V = []
    if ps is not None and len(ps):
        ref = ps.ref.iloc[0]
        hyb = "gdn75" if "gdn75" in set(ps.model) else ps.model.iloc[0]
        V += [f"Synthetic probes, {hyb} vs {ref} (the issue's expectation: hybrid better on pronoun memory and entity "
              "tracking, transformer better on bracket closing):", ""]
        V += verdict_probes(ps, pdf, hyb, ref, chance_acc, probe_trained)
    V += corpus_verdicts(tl, summ, a, b)
    X.write_report(ctx, "E3 — which tokens does the hybrid predict better? (token-level loss decomposition)", L, V)


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
    ap.add_argument("--seq-len", type=int, default=None, help="evaluation window (tokens; None: the profile's)")
    ap.add_argument("--stride", type=int, default=None, help="evaluation stride (None: seq_len / 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (None: the profile's)")
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    with X.setup(a, NAME, PROFILES, argv) as ctx:      # holds the runs and figures directories' writer locks
        return experiment(ctx, a)


def experiment(ctx, a) -> int:
    P = ctx.P
    if not ctx.progress:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    threads = a.threads or P.get("threads")
    if threads:
        torch.set_num_threads(threads)
    if ctx.train_only and a.model_a:
        raise InterpError("--train-only trains the experiment's own pair; with --model-a/--model-b there is nothing "
                          "to train")
    if (a.model_a is None) != (a.model_b is None):
        raise InterpError("give both --model-a and --model-b (or neither: the experiment trains its own pair)")
    seq_len = a.seq_len or P["eval_seq_len"]
    spec = a.probe_models or P["probe_models"]     # the synthetic probes' models
    # corpus
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
    # models
    metas, val_docs = [], []
    if a.model_a:
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
    else:
        train_docs, val_docs = TL.split_docs(train_docs, P["val_bytes"])
        if not train_docs or not val_docs:
            raise InterpError("no training or validation text left after the evaluation split; give a larger --corpus")
        X.check_spec(ctx.runs, dict(profile=ctx.profile, seed=ctx.seed, P={k: v for k, v in P.items() if k not in (
            "time_budget", "threads", "pair_workers", "probe_n", "probe_models", "probe_grid", "probe_train",
            "eval_batch")},
            corpus=[[d.domain, d.doc_id, hashlib.sha1(d.text.encode()).hexdigest()[:10]] for d in docs]), kind=NAME)
        tok = train_tokenizer(train_docs, P["vocab"], ctx.runs / "tokenizer")
        cfgs = pair_configs(len(tok), P["model"], max(P["seq_len"], seq_len))
        stream, val_stream = token_stream(train_docs, tok), token_stream(val_docs, tok)
        # on a GPU the probe models train in worker processes while this process trains the text pair
        bg = (cf.ThreadPoolExecutor(1).submit(train_probe_runs, ctx, P)
              if spec == "train" and ctx.device != "cpu" else None)
        try:
            metas = train_pair(cfgs, stream, val_stream, tok, ctx, P)
            if metas is None:
                return 3
        finally:        # the probe-model workers are waited for on every way out
            probe_st = bg.result()[1] if bg is not None else None
        if ctx.train_only:
            left = 0
            if spec == "train":
                if probe_st is None:
                    _, probe_st = train_probe_runs(ctx, P, progress=ctx.progress)
                left = int((~probe_st.complete).sum())
            print(f"--train-only: text pair trained, {left} probe-model runs unfinished; no evaluation",
                  file=sys.stderr)
            return 0 if not left else 3
        best = {}
        for m in metas:     # lowest validation loss per architecture (ties: the smaller lr, listed first)
            if m["arch"] not in best or m["val_loss"] < best[m["arch"]]["val_loss"]:
                best[m["arch"]] = m
        for m in metas:
            m["best"] = best[m["arch"]] is m
        plot_training(metas, ctx.out / "training.png")
        from interp.models import load_any
        models = {arch: load_any(str(ctx.runs / "models" / m["name"]), device=ctx.device)[0].eval()
                  for arch, m in best.items()}
    names = list(models)
    corpus = pd.concat([TL.corpus_table(train_docs, "train"), TL.corpus_table(val_docs, "val"),
                        TL.corpus_table(eval_docs, "eval")], ignore_index=True)
    X.save_table(corpus, ctx.out / "corpus.csv")
    if ctx.out_of_time(reserve_s=150):
        print("not enough of this call's time budget left to score the evaluation text; run the same command again "
              "to continue", file=sys.stderr)
        return 3
    # per-token losses (finished units are reused by a later call with the same models and text)
    units = ctx.runs / "units" / ("_vs_".join(names) if not a.model_a else
                                  "_vs_".join(names) + "_" + checkpoint_fingerprint(a.model_a, a.model_b))
    tl = TL.compare(models, tok, eval_docs, seq_len=seq_len, stride=a.stride, batch_size=P["eval_batch"], out=units,
                    progress=ctx.progress)
    X.save_table(tl, ctx.out / "tokens.parquet")
    summ = tl.stratify()
    X.save_table(summ, ctx.out / "summary.csv")
    X.save_with(ctx.out / "token_loss.png", lambda f: tl.plot(
        f, summary=summ, title=f"loss({names[0]}) - loss({names[1]}) per token (> 0: {names[1]} better), 95% "
                               "bootstrap CI"))
    X.save_with(ctx.out / "token_loss_excess.png", lambda f: tl.plot(f, summary=summ, value="excess"))
    del models
    # synthetic probes
    chance, chance_acc = chance_levels()
    pdf = ps = sweep = trained = None
    note = "Skipped (`--probe-models none`)."
    if spec != "none":
        pm, sweep, sources = probe_models(ctx, P, spec)
        if pm is None:
            print("probe models not finished (time budget); run the same command again to continue", file=sys.stderr)
            return 3
        ref = next(iter(pm))
        trained, note = probe_note(spec, pm, P)
        pdf = run_probes(pm, ctx, P, sources)
        X.save_table(pdf, ctx.out / "probes.parquet")
        ps = TL.paired_summary(pdf, ref=ref)
        X.save_table(ps, ctx.out / "probes_summary.csv")
        plot_probes(pdf, ctx.out / "probes.png", chance)
    report(ctx, P, names, metas, corpus, bool(a.corpus), tl, summ, pdf, ps, note, sweep, chance, chance_acc, trained)
    print(f"wrote {ctx.out}/report.md")
    return 0


if __name__ == "__main__":
    X.cli(main)
