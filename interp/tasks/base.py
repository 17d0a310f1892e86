"""TaskBatch / PairBatch, the task registry, knob validation and batch assembly.

A task registers either a per-example generator (``example(rng, **knobs) -> Example``) or a batch
generator (``batch(rng, n, **knobs) -> Rows``); likewise ``pair`` / ``pairs`` for clean/corrupted
prompts. Per-example generators are called n times on one numpy Generator seeded from
(seed, the task's fixed ``uid``), so a batch never depends on process, hashing or import order.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import numpy as np
import torch

from interp.tasks.vocab import PAD, VOCAB


class TaskError(ValueError):
    """Unknown task / knob or an impossible knob value; the message names the valid choices."""


def _move(obj, device):
    """Copy of a batch dataclass with every tensor (and every label tensor) on ``device``."""
    moved = {k: v.to(device) for k, v in vars(obj).items() if isinstance(v, torch.Tensor)}
    if "labels" in vars(obj):
        moved["labels"] = {k: v.to(device) for k, v in obj.labels.items()}
    return dataclasses.replace(obj, **moved)


@dataclass
class TaskBatch:
    tokens: torch.Tensor            # [N, T] token ids (right-padded with <pad>=0 if lengths differ)
    answer_pos: torch.Tensor        # [N, Q] positions whose next token is an answer (-1: none)
    answers: torch.Tensor           # [N, Q] answer ids = tokens[i, answer_pos[i, j] + 1] (-1: none)
    labels: dict                    # name -> per-token ground truth [N, T, ...] (-1: undefined)
    loss_mask: torch.Tensor         # [N, T] bool: the next token is supervised
    meta: dict = field(default_factory=dict)   # task, knobs (all resolved), seed
    attention_mask: torch.Tensor | None = None  # [N, T] 1 at real tokens of a padded batch (`pad_batches`)

    def __len__(self):
        return self.tokens.shape[0]

    @property
    def n(self):
        return len(self)

    def to(self, device) -> "TaskBatch":
        return _move(self, device)

    def words(self, i: int) -> list[str]:
        return VOCAB.decode(self.tokens[i])


@dataclass
class PairBatch:
    clean: torch.Tensor             # [N, T]
    corrupted: torch.Tensor         # [N, T], one controlled fact differs
    answer_pos: torch.Tensor        # [N] position whose next token is the answer (same in both)
    clean_answer: torch.Tensor      # [N]
    corrupted_answer: torch.Tensor  # [N] != clean_answer
    diff_pos: torch.Tensor          # [N] first position where the prompts differ (the changed fact)
    meta: dict = field(default_factory=dict)
    attention_mask: torch.Tensor | None = None  # [N, T] 1 at real tokens, shared by clean and corrupted
    # (a padded batch: `interp.tasks.pad_pairs` / `pairs_from_ids`; positions above index the padded rows;
    # patching, attribution, interventions and the SAE interchange test take it: `interp.tasks.padded.pair_span`)

    def __len__(self):
        return self.clean.shape[0]

    @property
    def n(self):
        return len(self)

    def to(self, device) -> "PairBatch":
        return _move(self, device)


@dataclass
class Example:
    words: list
    answer_pos: list                # positions p with words[p + 1] the answer
    labels: dict                    # name -> per-token array-like [len(words), ...]
    supervise: list | None = None   # supervised positions (default: answer_pos)


@dataclass
class Rows:
    """A batch as numpy arrays, before it becomes a TaskBatch."""
    tokens: np.ndarray              # [N, T] int64
    answer_pos: np.ndarray          # [N, Q] int64, -1 padded
    labels: dict                    # name -> [N, T, ...] int64, -1 padded
    supervise: np.ndarray           # [N, T] bool


class Knob(NamedTuple):
    default: Any
    valid: str                      # the valid values, in words
    doc: str


@dataclass
class TaskSpec:
    name: str
    doc: str
    uid: int                        # fixed per task: part of the RNG seed, never reused
    knobs: dict                     # knob -> Knob(default, valid, doc)
    grid: dict                      # knob -> values easy -> hard
    validate: Callable              # (**knobs) -> None, raises TaskError
    batch: Callable                 # (rng, n, **knobs) -> Rows
    pairs: Callable                 # (rng, n, **knobs) -> (clean Rows, corrupted Rows)


TASKS: dict = {}


def register(name, doc, uid, knobs, grid, validate, example=None, batch=None, pair=None, pairs=None):
    """Register a task given ``example`` or ``batch``, and ``pair`` or ``pairs``."""
    assert (example is None) != (batch is None) and (pair is None) != (pairs is None)
    assert name not in TASKS and uid not in {s.uid for s in TASKS.values()}, name
    if batch is None:
        batch = lambda rng, n, **k: from_examples([example(rng, **k) for _ in range(n)])  # noqa: E731
    if pairs is None:
        def pairs(rng, n, **k):
            ps = [pair(rng, **k) for _ in range(n)]
            return from_examples([c for c, _ in ps]), from_examples([x for _, x in ps])
    spec = TaskSpec(name, doc, uid, {k: Knob(*v) for k, v in knobs.items()}, grid, validate, batch, pairs)
    TASKS[name] = spec
    return spec


def alias(name, of, fixed, doc):
    """Register ``name`` as task ``of`` with the knobs ``fixed`` set (they are no longer knobs of ``name``).
    It shares ``of``'s uid, so ``generate(name, n, seed, **k)`` and ``make_pairs`` give exactly what ``of``
    gives with ``**fixed, **k`` (only ``meta`` differs). A trainer keys fixed knobs by task name, so an alias
    lets one mixture hold a task twice (e.g. ``state_recall`` and ``state_recall_cot``)."""
    t = get(of)
    assert name not in TASKS and set(fixed) <= set(t.knobs), name
    spec = TaskSpec(name, doc, t.uid, {k: v for k, v in t.knobs.items() if k not in fixed},
                    {k: v for k, v in t.grid.items() if k not in fixed}, lambda **k: t.validate(**k, **fixed),
                    lambda rng, n, **k: t.batch(rng, n, **k, **fixed),
                    lambda rng, n, **k: t.pairs(rng, n, **k, **fixed))
    TASKS[name] = spec
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
        close = difflib.get_close_matches(bad[0], list(spec.knobs), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise TaskError(f"unknown knob '{bad[0]}' for task '{spec.name}'{hint}; "
                        f"valid knobs: {', '.join(spec.knobs)}")
    k = {name: d.default for name, d in spec.knobs.items()}
    k.update(kw)
    spec.validate(**k)
    return k


def need(cond, msg):
    if not cond:
        raise TaskError(msg)


def is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def int_in(name, v, lo, hi):
    need(is_int(v) and lo <= v <= hi, f"{name}={v!r} is out of range; valid: integers {lo}..{hi}")


def one_of(name, v, choices):
    try:
        ok = v in choices
    except TypeError:  # an unhashable value (a list, a dict) against a set or dict of choices
        ok = False
    need(ok, f"{name}={v!r} is not valid; valid: {', '.join(map(str, choices))}")


def _rng(spec, seed, salt=0):
    return np.random.default_rng([int(seed), spec.uid, salt])


def _check_call(n, seed):
    need(is_int(n) and n >= 1, f"n={n!r} is out of range; valid: integers >= 1")
    need(is_int(seed) and seed >= 0, f"seed={seed!r} is out of range; valid: integers >= 0")


def _pad(rows, fill, T=None, dtype=np.int64):
    """Stack equal-length rows fast; right-pad ragged ones with ``fill`` (to length T)."""
    lens = {len(r) for r in rows}
    if len(lens) == 1 and (T is None or T == len(rows[0])):
        return np.asarray(rows, dtype=dtype)
    T = T or max(lens)
    first = np.asarray(rows[0])
    out = np.full((len(rows), T) + first.shape[1:], fill, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def from_examples(exs) -> Rows:
    ids = VOCAB._ids
    tokens = _pad([[ids[w] for w in e.words] for e in exs], PAD)
    N, T = tokens.shape
    Q = max(len(e.answer_pos) for e in exs)
    ap = _pad([e.answer_pos + [-1] * (Q - len(e.answer_pos)) for e in exs], -1)
    sup = np.zeros((N, T), dtype=bool)
    pos = [e.answer_pos if e.supervise is None else e.supervise for e in exs]
    sup[np.repeat(np.arange(N), [len(p) for p in pos]), np.concatenate(pos).astype(np.int64)] = True
    labels = {name: _pad([e.labels[name] for e in exs], -1, T) for name in exs[0].labels}
    return Rows(tokens, ap, labels, sup)


def generate(task: str, n: int, seed: int = 0, **knobs) -> TaskBatch:
    """``n`` examples of ``task`` (deterministic in task, n, seed and knobs)."""
    spec = get(task)
    k = resolve_knobs(spec, knobs)
    _check_call(n, seed)
    r = spec.batch(_rng(spec, seed), n, **k)
    tokens, ap = torch.from_numpy(r.tokens), torch.from_numpy(r.answer_pos)
    ans = torch.where(ap >= 0, tokens.gather(1, (ap + 1).clamp(0, tokens.shape[1] - 1)), -1)
    return TaskBatch(tokens, ap, ans, {name: torch.from_numpy(v) for name, v in r.labels.items()},
                     torch.from_numpy(r.supervise), {"task": task, "knobs": k, "seed": seed})


def make_pairs(task: str, n: int, seed: int = 0, **knobs) -> PairBatch:
    """``n`` clean/corrupted prompt pairs of equal length differing in one controlled fact (each
    task's docstring says which); the answers differ."""
    spec = get(task)
    k = resolve_knobs(spec, knobs)
    _check_call(n, seed)
    c, x = spec.pairs(_rng(spec, seed, salt=1), n, **k)
    T = max(c.tokens.shape[1], x.tokens.shape[1])
    clean, corr = (torch.from_numpy(_pad(list(r.tokens), PAD, T)) for r in (c, x))
    last = (c.answer_pos >= 0).sum(1) - 1
    ap = torch.from_numpy(c.answer_pos[np.arange(n), last])
    rows = torch.arange(n)
    diff = (clean != corr).to(torch.uint8).argmax(1)
    return PairBatch(clean, corr, ap, clean[rows, ap + 1], corr[rows, ap + 1], diff,
                     {"task": task, "knobs": k, "seed": seed})


def knobs(task: str) -> dict:
    """knob -> Knob(default, valid, doc)."""
    return dict(get(task).knobs)


def spec_knobs(task: str, given) -> dict:
    """The knobs of ``given`` that a result spec records: those set to other than ``task``'s defaults (a knob given
    at its default makes the same examples as one left out, so both record the same spec)."""
    defaults = {k: kb.default for k, kb in get(task).knobs.items()} if task in TASKS else {}
    return {k: v for k, v in dict(given or {}).items() if k not in defaults or v != defaults[k]}


def difficulty_grid(task: str) -> dict:
    """knob -> values from easy to hard (each swept with the other knobs at their defaults)."""
    return {k: list(v) for k, v in get(task).grid.items()}


@functools.lru_cache(maxsize=256)
def statement_layout(n_stmt: int, stmt_len: int = 4, extra: tuple = (), tail: int = 3):
    """Token layout of ``<bos>`` + ``n_stmt`` statements of ``stmt_len`` tokens + ``tail`` tokens.
    A statement's tokens before its last one see the state before it, its last token (``;``) the
    state after it. ``extra``: (s, m) pairs, m tokens inserted after statement s that see the
    state after it; the ``tail`` tokens see the final state.
    Returns (token -> state index [T] (state s = after s statements), statement start positions
    [n_stmt], {s: start of the extra block after statement s})."""
    idx, stmt, starts = [0], [], {}
    extra = dict(extra)
    for s in range(n_stmt):
        stmt.append(len(idx))
        idx += [s] * (stmt_len - 1) + [s + 1]
        if s in extra:
            starts[s] = len(idx)
            idx += [s + 1] * extra[s]
    idx += [n_stmt] * tail
    return np.asarray(idx), np.asarray(stmt, dtype=np.int64), starts
