"""The experiments' training flags reach the runs they train: ``--scan-backend`` (recorded in the runs' spec.json, a
resume with the other scans refused) and ``--length-split`` (the stacks' length groups); E1's --tiny profile on the
CPU."""
import json
from pathlib import Path

import pytest

from interp import experiment as X

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"   # scripts, not an installed package
E1 = X.load_experiment(EXPERIMENTS / "e1_state_recall.py")


def test_scan_backend_flag_reaches_the_runs_and_their_spec(tmp_path):
    """--scan-backend auto: every run trains with it and the runs' spec.json records it, so a later call with the
    default reference scans is refused naming the field; the default adds nothing to the spec (earlier runs agree)."""
    from interp import InterpError
    args = ["--tiny", "--out", str(tmp_path / "figs"), "--no-progress", "--device", "cpu", "--train-only"]
    assert E1.main(args + ["--runs", str(tmp_path / "auto"), "--scan-backend", "auto"]) == 0
    metas = [json.loads(p.read_text()) for p in (tmp_path / "auto" / "runs").glob("*/meta.json")]
    assert metas and all(m["train_config"]["scan_backend"] == "auto" for m in metas)
    assert json.loads((tmp_path / "auto" / "spec.json").read_text())["spec"]["scan_backend"] == "auto"
    with pytest.raises(InterpError, match="scan_backend"):
        E1.main(args + ["--runs", str(tmp_path / "auto")])
    assert E1.main(args + ["--runs", str(tmp_path / "ref"), "--out", str(tmp_path / "figs_ref"), "--scan-backend",
                          "reference"]) == 0
    assert "scan_backend" not in json.loads((tmp_path / "ref" / "spec.json").read_text())["spec"]
    metas = [json.loads(p.read_text()) for p in (tmp_path / "ref" / "runs").glob("*/meta.json")]
    assert metas and all(m["train_config"]["scan_backend"] == "reference" for m in metas)


def test_length_split_flag_reaches_the_stacks(tmp_path, monkeypatch):
    """--stack 2 --length-split: every stack trains with length groups (`interp.stacked.train_stacked`'s
    ``length_split``), and the runs finish; without the flag the stacks get False."""
    import interp.stacked as ST
    seen, orig = [], ST.train_stacked
    def spy(cfgs, **kw):
        seen.append(kw.get("length_split"))
        return orig(cfgs, **kw)
    monkeypatch.setattr(ST, "train_stacked", spy)
    args = ["--tiny", "--out", str(tmp_path / "figs"), "--no-progress", "--device", "cpu", "--train-only",
            "--stack", "2"]
    assert E1.main(args + ["--runs", str(tmp_path / "split"), "--length-split"]) == 0
    assert seen and all(seen)
    seen.clear()
    assert E1.main(args + ["--runs", str(tmp_path / "plain")]) == 0
    assert seen and not any(seen)
