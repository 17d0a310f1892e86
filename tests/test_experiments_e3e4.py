"""E3 (token-level loss decomposition) and E4 (inter- vs intra-layer fusion): their --tiny runs end
to end, the per-token losses against an independent computation, resuming, and `interp run`."""
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from interp import InterpError
from interp import cli
from interp import experiment as C
from interp import tokenloss as TL

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"   # scripts, not an installed package
E3 = C.load_experiment(EXPERIMENTS / "e3_token_loss.py")
E4 = C.load_experiment(EXPERIMENTS / "e4_fusion.py")


def _args(tmp):
    return ["--tiny", "--runs", str(tmp / "runs"), "--out", str(tmp / "figs"), "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def e3(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e3")
    P = E3.PROFILES["test"]
    assert E3.main(_args(tmp) + ["--train-only"]) == 0     # trains the arms' sweep and seeds, scores nothing
    n = len(E3.ARMS) * (len(P["lrs"]) + len(P["seeds"]) - 1)
    metas = [json.loads(f.read_text()) for f in (tmp / "runs" / "models").glob("*/meta.json")]
    assert len(metas) == n and all(m["steps_done"] == m["steps"] == P["steps"] for m in metas)
    assert not (tmp / "figs" / "report.md").exists()
    assert E3.main(_args(tmp)) == 0
    return tmp


def _chosen(e3, arm, seed=0):
    """The run directory of ``arm``'s chosen rate at training seed ``seed`` (named in the units' cache)."""
    runs = {r for d in (e3 / "runs" / "units").iterdir() for r in d.name.split("_vs_")}
    return e3 / "runs" / "models" / next(r for r in runs if r.startswith(f"{arm}_s{seed}_"))


def test_e3_runs_in_worker_processes_equal_the_sequential_runs(e3, tmp_path, monkeypatch):
    """pair_workers > 1 trains the runs in spawned processes; each run sees the batches and init of its seed,
    so the checkpoints equal the fixture's, trained one after the other in this process."""
    from safetensors.torch import load_file
    monkeypatch.setitem(E3.PROFILES["test"], "pair_workers", 2)
    monkeypatch.setitem(E3.PROFILES["test"], "lrs", (1e-3,))       # one run per arm: the fixture's seed-0 runs
    monkeypatch.setitem(E3.PROFILES["test"], "seeds", (0,))
    assert E3.main(_args(tmp_path) + ["--train-only", "--probe-models", "none"]) == 0
    runs = sorted(p.name for p in (tmp_path / "runs" / "models").iterdir())
    assert runs == [f"{a}_s0_lr0.001" for a in sorted(E3.ARMS)]
    for r in runs:
        a, b = (load_file(str(d / "runs" / "models" / r / "model.safetensors")) for d in (e3, tmp_path))
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5) for k in a), r
        assert (tmp_path / "runs" / "models" / r / "train.out").is_file()


def test_e3_writes_its_outputs(e3):
    figs, P = e3 / "figs", E3.PROFILES["test"]
    for f in ["report.md", "token_loss.png", "token_loss_excess.png", "token_loss_swa.png", "token_loss_excess_swa.png",
              "summary.csv", "summary_seeds.csv", "findings.csv", "tokens.parquet", "probes.png", "probes.parquet",
              "probes_summary.csv", "corpus.csv", "training.png", "overfit.csv", "lr_sweep.csv"]:
        assert (figs / f).is_file(), f
    report = (figs / "report.md").read_text()
    for s in ["* command: `python experiments/e3_token_loss.py --tiny", "* device: CPU", "* date: ", "git commit:",
              "## The arms (trained here)", "| olmo3_swa | olmo3 | S S S A | 16 |", "G G G A",
              "## Learning-rate sweep and training seeds", "Best rate per unit and where it lies",
              "**Arms that did not converge: 3 of 3**", "## Passes over the training text and the overfit check",
              "passes over", "validation loss", "## olmo3 vs olmo_hybrid: loss difference by token category",
              "## olmo3_swa vs olmo_hybrid: loss difference by token category",
              "## Comparison with the published shape", "Verdict rule (fixed before the run)",
              "| published finding", "Li & Merrill", "pronoun / answer", "brackets / close",
              "**not a test**"]:             # the shipped defaults never saw the probe tasks
        assert s in report, s
    # the rule and the count of arms that did not converge stand next to the findings
    verdicts = report.split("## Comparison with the published shape")[1]
    assert "Verdict rule" in verdicts and "Arms that did not converge" in verdicts.split("| published finding")[0]
    sweep = pd.read_csv(figs / "lr_sweep.csv")
    assert sweep.complete.all() and len(sweep) == len(E3.ARMS) * (len(P["lrs"]) + len(P["seeds"]) - 1)
    assert set(sweep.unit) == set(E3.ARMS) and set(sweep.seed) == set(P["seeds"]) and sweep.val_acc.between(0, 1).all()
    for arm, g in sweep.groupby("unit"):
        assert sorted(g[g.seed == 0].lr) == sorted(P["lrs"]) and g[g.seed == 1].lr.nunique() == 1
    found = pd.read_csv(figs / "findings.csv")
    assert len(found) == 5 * 2 and set(found.comparison) == {"olmo3 vs olmo_hybrid", "olmo3_swa vs olmo_hybrid"}
    # tiny models never beat the unigram loss: every verdict is inconclusive, and says why
    assert found.verdict.str.startswith("**inconclusive**").all() and found.verdict.str.contains("converge").all()
    over = pd.read_csv(figs / "overfit.csv")
    assert set(over.arm) == set(E3.ARMS) and (over.seeds == len(P["seeds"])).all()
    assert sorted(set(over.step)) == list(range(1, P["steps"] + 1))
    corpus = pd.read_csv(figs / "corpus.csv")
    assert set(corpus.split) == {"train", "val", "eval"} and not set(corpus[corpus.split == "eval"].sha1) & set(
        corpus[corpus.split != "eval"].sha1)
    assert not set(corpus[corpus.split == "train"].sha1) & set(corpus[corpus.split == "val"].sha1)


def test_e3_arms_match_in_size_and_the_swa_arm_has_olmo3s_pattern(e3):
    metas = {m["arch"]: m for m in (json.loads(f.read_text()) for f in (e3 / "runs" / "models").glob("*/meta.json"))}
    n = [metas[a]["params"] for a in E3.ARMS]
    assert max(n) / min(n) - 1 < 0.02
    assert metas["olmo3_swa"]["layer_types"] == ["sliding_attention"] * 3 + ["full_attention"]
    assert metas["olmo3_swa"]["sliding_window"] == E3.PROFILES["test"]["seq_len"] // 2
    assert metas["olmo3"]["layer_types"] == ["full_attention"] * 4
    assert metas["olmo_hybrid"]["layer_types"] == ["linear_attention"] * 3 + ["full_attention"]


def test_e3_token_losses_match_an_independent_computation(e3):
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    P = E3.PROFILES["test"]
    tokens = pd.read_parquet(e3 / "figs" / "tokens.parquet")
    assert set(tokens.pair) == {"olmo3 vs olmo_hybrid", "olmo3_swa vs olmo_hybrid"}
    tok = PreTrainedTokenizerFast.from_pretrained(str(e3 / "runs" / "tokenizer"))
    models = {a: AutoModelForCausalLM.from_pretrained(str(_chosen(e3, a))).eval() for a in E3.ARMS}
    L, S = P["eval_seq_len"], P["eval_seq_len"] // 2
    docs = {d.doc_id: d for d in TL.default_corpus(bytes_per_domain=P["train_bytes"] + P["eval_bytes"],
                                                   max_doc_bytes=P["max_doc_bytes"], seed=0)}
    rng = np.random.default_rng(0)
    checked = 0
    for pair, tl in tokens.groupby("pair"):
        a, b = pair.split(" vs ")
        assert np.allclose(tl["diff"], tl.loss_a - tl.loss_b) and (tl.loss_a > 0).all() and (tl.loss_b > 0).all()
        for doc_id, g in tl.groupby("doc_id"):
            text = docs[doc_id].text
            ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
            assert sorted(g.pos) == list(range(1, len(ids)))          # every token scored exactly once
            for t in rng.choice(g.pos.to_numpy(), size=1, replace=False):
                k = max(0, math.ceil((t - L + 1) / S))                 # the first window where t is past the overlap
                x = torch.tensor([ids[k * S:t]])                       # the context of token t
                row = g[g.pos == t].iloc[0]
                assert row.token_id == ids[t] and row.ctx == t - k * S
                for col, m in (("loss_a", models[a]), ("loss_b", models[b])):
                    with torch.no_grad():
                        lp = m(input_ids=x).logits[0, -1].float().log_softmax(-1)
                    assert row[col] == pytest.approx(-lp[ids[t]].item(), abs=2e-4), (doc_id, t, col)
                # copy features within the window, brute force
                w = ids[k * S:t + 1]
                best = max([n for j in range(len(w) - 1) for n in range(1, j + 2) if w[j - n + 1:j + 1] == w[-n:]],
                           default=0)
                assert row.copy_len == best
                checked += 1
    assert checked >= 6


def test_e3_summaries_are_consistent_with_the_tokens_and_the_seeds(e3):
    from scipy import stats
    tl = pd.read_parquet(e3 / "figs" / "tokens.parquet")
    tl = tl[tl.pair == "olmo3 vs olmo_hybrid"]
    per = pd.read_csv(e3 / "figs" / "summary_seeds.csv", keep_default_na=False, na_values=[""])
    s0 = per[(per.pair == "olmo3 vs olmo_hybrid") & (per.seed == 0)]
    tags = s0[(s0.facet == "tag") & (s0.domain == "all")].set_index("category")
    counts = tl[tl.tag != "other"].tag.value_counts()
    assert tags.n.to_dict() == counts.to_dict()
    means = tl.groupby("tag")["diff"].mean()
    for c in tags.index:
        # float32 losses summed in another order than pandas' means: equal to float32 rounding
        assert tags.loc[c, "diff"] == pytest.approx(means[c], rel=1e-5, abs=1e-7)
        assert tags.loc[c, "excess"] == pytest.approx(means[c] - tl["diff"].mean(), rel=1e-5, abs=1e-7)
    code = s0[(s0.facet == "delimiter") & (s0.domain == "code")].set_index("category")
    sel = tl[(tl.domain == "code") & (tl.delim != "none")]
    assert code.n.to_dict() == sel.delim.value_counts().to_dict()
    # over seeds: the mean of the seeds' values and a t-interval over them (two seeds: t with 1 df)
    s = pd.read_csv(e3 / "figs" / "summary.csv", keep_default_na=False, na_values=[""])
    keys = ["pair", "facet", "category", "domain"]
    j = s.merge(per.groupby(keys)["diff"].agg(["mean", "std", "count"]).reset_index(), on=keys)
    assert len(j) == len(s) and (j["count"] == 2).all() and (j.seeds == 2).all()
    half = stats.t.ppf(0.975, 1) * j["std"] / np.sqrt(2)
    assert np.allclose(j["diff"], j["mean"]) and np.allclose(j.ci_lo, j["mean"] - half, atol=1e-9)
    assert np.allclose(j.ci_hi, j["mean"] + half, atol=1e-9)


def test_e3_findings_are_computed_from_each_seeds_tokens(e3):
    """The first seed's finding values, recomputed from its tokens by hand."""
    from interp.tokenloss.seeds import finding_values
    tl = pd.read_parquet(e3 / "figs" / "tokens.parquet")
    tl = tl[tl.pair == "olmo3 vs olmo_hybrid"]
    v = finding_values(tl)
    d = tl["diff"].astype(float)
    assert v["overall"] == pytest.approx(d.mean())
    assert v["content_minus_function"] == pytest.approx(d[tl.tag == "content"].mean() - d[tl.tag == "function"].mean())
    rep = tl.copy_len >= TL.COPY_MIN
    assert v["copy_excess"] == pytest.approx(d[rep].mean() - d.mean())
    closers = tl.delim.isin(["close_bracket", "close_quote", "close_tag"]) & (tl.delim_span > 0)
    assert v["close_excess"] == pytest.approx(d[closers].mean() - d.mean())
    tags = [t for t in TL.TAGS if t != "other" and (tl.tag == t).any()]
    assert v["tags_better"] == pytest.approx(np.mean([d[tl.tag == t].mean() > 0 for t in tags]))


def test_e3_probe_rows_are_consistent(e3):
    df = pd.read_parquet(e3 / "figs" / "probes.parquet")
    P = E3.PROFILES["test"]
    assert set(df.model) == set(P["probe_models"].split(",")) and set(df.task) == set(TL.PROBE_TASKS)
    assert (df.cand_loss >= 0).all() and (df.loss >= df.cand_loss - 1e-5).all()   # renormalising can only help
    ans = df[df.role == "answer"]
    assert (ans.groupby(["model", "task"]).size() == P["probe_n"]).all()
    ps = pd.read_csv(e3 / "figs" / "probes_summary.csv")
    j = ps.set_index(["task", "role"])
    for (task, role), g in df[df.knob.isin(ps.knob)].groupby(["task", "role"]):
        ref = g[g.model == "transformer"].cand_loss.mean()
        assert j.loc[(task, role), "cand_loss_ref"].mean() == pytest.approx(ref)


def test_e3_second_call_reuses_everything_and_other_settings_need_other_runs(e3, monkeypatch):
    before = pd.read_parquet(e3 / "figs" / "tokens.parquet")
    stamps = {f: f.stat().st_mtime_ns for f in (e3 / "runs" / "models").glob("*/model.safetensors")}
    assert E3.main(_args(e3)) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(e3 / "figs" / "tokens.parquet"), before)
    assert stamps == {f: f.stat().st_mtime_ns for f in (e3 / "runs" / "models").glob("*/model.safetensors")}
    with pytest.raises(InterpError, match="another (configuration|call) .*seed"):
        E3.main(_args(e3) + ["--seed", "1"])
    monkeypatch.setitem(E3.PROFILES["test"], "lrs", (1e-3, 3e-3, 1e-2))
    with pytest.raises(InterpError, match="holds runs made with another configuration .*lrs"):
        E3.main(_args(e3))
    monkeypatch.undo()
    with pytest.raises(InterpError, match="give both --model-a and --model-b"):
        E3.main(_args(e3) + ["--model-a", "x"])
    with pytest.raises(InterpError, match="'/nonexistent' is not a checkpoint directory"):
        E3.main(_args(e3) + ["--model-a", "/nonexistent", "--model-b", "/nonexistent"])


def test_e3_with_user_checkpoints_and_corpus(e3, tmp_path):
    """--model-a / --model-b (local HF checkpoints) on a user corpus; no training; intervals over context
    windows of the one pair, and no verdict beyond inconclusive."""
    ma, mb = (str(_chosen(e3, a)) for a in ("olmo3", "olmo_hybrid"))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.py").write_text("def f(x):\n    return [x, (x + 1)]\n" * 3)
    (tmp_path / "c" / "b.txt").write_text("The cat sat on the mat. " * 6)
    args = ["--tiny", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "figs"), "--no-progress",
            "--device", "cpu", "--model-a", ma, "--model-b", mb, "--corpus", str(tmp_path / "c"),
            "--probe-models", "none"]
    assert E3.main(args) == 0
    tl = pd.read_parquet(tmp_path / "figs" / "tokens.parquet")
    assert set(tl.domain) == {"code", "prose"} and {"keyword", "identifier"} <= set(tl.tag)
    report = (tmp_path / "figs" / "report.md").read_text()
    assert "User-provided (`--corpus`)" in report and "bootstrap over context windows of one model pair" in report
    assert not (tmp_path / "runs" / "models").exists()
    found = pd.read_csv(tmp_path / "figs" / "findings.csv")
    assert found.verdict.str.startswith("**inconclusive** (1 training seed, fewer than 3").all()


def test_e4_end_to_end(tmp_path):
    assert E4.main(_args(tmp_path)) == 0
    figs = tmp_path / "figs"
    for f in ["report.md", "accuracy.png", "loss.png", "throughput.png", "training.png", "results.csv",
              "examples.parquet", "throughput.csv", "lr_sweep.csv", "flops.png", "flops.csv"]:
        assert (figs / f).is_file(), f
    P = E4.PROFILES["test"]
    fl = pd.read_csv(figs / "flops.csv")    # one row per logged step of each arm's first-seed run, FLOPs growing
    assert set(fl.arm) == set(P["arms"]) and (fl.groupby("arm").flops.diff().dropna() > 0).all()
    assert "## Accuracy against training FLOPs" in (figs / "report.md").read_text()
    res = pd.read_csv(figs / "results.csv")
    assert set(res.arm) == set(P["arms"]) and res.accuracy.between(0, 1).all() and (res.loss > 0).all()
    assert len(res) == len(P["arms"]) * len(P["seeds"]) * sum(len(v) for g in P["grid"].values() for v in g.values())
    ex = pd.read_parquet(figs / "examples.parquet")
    assert set(ex.seed) == set(res.seed) == set(P["seeds"])
    agg = ex.groupby(["arm", "seed", "task", "knob", "value"])["correct"].mean()
    keys = res[["arm", "seed", "task", "knob", "value"]].astype({"value": str})
    assert np.allclose(agg.loc[[tuple(r) for r in keys.itertuples(index=False)]], res.accuracy)
    thr = pd.read_csv(figs / "throughput.csv")
    assert set(thr["mode"]) == {"fwd+bwd", "fwd"} and (thr.tokens_per_s > 0).all()
    assert np.allclose(thr.tokens_per_s, thr.batch * thr.seq_len / (thr.ms_per_iter / 1e3), rtol=1e-6)
    sweep = pd.read_csv(figs / "lr_sweep.csv")
    assert sweep.complete.all() and len(sweep) == len(P["arms"]) * (len(P["lrs"]) + len(P["seeds"]) - 1)
    report = (figs / "report.md").read_text()
    assert f"95% t-interval over {len(P['seeds'])} training seeds" in report
    assert "Bae et al. 2025" in report and "**inconclusive**" in report and "* device: CPU" in report
    # the parallel arm really has a parallel layer, and both arms match in size
    A = E4.arms(P)
    assert "A+G" in E4.layers_str(A["gdn75-par"]["model"]) and "A+G" not in E4.layers_str(A["gdn75"]["model"])
    n = [C.n_params(A[a]["model"]) for a in P["arms"]]
    assert abs(n[0] - n[1]) / n[0] < 0.02


def test_e4_paired_differences():
    ex = pd.DataFrame(dict(arm=["s"] * 4 + ["p"] * 4, task="mqar", knob="n_pairs", value="2",
                           example=list(range(4)) * 2, correct=[0, 0, 1, 1, 1, 1, 1, 0], loss=[2.0, 2, 1, 1, 1, 1, 1, 2]))
    p = E4.paired(ex, "s", "p", "correct", n_boot=200).iloc[0]
    assert p.correct_a == 0.5 and p.correct_b == 0.75 and p["diff"] == pytest.approx(0.25) and p.n == 4
    assert p.ci_lo <= 0.25 <= p.ci_hi and p.over == "examples"
    two = pd.concat([ex.assign(seed=0), ex.assign(seed=1, correct=[0, 0, 0, 1, 1, 1, 1, 1])])   # diffs 0.25, 0.75
    q = E4.paired(two, "s", "p", "correct").iloc[0]
    from scipy import stats
    half = stats.t.ppf(0.975, 1) * np.std([0.25, 0.75], ddof=1) / np.sqrt(2)
    assert q.over == "seeds" and q.seeds == 2 and q["diff"] == pytest.approx(0.5)
    assert (q.ci_lo, q.ci_hi) == pytest.approx((0.5 - half, 0.5 + half))
    assert E4.chance("mqar") == pytest.approx(1 / 64) and E4.chance("state_recall") == pytest.approx(0.1)


# --- interp run ------------------------------------------------------------------------------------

def test_interp_run_tiny_profile(tmp_path, capsys):
    toml = tmp_path / "e4.toml"
    script = Path(E4.__file__).resolve()
    toml.write_text(f'script = "{script}"\ndescription = "test"\n[options]\ntiny = true\nno_progress = true\n'
                    f'device = "cpu"\nruns = "{tmp_path / "runs"}"\nout = "{tmp_path / "figs"}"\n')
    assert cli.main(["run", str(toml)]) == 0
    head = (tmp_path / "figs" / "report.md").read_text().split("\n")[2]      # the command, and the TOML it came from
    assert head.startswith("* command: `python experiments/e4_fusion.py --tiny") and f"(run as `interp run {toml}`)" in head
    before = (tmp_path / "figs" / "results.csv").read_text()
    assert cli.main(["run", str(toml), "--seed", "0"]) == 0             # extra flags go to the script; resumes
    assert (tmp_path / "figs" / "results.csv").read_text() == before


def test_interp_run_errors(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path / "nope.toml")]) == 2
    err = capsys.readouterr().err       # an empty folder: the shipped experiments are the valid choices
    assert "error: experiment file" in err and "available: " in err and "e4_fusion.toml" in err
    assert cli.main(["run"]) == 2       # argparse named the script's flags 'args' as a missing argument
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs an experiment file; valid: experiments/e1_state_recall.toml" in err, err
    root = Path(E4.__file__).resolve().parent
    assert cli.main(["run", str(root / "nope.toml")]) == 2
    err = capsys.readouterr().err
    assert "not found; available:" in err and "e3_token_loss.toml" in err and "e4_fusion.toml" in err
    cases = {'script = "e4_fusion.py"\nbogus = 1\n': "unknown key 'bogus' in .*valid keys: script, options, description",
             'script = "e4_fusion.py"\n[options]\ntiny = true\nlayers = 3\n':
                 "unknown option 'layers' in \\[options\\] .*valid options for e4_fusion.py: .*quick",
             'script = "e4_fusion.py"\n[options]\ntiny = true\nseed = "x"\n': "argument --seed: 'x' is not an integer; valid: integers >= 0",
             'script = "nothere.py"\n': "script 'nothere.py' .* not found next to it or among the shipped experiments; valid scripts: .*e4_fusion.py",
             'options = 3\nscript = "e4_fusion.py"\n': "'options' in .* must be a table",
             'script = \n': "is not valid TOML"}
    for i, (text, msg) in enumerate(cases.items()):
        f = root / f"_test_interp_run_{i}.toml"        # next to the scripts, as a user's file would be
        try:
            f.write_text(text)
            with pytest.raises(InterpError, match=msg):
                C.run_toml(f)
            assert cli.main(["run", str(f)]) == 2
            assert capsys.readouterr().err.startswith("error: ")
        finally:
            f.unlink()


def test_shipped_tomls_name_their_scripts():
    import tomllib
    root = Path(E4.__file__).resolve().parent
    for name in ("e1_state_recall", "e2_recall_gap", "e3_token_loss", "e4_fusion"):
        spec = tomllib.loads((root / f"{name}.toml").read_text())
        assert spec["script"] == f"{name}.py" and set(spec) <= set(C.TOML_KEYS)
        assert C.toml_argv(spec.get("options", {})) == []          # the full profile unless told otherwise
    assert C.toml_argv({"quick": True, "tiny": False, "time_budget": 7, "corpus": ["a", "b"]}) == [
        "--quick", "--time-budget", "7", "--corpus", "a", "--corpus", "b"]
    with pytest.raises(InterpError, match="option 'x' is a table"):
        C.toml_argv({"x": {"y": 1}})
    assert json.loads(json.dumps(E3.PROFILES["full"]))          # profiles are plain data (the spec check relies on it)


def test_sweep_edge_note():
    assert C.sweep_edge_note({"a": 3e-3, "b": 1e-3}, (1e-3, 3e-3, 1e-2)) == [
        "**Best learning rate at the edge of the sweep** for b (0.001, the smallest): the optimum may lie outside "
        "the swept range, so these arms may be under-tuned relative to the others.", ""]
    assert C.sweep_edge_note({"a": 3e-3}, (1e-3, 3e-3, 1e-2)) == []
    assert "Only one learning rate" in C.sweep_edge_note({"a": 3e-3}, (3e-3,))[0]


def test_e4_training_plot_reads_logs_with_the_warmup_row(tmp_path):
    """A run with the induction warm-up logs a row without a loss when the warm-up ends; the full
    GPU run of E4 stopped at its training plot on that row (2026-11-30)."""
    from types import SimpleNamespace
    from interp.train import read_log
    run = tmp_path / "gdn75_lr0.001"
    run.mkdir()
    rows = [{"step": 10, "loss": 3.0, "acc/mqar": 0.1}, {"step": 10, "induction_done_at": 10, "acc/induction": 0.9},
            {"step": 20, "loss": 2.0, "acc/mqar": 0.5, "tokens_per_s": 100.0}]
    (run / "train_log.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert [r["step"] for r in read_log(run / "train_log.jsonl")] == [10, 20]
    E4.plot_training({"gdn75": SimpleNamespace(out=run, lr=1e-3)}, tmp_path / "training.png")
    assert (tmp_path / "training.png").stat().st_size > 0


def test_e4_throughput_only_and_rows_from_another_device(tmp_path):
    """`--throughput-only` measures without training; rows another host measured into the same cache
    (a GPU's, next to a report assembled on CPU) are reported with their device, this device's first."""
    args, figs = _args(tmp_path), tmp_path / "figs"
    assert E4.main(args + ["--throughput-only"]) == 0
    thr = pd.read_csv(figs / "throughput.csv")
    assert set(thr.arm) == set(E4.PROFILES["test"]["arms"]) and (thr.tokens_per_s > 0).all()
    assert not (tmp_path / "runs" / "runs").exists()                     # nothing trained
    cache = C.ResultLog(tmp_path / "runs" / "throughput.csv", ["device", "arm", "backend", "seq_len", "mode"])
    df = cache.frame()
    cache.add(df.assign(device="NVIDIA H200 (torch 2.11.0+cu130)", tokens_per_s=df.tokens_per_s * 10))
    assert E4.main(args) == 0
    thr = pd.read_csv(figs / "throughput.csv")
    assert thr.device.nunique() == 2 and thr.device.iloc[0].startswith("CPU")
    report = (figs / "report.md").read_text()
    assert "`NVIDIA H200 (torch 2.11.0+cu130)`" in report and "| device | arm |" in report


def test_e3_overfit_lines_name_the_passes_and_a_rising_validation_loss():
    from interp.tokenloss import seeds as S
    m = dict(arch="olmo3", seed=0, passes=2.0, train_tokens=1_600_000, steps=200, batch=32, seq_len=512,
             evals=[(100, 3.0, 3.2), (200, 2.0, 3.5)])
    tab = S.overfit_table([m, {**m, "seed": 1, "evals": [(100, 3.2, 3.4), (200, 2.2, 3.7)]}])
    assert tab[["step", "seeds"]].values.tolist() == [[100, 2], [200, 2]]
    assert tab.val_loss.tolist() == pytest.approx([3.3, 3.6]) and tab.gap.tolist() == pytest.approx([0.2, 1.5])
    line = S.overfit_lines([m], tab)[0]
    assert "2.00 passes over 1.600M training tokens" in line and "**rose** by 0.300 nats" in line and "step 100" in line
    flat = S.overfit_table([{**m, "evals": [(100, 3.0, 3.2), (200, 2.9, 3.1)]}])
    assert "did not rise" in S.overfit_lines([m], flat)[0]


def test_e3_trains_probe_models_with_seeds(e3, tmp_path):
    """``--probe-models train``: matched transformer / gdn75 / gdn100 on the probe tasks, a sweep on the first
    seed and the other seeds at the best rate; the probe verdicts are then over training seeds."""
    P = E3.PROFILES["test"]
    args = ["--tiny", "--runs", str(e3 / "runs"), "--out", str(tmp_path / "figs"), "--no-progress", "--device", "cpu",
            "--probe-models", "train"]
    assert E3.main(args) == 0                                # the text arms are reused from the fixture
    df = pd.read_parquet(tmp_path / "figs" / "probes.parquet")
    assert set(df.model) == {"transformer", "gdn75", "gdn100"} and set(df.seed) == set(P["seeds"])
    runs = sorted(p.name for p in (e3 / "runs" / "probe_models" / "runs").iterdir())
    n = 3 * (len(P["probe_train"]["lrs"]) + len(P["seeds"]) - 1)
    assert len(runs) == n and {r.split("_")[1] for r in runs} == {"s0", "s1"}
    report = (tmp_path / "figs" / "report.md").read_text()
    assert "Learning-rate sweep and seeds of the probe models" in report
    assert report.count(f"95% interval over {len(P['seeds'])} training seeds") == 4    # pronoun, entity, 2 x brackets
    assert "**not a test**" not in report
