"""Markdown sections of the token-loss comparison's report: the trained pair (with an overfitting
note), the corpus, the per-category tables, and the verdicts (synthetic probes against their expected
signs; corpus categories, closing brackets first)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from interp.experiment.report import md_table, sweep_edge_note
from interp.stats import boot_ci
from interp.tokenloss.corpus import corpus_sources
from interp.tokenloss.lexicon import DOMAINS

F3 = "{:.3f}"                       # the report's tables: floats to 3 decimals
EXPECTED = {"pronoun": +1, "entity_tracking": +1, "brackets": -1}   # sign of loss(transformer) - loss(hybrid)


def overfit_note(best: list[dict], gap: float = 1.0) -> list[str]:
    """A warning when an analysed run's validation loss exceeds its final training loss by more than
    ``gap`` nats: the pair then compares how two memorising models generalise."""
    over = [m for m in best if m["val_loss"] - m["final_loss"] > gap]
    if not over:
        return []
    passes = [f", {m['steps'] * m['batch'] * m['seq_len'] / m['train_tokens']:.0f} passes over its "
              f"{m['train_tokens'] / 1e6:.2f}M training tokens" if m.get("train_tokens") else "" for m in over]
    return ["**The pair overfits its training split**: " + "; ".join(
        f"{m['name']} final training loss {m['final_loss']:.2f} vs validation {m['val_loss']:.2f} nats{x}"
        for m, x in zip(over, passes)) + ". The per-token differences below compare how two memorising models "
        "generalise; more text (`--corpus`) or fewer steps would change them.", ""]


def pair_section(P: dict, seed: int, metas: list[dict]) -> list[str]:
    """The pair trained here: its recipe, the learning-rate sweep's runs (the analysed one per
    architecture in bold) and the training figure."""
    L = ["## The model pair (trained here)", "",
         f"Byte-level BPE tokenizer ({P['vocab']} tokens, trained on the training split with `tokenizers`); "
         f"both models: {P['model']['layers']} layers, d={P['model']['d']}, {P['model']['heads']} heads of "
         f"{P['model']['head_dim']}; random init (seed {seed}), AdamW (warmup {P['warmup']}, cosine to 0.1x), "
         f"{P['steps']} steps x {P['batch']} windows of {P['seq_len']} tokens, the same windows for every run. "
         f"Each architecture gets the same learning-rate sweep ({', '.join(f'{x:g}' for x in P['lrs'])}); the "
         "run with the lowest loss on the validation split (held out from training, not the evaluation text) "
         "is the one analysed (**bold**). GDN layers trained on transformers' pure-torch path.", ""]
    L += md_table(pd.DataFrame([dict(
        run=f"**{m['name']}**" if m.get("best") else m["name"], type=m["model_type"],
        params=f"{m['params'] / 1e6:.3f}M",
        layers=" ".join("A" if k == "full_attention" else "G" for k in m["layer_types"]),
        final_train_loss=m["final_loss"], val_loss=m["val_loss"],
        train_tokens_per_s=f"{m['tokens_per_s']:.0f}") for m in metas]), F3)
    L += [""] + sweep_edge_note({m["arch"]: m["lr"] for m in metas if m.get("best")}, P["lrs"])
    L += overfit_note([m for m in metas if m.get("best")])
    return L + ["![training](training.png)", ""]


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


def _probe_verdict(sign: int, lo: float, hi: float, near: bool, unseen: list, task: str) -> str:
    if unseen:
        return (f"**not a test**: {' and '.join(f'`{m}`' for m in unseen)} never trained on {task} (what is left is "
                "transfer from other tasks)")
    if near:
        return "**inconclusive**: both models pick the right candidate at about chance"
    if (lo > 0 and sign > 0) or (hi < 0 and sign < 0):
        return "**agrees**"
    if (lo > 0 and sign < 0) or (hi < 0 and sign > 0):
        return "**disagrees**"
    return "**inconclusive** (the interval contains 0)"


def verdict_probes(ps: pd.DataFrame, df: pd.DataFrame, hybrid: str, ref: str, chance_acc: dict,
                   trained: dict | None = None) -> list[str]:
    """One line per probe task / role: the paired candidate-loss difference and whether it agrees
    with the expected sign. ``trained``: {model: tasks it was trained on, or None if unknown}; a
    task that the reference or the hybrid never saw in training is reported as not a test."""
    out = []
    for task, sign in EXPECTED.items():
        for role in [r for r in ("answer", "close") if ((ps.task == task) & (ps.role == r)).any()]:
            a = df[(df.task == task) & (df.role == role) & (df.model == ref)]
            b = df[(df.task == task) & (df.role == role) & (df.model == hybrid)]
            if a.empty or b.empty:
                continue
            keys = ["knob", "value", "example", "position"]
            j = a.merge(b, on=keys, suffixes=("_r", "_h"))
            j["diff"] = j.cand_loss_r - j.cand_loss_h
            agg = j.groupby(["knob", "value", "example"])["diff"].agg(["sum", "count"])
            lo, hi = boot_ci(agg["sum"].to_numpy(float), agg["count"].to_numpy(float), 1000,
                             np.random.default_rng(0))
            d = j["diff"].mean()
            acc_r, acc_h = j.correct_r.mean(), j.correct_h.mean()
            near = max(acc_r, acc_h) < chance_acc[task] + 0.05
            better = "hybrid" if sign > 0 else "transformer"
            unseen = [m for m in (ref, hybrid) if trained and trained.get(m) is not None and task not in trained[m]]
            v = _probe_verdict(sign, lo, hi, near, unseen, task)
            out.append(f"* {task} / {role} (expected: {better} better): loss({ref}) - loss({hybrid}) = {d:+.3f} "
                       f"[{lo:+.3f}, {hi:+.3f}] nats over all knob values; candidate accuracy {ref} {acc_r:.2f}, "
                       f"{hybrid} {acc_h:.2f} (chance {chance_acc[task]:.2f}): {v}.")
    return out


def _close_bracket_verdict(r, a: str, b: str) -> str:
    """The verdict line of the closing-bracket row ``r`` of the pooled summary (A = ``a``, B = ``b``)."""
    hyb_is_b = any(x in b.lower() for x in ("hybrid", "gdn", "deltanet", "mamba", "gla"))   # else: no verdict
    absolute = (f"; in absolute terms {a} is better (diff {r['diff']:+.3f})" if r.ci_hi < 0 else
                f"; in absolute terms {b} is still better (diff {r['diff']:+.3f})" if r.ci_lo > 0 else
                f"; in absolute terms no resolvable difference (diff {r['diff']:+.3f})")
    rel = ("inconclusive (the interval contains 0 or there is none)" if not (r.excess_lo > 0 or r.excess_hi < 0)
           else f"{b}'s advantage is {'larger' if r.excess_lo > 0 else 'smaller'} on closing brackets than on "
                f"the average token{absolute}")
    agrees = "" if not hyb_is_b or not (r.excess_lo > 0 or r.excess_hi < 0) else (
        ": **agrees** with the bracket-closing expectation (read relative to the average token)"
        if r.excess_hi < 0 else ": **disagrees** with the bracket-closing expectation")
    return (f"* closing brackets in natural text (the corpus counterpart of the bracket probe; expected: the "
            f"transformer relatively better): excess {r.excess:+.3f} [{r.excess_lo:+.3f}, {r.excess_hi:+.3f}] "
            f"(n={r.n}), {rel}{agrees}.")


def corpus_verdicts(tl: pd.DataFrame, summ: pd.DataFrame, a: str, b: str) -> list[str]:
    """The corpus lines of the verdicts: the mean difference per domain, closing brackets (the
    natural-text counterpart of the bracket probe) and the categories whose excess is significant."""
    allrows = summ[summ.domain == "all"]
    sig = allrows[(allrows.ci_lo > 0) | (allrows.ci_hi < 0)]
    V = ["", "Corpus: the issue states expectations for the synthetic probes only; closing brackets are the "
             "natural-text counterpart of the bracket probe, the other categories are reported without a verdict:",
         ""]
    dom = tl.groupby("domain")["diff"].mean()
    V += ["* overall: " + ", ".join(f"{d} {dom[d]:+.3f}" for d in DOMAINS if d in dom)
          + f" nats per token ({b if dom.mean() > 0 else a} better on average); {len(sig)} of {len(allrows)} categories "
          "(domains pooled) have a difference whose interval excludes 0."]
    cb = allrows[(allrows.facet == "delimiter") & (allrows.category == "close_bracket")]
    if len(cb):
        V.append(_close_bracket_verdict(cb.iloc[0], a, b))
    for sign, word in ((1, "larger"), (-1, "smaller")):
        ex = allrows[(allrows.excess_lo > 0) if sign > 0 else (allrows.excess_hi < 0)]
        ex = ex.reindex(ex.excess.abs().sort_values(ascending=False).index)
        V.append(f"* {b}'s advantage significantly {word} than average (domains pooled): "
                 + ("; ".join(f"{r.facet} = {r.category} {r.excess:+.3f} (diff {r.diff:+.3f}, n={r.n})"
                              for r in ex.itertuples()) or "none") + ".")
    return V
