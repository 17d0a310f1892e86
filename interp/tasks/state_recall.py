"""state_recall: a straight-line program over variables, then a query for one variable.

    <bos> x0 = 3 ; x1 = 7 ; ...            initialise every variable
          x1 = x0 ;  x2 += 4 ;  swap x0 x1 ;  x0 = 5 ;      n_steps statements
          ? x1 <answer>

Statements (each 4 tokens) allowed by ``complexity``: ``assign`` (xi = c), ``copy`` (+ xi = xj),
``arith`` (+ xi += c, c in 1..modulus-1, mod ``modulus``), ``swap`` (+ swap xi xj); copy and swap
name two different variables, so with ``n_vars=1`` only assign / arith occur. A statement takes
effect at its ``;``. With ``cot=True`` every statement is followed by ``is v`` (v = the queried variable's value
after that statement; supervised at ``is``), the explicit-reasoning variant, and the query comes
first (``? xq ;`` right after the initialisation) so the model knows what to track. ``query_first=True``
puts that ``? xq ;`` block in without the ``is v`` tokens: the direct answer with the query known from
the start (it separates cot's knowing-what-to-track from its reasoning tokens).

Labels: ``var_value`` [T, n_vars] (column j = ``xj``) every variable's value after each token (-1 before it is
initialised), ``query_var_value`` [T] the queried variable's, ``steps_since_write`` [T] statements
since the queried variable last changed (-1 before it is initialised).
Pairs: one constant of the program (of an ``=`` or ``+=`` statement, initialisation included)
differs, and so does the final answer; with ``cot=True`` the derived ``is v`` tokens after it
differ too.
"""
from __future__ import annotations

import functools

import numpy as np

from interp.tasks.base import Rows, alias, int_in, need, one_of, register, statement_layout
from interp.tasks.vocab import NUMBERS, VARS, VOCAB

LEVELS = ["assign", "copy", "arith", "swap"]
ASSIGN, COPY, ARITH, SWAP = range(4)
ID = {w: VOCAB.id(w) for w in ["<bos>", "swap", "+=", "=", ";", "?", "is"]}
NUM_IDS, VAR_IDS = np.array(VOCAB.encode(NUMBERS)), np.array(VOCAB.encode(VARS))


def _validate(n_steps, n_vars, complexity, modulus, cot, query_first):
    int_in("n_steps", n_steps, 0, 256)
    int_in("n_vars", n_vars, 1, len(VARS))
    int_in("modulus", modulus, 2, len(NUMBERS))
    one_of("complexity", complexity, LEVELS)
    need(isinstance(cot, bool), f"cot={cot!r} is not valid; valid: False, True")
    need(isinstance(query_first, bool), f"query_first={query_first!r} is not valid; valid: False, True")


def _program(rng, n_steps, n_vars, complexity, modulus):
    """Statements (op, i, c) (c: a constant for assign / arith, a variable for copy / swap) and
    the queried variable."""
    ops = LEVELS[: LEVELS.index(complexity) + 1]
    if n_vars < 2:
        ops = [o for o in ops if o not in ("copy", "swap")]
    ops = [LEVELS.index(o) for o in ops]
    draw = rng.integers  # draw(0, h) is draw(h), a little faster
    prog = [(ASSIGN, i, int(draw(0, modulus))) for i in range(n_vars)]
    n_ops = len(ops)
    for _ in range(n_steps):
        op = ops[draw(0, n_ops)]
        i = int(draw(0, n_vars))
        if op == ASSIGN:
            prog.append((op, i, int(draw(0, modulus))))
        elif op == ARITH:
            prog.append((op, i, int(draw(1, modulus))))
        else:
            prog.append((op, i, int((i + 1 + draw(0, n_vars - 1)) % n_vars)))
    return prog, int(draw(0, n_vars))


@functools.lru_cache(maxsize=64)
def _layout(n_stmt, n_vars, cot, qfirst=False):
    """Token -> state index, statement starts, the ``? xq ;`` start (cot or qfirst) and each ``is`` (cot)."""
    extra = (((n_vars - 1, 3),) if cot or qfirst else ()) + (tuple((s, 2) for s in range(n_vars, n_stmt)) if cot else ())
    idx, stmt, starts = statement_layout(n_stmt, 4, extra, 3)
    return idx, stmt, starts.get(n_vars - 1), np.asarray([starts[s] for s in range(n_vars, n_stmt)] if cot else [],
                                                        dtype=np.int64)


def _render(progs, qs, n_vars, modulus, cot, qfirst=False):
    """Rows for programs of equal length (vectorised over examples)."""
    P = np.asarray(progs, dtype=np.int64).reshape(len(progs), -1, 3)
    op, a, c = P[..., 0], P[..., 1], P[..., 2]
    q = np.asarray(qs, dtype=np.int64)
    N, S = op.shape
    r = np.arange(N)
    is_var = (op == COPY) | (op == SWAP)
    cvar = np.where(is_var, c, 0)
    vals = np.full((N, n_vars), -1, dtype=np.int64)
    states = np.full((N, S + 1, n_vars), -1, dtype=np.int64)   # states[:, s]: after s statements
    since = np.full((N, S + 1), -1, dtype=np.int64)
    last = np.full(N, -1)
    for s in range(S):
        o, i, x = op[:, s], a[:, s], c[:, s]
        old, other = vals[r, i], vals[r, cvar[:, s]]
        vals[r, i] = np.choose(o, [x, other, (old + x) % modulus, other])
        swap = o == SWAP
        vals[r[swap], x[swap]] = old[swap]
        last = np.where((i == q) | (swap & (x == q)), s + 1, last)
        states[:, s + 1] = vals
        since[:, s + 1] = np.where(last < 0, -1, s + 1 - last)
    idx, stmt, qpos, cot_pos = _layout(S, n_vars, cot, qfirst)
    tokens = np.empty((N, len(idx)), dtype=np.int64)
    tokens[:, 0] = ID["<bos>"]
    tokens[:, stmt] = np.where(op == SWAP, ID["swap"], VAR_IDS[a])
    tokens[:, stmt + 1] = np.where(op == SWAP, VAR_IDS[a], np.where(op == ARITH, ID["+="], ID["="]))
    tokens[:, stmt + 2] = np.where(is_var, VAR_IDS[cvar], NUM_IDS[np.where(is_var, 0, c)])
    tokens[:, stmt + 3] = ID[";"]
    if cot or qfirst:
        tokens[:, qpos], tokens[:, qpos + 1], tokens[:, qpos + 2] = ID["?"], VAR_IDS[q], ID[";"]
    if cot:
        tokens[:, cot_pos] = ID["is"]
        tokens[:, cot_pos + 1] = NUM_IDS[states[r[:, None], np.arange(n_vars, S) + 1, q[:, None]]]
    tokens[:, -3], tokens[:, -2], tokens[:, -1] = ID["?"], VAR_IDS[q], NUM_IDS[vals[r, q]]
    var_value = states[:, idx]
    labels = {"var_value": var_value, "query_var_value": var_value[r, :, q], "steps_since_write": since[:, idx]}
    sup = np.zeros(tokens.shape, dtype=bool)
    sup[:, cot_pos] = True
    sup[:, -2] = True
    return Rows(tokens, np.full((N, 1), tokens.shape[1] - 2), labels, sup)


def _batch(rng, n, n_steps, n_vars, complexity, modulus, cot, query_first):
    progs = [_program(rng, n_steps, n_vars, complexity, modulus) for _ in range(n)]
    return _render([p for p, _ in progs], [q for _, q in progs], n_vars, modulus, cot, query_first)


def _provenance(prog, q):
    """The statements whose constant the final value of xq depends on. No statement merges two
    values, so each such constant enters that value once: changing it changes the answer."""
    src = {}
    for s, (op, i, c) in enumerate(prog):
        if op == ASSIGN:
            src[i] = {s}
        elif op == COPY:
            src[i] = src[c]
        elif op == ARITH:
            src[i] = src[i] | {s}
        else:
            src[i], src[c] = src[c], src[i]
    return src[q]


def _pairs(rng, n, n_steps, n_vars, complexity, modulus, cot, query_first):
    clean, corr, qs = [], [], []
    while len(clean) < n:
        prog, q = _program(rng, n_steps, n_vars, complexity, modulus)
        flows = _provenance(prog, q)
        for s in rng.permutation([s for s, (op, _, _) in enumerate(prog) if op in (ASSIGN, ARITH)]):
            op, i, c = prog[s]
            choices = [x for x in range(1 if op == ARITH else 0, modulus) if x != c]
            if not choices:
                continue
            new = int(rng.choice(choices))
            if int(s) in flows:
                alt = list(prog)
                alt[s] = (op, i, new)
                clean.append(prog)
                corr.append(alt)
                qs.append(q)
                break
    return (_render(clean, qs, n_vars, modulus, cot, query_first),
            _render(corr, qs, n_vars, modulus, cot, query_first))


register(
    name="state_recall", doc=__doc__, uid=2,
    knobs={"n_steps": (8, "0..256", "statements after the initialisation"),
           "n_vars": (3, "1..16", "variables"),
           "complexity": ("copy", "assign | copy | arith | swap", "allowed statements (cumulative)"),
           "modulus": (10, "2..64", "values are taken mod this"),
           "cot": (False, "true | false", "emit the tracked value after every statement"),
           "query_first": (False, "true | false", "the query also right after the initialisation (without cot)")},
    grid={"n_steps": [2, 4, 8, 16, 32], "n_vars": [2, 3, 5, 8], "complexity": LEVELS},
    batch=_batch, pairs=_pairs, validate=_validate)

alias("state_recall_cot", "state_recall", {"cot": True},
      "state_recall with cot=True fixed (every statement followed by ``is v``), so a training mixture can hold "
      "both variants.\n\n" + __doc__)
