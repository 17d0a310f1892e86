"""Probes that are checked (#19) and stored safely (#18): train/val/test split by example, layer chosen on
val, controls that work with few token types (shuffled within token strata, untrained model; Hewitt-Liang
flagged), results split by whether the model answered, the causal check (probe subspace vs random), the
probe folder (spec, kill-and-resume bit for bit, old layout, --overwrite) and bad input on the CLI."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from interp import InterpError, probes
from interp import tasks as T
from interp.cli import main
from interp.interventions import interchange, probe_basis
from interp.probes.plots import _gapped
from interp.zoo import HybridLM, ZooConfig, save_model

ROOT = Path(__file__).resolve().parents[1]


def tiny(layout="gdn100", layers=2, seed=0):
    torch.manual_seed(seed)
    return HybridLM(ZooConfig(vocab_size=len(T.VOCAB), d_model=16, n_layers=layers, layout=layout, n_heads=2,
                              head_dim=8)).eval()


# --- protocol ---------------------------------------------------------------------------------------
def test_split_is_by_example_60_20_20_and_seeded():
    ex = torch.arange(50).repeat_interleave(7)
    role = probes.assign(ex, seed=3)
    per_ex = role.view(50, 7)
    assert (per_ex == per_ex[:, :1]).all()                       # every point of an example in one split
    assert torch.bincount(per_ex[:, 0], minlength=3).tolist() == [30, 10, 10]
    assert torch.equal(role, probes.assign(ex, seed=3)) and not torch.equal(role, probes.assign(ex, seed=4))
    with pytest.raises(InterpError, match="three positive fractions"):
        probes.assign(ex, split=(0.5, 0.5, 0.5))


def few_token_points(n_ex=120, per=8, seed=0):
    """A few-token task: 4 token ids, 5 classes that do not depend on the token; a feature that holds
    only the token id (one-hot) and one that holds the token id and the label (as a residual stream
    holds the current token)."""
    g = torch.Generator().manual_seed(seed)
    N = n_ex * per
    tok = torch.randint(0, 4, (N,), generator=g)
    y = torch.randint(0, 5, (N,), generator=g)
    ex = torch.arange(n_ex).repeat_interleave(per)
    pts = probes.Points(ex, torch.zeros(N, dtype=torch.long), y, torch.full((N,), -1), torch.full((N,), -1), tok)
    token_only = torch.nn.functional.one_hot(tok, 4).float() + 0.01 * torch.randn(N, 4, generator=g)
    both = torch.cat([token_only, torch.nn.functional.one_hot(y, 5).float()], 1) + 0.01 * torch.randn(N, 9, generator=g)
    return pts, {(0, "token_only"): token_only, (0, "label"): both}


def test_controls_on_few_token_types():
    """Hewitt-Liang is ~1 wherever the token id is readable (flagged uninformative): its selectivity
    is ~0 for the feature that holds the label too. The shuffled-within-strata control stays near
    the surface baseline: selectivity against it is ~0 for the token-only feature and large for the
    feature that holds the label."""
    pts, feats = few_token_points()
    rows = probes.probe(feats, pts, controls=("shuffled", "hewitt_liang"))
    r = {(x["site"], x["control_kind"]): x for x in rows if x["distance"] is None and x["answered"] == "all"}
    hl, sh = r[("token_only", "hewitt_liang")], r[("token_only", "shuffled")]
    assert hl["control"] > 0.95 and hl["uninformative"]
    assert sh["control"] < 0.45 and not sh["uninformative"]
    assert abs(sh["selectivity"]) < 0.15
    assert r[("label", "shuffled")]["accuracy"] == 1.0 and r[("label", "shuffled")]["selectivity"] > 0.5
    assert r[("label", "hewitt_liang")]["uninformative"] and r[("label", "hewitt_liang")]["selectivity"] < 0.05


def test_shuffled_keeps_each_token_label_distribution():
    pts, _ = few_token_points()
    ys = probes.shuffled(pts.y, pts.token, seed=1)
    assert not torch.equal(ys, pts.y)
    for t in range(4):
        m = pts.token == t
        assert sorted(ys[m].tolist()) == sorted(pts.y[m].tolist())
    assert torch.equal(ys, probes.shuffled(pts.y, pts.token, seed=1))


def test_answered_split_and_untrained_rows():
    """With ``correct`` known: pooled rows for correct / wrong examples whose test points add up to
    all; an untrained feature dict gives the 'untrained' control on the same test points."""
    pts, feats = few_token_points()
    pts.correct = pts.ex % 3 == 0
    rows = probes.probe(feats, pts, controls=("shuffled", "untrained"), untrained={k: torch.randn_like(v)
                                                                                    for k, v in feats.items()})
    pooled = [x for x in rows if x["distance"] is None and x["site"] == "label" and x["control_kind"] == "untrained"]
    by = {x["answered"]: x for x in pooled}
    assert set(by) == {"all", "correct", "wrong"}
    assert by["correct"]["n"] + by["wrong"]["n"] == by["all"]["n"]
    assert by["all"]["control"] < 0.4 and by["all"]["selectivity"] > 0.6


def test_best_layer_is_chosen_on_val_and_reported_on_test():
    rows = []
    for layer, val, test in ((0, 0.9, 0.5), (1, 0.6, 0.95)):
        for seed in (0, 1):
            rows.append(dict(model="m", load=pd.NA, layer=layer, site="resid_post", target="t", answered="all",
                             control_kind="shuffled", distance=pd.NA, accuracy=test, val_accuracy=val, control=0.1,
                             selectivity=test - 0.1, majority=0.1, surface=0.2, n=10, n_val=10, n_train=30, seed=seed))
    res = probes.aggregate(pd.DataFrame(rows))
    best = res.best_layers()
    assert best[["layer", "accuracy", "val_accuracy"]].values.tolist() == [[0, 0.5, 0.9]]
    assert res.best_layers(by="accuracy")["layer"].tolist() == [1]


def test_plot_lines_break_at_layers_without_the_site():
    g = pd.DataFrame({"layer": [3, 7, 11], "accuracy": [0.1, 0.2, 0.3]})
    h = _gapped(g)
    assert list(h.index) == list(range(3, 12)) and h["accuracy"].isna().sum() == 6


# --- fitting and the causal check ---------------------------------------------------------------------
@pytest.mark.parametrize("backend,whiten", [("torch", True), ("torch", False), ("sklearn", None)])
def test_fitted_weights_reproduce_the_predictions(backend, whiten):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (400,), generator=g)
    X = torch.randn(400, 6, generator=g) + torch.nn.functional.one_hot(y, 4).float() @ torch.randn(4, 6, generator=g)
    Xtr, Xte = probes._standardize(X[:300], X[300:])
    kw = {} if whiten is None else {"whiten": whiten}
    pred, W, b = probes.BACKENDS[backend](Xtr[None], [y[:300]], Xte[None], 4, return_weights=True, **kw)
    again = (Xte @ W[0, 0].T + b[0, 0]).argmax(-1)
    assert (again == pred[0, 0]).float().mean() > 0.99


def test_probe_subspace_interchange_carries_the_probe_reading():
    """Interchanging the probe's subspace (class directions in raw coordinates, centred) makes the
    probe read the source's class on the base activation: logit differences equal the source's."""
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 5, (500,), generator=g)
    X = 3 * torch.randn(500, 12, generator=g) + torch.nn.functional.one_hot(y, 5).float() @ torch.randn(5, 12, generator=g)
    mu, sd = X.mean(0), X.std(0)
    W = probes.fit_weights((X - mu) / sd, y, 5)
    R = probe_basis(W, scale=sd)
    assert R.shape == (4, 12)
    xb, xs = X[:50], X[50:100]
    x = interchange(xb, xs, R)
    logit = lambda v: ((v - mu) / sd) @ W.T
    d, ds = logit(x) - logit(x)[:, :1], logit(xs) - logit(xs)[:, :1]
    torch.testing.assert_close(d, ds, atol=1e-3, rtol=1e-3)


@pytest.fixture(scope="module")
def gdn100():
    from interp.demo import load_defaults
    return load_defaults(["gdn100"])["gdn100"]


def test_causal_check_on_the_shipped_gdn100(gdn100):
    """mqar bound value (8 values): patching the whole last-layer residual at the answer position
    switches every kept answer (iia_full = 1); the probe's subspace there (rank 7) switches most, a
    random one of the same rank few. Pairs: test examples, labels differ, the answer is the label's
    number."""
    b = T.generate("mqar", 64, seed=0, n_values=8)
    ap, ans, y, keep = probes.answer_labels(b, "bound_value")
    assert keep.all() and (ans == torch.as_tensor(T.VOCAB.encode([str(v) for v in y.tolist()]))).all()
    rows = probes.causal_check(gdn100, "mqar", "bound_value", [(11, "resid_post")], ["resid_post"], 48, 0,
                               probes.SPLIT, "torch", 1.0, {"n_values": 8}, max_pairs=32)
    r = rows[0]
    assert r["n_pairs"] == 32 and r["n_iia"] > 10 and r["causal_site"] == "blocks.11.resid_post@answer"
    assert r["iia_full"] == 1.0 and r["rank"] == 7
    assert r["iia"] > 0.5 and r["iia"] > r["iia_random"] + 0.3


def test_points_know_whether_the_model_answered(gdn100):
    """Points.correct: the model's argmax at every answer position of the point's example is the answer
    (checked against a plain forward; mqar has several answers per example)."""
    b = T.generate("mqar", 12, seed=5)
    _, pts = probes.collect(gdn100, "mqar", "bound_value", ["resid_post"], batch=b, layers=[0], batch_size=5)
    with torch.no_grad():
        pred = gdn100(b.tokens).argmax(-1)
    ok = ((pred.gather(1, b.answer_pos.clamp(min=0)) == b.answers) | (b.answer_pos < 0)).all(1)
    assert ok.any() and torch.equal(pts.correct, ok[pts.ex])


def test_state_recall_pairs_query_the_probed_variable():
    b = T.generate("state_recall", 48, seed=2)
    ap, ans, y, keep = probes.answer_labels(b, "var_value[1]")
    assert keep.any() and (~keep).any()
    for i in torch.nonzero(keep).flatten().tolist():
        w = b.words(i)
        assert w[int(ap[i])] == "x1" and w[int(ap[i]) + 1] == str(int(y[i]))
    with pytest.raises(InterpError, match="causal check needs a target"):
        probes.answer_labels(T.generate("permutation", 4, seed=0), "running_product")


def test_untrained_copy_is_the_same_architecture_fresh_and_seeded():
    m = tiny()
    rng = torch.get_rng_state()
    u, u2, u3 = probes.untrained_copy(m, 0), probes.untrained_copy(m, 0), probes.untrained_copy(m, 1)
    assert torch.equal(rng, torch.get_rng_state())                       # the global RNG is left alone
    assert type(u) is type(m) and u.config == m.config and not u.training
    sd, su = m.state_dict(), u.state_dict()
    assert sd.keys() == su.keys() and all(sd[k].shape == su[k].shape for k in sd)
    assert torch.equal(su["embed.weight"], u2.state_dict()["embed.weight"])
    assert not torch.equal(su["embed.weight"], u3.state_dict()["embed.weight"])
    with pytest.raises(InterpError, match="untrained control"):
        probes.untrained_copy(torch.nn.Linear(2, 2), 0)


# --- the probe folder (#18) ---------------------------------------------------------------------------
RUN = ("import sys, torch\ntorch.set_num_threads(1)\nfrom interp import probes\nfrom interp.zoo import load_model\n"
       "probes.run({'a': load_model(sys.argv[1])}, 'state_recall', 'var_value[0]', sites=['resid_post'], n=20, "
       "seeds=[0, 1], progress=False, out=sys.argv[2], save=True)\n")


def run_probe(model_dir, out, env=None):
    return subprocess.run([sys.executable, "-c", RUN, str(model_dir), str(out)], capture_output=True, text=True,
                          env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}, timeout=600, cwd=ROOT)


def files(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(Path(d).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("probe_ref")
    save_model(tiny(), tmp / "model")
    r = run_probe(tmp / "model", tmp / "ref")
    assert r.returncode == 0, r.stderr[-2000:]
    got = files(tmp / "ref")
    assert {"spec.json", "probes.csv", "probes.parquet", "probes.png", "distance.png"} <= got.keys()
    assert sum(k.startswith("units/probe") for k in got) == 2 and sum(k.startswith("units/causal") for k in got) == 2
    return tmp, got


@pytest.mark.parametrize("kill", ["write:probe%2F*:2", "after:causal*:1", "replace:probes.png:1"])
def test_killed_probe_run_resumes_bit_for_bit(ref, kill):
    """SIGKILL inside a unit write, after a causal unit, before a figure is renamed into place: the
    rerun resumes and its folder equals an uninterrupted run's byte for byte."""
    tmp, want = ref
    out = tmp / kill.replace(":", "_").replace("*", "")
    r = run_probe(tmp / "model", out, env={"INTERP_STORE_KILL": kill})
    assert r.returncode == -9, r.stderr[-2000:]
    assert (out / ".lock").is_file()                                      # left by the killed writer
    r = run_probe(tmp / "model", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert files(out) == want


def test_probe_folder_spec_overwrite_and_old_layout(tmp_path):
    m = {"a": tiny()}
    kw = dict(sites=["resid_post"], n=12, progress=False, controls=("shuffled",), causal=None)
    probes.run(m, "state_recall", "var_value[0]", out=tmp_path / "a", **kw)
    spec = json.loads((tmp_path / "a" / "spec.json").read_text())
    assert spec["kind"] == "probe" and spec["spec"]["split"] == {"train": 0.6, "val": 0.2, "test": 0.2}
    assert set(spec["spec"]["models"]) == {"a"} and spec["spec"]["controls"] == ["shuffled"]
    with pytest.raises(InterpError, match=r"other settings: C: 1\.0 -> 2\.0.*--overwrite"):
        probes.run(m, "state_recall", "var_value[0]", out=tmp_path / "a", C=2.0, **kw)
    probes.run(m, "state_recall", "var_value[0]", out=tmp_path / "a", C=2.0, overwrite=True, **kw)
    assert json.loads((tmp_path / "a" / "spec.json").read_text())["spec"]["C"] == 2.0
    old = tmp_path / "old" / ".units" / "0123abcd"
    old.mkdir(parents=True)
    (old / "a__None__0.parquet").write_bytes(b"PAR1 cut short")
    with pytest.raises(InterpError, match=r"old layout.*--overwrite"):
        probes.run(m, "state_recall", "var_value[0]", out=tmp_path / "old", **kw)
    probes.run(m, "state_recall", "var_value[0]", out=tmp_path / "old", overwrite=True, **kw)
    assert not (tmp_path / "old" / ".units").exists() and (tmp_path / "old" / "units").is_dir()


# --- command line -------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,msg", [
    (["--C", "-1"], "C=-1.0 is not valid"),
    (["--C", "nan"], "C=nan is not valid"),
    (["--n", "2"], "n=2 examples is too few"),
    (["--target", "var_value[99]"], "column 99 is out of range; 'var_value' has columns 0..2"),
    (["--controls", "shuffled,foo"], "unknown probe control 'foo'"),
    (["--split", "0.8,0.2,0"], "three positive fractions"),
    (["--units", "runs/probe_units"], "--units is no longer used"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, args, msg):
    assert main(["probe", "--model", "gdn100", "--out", str(tmp_path)] + args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and msg in err and len(err.splitlines()) == 1


def test_cli_defaults_per_device():
    from interp.cli import build_parser
    from interp.probes.cli import _settings
    from interp.cli.options import kv
    a = build_parser().parse_args(["probe"])
    assert a.out == "runs/probe" and a.n is None and a.controls == "shuffled,untrained" and a.causal == "best"
    a.site = ["resid_post"]
    assert _settings(a, kv)["n"] == 256 and _settings(a, kv)["causal_pairs"] == 256
    a.device = "cuda"
    assert _settings(a, kv)["n"] == 2048 and _settings(a, kv)["causal_pairs"] == 1024


def test_models_that_share_a_folder_name_keep_both():
    """Two stacks' seed0 folders were both labelled 'seed0': one model silently vanished from the results."""
    from interp.probes.cli import model_labels
    assert model_labels(["gdn100", "runs/a/seed0", "runs/b/seed0/"]) == ["gdn100", "runs/a/seed0", "runs/b/seed0"]
    assert model_labels(["runs/a/seed0", "runs/b/seed1"]) == ["seed0", "seed1"]
    with pytest.raises(InterpError, match="--model runs/a/seed0 is given twice; valid: each model once"):
        model_labels(["runs/a/seed0", "runs/a/seed0/"])
