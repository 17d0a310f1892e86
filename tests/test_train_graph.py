"""A single run's training with the CUDA-graph pass (`interp.train.train(cuda_graphs=True)`, interp.train_graph), on
CPU: with an eager stand-in for the capture (tests/test_stacked_graph.py's), the graphed run must log the same losses
and end with the same weights as the eager run, bit for bit, so the wiring (the gradients allocated once and zeroed in
place, a graph per batch shape, the warm-up passes changing nothing, the optimizer after the replay) is right. The
real capture runs on a GPU only (tests/gpu/check_stacked_graph_gpu.py --single)."""
import pytest
import torch

from interp import train as train_mod
from interp.interventions import graphs
from interp.train import TrainConfig, lm_loss, read_log, train
from interp.zoo import HybridLM, ZooConfig, load_model
from tests.test_stacked import KW
from tests.test_stacked_graph import _fake_capture, calls


def _cfg(root, name, **kw):
    return TrainConfig(out=str(root / name), seed=3, lr=3e-3, **{**KW, **kw})


def _same_run(root, a, b):
    la, lb = (read_log(root / k / "train_log.jsonl") for k in (a, b))
    assert len(la) == len(lb) > 0 and [r["loss"] for r in la] == [r["loss"] for r in lb]
    sa, sb = (load_model(root / k).state_dict() for k in (a, b))
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_graphed_single_run_trains_what_the_eager_run_trains(tmp_path, monkeypatch):
    train(_cfg(tmp_path, "eager"), progress=False)
    monkeypatch.setattr(graphs, "graphable", lambda dev: True)
    monkeypatch.setattr(graphs, "capture", _fake_capture)
    calls.clear()
    train(_cfg(tmp_path, "graph"), progress=False, cuda_graphs=True)
    assert len(calls) >= 2               # the task mixture's lengths and the induction warm-up: several shapes
    _same_run(tmp_path, "eager", "graph")


def test_failed_capture_runs_eagerly_with_a_warning_and_the_same_numbers(tmp_path, monkeypatch):
    train(_cfg(tmp_path, "eager", steps=3), progress=False)

    def broken(body, warmup=2, pool=None):
        raise graphs.GraphUnavailable("RuntimeError: operation not permitted when stream is capturing")
    monkeypatch.setattr(graphs, "graphable", lambda dev: True)
    monkeypatch.setattr(graphs, "capture", broken)
    with pytest.warns(UserWarning, match="training step of input shapes .* without CUDA graphs"):
        train(_cfg(tmp_path, "graph", steps=3), progress=False, cuda_graphs=True)
    _same_run(tmp_path, "eager", "graph")


def test_graphs_are_off_on_a_cpu_and_on_by_default_where_graphable(tmp_path, monkeypatch):
    monkeypatch.setattr(graphs, "capture", lambda *a, **k: pytest.fail("captured on a CPU"))
    train(_cfg(tmp_path, "cpu", steps=3), progress=False, cuda_graphs=True)
    assert (tmp_path / "cpu" / "model.safetensors").exists()
    seen = []
    real = train_mod.GradPass
    monkeypatch.setattr(train_mod, "GradPass", lambda *a: seen.append(a) or real(*a))
    monkeypatch.setattr(graphs, "graphable", lambda dev: True)
    monkeypatch.setattr(graphs, "capture", _fake_capture)
    train(_cfg(tmp_path, "default", steps=3), progress=False)
    train(_cfg(tmp_path, "off", steps=3), progress=False, cuda_graphs=False)
    assert [a[3] for a in seen] == [True, False]   # the default run's pass is graphed, cuda_graphs=False's eager


def test_lm_loss_is_the_mean_over_supervised_positions():
    torch.manual_seed(0)
    m = HybridLM(ZooConfig(vocab_size=11, d_model=8, n_layers=1, layout="transformer", n_heads=2, head_dim=4,
                         mamba_head_dim=4))
    tokens = torch.randint(1, 11, (3, 7))
    mask = torch.rand(3, 7) < 0.5
    mask[0, 2] = True
    logp = torch.log_softmax(m(tokens).double(), -1)   # the per-position reference, summed in float64
    want = [-logp[b, t, tokens[b, t + 1]] for b in range(3) for t in range(6) if mask[b, t]]
    got = lm_loss(m, type("B", (), {"tokens": tokens, "loss_mask": mask})())
    assert abs(got.item() - torch.stack(want).mean().item()) < 1e-6   # the model's logits are float32


def test_cli_single_run_takes_cuda_graphs(tmp_path, monkeypatch):
    from interp.cli import main
    got = []
    real = train_mod.train
    monkeypatch.setattr(train_mod, "train", lambda cfg, **kw: got.append(kw["cuda_graphs"]) or real(cfg, **kw))
    argv = ["train", "--out", str(tmp_path / "one"), "--layout", "gdn50", "--d-model", "16", "--n-layers", "2",
            "--n-heads", "2", "--head-dim", "8", "--steps", "2", "--batch-size", "4", "--warmup", "1",
            "--eval-every", "2", "--device", "cpu"]
    assert main(argv) == 0 and main(argv + ["--no-resume", "--no-cuda-graphs"]) == 0
    assert got == [True, False]          # on by default (ignored on this CPU), off when asked
