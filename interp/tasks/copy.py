"""copy: induction / copying of a repeated segment.

    <bos> c5 c9 c1 ... c7 (seq_len distinct symbols) <sep> c9 c1 ... (a segment of ngram symbols)

The segment repeats ``ngram`` consecutive symbols of the prefix; after its first symbol every next
symbol is predictable by copying (all supervised; the last one is the answer). ``distance``: how
far back each repeated symbol's source lies (position of the copy minus position of the source,
ngram+1..seq_len+1; None: the segment starts anywhere in the prefix, uniformly).
Labels: ``copy_source`` [T] at repeat tokens but the last, the position of the prefix token the
next token copies (-1 elsewhere).
Pairs: the prefix symbol that the final answer copies is replaced by an unused symbol.
"""
from __future__ import annotations

from interp.tasks.base import Example, int_in, register
from interp.tasks.vocab import SYMBOLS


def _validate(seq_len, ngram, distance):
    int_in("seq_len", seq_len, 2, len(SYMBOLS) - 1)
    int_in("ngram", ngram, 2, seq_len)
    if distance is not None:
        int_in("distance", distance, ngram + 1, seq_len + 1)


def _start(rng, seq_len, ngram, distance):
    """Prefix index of the segment's first symbol (the repeat begins at position seq_len + 2)."""
    return int(rng.integers(seq_len - ngram + 1)) if distance is None else seq_len + 1 - distance


def _render(prefix, start, ngram):
    words = ["<bos>"] + [SYMBOLS[s] for s in prefix] + ["<sep>"]
    src = [-1] * len(words)
    pos = []
    for i in range(ngram):
        words.append(SYMBOLS[prefix[start + i]])
        src.append(1 + start + i + 1 if i + 1 < ngram else -1)
        if i + 1 < ngram:
            pos.append(len(words) - 1)
    return Example(words, pos, {"copy_source": src})


def _example(rng, seq_len, ngram, distance):
    prefix = [int(s) for s in rng.choice(len(SYMBOLS), seq_len, replace=False)]
    return _render(prefix, _start(rng, seq_len, ngram, distance), ngram)


def _pair(rng, seq_len, ngram, distance):
    prefix = [int(s) for s in rng.choice(len(SYMBOLS), seq_len, replace=False)]
    start = _start(rng, seq_len, ngram, distance)
    unused = [s for s in range(len(SYMBOLS)) if s not in prefix]
    alt = list(prefix)
    alt[start + ngram - 1] = unused[int(rng.integers(len(unused)))]
    return _render(prefix, start, ngram), _render(alt, start, ngram)


register(
    name="copy", doc=__doc__, uid=7,
    knobs={"seq_len": (32, "2..63", "distinct symbols before <sep>"),
           "ngram": (8, "2..seq_len", "length of the repeated segment"),
           "distance": (None, "ngram+1..seq_len+1 or None (random)", "copy position minus source position")},
    grid={"ngram": [2, 4, 8, 16], "seq_len": [8, 16, 32, 63], "distance": [9, 16, 24, 33]},
    example=_example, pair=_pair, validate=_validate)
