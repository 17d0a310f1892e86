"""state_recall: a straight-line program over variables, then a query for one variable.

    <bos> x0 = 3 ; x1 = 7 ; ...            initialise every variable
          x1 = x0 ;  x2 += 4 ;  swap x0 x1 ;  x0 = 5 ;      n_steps statements
          ? x1 <answer>

Statements (each 4 tokens) allowed by ``complexity``: ``assign`` (xi = c), ``copy`` (+ xi = xj),
``arith`` (+ xi += c, c in 1..modulus-1, mod ``modulus``), ``swap`` (+ swap xi xj); copy and swap
name two different variables, so with ``n_vars=1`` only assign / arith occur. A statement takes
effect at its ``;``. With ``cot=True`` every statement is followed by ``is v`` (v = the queried variable's value
after that statement; supervised at ``is``), the explicit-reasoning variant, and the query comes
first (``? xq ;`` right after the initialisation) so the model knows what to track.

Labels: ``var_value`` [T, n_vars] (column j = ``xj``) every variable's value after each token (-1 before it is
initialised), ``query_var_value`` [T] the queried variable's, ``steps_since_write`` [T] statements
since the queried variable last changed (-1 before it is initialised).
Pairs: one constant of the program (of an ``=`` or ``+=`` statement, initialisation included)
differs, and so does the final answer; with ``cot=True`` the derived ``is v`` tokens after it
differ too.
"""
from __future__ import annotations

import numpy as np

from interp.tasks.base import Example, int_in, need, one_of, register, statement_layout
from interp.tasks.vocab import NUMBERS, VARS

LEVELS = ["assign", "copy", "arith", "swap"]


def _validate(n_steps, n_vars, complexity, modulus, cot):
    int_in("n_steps", n_steps, 0, 256)
    int_in("n_vars", n_vars, 1, len(VARS))
    int_in("modulus", modulus, 2, len(NUMBERS))
    one_of("complexity", complexity, LEVELS)
    need(isinstance(cot, bool), f"cot={cot!r} is not valid; valid: False, True")


def _program(rng, n_steps, n_vars, complexity, modulus):
    ops = LEVELS[: LEVELS.index(complexity) + 1]
    if n_vars < 2:
        ops = [o for o in ops if o not in ("copy", "swap")]
    draw = rng.integers  # draw(0, h) is draw(h), a little faster
    prog = [("assign", i, int(draw(0, modulus))) for i in range(n_vars)]
    n_ops = len(ops)
    for _ in range(n_steps):
        op = ops[draw(0, n_ops)]
        i = int(draw(0, n_vars))
        if op == "assign":
            prog.append((op, i, int(draw(0, modulus))))
        elif op == "arith":
            prog.append((op, i, int(draw(1, modulus))))
        else:
            prog.append((op, i, int((i + 1 + draw(0, n_vars - 1)) % n_vars)))
    return prog, int(draw(0, n_vars))


def _layout(n_stmt, n_vars, cot):
    """Token -> state index, and the position of each cot ``is`` (after statement n_vars..)."""
    extra = (((n_vars - 1, 3),) + tuple((s, 2) for s in range(n_vars, n_stmt))) if cot else ()
    idx, starts = statement_layout(n_stmt, 4, extra, 3)
    return idx, [starts[s] for s in range(n_vars, n_stmt)] if cot else []


def _render(prog, q, n_vars, modulus, cot):
    vals = [-1] * n_vars
    words, states, since = ["<bos>"], [list(vals)], [-1]  # states[s]: after s statements
    last_write = None
    for s, (op, i, c) in enumerate(prog):
        if op == "assign":
            words += [VARS[i], "=", NUMBERS[c], ";"]
            vals[i] = c
        elif op == "copy":
            words += [VARS[i], "=", VARS[c], ";"]
            vals[i] = vals[c]
        elif op == "arith":
            words += [VARS[i], "+=", NUMBERS[c], ";"]
            vals[i] = (vals[i] + c) % modulus
        else:
            words += ["swap", VARS[i], VARS[c], ";"]
            vals[i], vals[c] = vals[c], vals[i]
        if i == q or (op == "swap" and c == q):
            last_write = s + 1
        states.append(list(vals))
        since.append(-1 if last_write is None else s + 1 - last_write)
        if cot and s == n_vars - 1:
            words += ["?", VARS[q], ";"]
        elif cot and s >= n_vars:
            words += ["is", NUMBERS[vals[q]]]
    words += ["?", VARS[q], NUMBERS[vals[q]]]
    idx, cot_pos = _layout(len(prog), n_vars, cot)
    var_value = np.asarray(states)[idx]
    labels = {"var_value": var_value, "query_var_value": var_value[:, q],
              "steps_since_write": np.asarray(since)[idx]}
    ans = len(words) - 2
    return Example(words, [ans], labels, cot_pos + [ans]), vals[q]


def _example(rng, n_steps, n_vars, complexity, modulus, cot):
    prog, q = _program(rng, n_steps, n_vars, complexity, modulus)
    return _render(prog, q, n_vars, modulus, cot)[0]


def _pair(rng, n_steps, n_vars, complexity, modulus, cot):
    while True:
        prog, q = _program(rng, n_steps, n_vars, complexity, modulus)
        clean, a = _render(prog, q, n_vars, modulus, cot)
        consts = [s for s, (op, _, _) in enumerate(prog) if op in ("assign", "arith")]
        for s in rng.permutation(consts):
            op, i, c = prog[s]
            alt = list(prog)
            choices = [x for x in range(1 if op == "arith" else 0, modulus) if x != c]
            if not choices:
                continue
            alt[s] = (op, i, int(rng.choice(choices)))
            corr, b = _render(alt, q, n_vars, modulus, cot)
            if b != a:
                return clean, corr


register(
    name="state_recall", doc=__doc__, uid=2,
    knobs={"n_steps": (8, "0..256", "statements after the initialisation"),
           "n_vars": (3, "1..16", "variables"),
           "complexity": ("copy", "assign | copy | arith | swap", "allowed statements (cumulative)"),
           "modulus": (10, "2..64", "values are taken mod this"),
           "cot": (False, "true | false", "emit the tracked value after every statement")},
    grid={"n_steps": [2, 4, 8, 16, 32], "n_vars": [2, 3, 5, 8], "complexity": LEVELS},
    example=_example, pair=_pair, validate=_validate)
