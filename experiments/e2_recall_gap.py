"""E2 — the recall gap against the attention ratio (after "From Recall to Reasoning: Understanding
the Role of Associative Memory in Hybrid Architectures", ICLR 2026 submission; the controlled
hybrid study).

Zoo models of one size and one parameter count: mixer in {gdn, gla, mamba2} x layout in
{50, 75, 83, 100} (% recurrent layers) plus the transformer, all trained on one mixture of
``mqar`` (recall), ``state_recall`` (state tracking) and ``word_problems`` (multi-step arithmetic
word problems with exact answers). Every arm gets the same learning-rate sweep; the report uses
each arm's best run (validation accuracy) and lists the sweep. Arms with attention start with the
trainer's induction warm-up (``interp.train.default_induction_steps``), as the shipped defaults did;
attention-free arms (``<mixer>100``) get none. Reported:

* accuracy against the attention percentage, per task; ``mqar`` against the number of pairs, from
  few to past the training range, and against model width (a transformer and ``gdn100`` at more
  widths: recurrent recall should need width that grows with the pairs, attention not);
* parallel test-time scaling: majority voting over N sampled answers (N = 1..64, temperature 0.8,
  top-p 0.9), accuracy against N per model (and pass@N, the chance that any sample is right);
* attention placement for the 83% layout: the preset ({5,11} at 12 layers) vs the start of each
  period ({0,6}) vs the last layer only;
* a mechanical error taxonomy of the wrong word-problem answers (the generator knows every fact:
  `interp.tasks.word_problems.classify`), against the attention percentage;
* optionally (``--judge PATH``, off by default) an LLM judge from a local Hugging Face model with
  an 8-category rubric, on the same wrong answers rendered as text; its labels are compared with
  the mechanical ones.

    python experiments/e2_recall_gap.py --quick      # CPU, a few minutes, tiny models
    python experiments/e2_recall_gap.py              # GPU: 8.5-minute calls; call again to continue

Writes ``--out`` (default figures/e2_recall_gap; figures/e2_recall_gap_quick for --quick): attention.png,
sweeps.png, width.png, votes.png, placement.png, taxonomy.png, results.csv, votes.csv, taxonomy.csv, lr_sweep.csv
(judge.csv) and report.md; checkpoints and cached evaluations go to ``--runs`` (default runs/e2_recall_gap[_quick]).
Also ``interp run experiments/e2_recall_gap.toml``.

Sizing of the full profile (38 runs of 1200 steps, 12 layers, d=128; main arms first, then placement,
then width): op events per training step counted on CPU (torch profiler) are 5.4k (transformer),
9.2k-12.9k (gdn50..gdn100), 8.1k-10.7k (gla), 7.0k-8.6k (mamba2); at the ~13 us per op event per
process measured when the default set trained on the H100, that is 94 process-minutes: about 9.5
minutes for 10 parallel processes if they scale, 16 if they give 6x, i.e. two (or three) calls.
GLA's pure-torch scan holds [B, H, 64, 64, K] tensors (about 0.8 GB per layer at batch 64), so runs
are started only while their estimated memory (`gpu_gb`) fits in 60 GB.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from interp import InterpError
from interp import experiment as X
from interp import tasks as T
from interp.tasks import word_problems as W
from interp.tasks.vocab import NUMBERS, VOCAB
from interp.train import answer_accuracy
from interp.zoo import ZooConfig
from interp.zoo.layouts import PERCENTS

NAME = "e2_recall_gap"

TASKS = ("mqar", "state_recall", "word_problems")
MIXERS = ("gdn", "gla", "mamba2")
PCTS = (50, 75, 83, 100)
# training caps keep every sequence within two scan chunks (<= 128 tokens): memory of 10 parallel runs
GRID_MAX = {"mqar": {"seq_len": 128}, "state_recall": {"n_steps": 16}, "word_problems": {"n_steps": 8}}
SWEEPS = {"mqar": ("n_pairs", [2, 4, 8, 16, 32, 48, 64]), "state_recall": ("n_steps", [2, 4, 8, 16, 32]),
          "word_problems": ("n_steps", [0, 1, 2, 4, 8, 16])}
TAXONOMY_KNOBS = {"n_steps": 4, "n_distractors": 4}
VOTE_TASKS = ("word_problems", "mqar")
VOTE_NS = (1, 2, 4, 8, 16, 32, 64)
TEMPERATURE, TOP_P = 0.8, 0.9
VAL_SEED, TEST_SEED, VOTE_SEED = 99, 123, 321

PROFILES = {
    # GPU: 19 arms x 2 lrs = 38 runs of 12 layers, d=128, in parallel processes (two 8.5-minute calls)
    "full": dict(model=dict(d_model=128, n_layers=12, n_heads=4, head_dim=32), mixers=MIXERS, pcts=PCTS,
                 widths=(64, 256), width_archs=("transformer", "gdn100"), steps=1200, batch_size=64,
                 lrs=(3e-3, 1e-3), warmup=100, workers=12, gpu_gb=60, time_budget=8.5, eval_reserve=2.0,
                 val_n=128, eval_n=256, vote_n=256, tax_n=512),
    # CPU, a few minutes: tiny models, few steps, one lr (numbers near chance; checks the pipeline)
    "quick": dict(model=dict(d_model=16, n_layers=6, n_heads=2, head_dim=8, mamba_head_dim=8, mamba_state=8,
                             gla_low_rank=4), mixers=MIXERS, pcts=PCTS, widths=(32,),
                  width_archs=("transformer", "gdn100"), steps=60, batch_size=16, lrs=(3e-3,), warmup=10, gpu_gb=None,
                  workers=1, time_budget=0, eval_reserve=0, val_n=32, eval_n=64, vote_n=64, tax_n=128),
    # the test suite
    "test": dict(model=dict(d_model=16, n_layers=6, n_heads=2, head_dim=8, mamba_head_dim=8, mamba_state=8,
                            gla_low_rank=4), mixers=("gdn",), pcts=(83, 100), widths=(8,),
                 width_archs=("transformer",), steps=2, batch_size=4, lrs=(3e-3, 1e-3), warmup=1, workers=1,
                 gpu_gb=None,
                 time_budget=0, eval_reserve=0, val_n=8, eval_n=8, vote_n=8, tax_n=16),
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


def plan(P, root, device):
    A = arms(P)
    prio = {a: {"main": 0, "placement": 1, "width": 2}[s["group"]] for a, s in A.items()}
    specs = {a: {"model": s["model"]} for a, s in A.items()}
    runs = X.make_runs(root, specs, P["lrs"], priority=prio, tasks=list(TASKS), grid_max=GRID_MAX,
                       steps=P["steps"], batch_size=P["batch_size"], warmup=P["warmup"],
                       eval_every=max(1, P["steps"] // 4), eval_n=128, save_every=max(50, P["steps"] // 10),
                       device=device, scan_backend="reference", seed=0)
    return A, runs


# --- sampling and voting -----------------------------------------------------------------------

def sample_answers(logits: torch.Tensor, k: int, temperature=TEMPERATURE, top_p=TOP_P, seed=0) -> torch.Tensor:
    """k samples per row from softmax(logits / temperature) restricted to the top-p nucleus
    (the smallest set of most likely tokens whose mass reaches top_p). logits [n, V] -> [n, k]."""
    probs = (logits.float() / temperature).softmax(-1)
    sp, si = probs.sort(-1, descending=True)
    keep = sp.cumsum(-1) - sp < top_p          # a token is kept if the mass before it is < top_p
    sp = torch.where(keep, sp, torch.zeros_like(sp))
    g = torch.Generator(device="cpu").manual_seed(seed)
    draws = torch.multinomial(sp.cpu() / sp.sum(-1, keepdim=True).cpu(), k, replacement=True, generator=g)
    return si.cpu().gather(1, draws)


def majority(samples: torch.Tensor, n_vocab: int) -> torch.Tensor:
    """The most frequent token per row of samples [n, N]; ties go to the one sampled first."""
    n, N = samples.shape
    counts = torch.zeros(n, n_vocab).scatter_add_(1, samples, torch.ones(n, N))
    first = torch.full((n, n_vocab), float(N))
    first.scatter_reduce_(1, samples, torch.arange(N, dtype=torch.float).expand(n, N), reduce="amin")
    return (counts - first / (N + 1)).argmax(-1)


def vote_curve(samples: torch.Tensor, answers: torch.Tensor, ns=VOTE_NS, n_vocab=len(VOCAB)) -> list[dict]:
    """Majority-vote accuracy and pass@N for each N, averaged over the disjoint groups of N of
    the samples [n, K] (K // N groups)."""
    K = samples.shape[1]
    rows = []
    for N in ns:
        if N > K:
            continue
        groups = samples[:, : (K // N) * N].reshape(samples.shape[0], K // N, N)
        maj = torch.stack([majority(groups[:, g], n_vocab) for g in range(groups.shape[1])], 1)
        acc = (maj == answers[:, None]).float().mean().item()
        cover = (groups == answers[:, None, None]).any(-1).float().mean().item()
        rows.append(dict(N=N, majority_acc=acc, pass_at_n=cover, groups=K // N))
    return rows


@torch.no_grad()
def answer_logits(model, batch, chunk: int = 256) -> torch.Tensor:
    """Logits at each example's last answer position [n, V]."""
    out = []
    ap = batch.answer_pos[:, -1]
    for s in range(0, batch.n, chunk):
        lg = model(batch.tokens[s:s + chunk].to(model.device))
        out.append(lg[torch.arange(lg.shape[0], device=lg.device), ap[s:s + chunk].to(lg.device)].float().cpu())
    return torch.cat(out)


# --- the optional LLM judge ---------------------------------------------------------------------

RUBRIC = {
    "key_value_binding": "used a quantity that belongs to another person or item, or misread a given number",
    "state_tracking": "used an out-of-date value of the right quantity (missed a later change)",
    "context_synthesis": "used a number that is irrelevant to the question (a distractor)",
    "calculation": "set the problem up right but made an arithmetic slip",
    "goal_interpretation": "answered an intermediate or different quantity than the one asked for",
    "operation": "applied the wrong operation (e.g. added instead of subtracting, or a transfer the wrong way)",
    "incomplete": "gave no final number or stopped before the last step",
    "other": "none of the above",
}


def problem_text(words) -> str:
    """A word problem's words as English sentences (for a judge)."""
    words = [w for w in words if w not in ("<bos>", "<pad>")]
    qi = len(words) - 1 - words[::-1].index("?")
    item = words[qi + 3]
    out, cur = [], []
    cap = str.capitalize
    for w in words[:qi]:
        if w != ";":
            cur.append(w)
            continue
        a, verb, x = cur[0], cur[1], cur[2]
        if verb == "has" and len(cur) == 5:
            out.append(f"{cap(a)} has {cur[4]} more {item} than {cap(x)}.")
        elif verb == "has":
            out.append(f"{cap(a)} has {x} {cur[3]}.")
        elif verb == "+=":
            out.append(f"{cap(a)} gets {x} more {item}.")
        elif cur[3].startswith("box"):
            out.append(f"{cap(a)} puts {x} {item} into {cur[3]}.")
        else:
            out.append(f"{cap(a)} gives {x} {item} to {cap(cur[3])}.")
        cur = []
    who = [w for w in words[qi + 1:qi + 3] if w != "_"]
    q = (f"How many {item} does {cap(who[0])} have now?" if len(who) == 1 else
         f"How many {item} do {cap(who[0])} and {cap(who[1])} have together now?")
    return " ".join(out + [q])


def judge_prompt(problem: str, correct, answer) -> str:
    cats = "\n".join(f"- {k}: {v}" for k, v in RUBRIC.items())
    return (f"A student answered a math word problem wrongly. Classify the error into exactly one category.\n\n"
            f"Problem: {problem}\nCorrect answer: {correct}\nStudent's answer: {answer}\n\nCategories:\n{cats}\n\n"
            "Reply with the category name only.\nCategory:")


def parse_judgement(text: str) -> str:
    """The first rubric category named in the judge's reply ('other' if none)."""
    t = text.lower().replace("-", "_").replace(" ", "_")
    hits = [(t.find(k), k) for k in RUBRIC if k in t]
    return min(hits)[1] if hits else "other"


def judge_errors(items, judge: Callable[[str], str]) -> list[str]:
    """items: [(problem text, correct answer, given answer)]; judge: prompt -> reply text."""
    return [parse_judgement(judge(judge_prompt(p, c, a))) for p, c, a in items]


def hf_judge(path: str, device: str = "cpu", max_new_tokens: int = 12) -> Callable[[str], str]:
    """A judge from a local Hugging Face causal LM directory (no downloads), greedy decoding."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    p = Path(path)
    if not (p / "config.json").is_file():
        raise InterpError(f"--judge '{path}' is not a local Hugging Face model directory (no config.json)")
    tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(p), local_files_only=True).to(device).eval()

    def judge(prompt: str) -> str:
        ids = tok(prompt, return_tensors="pt").to(device)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id or tok.eos_token_id)
        return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    return judge


# --- evaluation units ---------------------------------------------------------------------------

def validate(runs, P, root, device, deadline):
    rows = []
    for r in runs:
        if X.out_of_time(deadline):
            break

        def one(r=r):
            m = X.load_run(r, device).set_scan_backend("reference")
            accs = {t: answer_accuracy(m, T.generate(t, P["val_n"], seed=VAL_SEED).to(device)) for t in TASKS}
            return pd.DataFrame([{"arm": r.arm, "lr": r.lr, "val_acc": float(np.mean(list(accs.values()))),
                                  **{f"val_{t}": a for t, a in accs.items()}}])
        rows.append(X.ResultLog(root / "eval" / f"val_{r.name}.csv").once(one))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["arm", "lr", "val_acc"])


def evaluate_arm(arm, spec, run, P, root, device):
    """Accuracy sweeps, voting curves and the error taxonomy of one arm's best run (cached)."""
    m = X.load_run(run, device).set_scan_backend("reference")
    info = dict(arm=arm, mixer=spec["mixer"], attn_pct=spec["attn_pct"], group=spec["group"], width=spec["width"])

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

    def votes():
        rows = []
        for t in VOTE_TASKS:
            b = T.generate(t, P["vote_n"], seed=VOTE_SEED)
            lg = answer_logits(m, b)
            ans = b.answers[:, -1]
            smp = sample_answers(lg, max(VOTE_NS), seed=VOTE_SEED)
            greedy = (lg.argmax(-1) == ans).float().mean().item()
            rows += [dict(**info, task=t, greedy_acc=greedy, **r) for r in vote_curve(smp, ans)]
        return pd.DataFrame(rows)

    def taxonomy():
        b = T.generate("word_problems", P["tax_n"], seed=TEST_SEED, **TAXONOMY_KNOBS)
        pred = answer_logits(m, b).argmax(-1)
        kinds = [W.classify(b.words(i)[:-1], VOCAB.words[int(p)]) for i, p in enumerate(pred)]
        rows = [dict(**info, kind=k, count=kinds.count(k), n=len(kinds)) for k in ["correct"] + W.ERROR_TYPES]
        wrong = pd.DataFrame([dict(arm=arm, i=i, problem=" ".join(b.words(i)[:-1]), correct=b.words(i)[-1],
                                   answer=VOCAB.words[int(p)], kind=k)
                              for i, (p, k) in enumerate(zip(pred, kinds)) if k != "correct"])
        X.ResultLog(root / "eval" / f"wrong_{run.name}.csv").replace(wrong)
        return pd.DataFrame(rows)
    d = root / "eval"
    return (X.ResultLog(d / f"acc_{run.name}.csv").once(acc), X.ResultLog(d / f"votes_{run.name}.csv").once(votes),
            X.ResultLog(d / f"taxonomy_{run.name}.csv").once(taxonomy))


def chance_taxonomy(n: int) -> pd.DataFrame:
    """The base rate of each error type: the types a wrong answer drawn uniformly from the other
    numbers 0..63 would get, on the taxonomy problems (a big set, e.g. other people's values,
    catches many guesses; compare model shares with these)."""
    b = T.generate("word_problems", n, seed=TEST_SEED, **TAXONOMY_KNOBS)
    tot = dict.fromkeys(["correct"] + W.ERROR_TYPES, 0.0)
    for i in range(n):
        words, ans = b.words(i)[:-1], int(b.words(i)[-1])
        for v in range(len(NUMBERS)):
            if v != ans:
                tot[W.classify(words, v)] += 1 / (len(NUMBERS) - 1)
    return pd.DataFrame([dict(arm="uniform guess", mixer="chance", attn_pct=-1, group="chance", width=0, kind=k,
                              count=c, n=n) for k, c in tot.items()])


def wrong_shares(tax: pd.DataFrame) -> pd.DataFrame:
    """Per arm: accuracy and the share of each error type among the wrong answers."""
    rows = []
    for arm, g in tax.groupby("arm", sort=False):
        c = g.set_index("kind")["count"]
        wrong = c.drop("correct").sum()
        rows.append({"arm": arm, "attn_pct": g.attn_pct.iloc[0], "accuracy": c["correct"] / g.n.iloc[0],
                     **{k: (c[k] / wrong if wrong else float("nan")) for k in W.ERROR_TYPES}})
    return pd.DataFrame(rows)


# --- figures ------------------------------------------------------------------------------------

MIXER_COLOR = {"gdn": "C1", "gla": "C2", "mamba2": "C3", "transformer": "C0"}


def plot_attention(acc, path):
    plt = X.pyplot()
    main = acc[(acc.group == "main") & (acc.knob == "default")]
    mq = acc[(acc.group == "main") & (acc.task == "mqar") & (acc.value == "32")].assign(task="mqar (32 pairs)")
    d = pd.concat([main, mq])
    panels = list(dict.fromkeys(d.task))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, t in zip(axes[0], panels):
        sub = d[d.task == t]
        tr = sub[sub.mixer == "transformer"]
        for mixer, g in sub[sub.mixer != "transformer"].groupby("mixer", sort=False):
            g = g.sort_values("attn_pct")
            ax.plot(g.attn_pct, g.accuracy, marker="o", color=MIXER_COLOR[mixer], label=mixer)
        if len(tr):
            ax.plot(tr.attn_pct, tr.accuracy, marker="*", ms=12, ls="none", color=MIXER_COLOR["transformer"],
                    label="transformer")
        ax.set_title(t, fontsize=10)
        ax.set_xlabel("attention layers (%)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("answer accuracy")
    axes[0, 0].legend(fontsize=7)
    X.save_figure(fig, path, 110)


def _task_by_mixer(df):
    """A figure with one panel per (task, recurrent mixer) of the main arms; yields each panel
    with the rows of that mixer's models and the transformer."""
    plt = X.pyplot()
    main = df[df.group == "main"]
    tasks = list(dict.fromkeys(main.task))
    mixers = [m for m in MIXER_COLOR if m != "transformer" and m in set(main.mixer)]
    fig, axes = plt.subplots(len(tasks), len(mixers), figsize=(4 * len(mixers), 3.1 * len(tasks)), squeeze=False)
    panels = [(axes[i, j], t, m, main[(main.task == t) & main.mixer.isin([m, "transformer"])])
              for i, t in enumerate(tasks) for j, m in enumerate(mixers)]
    return fig, panels


def plot_sweeps(acc, path):
    fig, panels = _task_by_mixer(acc[acc.knob != "default"])
    for ax, t, mixer, sub in panels:
        for arm, g in sub.groupby("arm", sort=False):
            ax.plot(g.value.astype(str), g.accuracy, marker="o", label=f"{arm} ({g.attn_pct.iloc[0]}% attn)",
                    color="C0" if arm == "transformer" else None, ls=":" if arm == "transformer" else "-")
        out = sub[~sub.in_training.astype(bool)]
        if len(out):
            xs = list(dict.fromkeys(sub.value.astype(str)))
            first = xs.index(str(out.value.iloc[0]))
            ax.axvspan(first - 0.5, len(xs) - 0.5, color="gray", alpha=0.12, lw=0)
        ax.set_title(f"{t}: {mixer}", fontsize=9)
        ax.set_xlabel(sub.knob.iloc[0] if len(sub) else "")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    X.save_figure(fig, path, 100)


def plot_width(acc, path):
    plt = X.pyplot()
    d = acc[(acc.task == "mqar") & (acc.knob == "n_pairs")]
    archs = sorted({a.split("-d")[0] for a in d[d.group == "width"].arm})
    if not archs:
        return False
    fig, axes = plt.subplots(1, len(archs), figsize=(4.4 * len(archs), 3.4), squeeze=False)
    for ax, a in zip(axes[0], archs):
        sub = d[(d.arm == a) | d.arm.str.startswith(f"{a}-d")]
        for w, g in sorted(sub.groupby("width"), key=lambda x: x[0]):
            ax.plot(g.value.astype(str), g.accuracy, marker="o", label=f"d={w}")
        ax.set_title(f"mqar: {a}, widths", fontsize=10)
        ax.set_xlabel("n_pairs")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("answer accuracy")
    X.save_figure(fig, path, 110)
    return True


def plot_votes(votes, path):
    fig, panels = _task_by_mixer(votes)
    for ax, t, mixer, sub in panels:
        for k, (arm, g) in enumerate(sub.groupby("arm", sort=False)):
            c = "C0" if arm == "transformer" else f"C{k + 1}"
            ax.plot(g.N, g.majority_acc, marker="o", color=c, label=f"{arm} ({g.attn_pct.iloc[0]}%)")
            ax.plot(g.N, g.pass_at_n, ls=":", color=c, lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{t}: {mixer} (solid: majority, dotted: pass@N)", fontsize=8)
        ax.set_xlabel("N samples")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    X.save_figure(fig, path, 100)


def plot_placement(acc, arms_, path):
    plt = X.pyplot()
    names = [a for a, s in arms_.items() if s["group"] == "placement"]
    names = [a for a in arms_ if a.startswith("gdn83")] + names
    d = acc[acc.arm.isin(names) & (acc.knob == "default")]
    if d.empty:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.4))
    tasks = list(dict.fromkeys(d.task))
    present = [a for a in names if a in set(d.arm)]
    w = 0.8 / max(1, len(present))
    for k, a in enumerate(present):
        g = d[d.arm == a].set_index("task").reindex(tasks)
        layers = ZooConfig(vocab_size=len(VOCAB), **arms_[a]["model"]).attention_layers
        ax.bar(np.arange(len(tasks)) + k * w, g.accuracy, w, label=f"{a}: attention at {layers}")
    ax.set_xticks(np.arange(len(tasks)) + w * (len(present) - 1) / 2, tasks)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("answer accuracy")
    ax.set_title("attention placement (83% recurrent)", fontsize=10)
    ax.legend(fontsize=7)
    X.save_figure(fig, path, 110)
    return True


def plot_taxonomy(tax, path):
    plt = X.pyplot()
    d = tax[tax.group == "main"]
    mixers = [m for m in MIXER_COLOR if m != "transformer" and m in set(d.mixer)]
    fig, axes = plt.subplots(1, len(mixers), figsize=(4.6 * len(mixers), 3.6), squeeze=False, sharey=True)
    for ax, mixer in zip(axes[0], mixers):
        sub = d[d.mixer.isin([mixer, "transformer"])]
        arms_ = sub.drop_duplicates("arm").sort_values("attn_pct")
        x = np.arange(len(arms_))
        bottom = np.zeros(len(arms_))
        for k, kind in enumerate(W.ERROR_TYPES):
            v = np.array([sub[(sub.arm == a) & (sub.kind == kind)].eval("count / n").sum() for a in arms_.arm])
            ax.bar(x, v, 0.7, bottom=bottom, label=kind, color=f"C{k}")
            bottom += v
        ax.set_xticks(x, [f"{a}\n{p}%" for a, p in zip(arms_.arm, arms_.attn_pct)], fontsize=7)
        ax.set_title(f"wrong answers by type: {mixer}", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    axes[0, 0].set_ylabel("fraction of problems")
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    X.save_figure(fig, path, 110)


# --- report ---------------------------------------------------------------------------------------

def _mono(xs, ys):
    """Spearman rank correlation (no scipy)."""
    if len(xs) < 2 or np.std(xs) == 0 or np.std(ys) == 0:
        return float("nan")
    rx, ry = pd.Series(xs).rank().values, pd.Series(ys).rank().values
    return float(np.corrcoef(rx, ry)[0, 1])


STRONG_RHO = 0.8   # a "clear trend" over the 4 attention ratios of one mixer: (nearly) monotone


def shape_verdicts(acc, votes, tax, chance) -> list[str]:
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
                   f"accuracy with attention % per mixer: " + ", ".join(f"{m} {r:+.2f}" for m, r in rhos.items())
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
    vw = votes[(votes.group == "main") & (votes.task == "word_problems")]
    if len(vw):
        pv = vw.pivot_table(index="arm", columns="N", values="majority_acc")
        gain = pv[pv.columns.max()] - pv[pv.columns.min()]
        at64 = vw[vw.N == vw.N.max()]
        rho = _mono(at64.attn_pct.values, at64.majority_acc.values)
        out.append(f"* Majority voting helps, and more attention helps it more (paper): word problems, gain from N=1 "
                   f"to N={int(vw.N.max())} per model: median {gain.median():+.2f} (range {gain.min():+.2f}.."
                   f"{gain.max():+.2f});"
                   f" rank correlation of accuracy at N={int(vw.N.max())} with attention % {rho:+.2f}. With one-token "
                   "answers the vote converges to the mode of the sampling distribution, i.e. about the greedy answer, "
                   "so gains are bounded by greedy accuracy (`greedy_acc` in votes.csv): "
                   + ("**inconclusive** (every model near chance, greedy accuracy < 0.1)" if vw.greedy_acc.max() < 0.1
                      else "**agrees**" if gain.median() > 0 and rho > 0 else "**disagrees / not shown**") + ".")
    t0 = tax[(tax.group == "main") & (tax.attn_pct == 0)]
    if len(t0):
        wrong = t0[t0.kind.isin(W.ERROR_TYPES)].groupby("kind")["count"].sum()
        mech = wrong.drop("other", errors="ignore")
        top = mech.idxmax() if mech.sum() else "none"
        share = wrong / max(wrong.sum(), 1)
        base = chance.set_index("kind")["count"].reindex(W.ERROR_TYPES) / chance["count"].sum()
        over = share.get("key_value_binding", 0) / max(base["key_value_binding"], 1e-9)
        out.append(f"* Recall (binding) errors are the main error of attention-free models (paper, via an LLM judge): "
                   "our "
                   f"mechanical taxonomy over the attention-free models counts " + ", ".join(
                       f"{k} {int(v)}" for k, v in wrong.sort_values(ascending=False).items())
                   + f"; the most frequent classified type is {top}; binding's share of the wrong answers is "
                   f"{share.get('key_value_binding', 0):.2f} against {base['key_value_binding']:.2f} for uniform "
                   "guessing "
                   f"({over:.1f}x): "
                   + ("**inconclusive** (no classified errors)" if top == "none" else
                      "**inconclusive** (these models are near chance, accuracy < 0.1: their errors show which "
                      "numbers they emit, not how they reason)"
                      if t0[t0.kind == "correct"]["count"].sum() < 0.1 * t0.drop_duplicates("arm")["n"].sum() else
                      "**agrees**" if top == "key_value_binding" and over > 1.2 else
                      "**not shown** (binding is the largest type but not above its base rate)"
                      if top == "key_value_binding" else "**disagrees**") + ".")
    return out


def report(ctx, A, status, val, best, acc, votes, tax, chance, judged, has_width, has_place):
    P, profile = ctx.P, ctx.profile
    L = X.runs_note(status)
    mp = P["model"]
    L += [f"Profile `{profile}`: {mp['n_layers']} layers, d={mp['d_model']}; every model's SwiGLU width is matched to "
          f"the transformer's parameter count at its width ({X.n_params(A['transformer']['model']) / 1e6:.3f}M at "
          f"d={mp['d_model']}). Training: the task mixture {', '.join(TASKS)} (round robin), {P['steps']} steps x "
          "batch "
          f"{P['batch_size']}, one difficulty knob drawn from its grid per batch, capped at {GRID_MAX}; learning rates "
          f"{', '.join(f'{x:g}' for x in P['lrs'])} for every arm, best by validation accuracy (mean over the three "
          f"tasks at default knobs, {P['val_n']} examples each, seed {VAL_SEED}). Test: {P['eval_n']} examples per "
          "point, "
          f"seed {TEST_SEED}.", ""]
    inc = status[~status.complete]
    if len(inc):
        L += [f"**{len(inc)} of {len(status)} runs are not finished** (time budget of this call): "
              + ", ".join(inc.run) + ". Numbers use finished runs only; run the same command again to continue.", ""]
    L += ["## Accuracy against the attention percentage", "", "![attention](attention.png)", ""]
    d = acc[(acc.group == "main") & (acc.knob == "default")]
    piv = d.pivot_table(index=["arm", "attn_pct"], columns="task", values="accuracy", sort=False).reset_index()
    mq32 = acc[(acc.group == "main") & (acc.task == "mqar") & (acc.value == "32")].set_index("arm").accuracy
    piv["mqar 32 pairs"] = piv.arm.map(mq32)
    L += X.md_table(piv.sort_values(["attn_pct", "arm"]))
    L += ["", "Per-task sweeps (the shaded range is beyond what the models saw in training):", "",
          "![sweeps](sweeps.png)", ""]
    if has_width:
        w = acc[(acc.task == "mqar") & (acc.knob == "n_pairs")]
        w = w[w.arm.isin([a for a in A if a in P["width_archs"] or a.split("-d")[0] in P["width_archs"]])]
        pw = w.pivot_table(index=["arm", "width"], columns="value", values="accuracy", sort=False).reset_index()
        L += ["## MQAR against model width", "", "![width](width.png)", ""] + X.md_table(pw) + [""]
    L += ["## Majority voting (parallel test-time scaling)", "",
          f"{P['vote_n']} problems per task; {max(VOTE_NS)} answers sampled per problem at the answer position "
          f"(temperature {TEMPERATURE}, top-p {TOP_P}); accuracy of the majority of N samples (ties: the earliest "
          "sampled), averaged over the disjoint groups of N; dotted: pass@N.", "", "![votes](votes.png)", ""]
    vt = votes[(votes.group == "main")].pivot_table(index=["task", "arm", "attn_pct", "greedy_acc"], columns="N",
                                                    values="majority_acc", sort=False).reset_index()
    L += X.md_table(vt) + [""]
    if has_place:
        pl = acc[acc.arm.isin([a for a in A if a.startswith("gdn83")] +
                              [a for a, s in A.items() if s["group"] == "placement"]) & (acc.knob == "default")]
        pp = pl.pivot_table(index="arm", columns="task", values="accuracy", sort=False).reset_index()
        pp.insert(1, "attention layers", [ZooConfig(vocab_size=len(VOCAB), **A[a]["model"]).attention_layers
                                          for a in pp.arm])
        L += ["## Attention placement (83% recurrent)", "", "![placement](placement.png)", ""] + X.md_table(pp) + [""]
    L += ["## Error taxonomy of wrong word-problem answers (mechanical)", "",
          f"{P['tax_n']} problems with knobs {TAXONOMY_KNOBS}; each wrong answer is classified from the generator's "
          "facts (`interp.tasks.word_problems.classify`, first match in this order): " + ", ".join(W.ERROR_TYPES)
          + ". Fractions of all problems:", "", "![taxonomy](taxonomy.png)", ""]
    L += ["Accuracy, and the share of each type among the wrong answers; `uniform guess` is the base rate (a wrong "
          "answer drawn uniformly from 0..63, classified the same way):", ""]
    L += X.md_table(wrong_shares(pd.concat([tax, chance], ignore_index=True))) + [""]
    if judged is not None:
        agree = (judged.kind == judged.judge).mean() if len(judged) else float("nan")
        L += [f"LLM judge ({len(judged)} wrong answers): agreement with the mechanical label {agree:.2f}; "
              "see judge.csv.", ""]
    L += ["## Learning-rate sweep", ""]
    L += X.sweep_table(status, val, best, [f"val_{t}" for t in TASKS])
    X.write_report(ctx, "E2 — the recall gap against the attention ratio", L, shape_verdicts(acc, votes, tax, chance))


def build_parser():
    ap = X.parser(NAME, __doc__, PROFILES, workers=True)
    ap.add_argument("--judge", default=None,
                    help="local HF model directory for the optional LLM judge (None: no judge)")
    ap.add_argument("--judge-max", type=int, default=100, help="wrong answers sent to the judge")
    return ap


def main(argv=None):
    a = build_parser().parse_args(argv)
    with X.setup(a, NAME, PROFILES, argv) as ctx:      # holds the runs and figures directories' writer locks
        return experiment(ctx, a)


def experiment(ctx, a):
    P, root, figs, device, deadline = ctx.P, ctx.runs, ctx.out, ctx.device, ctx.deadline
    X.check_spec(root, {"profile": ctx.profile, "steps": P["steps"]}, kind=NAME)
    judge = hf_judge(a.judge, device) if a.judge else None     # fail early on a bad path
    torch.manual_seed(0)
    A, runs = plan(P, root, device)
    status, val, best = X.train_then_validate(runs, validate, ctx, weight=gpu_gb, capacity=P["gpu_gb"])
    if best is None:
        return X.unevaluated_exit(ctx, status)
    by_name = {r.name: r for r in runs}
    accs, votes, taxs = [], [], []
    for arm, row in best.iterrows():
        if X.out_of_time(deadline):
            print("time budget reached during evaluation; run the same command again to continue", file=sys.stderr)
            break
        x, v, t = evaluate_arm(arm, A[arm], by_name[f"{arm}_lr{row.lr:g}"], P, root, device)
        accs.append(x)
        votes.append(v)
        taxs.append(t)
    acc, vote, tax = (pd.concat(f, ignore_index=True) for f in (accs, votes, taxs))
    chance = X.ResultLog(root / "eval" / f"taxonomy_chance_{P['tax_n']}.csv").once(
        lambda: chance_taxonomy(P["tax_n"]))
    acc["value"] = acc["value"].astype(str)
    judged = None
    if judge is not None:
        wrong = [X.ResultLog(root / "eval" / f"wrong_{arm}_lr{row.lr:g}.csv").frame() for arm, row in best.iterrows()]
        wrong = pd.concat([w for w in wrong if not w.empty], ignore_index=True)
        wrong = wrong.head(a.judge_max)
        items = [(problem_text(p.split()), c, ans) for p, c, ans in zip(wrong.problem, wrong.correct, wrong.answer)]
        judged = wrong.assign(judge=judge_errors(items, judge))
        X.save_table(judged, figs / "judge.csv")
    for df, name in ((acc, "results"), (vote, "votes"), (pd.concat([tax, chance], ignore_index=True), "taxonomy")):
        X.save_table(df, figs / f"{name}.csv")
    X.save_table(status.merge(val, on=["arm", "lr"], how="left"), figs / "lr_sweep.csv")
    plot_attention(acc, figs / "attention.png")
    plot_sweeps(acc, figs / "sweeps.png")
    has_width = plot_width(acc, figs / "width.png")
    plot_votes(vote, figs / "votes.png")
    has_place = plot_placement(acc, A, figs / "placement.png")
    plot_taxonomy(tax, figs / "taxonomy.png")
    report(ctx, A, status, val, best, acc, vote, tax, chance, judged, has_width, has_place)
    print(f"wrote {figs}/report.md")
    return 0


if __name__ == "__main__":
    X.cli(main)
