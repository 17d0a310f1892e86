"""Per-token features: tag family, word piece and delimiter role from the character annotation,
and the copy features (repeated n-grams, distance to the previous occurrence) over token ids."""
from __future__ import annotations

import numpy as np

from interp.tokenloss.lexicon import DELIMS, TAG_CODE, TAGS
from interp.tokenloss.tagging import CharAnn


def token_features(ann: CharAnn, offsets: np.ndarray) -> dict:
    """Per-token tag / piece / delimiter from the character annotation; ``offsets`` [N, 2] char
    spans of the tokens (end exclusive)."""
    n_chars = len(ann.tag)
    s = np.clip(offsets[:, 0], 0, n_chars)
    e = np.clip(offsets[:, 1], 0, n_chars)
    idx = np.arange(n_chars + 1)
    # first non-space char at or after i, and first delimiter at or after i
    nonspace = np.where(np.append(ann.tag != TAG_CODE["space"], True), idx, n_chars)
    nxt_ns = np.minimum.accumulate(nonspace[::-1])[::-1]
    isdel = np.where(np.append(ann.delim != 0, True), idx, n_chars)
    nxt_del = np.minimum.accumulate(isdel[::-1])[::-1]
    tag_ext = np.append(ann.tag, TAG_CODE["other"])
    word_ext = np.append(ann.word, -1)
    first = nxt_ns[s]
    has = first < e
    empty = e <= s
    tag = np.where(has, tag_ext[np.minimum(first, n_chars)], TAG_CODE["space"])
    tag = np.where(empty, TAG_CODE["other"], tag)
    w = word_ext[np.minimum(first, n_chars)]
    piece = np.where(~has | (w < 0), "-", np.where(w == first, "first", "cont"))
    d = nxt_del[s]
    hasd = d < e
    delim = np.where(hasd, np.append(ann.delim, 0)[np.minimum(d, n_chars)], 0)
    mchar = np.where(hasd, np.append(ann.match, -1)[np.minimum(d, n_chars)], -1)
    mtok = np.where(mchar >= 0, np.searchsorted(s, mchar, side="right") - 1, -1)
    span = np.where(mtok >= 0, np.arange(len(s)) - mtok, -1)
    return {"tag": np.asarray(TAGS, dtype=object)[tag], "piece": piece,
            "delim": np.asarray(DELIMS, dtype=object)[delim], "delim_span": span}


def copy_features(ids: np.ndarray, upto: int | None = None) -> dict:
    """Per position t of one window: ``copy_len`` (longest n-gram ending at t that also ends at an
    earlier position of the window), ``copy_dist`` (t minus the most recent such position; -1 if
    none) and ``prev_dist`` (distance to the previous occurrence of ids[t]; -1 if none). Only the
    first ``upto`` positions are computed (default all)."""
    T = len(ids) if upto is None else upto
    ids = np.asarray(ids[:T])
    copy_len = np.zeros(T, np.int64)
    copy_dist = np.full(T, -1, np.int64)
    prev_dist = np.full(T, -1, np.int64)
    run = np.zeros(T, np.int64)
    last: dict = {}
    for t in range(T):
        eq = ids[:t] == ids[t]
        new = np.zeros(T, np.int64)
        if t:
            new[:t] = eq * (np.concatenate(([0], run[:t - 1])) + 1)
            m = new[:t].max()
            if m:
                copy_len[t] = m
                copy_dist[t] = t - (t - 1 - int(np.argmax(new[:t][::-1] == m)))
        p = last.get(int(ids[t]))
        if p is not None:
            prev_dist[t] = t - p
        last[int(ids[t])] = t
        run = new
    return {"copy_len": copy_len, "copy_dist": copy_dist, "prev_dist": prev_dist}
