"""bench/bench_train.py's trainer modes time the trainer's own update: `trainer_step`, graphed through an eager
stand-in for the capture (tests/test_stacked_graph.py's) on a CPU, reproduces the trainer's step written out (lm_loss,
clip, AdamW with its schedule) weight for weight, and its replay-vs-eager check reads 0 there."""
import torch

from bench_scripts import load  # tests/, a sibling
from interp.interventions import graphs
from interp.train import TrainConfig, _make_optimizer, lm_loss, lr_at
from interp.zoo import HybridLM, ZooConfig
from tests.test_stacked_graph import _fake_capture, calls


def _model():
    torch.manual_seed(0)
    return HybridLM(ZooConfig(vocab_size=40, d_model=32, n_layers=2, layout="gdn75", n_heads=2,
                              head_dim=16)).train()


def test_trainer_step_is_the_trainers_eager_step(monkeypatch):
    monkeypatch.setattr(graphs, "capture", _fake_capture)
    x = torch.randint(0, 40, (3, 12), generator=torch.Generator().manual_seed(1))
    ours, ref = _model(), _model()
    calls.clear()
    step, check = load("bench_train").trainer_step(ours, x, True)
    for _ in range(4):
        step(x)
    assert len(calls) == 1                                   # one capture for the one batch shape
    cfg = TrainConfig(out="", model={}, lr=1e-4)
    opt = _make_optimizer(ref, cfg)
    batch = type("B", (), {"tokens": x, "loss_mask": torch.ones_like(x, dtype=torch.bool)})()
    for i in range(4):                                       # the trainer's step, written out
        for g in opt.param_groups:
            g["lr"] = lr_at(i, cfg)
        opt.zero_grad(set_to_none=True)
        lm_loss(ref, batch).backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), cfg.grad_clip)
        opt.step()
    moved = max((a - b).abs().max().item() for a, b in zip(ours.parameters(), _model().parameters()))
    assert moved > 1e-7                                      # the steps did change the weights
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    assert check() == (0.0, 0.0)                             # replay vs eager, eager vs eager


def test_trainer_eager_has_no_check():
    x = torch.randint(0, 40, (2, 8))
    _, check = load("bench_train").trainer_step(_model(), x, False)
    assert check is None
