"""state_recall: a straight-line program over variables, then a query for one variable.

    <bos> x0 = 3 ; x1 = 7 ; ...            initialise every variable
          x1 = x0 ;  x2 += 4 ;  swap x0 x1 ;  x0 = 5 ;      n_steps statements
          ? x1 <answer>

Statements (each 4 tokens) allowed by ``complexity``: ``assign`` (xi = c), ``copy`` (+ xi = xj),
``arith`` (+ xi += c, mod ``modulus``), ``swap`` (+ swap xi xj). A statement takes effect at its
``;``. With ``cot=True`` every statement is followed by ``is v`` (v = the queried variable's value
after that statement; supervised at ``is``), the explicit-reasoning variant, and the query comes
first (``? xq ;`` right after the initialisation) so the model knows what to track.

Labels: ``var_value`` [T, n_vars] every variable's value after each token (-1 before it is
initialised), ``query_var_value`` [T] the queried variable's, ``steps_since_write`` [T] statements
since the queried variable last changed (-1 before it is initialised).
Pairs: one constant of the program differs, and so does the final answer.
"""
from __future__ import annotations

from interp.tasks.base import Example, TaskSpec, int_in, need, register
from interp.tasks.vocab import NUMBERS, VARS

LEVELS = ["assign", "copy", "arith", "swap"]


def _validate(n_steps, n_vars, complexity, modulus, cot):
    int_in("n_steps", n_steps, 0, 256)
    int_in("n_vars", n_vars, 1, len(VARS))
    int_in("modulus", modulus, 2, len(NUMBERS))
    need(complexity in LEVELS, f"complexity={complexity!r} is not valid; valid: {', '.join(LEVELS)}")
    need(isinstance(cot, bool), f"cot={cot!r} must be true or false")
    need(complexity not in ("copy", "swap") or n_vars >= 2 or n_steps == 0,
         f"complexity={complexity!r} needs n_vars >= 2, got {n_vars}")


def _program(rng, n_steps, n_vars, complexity, modulus):
    ops = LEVELS[: LEVELS.index(complexity) + 1]
    if n_vars < 2:
        ops = [o for o in ops if o not in ("copy", "swap")]
    prog = [("assign", i, int(rng.integers(modulus))) for i in range(n_vars)]
    for _ in range(n_steps):
        op = ops[rng.integers(len(ops))]
        i = int(rng.integers(n_vars))
        if op in ("assign", "arith"):
            prog.append((op, i, int(rng.integers(1 if op == "arith" else 0, modulus))))
        else:
            j = int((i + 1 + rng.integers(n_vars - 1)) % n_vars)
            prog.append((op, i, j))
    return prog, int(rng.integers(n_vars))


def _render(prog, q, n_vars, modulus, cot):
    vals = [-1] * n_vars
    words, var_value, qv, since = ["<bos>"], [list(vals)], [-1], [-1]
    supervise, last_write, n_stmt = [], None, 0

    def emit(ws):
        for w in ws:
            words.append(w)
            var_value.append(list(vals))
            qv.append(vals[q])
            since.append(-1 if last_write is None else n_stmt - last_write)

    for s, (op, i, c) in enumerate(prog):
        if op == "assign":
            ws = [VARS[i], "=", NUMBERS[c], ";"]
        elif op == "copy":
            ws = [VARS[i], "=", VARS[c], ";"]
        elif op == "arith":
            ws = [VARS[i], "+=", NUMBERS[c], ";"]
        else:
            ws = ["swap", VARS[i], VARS[c], ";"]
        emit(ws[:-1])
        if op == "assign":
            vals[i] = c
        elif op == "copy":
            vals[i] = vals[c]
        elif op == "arith":
            vals[i] = (vals[i] + c) % modulus
        else:
            vals[i], vals[c] = vals[c], vals[i]
        n_stmt += 1
        touched = i == q or (op == "swap" and c == q)
        if touched:
            last_write = n_stmt
        emit([";"])
        if cot and s == n_vars - 1:
            emit(["?", VARS[q], ";"])
        if cot and s >= n_vars:
            supervise.append(len(words))
            emit(["is", NUMBERS[vals[q]]])
    emit(["?", VARS[q]])
    ans = len(words) - 1
    emit([NUMBERS[vals[q]]])
    labels = {"var_value": var_value, "query_var_value": qv, "steps_since_write": since}
    return Example(words, [ans], labels, supervise + [ans]), vals[q]


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


register(TaskSpec(
    name="state_recall", doc=__doc__,
    knobs={"n_steps": (8, "0..256", "statements after the initialisation"),
           "n_vars": (3, "1..16", "variables"),
           "complexity": ("copy", "assign | copy | arith | swap", "allowed statements (cumulative)"),
           "modulus": (10, "2..64", "values are taken mod this"),
           "cot": (False, "true | false", "emit the tracked value after every statement")},
    grid={"n_steps": [2, 4, 8, 16, 32], "n_vars": [2, 3, 5, 8], "complexity": LEVELS},
    example=_example, pair=_pair, validate=_validate))
