"""Stacked training with the CUDA-graph path (interp.stacked_graph), on CPU: an eager stand-in for the capture
(its replay re-runs the captured pass on the static inputs into the same output tensors) must train exactly
what the eager stack trains, so the wiring around the graphs (static inputs per batch shape, outputs copied
out, the optimizer after the replay, warm-up passes changing nothing) is right. The real capture runs on a
GPU only (bench/bench_train_many.py, modes ending in g)."""
import pytest
import torch

from interp import stacked, stacked_graph
from interp.interventions import graphs
from interp.train import read_log
from interp.zoo import load_model
from tests.test_stacked import RUNS, cfg


calls: list = []   # the outputs of each stand-in capture


def _fake_capture(body, warmup=2, pool=None):
    for _ in range(warmup):          # as the real capture: warm-up passes run before the capture
        body()
    out = body()
    calls.append(out)

    class Replay:
        def replay(self):
            for o, n in zip(out, body()):
                o.copy_(n)
    return Replay(), out


def test_shape_graphs_capture_once_per_shape_and_copy_inputs_in(monkeypatch):
    monkeypatch.setattr(graphs, "capture", _fake_capture)
    calls.clear()
    seen = []

    def fn(x, y):
        seen.append(x.shape)
        return (x * 2 + y.sum(),)
    g = stacked_graph.ShapeGraphs(fn)
    a, b = torch.arange(6.).view(2, 3), torch.ones(4)
    (r1,) = g(a, b)
    (r2,) = g(a + 1, b)                   # same shapes: replayed on the new inputs, no new capture
    (r3,) = g(torch.zeros(3, 3), b)       # a new shape: a second graph
    assert len(calls) == 2 and len(g.graphs) == 2
    assert torch.equal(r1, a * 2 + 4) and torch.equal(r2, (a + 1) * 2 + 4) and torch.equal(r3, torch.full((3, 3), 4.))
    assert r1.data_ptr() != r2.data_ptr()  # each call's outputs are its own, not the graph's static tensors


def test_failed_capture_runs_that_shape_eagerly_with_one_warning(monkeypatch):
    def broken(body, warmup=2, pool=None):
        raise graphs.GraphUnavailable("RuntimeError: operation not permitted when stream is capturing")
    monkeypatch.setattr(graphs, "capture", broken)
    g = stacked_graph.ShapeGraphs(lambda x: (x + 1,))
    with pytest.warns(UserWarning, match="without CUDA graphs"):
        (r,) = g(torch.zeros(2))
    assert torch.equal(r, torch.ones(2)) and len(g.failed) == 1
    (r,) = g(torch.ones(2))               # the failed shape is not tried again
    assert torch.equal(r, torch.full((2,), 2.))


def test_graphed_stack_trains_what_the_eager_stack_trains(tmp_path, monkeypatch):
    runs = [(s, lr) for s, lr in RUNS[:2]]
    stacked.train_stacked([cfg(tmp_path, f"eager{s}", s, lr) for s, lr in runs], progress=False)
    monkeypatch.setattr(graphs, "graphable", lambda dev: True)
    monkeypatch.setattr(graphs, "capture", _fake_capture)
    calls.clear()
    stacked.train_stacked([cfg(tmp_path, f"graph{s}", s, lr) for s, lr in runs], progress=False, cuda_graphs=True)
    assert len(calls) >= 2               # the task mixture's lengths and the induction warm-up: several shapes
    for s, _ in runs:
        le, lg = (read_log(tmp_path / f"{k}{s}" / "train_log.jsonl") for k in ("eager", "graph"))
        assert [r["loss"] for r in lg] == [r["loss"] for r in le]
        se, sg = (load_model(tmp_path / f"{k}{s}").state_dict() for k in ("eager", "graph"))
        for k in se:
            assert torch.equal(sg[k], se[k]), k


def test_graphs_are_off_on_a_cpu_and_by_default(tmp_path, monkeypatch):
    monkeypatch.setattr(graphs, "capture", lambda *a, **k: pytest.fail("captured on a CPU"))
    stacked.train_stacked([cfg(tmp_path, "cpu0", 0, 1e-3, steps=3)], progress=False, cuda_graphs=True)
    assert (tmp_path / "cpu0" / "model.safetensors").exists()


def test_cli_cuda_graphs_and_length_split_reach_the_stack(tmp_path, monkeypatch):
    from interp.cli import main
    got = []
    real = stacked.train_stacked
    monkeypatch.setattr(stacked, "train_stacked",
                        lambda cfgs, **kw: got.append((kw["cuda_graphs"], kw["length_split"])) or real(cfgs, **kw))
    argv = ["train", "--out", str(tmp_path / "arm"), "--seeds", "0,1", "--layout", "gdn50", "--d-model", "16",
            "--n-layers", "2", "--n-heads", "2", "--head-dim", "8", "--steps", "2", "--batch-size", "4",
            "--warmup", "1", "--eval-every", "2", "--device", "cpu"]
    assert main(argv) == 0 and main(argv + ["--no-resume", "--no-cuda-graphs", "--length-split"]) == 0
    assert got == [(True, False), (False, True)]    # graphs on and length groups off by default; as asked
