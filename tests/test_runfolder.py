"""A training run's folder across calls (interp.runfolder): resume only under the same config, a finished run
left as it is, one log row per evaluation after a kill, --no-resume starting clean, one trainer at a time."""
import json
import os
import subprocess
import sys

import pytest
import torch

from interp import InterpError
from interp.cli import main
from interp.runfolder import config_diff, cut_log, open_run
from interp.train import TrainConfig, train

TINY = dict(d_model=32, n_layers=2, layout="gdn50", n_heads=2, head_dim=16)


def cfg(out, **kw):
    base = dict(out=str(out), model=TINY, tasks=["mqar"], steps=20, batch_size=8, eval_every=5, eval_n=16,
                save_every=10, warmup=5, seed=0, device="cpu")
    return TrainConfig(**{**base, **kw})


def log_rows(out):
    return [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]


def snapshot(out):
    return {f.name: f.read_bytes() for f in sorted(out.iterdir()) if f.is_file()}


def test_resume_with_other_settings_is_refused_and_changes_nothing(tmp_path):
    out = tmp_path / "run"
    train(cfg(out), progress=False, stop_after=10)
    before = snapshot(out)
    with pytest.raises(InterpError) as e:
        train(cfg(out, lr=3e-3, steps=40), progress=False)
    msg = str(e.value)
    assert "lr: 0.001 -> 0.003" in msg and "steps: 20 -> 40" in msg and "--no-resume" in msg
    assert snapshot(out) == before and not (out / ".lock").exists()


def test_cli_refusal_is_one_line_exit_2(tmp_path, capsys):
    argv = ["train", "--layout", "gdn50", "--d-model", "32", "--n-layers", "2", "--n-heads", "2", "--head-dim", "16",
            "--task", "mqar", "--steps", "10", "--batch-size", "8", "--eval-every", "5", "--warmup", "2",
            "--device", "cpu", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv + ["--lr", "0.01"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "lr: 0.001 -> 0.01" in err[0]


def test_settings_that_may_change_between_calls_resume(tmp_path):
    out = tmp_path / "run"
    train(cfg(out), progress=False, stop_after=10)
    train(cfg(out, save_every=7, time_limit=30.0, command="again"), progress=False)
    assert [r["step"] for r in log_rows(out) if "loss" in r] == [5, 10, 15, 20]


def test_finished_run_is_not_trained_again(tmp_path, capsys):
    out = tmp_path / "run"
    a = train(cfg(out), progress=False)
    before = snapshot(out)
    b = train(cfg(out), progress=False)
    assert "not trained again" in capsys.readouterr().err
    assert snapshot(out) == before
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), n


def test_resume_after_a_kill_logs_each_evaluation_once(tmp_path):
    """A call killed after logging step 15 but before a checkpoint past 10 (and mid-line) is resumed from 10: the
    log ends as an uninterrupted run's, one row per step."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train(cfg(whole), progress=False)
    train(cfg(cut), progress=False, stop_after=10)
    later = [ln for ln in (whole / "train_log.jsonl").read_text().splitlines() if json.loads(ln)["step"] == 15]
    with open(cut / "train_log.jsonl", "a") as f:
        f.write(later[0] + "\n" + '{"step": 2')
    train(cfg(cut), progress=False)
    a, b = log_rows(whole), log_rows(cut)
    assert [r["step"] for r in b] == [r["step"] for r in a]
    for ra, rb in zip(a, b):
        if "loss" in ra:
            assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4, abs=1e-5)


def test_cut_log(tmp_path):
    (tmp_path / "train_log.jsonl").write_text('{"step": 5}\n{"step": 10}\n{"step": 15}\n{"step": null}\n[3]\n{"ste')
    assert cut_log(tmp_path, 10) == 4
    assert (tmp_path / "train_log.jsonl").read_text() == '{"step": 5}\n{"step": 10}\n'
    assert cut_log(tmp_path, 10) == 0 and cut_log(tmp_path / "absent", 3) == 0


def test_no_resume_starts_clean(tmp_path):
    out = tmp_path / "run"
    train(cfg(out, steps=30), progress=False)
    (out / "notes.txt").write_text("mine")
    train(cfg(out, lr=3e-3), progress=False, resume=False)
    steps = [r["step"] for r in log_rows(out)]
    assert steps == sorted(set(steps)) and max(steps) == 20
    assert json.loads((out / "meta.json").read_text())["train_config"]["lr"] == 3e-3
    assert (out / "notes.txt").read_text() == "mine"          # not the trainer's: kept


@pytest.mark.parametrize("resume", [True, False])
def test_someone_elses_model_or_checkpoint_is_not_written_over(tmp_path, resume):
    out = tmp_path / "mymodel"
    out.mkdir()
    mine = {"config.json": '{"mine": 1}', "model.safetensors": "weights", "COMMAND.txt": "mine"}
    for name, text in mine.items():
        (out / name).write_text(text)
    (out / "checkpoint").mkdir()
    (out / "checkpoint" / "notes.txt").write_text("mine")
    with pytest.raises(InterpError, match=r"mymodel holds model.safetensors, config.json, COMMAND.txt, checkpoint but no record of "
                                          r"a training run .*valid: a new or empty folder"):
        train(cfg(out), progress=False, resume=resume)
    assert {n: (out / n).read_text() for n in mine} == mine and (out / "checkpoint" / "notes.txt").exists()
    for name in ("config.json", "model.safetensors", "checkpoint"):   # only a log and COMMAND.txt of the user's
        (out / name).unlink() if name != "checkpoint" else __import__("shutil").rmtree(out / name)
    (out / "train_log.jsonl").write_text('{"step": 0, "mine": 1}\n')
    with pytest.raises(InterpError, match=r"holds COMMAND.txt, train_log.jsonl but no record"):
        train(cfg(out), progress=False, resume=resume)
    assert (out / "train_log.jsonl").read_text() == '{"step": 0, "mine": 1}\n'
    assert (out / "COMMAND.txt").read_text() == "mine"


@pytest.mark.parametrize("resume", [True, False])
def test_a_run_killed_before_its_first_checkpoint_is_the_trainers(tmp_path, resume, monkeypatch):
    import interp.train as tr

    def killed(*a, **k):
        raise KeyboardInterrupt
    out = tmp_path / "run"
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(tr, "_save_checkpoint", killed)
        train(cfg(out, save_every=1000), progress=False, stop_after=7)   # logged step 5, killed at its checkpoint
    assert not (out / "checkpoint").exists() and (out / "train_log.jsonl").exists()
    if resume:   # its record refuses other settings, as a checkpoint's would
        with pytest.raises(InterpError, match=r"train_config.json: lr: 0.001 -> 0.003"):
            train(cfg(out, lr=3e-3, save_every=1000), progress=False)
    train(cfg(out, save_every=1000), progress=False, resume=resume)
    assert [r["step"] for r in log_rows(out) if "loss" in r] == [5, 10, 15, 20]


def test_an_empty_out_path_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--layout", "gdn50", "--d-model", "16", "--n-layers", "2", "--steps", "2", "--out", ""]) == 2
    assert "error: --out '' is empty; valid: a path" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_second_trainer_is_refused(tmp_path):
    c = cfg(tmp_path / "run")
    (tmp_path / "run").mkdir()
    with open_run(tmp_path / "run", c):
        with pytest.raises(InterpError, match="second writer"):
            train(c, progress=False)
    train(c, progress=False)   # released


def test_config_of_an_older_version_resumes(tmp_path):
    """A checkpoint's train_config.json without a field added since (its default) is the same config."""
    out = tmp_path / "run"
    train(cfg(out), progress=False, stop_after=10)
    f = out / "checkpoint" / "train_config.json"
    old = json.loads(f.read_text())
    del old["induction_len"]
    f.write_text(json.dumps(old))
    assert config_diff(old, cfg(out)) == []
    assert config_diff(old, cfg(out, induction_len=8)) == ["induction_len: 16 -> 8"]
    train(cfg(out), progress=False)


def test_a_run_moved_to_another_kind_of_device_is_refused(tmp_path):
    """cuda:0 -> cuda:1 may change (MAY_CHANGE); GPU -> CPU may not (bf16 autocast on CUDA, fp32 on the CPU)."""
    out = tmp_path / "run"
    train(cfg(out), progress=False, stop_after=10)
    f = out / "checkpoint" / "train_config.json"
    rec = json.loads(f.read_text())
    assert rec["device_type"] == "cpu"
    f.write_text(json.dumps({**rec, "device": "cuda:1", "device_type": "cuda"}))
    assert config_diff(json.loads(f.read_text()), cfg(out, device="cuda:0")) == []
    with pytest.raises(InterpError, match='device_type: "cuda" -> "cpu"'):
        train(cfg(out), progress=False)
    del rec["device_type"]                      # written by an older version: the kind is not known
    f.write_text(json.dumps(rec))
    train(cfg(out), progress=False)


def test_stacked_runs_are_guarded_too(tmp_path):
    from interp.stacked import train_stacked
    cfgs = [cfg(tmp_path / f"seed{s}", seed=s) for s in (0, 1)]
    train_stacked(cfgs, progress=False, stop_after=10)
    with pytest.raises(InterpError, match="warmup: 5 -> 3"):
        train_stacked([cfg(tmp_path / f"seed{s}", seed=s, warmup=3) for s in (0, 1)], progress=False)
    train_stacked(cfgs, progress=False)
    before = [snapshot(tmp_path / f"seed{s}") for s in (0, 1)]
    train_stacked(cfgs, progress=False)
    assert [snapshot(tmp_path / f"seed{s}") for s in (0, 1)] == before
    assert [r["step"] for r in log_rows(tmp_path / "seed1") if "loss" in r] == [5, 10, 15, 20]


def test_kill_while_saving_the_model_leaves_no_torn_file(tmp_path):
    """INTERP_STORE_KILL kills the trainer half-way through writing the final model.safetensors (its second, after
    the checkpoint's): no torn file is left, and the same call again finishes the run from its checkpoint."""
    out = tmp_path / "run"
    code = ("import sys; from interp.train import TrainConfig, train; "
            f"train(TrainConfig(**{dict(vars(cfg(out)))!r}), progress=False)")
    env = {**os.environ, "INTERP_STORE_KILL": "write:model.safetensors:2"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode != 0
    assert not (out / "model.safetensors").exists() and not (out / "meta.json").exists()
    assert (out / "checkpoint" / "trainer.pt").is_file()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out / "meta.json").read_text())["steps_done"] == 20
    assert not [f.name for f in out.iterdir() if ".tmp-" in f.name]    # the killed write's temporary file


def test_a_stack_killed_while_swapping_its_checkpoints_resumes_at_their_common_step(tmp_path, monkeypatch):
    """Run 0 swapped its step-20 checkpoint in, run 1 did not (a kill between the two): both resume from step 10
    (run 0's checkpoint.old) and finish as an uninterrupted stack does."""
    from interp import stacked, train as TR
    from interp.stacked import train_stacked
    cfgs = [cfg(tmp_path / "k" / f"seed{s}", seed=s, steps=30) for s in (0, 1)]
    train_stacked(cfgs, progress=False, stop_after=10)
    calls = []

    def swap(path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt   # as a kill between the runs' swaps
        TR.swap_checkpoint(path)
    monkeypatch.setattr(stacked, "swap_checkpoint", swap)
    with pytest.raises(KeyboardInterrupt):
        train_stacked(cfgs, progress=False, stop_after=20)
    monkeypatch.undo()
    steps = [TR.load_trainer_state(tmp_path / "k" / f"seed{s}" / "checkpoint")["step"] for s in (0, 1)]
    assert steps == [20, 10] and (tmp_path / "k" / "seed0" / "checkpoint.old").is_dir()
    train_stacked(cfgs, progress=False)
    ref = [cfg(tmp_path / "r" / f"seed{s}", seed=s, steps=30) for s in (0, 1)]
    train_stacked(ref, progress=False, stop_after=10)
    train_stacked(ref, progress=False)
    for s in (0, 1):
        a, b = (torch.load(tmp_path / d / f"seed{s}" / "checkpoint" / "trainer.pt", weights_only=True)["step"]
                for d in ("k", "r"))
        assert a == b == 20   # the last checkpoint (none is written at the final step)
        assert (tmp_path / "k" / f"seed{s}" / "model.safetensors").read_bytes() == \
            (tmp_path / "r" / f"seed{s}" / "model.safetensors").read_bytes()
        assert [r["step"] for r in log_rows(tmp_path / "k" / f"seed{s}")] == \
            [r["step"] for r in log_rows(tmp_path / "r" / f"seed{s}")]


def test_a_stack_with_finished_runs_trains_only_the_others(tmp_path, capsys):
    from interp.stacked import train_stacked
    cfgs = [cfg(tmp_path / f"seed{s}", seed=s) for s in (0, 1, 2)]
    train_stacked(cfgs[:2], progress=False)
    before = [snapshot(tmp_path / f"seed{s}") for s in (0, 1)]
    models = train_stacked(cfgs, progress=False)
    assert [snapshot(tmp_path / f"seed{s}") for s in (0, 1)] == before and len(models) == 3
    assert json.loads((tmp_path / "seed2" / "meta.json").read_text())["steps_done"] == 20
    assert capsys.readouterr().err.count("not trained again") == 2


def test_a_run_added_to_an_unfinished_stack_is_refused_saying_so(tmp_path):
    from interp.stacked import train_stacked
    cfgs = [cfg(tmp_path / f"seed{s}", seed=s) for s in (0, 1, 2)]
    train_stacked(cfgs[:2], progress=False, stop_after=10)
    with pytest.raises(InterpError, match=r"steps \[10, 10, None\].*a run was added to an unfinished stack: finish "
                                          r"the stack with its own runs first"):
        train_stacked(cfgs, progress=False)
    train_stacked(cfgs[:2], progress=False)   # the way out it names
    train_stacked(cfgs, progress=False)
    assert json.loads((tmp_path / "seed2" / "meta.json").read_text())["steps_done"] == 20
