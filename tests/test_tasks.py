"""Tasks: labels and answers agree with an independent checker; determinism; pairs; errors."""
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import task_checker as C
from interp import tasks as T
from interp.tasks import TaskError

# extra knob settings beyond the defaults and the two ends of each difficulty grid
EXTRA = {
    "mqar": [{"n_keys": 4, "n_values": 2, "n_pairs": 4}, {"n_pairs": 1, "n_queries": 1, "seq_len": 16}],
    "state_recall": [{"cot": True}, {"cot": True, "complexity": "swap", "n_vars": 5, "modulus": 3},
                     {"n_vars": 1, "complexity": "swap"}, {"n_steps": 0}, {"complexity": "arith", "modulus": 64},
                     {"query_first": True, "complexity": "swap"}],
    "state_recall_cot": [{"complexity": "swap", "n_vars": 5, "modulus": 3}, {"n_vars": 1, "n_steps": 0}],
    "permutation": [{"group": "S5", "n_steps": 32}, {"n_steps": 1}],
    "parity": [{"modulus": 3, "n_bits": 40}, {"n_bits": 1}, {"modulus": 5, "n_bits": 300}, {"modulus": 64}],
    "entity_tracking": [{"n_boxes": 2}, {"n_objects": 16, "n_boxes": 16, "n_moves": 0}],
    "pronoun": [{"n_entities": 16, "n_distractors": 3}, {"n_entities": 1}],
    "brackets": [{"depth": 1, "length": 9}, {"depth": 24, "length": 24, "k": 4}, {"length": 1, "depth": 1}],
    "copy": [{"ngram": 2, "seq_len": 2}, {"distance": 9}, {"distance": 33}],
    "word_problems": [{"n_entities": 1, "n_relations": 0, "goal": "any"}, {"n_entities": 8, "n_relations": 7, "n_steps": 64},
                      {"n_steps": 32, "n_distractors": 32, "goal": "sum"}],
    "multihop": [{"cot": True}, {"cot": True, "hops": 1}, {"hops": 8, "n_chains": 7},
                 {"cot": True, "hops": 4, "n_chains": 12}],
}


def settings(task):
    out = [{}]
    for knob, vals in T.difficulty_grid(task).items():
        out += [{knob: vals[0]}, {knob: vals[-1]}]
    return out + EXTRA[task]


def resolved(task, knobs):
    return {**{n: k.default for n, k in T.knobs(task).items()}, **knobs}


def run_checker(task, words, knobs):
    return C.check(task, words, resolved(task, knobs).get("modulus"))


def unpadded(tokens):
    n = len(tokens)
    while n and tokens[n - 1] == 0:
        n -= 1
    return T.VOCAB.decode(tokens[:n])


def ids():
    return [f"{t}-{i}" for t in sorted(T.TASKS) for i in range(len(settings(t)))]


CASES = [(t, s) for t in sorted(T.TASKS) for s in settings(t)]


@pytest.mark.parametrize("task,knobs", CASES, ids=ids())
def test_labels_and_answers_match_independent_checker(task, knobs):
    b = T.generate(task, 16, seed=5, **knobs)
    N, L = b.tokens.shape
    assert b.meta == {"task": task, "knobs": resolved(task, knobs), "seed": 5}
    assert b.answers.shape == b.answer_pos.shape and b.loss_mask.shape == (N, L)
    assert torch.equal(b.answers, torch.where(b.answer_pos >= 0, b.tokens.gather(1, (b.answer_pos + 1).clamp(0)), -1))
    for i in range(N):
        words = unpadded(b.tokens[i].tolist())
        chk = run_checker(task, words, knobs)
        final = [(int(p), T.VOCAB.words[int(a)]) for p, a in zip(b.answer_pos[i], b.answers[i]) if p >= 0]
        assert len(final) >= 1
        # every answer the generator states is the one the checker derives from the prompt
        derived = dict(chk.answers)
        assert all(derived.get(p) == a for p, a in final), (task, words, final, chk.answers)
        # supervised positions: exactly the checker's determined next tokens, each correct
        assert b.loss_mask[i].nonzero().flatten().tolist() == [p for p, _ in chk.answers]
        assert all(words[p + 1] == a for p, a in chk.answers), (task, words, chk.answers)
        for name, lab in chk.labels.items():
            got = b.labels[name][i]
            assert got.shape[0] == L
            assert got[:len(words)].tolist() == lab, (task, name, words)
            assert (got[len(words):] == -1).all()
        assert set(b.labels) == set(chk.labels)


@pytest.mark.parametrize("task,knobs", CASES, ids=ids())
def test_knobs_shape_the_examples(task, knobs):
    k = resolved(task, knobs)
    b = T.generate(task, 64, seed=9, **knobs)
    N, L = b.tokens.shape
    assert (b.tokens != 0).all(), "fixed length per knob setting"
    if task == "mqar":
        assert ((b.answer_pos >= 0).sum(1) == (k["n_queries"] or min(4, k["n_pairs"]))).all()
        assert L == (k["seq_len"] or 2 + 2 * k["n_pairs"] + 2 * b.answer_pos.shape[1])
        assert b.labels["bound_value"].max() < k["n_values"]
    elif task in ("state_recall", "state_recall_cot"):
        k.setdefault("cot", True)                 # the alias has cot=True fixed
        assert b.labels["var_value"].shape == (N, L, k["n_vars"])
        assert b.labels["var_value"].max() < k["modulus"]
        n_stmt = k["n_vars"] + k["n_steps"]
        assert L == 1 + 4 * n_stmt + 2 + 1 + (2 * k["n_steps"] if k["cot"] else 0) + \
            (3 if k["cot"] or k["query_first"] else 0)
        words = {w for i in range(N) for w in b.words(i)}
        allowed = {"assign": {"="}, "copy": {"="}, "arith": {"=", "+="}, "swap": {"=", "+=", "swap"}}
        assert words & {"=", "+=", "swap"} <= allowed[k["complexity"]]
    elif task == "permutation":
        assert L == k["n_steps"] + 3 and all(w.startswith("p" + k["group"][1]) for w in b.words(0)[1:-2])
    elif task == "parity":
        assert L == k["n_bits"] + 3 and set(b.tokens[:, 1:-2].unique().tolist()) <= set(T.VOCAB.encode(["0", "1"]))
        assert b.labels["running_count"].max() < k["modulus"] and (b.answer_pos[:, 0] == L - 2).all()
    elif task == "entity_tracking":
        assert b.labels["box_of"].shape == (N, L, k["n_objects"])
        assert L == 1 + 4 * (k["n_objects"] + k["n_moves"]) + 4
        for i in range(N):
            assert len({w for w in b.words(i) if w.startswith("box")}) <= k["n_boxes"]
    elif task == "pronoun":
        assert L == 1 + 4 * k["n_entities"] + 3 * k["n_distractors"] + 4
    elif task == "brackets":
        assert L == k["length"] + 3
        assert (b.labels["depth"][:, :-2].amax(1) == k["depth"]).all()
        assert b.labels["expected_close"].max() < k["k"]
    elif task == "multihop":
        h = k["hops"]
        assert L == 1 + 4 * k["n_chains"] * h + 3 + (3 + 2 * (h - 1) if k["cot"] else 0)
        assert b.labels["query_hop_value"].shape == (N, L, h + 1) and b.labels["hop_of"].max() == h
        assert (b.loss_mask.sum(1) == (h if k["cot"] else 1)).all()
    elif task == "copy":
        assert L == k["seq_len"] + 2 + k["ngram"]
        if k["distance"] is not None:
            src = b.labels["copy_source"]
            pos = torch.arange(L).expand(N, L)
            assert ((pos + 1 - src)[src >= 0] == k["distance"]).all()


def test_state_recall_cot_states_intermediate_values():
    b = T.generate("state_recall", 10, seed=1, cot=True, complexity="swap", n_steps=6)
    for i in range(10):
        words = b.words(i)
        sup = b.loss_mask[i].nonzero().flatten().tolist()
        assert [words[p] for p in sup] == ["is"] * 6 + ["x" + words[-2][1:]]
        assert b.answer_pos[i].tolist() == [sup[-1]]


@pytest.mark.parametrize("knobs", [{}, {"n_steps": 3, "complexity": "swap"}, {"n_vars": 1, "modulus": 64}])
def test_state_recall_cot_alias_is_state_recall_with_cot(knobs):
    a = T.generate("state_recall_cot", 12, seed=7, **knobs)
    b = T.generate("state_recall", 12, seed=7, cot=True, **knobs)
    for x in ("tokens", "answer_pos", "answers", "loss_mask"):
        assert torch.equal(getattr(a, x), getattr(b, x)), x
    assert a.labels.keys() == b.labels.keys() and all(torch.equal(a.labels[k], b.labels[k]) for k in a.labels)
    assert (a.tokens == T.VOCAB.id("is")).any() and a.meta["task"] == "state_recall_cot"
    p = T.make_pairs("state_recall_cot", 6, seed=7, **knobs)
    q = T.make_pairs("state_recall", 6, seed=7, cot=True, **knobs)
    for x in ("clean", "corrupted", "answer_pos", "clean_answer", "corrupted_answer", "diff_pos"):
        assert torch.equal(getattr(p, x), getattr(q, x)), x
    assert "cot" not in T.knobs("state_recall_cot") and T.difficulty_grid("state_recall_cot") == \
        T.difficulty_grid("state_recall")
    with pytest.raises(TaskError, match="unknown knob 'cot' for task 'state_recall_cot'; valid knobs: n_steps"):
        T.generate("state_recall_cot", 2, cot=False)
    with pytest.raises(TaskError, match="n_vars=0 is out of range"):
        T.make_pairs("state_recall_cot", 2, n_vars=0)


@pytest.mark.parametrize("task", sorted(T.TASKS))
def test_determinism(task):
    a, b, c = (T.generate(task, 8, seed=s) for s in (3, 3, 4))
    for x in ("tokens", "answer_pos", "answers", "loss_mask"):
        assert torch.equal(getattr(a, x), getattr(b, x))
    assert not torch.equal(a.tokens, c.tokens)
    for k in a.labels:
        assert torch.equal(a.labels[k], b.labels[k])
    p, q, r = (T.make_pairs(task, 8, seed=s) for s in (3, 3, 4))
    assert torch.equal(p.clean, q.clean) and torch.equal(p.corrupted, q.corrupted)
    assert not torch.equal(p.clean, r.clean)


def _fingerprint():
    h = hashlib.sha256()
    for t in sorted(T.TASKS):
        h.update(T.generate(t, 4, seed=11).tokens.numpy().tobytes())
        h.update(T.make_pairs(t, 4, seed=11).corrupted.numpy().tobytes())
    return h.hexdigest()


def test_determinism_across_processes():
    here = Path(__file__).resolve().parent
    code = "import test_tasks; print(test_tasks._fingerprint())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=here.parent, env={"PYTHONHASHSEED": "123", "PATH": "", "PYTHONPATH": str(here)})
    assert out.stdout.strip() == _fingerprint()


def _pair_settings(task):
    for knobs in settings(task):
        k = resolved(task, knobs)
        if task == "entity_tracking" and k["n_boxes"] < 3 or task == "brackets" and k["k"] < 2:
            continue
        yield knobs


@pytest.mark.parametrize("task", sorted(T.TASKS))
def test_pairs_differ_in_one_fact(task):
    for knobs in _pair_settings(task):
        p = T.make_pairs(task, 10, seed=2, **knobs)
        assert p.clean.shape == p.corrupted.shape and p.n == 10
        assert (p.clean_answer != p.corrupted_answer).all()
        for i in range(len(p)):
            cw, xw = unpadded(p.clean[i].tolist()), unpadded(p.corrupted[i].tolist())
            ap = int(p.answer_pos[i])
            diffs = [j for j, (u, v) in enumerate(zip(cw, xw)) if u != v]
            prompt_diffs = [j for j in diffs if j <= ap]
            assert prompt_diffs[0] == int(p.diff_pos[i])
            if task == "state_recall_cot" or task == "state_recall" and resolved(task, knobs)["cot"]:
                assert all(cw[j - 1] == "is" for j in prompt_diffs[1:]), (cw, xw)  # derived values
            else:
                assert len(prompt_diffs) == 1, (task, cw, xw)
            clean, corr = run_checker(task, cw, knobs), run_checker(task, xw, knobs)
            assert int(p.diff_pos[i]) in clean.facts, (task, cw, xw)
            assert clean.answers[-1] == (ap, T.VOCAB.words[int(p.clean_answer[i])])
            assert corr.answers[-1] == (ap, T.VOCAB.words[int(p.corrupted_answer[i])])


def test_batch_api():
    b = T.generate("mqar", 4, seed=0)
    assert b.n == len(b) == 4 and b.to("cpu").tokens.equal(b.tokens)
    assert b.to("cpu").labels.keys() == b.labels.keys()
    p = T.make_pairs("mqar", 3, seed=0)
    assert p.n == len(p) == 3 and p.to("cpu").clean.equal(p.clean)
    for t in T.TASKS:
        for name, knob in T.knobs(t).items():
            assert knob.doc and knob.valid and knob[0] == knob.default
        for knob, values in T.difficulty_grid(t).items():
            assert knob in T.knobs(t) and len(values) >= 2
            for v in values:                      # every grid value is valid on its own
                assert len(T.generate(t, 2, **{knob: v})) == 2


def test_vocab():
    V = T.VOCAB
    assert len(V) <= 512 and V.id("<pad>") == 0 and V.id("<bos>") == 1
    assert V.decode(V.encode(["<sep>", "x3", "k5", "("])) == ["<sep>", "x3", "k5", "("]
    # the shipped default models were trained on these ids: never reorder or drop words
    assert len(V) == 424
    assert hashlib.sha256(" ".join(V.words).encode()).hexdigest()[:16] == "0441f4bb6ea53742"
    with pytest.raises(KeyError, match="'nope' is not in the task vocabulary"):
        V.id("nope")


@pytest.mark.parametrize("call,msg", [
    (lambda: T.generate("mqr", 2), "unknown task 'mqr' (did you mean mqar?); valid tasks: brackets, copy, "),
    (lambda: T.make_pairs("nonsense", 2), "unknown task 'nonsense'; valid tasks: brackets, copy, entity_tracking"),
    (lambda: T.knobs("stat_recall"), "did you mean state_recall, state_recall_cot?"),
    (lambda: T.difficulty_grid("x"), "unknown task 'x'"),
    (lambda: T.generate("mqar", 2, n_pair=3), "unknown knob 'n_pair' for task 'mqar' (did you mean n_pairs?); "
                                              "valid knobs: n_pairs, n_queries, n_keys, n_values, seq_len"),
    (lambda: T.make_pairs("copy", 2, depth=3), "unknown knob 'depth' for task 'copy'; valid knobs: seq_len, ngram"),
    (lambda: T.generate("mqar", 2, n_pairs=100), "n_pairs=100 is out of range; valid: integers 1..64"),
    (lambda: T.generate("mqar", 2, n_keys=8, n_pairs=9), "n_pairs=9 is out of range; valid: integers 1..8"),
    (lambda: T.generate("mqar", 2, n_queries=9), "n_queries=9 is out of range; valid: integers 1..8"),
    (lambda: T.generate("mqar", 2, seq_len=20), "seq_len=20 is out of range; valid: integers 26..4096"),
    (lambda: T.generate("mqar", 2, n_values=1), "n_values=1 is out of range; valid: integers 2..64"),
    (lambda: T.generate("state_recall", 2, n_vars=0), "n_vars=0 is out of range; valid: integers 1..16"),
    (lambda: T.generate("state_recall", 2, n_steps=-1), "n_steps=-1 is out of range; valid: integers 0..256"),
    (lambda: T.generate("state_recall", 2, n_steps=2.5), "n_steps=2.5 is out of range"),
    (lambda: T.generate("state_recall", 2, complexity="mul"),
     "complexity='mul' is not valid; valid: assign, copy, arith, swap"),
    (lambda: T.generate("state_recall", 2, cot="yes"), "cot='yes' is not valid; valid: False, True"),
    (lambda: T.generate("state_recall", 2, modulus=65), "modulus=65 is out of range; valid: integers 2..64"),
    (lambda: T.generate("permutation", 2, group="S4"), "group='S4' is not valid; valid: S3, S5"),
    (lambda: T.generate("permutation", 2, n_steps=0), "n_steps=0 is out of range; valid: integers 1..256"),
    (lambda: T.generate("parity", 2, n_bits=0), "n_bits=0 is out of range; valid: integers 1..4096"),
    (lambda: T.generate("parity", 2, modulus=1), "modulus=1 is out of range; valid: integers 2..64"),
    (lambda: T.make_pairs("parity", 2, n_bit=3), "unknown knob 'n_bit' for task 'parity' (did you mean n_bits?)"),
    (lambda: T.generate("entity_tracking", 2, n_boxes=1), "n_boxes=1 is out of range; valid: integers 2..16"),
    (lambda: T.generate("entity_tracking", 2, n_objects=17), "n_objects=17 is out of range; valid: integers 1..16"),
    (lambda: T.make_pairs("entity_tracking", 20, n_boxes=2), "with moves needs n_boxes >= 3 (a changed move needs a third box), got n_boxes=2"),
    (lambda: T.generate("pronoun", 2, n_entities=0), "n_entities=0 is out of range; valid: integers 1..16"),
    (lambda: T.generate("brackets", 2, depth=30, length=10), "depth=30 is out of range; valid: integers 1..10"),
    (lambda: T.generate("brackets", 2, depth=1, length=10), "depth=1 with length=10 cannot end with a bracket"),
    (lambda: T.generate("brackets", 2, k=5), "k=5 is out of range; valid: integers 1..4"),
    (lambda: T.make_pairs("brackets", 2, k=1), "needs k >= 2 bracket types, got k=1"),
    (lambda: T.generate("copy", 2, ngram=40, seq_len=10), "ngram=40 is out of range; valid: integers 2..10"),
    (lambda: T.generate("copy", 2, seq_len=64), "seq_len=64 is out of range; valid: integers 2..63"),
    (lambda: T.generate("copy", 2, distance=8), "distance=8 is out of range; valid: integers 9..33"),
    (lambda: T.generate("multihop", 2, hops=0), "hops=0 is out of range; valid: integers 1..8"),
    (lambda: T.generate("multihop", 2, hops=4, n_chains=13), "n_chains=13 is out of range; valid: integers 1..12"),
    (lambda: T.make_pairs("multihop", 2, cot=1), "cot=1 is not valid; valid: False, True"),
    (lambda: T.generate("multihop", 2, n_hops=2), "unknown knob 'n_hops' for task 'multihop' (did you mean hops?)"),
    (lambda: T.generate("mqar", 0), "n=0 is out of range; valid: integers >= 1"),
    (lambda: T.make_pairs("mqar", 2, seed=-1), "seed=-1 is out of range; valid: integers >= 0"),
])
def test_errors(call, msg):
    with pytest.raises(TaskError) as e:
        call()
    assert msg in str(e.value), str(e.value)


def test_state_recall_query_first_is_cot_without_its_is_tokens():
    """query_first puts cot's '? xq ;' block after the initialisation and nothing else: its tokens and labels
    are cot's with every 'is v' pair removed, and its pairs differ in one constant and in the answer."""
    from interp.tasks.vocab import VOCAB
    kw = dict(n_steps=6, n_vars=3, complexity="swap")
    qf = T.generate("state_recall", 16, seed=3, query_first=True, **kw)
    cot = T.generate("state_recall", 16, seed=3, cot=True, **kw)
    keep = ~np.isin(np.arange(cot.tokens.shape[1]), np.concatenate(
        [np.flatnonzero(cot.tokens[0].numpy() == VOCAB.id("is")) + d for d in (0, 1)]))
    assert np.array_equal(qf.tokens.numpy(), cot.tokens.numpy()[:, keep])
    assert np.array_equal(np.asarray(qf.labels["query_var_value"]), np.asarray(cot.labels["query_var_value"])[:, keep])
    assert (qf.tokens[:, 1 + 3 * 4] == VOCAB.id("?")).all()           # right after the 3 initialisations
    pairs = T.make_pairs("state_recall", 16, seed=1, query_first=True, **kw)
    clean, corr = pairs.clean, pairs.corrupted
    assert ((clean != corr).sum(1) == 2).all()                     # one constant and the answer
