"""copy: induction / copying of a repeated segment.

    <bos> c5 c9 c1 ... c7 (seq_len distinct symbols) <sep> c9 c1 ... (a segment of ngram symbols)

The segment repeats ``ngram`` consecutive symbols from the prefix; after its first symbol every
next symbol is predictable by copying (supervised; the last one is the answer). Labels:
``copy_source`` [T] at repeat tokens, the prefix position of the token that comes next (-1 else).
Pairs: the prefix symbol that the final answer copies differs.
"""
from __future__ import annotations

from interp.tasks.base import Example, TaskSpec, int_in, register
from interp.tasks.vocab import SYMBOLS


def _validate(seq_len, ngram):
    int_in("seq_len", seq_len, 2, len(SYMBOLS) - 1)
    int_in("ngram", ngram, 2, seq_len)


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


def _example(rng, seq_len, ngram):
    prefix = [int(s) for s in rng.choice(len(SYMBOLS), seq_len, replace=False)]
    return _render(prefix, int(rng.integers(seq_len - ngram + 1)), ngram)


def _pair(rng, seq_len, ngram):
    prefix = [int(s) for s in rng.choice(len(SYMBOLS), seq_len, replace=False)]
    start = int(rng.integers(seq_len - ngram + 1))
    unused = [s for s in range(len(SYMBOLS)) if s not in prefix]
    alt = list(prefix)
    alt[start + ngram - 1] = unused[int(rng.integers(len(unused)))]
    return _render(prefix, start, ngram), _render(alt, start, ngram)


register(TaskSpec(
    name="copy", doc=__doc__,
    knobs={"seq_len": (32, "2..63", "distinct symbols before <sep>"),
           "ngram": (8, "2..seq_len", "length of the repeated segment")},
    grid={"ngram": [2, 4, 8, 16], "seq_len": [8, 16, 32, 63]},
    example=_example, pair=_pair, validate=_validate))
