"""Probes: torch backend vs scikit-learn on the same data, sites (head outputs, state read-outs),
distance / load / seeds, controls, errors, CLI (#19's checks: tests/test_probes_checked.py)."""
import numpy as np
import pandas as pd
import pytest
import torch

import hooks
from interp import InterpError, probes
from interp import tasks as T
from interp.cli import main
from interp.zoo import HybridLM, ZooConfig


def model(layout="gdn75", seed=0):
    torch.manual_seed(seed)
    return HybridLM(ZooConfig(vocab_size=len(T.VOCAB), d_model=32, n_layers=4, layout=layout, n_heads=2,
                              head_dim=16)).eval()


@pytest.fixture(scope="module")
def sr_feats():
    sites = ["resid_post", "rec.state@key", "rec.state@query", "rec.readout", "attn.head_out.per_head",
             "attn.head_out"]
    return probes.collect(model(), "state_recall", "var_value[0]", sites, n=160)


def test_torch_backend_agrees_with_sklearn(sr_feats):
    """Same features, same split, same L2 strength: test accuracies (task and control) within 1
    point on ~1,300 test points per probe, for every site kind."""
    feats, pts = sr_feats
    a = probes.probe(feats, pts, backend="torch")
    b = probes.probe(feats, pts, backend="sklearn")
    assert len(a) == len(b) and a[0]["n"] > 1200
    assert {r["site"] for r in a} == {"resid_post", "rec.state@key", "rec.state@query", "rec.readout",
                                     "attn.head_out.h0", "attn.head_out.h1", "attn.head_out"}
    for ra, rb in zip(a, b):
        assert (ra["layer"], ra["site"], ra["distance"]) == (rb["layer"], rb["site"], rb["distance"])
        if ra["distance"] is None:
            assert abs(ra["accuracy"] - rb["accuracy"]) <= 0.01, (ra, rb)
            assert abs(ra["control"] - rb["control"]) <= 0.01, (ra, rb)


def test_fit_torch_converges_to_sklearn_optimum():
    """An ill-conditioned problem (correlated features, weak regularisation): the preconditioned
    batched solver converges (every problem) and predicts like sklearn; unpreconditioned L-BFGS
    with the same budget does not converge."""
    g = torch.Generator().manual_seed(0)
    N, D, K = 3000, 40, 6
    y = torch.randint(0, K, (N,), generator=g)
    base = torch.randn(N, 4, generator=g) + torch.nn.functional.one_hot(y % 4, 4).float()
    X = base @ torch.randn(4, D, generator=g) + 0.05 * torch.randn(N, D, generator=g)  # near rank 4
    X = torch.stack([X, X + 0.3 * torch.randn(N, D, generator=g)])
    Xtr, Xte = probes._standardize(X[:, :2400], X[:, 2400:])
    ytr, yc = y[:2400], torch.randint(0, K, (2400,), generator=g)
    st, st0 = {}, {}
    pt = probes.fit_torch(Xtr, [ytr, yc], Xte, K, max_iter=60, stats=st)
    probes.fit_torch(Xtr, [ytr, yc], Xte, K, max_iter=60, whiten=False, stats=st0)
    ps = probes.fit_sklearn(Xtr, [ytr, yc], Xte, K, tol=1e-6, max_iter=5000)
    assert pt.shape == ps.shape == (2, 2, 600)
    assert st["converged"] == st["problems"] == 4 and st0["converged"] < 4
    assert (pt == ps).float().mean() > 0.99


def test_probe_decodes_a_planted_feature():
    """A feature that is a linear code of the label is decoded perfectly; noise is not; per-distance
    rows split the test points."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (600,))
    ex = torch.arange(600) // 6
    tok = torch.randint(0, 50, (600,))
    dist = torch.arange(600) % 3
    pts = probes.Points(ex, torch.zeros(600, dtype=torch.long), y, dist, dist, tok)
    planted = torch.nn.functional.one_hot(y, 5).float() + 0.01 * torch.randn(600, 5, generator=g)
    noise = torch.randn(600, 5, generator=g)
    rows = probes.probe({(0, "planted"): planted, (0, "noise"): noise}, pts)
    pooled = {r["site"]: r for r in rows if r["distance"] is None}
    assert pooled["planted"]["accuracy"] == 1.0
    assert pooled["noise"]["accuracy"] < 0.45
    per_d = [r for r in rows if r["site"] == "planted" and r["distance"] is not None]
    assert [r["distance"] for r in per_d] == [0, 1, 2]
    assert sum(r["n"] for r in per_d) == pooled["planted"]["n"]


def test_sites_read_out_the_state_with_key_and_query():
    """rec.state@key / @query recomputed by hand from rec.state, rec.k, rec.q at the write / probed
    position; attn.head_out is the concatenation of the per-head probes' features."""
    m = model()
    b = T.generate("mqar", 6, seed=1, n_pairs=4)
    feats, pts = probes.collect(m, "mqar", "bound_value", ["rec.state@key", "rec.state@query", "attn.head_out",
                                                           "attn.head_out.per_head"], batch=b)
    _, c = hooks.wrap(m).run_with_cache(b.tokens, names=["blocks.1.rec.state", "blocks.1.rec.k", "blocks.1.rec.q"])
    S, k, q = c["blocks.1.rec.state"], c["blocks.1.rec.k"], c["blocks.1.rec.q"]
    j = 5
    e, p, w = int(pts.ex[j]), int(pts.pos[j]), int(pts.write[j])
    assert b.words(e)[w - 1] == b.words(e)[p]                  # written at the value after the key
    assert int(pts.distance[j]) == p - w + 1
    want = torch.einsum("hkv,hk->hv", S[e, p], k[e, w]).flatten()
    assert torch.allclose(feats[(1, "rec.state@key")][j], want, atol=1e-5)
    want = torch.einsum("hkv,hk->hv", S[e, p], q[e, p]).flatten()
    assert torch.allclose(feats[(1, "rec.state@query")][j], want, atol=1e-5)
    assert torch.equal(feats[(3, "attn.head_out")][:, :16], feats[(3, "attn.head_out.h0")])
    assert (0, "attn.head_out") not in feats and (3, "rec.state@key") not in feats


def test_state_recall_distance_and_write_positions():
    """distance equals the task's steps_since_write for the queried variable; for var_value[j]
    the write position is the ';' of the last statement that assigned xj."""
    b = T.generate("state_recall", 32, seed=3, n_steps=10, complexity="swap")
    pts = probes.points(b, "query_var_value")
    m = b.labels["query_var_value"] >= 0
    assert torch.equal(pts.distance, b.labels["steps_since_write"][m])
    pts = probes.points(b, "var_value[1]")
    for j in range(0, len(pts), 37):
        w = b.words(int(pts.ex[j]))
        wp, p = int(pts.write[j]), int(pts.pos[j])
        assert w[wp] == ";" and wp <= p
        stmt = w[wp - 3:wp]
        assert "x1" in stmt and (stmt[0] == "swap" or stmt[0] == "x1")
        later = [w[s:s + 3] for s in range(wp + 1, p - 2, 4) if w[s + 3] == ";" and s + 3 <= p]
        assert not any(s[0] == "x1" or (s[0] == "swap" and "x1" in s) for s in later)


def test_run_seeds_sweep_distance_and_save(tmp_path):
    opts = dict(controls=("shuffled",), causal=None)   # the other controls and the causal check: test_probes_checked
    res = probes.run({"a": model(), "t": model("transformer")}, "mqar", "bound_value",
                     sites=["resid_post", "rec.state@key"], n=48, seeds=[0, 1], sweep={"n_pairs": [2, 6]},
                     out=tmp_path, progress=False, n_values=8, **opts)
    need = {"model", "layer", "site", "target", "distance", "accuracy", "control", "selectivity", "n", "load",
            "acc_lo", "acc_hi", "majority", "surface"}
    assert need <= set(res.columns)
    assert set(res["load"]) == {2, 6} and res.attrs["load_knob"] == "n_pairs"
    assert set(res[res.model == "t"]["site"]) == {"resid_post"}          # rec.* missing there, skipped
    pooled = res.pooled()
    assert (pooled["seeds"] == 2).all()
    assert ((pooled["acc_lo"] <= pooled["accuracy"]) & (pooled["accuracy"] <= pooled["acc_hi"])).all()
    assert res["distance"].notna().any() and (res["distance"].dropna() > 0).all()
    # per-distance test counts add up to the pooled count
    one = res[res["control_kind"] == "shuffled"]
    g = one[one["distance"].notna()].groupby(["model", "load", "layer", "site"])["n"].sum()
    p = one.pooled().set_index(["model", "load", "layer", "site"])["n"]
    assert (g == p.loc[g.index]).all()
    csv, pq = res.save(tmp_path)
    assert len(pd.read_csv(csv)) == len(res) == len(pd.read_parquet(pq))
    for f, kw in (("plot", {}), ("plot_distance", dict(min_n=1)), ("plot_distance", dict(bin_width=4)),
                  ("plot_load", {})):
        getattr(res, f)(tmp_path / f"{f}.png", **kw)
        assert (tmp_path / f"{f}.png").stat().st_size > 1000
    # resumable: a second run reads the units back instead of recomputing
    units = sorted((tmp_path / "units").glob("probe*.parquet"))
    assert len(units) == 2 * 2 * 2
    stamp = [u.stat().st_mtime_ns for u in units]
    again = probes.run({"a": model(), "t": model("transformer")}, "mqar", "bound_value",
                       sites=["resid_post", "rec.state@key"], n=48, seeds=[0, 1], sweep={"n_pairs": [2, 6]},
                       out=tmp_path, progress=False, n_values=8, **opts)
    assert [u.stat().st_mtime_ns for u in units] == stamp
    pd.testing.assert_frame_equal(pd.DataFrame(again), pd.DataFrame(res))


def test_seeds_change_data_and_ci():
    per = probes.run({"a": model()}, "state_recall", "var_value[0]", n=24, seeds=[0, 1, 2], keep_seeds=True,
                     progress=False, controls=("shuffled",), causal=None)
    acc = per[per.distance.isna() & (per.layer == 3) & (per.answered == "all")].set_index("seed")["accuracy"]
    assert acc.nunique() > 1
    agg = probes.aggregate(per)
    row = agg[agg.distance.isna() & (agg.layer == 3) & (agg.answered == "all")].iloc[0]
    half = 4.302653 * acc.std(ddof=1) / np.sqrt(3)          # t(0.975, 2)
    assert row["accuracy"] == pytest.approx(acc.mean())
    assert row["acc_hi"] - row["accuracy"] == pytest.approx(half)


@pytest.mark.parametrize("kw,msg", [
    (dict(task="mqar", target="var_value[0]"), "target 'var_value[0]' is not produced by task 'mqar'; valid targets: bound_value"),
    (dict(task="state_recall", target="var_value"), "needs a column index"),
    (dict(task="state_recall", target="var_value[0]", sites=["rec.state"], layout="transformer"), "site 'rec.state' is not present"),
    (dict(task="state_recall", target="var_value[0]", sites=["rec.state@key"], layout="transformer"), "no layer has a recurrent mixer"),
    (dict(task="state_recall", target="var_value[0]", sites=["attn.head_out"], layout="gdn100"), "no layer has attention"),
    (dict(task="state_recall", target="var_value[0]", sites=["resid"]), "unknown probe site 'resid'"),
    (dict(task="permutation", target="running_product", sites=["rec.state@key"]), "needs the write position"),
])
def test_errors(kw, msg):
    layout = kw.pop("layout", "gdn75")
    with pytest.raises(InterpError) as e:
        probes.collect(model(layout), n=8, **kw)
    assert msg in str(e.value)


def test_run_errors():
    m = {"a": model()}
    with pytest.raises(InterpError, match="too few examples per class"):
        probes.run(m, "mqar", "bound_value", n=12, progress=False)
    with pytest.raises(InterpError, match="n=2 examples is too few"):
        probes.run(m, "mqar", "bound_value", n=2, progress=False)
    with pytest.raises(InterpError, match="unknown knob 'n_pair' for task 'mqar'"):
        probes.run(m, "mqar", "bound_value", sweep={"n_pair": [2]}, progress=False)
    with pytest.raises(InterpError, match="sweep takes one knob"):
        probes.run(m, "mqar", "bound_value", sweep={"n_pairs": [2], "n_keys": [8]}, progress=False)
    with pytest.raises(InterpError, match="unknown probe backend 'jax'"):
        probes.run(m, "mqar", "bound_value", n=8, backend="jax", progress=False)
    with pytest.raises(InterpError, match="not present in any of the models"):
        probes.run({"t": model("transformer")}, "mqar", "bound_value", sites=["rec.state@query"], progress=False)
    with pytest.raises(InterpError, match=r"models must be a dict \{name: model\}, got HybridLM"):
        probes.run(m["a"], "mqar", "bound_value", progress=False)
    with pytest.raises(InterpError, match="'rec.state@query' is not present in any"):   # one site by its name
        probes.run({"t": model("transformer")}, "mqar", "bound_value", sites="rec.state@query", progress=False)


def test_cli_probe(tmp_path, capsys):
    assert main(["probe", "--model", "gdn100", "--task", "mqar", "--target", "bound_value", "--n", "48",
                 "--seeds", "0,1", "--sweep", "n_pairs=2,4", "--knob", "n_values=8", "--site", "resid_post",
                 "--controls", "shuffled", "--causal", "none", "--out", str(tmp_path)]) == 0
    assert len(list((tmp_path / "units").glob("probe*.parquet"))) == 4     # 2 seeds x 2 loads
    for f in ("probes.csv", "probes.parquet", "probes.png", "distance.png", "load.png"):
        assert (tmp_path / f).is_file(), f
    df = pd.read_parquet(tmp_path / "probes.parquet")
    assert set(df["model"]) == {"gdn100"} and set(df["load"]) == {2, 4}
    assert main(["probe", "--model", "transformer", "--site", "rec.state", "--n", "10", "--out", str(tmp_path)]) == 2
    assert "not present in" in capsys.readouterr().err
    assert main(["probe", "--model", "gdn100", "--sweep", "n_steps", "--out", str(tmp_path)]) == 2
    assert "KNOB=V1,V2" in capsys.readouterr().err
