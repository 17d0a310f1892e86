"""brackets: Dyck-k prefixes; predict the correct closing delimiter.

    <bos> ( [ ( ) ] [ { } <sep> ]

A random well-nested prefix of ``length`` brackets of ``k`` types with nesting at most ``depth``
and at least one bracket left open; after ``<sep>`` the answer is the closing delimiter of the
innermost open bracket. Labels: ``expected_close`` [T] the closing delimiter (0..3 = ) ] } >) the
innermost open bracket needs after each token (-1 when none is open); ``depth`` [T] nesting depth.
Pairs: the type of the innermost open bracket differs.
"""
from __future__ import annotations

from interp.tasks.base import Example, TaskSpec, int_in, register
from interp.tasks.vocab import CLOSE, OPEN


def _validate(depth, k, length):
    int_in("k", k, 1, len(OPEN))
    int_in("length", length, 1, 512)
    int_in("depth", depth, 1, length)


def _sequence(rng, depth, k, length):
    seq, stack = [], []
    for t in range(length):
        left = length - t
        if not stack:
            op = True
        elif len(stack) >= depth or (left == 1 and len(stack) == 0):
            op = False
        elif left <= 1:
            op = True if not stack else bool(rng.random() < 0.6)
        else:
            op = bool(rng.random() < 0.6)
        if op:
            b = int(rng.integers(k))
            stack.append(b)
            seq.append(("o", b))
        else:
            seq.append(("c", stack.pop()))
    if not stack:  # ensure something is open at the end: re-open the last closed bracket
        kind, b = seq[-1]
        seq[-1] = ("o", b)
    return seq


def _render(seq):
    stack, words, exp, dep = [], ["<bos>"], [-1], [0]
    for kind, b in seq:
        if kind == "o":
            stack.append(b)
            words.append(OPEN[b])
        else:
            stack.pop()
            words.append(CLOSE[b])
        exp.append(stack[-1] if stack else -1)
        dep.append(len(stack))
    words.append("<sep>")
    exp.append(stack[-1])
    dep.append(len(stack))
    words.append(CLOSE[stack[-1]])
    exp.append(-1)
    dep.append(len(stack))
    return Example(words, [len(words) - 2], {"expected_close": exp, "depth": dep})


def _example(rng, depth, k, length):
    return _render(_sequence(rng, depth, k, length))


def _pair(rng, depth, k, length):
    from interp.tasks.base import need
    need(k >= 2, f"make_pairs('brackets') needs k >= 2 bracket types, got {k}")
    seq = _sequence(rng, depth, k, length)
    stack = []
    for i, (kind, b) in enumerate(seq):
        stack.append(i) if kind == "o" else stack.pop()
    j = stack[-1]  # the innermost open bracket (never closed)
    alt = list(seq)
    alt[j] = ("o", (seq[j][1] + 1 + int(rng.integers(k - 1))) % k)
    return _render(seq), _render(alt)


register(TaskSpec(
    name="brackets", doc=__doc__,
    knobs={"depth": (4, "1..length", "maximum nesting depth"), "k": (2, "1..4", "bracket types"),
           "length": (24, "1..512", "brackets before <sep>")},
    grid={"depth": [1, 2, 4, 8, 12], "length": [8, 16, 32, 64]},
    example=_example, pair=_pair, validate=_validate))
