"""Notebooks under experiments/ run top to bottom on CPU.

nbclient (and a Jupyter kernel) are not dependencies of this project, so the notebook's code cells
are executed in order with ``exec`` in one namespace, from the repository root, with matplotlib's
Agg backend: the same code a kernel would run, without the kernel. A test may shrink a notebook's sizes
(``edits``: text of its code replaced, each found exactly once) to keep the suite fast."""
import json
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_notebook(path: Path, edits: dict | None = None) -> dict:
    nb = json.loads(path.read_text())
    assert nb["nbformat"] == 4
    edits = dict(edits or {})
    for old in edits:
        assert sum("".join(c["source"]).count(old) for c in nb["cells"] if c["cell_type"] == "code") == 1, old
    ns = {"__name__": "__main__"}
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        for old, new in edits.items():
            src = src.replace(old, new)
        assert not any(line.lstrip().startswith(("!", "%")) for line in src.splitlines()), \
            f"cell {i}: shell / magic lines are not run by this test"
        exec(compile(src, f"{path.name}[cell {i}]", "exec"), ns)
        plt.close("all")
    return ns


def test_probes_notebook(monkeypatch):
    monkeypatch.chdir(ROOT)
    # sections 1-2 on N=32 examples per seed instead of 64 (the features of the probes take the time); the load
    # sweep keeps its 128 (fewer leave too few training points per class at 2 pairs); seeds and sweeps as stored
    ns = run_notebook(ROOT / "experiments" / "probes.ipynb", {"SEEDS, N = [0, 1, 2], 64": "SEEDS, N = [0, 1, 2], 32",
                                                              "n=2 * N, seeds=[0]": "n=128, seeds=[0]"})
    sr, mq, load, table = ns["sr"], ns["mq"], ns["load"], ns["table"]
    assert set(sr["model"]) == set(mq["model"]) == {"transformer", "gdn75", "gdn100"}
    # the transformer has no recurrent state: only resid_post there
    assert set(sr[sr.model == "transformer"]["site"]) == {"resid_post"}
    assert set(mq[mq.model == "gdn75"]["site"]) == {"resid_post", "rec.state@key", "rec.state@query"}
    assert (sr.pooled()["seeds"] == 3).all() and sr.pooled()["acc_lo"].notna().all()
    assert sorted(load["load"].unique()) == [2, 4, 8]
    assert isinstance(table, pd.DataFrame) and len(table) == len(ns["summary"](sr)) + len(ns["summary"](mq))
    for df in (sr, mq, load):
        assert df["accuracy"].between(0, 1).all()
