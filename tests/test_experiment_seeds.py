"""interp.experiment.seeds: means over seeds with t-intervals, verdicts replicated seed by seed, the rule text."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from interp import experiment as X


def test_seed_means_interval_is_the_t_interval():
    res = pd.DataFrame({"arm": ["a"] * 3 + ["b"] * 3, "seed": [0, 1, 2] * 2,
                        "accuracy": [0.5, 0.6, 0.9, 0.2, 0.2, 0.2], "chain": [1, 2, 3, 4, 5, 6]})
    m = X.seed_means(res, ["arm"], also=["chain"]).set_index("arm")
    x = np.array([0.5, 0.6, 0.9])
    half = stats.t.ppf(0.975, 2) * x.std(ddof=1) / np.sqrt(3)
    assert m.loc["a", "accuracy"] == pytest.approx(x.mean())
    assert (m.loc["a", "lo"], m.loc["a", "hi"]) == pytest.approx((x.mean() - half, min(1.0, x.mean() + half)))
    assert m.loc["b", ["lo", "hi"]].tolist() == pytest.approx([0.2, 0.2]) and m.loc["a", "seeds"] == 3
    assert m.loc["b", "chain"] == 5


def test_replicated_counts_each_seeds_verdict():
    mean = ["* claim one: **agrees**.", "* claim two: **inconclusive** (both near chance).", "a note without a verdict"]
    per = {0: ["x **agrees**.", "y **disagrees**.", "n"], 1: ["x **agrees**.", "y **inconclusive**.", "n"],
           2: ["x **disagrees**.", "y **inconclusive** (z).", "n"]}
    out = X.replicated(mean, per)
    assert out[0].endswith("(per seed: agrees 2 of 3, disagrees 1 of 3)")
    assert out[1].endswith("(per seed: disagrees 1 of 3, inconclusive 2 of 3)")
    assert out[2] == mean[2]
    assert X.replicated(mean, {0: per[0]}) == mean            # one seed: nothing to replicate


def test_rule_text_and_label():
    doc = "Title.\n\nVerdict rule (fixed before the run). Solves when\n  the interval is above.\n\nOther."
    assert X.rule_text(doc) == "Verdict rule (fixed before the run). Solves when the interval is above."
    assert X.rule_text("no rule here") == ""
    assert X.label(0.91, 0.99, 0.9) == "solves" and X.label(0.1, 0.5, 0.9) == "fails"
    assert X.label(0.85, 0.95, 0.9) == "undecided" and X.label(float("nan"), float("nan"), 0.9) == "undecided"


def test_verdicts_say_what_they_cannot_claim():
    """Fewer than 3 training seeds, or unfinished runs: the lines above a report's verdicts say so."""
    from types import SimpleNamespace
    import pandas as pd
    from interp.experiment.report import evidence_notes
    two, three = SimpleNamespace(P={"seeds": (0, 1)}), SimpleNamespace(P={"seeds": (0, 1, 2)})
    assert "**2 training seeds** (fewer than 3)" in evidence_notes(two)[0]
    assert evidence_notes(three) == [] and evidence_notes(three, pd.DataFrame({"complete": [True]})) == []
    notes = evidence_notes(three, pd.DataFrame({"complete": [True, False, False]}))
    assert notes[0].startswith("**Unfinished**: 2 of 3 runs are not finished") and notes[-1] == ""


def test_runs_note_counts_unfinished_runs_apart_and_tables_say_n_a():
    import pandas as pd
    from interp.experiment.report import md_table, runs_note
    st = pd.DataFrame({"trained_now": [True, True, False, False, False], "complete": [True, False, True, False, False]})
    assert runs_note(st)[0] == ("Runs trained (or continued) in this call: 2 of 5; of the others, 1 were finished by "
                                "earlier calls of the same command (their checkpoints and cached evaluations are "
                                "reused) and 2 are not finished yet.")
    assert md_table(pd.DataFrame({"iia": [float("nan"), 0.5]}))[2:] == ["| n/a |", "| 0.50 |"]
