"""Probe points: which tokens a probe reads for a target, their labels, the distance since each
fact was written and the position that wrote it (the rules are in the package doc); and, for the
causal check, which examples' answer is the target's value (`answer_labels`)."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import numpy as np
import torch

from interp import InterpError


@dataclass
class Points:
    """Probe points: example, position, label, distance (-1: unknown), write position (-1:
    unknown), the token id at the position and ``correct``: whether the model answered the
    point's example correctly (every answer of the example; None: not known)."""
    ex: torch.Tensor
    pos: torch.Tensor
    y: torch.Tensor
    distance: torch.Tensor
    write: torch.Tensor
    token: torch.Tensor
    correct: torch.Tensor | None = None

    def __len__(self):
        return len(self.y)

    def select(self, m):
        return Points(*(getattr(self, f)[m] for f in ("ex", "pos", "y", "distance", "write", "token")),
                      correct=None if self.correct is None else self.correct[m])


def target_labels(batch, target: str):
    """[N, T] labels for ``target``: a per-token label name, or ``name[j]`` for column j of a
    per-token vector label (e.g. ``var_value[0]``: the value of x0 after each token).
    Returns (labels, column j or None)."""
    m = re.fullmatch(r"(\w+)(?:\[(\d+)\])?", target)
    valid = [k if v.dim() == 2 else f"{k}[0..{v.shape[-1] - 1}]" for k, v in batch.labels.items()]
    task = batch.meta["task"]
    if not m or m.group(1) not in batch.labels:
        raise InterpError(f"target '{target}' is not produced by task '{task}'; valid targets: {', '.join(valid)}")
    lab = batch.labels[m.group(1)]
    if lab.dim() == 3:
        if m.group(2) is None:
            raise InterpError(f"target '{target}' needs a column index; valid targets: {', '.join(valid)}")
        if int(m.group(2)) >= lab.shape[-1]:
            raise InterpError(f"target '{target}': column {int(m.group(2))} is out of range; '{m.group(1)}' has "
                              f"columns 0..{lab.shape[-1] - 1} with these knobs (valid targets: {', '.join(valid)})")
        return lab[..., int(m.group(2))], int(m.group(2))
    if m.group(2) is not None:
        raise InterpError(f"target '{m.group(1)}' has no columns; valid targets: {', '.join(valid)}")
    return lab, None


def _state_recall_writes(batch, var):
    """Per token: statements since variable ``var`` ([N] per example, or an int) was last
    assigned, and the position of that statement's ``;`` (-1 before any)."""
    from interp.tasks.state_recall import _layout
    from interp.tasks.vocab import VARS, VOCAB
    k = batch.meta["knobs"]
    S = k["n_vars"] + k["n_steps"]
    idx, stmt, _, _ = _layout(S, k["n_vars"], k["cot"], k.get("query_first", False))
    tok = batch.tokens.numpy()
    vi = np.full(len(VOCAB), -1)
    vi[VOCAB.encode(VARS)] = np.arange(len(VARS))
    v = np.broadcast_to(np.asarray(var), (tok.shape[0],))[:, None]
    a0, a1, a2 = vi[tok[:, stmt]], vi[tok[:, stmt + 1]], vi[tok[:, stmt + 2]]
    writes = np.where(tok[:, stmt] == VOCAB.id("swap"), (a1 == v) | (a2 == v), a0 == v)   # [N, S]
    last = np.full((tok.shape[0], S + 1), -1)
    for s in range(S):
        last[:, s + 1] = np.where(writes[:, s], s, last[:, s])
    u = np.arange(S + 1)
    dist = np.where(last >= 0, u - 1 - last, -1)
    wpos = np.where(last >= 0, stmt[np.maximum(last, 0)] + 3, -1)
    return torch.as_tensor(dist[:, idx]), torch.as_tensor(wpos[:, idx])


def points(batch, target: str) -> Points:
    """The probe points of ``target`` in ``batch`` (see the package doc, `interp.probes`). A padded batch
    (``attention_mask``) has points at real tokens only, positions in its padded rows: one from
    `interp.tasks.pad_batches` has each part's points (as the part alone gives them, moved to its rows)."""
    if batch.attention_mask is not None:
        return _padded_points(batch, target)
    lab, col = target_labels(batch, target)
    task = batch.meta["task"]
    N, L = lab.shape
    dist = torch.full((N, L), -1, dtype=torch.long)
    write = torch.full((N, L), -1, dtype=torch.long)
    mask = lab >= 0
    name = target.split("[")[0]
    if task == "state_recall" and name in ("var_value", "query_var_value"):
        from interp.tasks.vocab import VARS, VOCAB
        var = col if name == "var_value" else np.asarray(VOCAB.decode(batch.tokens[:, -2]))
        if name == "query_var_value":
            var = np.array([VARS.index(w) for w in var])
        dist, write = _state_recall_writes(batch, var)
    elif task == "mqar" and name == "bound_value":
        wd = batch.labels["write_distance"]
        mask = mask & (wd >= 0)
        dist = wd.clone()
        write = torch.where(wd >= 0, torch.arange(L)[None] - wd + 1, -1)    # the value after the key
    ex = torch.arange(N)[:, None].expand(N, L)[mask]
    pos = torch.arange(L)[None].expand(N, L)[mask]
    return Points(ex, pos, lab[mask], dist[mask], write[mask], batch.tokens[mask])


def _padded_points(batch, target: str) -> Points:
    """`points` of a padded batch: per part of a `pad_batches` batch, or from the labels at real tokens."""
    parts = (batch.meta or {}).get("parts")
    if not parts:
        task, name = batch.meta.get("task"), target.split("[")[0]
        if task == "state_recall" and name in ("var_value", "query_var_value"):
            raise InterpError(f"target '{target}' of a padded state_recall batch needs its parts' layouts: pad the "
                              "batches with interp.tasks.pad_batches")
        out = points(dataclasses.replace(batch, attention_mask=None), target)
        real = batch.attention_mask.bool()[out.ex, out.pos]
        return out.select(real)
    from interp.tasks.padded import part_view
    got = []
    for part in parts:
        p = points(part_view(batch, part), target)
        got.append(Points(p.ex + part["rows"][0], p.pos + part["offset"], p.y, p.distance,
                          torch.where(p.write >= 0, p.write + part["offset"], -1), p.token))
    return Points(*(torch.cat([getattr(p, f) for p in got]) for f in ("ex", "pos", "y", "distance", "write", "token")))


CAUSAL_TARGETS = "state_recall var_value[j] / query_var_value, mqar bound_value"


def answer_labels(batch, target: str):
    """For the causal check: per example, the answer position (the last one), the answer token and
    the target's label there, kept (``keep`` [N]) where the example's answer *is* the target's
    value: ``state_recall`` ``var_value[j]`` when the query asks for ``xj``, ``query_var_value``
    always, ``mqar`` ``bound_value`` always (the value bound to the last query's key); and the
    answer token is the label's number. Returns (answer_pos [N], answer [N], label [N], keep [N])."""
    from interp.tasks.vocab import NUMBERS, VARS, VOCAB
    lab, col = target_labels(batch, target)
    task, name = batch.meta["task"], target.split("[")[0]
    if not ((task == "state_recall" and name in ("var_value", "query_var_value"))
            or (task == "mqar" and name == "bound_value")):
        raise InterpError(f"the causal check needs a target whose value is the model's answer; '{target}' of task "
                          f"'{task}' is not one (targets with one: {CAUSAL_TARGETS})")
    rows = torch.arange(len(batch))
    last = ((batch.answer_pos >= 0).sum(1) - 1).clamp(min=0)
    ap, ans = batch.answer_pos[rows, last], batch.answers[rows, last]
    y = lab[rows, ap.clamp(min=0)]
    num = torch.as_tensor(VOCAB.encode(NUMBERS))
    keep = (ap >= 0) & (y >= 0) & (ans == num[y.clamp(min=0, max=len(NUMBERS) - 1)])
    if name == "var_value":
        keep &= batch.tokens[rows, ap.clamp(min=0)] == VOCAB.id(VARS[col])
    return ap, ans, y, keep
