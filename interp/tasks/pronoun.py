"""pronoun: entities with a pronoun and an attribute; later a pronoun asks for the attribute.

    <bos> alice she red ; bob he blue ; carol she green ;   bob waves ; ...   she has ? green

Introductions ``name pronoun color ;``, then ``n_distractors`` sentences ``name waves ;`` (a
mention), then ``pronoun has ?``. The pronoun refers to the **most recently mentioned** entity with
that pronoun (introduction or waving), and the answer is that entity's color (predicted at ``?``).
Labels: ``referent_color`` [T] for the finally-queried pronoun, the color index (0..15) of its
current referent after each token (-1 while none is mentioned).
Pairs: the referent's color in its introduction differs.
"""
from __future__ import annotations

from interp.tasks.base import Example, int_in, register
from interp.tasks.vocab import COLORS, NAMES, PRONOUNS


def _validate(n_entities, n_distractors):
    int_in("n_entities", n_entities, 1, len(NAMES))
    int_in("n_distractors", n_distractors, 0, 256)


def _story(rng, n_entities, n_distractors):
    names = [int(x) for x in rng.choice(len(NAMES), n_entities, replace=False)]
    gender = [int(rng.integers(2)) for _ in names]
    colors = [int(x) for x in rng.choice(len(COLORS), n_entities, replace=n_entities > len(COLORS))]
    waves = [int(rng.integers(n_entities)) for _ in range(n_distractors)]
    g = gender[int(rng.integers(n_entities))]  # a pronoun some entity has
    return names, gender, colors, waves, g


def _render(names, gender, colors, waves, g):
    ref = -1
    words, lab = ["<bos>"], [-1]

    def emit(ws):
        for w in ws:
            words.append(w)
            lab.append(ref)
    for i in range(len(names)):
        emit([NAMES[names[i]], PRONOUNS[gender[i]], COLORS[colors[i]]])
        if gender[i] == g:
            ref = colors[i]
        emit([";"])
    for i in waves:
        emit([NAMES[names[i]], "waves"])
        if gender[i] == g:
            ref = colors[i]
        emit([";"])
    emit([PRONOUNS[g], "has", "?"])
    ans = len(words) - 1
    emit([COLORS[ref]])
    return Example(words, [ans], {"referent_color": lab})


def _example(rng, n_entities, n_distractors):
    return _render(*_story(rng, n_entities, n_distractors))


def _pair(rng, n_entities, n_distractors):
    names, gender, colors, waves, g = _story(rng, n_entities, n_distractors)
    clean = _render(names, gender, colors, waves, g)
    target = COLORS.index(clean.words[-1])
    who = colors.index(target)
    alt = list(colors)
    alt[who] = [c for c in range(len(COLORS)) if c not in colors][int(rng.integers(len(COLORS) - len(set(colors))))] \
        if len(set(colors)) < len(COLORS) else (target + 1) % len(COLORS)
    return clean, _render(names, gender, alt, waves, g)


register(
    name="pronoun", doc=__doc__, uid=5,
    knobs={"n_entities": (3, "1..16", "entities introduced"),
           "n_distractors": (2, "0..256", "'name waves ;' sentences before the question")},
    grid={"n_distractors": [0, 2, 4, 8, 16], "n_entities": [2, 3, 5, 8]},
    example=_example, pair=_pair, validate=_validate)
