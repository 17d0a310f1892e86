"""Tasks: labels and answers agree with an independent checker; determinism; pairs; errors."""
import pytest
import torch

import task_checker as C
from interp import tasks as T
from interp.tasks import TaskError


def settings(task):
    out = [{}]
    for knob, vals in T.difficulty_grid(task).items():
        out += [{knob: vals[0]}, {knob: vals[-1]}]
    return out


def check_one(task, batch, i, knobs):
    words = batch.words(i)
    L = len(words)
    if task == "state_recall":
        k = {**{n: d[0] for n, d in T.knobs(task).items()}, **knobs}
        answers, labels = C.state_recall(words, k["n_vars"], k["modulus"])
    elif task == "entity_tracking":
        k = {**{n: d[0] for n, d in T.knobs(task).items()}, **knobs}
        answers, labels = C.entity_tracking(words, k["n_objects"])
    else:
        answers, labels = getattr(C, task)(words)
    got = [(int(p), T.VOCAB.words[int(a)]) for p, a in zip(batch.answer_pos[i], batch.answers[i]) if p >= 0]
    assert got == answers, (task, words, got, answers)
    for name, lab in labels.items():
        assert batch.labels[name][i, :L].tolist() == lab, (task, name, words)
    assert batch.loss_mask[i, [p for p, _ in got]].all()


@pytest.mark.parametrize("task", sorted(T.TASKS))
def test_labels_match_independent_checker(task):
    for knobs in settings(task):
        b = T.generate(task, 12, seed=5, **knobs)
        for i in range(len(b)):
            check_one(task, b, i, knobs)


def test_state_recall_cot_answers_are_intermediate_values():
    b = T.generate("state_recall", 10, seed=1, cot=True, complexity="swap")
    for i in range(10):
        answers, _ = C.state_recall(b.words(i), 3, 10)
        sup = b.loss_mask[i].nonzero().flatten().tolist()
        assert [p for p, _ in answers] == sup
        for p, a in answers:
            assert b.words(i)[p + 1] == a


@pytest.mark.parametrize("task", sorted(T.TASKS))
def test_determinism(task):
    a, b, c = T.generate(task, 8, seed=3), T.generate(task, 8, seed=3), T.generate(task, 8, seed=4)
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    for k in a.labels:
        assert torch.equal(a.labels[k], b.labels[k])


@pytest.mark.parametrize("task", sorted(T.TASKS))
def test_pairs_differ_in_one_fact(task):
    for knobs in settings(task):
        if task == "entity_tracking" and knobs.get("n_boxes", 4) < 3:
            continue
        p = T.make_pairs(task, 10, seed=2, **knobs)
        assert p.clean.shape == p.corrupted.shape
        assert (p.clean_answer != p.corrupted_answer).all()
        for i in range(len(p)):
            cw, xw = T.VOCAB.decode(p.clean[i]), T.VOCAB.decode(p.corrupted[i])
            diffs = [j for j, (u, v) in enumerate(zip(cw, xw)) if u != v]
            prompt_diffs = [j for j in diffs if j <= int(p.answer_pos[i])]
            # one controlled fact in the prompt (mqar may repeat the fact at earlier queries of that key)
            assert len(prompt_diffs) >= 1 and prompt_diffs[0] == int(p.diff_pos[i])
            if task not in ("mqar", "state_recall"):
                assert len(prompt_diffs) == 1, (task, cw, xw)
            for words, ans in ((cw, p.clean_answer[i]), (xw, p.corrupted_answer[i])):
                k = {**{n: d[0] for n, d in T.knobs(task).items()}, **knobs}
                if task == "state_recall":
                    got = C.state_recall(words, k["n_vars"], k["modulus"])[0][-1]
                elif task == "entity_tracking":
                    got = C.entity_tracking(words, k["n_objects"])[0][-1]
                else:
                    got = getattr(C, task)(words)[0][-1]
                assert got == (int(p.answer_pos[i]), T.VOCAB.words[int(ans)])


@pytest.mark.parametrize("call,msg", [
    (lambda: T.generate("mqr", 2), "unknown task 'mqr' (did you mean mqar?); valid tasks: brackets"),
    (lambda: T.generate("mqar", 2, n_pair=3), "unknown knob 'n_pair' for task 'mqar'; valid knobs: n_pairs"),
    (lambda: T.generate("mqar", 2, n_pairs=100), "n_pairs=100 is out of range; valid: integers 1..64"),
    (lambda: T.generate("mqar", 2, n_keys=8, n_pairs=9), "n_pairs=9 is out of range; valid: integers 1..8"),
    (lambda: T.generate("state_recall", 2, n_vars=0), "n_vars=0 is out of range; valid: integers 1..16"),
    (lambda: T.generate("state_recall", 2, complexity="mul"), "complexity='mul' is not valid; valid: assign, copy"),
    (lambda: T.generate("permutation", 2, group="S4"), "group='S4' is not valid; valid: S3, S5"),
    (lambda: T.generate("brackets", 2, depth=30, length=10), "depth=30 is out of range; valid: integers 1..10"),
    (lambda: T.generate("copy", 2, ngram=40, seq_len=10), "ngram=40 is out of range"),
    (lambda: T.make_pairs("entity_tracking", 20, n_boxes=2, n_moves=4), "needs n_boxes >= 3"),
])
def test_errors(call, msg):
    with pytest.raises(TaskError, match=None) as e:
        call()
    assert msg in str(e.value)
