"""mqar: multi-query associative recall.

    <bos> k v k v ... [_ ...] <sep> q a q a ...

Context: ``n_pairs`` distinct keys with values; optional filler ``_`` up to ``seq_len`` tokens
before ``<sep>``; then ``n_queries`` distinct context keys, each followed by its value (the answer,
predicted at the query key). Labels: ``bound_value`` [T] the value bound to the key at each key
token (context and queries), ``write_distance`` [T] tokens since the queried key was written (at
query keys). Pairs: the value bound to the last query's key differs.
"""
from __future__ import annotations

from interp.tasks.base import Example, int_in, need, register
from interp.tasks.vocab import KEYS, NUMBERS


def _validate(n_pairs, n_queries, n_keys, n_values, seq_len):
    int_in("n_keys", n_keys, 2, len(KEYS))
    int_in("n_values", n_values, 2, len(NUMBERS))
    int_in("n_pairs", n_pairs, 1, n_keys)
    if n_queries is not None:
        int_in("n_queries", n_queries, 1, n_pairs)
    if seq_len is not None:
        lo = 2 + 2 * n_pairs + 2 * (n_queries or min(4, n_pairs))
        int_in("seq_len", seq_len, lo, 4096)


def _example(rng, n_pairs, n_queries, n_keys, n_values, seq_len):
    n_queries = n_queries or min(4, n_pairs)
    keys = rng.choice(n_keys, n_pairs, replace=False)
    vals = rng.integers(0, n_values, n_pairs)
    qidx = rng.choice(n_pairs, n_queries, replace=False)
    words = ["<bos>"]
    for k, v in zip(keys, vals):
        words += [KEYS[k], NUMBERS[v]]
    n_fill = 0 if seq_len is None else seq_len - (2 + 2 * n_pairs + 2 * n_queries)
    words += ["_"] * n_fill + ["<sep>"]
    bound = [-1] * len(words)
    for j in range(n_pairs):
        bound[1 + 2 * j] = int(vals[j])
    dist = [-1] * len(words)
    ans_pos = []
    for q in qidx:
        p = len(words)
        words += [KEYS[keys[q]], NUMBERS[vals[q]]]
        bound += [int(vals[q]), -1]
        dist += [p - (1 + 2 * int(q)), -1]
        ans_pos.append(p)
    return Example(words, ans_pos, {"bound_value": bound, "write_distance": dist})


def _pair(rng, **k):
    clean = _example(rng, **k)
    w = list(clean.words)
    p = clean.answer_pos[-1]
    ctx = w.index(w[p])  # the key's position in the context
    old = int(w[ctx + 1])
    new = (old + 1 + int(rng.integers(0, k["n_values"] - 1))) % k["n_values"]
    w[ctx + 1] = NUMBERS[new]
    for q in clean.answer_pos:  # every query of that key answers the new value
        if w[q] == w[p]:
            w[q + 1] = NUMBERS[new]
    need(w[p + 1] != clean.words[p + 1], "internal: pair answers equal")
    return clean, Example(w, clean.answer_pos, {})


register(
    name="mqar", doc=__doc__, uid=1,
    knobs={"n_pairs": (8, "1..n_keys", "key-value pairs in the context"),
           "n_queries": (None, "1..n_pairs or None (= min(4, n_pairs))", "queries after <sep>"),
           "n_keys": (64, "2..64", "key vocabulary used"),
           "n_values": (64, "2..64", "value vocabulary used"),
           "seq_len": (None, ">= 2+2*n_pairs+2*n_queries or None", "pad the context with filler to this length")},
    grid={"n_pairs": [2, 4, 8, 16, 32], "seq_len": [None, 64, 128, 192]},
    example=_example, pair=_pair, validate=_validate)
