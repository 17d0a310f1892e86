"""brackets: Dyck-k prefixes; predict the correct closing delimiter.

    <bos> ( [ ( ) ] [ { } <sep> ]

``length`` brackets of ``k`` types, well nested, whose maximum nesting depth is exactly ``depth``
and which leave at least one bracket open; drawn uniformly among all such bracket walks (then each
opening bracket's type uniformly). After ``<sep>`` the answer is the closing delimiter of the
innermost open bracket (predicted at ``<sep>``). ``depth=1`` needs an odd ``length``.
Labels, after each token (the answer token closes its bracket like any other):
``expected_close`` [T] the closing delimiter the innermost open bracket needs (0..3 = ) ] } >;
-1 when none is open), ``depth`` [T] the nesting depth.
Pairs: the type of the innermost open bracket differs (so the answer does).
"""
from __future__ import annotations

import functools

import numpy as np

from interp.tasks.base import Rows, int_in, need, register
from interp.tasks.vocab import CLOSE, OPEN, VOCAB

OPEN_IDS, CLOSE_IDS = np.array(VOCAB.encode(OPEN)), np.array(VOCAB.encode(CLOSE))


def _validate(depth, k, length):
    int_in("k", k, 1, len(OPEN))
    int_in("length", length, 1, 512)
    int_in("depth", depth, 1, length)
    need(depth > 1 or length % 2 == 1,
         f"depth=1 with length={length} cannot end with a bracket open; valid: an odd length, or depth >= 2")


@functools.lru_cache(maxsize=64)
def _moves(depth, length):
    """up[t, d, r], down[t, d, r]: (scaled) numbers of valid completions after going up / down
    from depth d before bracket t, r = whether ``depth`` has been reached."""
    D = depth
    C = np.zeros((D + 2, 2))          # completions from (d, r) after all brackets: end open, r = 1
    C[1:D + 1, 1] = 1.0
    up = np.zeros((length, D + 2, 2))
    down = np.zeros((length, D + 2, 2))
    reach = (np.arange(D + 2) + 1 == D).astype(int)     # going up from d reaches D
    for t in range(length - 1, -1, -1):
        for r in (0, 1):
            up[t, :D, r] = C[np.arange(1, D + 1), np.maximum(r, reach[:D])]
            down[t, 1:D + 1, r] = C[:D, r]
        C = up[t] + down[t]
        C /= max(C.max(), 1e-300)     # only ratios matter
    return up, down


def _walk(rng, n, depth, k, length):
    """Tokens [n, length + 3], the open-bracket stack and depths (vectorised over examples)."""
    up, down = _moves(depth, length)
    rows = np.arange(n)
    d, r = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    stack = np.zeros((n, depth + 1), dtype=np.int64)
    tokens = np.zeros((n, length + 3), dtype=np.int64)
    exp = np.full((n, length + 3), -1, dtype=np.int64)
    dep = np.zeros((n, length + 3), dtype=np.int64)
    tokens[:, 0] = VOCAB.id("<bos>")
    for t in range(length):
        u, w = up[t, d, r], down[t, d, r]
        go_up = rng.random(n) * (u + w) < u
        kind = rng.integers(0, k, size=n)
        stack[rows[go_up], d[go_up]] = kind[go_up]
        d = d + np.where(go_up, 1, -1)
        r = np.maximum(r, d == depth)
        top = stack[rows, d]                          # the bracket just opened / just closed
        tokens[:, t + 1] = np.where(go_up, OPEN_IDS[kind], CLOSE_IDS[top])
        exp[:, t + 1] = np.where(d > 0, stack[rows, np.maximum(d - 1, 0)], -1)
        dep[:, t + 1] = d
    tokens[:, length + 1] = VOCAB.id("<sep>")
    exp[:, length + 1], dep[:, length + 1] = exp[:, length], d
    tokens[:, length + 2] = CLOSE_IDS[exp[:, length]]
    exp[:, length + 2] = np.where(d > 1, stack[rows, np.maximum(d - 2, 0)], -1)
    dep[:, length + 2] = d - 1
    return tokens, exp, dep


def _batch(rng, n, depth, k, length):
    tokens, exp, dep = _walk(rng, n, depth, k, length)
    sup = np.zeros(tokens.shape, dtype=bool)
    sup[:, length + 1] = True
    return Rows(tokens, np.full((n, 1), length + 1), {"expected_close": exp, "depth": dep}, sup)


def _pairs(rng, n, depth, k, length):
    need(k >= 2, f"make_pairs('brackets') needs k >= 2 bracket types, got k={k}")
    clean = _batch(rng, n, depth, k, length)
    dep = clean.labels["depth"][:, :length + 1]
    final = dep[:, -1:]
    # the innermost open bracket: the last step from final-1 up to final depth
    crossing = (dep[:, 1:] == final) & (dep[:, :-1] == final - 1)
    j = length - np.argmax(crossing[:, ::-1], axis=1)   # its token position
    rows = np.arange(n)
    kind = clean.labels["expected_close"][rows, j]
    new = (kind + 1 + rng.integers(0, k - 1, size=n)) % k
    tokens = clean.tokens.copy()
    tokens[rows, j] = OPEN_IDS[new]
    tokens[:, length + 2] = CLOSE_IDS[new]
    return clean, Rows(tokens, clean.answer_pos, {}, clean.supervise)


register(
    name="brackets", doc=__doc__, uid=6,
    knobs={"depth": (4, "1..length (1 needs an odd length)", "maximum nesting depth, reached exactly"),
           "k": (2, "1..4", "bracket types"),
           "length": (24, "1..512", "brackets before <sep>")},
    grid={"depth": [2, 3, 4, 8, 12], "length": [8, 16, 32, 64], "k": [1, 2, 3, 4]},
    batch=_batch, pairs=_pairs, validate=_validate)
