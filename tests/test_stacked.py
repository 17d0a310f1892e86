"""Stacked training (interp.stacked) reproduces single runs of interp.train: per-step losses, final
weights, output files and checkpoints (resumable by either trainer); refuses runs that cannot stack.

Tolerance (float32 on CPU): losses within 1e-5, weights within 2e-5. The stack computes the same
functions with batched matmuls and reductions summed in another order (rounding ~1e-7 relative per
op); AdamW's normalised update can turn a rounding-level change of a near-zero gradient element into
a weight change of a small fraction of one step (at most lr = 1e-3..1e-2 a step here), which is what
bounds the weights' tolerance (seen: <= 5e-6 after 6 steps). A run with another seed, lr or batch
differs by more than 1e-3 after one step.
"""
import json
import shutil

import pytest
import torch

from interp import InterpError
from interp.stacked import train_stacked
from interp.train import TrainConfig, read_log, train
from interp.zoo import load_model

LOSS_TOL, WEIGHT_TOL = 1e-5, 2e-5
RUNS = [(0, 1e-3), (1, 3e-3), (5, 1e-2)]          # (seed, lr) of the three stacked runs
# every mixer kind (Mamba2's scan takes per-model A, D: it runs once per model), the task mixture of
# unequal sequence lengths (padded in the stack), the induction warm-up, a checkpoint at step 3
KW = dict(model=dict(d_model=16, n_layers=4, layout="attn,gdn,gla,mamba2", n_heads=2, head_dim=8, mamba_head_dim=8),
          steps=6, batch_size=4, warmup=2, eval_every=1, eval_n=8, save_every=3, induction_steps=2,
          device="cpu", scan_backend="reference")


def cfg(root, name, seed, lr, **kw):
    return TrainConfig(out=str(root / name), seed=seed, lr=lr, **{**KW, **kw})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("stacked")
    for s, lr in RUNS:
        train(cfg(root, f"single{s}", s, lr), progress=False)
    train_stacked([cfg(root, f"stack{s}", s, lr) for s, lr in RUNS], progress=False)
    return root


def assert_same_run(a, b):
    la, lb = read_log(a / "train_log.jsonl"), read_log(b / "train_log.jsonl")
    assert [r["step"] for r in la] == [r["step"] for r in lb] == list(range(1, KW["steps"] + 1))
    assert [sorted(r) for r in la] == [sorted(r) for r in lb]
    for ra, rb in zip(la, lb):
        assert abs(ra["loss"] - rb["loss"]) <= LOSS_TOL, (ra, rb)
        assert ra["lr"] == pytest.approx(rb["lr"], rel=1e-12)
    sa, sb = load_model(a).state_dict(), load_model(b).state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=0, atol=WEIGHT_TOL, msg=f"{k} differs")


def test_stack_reproduces_single_runs(runs):
    for s, _ in RUNS:
        assert_same_run(runs / f"single{s}", runs / f"stack{s}")
    # the three models are different models (seeds, lrs): the tolerance is far below what separates them
    w = [load_model(runs / f"stack{s}").state_dict()["embed.weight"] for s, _ in RUNS]
    assert (w[0] - w[1]).abs().max() > 100 * WEIGHT_TOL


def test_stack_writes_what_a_single_run_writes(runs):
    for s, _ in RUNS:
        a, b = runs / f"single{s}", runs / f"stack{s}"
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
        ma, mb = (json.loads((d / "meta.json").read_text()) for d in (a, b))
        assert ma.keys() == mb.keys() and ma["steps_done"] == mb["steps_done"] == KW["steps"]
        assert ma["params"] == mb["params"] and ma["induction_done_at"] == mb["induction_done_at"]
        ta, tb = (torch.load(d / "checkpoint" / "trainer.pt", weights_only=True) for d in (a, b))
        assert ta["step"] == tb["step"] == 3 and torch.equal(ta["torch_rng"], tb["torch_rng"])
        assert ta["optimizer"]["param_groups"] == tb["optimizer"]["param_groups"]
        for i, st in ta["optimizer"]["state"].items():
            assert st["step"] == tb["optimizer"]["state"][i]["step"]
            for k in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(tb["optimizer"]["state"][i][k], st[k], rtol=0, atol=WEIGHT_TOL)


def test_stacked_checkpoints_resume_in_either_trainer(runs):
    """A stack stopped at step 3 (batches drawn in a worker process): run 1 resumed alone by
    interp.train, runs 0 and 5 resumed as a stack of two; all end as the single runs did."""
    root = runs / "resume"
    cfgs = [cfg(root, f"r{s}", s, lr) for s, lr in RUNS]
    train_stacked(cfgs, progress=False, stop_after=3, workers=1)
    assert not (root / "r0" / "model.safetensors").exists()
    train(cfgs[1], progress=False)
    train_stacked([cfgs[0], cfgs[2]], progress=False)
    for s, _ in RUNS:
        assert_same_run(runs / f"single{s}", root / f"r{s}")


def test_stack_resumed_at_the_warmups_last_step_logs_its_end(runs):
    """Stopped by the checkpoint at step induction_steps, the resumed stack logged no end of the warm-up."""
    root = runs / "resume_at_warmup"
    cfgs = [cfg(root, f"r{s}", s, lr) for s, lr in RUNS]
    train_stacked(cfgs, progress=False, stop_after=KW["induction_steps"], workers=1)
    train_stacked(cfgs, progress=False)
    for s, _ in RUNS:
        ends = [[{k: v for k, v in json.loads(x).items()} for x in (d / "train_log.jsonl").read_text().splitlines()
                 if "induction_done_at" in x] for d in (runs / f"single{s}", root / f"r{s}")]
        assert len(ends[0]) == 1 and [r["step"] for r in ends[1]] == [r["step"] for r in ends[0]]
        assert ends[1][0]["acc/induction"] == pytest.approx(ends[0][0]["acc/induction"], abs=1e-6)


def test_refuses_runs_that_cannot_stack(runs, tmp_path):
    def refused(cfgs, *words):
        with pytest.raises(InterpError) as e:
            train_stacked(cfgs, progress=False)
        msg = str(e.value)
        assert "\n" not in msg and all(w in msg for w in words), msg
    refused([cfg(tmp_path, "a", 0, 1e-3), cfg(tmp_path, "b", 1, 1e-3, batch_size=8)],
            "batch_size", "run 1 has 8", "valid:")
    refused([cfg(tmp_path, "a", 0, 1e-3), cfg(tmp_path, "a", 1, 1e-3)], "out=", "one output directory per run")
    refused([], "no runs")
    refused([cfg(tmp_path, "a", 0, 0.0)], "lr=0.0")
    # one unfinished run with a checkpoint at step 3, one without: they cannot resume together
    shutil.copytree(runs / "single0", tmp_path / "c0")
    for f in ("meta.json", "model.safetensors", "config.json"):   # (a finished run would be left as it is)
        (tmp_path / "c0" / f).unlink()
    refused([cfg(tmp_path, "c0", 0, 1e-3), cfg(tmp_path, "c1", 1, 1e-3)], "steps [3, None]", "--no-resume")
    assert not (tmp_path / "c1" / "train_log.jsonl").exists()


def test_cli_seeds_trains_a_stack(tmp_path, capsys):
    from interp.cli import main
    argv = ["train", "--out", str(tmp_path / "arm"), "--seeds", "3,1", "--layout", "gdn50", "--d-model", "16",
            "--n-layers", "2", "--n-heads", "2", "--head-dim", "8", "--steps", "2", "--batch-size", "4",
            "--warmup", "1", "--eval-every", "2", "--device", "cpu"]
    assert main(argv) == 0
    for s in (3, 1):
        meta = json.loads((tmp_path / "arm" / f"seed{s}" / "meta.json").read_text())
        assert meta["train_config"]["seed"] == s and meta["steps_done"] == 2
        load_model(tmp_path / "arm" / f"seed{s}")
    with pytest.raises(SystemExit):
        main(argv[:4] + ["1,1"] + argv[5:])
    assert "repeated seed" in capsys.readouterr().err
