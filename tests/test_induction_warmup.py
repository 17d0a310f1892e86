"""Induction warm-up of the trainer (interp.train.induction_batch, TrainConfig.induction_steps).

Regression for the shipped `transformer` default that never learned mqar (held-out 0.17 at 8 pairs,
the "a context value not yet answered" ceiling): trained on the tasks' answer-only loss alone, a
softmax transformer does not form its previous-token + induction circuit in budget; a short
warm-up on dense induction sequences does, and the circuit transfers to mqar.
"""
import json

import numpy as np
import pytest
import torch

from interp import InterpError
from interp import tasks as T
from interp.cli import main
from interp.train import TrainConfig, answer_accuracy, induction_batch, train


def test_induction_batch_structure():
    L = 12
    b = induction_batch(16, [0, 1], length=L)
    tok = b.tokens.numpy()
    assert tok.shape == (16, 2 * L + 2)
    assert (tok[:, 0] == T.VOCAB.id("<bos>")).all() and (tok[:, L + 1] == T.VOCAB.id("<sep>")).all()
    specials = {T.VOCAB.id(w) for w in ("<pad>", "<bos>", "<eos>", "<sep>")}
    for row in tok:
        x, y = list(row[1:L + 1]), list(row[L + 2:])
        assert len(set(x)) == L and not specials & set(x)
        s = x.index(y[0])
        assert y == x[s:] + x[:s]                      # a rotation of the prefix
    # every supervised position predicts the word after its earlier occurrence
    pos, ans = b.answer_pos.numpy(), b.answers.numpy()
    assert pos.shape == (16, L - 1) and (b.loss_mask.numpy().sum(1) == L - 1).all()
    assert (b.loss_mask.numpy()[np.arange(16)[:, None], pos]).all()
    for i in range(16):
        x = list(tok[i, 1:L + 1])
        for p, a in zip(pos[i], ans[i]):
            assert a == tok[i, p + 1] == x[(x.index(tok[i, p]) + 1) % L]
    # deterministic in the seed, different across seeds
    assert torch.equal(induction_batch(16, [0, 1], L).tokens, b.tokens)
    assert not torch.equal(induction_batch(16, [0, 2], L).tokens, b.tokens)


def test_induction_bad_values(tmp_path):
    with pytest.raises(InterpError, match="induction_len=1 is out of range"):
        induction_batch(4, 0, length=1)
    c = TrainConfig(out=str(tmp_path / "r"), model=dict(d_model=32, n_layers=1, layout="transformer", n_heads=2,
                    head_dim=16), tasks=["mqar"], steps=10, induction_steps=10, device="cpu")
    with pytest.raises(InterpError, match=r"induction_steps=10 is out of range; valid: integers 0\.\.9"):
        train(c, progress=False)


def _tiny(tmp_path, **kw):
    base = dict(out=str(tmp_path / "run"), model=dict(d_model=32, n_layers=1, layout="transformer", n_heads=2,
                head_dim=16), tasks=["mqar"], steps=90, batch_size=8, eval_every=30, eval_n=16, save_every=10**6,
                induction_steps=70, induction_until=0.0, seed=0, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def test_warmup_ends_early_and_resume_keeps_it(tmp_path):
    """induction_until=0: the warm-up ends at the first check (step 50 < induction_steps=70); a run
    interrupted after that (step 60) resumes on the tasks, equal to the uninterrupted run."""
    a = train(_tiny(tmp_path / "a"), progress=False)
    meta = json.loads((tmp_path / "a" / "run" / "meta.json").read_text())
    assert meta["induction_done_at"] == 50
    rows = [json.loads(x) for x in (tmp_path / "a" / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "induction_done_at" in r] == [50]
    train(_tiny(tmp_path / "b"), progress=False, stop_after=60)
    b = train(_tiny(tmp_path / "b"), progress=False)
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=n)
    # never reaching the threshold: the warm-up runs its full length
    train(_tiny(tmp_path / "c", induction_until=2.0, steps=80), progress=False)
    assert json.loads((tmp_path / "c" / "run" / "meta.json").read_text())["induction_done_at"] == 70


def test_resume_at_the_warmups_last_step_logs_its_end(tmp_path):
    """A run stopped by the checkpoint at step induction_steps (the default sizes put save_every there) resumed
    without the warm-up's end row in train_log.jsonl (and its warning); the log now equals the unbroken run's."""
    kw = dict(induction_steps=40, induction_until=2.0, steps=60, eval_every=20)
    train(_tiny(tmp_path / "a", **kw), progress=False)
    train(_tiny(tmp_path / "b", **kw), progress=False, stop_after=40)
    train(_tiny(tmp_path / "b", **kw), progress=False)
    logs = [[{k: v for k, v in json.loads(x).items() if k != "tokens_per_s"}
             for x in (tmp_path / d / "run" / "train_log.jsonl").read_text().splitlines()] for d in "ab"]
    assert [r for r in logs[0] if "induction_done_at" in r] == [r for r in logs[1] if "induction_done_at" in r]
    assert [r["step"] for r in logs[1] if "induction_done_at" in r] == [40]


def _mqar_after(tmp_path, induction_steps, steps=700):
    torch.manual_seed(0)
    c = TrainConfig(out=str(tmp_path / f"ind{induction_steps}"),
                    model=dict(d_model=64, n_layers=2, layout="transformer", n_heads=2, head_dim=32),
                    tasks=["mqar"], knobs={"mqar": {"n_pairs": 8}}, steps=steps, batch_size=32, lr=3e-3,
                    warmup=50, induction_steps=induction_steps, eval_every=10**6, eval_n=64,
                    save_every=10**6, seed=0, device="cpu")
    m = train(c, progress=False)
    return answer_accuracy(m, T.generate("mqar", 256, seed=7, n_pairs=8))


def test_transformer_learns_mqar_only_with_induction_warmup(tmp_path):
    """2-layer transformer, 700 steps, mqar with 8 pairs (4 queries). Without the warm-up it stays
    at the elimination ceiling (mean of 1/8, 1/7, 1/6, 1/5 = 0.16); with 600 warm-up steps it
    recalls (measured: 0.13 vs 1.00)."""
    with_warmup = _mqar_after(tmp_path, 600)
    without = _mqar_after(tmp_path, 0)
    assert with_warmup > 0.8, with_warmup
    assert without < 0.3, without


def test_cli_default_induction_steps(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--layout", "transformer", "--task", "mqar", "--d-model", "32", "--n-layers", "1",
                 "--n-heads", "2", "--head-dim", "16", "--steps", "20", "--batch-size", "4", "--eval-every", "20",
                 "--device", "cpu", "--out", "run"]) == 0
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["train_config"]["induction_steps"] == 5            # min(2000, steps // 4)
    log = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert "acc/induction" in log[-1]


def test_cli_default_induction_off_without_attention(tmp_path, monkeypatch):
    """Attention-free layouts get no warm-up by default (it hurt gdn100: BENCHMARKS.md section 9)."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--layout", "gdn100", "--task", "mqar", "--d-model", "32", "--n-layers", "2",
                 "--n-heads", "2", "--head-dim", "16", "--steps", "8", "--batch-size", "4", "--eval-every", "8",
                 "--device", "cpu", "--out", "run"]) == 0
    assert json.loads((tmp_path / "run" / "meta.json").read_text())["train_config"]["induction_steps"] == 0


def test_answer_accuracy_runs_without_autograd():
    """Evaluation inside the training loop (the warm-up check, periodic evals) must not build graphs."""
    from interp.zoo import HybridLM, ZooConfig
    m = HybridLM(ZooConfig(vocab_size=len(T.VOCAB), d_model=16, n_layers=2, n_heads=2, head_dim=8, layout="transformer"))
    seen = []
    m.register_forward_hook(lambda *_: seen.append(torch.is_grad_enabled()))
    answer_accuracy(m, induction_batch(4, 0))
    assert seen == [False]
