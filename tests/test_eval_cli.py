"""`interp eval`: the printed pivot equals the tidy rows; --out writes the CSV, its figure and what made them."""
import json

import pandas as pd
import pytest

from interp.cli import main


def test_eval_prints_pivot_and_writes_csv_and_figure(tmp_path, capsys):
    out = tmp_path / "e" / "acc.csv"
    assert main(["eval", "--model", "gdn100", "--model", "gdn75", "--task", "mqar", "--knob", "n_pairs",
                 "--n", "8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    df = pd.read_csv(out)
    assert set(df.model) == {"gdn100", "gdn75"} and set(df.value) == {2, 4, 8, 16, 32}
    from interp.evaluate import SweepResult
    piv = SweepResult(df).pivot()
    assert list(piv.columns) == ["gdn100", "gdn75"]          # models in the order given
    for (task, knob, value), row in piv.iterrows():
        for m in piv.columns:
            assert row[m] == df[(df.model == m) & (df.value == value)].accuracy.item()
    assert "gdn100" in printed.splitlines()[0] and "n_pairs" in printed
    png = out.with_suffix(".png")
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from interp.cli.options import load_any
    from interp.store import model_digest
    made = json.loads(out.with_suffix(".json").read_text())
    assert made["spec"] == {"models": {m: model_digest(load_any(m)) for m in ("gdn100", "gdn75")}, "tasks": ["mqar"],
                            "knobs": ["n_pairs"], "n": 8, "seed": 123}
    assert made["command"].startswith("interp ")


def test_eval_out_is_checked_against_what_made_it(tmp_path, capsys):
    """--out must name a CSV (its .png and .json sit beside it); a table made with other settings is refused, naming
    them, until --overwrite; the same settings write it again; a table without its spec is of unknown origin."""
    out = tmp_path / "acc.csv"
    base = ["eval", "--model", "gdn100", "--task", "mqar", "--knob", "n_pairs", "--n", "4"]
    assert main(base + ["--out", str(tmp_path / "acc.json")]) == 2
    assert "valid: a path ending in .csv" in capsys.readouterr().err and not any(tmp_path.iterdir())
    assert main(base + ["--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["acc.csv", "acc.json", "acc.png"]
    capsys.readouterr()
    assert main(base + ["--seed", "7", "--out", str(out)]) == 2
    assert "acc.csv was made with other settings (acc.json: seed: 123 -> 7)" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert main(base + ["--out", str(out)]) == 0                       # the same settings: written again
    assert main(base + ["--seed", "7", "--out", str(out), "--overwrite"]) == 0
    assert json.loads((tmp_path / "acc.json").read_text())["spec"]["seed"] == 7
    (tmp_path / "acc.json").unlink()
    capsys.readouterr()
    assert main(base + ["--seed", "7", "--out", str(out)]) == 2
    assert "exists without acc.json" in capsys.readouterr().err


def test_demo_records_what_made_it_and_refuses_other_settings(tmp_path, capsys):
    from interp import InterpError
    from interp.demo import run_demo
    out = tmp_path / "demo"
    run_demo(out, n=2, tasks=["mqar"], progress=False)
    spec = json.loads((out / "demo.json").read_text())["spec"]
    assert spec["n"] == 2 and spec["tasks"] == ["mqar"] and sorted(spec["models"]) == ["gdn100", "gdn75",
                                                                                         "transformer"]
    first = (out / "results.csv").read_bytes()
    run_demo(out, n=2, tasks=["mqar"], progress=False)            # the same settings: written again, the same
    assert (out / "results.csv").read_bytes() == first
    with pytest.raises(InterpError, match=r"results.csv was made with other settings \(demo.json: n: 2 -> 3\)"):
        run_demo(out, n=3, tasks=["mqar"], progress=False)
    assert (out / "results.csv").read_bytes() == first
    run_demo(out, n=3, tasks=["mqar"], progress=False, overwrite=True)
    assert json.loads((out / "demo.json").read_text())["spec"]["n"] == 3
