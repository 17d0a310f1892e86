"""The stacked-step profiler (bench/prof_stacked.py) runs end to end in its --quick CPU mode: one timed row per
combination, the trainer's step function put back afterwards, a bad value refused with exit 2."""
from interp import stacked

from bench_scripts import load  # tests/, a sibling


def _load():
    return load("prof_stacked")


def test_prof_stacked_quick_times_each_combination(capsys):
    step = stacked._Stack.step
    rc = _load().main(["--device", "cpu", "--quick", "--runs", "1,2", "--graphs", "off", "--split", "on",
                       "--skip", "2", "--time", "2", "--prof", "1"])
    assert rc == 0 and stacked._Stack.step is step
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and line[2].isdigit()]
    assert [int(r[0]) for r in rows] == [1, 2]
    for r in rows:
        assert r[2].strip() == "on"
        wall, run_steps, pad = float(r[4]), float(r[7]), float(r[8])
        assert 0 <= pad < 100
        assert wall > 0 and abs(run_steps - int(r[0]) * 1e3 / wall) <= 0.01 * run_steps + 0.1


def test_prof_stacked_bad_value_exits_2(capsys):
    assert _load().main(["--device", "cpu", "--graphs", "maybe"]) == 2
    assert _load().main(["--device", "cpu", "--split", "yes"]) == 2
    err = capsys.readouterr().err
    assert "maybe" in err and "yes" in err and "off|on" in err
