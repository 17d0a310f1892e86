"""TaskBatch / PairBatch, the task registry and knob validation."""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field

import numpy as np
import torch

from interp.tasks.vocab import PAD, VOCAB


class TaskError(ValueError):
    """Unknown task / knob or an impossible knob value; the message names the valid choices."""


@dataclass
class TaskBatch:
    tokens: torch.Tensor            # [N, T] token ids
    answer_pos: torch.Tensor        # [N, Q] positions whose next token is an answer (-1: none)
    answers: torch.Tensor           # [N, Q] answer ids: tokens[i, answer_pos[i, j] + 1]
    labels: dict                    # name -> per-token ground truth [N, T, ...] (-1 undefined)
    loss_mask: torch.Tensor         # [N, T] bool: next token is supervised
    meta: dict = field(default_factory=dict)

    def __len__(self):
        return self.tokens.shape[0]

    @property
    def n(self):
        return len(self)

    def to(self, device) -> "TaskBatch":
        mv = lambda t: t.to(device)  # noqa: E731
        return dataclasses.replace(self, tokens=mv(self.tokens), answer_pos=mv(self.answer_pos),
                                   answers=mv(self.answers), loss_mask=mv(self.loss_mask),
                                   labels={k: mv(v) for k, v in self.labels.items()})

    def words(self, i: int) -> list[str]:
        return VOCAB.decode(self.tokens[i])


@dataclass
class PairBatch:
    clean: torch.Tensor             # [N, T]
    corrupted: torch.Tensor         # [N, T], one controlled fact differs
    answer_pos: torch.Tensor        # [N] position whose next token is the answer (same in both)
    clean_answer: torch.Tensor      # [N]
    corrupted_answer: torch.Tensor  # [N] != clean_answer
    diff_pos: torch.Tensor          # [N] first position where the prompts differ
    meta: dict = field(default_factory=dict)

    def __len__(self):
        return self.clean.shape[0]


@dataclass
class Example:
    words: list
    answer_pos: list                # positions p with words[p + 1] the answer
    labels: dict                    # name -> list (per token) or list of lists
    supervise: list | None = None   # extra supervised positions (default: answer_pos)


@dataclass
class TaskSpec:
    name: str
    doc: str
    knobs: dict                     # knob -> (default, valid text, doc)
    grid: dict                      # knob -> values easy -> hard
    example: callable               # (rng, **knobs) -> Example
    pair: callable                  # (rng, **knobs) -> (clean Example, corrupted Example)
    validate: callable              # (**knobs) -> None, raises TaskError
    index: int = 0


TASKS: dict = {}


def register(spec: TaskSpec) -> TaskSpec:
    spec.index = len(TASKS) + 1
    TASKS[spec.name] = spec
    return spec


def get(task: str) -> TaskSpec:
    if task not in TASKS:
        close = difflib.get_close_matches(str(task), list(TASKS), n=2)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise TaskError(f"unknown task '{task}'{hint}; valid tasks: {', '.join(sorted(TASKS))}")
    return TASKS[task]


def resolve_knobs(spec: TaskSpec, kw: dict) -> dict:
    bad = [k for k in kw if k not in spec.knobs]
    if bad:
        raise TaskError(f"unknown knob '{bad[0]}' for task '{spec.name}'; valid knobs: {', '.join(spec.knobs)}")
    k = {name: d[0] for name, d in spec.knobs.items()}
    k.update(kw)
    spec.validate(**k)
    return k


def need(cond, msg):
    if not cond:
        raise TaskError(msg)


def int_in(name, v, lo, hi):
    need(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and lo <= v <= hi,
         f"{name}={v!r} is out of range; valid: integers {lo}..{hi}")


def _rng(spec, seed, salt=0):
    return np.random.default_rng([int(seed), spec.index, salt])


def _pad_stack(rows, fill):
    T = max(len(r) for r in rows)
    out = torch.full((len(rows), T), fill, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.as_tensor(r, dtype=torch.long)
    return out


def generate(task: str, n: int, seed: int = 0, **knobs) -> TaskBatch:
    """``n`` examples of ``task`` (deterministic in seed and knobs)."""
    spec = get(task)
    k = resolve_knobs(spec, knobs)
    need(isinstance(n, int) and n >= 1, f"n={n!r} must be a positive integer")
    rng = _rng(spec, seed)
    exs = [spec.example(rng, **k) for _ in range(n)]
    tokens = _pad_stack([VOCAB.encode(e.words) for e in exs], PAD)
    Q = max(len(e.answer_pos) for e in exs)
    ap = _pad_stack([e.answer_pos + [-1] * (Q - len(e.answer_pos)) for e in exs], -1)
    ans = torch.where(ap >= 0, tokens.gather(1, (ap + 1).clamp(min=0, max=tokens.shape[1] - 1)),
                      torch.full_like(ap, -1))
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    for i, e in enumerate(exs):
        mask[i, e.supervise if e.supervise is not None else e.answer_pos] = True
    labels = {}
    for name in exs[0].labels:
        rows = [torch.as_tensor(e.labels[name], dtype=torch.long) for e in exs]
        T = tokens.shape[1]
        lab = torch.full((n, T) + tuple(rows[0].shape[1:]), -1, dtype=torch.long)
        for i, r in enumerate(rows):
            lab[i, :r.shape[0]] = r
        labels[name] = lab
    return TaskBatch(tokens, ap, ans, labels, mask, {"task": task, "knobs": k, "seed": seed})


def make_pairs(task: str, n: int, seed: int = 0, **knobs) -> PairBatch:
    """``n`` clean/corrupted prompt pairs differing in one controlled fact."""
    spec = get(task)
    k = resolve_knobs(spec, knobs)
    need(isinstance(n, int) and n >= 1, f"n={n!r} must be a positive integer")
    rng = _rng(spec, seed, salt=1)
    pairs = [spec.pair(rng, **k) for _ in range(n)]
    clean = _pad_stack([VOCAB.encode(c.words) for c, _ in pairs], PAD)
    corr = _pad_stack([VOCAB.encode(x.words) for _, x in pairs], PAD)
    ap = torch.tensor([c.answer_pos[-1] for c, _ in pairs])
    rows = torch.arange(n)
    diff = (clean != corr).float().argmax(1)
    return PairBatch(clean, corr, ap, clean[rows, ap + 1], corr[rows, ap + 1], diff,
                     {"task": task, "knobs": k, "seed": seed})


def knobs(task: str) -> dict:
    return dict(get(task).knobs)


def difficulty_grid(task: str) -> dict:
    return {k: list(v) for k, v in get(task).grid.items()}
