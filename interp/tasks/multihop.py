"""multihop: flat multi-hop retrieval, following links over bindings that are all stated at once.

    <bos> c4 = c9 ; c12 = c30 ; c9 = c51 ; c30 = c2 ; ...     every binding, in random order
          ? c4 c51                                            the end of the chain that starts at c4

``n_chains`` disjoint chains of ``hops`` links each (``c4 = c9`` : c4 links to c9) over distinct symbols
``c0..c63``; one chain is queried by its first symbol, the other ``n_chains - 1`` are distractors. All
``n_chains * hops`` bindings come in one random order (flat retrieval: nothing is updated, every binding
holds at once), so the answer, the queried chain's last symbol, needs ``hops`` look-ups. The contrast is
``state_recall``, whose statements are sequential updates. A binding takes effect at its ``;``.
With ``cot=True`` the query comes first and the intermediate symbols are written out:
``? c4 ; is c9 is c51 ... ? c4 <answer>`` (hops - 1 ``is`` markers, each supervised; the final answer
is one more hop), the explicit-reasoning variant as in ``state_recall`` (`interp.closedloop` runs it).

Labels: ``query_hop_value`` [T, hops + 1] (column j: the index of the queried chain's hop-j symbol, from
the token where its links 0..j-1 have all been stated; column 0, the queried symbol, everywhere),
``hop_of`` [T] at symbol tokens the symbol's depth in its chain (0 = first, hops = last), ``on_query_chain``
[T] at symbol tokens 1 if the symbol is on the queried chain, else 0 (-1: not a symbol).
Pairs: the queried chain's last binding points to an unused symbol instead, so the answer changes (one
token differs before the answer; with ``cot=True`` the written intermediate symbols stay the same).
"""
from __future__ import annotations

import numpy as np

from interp.tasks.base import Example, int_in, need, register
from interp.tasks.vocab import SYMBOLS

MAX_HOPS = 8


def _validate(hops, n_chains, cot):
    int_in("hops", hops, 1, MAX_HOPS)
    # one symbol stays unused, for the corrupted prompt of a pair
    int_in("n_chains", n_chains, 1, (len(SYMBOLS) - 1) // (hops + 1))
    need(isinstance(cot, bool), f"cot={cot!r} is not valid; valid: False, True")


def _chains(rng, hops, n_chains):
    """[n_chains, hops + 1] distinct symbol indices (row 0: the queried chain) and the binding order:
    (chain, link) pairs, link j binding symbol j to symbol j + 1."""
    sym = rng.choice(len(SYMBOLS), n_chains * (hops + 1), replace=False).reshape(n_chains, hops + 1)
    order = rng.permutation(n_chains * hops)
    return sym, [(int(o) // hops, int(o) % hops) for o in order]


def _reach(sym, hops, stated):
    """The queried chain's symbols reachable from its first one over the links in ``stated`` (-1: not yet)."""
    row = [int(sym[0, 0])] + [-1] * hops
    for j in range(hops):
        if j not in stated:
            break
        row[j + 1] = int(sym[0, j + 1])
    return row


def _render(sym, order, hops, cot):
    depth = {int(s): (c, j) for c in range(sym.shape[0]) for j, s in enumerate(sym[c])}
    words, hop_of, on_q, resolved = [], [], [], []
    stated = set()

    def put(w, s=None):
        words.append(w if s is None else SYMBOLS[s])
        c, j = depth[s] if s is not None else (-1, -1)
        hop_of.append(j)
        on_q.append(-1 if s is None else int(c == 0))
        resolved.append(_reach(sym, hops, stated))

    put("<bos>")
    for c, j in order:                      # statement tokens see the state before it, its ';' the state after
        put(None, int(sym[c, j]))
        put("=")
        put(None, int(sym[c, j + 1]))
        if c == 0:
            stated.add(j)
        put(";")
    sup = []
    if cot:
        put("?")
        put(None, int(sym[0, 0]))
        put(";")
        for j in range(1, hops):
            sup.append(len(words))
            put("is")
            put(None, int(sym[0, j]))
    put("?")
    put(None, int(sym[0, 0]))
    sup.append(len(words) - 1)
    put(None, int(sym[0, hops]))
    labels = {"query_hop_value": resolved, "hop_of": hop_of, "on_query_chain": on_q}
    return Example(words, [len(words) - 2], labels, sup)


def _example(rng, hops, n_chains, cot):
    sym, order = _chains(rng, hops, n_chains)
    return _render(sym, order, hops, cot)


def _pair(rng, hops, n_chains, cot):
    sym, order = _chains(rng, hops, n_chains)
    clean = _render(sym, order, hops, cot)
    unused = np.setdiff1d(np.arange(len(SYMBOLS)), sym.ravel())
    alt = sym.copy()
    alt[0, hops] = int(rng.choice(unused))
    corr = _render(alt, order, hops, cot)
    need(corr.words[-1] != clean.words[-1], "internal: pair answers equal")
    return clean, corr


register(
    name="multihop", doc=__doc__, uid=10,
    knobs={"hops": (2, f"1..{MAX_HOPS}", "links from the queried symbol to the answer"),
           "n_chains": (4, "1..63 // (hops + 1)", "chains of bindings: the queried one and n_chains - 1 distractors"),
           "cot": (False, "true | false", "query first, then each intermediate symbol after 'is'")},
    grid={"hops": [1, 2, 3, 4], "n_chains": [1, 2, 4, 8]},
    example=_example, pair=_pair, validate=_validate)
