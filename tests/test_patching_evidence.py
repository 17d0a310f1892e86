"""Issue 19, patching evidence: denoising and noising side by side, pairs filtered to those the
model answers correctly, 95% bootstrap intervals per cell (interp.stats) and paired differences,
position classes from the task's ground truth, summaries that name the path, heatmaps with
hatching, attribution for rec.state; `--keep-all --direction denoise` gives the table of before."""
import numpy as np
import pandas as pd
import pytest
import torch

import hooks
from interp import patching
from interp import tasks as T
from interp.demo import load_defaults
from interp.patching.classes import CLASSES


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def defaults():
    return load_defaults(["gdn75", "gdn100"])


# `interp patch --layer 11` before issue 19 (64 pairs, denoising, every pair): its ranked table
BEFORE = [("resid_post", 24, "k15", 1.0000), ("resid_mid", 24, "k15", 1.0000), ("resid_pre", 24, "k15", 0.9997),
          ("mlp_out", 24, "k15", 0.0814), ("attn.q", 24, "k15", 0.0021), ("mixer_out", 24, "k15", 0.0019),
          ("attn.head_out", 24, "k15", 0.0019), ("attn.v", 24, "k15", 0.0004), ("attn.k", 24, "k15", 0.0002),
          ("attn.v", 5, "k49", 0.0001), ("attn.k", 18, "k59", -0.0001), ("resid_pre", 17, "<sep>", -0.0001),
          ("resid_pre", 18, "k59", -0.0001), ("attn.v", 17, "<sep>", -0.0001), ("resid_pre", 9, "k59", 0.0001)]


def test_keep_all_denoise_reproduces_the_table_before(tmp_path, capsys):
    from interp.cli import main
    assert main(["patch", "--layer", "11", "--keep-all", "--direction", "denoise", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    head = next(i for i, line in enumerate(out) if "logit diff clean" in line)
    assert "64 of 64 pairs kept (all pairs; 0 dropped)" in out[head]
    assert ("logit diff clean 18.054, corrupted -17.621; p(clean answer) clean 0.999, corrupted 0.000"
            in out[head])
    rows = [line.split() for line in out[head + 2:head + 2 + len(BEFORE)]]
    got = [(r[0], int(r[3]), r[4], float(r[6])) for r in rows]
    assert got == BEFORE
    assert all(r[1] == "11" and r[2] == "attn" and r[5] == "-1" for r in rows)


def test_filtering_keeps_pairs_answered_correctly(defaults):
    """gdn100 fails part of 32-pair MQAR: the sweep keeps exactly the pairs it answers correctly on
    both prompts and equals a sweep of those pairs alone."""
    m = defaults["gdn100"]
    p = T.make_pairs("mqar", 12, seed=0, n_pairs=32)
    kw = dict(sites=["resid_pre", "rec.state"], layers=[0], positions=[20, 40, p.clean.shape[1] - 2], progress=False)
    res = patching.sweep(m, p, **kw)
    with torch.no_grad():
        r = torch.arange(len(p))
        ok = ((m(p.clean)[r, p.answer_pos].argmax(-1) == p.clean_answer)
              & (m(p.corrupted)[r, p.answer_pos].argmax(-1) == p.corrupted_answer))
    info = res.attrs["pairs"]
    assert info == {"n": 12, "kept": int(ok.sum()), "dropped": int((~ok).sum()),
                    "filter": "answered correctly on both prompts"}
    assert 0 < info["kept"] < 12 and (res.n == info["kept"]).all()
    assert list(res.pair_data["pairs"]) == ok.nonzero().flatten().tolist()
    idx = ok.nonzero().flatten()
    sub = T.PairBatch(p.clean[idx], p.corrupted[idx], p.answer_pos[idx], p.clean_answer[idx],
                      p.corrupted_answer[idx], p.diff_pos[idx], p.meta)
    alone = patching.sweep(m, sub, keep_all=True, **kw)
    np.testing.assert_allclose(res.logit_diff, alone.logit_diff, atol=1e-5)
    assert patching.sweep(m, p, keep_all=True, **kw).attrs["pairs"]["kept"] == 12


def test_one_kept_pair_says_it_has_no_interval(defaults):
    p = T.make_pairs("mqar", 1, seed=0)
    with pytest.warns(UserWarning, match="1 pair of 1 kept .*without intervals"):
        res = patching.sweep(defaults["gdn75"], p, sites=["resid_pre"], layers=[11], positions=[5], progress=False)
    assert res.attrs["pairs"]["kept"] == 1 and np.isnan(res.filter(regex="_(lo|hi)$").to_numpy(float)).all()


def test_both_directions_intervals_and_paired_differences(defaults):
    m = defaults["gdn75"]
    p = T.make_pairs("mqar", 16, seed=0)
    kw = dict(sites=["mixer_out"], layers=[7, 10], progress=False)
    both = patching.sweep(m, p, direction="both", **kw)
    for d in ("denoise", "noise"):   # the same cells as a sweep of one direction, exactly
        one = patching.sweep(m, p, direction=d, **kw)
        pd.testing.assert_frame_equal(pd.DataFrame(both[both.direction == d]).reset_index(drop=True),
                                      pd.DataFrame(one), check_exact=True)
    # the intervals are interp.stats' bootstrap over pairs (same resamples)
    from interp.stats import boot_ci
    pdata, row = both.pair_data, int(both.logit_diff.idxmax())
    lo, hi = boot_ci(pdata["ld"][row] - pdata["corrupted"], pdata["clean"] - pdata["corrupted"], 1000,
                     np.random.default_rng(0))
    assert (both.logit_diff_lo[row], both.logit_diff_hi[row]) == pytest.approx((lo, hi), abs=1e-12)
    assert (both.logit_diff_lo <= both.logit_diff + 1e-9).mean() > 0.95
    assert (both.logit_diff_hi >= both.logit_diff - 1e-9).mean() > 0.95
    # side by side: one row per cell with both directions; ranked by the larger effect
    top = both.ranked(k=5)
    assert {"denoise", "denoise_lo", "denoise_hi", "noise", "noise_lo", "noise_hi"} <= set(top.columns)
    assert (top.site == "mixer_out").all() and len(top) == 5
    # paired difference: a - b, interval from the same resampled pairs; a - a = 0 exactly
    a = dict(direction="denoise", site="mixer_out", layer=7, position=int(p.answer_pos[0]))
    b = dict(a, layer=10)
    d = both.difference(a, b)
    ea = both[(both.direction == "denoise") & (both.layer == 7) & (both.position == a["position"])].logit_diff.item()
    eb = both[(both.direction == "denoise") & (both.layer == 10) & (both.position == a["position"])].logit_diff.item()
    assert d["difference"] == pytest.approx(ea - eb, abs=1e-6) and d["lo"] <= d["difference"] <= d["hi"]
    assert both.difference(a, a) == {"difference": 0.0, "lo": 0.0, "hi": 0.0, "n": 16}


def test_position_classes_follow_the_ground_truth():
    from interp.tasks import VOCAB
    p = T.make_pairs("mqar", 20, seed=3)
    codes, differs = patching.position_classes(p)
    c = lambda name: CLASSES.index(name)  # noqa: E731
    for i in range(len(p)):
        ans, diff = int(p.answer_pos[i]), int(p.diff_pos[i])
        assert codes[i, ans] == c("query") and codes[i, ans + 1] == c("after")
        assert codes[i, diff] == c("write")                   # the queried key's value, where it differs
        assert p.clean[i, diff - 1] == p.clean[i, ans]        # ... bound to the queried key
        assert (codes[i, :diff] == c("prefix")).all() and (codes[i, diff + 1:ans] == c("between")).all()
    s = T.make_pairs("state_recall", 20, seed=3)
    codes, differs = patching.position_classes(s)
    semi = VOCAB.id(";")
    for i in range(len(s)):
        T_ = s.clean.shape[1]
        assert list(codes[i, -3:]) == [c("query"), c("query"), c("after")]
        w = np.flatnonzero(codes[i] == c("write"))
        assert len(w) and int(s.clean[i, w[-1]]) == semi     # the write statement ends with its ';'
        first = int(differs[i].argmax())
        assert w[-1] >= first and (codes[i, :first] == c("prefix")).all()
        stmt = s.clean[i, w[-1] - 3:w[-1] + 1].tolist()       # it writes the queried variable
        assert int(s.clean[i, T_ - 2]) in stmt[:3]


def test_summary_and_paths_name_the_state_after_the_write(defaults):
    """gdn100 keeps MQAR bindings in GDN layer 0's state. The role-aligned summary shows the state
    between the write and the query restoring the answer (~1, interval above 0; noising it there
    removes it) while the state at the written value itself does not: the layer's short
    convolution feeds the changed value into the next writes again. The residual stream at the
    changed token is trivial; the path reads between -> query."""
    m = defaults["gdn100"]
    p = T.make_pairs("mqar", 12, seed=0)
    res = patching.sweep(m, p, sites=["resid_pre", "rec.state"], layers=[0], direction="both", progress=False)
    s = res.summary()
    one = lambda d, cls: s[(s.direction == d) & (s.site == "rec.state") & (s.position_class == cls)]  # noqa: E731
    assert one("denoise", "between").logit_diff.item() > 0.9 and one("denoise", "between").lo.item() > 0.5
    assert one("noise", "between").logit_diff.item() < 0.1 and one("noise", "between").hi.item() < 0.5
    assert abs(one("denoise", "write").logit_diff.item()) < 0.1
    assert one("denoise", "between").n_pairs.item() == res.attrs["pairs"]["kept"]
    full = res.summary(exclude_trivial=False)
    assert full[(full.site == "resid_pre") & (full.position_class == "write")].trivial.all()
    assert not (s.position_class.isin(["prefix", "after"])).any()
    paths = res.paths()
    assert list(dict.fromkeys(paths[paths.direction == "denoise"].position_class)) == ["between", "query"]
    line = res.describe_paths()[0]
    assert line.startswith("denoise: between: rec.state L0 (gdn) 0.9") and "-> query: rec.state L0" in line, line
    ranked = res.ranked(k=1000)
    assert not ranked.empty and len(ranked) < len(res[res.direction == "denoise"])   # trivial cells left out
    triv = res[res.trivial]     # trivial for every pair, or the residual stream where the changed token carries it
    assert (triv.position_class.isin(["prefix", "after"]) | (triv.site == "resid_pre")).all()
    assert not res[(res.site == "rec.state") & res.position_class.isin(["between", "query"])].trivial.any()


def test_plot_side_by_side_with_hatching(defaults, tmp_path):
    m = defaults["gdn75"]
    p = T.make_pairs("mqar", 8, seed=0)
    res = patching.sweep(m, p, sites=["mixer_out"], layers=[6, 7], direction="both", progress=False)
    fig = res.plot()
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [a.get_title().split(": ")[1].split(" ")[0] for a in panels] == ["denoising", "noising"]
    hatched = sum(1 for a in panels for pt in a.patches if pt.get_hatch())
    ref = {"denoise": 0.0, "noise": 1.0}
    from interp.patching.plot import MIN_RANGE, NOISE
    no = res.direction.map(ref)
    want = sum((res.logit_diff_lo - NOISE <= no) & (no <= res.logit_diff_hi + NOISE))
    assert hatched == want > 0
    half = max(MIN_RANGE, float((res.logit_diff - no).abs().max()))
    for a, d in zip(panels, ("denoise", "noise")):   # one scale, white at no effect, never narrower than MIN_RANGE
        assert a.images[0].get_clim() == pytest.approx((ref[d] - half, ref[d] + half))
    assert any("normalised logit diff" in a.get_ylabel() for a in fig.axes)
    none = res.paths(threshold=1e9)   # nothing passes: an empty frame, not rows of NaN
    assert none.empty and "effect" in none and list(none.columns) == list(res.paths(threshold=0.0).columns)
    assert "QUERY" in " ".join(t.get_text() for t in panels[0].get_xticklabels())
    import matplotlib.pyplot as plt
    plt.close(fig)
    paths = res.save(tmp_path, "x")
    assert [f.name for f in paths] == ["x.csv", "x.parquet", "x.png", "x.json"] and paths[2].stat().st_size > 5000


def test_state_attribution_is_the_state_patch_gradient():
    """rec.state attribution = d LD / d eps of the state patch S_t + eps (S_clean - S_t), by finite
    differences through the same continued recurrence."""
    from test_patching import make, pairs
    m, p = make("gdn75"), pairs(n=4)
    hm = hooks.wrap(m)
    att = patching.attribution(hm, p, sites=["rec.state"], layers=[1], keep_all=True)
    name, t, h = "blocks.1.rec.state", 6, 1e-2
    with torch.no_grad():
        _, cc = hm.run_with_cache(p.clean, names=[name])
        r = torch.arange(len(p))

        def ld(eps):
            def put(S, _):
                S = S.clone()
                S[:, t] = S[:, t] + eps * (cc[name][:, t] - S[:, t])
                return S
            lg = hm.run_with_hooks(p.corrupted, hooks=[(name, put)])
            return (lg[r, p.answer_pos, p.clean_answer] - lg[r, p.answer_pos, p.corrupted_answer]).double()
        fd = float(((ld(h) - ld(-h)) / (2 * h)).mean())
    est = att[att.position == t].raw_logit_diff.item()
    assert abs(fd) > 1e-3 and est == pytest.approx(fd, rel=2e-2, abs=1e-4)
