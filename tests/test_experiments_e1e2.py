"""E1 / E2 experiments: the word_problems task's error taxonomy, the trainer's fixed knobs and
time-limit resume, and the experiments' --test runs end to end (tiny models, a few steps)."""
import json

import numpy as np
import pytest
import torch

from interp import tasks as T
from interp.tasks import word_problems as W
from interp.train import TrainConfig, train

# alice 7, bob = alice + 4 = 11, carol 5, (bob has 13 obj5: distractor), alice 10, bob gives 2 to carol
PROBLEM = ("<bos> alice has 7 obj3 ; bob has alice += 4 ; carol has 5 obj3 ; bob has 13 obj5 ; "
           "alice += 3 obj3 ; bob move 2 carol ; ? alice bob obj3").split()


def test_word_problem_facts_and_answer():
    stmts, query, E = W.parse(PROBLEM)
    assert E == 3 and query == [0, 1]
    assert W.simulate(stmts, E)[-1] == [10, 9, 7]
    assert W.answer(PROBLEM) == 19
    sets = W.error_sets(PROBLEM)
    assert sets["state_tracking"] == {18, 21}              # alice + bob before the last two updates
    assert sets["goal_interpretation"] == {10, 9, 7}        # the summands, and alice when bob was set from her
    assert sets["key_value_binding"] == {5, 7, 4, 3, 2}     # carol's counts and the problem's constants
    assert sets["context_synthesis"] == {13}
    assert sets["calculation"] == {17, 18, 20, 21}


@pytest.mark.parametrize("pred,kind", [(19, "correct"), ("19", "correct"), (18, "state_tracking"),
                                       (21, "state_tracking"), (10, "goal_interpretation"),
                                       (7, "goal_interpretation"), (5, "key_value_binding"),
                                       (4, "key_value_binding"), (13, "context_synthesis"), (20, "calculation"),
                                       (17, "calculation"), (40, "other"), ("obj3", "other"), (None, "other")])
def test_word_problem_classify(pred, kind):
    assert W.classify(PROBLEM, pred) == kind


def test_generated_word_problems_classify_consistently():
    b = T.generate("word_problems", 300, seed=3, n_steps=4, n_distractors=4)
    kinds = set()
    for i in range(b.n):
        words = b.words(i)
        ans = int(words[-1])
        assert W.answer(words[:-1]) == ans and W.classify(words[:-1], ans) == "correct"
        sets = W.error_sets(words[:-1])
        assert all(ans not in s for s in sets.values())
        others = set().union(*(s for k, s in sets.items() if k != "context_synthesis"))
        assert sets["context_synthesis"] and not sets["context_synthesis"] & others   # distractors unambiguous
        for k, s in sets.items():
            for v in s:
                got = W.classify(words[:-1], v)
                assert got == k or W.ERROR_TYPES.index(got) < W.ERROR_TYPES.index(k)
                kinds.add(got)
    assert kinds == set(W.ERROR_TYPES[:-1])


def _tiny(layout="gdn75"):
    return dict(d_model=16, n_layers=2, layout=layout, n_heads=2, head_dim=8)


def test_train_fixed_knobs_reach_every_batch(tmp_path, monkeypatch):
    seen = []
    real = T.generate

    def spy(task, n, seed=0, **kw):
        seen.append(kw)
        return real(task, n, seed=seed, **kw)
    monkeypatch.setattr(T, "generate", spy)
    cfg = TrainConfig(out=str(tmp_path / "r"), model=_tiny(), tasks=["state_recall"], steps=3, batch_size=4,
                      eval_every=3, eval_n=4, knobs={"state_recall": {"cot": True}}, device="cpu")
    train(cfg, progress=False)
    assert len(seen) == 4 and all(kw.get("cot") is True for kw in seen)   # 3 training batches + the eval


def test_train_time_limit_leaves_a_resumable_checkpoint(tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "r"), model=_tiny(), tasks=["mqar"], steps=5, batch_size=4, eval_every=100,
                      eval_n=4, device="cpu", time_limit=1e-9)
    train(cfg, progress=False)
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert meta["steps_done"] == 1
    assert torch.load(tmp_path / "r" / "checkpoint" / "trainer.pt", weights_only=False)["step"] == 1
    cfg.time_limit = 0.0
    train(cfg, progress=False)
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert meta["steps_done"] == 5
    steps = [json.loads(line)["step"] for line in (tmp_path / "r" / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 5]


def test_word_problem_errors_name_the_bad_value():
    with pytest.raises(T.TaskError, match="goal='sum' needs n_entities >= 2"):
        T.generate("word_problems", 2, n_entities=1, n_relations=0, goal="sum")
    with pytest.raises(T.TaskError, match="n_relations=3 is out of range; valid: integers 0..2"):
        T.generate("word_problems", 2, n_relations=3)
    with pytest.raises(T.TaskError, match="goal='all' is not valid; valid: one, sum, any"):
        T.generate("word_problems", 2, goal="all")
    assert np.isin(T.generate("word_problems", 8, seed=0).tokens.numpy(), np.arange(len(T.VOCAB))).all()
