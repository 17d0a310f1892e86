"""Markdown sections of the token-loss comparison's report: the arms trained here, the corpus, the
per-category tables, and the synthetic probes' verdicts against their expected signs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from interp.experiment.report import md_table
from interp.stats import MIN_SEEDS, boot_ci, seed_interval
from interp.tokenloss.corpus import corpus_sources
from interp.tokenloss.lexicon import DOMAINS

F3 = "{:.3f}"                       # the report's tables: floats to 3 decimals
EXPECTED = {"pronoun": +1, "entity_tracking": +1, "brackets": -1}   # sign of loss(transformer) - loss(hybrid)


def arms_section(P: dict, cfgs: dict, metas: list[dict], steps: int, train_tokens: int, seeds) -> list[str]:
    """The arms trained here: their layers and sizes, and the training recipe."""
    from interp.tokenloss.pair import layers_str, passes
    by_arm = {m["arch"]: m for m in metas}
    rows = [dict(arm=a, type=c.model_type, layers=layers_str(c),
                 window=c.sliding_window if "sliding_attention" in c.layer_types else "",
                 params=f"{by_arm[a]['params'] / 1e6:.3f}M" if a in by_arm else "",
                 mlp=c.intermediate_size) for a, c in cfgs.items()]
    return (["## The arms (trained here)", "",
             "Layers: A full attention, S sliding-window attention (window in tokens), G Gated DeltaNet. The "
             "transformers' MLP width is set to match the hybrid's parameter count; the sliding window adds no "
             "parameters. Olmo 3 uses a 4096-token window with an 8192-token pretraining context (S S S A); ours "
             f"keeps that ratio: a window of half the {P['seq_len']}-token training context.", ""]
            + md_table(pd.DataFrame(rows), F3)
            + ["", f"Byte-level BPE tokenizer ({P['vocab']} tokens, trained on the training split with `tokenizers`); "
               f"{P['model']['layers']} layers, d={P['model']['d']}, {P['model']['heads']} heads of "
               f"{P['model']['head_dim']}; AdamW (warmup {P['warmup']}, cosine to 0.1x), {steps} steps x "
               f"{P['batch']} windows of {P['seq_len']} tokens = {passes(P, steps, train_tokens):.2f} passes over "
               f"the {train_tokens / 1e6:.3f}M training tokens (windows drawn without replacement within a pass). "
               f"Training seeds {', '.join(map(str, seeds))}: seed s initialises every arm's seed-s run and draws its "
               "batches, so seed s of two arms saw the same batches. GDN layers on transformers' pure-torch path.",
               ""])


def corpus_section(corpus: pd.DataFrame, user: bool) -> list[str]:
    L = ["## Corpus", ""]
    if user:
        L += ["User-provided (`--corpus`); domains from the path prefix or the file extension.", ""]
    else:
        L += ["Assembled offline by `interp.tokenloss.default_corpus` from text that ships with this machine "
              "(seeded random draw from sorted candidate lists, documents cut at a line boundary, duplicates "
              "dropped, prose and markup must look English):", ""]
        for dom, srcs in corpus_sources().items():
            L.append(f"* {dom}: " + "; ".join(label for label, _ in srcs))
        L.append("")
    tab = corpus.groupby(["split", "domain"]).agg(documents=("doc_id", "size"), bytes=("bytes", "sum")).reset_index()
    L += md_table(tab, F3) + ["", "Evaluation documents (all files of both splits, with sha1 prefixes, are in "
                                  "[corpus.csv](corpus.csv)):", ""]
    ev = corpus[corpus.split == "eval"]
    for dom, g in ev.groupby("domain", sort=False):
        L.append(f"* {dom}: " + ", ".join(f"`{'/'.join(Path(d).parts[-2:]) if '/' in d else d}` ({b / 1000:.1f} kB)"
                                          for d, b in zip(g.doc_id, g.bytes)))
    return L + [""]


def _sig(lo, hi) -> str:
    if np.isnan(lo) or np.isnan(hi):
        return ""
    return " *" if lo > 0 or hi < 0 else ""


def category_tables(summ: pd.DataFrame, value: str, lo_col: str, hi_col: str, with_n: bool) -> list[str]:
    """One markdown table per facet of a `stratify` summary: category x domain cells ``value [lo, hi]``
    (``*``: the interval excludes 0), with the token count if ``with_n``."""
    out = []
    for f, g in summ.groupby("facet", sort=False):
        piv = g.assign(cell=[f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]{_sig(lo, hi)}" + (f" (n={n})" if with_n else "")
                             for d, lo, hi, n in zip(g[value], g[lo_col], g[hi_col], g.n)]) \
               .pivot_table(index="category", columns="domain", values="cell", aggfunc="first", sort=False)
        piv = piv[[c for c in list(DOMAINS) + ["all"] if c in piv.columns]]
        out += [f"### {f}", "", "| category | " + " | ".join(piv.columns) + " |",
                "|---" * (len(piv.columns) + 1) + "|"]
        out += ["| " + str(i) + " | " + " | ".join("" if (isinstance(x, float) and np.isnan(x)) else str(x)
                                                  for x in r) + " |" for i, r in zip(piv.index, piv.values)]
        out.append("")
    return out


def _probe_verdict(sign: int, lo: float, hi: float, near: bool, unseen: list, task: str, seeds: int) -> str:
    if unseen:
        return (f"**not a test**: {' and '.join(f'`{m}`' for m in unseen)} never trained on {task} (what is left is "
                "transfer from other tasks)")
    if near:
        return "**inconclusive**: both models pick the right candidate at about chance"
    side = ("the expected sign" if (lo > 0 and sign > 0) or (hi < 0 and sign < 0) else
            "the opposite sign" if (lo > 0 and sign < 0) or (hi < 0 and sign > 0) else "")
    if not side:
        return "**inconclusive** (the interval contains 0" + (")" if seeds > 1 else " or there is none)")
    if seeds >= MIN_SEEDS:
        return "**agrees**" if side == "the expected sign" else "**disagrees**"
    if seeds > 1:
        return f"**inconclusive**: {seeds} training seeds, fewer than {MIN_SEEDS} (the interval has {side})"
    return (f"**inconclusive**: one model per arm, so there is no interval over training seeds (over the test "
            f"examples of these two models the difference has {side})")


def verdict_probes(ps: pd.DataFrame, df: pd.DataFrame, hybrid: str, ref: str, chance_acc: dict,
                   trained: dict | None = None) -> list[str]:
    """One line per probe task / role: the paired candidate-loss difference, loss(ref) - loss(hybrid), and
    whether it agrees with the expected sign. With two or more training seeds (column ``seed``) the interval is
    a 95% t-interval over the seeds' mean differences (seed s against seed s); with one model per arm it is a
    95% bootstrap over test examples and the verdict at most inconclusive. ``trained``: {model: tasks it was
    trained on, or None if unknown}; a task that the reference or the hybrid never saw is not a test."""
    out = []
    seeded = "seed" in df and df["seed"].nunique() > 1
    for task, sign in EXPECTED.items():
        for role in [r for r in ("answer", "close") if ((ps.task == task) & (ps.role == r)).any()]:
            a = df[(df.task == task) & (df.role == role) & (df.model == ref)]
            b = df[(df.task == task) & (df.role == role) & (df.model == hybrid)]
            if a.empty or b.empty:
                continue
            keys = ["knob", "value", "example", "position"] + (["seed"] if "seed" in df else [])
            j = a.merge(b, on=keys, suffixes=("_r", "_h"))
            j["diff"] = j.cand_loss_r - j.cand_loss_h
            if seeded:
                d, lo, hi = seed_interval(j.groupby("seed")["diff"].mean())
                over = f"95% interval over {j.seed.nunique()} training seeds"
            else:
                agg = j.groupby(["knob", "value", "example"])["diff"].agg(["sum", "count"])
                lo, hi = boot_ci(agg["sum"].to_numpy(float), agg["count"].to_numpy(float), 1000,
                                 np.random.default_rng(0))
                d, over = j["diff"].mean(), "95% bootstrap over examples"
            acc_r, acc_h = j.correct_r.mean(), j.correct_h.mean()
            near = max(acc_r, acc_h) < chance_acc[task] + 0.05
            better = "hybrid" if sign > 0 else "transformer"
            unseen = [m for m in (ref, hybrid) if trained and trained.get(m) is not None and task not in trained[m]]
            v = _probe_verdict(sign, lo, hi, near, unseen, task, j.seed.nunique() if seeded else 1)
            out.append(f"* {task} / {role} (Li & Merrill 2026: {better} better): loss({ref}) - loss({hybrid}) = "
                       f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}] nats over all knob values ({over}); candidate accuracy "
                       f"{ref} {acc_r:.2f}, {hybrid} {acc_h:.2f} (chance {chance_acc[task]:.2f}): {v}.")
    return out
