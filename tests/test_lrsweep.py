"""interp.lrsweep and `interp train --lrs`: runs per (rate, seed), intervals over seeds, the edge flag, spec refusal."""
import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from interp import InterpError, lrsweep
from interp.train import TrainConfig


def _runs(acc):
    """acc: {lr: [acc per seed]} -> a collect()-shaped frame for one task."""
    return pd.DataFrame([{"lr": lr, "seed": s, "acc/mqar": a} for lr, v in acc.items() for s, a in enumerate(v)])


def test_interval_is_the_t_interval_over_seeds():
    vals = [0.5, 0.7, 0.65]
    summ, best, _ = lrsweep.summarise(_runs({1e-3: vals, 3e-3: [0.1, 0.2, 0.3]}), ["mqar"])
    row = summ[(summ.lr == 1e-3) & (summ.task == "mqar")].iloc[0]
    half = stats.t.ppf(0.975, 2) * np.std(vals, ddof=1) / np.sqrt(3)
    assert row.acc == pytest.approx(np.mean(vals))
    assert (row.lo, row.hi) == pytest.approx((np.mean(vals) - half, np.mean(vals) + half))
    assert row.seeds == 3 and best == 1e-3


@pytest.mark.parametrize("acc,where", [({1e-3: [0.2] * 3, 3e-3: [0.9] * 3, 1e-2: [0.5] * 3}, "inside"),
                                       ({1e-3: [0.2] * 3, 3e-3: [0.5] * 3, 1e-2: [0.9] * 3}, "largest"),
                                       ({1e-3: [0.9] * 3, 3e-3: [0.5] * 3}, "smallest")])
def test_best_rate_at_the_edge_is_flagged(acc, where):
    _, best, note = lrsweep.summarise(_runs(acc), ["mqar"])
    assert best == max(acc, key=lambda k: acc[k][0])
    assert where in note and "seed" not in note


def test_few_seeds_said():
    _, _, note = lrsweep.summarise(_runs({1e-3: [0.2], 3e-3: [0.9], 1e-2: [0.5]}), ["mqar"])
    assert "1 seed(s)" in note


def test_claim_refuses_another_sweep_naming_the_field(tmp_path):
    cfg = TrainConfig(out=str(tmp_path), model={"d_model": 16}, steps=10)
    lrsweep.claim(tmp_path, lrsweep.sweep_configs(cfg, [1e-3, 3e-3], [0]))
    lrsweep.claim(tmp_path, lrsweep.sweep_configs(cfg, [3e-3, 1e-3], [0]))        # same sweep: accepted
    with pytest.raises(InterpError, match="train.steps: 10 -> 20"):
        lrsweep.claim(tmp_path, lrsweep.sweep_configs(TrainConfig(**{**cfg.__dict__, "steps": 20}), [1e-3, 3e-3], [0]))
    with pytest.raises(InterpError, match="repeats a rate"):
        lrsweep.sweep_configs(cfg, [1e-3, 1e-3], [0])
    with pytest.raises(InterpError, match=r"--lrs 0.001,0.0010000001 share the run folder lr0.001_seed0"):
        lrsweep.sweep_configs(cfg, [1e-3, 0.0010000001], [0])
    other = {**cfg.__dict__, "save_every": 7, "device": "cpu"}   # may change between calls (runfolder.MAY_CHANGE)
    lrsweep.claim(tmp_path, lrsweep.sweep_configs(TrainConfig(**other), [1e-3, 3e-3], [0]))
    steps20 = lrsweep.sweep_configs(TrainConfig(**{**cfg.__dict__, "steps": 20}), [1e-3, 3e-3], [0])
    lrsweep.claim(tmp_path, steps20, resume=False)                                  # --no-resume: the new spec
    assert json.loads((tmp_path / "sweep.json").read_text())["train"]["steps"] == 20


def test_a_refused_sweep_call_records_nothing(tmp_path, capsys):
    from interp.cli import main
    out = tmp_path / "sw"
    base = ["train", "--layout", "gdn75", "--task", "mqar", "--d-model", "16", "--n-layers", "2", "--n-heads", "2",
            "--head-dim", "8", "--steps", "2", "--batch-size", "4", "--lrs", "1e-3,1e-2", "--out", str(out)]
    assert main(base + ["--device", "cuda:7"]) == 2
    assert "error: " in capsys.readouterr().err and not out.exists()
    assert main(base + ["--device", "cpu", "--lr", "5"]) == 2   # one rate beside the sweep's: which would it be?
    assert "--lr 5 does not apply with --lrs" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit):
        main(base[:-4] + ["--lrs", "1e-3,-1", "--out", str(out), "--device", "cpu"])
    assert "'1e-3,-1': out-of-range rate -1; valid: distinct rates > 0 and <= 10" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:   # (argparse's own exit)
        main(base + ["--device", "cpu", "--steps", str(2 ** 60)])
    assert e.value.code == 2 and "out of range; valid: integers >= 1 and <= 2**53" in capsys.readouterr().err and not out.exists()


def test_cli_sweep_trains_every_run_and_reports_its_log(tmp_path, capsys):
    from interp.cli import main
    out = tmp_path / "sw"
    main(["train", "--layout", "gdn75", "--task", "mqar", "--d-model", "16", "--n-layers", "2", "--n-heads", "2",
          "--head-dim", "8", "--steps", "4", "--eval-every", "2", "--batch-size", "4", "--lrs", "1e-3,1e-2",
          "--seeds", "0,1", "--device", "cpu", "--out", str(out)])
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "lr0.001_seed0", "lr0.001_seed1", "lr0.01_seed0", "lr0.01_seed1"]
    runs = pd.read_csv(out / "sweep.csv")
    for _, r in runs.iterrows():
        d = out / f"lr{r.lr:g}_seed{int(r.seed)}"
        assert json.loads((d / "config.json").read_text()) is not None
        last = [json.loads(x) for x in (d / "train_log.jsonl").read_text().splitlines() if '"acc/mqar"' in x][-1]
        assert r["acc/mqar"] == pytest.approx(last["acc/mqar"])
    assert "best rate" in capsys.readouterr().out
    assert set(pd.read_csv(out / "sweep_summary.csv").task) == {"mqar", "mean"}


def test_runs_stopped_by_the_time_limit_are_said_unfinished(tmp_path, capsys):
    from interp.cli import main
    base = ["train", "--layout", "gdn75", "--task", "mqar", "--d-model", "16", "--n-layers", "2", "--n-heads", "2",
            "--head-dim", "8", "--steps", "6", "--eval-every", "2", "--batch-size", "4", "--device", "cpu",
            "--time-limit", "1e-9"]
    assert main(base + ["--lrs", "1e-3,1e-2", "--out", str(tmp_path / "sw")]) == 0
    out = capsys.readouterr().out
    assert "\nUNFINISHED: 2 of 2 runs have not reached step 6" in out, out
    assert "\nso far (not final): best rate" in out, out
    assert main(base + ["--out", str(tmp_path / "one")]) == 0
    assert "UNFINISHED at step 1 of 6 (--time-limit); the same command resumes it" in capsys.readouterr().out
    assert main(base[:-2] + ["--out", str(tmp_path / "one")]) == 0   # resumed to the end: said finished
    assert capsys.readouterr().out.strip().endswith("M params)")
