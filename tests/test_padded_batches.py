"""Padded batches in patching and probes: clean/corrupted pairs of different lengths (left or right padded) give
each pair, at every cell, the numbers of its length group swept alone (zoo and an HF hybrid); pads have no value
and a cell is over the pairs that have its position; probes on a padded task batch read real tokens only, with
the features and fitted accuracies of the examples run unpadded; the refusals name what is valid."""
import numpy as np
import pandas as pd
import pytest
import torch

import hf_tiny as H  # tests/hf_tiny.py, a sibling of this file
import hooks
from interp import InterpError, patching, probes
from interp import tasks as T
from test_adapters_hf import make as hf_make
from test_patching import make as zoo_make

KEY = ["direction", "site", "layer", "position", "head"]
model = H.cached(lambda kind: hf_make(kind) if kind == "qwen3_next" else zoo_make(kind))


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def zoo_groups():
    return T.make_pairs("mqar", 4, seed=0, n_pairs=3), T.make_pairs("mqar", 4, seed=1, n_pairs=4)


def hf_groups():
    V = model("qwen3_next").config.vocab_size

    def group(n, L, seed):
        g = torch.Generator().manual_seed(seed)
        clean = torch.randint(2, V, (n, L), generator=g)
        corr = clean.clone()
        corr[:, 2] = (clean[:, 2] + 1) % (V - 2) + 2
        answers = torch.randint(2, V, (2, n), generator=g)
        return T.pairs_from_ids(clean, corr, answers[0], answers[1])
    return group(3, 6, 0), group(3, 9, 1)


def check_against_groups(m, groups, side, **kw):
    """The padded sweep of both groups against each group swept alone: per pair and per cell."""
    a, b = groups
    p = T.pad_pairs([a, b], side=side)
    assert p.attention_mask is not None and p.attention_mask.shape == (len(a) + len(b), b.clean.shape[1])
    kw = dict(keep_all=True, progress=False, direction="both", n_boot=20, **kw)
    pos = kw.pop("positions", None)
    res = patching.sweep(m, p, positions=pos, **kw)
    alone = [patching.sweep(m, g, positions=None if pos is None else [q for q in pos if q < g.clean.shape[1]], **kw)
             for g in groups]
    rows = [np.arange(len(a)), len(a) + np.arange(len(b))]
    Ta, idx = a.clean.shape[1], res.pair_data["index"]
    for r, rw in zip(alone, rows):
        mine = res.pair_data["ld"][idx.get_indexer(r.pair_data["index"])][:, rw]
        np.testing.assert_allclose(mine, r.pair_data["ld"], atol=1e-5, rtol=0)
    short = res.pair_data["ld"][idx.get_indexer(pd.MultiIndex.from_frame(res[KEY]))]
    beyond = (res.position >= Ta).to_numpy()
    assert np.isnan(short[beyond][:, rows[0]]).all() and np.isfinite(short[~beyond]).all()
    assert np.isfinite(short[:, rows[1]]).all()
    ra, rb = (r.set_index(KEY) for r in alone)
    mine = res.set_index(KEY)
    long_only = mine[mine.index.get_level_values("position") >= Ta]
    assert len(long_only) and (long_only.n == len(b)).all()
    cols = ["logit_diff", "prob", "kl", "raw_logit_diff", "position_class", "class_share"]
    got, ref = long_only[cols], rb.loc[long_only.index, cols]
    assert (got.position_class == ref.position_class).all()
    np.testing.assert_allclose(got[cols[:4] + ["class_share"]].to_numpy(float),
                               ref[cols[:4] + ["class_share"]].to_numpy(float), atol=1e-5, rtol=0)
    both = mine[mine.index.get_level_values("position") < Ta]
    assert (both.n == len(a) + len(b)).all()
    for c in ("raw_logit_diff", "prob", "kl"):
        pooled = (len(a) * ra.loc[both.index, c] + len(b) * rb.loc[both.index, c]) / (len(a) + len(b))
        np.testing.assert_allclose(both[c], pooled, atol=1e-5, rtol=0)
    return res


@pytest.mark.filterwarnings("ignore:patching")
@pytest.mark.parametrize("side", ["left", "right"])
def test_zoo_padded_sweep_equals_each_length_group_alone(side):
    m = model("gdn75")
    res = check_against_groups(m, zoo_groups(), side, sites=["resid_pre", "rec.state"], layers=[1])
    check_against_groups(m, zoo_groups(), side, sites=["attn.pattern"], layers=[3], heads=True, positions=[2, 12, 16])
    # a padded result's summaries and paired differences read the pairs that have the positions
    assert len(res.summary(exclude_trivial=False))
    d = res.difference(dict(direction="denoise", site="rec.state", layer=1, position=16),
                       dict(direction="denoise", site="rec.state", layer=1, position=3))
    assert d["n"] == 4 and np.isfinite(d["difference"])


@pytest.mark.filterwarnings("ignore:patching")
@pytest.mark.parametrize("side", ["left", "right"])
def test_hf_hybrid_padded_sweep_equals_each_length_group_alone(side):
    check_against_groups(model("qwen3_next"), hf_groups(), side, sites=["resid_pre", "rec.state"], layers=[0])


def test_run_patched_on_padded_prompts_equals_each_prompt_alone():
    m = model("gdn75")
    hm = hooks.wrap(m)
    a, b = zoo_groups()
    p = T.pad_pairs([a, b], side="left")
    with torch.no_grad():
        out = patching.run_patched(hm, p.corrupted, p.clean, "rec.state", 1, position=5,
                                   attention_mask=p.attention_mask)
        for g, rows in ((a, range(4)), (b, range(4, 8))):
            one = patching.run_patched(hm, g.corrupted, g.clean, "rec.state", 1, position=5)
            for r, i in enumerate(rows):
                real = p.attention_mask[i].bool()
                torch.testing.assert_close(out[i, real], one[r], atol=2e-5, rtol=1e-4)
        assert (out - hm(p.corrupted, p.attention_mask)).abs().max() > 1e-3   # the patch changes the run


def test_prompt_pairs_and_refusals():
    from interp.zoo.hf import attach_tokenizer
    from interp.tasks.padded import real_span
    m = attach_tokenizer(model("gdn75"))
    clean = ["<bos> x0 = 3 ; x0", "<bos> x1 = 5 ; x2 = 7 ; x1"]
    corr = ["<bos> x0 = 4 ; x0", "<bos> x1 = 6 ; x2 = 7 ; x1"]
    for side in ("left", "right"):
        p = patching.prompt_pairs(m, clean, corr, ["3", "5"], ["4", "6"], side=side)
        off, n = real_span(p.attention_mask)
        assert n.tolist() == [6, 10] and (p.answer_pos == off + n - 1).all()
        assert p.diff_pos.tolist() == [int(off[0]) + 3, int(off[1]) + 3]
        assert p.clean_answer.tolist() == [T.VOCAB.id("3"), T.VOCAB.id("5")]
    with pytest.raises(InterpError, match="pair 1: the clean prompt has 10 tokens and the corrupted one 8"):
        patching.prompt_pairs(m, clean, [corr[0], "<bos> x1 = 6 ; x2 = 7"], ["3", "5"], ["4", "6"])
    with pytest.raises(InterpError, match="side 'middle' is not valid; valid: left, right"):
        patching.prompt_pairs(m, clean, corr, ["3", "5"], ["4", "6"], side="middle")
    bad = T.pad_pairs(list(zoo_groups()))
    bad.answer_pos[0] = 0
    with pytest.raises(InterpError, match="pair 0: its answer position 0 is a pad"):
        patching.sweep(m, bad, layers=[0], progress=False)
    with pytest.raises(InterpError, match="pair 0: its answer position 0 is a pad"):
        patching.attribution(m, bad)
    with pytest.raises(InterpError, match="not one run of real tokens"):
        real_span(torch.tensor([[1, 0, 1]]))


@pytest.mark.filterwarnings("ignore:probe test split")
def test_probe_on_a_padded_task_batch_equals_the_examples_unpadded():
    """state_recall at two program lengths, left and right padded: the same probe points (labels at real tokens
    only), features to 1e-5, answered flags, and the same fitted accuracies as the examples run unpadded."""
    m = model("gdn75")
    parts = [T.generate("state_recall", 12, seed=s, n_steps=k) for s, k in ((0, 2), (1, 4))]
    sites = ["resid_post", "rec.state@key"]
    ref = [probes.collect(m, "state_recall", "query_var_value", sites, batch=p) for p in parts]
    ex = torch.cat([ref[0][1].ex, ref[1][1].ex + len(parts[0])])
    pts_ref = probes.Points(ex, *(torch.cat([getattr(r[1], f) for r in ref]) for f in ("pos", "y", "distance", "write",
                                                                                        "token")),
                            correct=torch.cat([r[1].correct for r in ref]))
    feats_ref = {k: torch.cat([r[0][k] for r in ref]) for k in ref[0][0]}
    fit = dict(seed=0, controls=("shuffled",))
    acc_ref = pd.DataFrame(probes.probe(feats_ref, pts_ref, **fit))
    for side in ("left", "right"):
        pb = T.pad_batches(parts, side=side)
        feats, pts = probes.collect(m, "state_recall", "query_var_value", sites, batch=pb, batch_size=7)
        assert bool(pb.attention_mask.bool()[pts.ex, pts.pos].all())
        for f in ("ex", "y", "distance", "token", "correct"):
            assert torch.equal(getattr(pts, f), getattr(pts_ref, f)), f
        off = torch.tensor([p["offset"] for p in pb.meta["parts"] for _ in range(len(parts[0]))])
        assert torch.equal(pts.pos - off[pts.ex], pts_ref.pos)
        assert feats.keys() == feats_ref.keys()
        for k in feats:
            torch.testing.assert_close(feats[k], feats_ref[k], atol=1e-5, rtol=1e-5)
        acc = pd.DataFrame(probes.probe(feats, pts, **fit))
        pd.testing.assert_frame_equal(acc, acc_ref)


def pairs_file(tmp_path):
    """zoo_groups' pairs as an `interp patch --pairs` file (clean prompt, corrupted prompt, both answers per line) and
    those rows of words."""
    words = []
    for g in zoo_groups():
        for i in range(len(g)):
            ap = int(g.answer_pos[i])
            words.append([" ".join(T.VOCAB.decode(x[i, :ap + 1])) for x in (g.clean, g.corrupted)]
                         + T.VOCAB.decode(torch.stack([g.clean_answer[i], g.corrupted_answer[i]])))
    f = tmp_path / "pairs.tsv"
    f.write_text("\n".join("\t".join(w) for w in words) + "\n")
    return f, words


@pytest.mark.filterwarnings("ignore:patching")
def test_cli_patch_pairs_file(tmp_path, capsys):
    """`interp patch --pairs FILE`: real prompt pairs of two lengths, padded; the written cells equal the API's sweep
    of the same pairs; bad files and option mixes exit 2 with one line."""
    from interp.cli import main
    from interp.models import load_any
    f, words = pairs_file(tmp_path)
    args = ["patch", "--model", "gdn75", "--pairs", str(f), "--layer", "1", "--site", "rec.state", "--keep-all",
            "--direction", "denoise", "--out", str(tmp_path / "out")]
    assert main(args) == 0
    got = pd.read_csv(tmp_path / "out" / "gdn75_pairs_L1.csv")
    m = load_any("gdn75")[0]
    pairs = patching.prompt_pairs(m, *zip(*words))
    ref = patching.sweep(m, pairs, sites=["rec.state"], layers=[1], keep_all=True, progress=False)
    np.testing.assert_allclose(got.logit_diff, ref.logit_diff, atol=1e-6)
    assert got.n.tolist() == ref.n.tolist() and sorted(set(got.n)) == [4, 8]
    capsys.readouterr()
    f.write_text(f.read_text() + "<bos> x0\tx0\n")
    assert main(args) == 2 and "line 9 has 2 tab-separated fields" in capsys.readouterr().err
    f.write_text("<bos> k1 3 k1\t<bos> k1 3 k2 k1\t3\t4\n")
    assert main(args) == 2
    assert "pair 0: the clean prompt has 4 tokens and the corrupted one 5" in capsys.readouterr().err
    assert main(args + ["--task", "mqar"]) == 2 and "not both" in capsys.readouterr().err


def test_capture_of_a_padded_task_batch_keeps_its_mask_and_equals_each_part(tmp_path):
    from interp.capture import capture, load_capture
    m = model("gdn75")
    parts = [T.generate("state_recall", 3, seed=s, n_steps=k) for s, k in ((0, 2), (1, 4))]
    pb = T.pad_batches(parts, side="left")
    names = ["blocks.1.rec.state", "blocks.3.resid_post"]
    capture(m, pb.tokens, names, tmp_path / "c", inputs=pb, progress=False, batch_size=4)
    c = load_capture(tmp_path / "c")
    assert torch.equal(c.labels["attention_mask"], pb.attention_mask)
    hm = hooks.wrap(m)
    for part, orig in zip(pb.meta["parts"], parts):
        (a, b), off, n = part["rows"], part["offset"], part["length"]
        assert torch.equal(pb.tokens[a:b, off:off + n], orig.tokens)
        with torch.no_grad():
            _, one = hm.run_with_cache(orig.tokens, names=names)
        for k in names:
            torch.testing.assert_close(c[k][a:b, off:off + n], one[k], atol=2e-5, rtol=1e-4)


def test_probe_points_of_a_padded_batch_without_parts():
    """A padded batch made elsewhere (no parts): points at real tokens from its labels (mqar bound_value: the
    same points as per part); targets that need each part's layout are refused."""
    import dataclasses
    parts = [T.generate("mqar", 3, seed=s, n_pairs=k) for s, k in ((0, 3), (1, 5))]
    for side in ("left", "right"):
        pb = T.pad_batches(parts, side=side)
        bare = dataclasses.replace(pb, meta={"task": "mqar"})
        a, b = probes.points(pb, "bound_value"), probes.points(bare, "bound_value")
        for f in ("ex", "pos", "y", "distance", "write", "token"):
            assert torch.equal(getattr(a, f), getattr(b, f)), f
        assert len(a) and bool(pb.attention_mask.bool()[a.ex, a.pos].all())
    sr = T.pad_batches([T.generate("state_recall", 2, seed=0, n_steps=k) for k in (2, 4)])
    with pytest.raises(InterpError, match="pad the batches with interp.tasks.pad_batches"):
        probes.points(dataclasses.replace(sr, meta={"task": "state_recall"}), "query_var_value")
