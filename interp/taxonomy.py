"""Error taxonomy of wrong word-problem answers: a model's answers classified by the mechanical
`interp.tasks.word_problems.classify`, the share of each type among the wrong answers, the base
rate of uniform guessing, and an optional LLM judge (a local Hugging Face model, an 8-category rubric)."""
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


def classify_answers(model, batch, **cols) -> tuple[list[str], pd.DataFrame]:
    """The type of each greedy answer of ``model`` on the word problems ``batch`` ("correct" or one
    of `W.ERROR_TYPES`) and a frame of the wrong ones (``cols``, i, problem, correct, answer, kind)."""
    pred = answer_logits(model, batch).argmax(-1)
    kinds = [W.classify(batch.words(i)[:-1], VOCAB.words[int(p)]) for i, p in enumerate(pred)]
    wrong = pd.DataFrame([dict(**cols, i=i, problem=" ".join(batch.words(i)[:-1]), correct=batch.words(i)[-1],
                               answer=VOCAB.words[int(p)], kind=k)
                          for i, (p, k) in enumerate(zip(pred, kinds)) if k != "correct"])
    return kinds, wrong


def chance_taxonomy(n: int, seed: int, knobs: dict) -> pd.DataFrame:
    """The base rate of each error type: the types a wrong answer drawn uniformly from the other
    numbers 0..63 would get, on ``n`` word problems (``seed``, ``knobs``; a big set, e.g. other
    people's values, catches many guesses; compare model shares with these)."""
    b = T.generate("word_problems", n, seed=seed, **knobs)
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
