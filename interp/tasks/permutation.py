"""permutation: word problems in S3 / S5 (composition of permutations).

    <bos> p p p ... p <sep> <product>

Each ``p`` token is a group element (``p3_102`` = the permutation 0->1, 1->0, 2->2). The running
product after element t is r_t = p_t o r_{t-1} (r_t[i] = p_t[r_{t-1}[i]]), r_0 = identity.
Labels: ``running_product`` [T] the index of r_t in the group's element list (at element tokens
and after). The answer is the final product, predicted at ``<sep>``.
Pairs: one element differs, so the product differs (a group is cancellative).
"""
from __future__ import annotations

from interp.tasks.base import Example, int_in, one_of, register
from interp.tasks.vocab import PERM3, PERM5, S3, S5

GROUPS = {"S3": (S3, PERM3), "S5": (S5, PERM5)}


def _validate(group, n_steps):
    one_of("group", group, GROUPS)
    int_in("n_steps", n_steps, 1, 256)


def compose(p, r):
    return tuple(p[r[i]] for i in range(len(r)))


def _render(elems, group):
    perms, toks = GROUPS[group]
    index = {p: i for i, p in enumerate(perms)}
    r = tuple(range(len(perms[0])))
    words, run = ["<bos>"], [-1]
    for e in elems:
        r = compose(perms[e], r)
        words.append(toks[e])
        run.append(index[r])
    words.append("<sep>")
    run.append(index[r])
    words.append(toks[index[r]])
    run.append(index[r])
    return Example(words, [len(words) - 2], {"running_product": run})


def _example(rng, group, n_steps):
    return _render(list(rng.integers(len(GROUPS[group][0]), size=n_steps)), group)


def _pair(rng, group, n_steps):
    elems = list(rng.integers(len(GROUPS[group][0]), size=n_steps))
    alt = list(elems)
    j = int(rng.integers(n_steps))
    alt[j] = (alt[j] + 1 + int(rng.integers(len(GROUPS[group][0]) - 1))) % len(GROUPS[group][0])
    return _render(elems, group), _render(alt, group)


register(
    name="permutation", doc=__doc__, uid=3,
    knobs={"group": ("S3", "S3 | S5", "the group"), "n_steps": (8, "1..256", "elements to compose")},
    grid={"n_steps": [2, 4, 8, 16, 32], "group": ["S3", "S5"]},
    example=_example, pair=_pair, validate=_validate)
