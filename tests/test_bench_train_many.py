"""bench/bench_train_many.py in its --quick CPU mode: --warm-steps runs every mode once untimed (in its own
folder, not in the rows), then the timed rows carry each run's accuracy; a bad mode is refused with exit 2."""
import json

import pytest

from bench_scripts import load  # tests/, a sibling


def _load():
    return load("bench_train_many")


def test_warm_steps_run_each_mode_untimed_first(tmp_path, capsys):
    keep, out = tmp_path / "runs", tmp_path / "rows.json"
    rc = _load().main(["--quick", "--layouts", "gdn75", "--modes", "1x1,1x2", "--warm-steps", "2",
                       "--keep", str(keep), "--out", str(out)])
    assert rc == 0
    assert capsys.readouterr().out.count("warm-up (2 steps, not timed)") == 2
    rows = json.loads(out.read_text())["rows"]
    assert [(r["mode"], r["steps"], len(r["accs"])) for r in rows] == [("1x1", 4, 1), ("1x2", 4, 2)]
    for mode, runs in (("1x1", 1), ("1x2", 2)):   # the warm-up's runs trained 2 steps, the timed ones 4
        for s in range(runs):
            warm = [json.loads(x) for x in (keep / "warm" / f"gdn75_{mode}" / f"seed{s}" / "train_log.jsonl")
                    .read_text().splitlines()]
            timed = [json.loads(x) for x in (keep / f"gdn75_{mode}" / f"seed{s}" / "train_log.jsonl")
                     .read_text().splitlines()]
            assert max(r["step"] for r in warm) == 2 and max(r["step"] for r in timed) == 4


def test_bad_mode_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        _load().main(["--quick", "--modes", "1x1,2y8"])
    assert e.value.code == 2 and "2y8" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        _load().main(["--quick", "--warm-steps", "-1"])
    assert e.value.code == 2 and "--warm-steps -1" in capsys.readouterr().err


def test_single_runs_take_graphs_and_the_eager_row_stays_the_base(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert _load().main(["--quick", "--layouts", "gdn75", "--modes", "1x1g,1x1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [(r["mode"], r["stack"]) for r in rows] == [("1x1g", 1), ("1x1", 1)]
    assert "| gdn75 | 1x1g | 1 |" in text and "x (1x1) |" in text and "x (1x1g) |" not in text
