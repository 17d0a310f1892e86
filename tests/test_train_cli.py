"""Trainer (learning, resume) and CLI error handling."""
import subprocess
import sys

import pytest
import torch

from interp import tasks as T
from interp.cli import main
from interp.train import TrainConfig, answer_accuracy, train
from interp.zoo import load_model

TINY = dict(d_model=32, n_layers=2, layout="gdn50", n_heads=2, head_dim=16)


def cfg(tmp_path, **kw):
    base = dict(out=str(tmp_path / "run"), model=TINY, tasks=["mqar"], steps=20, batch_size=8,
                eval_every=10, eval_n=16, save_every=10, seed=0, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def test_resume_equals_uninterrupted(tmp_path):
    a = train(cfg(tmp_path / "a"), progress=False)
    train(cfg(tmp_path / "b"), progress=False, stop_after=10)
    assert (tmp_path / "b" / "run" / "checkpoint" / "trainer.pt").is_file()
    b = train(cfg(tmp_path / "b"), progress=False)
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=n)
    saved = load_model(tmp_path / "a" / "run")
    x = T.generate("mqar", 4, seed=3).tokens
    with torch.no_grad():
        torch.testing.assert_close(saved(x), a(x))


def test_training_reduces_loss(tmp_path):
    """150 steps on mqar take the answer loss well below the untrained model's."""
    from interp.train import lm_loss
    from interp.zoo import HybridLM, ZooConfig
    torch.manual_seed(0)
    batch = T.generate("mqar", 64, seed=11)
    untrained = HybridLM(ZooConfig(vocab_size=len(T.VOCAB), **{**TINY, "layout": "transformer"}))
    with torch.no_grad():
        before = lm_loss(untrained, batch).item()
    c = cfg(tmp_path, model={**TINY, "layout": "transformer"}, steps=150, batch_size=32, lr=3e-3,
            eval_every=150, warmup=10)
    m = train(c, progress=False)
    with torch.no_grad():
        after = lm_loss(m, batch).item()
    assert after < before - 1.0, (before, after)


@pytest.mark.parametrize("argv,msg", [
    (["train", "--layout", "gdn77", "--out", "x"], "unknown recurrent percentage 77"),
    (["train", "--layout", "gdn75", "--task", "mqr", "--out", "x"], "unknown task 'mqr'"),
    (["eval", "--model", "nope_model"], "not found"),
])
def test_cli_errors(argv, msg, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and msg in err and "Traceback" not in err


def test_cli_help_everywhere():
    for cmd in ([], ["train"], ["eval"], ["demo"], ["capture"]):
        r = subprocess.run([sys.executable, "-m", "interp.cli", *cmd, "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "usage: interp" in r.stdout
