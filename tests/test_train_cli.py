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
    (["train", "--d-model", str(2 ** 53), "--out", "x"], "make a model of about 7.8e+33 parameters; valid: up to 1e+11"),
    (["train", "--n-layers", "100000000", "--out", "x"], "--n-layers 100000000, --n-heads 4, --head-dim 32 make a"),
])
def test_cli_errors(argv, msg, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and msg in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_cli_help_everywhere():
    for cmd in ([], ["train"], ["eval"], ["demo"], ["capture"]):
        r = subprocess.run([sys.executable, "-m", "interp.cli", *cmd, "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "usage: interp" in r.stdout


# --- #18: resume loads trainer.pt with weights_only=True; crash-safe checkpoints; warnings; help -----
def test_resume_is_bit_exact(tmp_path):
    """A run stopped at step 2 and resumed (trainer.pt read with weights_only=True) ends with the
    very same weights as one that never stopped; also when the stop fell between the two renames of
    a checkpoint save (only ``checkpoint.old/`` is left)."""
    short = dict(steps=4, save_every=2, eval_every=4)
    a = train(cfg(tmp_path / "a", **short), progress=False)
    for name, crash_between_renames in (("b", False), ("c", True)):
        train(cfg(tmp_path / name, **short), progress=False, stop_after=2)
        ck = tmp_path / name / "run" / "checkpoint"
        if crash_between_renames:
            ck.rename(ck.with_name("checkpoint.old"))
        b = train(cfg(tmp_path / name, **short), progress=False)
        for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(p, q), (name, n)


class _Marker:
    """Unpickling this calls Path.touch(<marker>): the code a crafted checkpoint would run."""
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        from pathlib import Path
        return (Path.touch, (Path(self.path),))


def test_crafted_trainer_pt_does_not_run(tmp_path, capsys):
    from interp import InterpError
    train(cfg(tmp_path, steps=4, save_every=2), progress=False, stop_after=2)
    ck = tmp_path / "run" / "checkpoint"
    marker = tmp_path / "pwned"
    torch.save({"step": 2, "optimizer": _Marker(str(marker))}, ck / "trainer.pt")
    with pytest.raises(InterpError, match=r"trainer.pt is damaged or holds more than tensors and plain values"):
        train(cfg(tmp_path, steps=4, save_every=2), progress=False)
    assert not marker.exists()
    torch.load(ck / "trainer.pt", weights_only=False)   # the file does run code when unpickled unsafely
    assert marker.exists()
    marker.unlink()
    argv = ["train", "--layout", "gdn50", "--d-model", "32", "--n-layers", "2", "--n-heads", "2", "--head-dim", "16",
            "--task", "mqar", "--steps", "4", "--batch-size", "8", "--warmup", "2", "--device", "cpu",
            "--out", str(tmp_path / "run")]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--no-resume" in err[0] and not marker.exists()
    assert main(argv + ["--no-resume"]) == 0


def test_warnings(tmp_path, capsys):
    """The learning-rate warm-up longer than training and an induction warm-up ending at accuracy 0
    are warned about (stderr), and training goes on."""
    train(cfg(tmp_path, steps=3, warmup=10, induction_steps=1, eval_every=3), progress=False)
    err = capsys.readouterr().err
    assert "warning: the learning-rate warm-up (10 steps) is longer than training (3 steps)" in err
    assert "warning: the induction warm-up ended at step 1 with held-out induction accuracy 0" in err
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_every_option_shows_its_default():
    """Every command's help gives each option a help text and its default (where there is one)."""
    import argparse
    from interp.cli import build_parser
    sub = build_parser()._subparsers._group_actions[0]
    assert {"train", "eval", "capture", "probe", "patch", "intervene", "das", "demo", "run"} <= set(sub.choices)
    for name, parser in sub.choices.items():
        text = " ".join(parser.format_help().split())
        for act in parser._actions:
            if not act.option_strings or act.default in (None, False, argparse.SUPPRESS):
                continue
            shown = parser._get_formatter()._expand_help(act) if act.help else ""
            assert "default" in shown, (name, act.option_strings, shown)
            assert " ".join(shown.split()) in text
    assert "--batch-size BATCH_SIZE examples per forward pass (default: 16)" in " ".join(
        sub.choices["capture"].format_help().split())
    assert "(default: runs/demo)" in " ".join(sub.choices["demo"].format_help().split())


def test_a_finished_run_is_kept_not_said_to_be_saved_again(tmp_path, capsys):
    args = ["train", "--layout", "gdn50", "--d-model", "16", "--n-layers", "2", "--n-heads", "2", "--head-dim", "8",
            "--steps", "3", "--eval-every", "3", "--batch-size", "2", "--warmup", "1", "--device", "cpu",
            "--task", "mqar"]
    for extra in ([], ["--seeds", "0,1"]):
        argv = args + extra + ["--out", str(tmp_path / ("stack" if extra else "one"))]
        assert main(argv) == 0
        first = capsys.readouterr().out
        assert main(argv) == 0
        again = capsys.readouterr().out
        assert first.count("saved ") == (2 if extra else 1), first
        assert "saved " not in again and again.count("kept ") == (2 if extra else 1), again
