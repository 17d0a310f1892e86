"""`interp eval`: the printed pivot equals the tidy rows; --out writes the CSV, its figure and what made them."""
import pandas as pd

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
    import json

    from interp.cli.options import load_any
    from interp.store import model_digest
    made = json.loads(out.with_suffix(".json").read_text())
    assert made["spec"] == {"models": {m: model_digest(load_any(m)) for m in ("gdn100", "gdn75")}, "tasks": ["mqar"],
                            "knobs": ["n_pairs"], "n": 8, "seed": 123}
    assert made["command"].startswith("interp ")
