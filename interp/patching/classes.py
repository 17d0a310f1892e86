"""Position classes of clean/corrupted pairs from the task's ground truth: for every pair and
position, which role the token plays on the way from the changed fact to the answer.

Classes, first match wins:

* ``after``: after the answer position (cannot reach the answer);
* ``query``: the query tokens (mqar: the queried key; state_recall: ``? xq``; other tasks: the
  answer position);
* ``prefix``: before the first token where the prompts differ (the runs are identical there);
* ``write``: where the queried fact is stored (mqar: the key-value pair bound to the queried key;
  state_recall: the last statement that writes the queried variable);
* ``changed``: the other tokens where the prompts differ (the changed fact, derived values);
* ``between``: everything else between the change and the query.

``prefix`` and ``after`` are trivial (a patch there changes nothing); so is the residual stream at
a token whose input differs (it carries the changed input itself), see `trivial`.

Padded pairs are classed by their real tokens (position p: a pair's p-th real token); where a pair has no
position p its code is `PAD` (no class, not counted in a position's class share, trivial).
"""
from __future__ import annotations

import numpy as np

CLASSES = ("prefix", "changed", "write", "between", "query", "after")
TRIVIAL = ("prefix", "after")
PATH = ("changed", "write", "between", "query")  # the order a path through the prompt takes
RESIDUAL = ("resid_pre", "resid_mid", "resid_post")
PAD = len(CLASSES)   # the code of a position a padded pair does not have


def real_tokens(pairs) -> tuple:
    """(clean [N, T], corrupted [N, T], answer position [N], real tokens [N]) as numpy arrays, each pair's
    real tokens from position 0 on (padded pairs: their pads moved to the end, filled with 0)."""
    clean, corr = pairs.clean.cpu().numpy(), pairs.corrupted.cpu().numpy()
    ans = pairs.answer_pos.cpu().numpy()
    N, T = clean.shape
    if pairs.attention_mask is None:
        return clean, corr, ans, np.full(N, T)
    from interp.tasks.padded import real_span
    off, n = (t.numpy() for t in real_span(pairs.attention_mask))
    idx = np.arange(T)[None] + off[:, None]
    real = np.arange(T)[None] < n[:, None]
    take = np.where(real, idx, 0)
    rows = np.arange(N)[:, None]
    return np.where(real, clean[rows, take], 0), np.where(real, corr[rows, take], 0), ans - off, n


def position_classes(pairs) -> tuple[np.ndarray, np.ndarray]:
    """(codes [N, T] int8 indexing `CLASSES` (`PAD` where a padded pair has no such position), differs
    [N, T] bool: the prompts' tokens differ)."""
    clean, corr, ans, length = real_tokens(pairs)
    N, T = clean.shape
    differs = clean != corr
    task = (pairs.meta or {}).get("task")
    codes = np.empty((N, T), dtype=np.int8)
    pos = np.arange(T)
    for i in range(N):
        first = int(differs[i].argmax()) if differs[i].any() else T
        query, write = _roles(task, clean[i], int(ans[i]))
        c = np.full(T, CLASSES.index("between"), dtype=np.int8)
        c[differs[i]] = CLASSES.index("changed")
        c[list(write)] = CLASSES.index("write")
        c[pos < first] = CLASSES.index("prefix")
        c[list(query)] = CLASSES.index("query")
        c[pos > ans[i]] = CLASSES.index("after")
        c[pos >= length[i]] = PAD
        codes[i] = c
    return codes, differs


def _roles(task, tokens, ans) -> tuple[set, set]:
    """(query positions, write positions) of one clean prompt."""
    if task == "mqar":
        return {ans}, _mqar_write(tokens, ans)
    if task == "state_recall":
        return {ans - 1, ans}, _state_recall_write(tokens, ans)
    return {ans}, set()


def _mqar_write(tokens, ans) -> set:
    """The context key-value pair of the key queried at ``ans``."""
    hits = np.flatnonzero(tokens[:ans] == tokens[ans])
    return {int(hits[0]), int(hits[0]) + 1} if len(hits) else set()


def _state_recall_write(tokens, ans) -> set:
    """The tokens of the last statement before the final query that writes the queried variable
    (``xq = c ;``, ``xq += c ;``, ``xq = xj ;`` or ``swap`` naming xq); statements are the 4-token
    groups ending in ``;`` that start with a variable or ``swap`` (the ``? xq ;`` and ``is v`` blocks
    of the cot variant are skipped)."""
    from interp.tasks import VOCAB
    ids = {w: VOCAB.id(w) for w in ("swap", "=", "+=", ";")}
    var = {VOCAB.id(f"x{j}") for j in range(16)}
    xq = int(tokens[ans])
    last, p = None, 1
    while p + 3 < ans:
        t0, t1, t2, t3 = (int(x) for x in tokens[p:p + 4])
        if t3 == ids[";"] and (t0 in var or t0 == ids["swap"]):
            writes = (t0 == xq and t1 in (ids["="], ids["+="])) or (t0 == ids["swap"] and xq in (t1, t2))
            if writes:
                last = p
            p += 4
        else:
            p += 1
    return set(range(last, last + 4)) if last is not None else set()


def trivial(site: str, codes, differs) -> np.ndarray:
    """Where a patch of ``site`` is trivial, per pair and position (arrays as `position_classes`
    gives): a trivial class, a pad, or the residual stream at a token whose input differs."""
    out = np.isin(codes, [CLASSES.index(c) for c in TRIVIAL] + [PAD])
    if site in RESIDUAL:
        out |= differs
    return out


def cell_classes(codes, trivial_mask, positions, effect) -> tuple[list, list, list]:
    """Per cell (position -1 = every position): the class most pairs give its position, the share
    of pairs that do, and whether the cell is trivial: the patch is trivial for every pair, or the
    pairs for which it is trivial carry most of its effect (``effect`` [cells, K]: per pair, how
    far the patch moves the logit diff from the unpatched run), as the residual stream at the
    changed token does at positions where some pairs have it. Pairs without the position (padded, `PAD`)
    are not counted in its class or share."""
    names, shares, triv = [], [], []
    K = codes.shape[0]
    for c, p in enumerate(positions):
        counts = np.bincount(codes[:, p], minlength=PAD + 1)[:PAD] if p >= 0 and K else None
        if p < 0 or K == 0 or not counts.sum():
            names.append("all" if p < 0 else "")
            shares.append(1.0 if p < 0 else np.nan)
            triv.append(False if p < 0 or K == 0 else True)
            continue
        names.append(CLASSES[int(counts.argmax())])
        shares.append(float(counts.max() / counts.sum()))
        t, total = trivial_mask[:, p], effect[c].sum()
        triv.append(bool(t.all() or (total > 0 and effect[c][t].sum() > 0.5 * total)))
    return names, shares, triv
