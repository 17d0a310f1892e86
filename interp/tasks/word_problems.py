"""word_problems: multi-step arithmetic word problems with exact answers and known facts.

    <bos> alice has 7 obj3 ;            given: alice has 7 of the item obj3
          bob has alice += 4 ;          relation: bob has 4 more obj3 than alice (then)
          carol has 2 obj3 ;
          bob has 9 obj5 ;              distractor: a number about another item
          alice += 3 obj3 ;             alice gets 3 more
          bob move 2 carol ;            bob gives 2 to carol
          alice move 1 box4 ;           alice puts 1 away (loses it)
          ? alice bob obj3 <answer>     how many obj3 do alice and bob have together?
          ? carol _ obj3 <answer>       (goal "one": how many obj3 does carol have?)

The entities' initialisations come first (the first is a given, ``n_relations`` of the others are
relations to an earlier entity), then ``n_steps`` updates (gain ``+=``, loss ``move n boxK``,
transfer ``move n Y``); ``n_distractors`` statements about another item are mixed in anywhere.
Every statement is 5 tokens and takes effect at its ``;``, except a relation (6 tokens), so a
knob setting fixes the length. Counts stay in 0..63 (a gain that would pass 30 becomes a loss).
Distractor numbers are drawn like the givens (2..15) but never equal any count, constant, or the
answer +-2, so an answer that uses one is recognisable. The answer is predicted at the item token of the question.

Labels: ``count`` [T, n_entities] (column j = the j-th entity introduced) its count of the asked
item after each token (-1 before its initialisation), ``distractor`` [T] 1 on the tokens of
distractor statements, else 0.
Pairs: one constant that the answer depends on (a given, a relation offset or an update amount)
differs, and so does the answer.

Because the generator knows every fact, a wrong answer can be classified mechanically
(`error_sets`, `classify`): ``state_tracking`` (an earlier value of the asked quantity),
``goal_interpretation`` (an intermediate quantity: a summand of a total, or the value a relation
read), ``key_value_binding`` (a value of another entity, or a constant of the problem misread as
the answer), ``context_synthesis`` (a distractor number), ``calculation`` (off by 1 or 2) and
``other``. A wrong answer can belong to several categories (e.g. another person's count that is also an
earlier value of the asked one): `error_types` gives all of them, `classify` the first in this order
(`ERROR_TYPES`); `interp.taxonomy` reports ambiguous answers apart.
"""
from __future__ import annotations

from interp.tasks.base import Example, TaskError, int_in, need, one_of, register
from interp.tasks.vocab import BOXES, NAMES, NUMBERS, OBJECTS

GOALS = ["one", "sum", "any"]
ERROR_TYPES = ["state_tracking", "goal_interpretation", "key_value_binding", "context_synthesis", "calculation",
               "other"]
GAIN_CAP = 30          # a gain that would take a count above this becomes a loss
MAX_COUNT = len(NUMBERS) - 1


def _validate(n_entities, n_relations, n_steps, n_distractors, goal):
    int_in("n_entities", n_entities, 1, 8)
    int_in("n_relations", n_relations, 0, n_entities - 1)
    int_in("n_steps", n_steps, 0, 64)
    int_in("n_distractors", n_distractors, 0, 32)
    one_of("goal", goal, GOALS)
    need(goal != "sum" or n_entities >= 2, f"goal='sum' needs n_entities >= 2, got n_entities={n_entities}")


# --- a problem: statements as tuples over entity indices ---------------------------------------
# ("given", e, n) | ("rel", e, base, n) | ("gain", e, n) | ("loss", e, n, box) | ("give", e, n, to)
# | ("dis", e, n) (a distractor: e has n of the other item)

def simulate(stmts, n_entities):
    """Counts after every statement: list of lists (None before initialisation); raises on a
    negative count."""
    c = [None] * n_entities
    out = []
    for s in stmts:
        op, e = s[0], s[1]
        if op == "given":
            c[e] = s[2]
        elif op == "rel":
            c[e] = c[s[2]] + s[3]
        elif op == "gain":
            c[e] += s[2]
        elif op == "loss":
            c[e] -= s[2]
        elif op == "give":
            c[e] -= s[2]
            c[s[3]] += s[2]
        if op != "dis" and c[e] < 0:
            raise ValueError("negative count")
        out.append(list(c))
    return out


def _answer(states, query):
    return sum(states[-1][e] for e in query)


def _valid(states, query):
    return all(v is None or 0 <= v <= MAX_COUNT for st in states for v in st) and _answer(states, query) <= MAX_COUNT


def _draw(rng, n_entities, n_relations, n_steps, n_distractors, goal):
    """Main statements (no distractors yet) and the query; resampled until every count fits."""
    for _ in range(1000):
        rel = set(int(x) + 1 for x in rng.choice(n_entities - 1, n_relations, replace=False)) if n_relations else set()
        stmts = []
        for e in range(n_entities):
            if e in rel:
                stmts.append(("rel", e, int(rng.integers(e)), int(rng.integers(1, 10))))
            else:
                stmts.append(("given", e, int(rng.integers(2, 16))))
        c = simulate(stmts, n_entities)[-1]
        for _ in range(n_steps):
            e = int(rng.integers(n_entities))
            op = ["gain", "loss", "give"][int(rng.integers(3 if n_entities > 1 else 2))]
            n = int(rng.integers(1, 10))
            if op == "gain" and c[e] + n > GAIN_CAP:
                op = "loss"
            if op != "gain" and c[e] == 0:
                op = "gain"
            if op == "gain":
                stmts.append(("gain", e, n))
                c[e] += n
            else:
                n = min(n, c[e])
                if op == "loss":
                    stmts.append(("loss", e, n, int(rng.integers(len(BOXES)))))
                    c[e] -= n
                else:
                    to = (e + 1 + int(rng.integers(n_entities - 1))) % n_entities
                    stmts.append(("give", e, n, to))
                    c[e] -= n
                    c[to] += n
        g = goal if goal != "any" else ("one" if n_entities == 1 or rng.integers(2) == 0 else "sum")
        query = [int(x) for x in rng.choice(n_entities, 1 if g == "one" else 2, replace=False)]
        if _valid(simulate(stmts, n_entities), query):
            return stmts, query
    raise TaskError("internal: could not draw a word problem whose counts fit in 0..63")


def _with_distractors(rng, stmts, query, n_entities, n_distractors):
    """Insert distractor statements at random places; their numbers avoid every fact of the problem."""
    if not n_distractors:
        return list(stmts)
    taken = set().union(*error_sets_of(stmts, query, n_entities).values())
    ans = _answer(simulate(stmts, n_entities), query)
    taken |= {ans + d for d in range(-2, 3)}
    free = next(f for f in ([v for v in r if v not in taken] for r in (range(2, 16), range(1, GAIN_CAP + 1),
                                                                      range(MAX_COUNT + 1))) if f)
    out = list(stmts)
    for _ in range(n_distractors):
        pos = int(rng.integers(len(out) + 1))
        out.insert(pos, ("dis", int(rng.integers(n_entities)), int(free[int(rng.integers(len(free)))])))
    return out


def _render(stmts, query, names, item, other_item):
    E = len(names)
    words, counts, dis = ["<bos>"], [[-1] * E], [0]
    states = simulate(stmts, E)
    for s, st in zip(stmts, states):
        op, e = s[0], s[1]
        if op in ("given", "dis"):
            w = [NAMES[names[e]], "has", NUMBERS[s[2]], OBJECTS[other_item if op == "dis" else item], ";"]
        elif op == "rel":
            w = [NAMES[names[e]], "has", NAMES[names[s[2]]], "+=", NUMBERS[s[3]], ";"]
        elif op == "gain":
            w = [NAMES[names[e]], "+=", NUMBERS[s[2]], OBJECTS[item], ";"]
        elif op == "loss":
            w = [NAMES[names[e]], "move", NUMBERS[s[2]], BOXES[s[3]], ";"]
        else:
            w = [NAMES[names[e]], "move", NUMBERS[s[2]], NAMES[names[s[3]]], ";"]
        before = counts[-1]
        counts += [before] * (len(w) - 1) + [[-1 if v is None else v for v in st]]
        dis += [int(op == "dis")] * len(w)
        words += w
    q = ["?", NAMES[names[query[0]]], NAMES[names[query[1]]] if len(query) > 1 else "_", OBJECTS[item]]
    ans = _answer(states, query)
    words += q + [NUMBERS[ans]]
    counts += [counts[-1]] * 5
    dis += [0] * 5
    return Example(words, [len(words) - 2], {"count": counts, "distractor": dis})


def _problem(rng, n_entities, n_relations, n_steps, n_distractors, goal):
    stmts, query = _draw(rng, n_entities, n_relations, n_steps, n_distractors, goal)
    stmts = _with_distractors(rng, stmts, query, n_entities, n_distractors)
    names = [int(x) for x in rng.choice(len(NAMES), n_entities, replace=False)]
    item, other = (int(x) for x in rng.choice(len(OBJECTS), 2, replace=False))
    return stmts, query, names, item, other


def _example(rng, **k):
    return _render(*_problem(rng, **k))


def _pair(rng, **k):
    stmts, query, names, item, other = _problem(rng, **k)
    E = k["n_entities"]
    ans = _answer(simulate(stmts, E), query)
    slots = [(i, j) for i, s in enumerate(stmts) if s[0] != "dis" for j in ([3] if s[0] == "rel" else [2])]
    for si in rng.permutation(len(slots)):
        i, j = slots[int(si)]
        old = stmts[i][j]
        for new in rng.permutation(range(1, 16)):
            if int(new) == old:
                continue
            alt = list(stmts)
            alt[i] = stmts[i][:j] + (int(new),) + stmts[i][j + 1:]
            try:
                st = simulate(alt, E)
            except ValueError:
                continue
            if _valid(st, query) and _answer(st, query) != ans:
                return _render(stmts, query, names, item, other), _render(alt, query, names, item, other)
    # unreachable in practice: the first statement's given always flows into some count
    raise TaskError("internal: no constant of this word problem changes the answer")


# --- mechanical error taxonomy ------------------------------------------------------------------

def error_sets_of(stmts, query, n_entities) -> dict:
    """{error type: set of wrong answers that count as that type} for one problem (the correct
    answer is in none). Distractor numbers are `context_synthesis`; `calculation` is answer +-1, +-2."""
    states = simulate(stmts, n_entities)
    ans = _answer(states, query)
    q = set(query)
    stale = set()
    for st in states:
        if all(st[e] is not None for e in query):
            stale.add(sum(st[e] for e in query))
    goal = set()
    if len(query) > 1:
        goal |= {states[-1][e] for e in query}
    for s, before in zip(stmts, [[None] * n_entities] + states[:-1]):
        if s[0] == "rel" and s[1] in q:
            goal.add(before[s[2]])
    binding = {st[e] for st in states for e in range(n_entities) if e not in q and st[e] is not None}
    binding |= {s[3] if s[0] == "rel" else s[2] for s in stmts if s[0] != "dis"}
    sets = {"state_tracking": stale, "goal_interpretation": goal, "key_value_binding": binding,
            "context_synthesis": {s[2] for s in stmts if s[0] == "dis"},
            "calculation": {ans + d for d in (-2, -1, 1, 2) if ans + d >= 0}}
    return {k: v - {ans} for k, v in sets.items()}


def parse(words) -> tuple:
    """(statements, query, n_entities) of a rendered problem (its words, answer optional)."""
    words = [w for w in words if w not in ("<bos>", "<pad>")]
    try:
        qi = len(words) - 1 - words[::-1].index("?")
    except ValueError:
        raise TaskError("not a word problem: no '?'") from None
    names, item = {}, words[qi + 3]

    def ent(w):
        if w not in names:
            names[w] = len(names)
        return names[w]
    stmts, cur = [], []
    for w in words[:qi]:
        if w != ";":
            cur.append(w)
            continue
        a, verb, x, y = cur[0], cur[1], cur[2], cur[3] if len(cur) > 3 else None
        e = ent(a)
        if verb == "has" and x in names and len(cur) == 5:
            stmts.append(("rel", e, names[x], int(cur[4])))
        elif verb == "has":
            stmts.append(("given" if y == item else "dis", e, int(x)))
        elif verb == "+=":
            stmts.append(("gain", e, int(x)))
        elif y in names:
            stmts.append(("give", e, int(x), names[y]))
        else:
            stmts.append(("loss", e, int(x), BOXES.index(y)))
        cur = []
    query = [names[words[qi + 1]]] + ([names[words[qi + 2]]] if words[qi + 2] != "_" else [])
    return stmts, query, len(names)


def error_sets(words) -> dict:
    """`error_sets_of` for a rendered problem."""
    return error_sets_of(*parse(words))


def answer(words) -> int:
    stmts, query, E = parse(words)
    return _answer(simulate(stmts, E), query)


def error_types(words, predicted) -> list[str]:
    """``["correct"]``, or every error type (`ERROR_TYPES` order) the predicted answer word (or int) fits;
    ``["other"]`` when it fits none. More than one type: the answer is wrong in more than one way."""
    stmts, query, E = parse(words)
    ans = _answer(simulate(stmts, E), query)
    try:
        a = int(predicted)
    except (TypeError, ValueError):
        return ["other"]
    if a == ans:
        return ["correct"]
    sets = error_sets_of(stmts, query, E)
    return [t for t in ERROR_TYPES[:-1] if a in sets[t]] or ["other"]


def classify(words, predicted) -> str:
    """'correct' or the first error type (`ERROR_TYPES` order) of the predicted answer word (or int)."""
    return error_types(words, predicted)[0]


register(
    name="word_problems", doc=__doc__, uid=8,
    knobs={"n_entities": (3, "1..8", "people in the problem"),
           "n_relations": (1, "0..n_entities-1", "people introduced relative to an earlier one"),
           "n_steps": (3, "0..64", "updates after the introductions (gain, loss, transfer)"),
           "n_distractors": (2, "0..32", "statements about another item (irrelevant numbers)"),
           "goal": ("any", "one | sum | any", "ask one person's count, two people's total, or either")},
    grid={"n_steps": [0, 1, 2, 4, 8], "n_distractors": [0, 2, 4, 8], "n_entities": [2, 3, 5], "goal": ["one", "sum"]},
    example=_example, pair=_pair, validate=_validate)
