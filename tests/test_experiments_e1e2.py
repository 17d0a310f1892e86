"""E1 / E2 experiments: the word_problems task's error taxonomy, the trainer's fixed knobs and
time-limit resume, and the experiments' --test runs end to end (tiny models, a few steps)."""
import json

import numpy as np
import pytest
import torch

from interp import tasks as T
from interp.tasks import word_problems as W
from interp.train import TrainConfig, train

# alice 7, bob = alice + 4 = 11, carol 5, (bob has 13 obj5: distractor), alice 10, bob gives 2 to carol
PROBLEM = ("<bos> alice has 7 obj3 ; bob has alice += 4 ; carol has 5 obj3 ; bob has 13 obj5 ; "
           "alice += 3 obj3 ; bob move 2 carol ; ? alice bob obj3").split()


def test_word_problem_facts_and_answer():
    stmts, query, E = W.parse(PROBLEM)
    assert E == 3 and query == [0, 1]
    assert W.simulate(stmts, E)[-1] == [10, 9, 7]
    assert W.answer(PROBLEM) == 19
    sets = W.error_sets(PROBLEM)
    assert sets["state_tracking"] == {18, 21}              # alice + bob before the last two updates
    assert sets["goal_interpretation"] == {10, 9, 7}        # the summands, and alice when bob was set from her
    assert sets["key_value_binding"] == {5, 7, 4, 3, 2}     # carol's counts and the problem's constants
    assert sets["context_synthesis"] == {13}
    assert sets["calculation"] == {17, 18, 20, 21}


@pytest.mark.parametrize("pred,kind", [(19, "correct"), ("19", "correct"), (18, "state_tracking"),
                                       (21, "state_tracking"), (10, "goal_interpretation"),
                                       (7, "goal_interpretation"), (5, "key_value_binding"),
                                       (4, "key_value_binding"), (13, "context_synthesis"), (20, "calculation"),
                                       (17, "calculation"), (40, "other"), ("obj3", "other"), (None, "other")])
def test_word_problem_classify(pred, kind):
    assert W.classify(PROBLEM, pred) == kind


@pytest.mark.parametrize("pred,types", [(19, ["correct"]), (7, ["goal_interpretation", "key_value_binding"]),
                                        (21, ["state_tracking", "calculation"]), (10, ["goal_interpretation"]),
                                        (13, ["context_synthesis"]), (40, ["other"]), ("obj3", ["other"])])
def test_word_problem_error_types_lists_every_fitting_type(pred, types):
    assert W.error_types(PROBLEM, pred) == types
    assert W.classify(PROBLEM, pred) == types[0]


def test_taxonomy_counts_ambiguous_answers_apart():
    from interp.taxonomy import taxonomy_rows, wrong_shares
    types = [["correct"], ["goal_interpretation", "key_value_binding"], ["key_value_binding"], ["other"],
             ["state_tracking", "calculation"]]
    tax = taxonomy_rows(types, len(types), arm="a", attn_pct=0).set_index("kind")
    assert tax["count"].sum() == 5 and tax.loc["goal_interpretation", "count"] == 1
    assert tax.loc["key_value_binding", ["count", "only", "any"]].tolist() == [1, 1, 2]
    assert tax.loc["goal_interpretation", ["only", "any"]].tolist() == [0, 1]
    sh = wrong_shares(tax.reset_index()).iloc[0]
    assert sh.accuracy == pytest.approx(0.2) and sh.ambiguous == pytest.approx(0.5)
    assert sh["key_value_binding alone"] == pytest.approx(0.5) and sh["other alone"] == pytest.approx(0.5)
    assert sh.key_value_binding == pytest.approx(0.25) and sh.state_tracking == pytest.approx(0.25)


def test_generated_word_problems_classify_consistently():
    b = T.generate("word_problems", 300, seed=3, n_steps=4, n_distractors=4)
    kinds = set()
    for i in range(b.n):
        words = b.words(i)
        ans = int(words[-1])
        assert W.answer(words[:-1]) == ans and W.classify(words[:-1], ans) == "correct"
        sets = W.error_sets(words[:-1])
        assert all(ans not in s for s in sets.values())
        others = set().union(*(s for k, s in sets.items() if k != "context_synthesis"))
        assert sets["context_synthesis"] and not sets["context_synthesis"] & others   # distractors unambiguous
        for k, s in sets.items():
            for v in s:
                got = W.classify(words[:-1], v)
                assert got == k or W.ERROR_TYPES.index(got) < W.ERROR_TYPES.index(k)
                kinds.add(got)
    assert kinds == set(W.ERROR_TYPES[:-1])


def _tiny(layout="gdn75"):
    return dict(d_model=16, n_layers=2, layout=layout, n_heads=2, head_dim=8)


def test_train_fixed_knobs_reach_every_batch(tmp_path, monkeypatch):
    seen = []
    real = T.generate

    def spy(task, n, seed=0, **kw):
        seen.append(kw)
        return real(task, n, seed=seed, **kw)
    monkeypatch.setattr(T, "generate", spy)
    cfg = TrainConfig(out=str(tmp_path / "r"), model=_tiny(), tasks=["state_recall"], steps=3, batch_size=4,
                      eval_every=3, eval_n=4, knobs={"state_recall": {"cot": True}}, device="cpu")
    train(cfg, progress=False)
    assert len(seen) == 4 and all(kw.get("cot") is True for kw in seen)   # 3 training batches + the eval


def test_train_grid_replaces_the_task_grid_in_training(tmp_path, monkeypatch):
    import numpy as np
    from interp import InterpError
    from interp.train import training_knobs
    draws = [training_knobs("state_recall", np.random.default_rng(s), grid={"n_steps": [48, 64]}) for s in range(200)]
    steps = {d["n_steps"] for d in draws if "n_steps" in d}
    assert steps == {48, 64} and any("n_vars" in d for d in draws)        # the other knobs keep their grids
    base = [training_knobs("state_recall", np.random.default_rng(s)) for s in range(50)]
    assert base == [training_knobs("state_recall", np.random.default_rng(s), grid={}) for s in range(50)]
    with pytest.raises(InterpError, match="grid state_recall: 'n_step' is not valid"):
        train(TrainConfig(out=str(tmp_path / "r"), model=_tiny(), tasks=["state_recall"], steps=3,
                          grid={"state_recall": {"n_step": [64]}}, device="cpu"), progress=False)
    with pytest.raises(InterpError, match="grid mqar"):
        train(TrainConfig(out=str(tmp_path / "r"), model=_tiny(), tasks=["state_recall"], steps=3,
                          grid={"mqar": {"n_pairs": [4]}}, device="cpu"), progress=False)


def test_train_time_limit_leaves_a_resumable_checkpoint(tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "r"), model=_tiny(), tasks=["mqar"], steps=5, batch_size=4, eval_every=100,
                      eval_n=4, device="cpu", time_limit=1e-9)
    train(cfg, progress=False)
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert meta["steps_done"] == 1
    assert torch.load(tmp_path / "r" / "checkpoint" / "trainer.pt", weights_only=True)["step"] == 1
    cfg.time_limit = 0.0
    train(cfg, progress=False)
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert meta["steps_done"] == 5
    steps = [json.loads(line)["step"] for line in (tmp_path / "r" / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 5]


def test_word_problem_errors_name_the_bad_value():
    with pytest.raises(T.TaskError, match="goal='sum' needs n_entities >= 2"):
        T.generate("word_problems", 2, n_entities=1, n_relations=0, goal="sum")
    with pytest.raises(T.TaskError, match="n_relations=3 is out of range; valid: integers 0..2"):
        T.generate("word_problems", 2, n_relations=3)
    with pytest.raises(T.TaskError, match="goal='all' is not valid; valid: one, sum, any"):
        T.generate("word_problems", 2, goal="all")
    assert np.isin(T.generate("word_problems", 8, seed=0).tokens.numpy(), np.arange(len(T.VOCAB))).all()


# --- the experiments -------------------------------------------------------------------------------

from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402

from interp import experiment as X  # noqa: E402

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"   # scripts, not an installed package
E1 = X.load_experiment(EXPERIMENTS / "e1_state_recall.py")
E2 = X.load_experiment(EXPERIMENTS / "e2_recall_gap.py")


class _Constant(torch.nn.Module):
    """Predicts one token everywhere and remembers its inputs."""

    def __init__(self, token):
        super().__init__()
        self.token, self.seen = token, []
        self.w = torch.nn.Parameter(torch.zeros(1))

    @property
    def device(self):
        return self.w.device

    def forward(self, tokens):
        self.seen.append(tokens.clone())
        out = torch.zeros(*tokens.shape, len(T.VOCAB))
        out[..., self.token] = 1.0
        return out


def test_e1_cot_is_evaluated_closed_loop():
    b = T.generate("state_recall", 16, seed=0, n_steps=6, cot=True)
    seven = T.VOCAB.id("7")
    m = _Constant(seven)
    acc, chain = E1.closed_loop(m, b)
    last = m.seen[-1]                                     # the final query reads the model's own values
    is_pos = (b.tokens[0] == T.VOCAB.id("is")).nonzero().flatten()
    assert (last[:, is_pos + 1] == seven).all() and not (b.tokens[:, is_pos + 1] == seven).all()
    assert acc == pytest.approx((b.answers[:, 0] == seven).float().mean().item())
    assert chain == pytest.approx((b.tokens[:, is_pos + 1] == seven).float().mean().item())


def test_e1_first_failure():
    res = pd.DataFrame(dict(arm="a", knob="n_steps", value=["2", "4", "8", "16"], accuracy=[1.0, 0.9, 0.5, 0.9]))
    assert E1.first_failure(res, "a", "n_steps", 0.8) == ("8", True)
    assert E1.first_failure(res, "a", "n_steps", 0.4) == ("16", False)
    assert E1.working_range(res.assign(arm="a"), "a", "n_steps", 0.8) == 2


def test_e1_end_to_end_and_resume(tmp_path):
    args = ["--tiny", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "figs"),
            "--no-progress", "--device", "cpu"]
    figs = tmp_path / "figs"
    assert E1.main(args + ["--train-only"]) == 0           # trains every run, evaluates nothing
    assert pd.read_csv(figs / "lr_sweep_status.csv").complete.all() and not (figs / "report.md").exists()
    assert E1.main(args) == 0
    for f in ["report.md", "accuracy.png", "multihop.png", "results.csv", "results_multihop.csv", "lr_sweep.csv",
              "probes.csv", "probes.png", "patching.csv"]:
        assert (figs / f).is_file(), f
    res = pd.read_csv(figs / "results.csv")
    assert set(res.arm) == {f"{a}-{t}" for a in E1.ARCHS for t in E1.TRAININGS}
    seeds = E1.PROFILES["test"]["seeds"]
    n_arms = len(E1.ARCHS) * len(E1.TRAININGS)
    assert len(res) == n_arms * len(seeds) * sum(len(v) for v in E1.PROFILES["test"]["grid"].values())
    assert sorted(res.seed.unique()) == sorted(seeds)
    assert res.accuracy.between(0, 1).all() and res[res.training == "cot"].chain_accuracy.notna().all()
    sweep = pd.read_csv(figs / "lr_sweep.csv")
    all_arms = len(E1.arms(E1.PROFILES["test"]))
    assert all_arms == n_arms + len(E1.ARCHS) * len(E1.MH_TRAININGS)
    assert sweep.complete.all() and len(sweep) == all_arms * (len(E1.PROFILES["test"]["lrs"]) + len(seeds) - 1)
    assert len(list(figs.glob("patch_*.png"))) == n_arms          # probes and patching: state_recall arms only
    mh = pd.read_csv(figs / "results_multihop.csv")
    assert set(mh.arm) == {f"{a}-{t}" for a in E1.ARCHS for t in E1.MH_TRAININGS} and set(mh.knob) == {"hops"}
    assert len(mh) == len(E1.ARCHS) * len(E1.MH_TRAININGS) * len(seeds) * len(E1.PROFILES["test"]["mh_grid"]["hops"])
    assert mh.accuracy.between(0, 1).all() and mh[mh.training == "mh_direct"].chain_accuracy.isna().all()
    assert mh[(mh.training == "mh_cot") & (mh.value > 1)].chain_accuracy.notna().all()   # hops 1: no marker
    report = (figs / "report.md").read_text()
    assert "accuracy vs hops" in report and report.count("transformer on flat multi-hop retrieval (paper v2)") == 2
    assert "## Comparison with the published shape" in report and "git commit:" in report
    assert "Verdict rule (fixed before the run)" in report and "arms not shown to converge" in report
    assert f"of {len(seeds)})" in report                   # each verdict says how many seeds show it
    before = (figs / "results.csv").read_text()
    assert E1.main(args) == 0                              # a second call trains nothing and reuses the evaluation
    assert (figs / "results.csv").read_text() == before


def test_e2_arms_match_the_design():
    A = E2.arms(E2.PROFILES["full"])
    main = [a for a, s in A.items() if s["group"] == "main"]
    assert len(main) == 13 and "transformer" in main and "mamba2100" in main
    place = {a: s for a, s in A.items() if s["group"] == "placement"}
    assert set(place) == {"gdn@0,6", "gdn@11"}
    assert A["gdn83"]["attn_pct"] == 17 and A["gla50"]["attn_pct"] == 50 and A["mamba2100"]["mixer"] == "mamba2"
    assert {a for a, s in A.items() if s["group"] == "width"} == {"transformer-d64", "transformer-d256",
                                                                  "gdn100-d64", "gdn100-d256"}
    ref = X.n_params(A["transformer"]["model"])
    for a in main:
        assert abs(X.n_params(A[a]["model"]) - ref) / ref < 0.01, a


def test_e2_sampling_and_voting():
    logits = torch.full((2, 10), -20.0)
    logits[0, 3] = 10.0                                   # one token holds ~all the mass
    logits[1, :4] = 0.0                                   # four equal tokens: all inside top-p 0.9
    s = E2.sample_answers(logits, 64, seed=1)
    assert (s[0] == 3).all() and set(s[1].tolist()) <= {0, 1, 2, 3} and len(set(s[1].tolist())) == 4
    assert torch.equal(s, E2.sample_answers(logits, 64, seed=1))
    assert E2.majority(torch.tensor([[3, 5, 5, 3], [1, 2, 2, 0]]), 10).tolist() == [3, 2]   # tie: sampled first
    samples = torch.tensor([[1, 2, 1, 1], [2, 2, 2, 1]])
    curve = {r["N"]: r for r in E2.vote_curve(samples, torch.tensor([1, 1]), ns=(1, 2, 4), n_vocab=5)}
    assert curve[1]["majority_acc"] == pytest.approx(4 / 8)
    assert curve[4]["majority_acc"] == 0.5 and curve[4]["pass_at_n"] == 1.0


def test_e2_judge_interface_with_a_fake_judge():
    text = E2.problem_text(PROBLEM)
    assert text.startswith("Alice has 7 obj3. Bob has 4 more obj3 than Alice. Carol has 5 obj3.")
    assert "Bob gives 2 obj3 to Carol." in text and text.endswith("do Alice and Bob have together now?")
    prompts = []

    def fake(prompt):
        prompts.append(prompt)
        return {0: " State tracking error.", 1: "binding? no: calculation", 2: "no idea"}[len(prompts) - 1]
    got = E2.judge_errors([(text, 19, 18), (text, 19, 20), (text, 19, 40)], fake)
    assert got == ["state_tracking", "calculation", "other"]
    assert len(E2.RUBRIC) == 8 and all(k in prompts[0] for k in E2.RUBRIC)
    assert "Correct answer: 19" in prompts[0] and "Student's answer: 18" in prompts[0] and text in prompts[0]
    with pytest.raises(E2.InterpError, match="is not a local Hugging Face model directory"):
        E2.hf_judge("/nonexistent/judge")


def test_e2_end_to_end(tmp_path):
    args = ["--tiny", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "figs"),
            "--no-progress", "--device", "cpu"]
    assert E2.main(args) == 0
    figs = tmp_path / "figs"
    for f in ["report.md", "attention.png", "sweeps.png", "votes.png", "placement.png", "taxonomy.png", "width.png",
              "results.csv", "votes.csv", "taxonomy.csv", "lr_sweep.csv"]:
        assert (figs / f).is_file(), f
    A = E2.arms(E2.PROFILES["test"])
    acc = pd.read_csv(figs / "results.csv")
    assert set(acc.arm) == set(A) and set(acc.task) == set(E2.TASKS)
    votes = pd.read_csv(figs / "votes.csv")
    assert set(votes.N) == set(E2.VOTE_NS) and votes.majority_acc.between(0, 1).all()
    assert (votes.pass_at_n >= votes.majority_acc - 1e-9).all()
    chain, single = votes[votes.kind == "chain"], votes[votes.kind == "single"]
    assert set(chain.task) == {E2.CHAIN_TASK} and set(single.task) == set(E2.VOTE_TASKS)
    assert len(chain) + len(single) == len(votes)
    assert chain.chain_acc.between(0, 1).all() and set(chain.arm) == set(A)
    tax = pd.read_csv(figs / "taxonomy.csv")
    assert set(tax.kind) == {"correct", *W.ERROR_TYPES}
    models, seeds = tax[tax.arm != "uniform guess"], E2.PROFILES["test"]["seeds"]
    assert np.allclose(models.groupby(["arm", "seed"])["count"].sum(), E2.PROFILES["test"]["tax_n"])
    assert set(models.seed) == set(acc.seed) == set(seeds)
    chance = tax[tax.arm == "uniform guess"].set_index("kind")["count"]
    assert chance["correct"] == 0 and chance["key_value_binding"] > 0 and chance["context_synthesis"] > 0
    sweep = pd.read_csv(figs / "lr_sweep.csv")
    assert sweep.complete.all() and set(sweep.lr) == set(E2.PROFILES["test"]["lrs"])
    assert len(sweep) == len(A) * (len(E2.PROFILES["test"]["lrs"]) + len(seeds) - 1)
    report = (figs / "report.md").read_text()
    assert "Best rate per unit" in report and f"of {len(seeds)})" in report
    assert "**Sampled chains of thought**" in report and "Chain-vote gain from N=1 to N=64" in report
    assert "* Majority voting over sampled reasoning helps" in report


def _votes(gain_of_attn, greedy=0.5, kind="chain"):
    """Voting curves of three main arms: accuracy greedy at N=1 rising linearly in log N by gain_of_attn(attn %)."""
    rows = []
    for arm, pct in (("transformer", 100), ("gdn50", 50), ("gdn100", 0)):
        for j, n in enumerate(E2.VOTE_NS):
            acc = greedy + gain_of_attn(pct) * j / (len(E2.VOTE_NS) - 1)
            rows.append(dict(arm=arm, attn_pct=pct, group="main", kind=kind, task=E2.CHAIN_TASK, N=n,
                             majority_acc=acc, pass_at_n=min(1, acc + 0.1), greedy_acc=greedy))
    return pd.DataFrame(rows)


def test_e2_vote_verdict_tests_chain_votes_with_seed_intervals():
    up = _votes(lambda p: 0.1 + p / 1000)                     # gains 0.1 .. 0.2, more with more attention
    gains = E2.vote_gains(up, ["arm"])
    assert np.allclose(gains.set_index("arm").gain, [0.2, 0.15, 0.1])
    line = E2.vote_verdicts(up)[0]
    assert "median +0.15" in line and "+1.00" in line and line.endswith("**agrees**.")
    wide = gains.assign(lo=[0.05, -0.1, -0.1], hi=0.3)        # two of three intervals reach below 0
    line = E2.vote_verdicts(up, wide)[0]
    assert "1 of 3 models gain" in line and "**weak / inconclusive**" in line
    assert E2.vote_verdicts(up, gains.assign(lo=0.01, hi=0.3))[0].endswith("**agrees**.")
    assert "**disagrees / not shown**" in E2.vote_verdicts(_votes(lambda p: -0.05))[0]
    assert "**inconclusive** (closed-loop greedy" in E2.vote_verdicts(_votes(lambda p: 0.05, greedy=0.05))[0]
    single = _votes(lambda p: 0.0, kind="single").assign(task="word_problems").drop(columns="kind")  # an older csv
    line = E2.vote_verdicts(single)[0]
    assert "no chain votes" in line and "**inconclusive**" in line and "gain median +0.00" in line
    both = E2.vote_verdicts(pd.concat([up, _votes(lambda p: 0.0, kind="single").assign(task="word_problems")]))[0]
    assert both.startswith("* Majority voting over sampled reasoning") and "**agrees**." in both
    assert "Single-answer votes" in both


def test_parallel_runs_respect_capacity_and_survive_a_failure(tmp_path):
    from interp.experiment import runs as S
    arms = {"ok": {"model": _tiny("gdn100")}, "bad": {"model": _tiny("transformer"), "tasks": ["nope"]}}
    runs = S.make_runs(tmp_path, arms, [1e-3, 3e-3], steps=2, batch_size=4, eval_every=2, eval_n=4, device="cpu")
    st = S.train_runs(runs, workers=2, weight=lambda r: 1.0, capacity=1.0, progress=False)
    assert st.set_index("run").loc[["ok_lr0.001", "ok_lr0.003"], "complete"].all()
    bad = st[st.arm == "bad"]
    assert not bad.complete.any() and bad.error.str.contains("unknown task 'nope'").all()
    assert "unknown task 'nope'" in (tmp_path / "runs" / "bad_lr0.001" / "train.out").read_text()


def test_runs_are_placed_on_the_least_busy_device_within_capacity():
    from interp.experiment import runs as S
    assert S.place({"cuda:0": [1.0], "cuda:1": []}, 1.0, None) == "cuda:1"
    assert S.place({"cuda:0": [1.0], "cuda:1": [2.0]}, 1.0, None) == "cuda:0"      # ties: first listed
    assert S.place({None: [5.0, 5.0]}, 1.0, None) is None                          # one device (None = as configured)
    assert S.place({"a": [50.0], "b": [50.0]}, 20.0, 60.0) is S._NOWHERE            # fits nowhere: waits
    assert S.place({"a": [50.0], "b": []}, 80.0, 60.0) == "b"                       # alone on a device: always starts
    assert S.place({"a": [10.0], "b": [10.0, 10.0]}, 40.0, 60.0) == "a"


def test_train_devices_are_checked():
    from interp import experiment as S
    assert S.train_devices(None, "cpu") is None
    from interp import InterpError
    spec = "cuda:0,cuda:99" if torch.cuda.is_available() else "cuda:99"
    with pytest.raises(InterpError, match=f"'{spec}': cuda:99 not available; valid: "):
        S.train_devices(spec, "cuda")


def test_e1_degradation_verdict_needs_models_that_learned():
    """On the committed full GPU run the direct transformer never learned state_recall (0.43 at 2 steps):
    'degrades more gracefully' is then inconclusive, not a disagreement; the cot pair still compares."""
    res = pd.read_csv(Path(__file__).resolve().parent.parent / "figures" / "e1_state_recall" / "results.csv")
    lines = [x for x in E1.shape_verdicts(res, 0.8) if "degrades more gracefully" in x]
    direct, cot = (next(x for x in lines if f"), {tr}:" in x) for tr in ("direct", "cot"))
    assert "**inconclusive** (transformer already below 0.8 at the easiest n_steps" in direct
    assert cot.endswith("**agrees**.")
    easy = res.copy()                       # the same numbers with a transformer that learned the easy end
    easy.loc[(easy.arm == "transformer-direct") & (easy.knob == "n_steps"), "accuracy"] = [1.0, 0.9, 0.8, 0.6, 0.4,
                                                                                            0.3, 0.2]
    direct = next(x for x in E1.shape_verdicts(easy, 0.8) if "), direct:" in x)
    assert direct.endswith("**agrees**.")


def test_e1_flat_vs_sequential_verdict():
    """The crossover rule: the hybrid more robust on state_recall (smaller drop over n_steps) and the transformer
    on multihop (smaller drop over hops) agrees; the hybrid ahead on both is no shift: disagrees; an arm that
    never learned the easy end makes it inconclusive."""
    def frame(task_knob, vals, **acc):
        return pd.DataFrame([dict(arm=a, knob=task_knob, value=str(v), accuracy=x, training=a.rsplit("-", 1)[1])
                             for a, xs in acc.items() for v, x in zip(vals, xs)])
    seq = frame("n_steps", [2, 8, 32, 64],
                **{"transformer-cot": [1.0, 0.9, 0.5, 0.3], "gdn75-cot": [1.0, 0.95, 0.9, 0.8]})
    flat = frame("hops", [1, 2, 3, 4],
                 **{"transformer-mh_cot": [1.0, 0.95, 0.9, 0.9], "gdn75-mh_cot": [1.0, 0.8, 0.5, 0.4]})
    line = E1.flat_verdicts(seq, flat, 0.8)
    assert len(line) == 1 and line[0].endswith("**agrees**.")
    assert "sequential +0.45, flat -0.45" in line[0] and "hops in 3, 4" in line[0]
    both = flat.assign(arm=flat.arm.map({"transformer-mh_cot": "gdn75-mh_cot", "gdn75-mh_cot": "transformer-mh_cot"}))
    assert E1.flat_verdicts(seq, both, 0.8)[0].endswith("**disagrees**.")
    weak = flat.copy()
    weak.loc[weak.arm == "gdn75-mh_cot", "accuracy"] = [0.5, 0.4, 0.3, 0.3]
    assert "**inconclusive** (gdn75-mh_cot below 0.8 at the easiest value" in E1.flat_verdicts(seq, weak, 0.8)[0]
    assert E1.flat_verdicts(seq, flat[flat.arm != "gdn75-mh_cot"], 0.8) == []        # an arm missing: no line


def test_e2_trend_verdict_needs_a_clear_trend():
    """On the committed full GPU run, recall at 32 pairs rises with attention only weakly (rank correlations
    0.2-0.4 over 4 layouts): that is 'weak / inconclusive', not agreement; a monotone rise agrees."""
    figs = Path(__file__).resolve().parent.parent / "figures" / "e2_recall_gap"
    acc = pd.read_csv(figs / "results.csv", dtype={"value": str})
    votes, taxc = pd.read_csv(figs / "votes.csv"), pd.read_csv(figs / "taxonomy.csv")
    tax, chance = taxc[taxc.group != "chance"], taxc[taxc.group == "chance"]
    recall = next(x for x in E2.shape_verdicts(acc, votes, tax, chance) if "better recall" in x)
    assert "**weak / inconclusive**" in recall
    mono = acc.copy()
    sel = (mono.group == "main") & (mono.task == "mqar") & (mono.value == "32") & (mono.mixer != "transformer")
    mono.loc[sel, "accuracy"] = mono.loc[sel, "attn_pct"] / 100 + 0.01
    recall = next(x for x in E2.shape_verdicts(mono, votes, tax, chance) if "better recall" in x)
    assert recall.endswith("**agrees**.")
    flat = acc.copy()                   # one mixer's accuracy constant: no rank correlation, said in words
    flat.loc[sel & (flat.mixer == "gdn"), "accuracy"] = 0.5
    recall = next(x for x in E2.shape_verdicts(flat, votes, tax, chance) if "better recall" in x)
    assert "gdn n/a (fewer than 2 layouts, or a constant accuracy)" in recall and "nan" not in recall


def test_steps_flag_trains_longer_in_its_own_runs_directory(tmp_path):
    """--steps replaces the profile's steps; the default runs directory gets a suffix, and a runs directory
    trained with other steps is refused instead of being resumed or reused."""
    from interp import experiment as S
    from interp import InterpError
    assert S.with_steps({"steps": 5, "lr": 1}, None, "_test") == ({"steps": 5, "lr": 1}, "_test")
    assert S.with_steps({"steps": 5, "lr": 1}, 40, "") == ({"steps": 40, "lr": 1}, "_steps40")
    with pytest.raises(InterpError, match="--steps 0"):
        S.with_steps({"steps": 5}, 0, "")
    args = ["--tiny", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "figs"), "--no-progress",
            "--device", "cpu", "--train-only"]
    assert E1.main(args + ["--steps", "4"]) == 0
    metas = [json.loads(p.read_text()) for p in (tmp_path / "runs" / "runs").glob("*/meta.json")]
    assert metas and all(m["steps_done"] == 4 and m["train_config"]["steps"] == 4 for m in metas)
    with pytest.raises(InterpError, match=r"figs' holds the outputs of another call \(steps: 4 -> 3\)"):
        E1.main(args + ["--steps", "3"])                       # its figures would mix
    args[args.index("--out") + 1] = str(tmp_path / "figs2")
    with pytest.raises(InterpError, match="with 4 steps, not test with 3"):
        E1.main(args + ["--steps", "3"])
    with pytest.raises(InterpError, match="with 4 steps"):
        E1.main(args)                                          # the profile's 3 steps: also another configuration


def test_stacked_jobs_group_only_runs_that_can_stack(tmp_path):
    from interp.experiment import runs as S
    arms = {"a": {"model": _tiny("gdn100")}, "b": {"model": _tiny("transformer")}}
    runs = S.make_runs(tmp_path, arms, [1e-3, 3e-3, 1e-2], steps=2, batch_size=4, eval_every=2, eval_n=4,
                       device="cpu")
    jobs = S.jobs_of(sorted(runs, key=lambda r: r.priority), 2)
    assert sorted(sorted(r.name for r in j) for j in jobs) == [
        ["a_lr0.001", "a_lr0.003"], ["a_lr0.01"], ["b_lr0.001", "b_lr0.003"], ["b_lr0.01"]]
    assert [len(j) for j in S.jobs_of(runs, 1)] == [1] * 6


def test_stacked_training_in_train_runs_equals_single_runs(tmp_path):
    from interp.experiment import runs as S
    from interp.train import read_log
    arms = {"a": {"model": _tiny("gdn100")}}
    kw = dict(steps=4, batch_size=4, eval_every=2, eval_n=8, device="cpu", seed=0)
    single = S.make_runs(tmp_path / "single", arms, [1e-3, 1e-2], **kw)
    stacked = S.make_runs(tmp_path / "stacked", arms, [1e-3, 1e-2], **kw)
    S.train_runs(single, progress=False)
    st = S.train_runs(stacked, progress=False, stack=2)
    assert st.complete.all() and st.trained_now.all()
    assert "stack of 2 runs" in (tmp_path / "stacked" / "runs" / "a_lr0.001" / "train.out").read_text()
    for r1, r2 in zip(single, stacked):
        l1, l2 = read_log(r1.out / "train_log.jsonl"), read_log(r2.out / "train_log.jsonl")
        assert [x["step"] for x in l1] == [x["step"] for x in l2]
        assert [x["loss"] for x in l2] == pytest.approx([x["loss"] for x in l1], rel=1e-4)


def test_e2_refuses_runs_of_the_three_task_mixture(tmp_path):
    """Runs trained before state_recall_cot joined the mixture are not reused for the four-task design."""
    X.check_spec(tmp_path / "runs", {"profile": "test", "steps": E2.PROFILES["test"]["steps"]}, kind=E2.NAME)
    args = ["--tiny", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "figs"), "--no-progress",
            "--device", "cpu"]
    with pytest.raises(E2.InterpError, match="another configuration .*tasks"):
        E2.main(args)
