"""Stacked training with length groups (``train_stacked(..., length_split=True)``, `interp.stacked.split_groups`):
the shorter batches of a step run in a second, shorter pass. The split is the one that pads fewest tokens, is
skipped when it saves little, and the runs trained this way equal the single runs (and so the one-pass stack)
within tests/test_stacked.py's tolerance."""
import pytest

from interp import stacked
from interp.stacked import split_groups, train_stacked
from tests.test_stacked import RUNS, assert_same_run, cfg, train


def test_split_groups_pads_fewest_tokens():
    # sorted: 24 (run 2), 48, 48, 144 (run 1); padded tokens for the first k apart: 456, 384, 288; one group 576
    assert split_groups([48, 144, 24, 48]) == [[0, 2, 3], [1]]
    # 2 * 24 + 3 * 144 = 480 beats 3 * 80 + 2 * 144 = 528 (and one group's 720)
    assert split_groups([24, 24, 144, 144, 80]) == [[0, 1], [2, 3, 4]]
    assert split_groups([24, 80, 144, 80, 80, 24]) == [[0, 1, 3, 4, 5], [2]]   # 5 * 80 + 144 = 544 < 864


def test_split_groups_keeps_one_group_when_it_saves_little():
    assert split_groups([48, 48, 48]) == [[0, 1, 2]]
    assert split_groups([140, 144]) == [[0, 1]]                     # 284 padded vs 288: under 15% saved
    assert split_groups([140, 144], min_saving=0.0) == [[0], [1]]
    assert split_groups([7]) == [[0]]


@pytest.mark.parametrize("graphs", [False, True])
def test_split_stack_reproduces_single_runs(tmp_path, monkeypatch, graphs):
    if graphs:  # the graphed path's wiring, with the stand-in capture of tests/test_stacked_graph.py
        from interp.interventions import graphs as G
        from tests.test_stacked_graph import _fake_capture
        monkeypatch.setattr(G, "graphable", lambda dev: True)
        monkeypatch.setattr(G, "capture", _fake_capture)
    seen = []
    real = stacked.split_groups
    monkeypatch.setattr(stacked, "split_groups", lambda lengths: seen.append(real(lengths, 0.0)) or seen[-1])
    for s, lr in RUNS:
        train(cfg(tmp_path, f"single{s}", s, lr), progress=False)
    train_stacked([cfg(tmp_path, f"split{s}", s, lr) for s, lr in RUNS], progress=False, length_split=True,
                  cuda_graphs=graphs)
    assert any(len(g) == 2 for g in seen)      # some steps did run in two passes
    for s, _ in RUNS:
        assert_same_run(tmp_path / f"single{s}", tmp_path / f"split{s}")
