"""E5 (the state-tracking limit) and E6 (the recall law): their verdict rules on made-up numbers, the design
of the full profiles, the TOML files, and the --tiny (fast) and --quick (slow) profiles end to end, with the
report and CSVs checked against each other and against the rule recomputed from the CSVs."""
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from interp import experiment as X
from interp import tasks as T
from interp.stats import seed_interval

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"   # scripts, not an installed package
E5 = X.load_experiment(EXPERIMENTS / "e5_state_limit.py")
E6 = X.load_experiment(EXPERIMENTS / "e6_recall_law.py")


def _args(tmp, profile):
    return [f"--{profile}", "--runs", str(tmp / "runs"), "--out", str(tmp / "figs"), "--no-progress", "--device", "cpu"]


def _close(a, b):
    return (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b, abs=1e-9)


# --- the rules on made-up numbers ---------------------------------------------------------------

def _res(accs: dict, lengths=(16, 64), top=40):
    """E5 result rows: {(task, arm): [per-seed accuracy in distribution, beyond training]}."""
    return pd.DataFrame([dict(task=t, arm=a, seed=s, lr=1e-3, length=n, beyond=n > top, accuracy=v[n > top])
                         for (t, a), seeds in accs.items() for s, v in enumerate(seeds) for n in lengths])


def test_e5_label_and_verdicts():
    assert E5.label(0.91, 0.99) == "solves" and E5.label(0.2, 0.89) == "fails" and E5.label(0.5, 0.95) == "undecided"
    assert E5.label(np.nan, np.nan) == "undecided"
    at_chance, perfect = [(0.5, 0.5), (0.52, 0.49), (0.51, 0.51)], [(1.0, 1.0), (1.0, 0.99), (1.0, 1.0)]
    res = _res({("parity", "gdn100"): at_chance, ("parity", "mamba2100"): at_chance, ("parity", "gla100"): perfect,
                ("parity", "gdn100-neg"): perfect, ("mod3", "gdn100-neg"): [(1, .9), (1, .8), (1, .85)],
                ("mod3", "gdn100"): [(1, .4), (1, .35), (1, .3)], ("S5", "transformer"): [(0.2, 0.01)] * 3})
    summ, cells = E5.summary(res)
    assert len(summ) == 7 * 2 and (summ.seeds == 3).all()
    c = cells.set_index(["task", "arm"])
    assert c.loc[("parity", "gdn100"), "beyond_label"] == "fails" and c.loc[("parity", "gdn100"), "at_chance"]
    v = E5.verdicts(res, cells).set_index("task")
    parity = E5.verdicts(res, cells)
    assert parity.iloc[0].verdict == "disagrees"                    # gla100 solves parity
    assert parity.iloc[1].verdict == "agrees"                       # gdn100-neg solves it
    assert v.loc["mod3", "verdict"] == "agrees" and "gdn100-neg minus gdn100" in v.loc["mod3", "ours"]
    s5 = v.loc["S5", "verdict"]                                     # the transformer never learned S5 at all
    assert s5.startswith("agrees") and "did not learn the training lengths either" in s5
    assert "S3" not in v.index
    assert sorted(E5.not_converged(cells).arm) == ["gdn100", "mamba2100", "transformer"]   # at chance in training too
    one_arm = E5.verdicts(res[res.arm != "gla100"], cells[cells.arm != "gla100"]).iloc[0].verdict
    assert one_arm == ("agrees (but gdn100, mamba2100 did not learn the training lengths either) (without gla100: "
                       "not run)")


def test_e5_a_claim_contradicted_only_by_an_arm_that_did_not_learn_is_inconclusive():
    """A "can" / "improves" claim whose failing arm did not learn the training lengths: a training problem, not
    evidence against the claim."""
    stuck, learned_only = [(0.5, 0.5), (0.52, 0.49), (0.51, 0.51)], [(1.0, 0.3), (1.0, 0.35), (1.0, 0.3)]
    for arm_acc, want in ((stuck, "inconclusive (gdn100-neg did not learn the training lengths"),
                          (learned_only, "disagrees")):
        res = _res({("parity", "gdn100-neg"): arm_acc, ("mod3", "gdn100-neg"): arm_acc,
                    ("mod3", "gdn100"): [(1, .9), (1, .85), (1, .95)]})
        v = E5.verdicts(res, E5.summary(res)[1]).set_index("task").verdict
        assert v["parity"].startswith(want) and v["mod3"].startswith(want), v


def test_lr_edges():
    val = pd.DataFrame(dict(unit=["in"] * 3 + ["edge"] * 3 + ["flat"] * 3, seed=0, lr=[1e-3, 3e-3, 1e-2] * 3,
                            val_acc=[0.5, 0.9, 0.6, 0.5, 0.6, 0.9, 0.7, 0.705, 0.7]))
    e = X.lr_edges(val, [1e-2, 1e-3, 3e-3], 0).set_index("unit")
    assert e.loc["in", "where"] == "inside" and e.loc["in", "best_lr"] == 3e-3
    assert e.loc["edge", "where"] == "edge" and e.loc["edge", "best_lr"] == 1e-2
    assert e.loc["flat", "where"] == "flat"


def _summ6(acc: dict, P):
    """E6 summary rows from {(arm, width, depth, pairs): per-seed accuracies}, and the result rows."""
    res = pd.DataFrame([dict(arm=a, width=w, depth=d, pairs=p, seq_len=256, seed=s, accuracy=x, state="2x32x32",
                             rec_layers=2, params=1) for (a, w, d, p), xs in acc.items() for s, x in enumerate(xs)])
    return E6.summary(res), res


def test_e6_verdicts():
    P = {**E6.PROFILES["full"], "arms": ("transformer", "gdn100", "gla100"), "widths": (64, 128), "pairs": (4, 64)}
    ok, bad = [1.0, 1.0, 1.0], [0.2, 0.25, 0.3]
    acc = {("transformer", w, d, p): ok for w in (64, 128) for d in (2, 4) for p in (4, 64)}
    acc.update({("gdn100", w, d, p): ok if p == 4 or (w == 128 and d == 2) else bad
                for w in (64, 128) for d in (2, 4) for p in (4, 64)})           # 64 pairs need width 128
    acc.update({("gla100", w, d, p): ok for w in (64, 128) for d in (2, 4) for p in (4, 64)})   # never binds
    summ, res = _summ6(acc, P)
    win = pd.DataFrame(dict(unit=list("abcd"), arm=["transformer", "transformer", "gdn100", "gla100"],
                            window=[1.0, 0.75, 0.25, 0.5]))
    v = E6.verdicts(summ, res, win, P).set_index("claim").verdict
    assert v["Attention solves MQAR at small width"] == "agrees"
    assert v["Recurrent models need state growing with the pairs"] == "mixed"         # gdn100 agrees, gla100 not
    assert v["Recurrent recall is learning-rate sensitive; transformers are robust"] == "agrees"
    assert v["Recurrent models prefer width over depth"] == "mixed"                   # gla100: +0.00 exactly
    wn = E6.width_needed(summ).set_index(["arm", "depth", "pairs"]).width
    assert wn[("gdn100", 2, 64)] == 128 and wn[("gdn100", 2, 4)] == 64 and np.isnan(wn[("gdn100", 4, 64)])
    assert E6.not_converged(summ).empty
    pk = E6.pick(summ, P)
    assert pk[1:] == ("gdn100", 64, 2, 256, 4, 64) and pk[0][0] and pk[0][1] == pytest.approx(0.75)


def test_e6_a_transformer_that_did_not_converge_gives_no_verdict_and_pick_needs_a_solved_and_a_failed_count():
    P = {**E6.PROFILES["full"], "arms": ("transformer", "gdn100"), "widths": (64,), "depths": (2,), "pairs": (4, 64)}
    bad, ok = [0.2, 0.25, 0.3], [1.0, 1.0, 1.0]
    summ, res = _summ6({("transformer", 64, 2, 4): bad, ("transformer", 64, 2, 64): bad,
                        ("gdn100", 64, 2, 4): [0.5, 0.5, 0.5], ("gdn100", 64, 2, 64): [0.0, 0.0, 0.0]}, P)
    v = E6.verdicts(summ, res, pd.DataFrame(columns=["unit", "arm", "window"]), P).set_index("claim").verdict
    assert v["Attention solves MQAR at small width"] == "inconclusive (did not converge: a training problem)"
    assert E6.pick(summ, P)[0] == (False, 0.5)   # gdn100 drops 0.5 but solves no pair count: not "solved"
    summ, res = _summ6({("transformer", 64, 2, 4): ok, ("transformer", 64, 2, 64): bad}, P)
    v = E6.verdicts(summ, res, pd.DataFrame(columns=["unit", "arm", "window"]), P).set_index("claim").verdict
    assert v["Attention solves MQAR at small width"] == "disagrees"


def test_full_profiles_match_the_design():
    P5 = E5.PROFILES["full"]
    assert set(P5["tasks"]) == {"parity", "mod3", "S3", "S5"} and len(P5["arms"]) == 7 and P5["seeds"] == (0, 1, 2)
    assert P5["train_max"] == 40 and max(P5["test_lengths"]) == 256
    assert E5.train_lengths("parity", P5)[-1] == 40 and E5.train_lengths("S5", P5)[-1] == 32
    assert len(E5.units(P5)) == 28
    m = E5.units(P5)["parity.gdn100-neg"]
    assert m["model"]["gdn_neg_eig"] and m["knobs"] == {"parity": {"modulus": 2}}
    ref = X.n_params(E5.units(P5)["parity.transformer"]["model"])
    assert all(abs(X.n_params(s["model"]) - ref) / ref < 0.01 for s in E5.units(P5).values())
    P6 = E6.PROFILES["full"]
    assert E6.aliases(P6) == {("gdn75", 2): "gdn50"}
    u = E6.units(P6, P6["seq_lens"])
    assert len(u) == 165 and len(u) * (len(P6["lrs"]) + 2) == 990 and len(P6["lrs"]) == 4
    b = T.generate("mqar", 4, seed=0, **u["gdn100.w64.L2.P64.T256"][1]["knobs"]["mqar"])
    assert b.tokens.shape[1] == 258 and (b.loss_mask.sum(1) == 64).all()                   # every query supervised
    assert T.generate("mqar", 2, **E6.mqar_knobs(16, 256)).tokens.shape[1] == 256
    assert E6.state_size("gdn100", 128, 2, 32)[:2] == ("4x32x32", 2)
    assert E6.state_size("mamba2100", 64, 2, 32)[:2] == ("4x32x32", 2) and E6.state_size("transformer", 64, 2, 32)[0] == "-"


def test_tomls_parse_against_the_scripts():
    for name, mod in (("e5_state_limit", E5), ("e6_recall_law", E6)):
        path = EXPERIMENTS / f"{name}.toml"
        spec = tomllib.loads(path.read_text())
        assert spec["script"] == f"{name}.py" and spec["description"]
        for opts in (spec.get("options", {}), {"quick": True, "time_budget": 9, "train_only": True}):
            X.check_options(mod, path, spec["script"], opts, X.toml_argv(opts))


# --- the runs end to end, and their outputs against each other ---------------------------------------

def check_e5(figs: Path, P):
    res, summ = pd.read_csv(figs / "results.csv"), pd.read_csv(figs / "summary.csv")
    cells, verd = pd.read_csv(figs / "generalisation.csv"), pd.read_csv(figs / "verdicts.csv")
    report = (figs / "report.md").read_text()
    assert set(res.task) == set(P["tasks"]) and set(res.arm) == set(P["arms"])
    assert (res.groupby(["task", "arm"]).seed.nunique() == len(P["seeds"])).all()
    assert (res.beyond == [n > max(E5.train_lengths(t, P)) for t, n in zip(res.task, res.length)]).all()
    for (t, a, n), g in res.groupby(["task", "arm", "length"]):       # summary = intervals over the seeds
        row = summ[(summ.task == t) & (summ.arm == a) & (summ.length == n)].iloc[0]
        assert all(_close(x, y) for x, y in zip(seed_interval(g.accuracy, bounds=(0, 1)), row[["mean", "lo", "hi"]]))
        line = next(x for x in report.split(f"## {t}: accuracy against length")[1].splitlines()
                    if x.split(" | ")[0] in (f"| {n}", f"| {n} (beyond)"))
        assert X.fmt(row["mean"], row.lo, row.hi) in line
    for (t, a), g in res.groupby(["task", "arm"]):                    # in distribution / beyond: per-seed means
        per = g.groupby("seed").apply(lambda x: x[~x.beyond].accuracy.mean(), include_groups=False)
        c = cells[(cells.task == t) & (cells.arm == a)].iloc[0]
        m, lo, hi = seed_interval(per, bounds=(0, 1))         # accuracies: the interval is clipped to [0, 1]
        assert _close(m, c.in_mean) and _close(lo, c.in_lo) and c.in_label == E5.label(lo, hi)
    pd.testing.assert_frame_equal(E5.verdicts(res, cells), verd, check_dtype=False)
    for r in verd.itertuples():
        assert f"| {r.claim} | {r.source} | {r.task} | {r.arms} | {r.ours} | {r.verdict} |" in report
    nc = E5.not_converged(cells)
    assert ("**Did not converge** (fails at the training lengths): "
            + (", ".join(f"{t} / {a}" for t, a in zip(nc.task, nc.arm)) or "none") + ".") in report
    sweep = pd.read_csv(figs / "lr_sweep.csv")
    s0 = sweep[sweep.seed == P["seeds"][0]]
    best = s0.sort_values("lr").groupby("unit").apply(lambda g: g.lr[g.val_acc.idxmax()], include_groups=False)
    assert (res.assign(unit=res.task + "." + res.arm).groupby("unit").lr.first() == best).all()
    for f in ["accuracy.png", "report.md", "lr_sweep_status.csv", "probes.csv", "probe_layers.csv", "das.csv"]:
        assert (figs / f).is_file(), f
    assert "## Comparison with the published shape" in report and "git commit:" in report


def check_e6(figs: Path, P):
    res, summ = pd.read_csv(figs / "results.csv"), pd.read_csv(figs / "summary.csv")
    wn, verd = pd.read_csv(figs / "width_needed.csv"), pd.read_csv(figs / "verdicts.csv")
    report = (figs / "report.md").read_text()
    assert (res.groupby(E6.KEYS).seed.nunique() == len(P["seeds"])).all()
    assert len(summ) == len(E6.units(P, P["seq_lens"]))
    for k, g in res.groupby(E6.KEYS):
        row = summ.set_index(E6.KEYS).loc[k]
        m, lo, hi = seed_interval(g.accuracy, bounds=(0, 1))
        assert _close(m, row["mean"]) and _close(lo, row.lo) and row.label == E5.label(lo, hi)
        assert X.fmt(m, lo, hi) in report
    for r in wn.itertuples():                                       # the smallest width whose interval clears 0.9
        ok = summ[(summ.arm == r.arm) & (summ.depth == r.depth) & (summ.pairs == r.pairs) & (summ.lo >= 0.9)]
        assert _close(r.width, float(ok.width.min()) if len(ok) else np.nan)
    for r in verd.itertuples():
        assert f"| {r.claim} | {r.source} | {r.ours} | {r.verdict} |" in report
    sweep = pd.read_csv(figs / "lr_sweep.csv")
    s0 = sweep[sweep.seed == P["seeds"][0]]
    assert (s0.groupby("unit").lr.nunique() == len(P["lrs"])).all()
    best = s0.sort_values("lr").groupby("unit").apply(lambda g: g.lr[g.val_acc.idxmax()], include_groups=False)
    got = res.assign(unit=[f"{a}.w{w}.L{d}.P{p}.T{t}" for a, w, d, p, t in res[E6.KEYS].to_numpy()])
    assert (got.groupby("unit").lr.first() == best).all()
    nc = E6.not_converged(summ)
    assert ("(not solved at the fewest pairs): " + (", ".join(f"{a} d={w} L={d}" for a, w, d in zip(
        nc.arm, nc.width, nc.depth)) or "none")) in report
    roles = set(pd.read_csv(figs / "probes.csv").role) if (figs / "probes.csv").is_file() else set()
    assert roles in ({"solved", "failed"}, {"higher", "lower"}), roles   # "solved" only where one solves
    for f in ["accuracy.png", "lr.png", "interventions.csv"] + [f"probes_{r}.png" for r in roles]:
        assert (figs / f).is_file(), f
    assert "## Comparison with the published shape" in report and "git commit:" in report


@pytest.mark.parametrize("mod,check", [(E5, check_e5), (E6, check_e6)], ids=["e5", "e6"])
def test_tiny_end_to_end_train_only_then_resume(tmp_path, mod, check):
    figs = tmp_path / "figs"
    assert mod.main(_args(tmp_path, "tiny") + ["--train-only"]) == 0      # trains both stages, tests nothing
    assert pd.read_csv(figs / "lr_sweep_status.csv").complete.all() and not (figs / "report.md").exists()
    assert mod.main(_args(tmp_path, "tiny")) == 0
    check(figs, mod.PROFILES["test"])
    before = (figs / "results.csv").read_text()
    assert mod.main(_args(tmp_path, "tiny")) == 0                           # nothing trained again, same numbers
    assert not pd.read_csv(figs / "lr_sweep_status.csv").trained_now.any()
    assert (figs / "results.csv").read_text() == before


@pytest.mark.slow
@pytest.mark.parametrize("mod,check", [(E5, check_e5), (E6, check_e6)], ids=["e5", "e6"])
def test_quick_profile_end_to_end(tmp_path, mod, check):
    """The CPU profile (about a minute of CPU each; slow on a shared machine)."""
    assert mod.main(_args(tmp_path, "quick")) == 0
    check(tmp_path / "figs", mod.PROFILES["quick"])


def test_quick_outputs_default_under_runs(tmp_path, monkeypatch):
    """Without --out, a CPU profile writes under runs/, never into figures/."""
    monkeypatch.chdir(tmp_path)
    a = E5.build_parser().parse_args(["--tiny", "--device", "cpu"])
    ctx = E5.context(a, [])
    assert ctx.out == Path("runs/e5_state_limit_test/figures") and ctx.runs == Path("runs/e5_state_limit_test")
    a = E6.build_parser().parse_args(["--quick", "--device", "cpu", "--seq-len", "64"])
    assert E5.context(a, [], E6.NAME, E6.PROFILES).out == Path("runs/e6_recall_law_quick/figures")
    assert not (tmp_path / "figures").exists()


def test_e6_refuses_a_seq_len_that_changes_nothing_and_a_nan_budget(tmp_path):
    from interp import InterpError
    common = ["--tiny", "--device", "cpu", "--out", str(tmp_path / "f"), "--runs", str(tmp_path / "r")]
    with pytest.raises(InterpError, match=r"--seq-len 0 is shorter than the 10 tokens .*valid: --seq-len >= 10"):
        E6.main(common + ["--seq-len", "0"])
    assert not list((tmp_path / "r").rglob("*.json"))
    with pytest.raises(T.TaskError, match="seq_len=100000 is out of range"):    # the task's range, before training
        E6.main(common + ["--seq-len", "100000"])
    assert not list((tmp_path / "r").rglob("*.json"))
    with pytest.raises(SystemExit):
        E6.build_parser().parse_args(common + ["--time-budget", "nan"])
