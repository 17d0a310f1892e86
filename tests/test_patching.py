"""Activation patching: identities, state patching through the recurrence, batching/skip-prefix
invariance, resume, TransformerLens agreement, attribution, HF models, CLI and errors."""
import dataclasses
import importlib.util

import numpy as np
import pandas as pd
import pytest
import torch

import hooks
from interp import InterpError, patching
from interp import tasks as T
from interp.tasks import VOCAB
from interp.zoo import HybridLM, ZooConfig


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def make(layout, seed=0, n_layers=4):
    torch.manual_seed(seed)
    cfg = ZooConfig(vocab_size=len(VOCAB), d_model=32, n_layers=n_layers, layout=layout, n_heads=2,
                    head_dim=16, mamba_head_dim=16, mamba_state=8)
    m = HybridLM(cfg).eval()
    with torch.no_grad():  # random init is near-uniform; make answers depend on the prompt
        for p in m.parameters():
            p.mul_(4.0) if p.dim() > 1 else None
    return m


def pairs(n=6, **kw):
    return T.make_pairs("mqar", n, seed=0, **{"n_pairs": 4, **kw})


@pytest.mark.parametrize("layout", ["transformer", "gdn75", "mamba275-par"])
def test_identities(layout):
    m, p = make(layout), pairs()
    hm = hooks.wrap(m)
    with torch.no_grad():
        clean, corr = m(p.clean), m(p.corrupted)
    # clean into clean: exactly the clean logits, for every site kind
    for site, layer in [("resid_pre", 2), ("mixer_out", 1), ("mlp_out", 3), ("resid_post", 0)] + \
            [(s, L.index) for L in hm.layers for s in ("rec.state", "rec.k") if L.rec is not None][:2]:
        out = patching.run_patched(hm, p.clean, p.clean, site, layer)
        assert torch.equal(out, clean), (site, layer)
    # every position of resid_pre at layer 0 from the clean run = the clean run
    torch.testing.assert_close(patching.run_patched(hm, p.corrupted, p.clean, "resid_pre", 0), clean,
                               atol=1e-5, rtol=1e-5)
    # patching a position after the answer changes nothing
    out = patching.run_patched(hm, p.corrupted, p.clean, "resid_pre", 1, position=p.clean.shape[1] - 1)
    torch.testing.assert_close(out[:, :-1], corr[:, :-1], atol=1e-6, rtol=1e-6)


def _manual_metric(hm, p, name, position, head=None):
    """Normalised logit diff of one denoising patch, by hand with run_with_hooks."""
    with torch.no_grad():
        _, src = hm.run_with_cache(p.clean, names=[name])

        def put(x, _):
            x = x.clone()
            idx = (slice(None), position) + (() if head is None else (head,))
            x[idx] = src[name][idx]
            return x
        lg = [hm.run_with_hooks(p.corrupted, hooks=[(name, put)]), hm.model(p.clean), hm.model(p.corrupted)]
    r = torch.arange(len(p))
    ld = [(x[r, p.answer_pos, p.clean_answer] - x[r, p.answer_pos, p.corrupted_answer]).mean() for x in lg]
    return float((ld[0] - ld[2]) / (ld[1] - ld[2]))


@pytest.mark.parametrize("layout,site,layer", [("gdn75", "rec.state", 1), ("gla75", "rec.state", 0),
                                               ("mamba275", "rec.state", 2), ("gdn75", "resid_pre", 3),
                                               ("gdn75", "resid_pre", 1), ("gdn75", "resid_pre", 2),
                                               ("gla75", "resid_pre", 1), ("gdn75", "mixer_out", 1),
                                               ("gdn75", "mixer_out", 3), ("transformer", "mixer_out", 2),
                                               ("transformer", "attn.head_out", 1),
                                               ("transformer", "resid_pre", 1)])
# the window path: transformer and gdn75 resid_pre / rec.state (L3 attention only after it; L1 / L2 GDN layers
# resume from the unchanged run's state; mixer_out: the layer's MLP, then the window); gla75 has no window path
def test_sweep_matches_manual_patches_and_batching(layout, site, layer):
    """Batched sweep (many cells per forward, blocks before the layer skipped) == one patch at a
    time by hand; batch size and skip_prefix do not change the numbers."""
    m, p = make(layout), pairs()
    hm = hooks.wrap(m)
    pos = [3, 8, 13, p.clean.shape[1] - 2]
    heads = site == "attn.head_out"
    a = patching.sweep(hm, p, sites=[site], layers=[layer], positions=pos, heads=heads, progress=False, keep_all=True)
    assert patching._window_ok(hm, site, layer, [(3, None)]) == (site in ("resid_pre", "mixer_out", "rec.state")
                                                                  and layout in ("gdn75", "transformer"))
    b = patching.sweep(hm, p, sites=[site], layers=[layer], positions=pos, heads=heads, progress=False,
                       batch_size=7, skip_prefix=False, keep_all=True)
    np.testing.assert_allclose(a.logit_diff, b.logit_diff, atol=1e-4)
    np.testing.assert_allclose(a.kl, b.kl, atol=1e-4)
    for _, row in a.iloc[:3].iterrows():
        h = None if row["head"] < 0 else int(row["head"])
        want = _manual_metric(hm, p, f"blocks.{layer}.{site}", int(row.position), h)
        assert abs(row.logit_diff - want) < 1e-4, (row.position, row.logit_diff, want)
    assert a.logit_diff.abs().max() > 1e-3  # the patches did something
    assert set(a.columns) >= {"model", "task", "direction", "site", "layer", "layer_kind", "position", "head",
                              "logit_diff", "prob", "kl", "n"}


def test_noising_and_metrics_consistent():
    m, p = make("gdn75"), pairs()
    res = patching.sweep(m, p, sites=["resid_pre"], layers=[0], direction="noise", progress=False, keep_all=True)
    b = res.attrs["baselines"]
    # noising every token the prompts share changes nothing: normalised value 1 there (clean run)
    same = (p.clean == p.corrupted).all(0).nonzero().flatten().tolist()
    got = res.set_index("position").loc[same, "logit_diff"]
    np.testing.assert_allclose(got, 1.0, atol=1e-4)
    assert 0 <= res.prob.min() and res.prob.max() <= 1 and res.kl.min() > -1e-5
    assert b["clean_logit_diff"] != b["corrupted_logit_diff"]


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    """A sweep stopped after its 4th unit (each unit one file of the sweep's store) resumes and
    equals an uninterrupted run exactly; other settings are refused, naming the field."""
    from interp.store import Store
    m, p = make("gdn75"), pairs(n=8)
    kw = dict(sites=["resid_pre", "rec.state"], positions=[2, 5, 9], batch_size=4, progress=False, keep_all=True)
    full = patching.sweep(m, p, **kw)
    calls = {"n": 0}
    orig = Store.put

    def flaky(self, key, payload):
        calls["n"] += 1 if ".unit=" in key else 0
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return orig(self, key, payload)
    monkeypatch.setattr(Store, "put", flaky)
    with pytest.raises(KeyboardInterrupt):
        patching.sweep(m, p, out=tmp_path / "run", **kw)
    monkeypatch.setattr(Store, "put", orig)
    assert len(list((tmp_path / "run" / "units").glob("denoise.*"))) == 4
    resumed = patching.sweep(m, p, out=tmp_path / "run", **kw)
    pd.testing.assert_frame_equal(full, resumed, check_exact=True)
    with pytest.raises(InterpError, match=r"positions: \[2, 5, 9\] -> \[1\]"):
        patching.sweep(m, p, out=tmp_path / "run", **{**kw, "positions": [1]})


@pytest.mark.skipif(importlib.util.find_spec("transformer_lens") is None, reason="transformer-lens not installed")
def test_equals_transformerlens_resid_pre():
    """Layer x position resid_pre sweep == TransformerLens patching.get_act_patch_resid_pre on the
    same weights (the zoo transformer inside a TransformerBridge), within 1e-4."""
    from transformer_lens import patching as tlp
    from interp.zoo.hf import to_transformer_bridge
    m, p = make("transformer", n_layers=3), pairs(n=5)
    bridge = to_transformer_bridge(m)
    with torch.no_grad():
        torch.testing.assert_close(bridge(p.clean), m(p.clean), atol=1e-4, rtol=1e-4)
    ours = patching.sweep(m, p, sites=["resid_pre"], progress=False, keep_all=True)
    b = ours.attrs["baselines"]
    r = torch.arange(len(p))

    def metric(logits):
        ld = (logits[r, p.answer_pos, p.clean_answer] - logits[r, p.answer_pos, p.corrupted_answer]).mean()
        return (ld - b["corrupted_logit_diff"]) / (b["clean_logit_diff"] - b["corrupted_logit_diff"])
    with torch.no_grad():
        _, cache = bridge.run_with_cache(p.clean)
        tl = tlp.get_act_patch_resid_pre(bridge, p.corrupted, cache, metric)  # [layer, pos]
    grid = ours.pivot(index="layer", columns="position", values="logit_diff").to_numpy()
    assert tl.shape == grid.shape
    np.testing.assert_allclose(grid, tl.float().numpy(), atol=1e-4)
    assert np.abs(grid).max() > 0.05


def test_attribution_screen():
    """Attribution is exact for a patch whose effect is linear (the last layer's resid_post feeds
    the unembedding through a norm only at the answer position: nearly linear for small changes)
    and agrees in sign/ranking with exact patching on the shipped default."""
    from interp.demo import load_defaults
    m = load_defaults(["gdn75"])["gdn75"]
    p = T.make_pairs("mqar", 16, seed=0)
    ex = patching.sweep(m, p, sites=["mixer_out"], progress=False)
    at = patching.attribution(m, p, sites=["mixer_out"])
    mm = ex.merge(at, on=["site", "layer", "position", "head"], suffixes=("", "_at"))
    assert len(mm) == len(ex)
    top_ex = mm.loc[mm.logit_diff.idxmax(), ["layer", "position"]].tolist()
    top_at = mm.loc[mm.logit_diff_at.idxmax(), ["layer", "position"]].tolist()
    assert top_ex == top_at
    assert mm.logit_diff.corr(mm.logit_diff_at) > 0.8
    with pytest.raises(InterpError, match="site 'rec.stat' is not valid"):
        patching.attribution(m, p, sites=["rec.stat"])


def test_hf_models_skip_prefix_and_logits_at():
    """start_at / logits_at on HF hybrids (GDN and Mamba2 families): same numbers as plain runs."""
    from test_adapters_hf import make as make_hf
    from test_adapters_mamba import make as make_mamba
    for m in (make_hf("qwen3_next"), make_hf("olmo3"), make_mamba("bamba")):
        V = m.config.vocab_size
        g = torch.Generator().manual_seed(0)
        clean = torch.randint(2, V, (4, 12), generator=g)
        corr = clean.clone()
        corr[:, 3] = (clean[:, 3] + 1) % (V - 2) + 2
        pb = T.PairBatch(clean, corr, torch.full((4,), 10), clean[:, 11], (clean[:, 11] + 1) % V,
                         torch.full((4,), 3), {"task": "random"})
        hm = hooks.wrap(m)
        site = "rec.state" if any(L.rec is not None for L in hm.layers) else "mixer_out"
        layer = next(L.index for L in hm.layers if site != "rec.state" or L.rec is not None)
        kw = dict(sites=["resid_pre", site], layers=[layer + 1 if site == "resid_pre" else layer],
                  positions=[2, 3, 5], progress=False)
        kw["layers"] = [layer]
        a = patching.sweep(hm, pb, keep_all=True, **kw)
        b = patching.sweep(hm, pb, batch_size=3, skip_prefix=False, keep_all=True, **kw)
        np.testing.assert_allclose(a.logit_diff, b.logit_diff, atol=1e-4)
        np.testing.assert_allclose(a.kl, b.kl, atol=1e-5)
        with torch.no_grad(), hm.logits_at(pb.answer_pos):
            lg = hm(pb.clean)
        full = hm(pb.clean)
        torch.testing.assert_close(lg[:, 0], full[torch.arange(4), pb.answer_pos], atol=1e-5, rtol=1e-5)


def test_every_site_of_mixed_layers_skips_what_each_lacks():
    """Every site of an attention and a recurrent layer of a hybrid (``interp patch --layer 1,3``): each layer's
    own sites are patched, the others skipped with a warning naming them; a site none of the layers has is refused."""
    m, p = make("gdn75"), pairs()          # 4 layers: attention at 3
    hm = hooks.wrap(m)
    sites = patching.sites_of(hm.hook_names, [1, 3])
    with pytest.warns(UserWarning, match=r"attn.q at 1 \(gdn\).*rec.state at 3 \(attn\)"):
        plan = patching.plan_sweep(m, p, sites=sites, layers=[1, 3])
    got = {(s, i) for s, i, _ in plan.units}
    assert ("attn.q", 3) in got and ("rec.state", 1) in got and ("resid_pre", 1) in got and ("resid_pre", 3) in got
    assert ("attn.q", 1) not in got and ("rec.state", 3) not in got
    with pytest.raises(InterpError, match="needs attention, but layer 0 is gdn"):
        patching.plan_sweep(m, p, sites=["attn.q"], layers=[0, 1])


def test_errors():
    m, p = make("transformer"), pairs()
    with pytest.raises(InterpError, match="layer 99 out of range 0..3"):
        patching.sweep(m, p, layers=[99])
    with pytest.raises(InterpError, match="site 'resid' is not valid; valid: resid_pre"):
        patching.sweep(m, p, sites=["resid"])
    with pytest.raises(InterpError, match="needs a recurrent mixer, but layer 1 is attn"):
        patching.sweep(m, p, sites=["rec.state"], layers=[1])
    with pytest.raises(InterpError, match="no layer of this model has site"):
        patching.sweep(m, p, sites=["rec.state"])
    with pytest.raises(InterpError, match="has no heads"):
        patching.sweep(m, p, sites=["resid_pre"], heads=True)
    with pytest.raises(InterpError, match="position 500 out of range"):
        patching.sweep(m, p, positions=[500])
    with pytest.raises(InterpError, match="direction 'sideways'"):
        patching.sweep(m, p, direction="sideways")
    T_ = p.clean.shape[1]
    with pytest.raises(InterpError, match=f"position -1 out of range: the prompts have {T_} tokens; "
                                          f"valid: 0..{T_ - 1}"):
        patching.sweep(m, p, positions=[-1])
    with pytest.raises(InterpError, match="no layer selected; valid: 0..3"):
        patching.sweep(m, p, layers=[])
    with pytest.raises(InterpError, match="no position selected"):
        patching.sweep(m, p, positions=[])
    # values never truncated or iterated by character; one int or one site name is a list of one
    for kw, msg in [(dict(layers=[1.7]), "layer must be an integer, got 1.7 .float.; valid: an int"),
                    (dict(positions=[2.9]), "position must be an integer, got 2.9"),
                    (dict(positions=[True]), "position must be an integer, got True"),
                    (dict(layers=["1"]), "layer must be an integer, got .1. .str."),
                    (dict(layers="1"), "layers='1' is not valid"),
                    (dict(layers=[1, 1]), "layer 1 is given twice"), (dict(sites=None), "sites=None is not valid"),
                    (dict(batch_size=2.5), r"batch_size=2\.5 is not valid; valid: integers >= 1"),
                    (dict(n_boot=0), "n_boot=0 is not valid")]:
        with pytest.raises(InterpError, match=msg):
            patching.sweep(m, p, progress=False, **kw)
    one = patching.sweep(m, p, sites="resid_pre", layers=torch.tensor(1), positions=np.int64(3), progress=False,
                         n_boot=10, keep_all=True)
    assert list(zip(one.site, one.layer, one.position)) == [("resid_pre", 1, 3)]
    # pairs whose parts do not fit together: named, before any forward pass
    rep = dataclasses.replace
    for bad, msg in [(rep(p, corrupted=p.corrupted[:3]), r"pairs.corrupted has shape \[3, %d\], pairs.clean" % T_),
                     (rep(p, clean_answer=p.clean_answer[:3]), r"pairs.clean_answer is torch.int64 \[3\]; valid: \[6\]"),
                     (rep(p, answer_pos=p.answer_pos + 100), "pair 0: answer_pos %d is not valid; valid: 0..%d"
                      % (int(p.answer_pos[0]) + 100, T_ - 1)),
                     (rep(p, corrupted_answer=p.corrupted_answer.float()), "pairs.corrupted_answer is torch.float32"),
                     (rep(p, clean_answer=p.clean_answer + 10_000), r"clean_answer \d+ is not valid; valid: 0\.\.\d+ "
                      r"\(the vocabulary\)"),
                     (rep(p, clean=p.clean[:, :0], corrupted=p.corrupted[:, :0]), "a non-empty"),
                     (p.clean, "pairs must be an interp.tasks.PairBatch"),
                     (rep(p, attention_mask=torch.ones(2, 3)), r"attention_mask has shape \[2, 3\], their tokens")]:
        with pytest.raises(InterpError, match=msg):
            patching.sweep(m, bad, progress=False)
    # run_patched: negative / out-of-range positions, base and source of other shapes, heads
    with pytest.raises(InterpError, match=f"position -1 out of range: the prompts have {T_} tokens; "
                                          f"valid: 0..{T_ - 1}"):
        patching.run_patched(m, p.corrupted, p.clean, "resid_pre", 1, position=-1)
    with pytest.raises(InterpError, match=f"position {T_} out of range"):
        patching.run_patched(m, p.corrupted, p.clean, "resid_pre", 1, position=T_)
    with pytest.raises(InterpError, match=r"same shape .*got \[6, %d\] and \[6, %d\]" % (T_, T_ - 1)):
        patching.run_patched(m, p.corrupted, p.clean[:, :-1], "resid_pre", 1)
    with pytest.raises(InterpError, match=r"got \[6, %d\] and \[3, %d\]" % (T_, T_)):
        patching.run_patched(m, p.corrupted, p.clean[:3], "resid_pre", 1)
    with pytest.raises(InterpError, match="head 5 out of range 0..1"):
        patching.run_patched(m, p.corrupted, p.clean, "attn.head_out", 1, head=5)
    with pytest.raises(InterpError, match="site 'resid_pre' has no heads"):
        patching.run_patched(m, p.corrupted, p.clean, "resid_pre", 1, head=0)
    assert patching.sites_of(hooks.wrap(m).hook_names, None) == ["resid_pre"]
    assert "attn.q" in patching.sites_of(hooks.wrap(m).hook_names, [1])


def test_cli_patch_layer(tmp_path, capsys):
    from interp.cli import main
    assert main(["patch", "--layer", "11", "--n", "8", "--positions", "20:26", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "logit diff clean" in out and "rec.state" not in out.split("\n")[0]
    assert "pairs kept" in out.split("\n")[0] and "denoise" in out and "noise" in out
    assert (tmp_path / "gdn75_mqar_L11.png").stat().st_size > 1000
    df = pd.read_csv(tmp_path / "gdn75_mqar_L11.csv")
    assert set(df.layer) == {11} and {"resid_pre", "attn.head_out", "mlp_out"} <= set(df.site)
    assert set(df.direction) == {"denoise", "noise"} and {"logit_diff_lo", "position_class"} <= set(df.columns)
    assert main(["patch", "--layer", "99"]) == 2
    assert "error: layer 99 out of range 0..11" in capsys.readouterr().err
    assert main(["patch", "--metric", "acc", "--n", "2"]) == 2
    assert "metric 'acc' is not valid" in capsys.readouterr().err
    for args, msg in [(["--layer", "3:1"], "--layer '3:1': the range '3:1' is empty"),
                      (["--positions", "-1"], "position -1 out of range: the prompts have 26 tokens; valid: 0..25"),
                      (["--positions", "0:30"], "positions 26,27,28,29 out of range: the prompts have 26 tokens; "
                                                "valid: 0..25 (e.g. 0:26)"),
                      (["--positions", "5:2"], "--positions '5:2': the range '5:2' is empty"),
                      (["--layer", "-1"], "layer -1 out of range 0..11"),
                      (["--positions", "30"], "position 30 out of range: the prompts have 26 tokens")]:
        assert main(["patch", "--n", "2", "--out", str(tmp_path / "bad"), *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err, err
