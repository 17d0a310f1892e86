"""Probe points: which tokens a probe reads for a target, their labels, the distance since each
fact was written and the position that wrote it (the rules are in the package doc)."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from interp import InterpError


@dataclass
class Points:
    """Probe points: example, position, label, distance (-1: unknown), write position (-1:
    unknown) and the token id at the position."""
    ex: torch.Tensor
    pos: torch.Tensor
    y: torch.Tensor
    distance: torch.Tensor
    write: torch.Tensor
    token: torch.Tensor

    def __len__(self):
        return len(self.y)

    def select(self, m):
        return Points(*(getattr(self, f)[m] for f in ("ex", "pos", "y", "distance", "write", "token")))


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
        if m.group(2) is None or int(m.group(2)) >= lab.shape[-1]:
            raise InterpError(f"target '{target}' needs a column index; valid targets: {', '.join(valid)}")
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
    idx, stmt, _, _ = _layout(S, k["n_vars"], k["cot"])
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
    """The probe points of ``target`` in ``batch`` (see the package doc, `interp.probes`)."""
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
