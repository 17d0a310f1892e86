"""entity_tracking: objects in boxes, moved around, then "where is it?".

    <bos> obj3 in box1 ; obj7 in box4 ; ...   move obj3 box2 ; ...   where obj3 ? box2

Each object starts in a box; each move takes an object to a different box (effective at ``;``).
Labels: ``box_of`` [T, n_objects] the box index (0..15) of each object after each token (-1 before
its placement); objects are listed in order of first placement. Answer: the queried object's box,
predicted at ``?``. Pairs: the destination of the last move of the queried object (or its start
box if it never moves) differs.
"""
from __future__ import annotations

import numpy as np

from interp.tasks.base import Example, int_in, need, register, statement_layout
from interp.tasks.vocab import BOXES, OBJECTS


def _validate(n_objects, n_boxes, n_moves):
    int_in("n_objects", n_objects, 1, len(OBJECTS))
    int_in("n_boxes", n_boxes, 2, len(BOXES))
    int_in("n_moves", n_moves, 0, 256)


def _story(rng, n_objects, n_boxes, n_moves):
    objs = [int(o) for o in rng.choice(len(OBJECTS), n_objects, replace=False)]
    boxes = [int(b) for b in rng.choice(len(BOXES), n_boxes, replace=False)]
    start = [boxes[int(rng.integers(n_boxes))] for _ in objs]
    moves, cur = [], list(start)
    for _ in range(n_moves):
        i = int(rng.integers(n_objects))
        dest = [b for b in boxes if b != cur[i]][int(rng.integers(n_boxes - 1))]
        moves.append((i, dest))
        cur[i] = dest
    return objs, boxes, start, moves, int(rng.integers(n_objects))


def _render(objs, start, moves, q):
    where = [-1] * len(objs)
    words, states = ["<bos>"], [list(where)]  # states[s]: boxes after s statements
    for i, b in enumerate(start):
        words += [OBJECTS[objs[i]], "in", BOXES[b], ";"]
        where[i] = b
        states.append(list(where))
    for i, b in moves:
        words += ["move", OBJECTS[objs[i]], BOXES[b], ";"]
        where[i] = b
        states.append(list(where))
    words += ["where", OBJECTS[objs[q]], "?", BOXES[where[q]]]
    idx = statement_layout(len(states) - 1, 4, (), 4)[0]
    return Example(words, [len(words) - 2], {"box_of": np.asarray(states)[idx]})


def _example(rng, n_objects, n_boxes, n_moves):
    objs, _, start, moves, q = _story(rng, n_objects, n_boxes, n_moves)
    return _render(objs, start, moves, q)


def _pair(rng, n_objects, n_boxes, n_moves):
    need(n_boxes >= 3 or n_moves == 0, f"make_pairs('entity_tracking') with moves needs n_boxes >= 3 "
                                       f"(a changed move needs a third box), got n_boxes={n_boxes}")
    objs, boxes, start, moves, q = _story(rng, n_objects, n_boxes, n_moves)
    last = [m for m, (i, _) in enumerate(moves) if i == q]
    start2, moves2 = list(start), list(moves)
    if last:
        m = last[-1]
        prev = start[q] if len(last) == 1 else moves[last[-2]][1]
        choices = [b for b in boxes if b not in (prev, moves[m][1])]
        moves2[m] = (q, choices[int(rng.integers(len(choices)))])
    else:
        choices = [b for b in boxes if b != start[q]]
        start2[q] = choices[int(rng.integers(len(choices)))]
    return _render(objs, start, moves, q), _render(objs, start2, moves2, q)


register(
    name="entity_tracking", doc=__doc__, uid=4,
    knobs={"n_objects": (3, "1..16", "objects"), "n_boxes": (4, "2..16", "boxes"),
           "n_moves": (4, "0..256", "moves after the placement")},
    grid={"n_moves": [1, 2, 4, 8, 16], "n_objects": [2, 3, 5, 8]},
    example=_example, pair=_pair, validate=_validate)
