"""parity: the parity of a bit string, and counting modulo m (modular counting).

    <bos> 1 0 0 1 1 ... 0 <sep> <answer>

``n_bits`` random bits (the number words ``0`` and ``1``, each with probability 1/2), then
``<sep>``; the answer, predicted at ``<sep>``, is the number of ``1`` bits modulo ``modulus`` (a
number word). ``modulus=2`` (default) is parity; ``modulus >= 3`` is modular counting (counting
modulo 3 needs more than a sign flip per token: Grazzi et al. 2024, arXiv 2411.12537). The
difficulty grid moves only ``n_bits`` (the length); ``modulus`` picks the task variant, so a
trainer that draws one grid knob per batch always varies the length.
Labels: ``running_count`` [T] the count of ``1`` bits so far modulo ``modulus`` at every bit token
and after (at ``<sep>`` and the answer: the final count; -1 at ``<bos>``).
Pairs: one bit flipped, so the count moves by one and the answer differs.
"""
from __future__ import annotations

import numpy as np

from interp.tasks.base import Rows, int_in, register
from interp.tasks.vocab import NUMBERS, VOCAB

BOS, SEP = VOCAB.id("<bos>"), VOCAB.id("<sep>")
NUM_IDS = np.asarray(VOCAB.encode(NUMBERS))


def _validate(n_bits, modulus):
    int_in("n_bits", n_bits, 1, 4096)
    int_in("modulus", modulus, 2, len(NUMBERS))


def _render(bits: np.ndarray, modulus: int) -> Rows:
    """Rows for bit strings ``bits`` [N, n] (vectorised over examples)."""
    N, n = bits.shape
    count = np.cumsum(bits, axis=1) % modulus                         # after each bit
    final = count[:, -1]
    tokens = np.concatenate([np.full((N, 1), BOS), NUM_IDS[bits], np.full((N, 1), SEP),
                             NUM_IDS[final][:, None]], axis=1)
    running = np.concatenate([np.full((N, 1), -1), count, final[:, None], final[:, None]], axis=1)
    sup = np.zeros(tokens.shape, dtype=bool)
    sup[:, n + 1] = True
    return Rows(tokens, np.full((N, 1), n + 1, dtype=np.int64), {"running_count": running}, sup)


def _batch(rng, n, n_bits, modulus):
    return _render(rng.integers(0, 2, (n, n_bits)), modulus)


def _pairs(rng, n, n_bits, modulus):
    bits = rng.integers(0, 2, (n, n_bits))
    alt = bits.copy()
    j = rng.integers(0, n_bits, n)
    alt[np.arange(n), j] ^= 1
    return _render(bits, modulus), _render(alt, modulus)


register(
    name="parity", doc=__doc__, uid=9,
    knobs={"n_bits": (16, "1..4096", "bits before <sep> (the length)"),
           "modulus": (2, "2..64", "count the 1 bits modulo this (2: parity; >= 3: modular counting)")},
    grid={"n_bits": [2, 4, 8, 12, 16, 24, 32, 40, 64, 128, 256]},
    batch=_batch, pairs=_pairs, validate=_validate)
