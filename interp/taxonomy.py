"""Error taxonomy of wrong word-problem answers: a model's answers classified by the mechanical
`interp.tasks.word_problems.error_types`, the share of each type among the wrong answers, the base
rate of uniform guessing, and an optional LLM judge (a local Hugging Face model, an 8-category rubric).

A wrong answer can fit several types (wrong in more than one way: another person's count that is also
an earlier value of the asked one). Each taxonomy row counts a type three ways: ``count`` (the first type
in `W.ERROR_TYPES` order, so the counts sum to the problems), ``only`` (answers of that type alone) and
``any`` (answers of that type among others); `wrong_shares` reports the ambiguous share next to them."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from interp import InterpError
from interp import tasks as T
from interp.tasks import word_problems as W
from interp.tasks.vocab import NUMBERS, VOCAB
from interp.voting import answer_logits


def classify_answers(model, batch, **cols) -> tuple[list[list[str]], pd.DataFrame]:
    """All types of each greedy answer of ``model`` on the word problems ``batch`` (`W.error_types`: ["correct"]
    or the error types it fits) and a frame of the wrong ones (``cols``, i, problem, correct, answer, kind (the
    first type), types (all, ';'-joined), ambiguous)."""
    pred = answer_logits(model, batch).argmax(-1)
    types = [W.error_types(batch.words(i)[:-1], VOCAB.words[int(p)]) for i, p in enumerate(pred)]
    wrong = pd.DataFrame([dict(**cols, i=i, problem=" ".join(batch.words(i)[:-1]), correct=batch.words(i)[-1],
                               answer=VOCAB.words[int(p)], kind=t[0], types=";".join(t), ambiguous=len(t) > 1)
                          for i, (p, t) in enumerate(zip(pred, types)) if t != ["correct"]])
    return types, wrong


def type_counts(types: list[list[str]], weights=None) -> dict:
    """{kind: (count, only, any)} over answers given as lists of types (``weights``: one per answer, default 1)."""
    out = {k: [0.0, 0.0, 0.0] for k in ["correct"] + W.ERROR_TYPES}
    for t, w in zip(types, weights if weights is not None else [1.0] * len(types)):
        out[t[0]][0] += w
        if len(t) == 1:
            out[t[0]][1] += w
        for k in t:
            out[k][2] += w
    return out


def taxonomy_rows(types: list[list[str]], n: int, weights=None, **info) -> pd.DataFrame:
    """One row per kind (``info`` columns, kind, count, only, any, n) from `type_counts`."""
    return pd.DataFrame([dict(**info, kind=k, count=c, only=o, any=a, n=n)
                         for k, (c, o, a) in type_counts(types, weights).items()])


def chance_taxonomy(n: int, seed: int, knobs: dict) -> pd.DataFrame:
    """The base rate of each error type: the types a wrong answer drawn uniformly from the other
    numbers 0..63 would get, on ``n`` word problems (``seed``, ``knobs``; a big set, e.g. other
    people's values, catches many guesses; compare model shares with these)."""
    b = T.generate("word_problems", n, seed=seed, **knobs)
    types, weights = [], []
    for i in range(n):
        words, ans = b.words(i)[:-1], int(b.words(i)[-1])
        for v in range(len(NUMBERS)):
            if v != ans:
                types.append(W.error_types(words, v))
                weights.append(1 / (len(NUMBERS) - 1))
    return taxonomy_rows(types, n, weights, arm="uniform guess", mixer="chance", attn_pct=-1, group="chance",
                         width=0)


def wrong_shares(tax: pd.DataFrame) -> pd.DataFrame:
    """Per arm: accuracy, the share of each error type among the wrong answers (first type, as ``count``), the
    share of wrong answers that fit more than one type (``ambiguous``) and, among the unambiguous wrong answers,
    each type's share (``<type> alone``; NaN where a taxonomy has no ``only`` column)."""
    rows = []
    for arm, g in tax.groupby("arm", sort=False):
        c = g.set_index("kind")["count"]
        o = g.set_index("kind")["only"] if "only" in g else c * float("nan")
        wrong, single = c.drop("correct").sum(), o.drop("correct").sum()
        nan = float("nan")
        rows.append({"arm": arm, "attn_pct": g.attn_pct.iloc[0], "accuracy": c["correct"] / g.n.iloc[0],
                     **{k: (c[k] / wrong if wrong else nan) for k in W.ERROR_TYPES},
                     "ambiguous": (1 - single / wrong) if wrong else nan,
                     **{f"{k} alone": (o[k] / single if single else nan) for k in W.ERROR_TYPES}})
    return pd.DataFrame(rows)


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
