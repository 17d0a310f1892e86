"""Padded pairs (issue #24) in attribution patching, interchange interventions and the SAE interchange test, on the
zoo (gdn75) and an HF hybrid (qwen3_next), left and right padding: two length groups padded into one batch give
each pair (per-pair estimates, intervened logits, edited answers) and each cell / IIA count the numbers of its
length group run alone, unpadded (to 1e-5 of the compared values' scale); pads never appear in the results (a
position a pair lacks is NaN there and not counted in ``n``; tokens are read from real tokens only)."""
import numpy as np
import pytest
import torch

import hooks
from interp import InterpError, interventions as iv, patching
from interp import tasks as T
from interp.tasks.padded import pair_span
from test_padded_batches import hf_groups, model, pairs_file, zoo_groups

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py
SIDES = ["left", "right"]
KEY = ["site", "layer", "position", "head"]


def close(got, ref, tol=1e-5):
    """|got - ref| <= tol x the largest |ref| (NaN where ref is NaN)."""
    got, ref = np.asarray(got, dtype=float), np.asarray(ref, dtype=float)
    assert got.shape == ref.shape and np.array_equal(np.isnan(got), np.isnan(ref))
    scale = max(np.nanmax(np.abs(ref)), 1e-12) if ref.size else 1.0
    err = np.nan_to_num(np.abs(got - ref))
    assert err.max(initial=0) <= tol * scale, (err.max(), scale)


def answered(kind, shapes=((8, 6), (8, 9)), seed=0):
    """Two length groups of pairs whose answers are the model's own top tokens at the last real token (so the
    model answers every pair correctly): random prompts, the corrupted one differing at the last two tokens;
    pairs whose two answers agree dropped."""
    m = model(kind)
    hm = hooks.wrap(m)
    V, lo = (len(T.VOCAB), 16) if kind == "gdn75" else (m.config.vocab_size, 2)
    groups = []
    for j, (n, L) in enumerate(shapes):
        g = torch.Generator().manual_seed(seed + j)
        clean = torch.randint(lo, V, (n, L), generator=g)
        corr = clean.clone()
        corr[:, L - 2:] = (clean[:, L - 2:] - lo + 1) % (V - lo) + lo
        with torch.no_grad():
            ca, xa = hm(clean)[:, -1].argmax(-1), hm(corr)[:, -1].argmax(-1)
        k = ca != xa
        assert int(k.sum()) >= 2
        groups.append(T.pairs_from_ids(clean[k], corr[k], ca[k], xa[k], meta={"task": "answered"}))
    return groups


# --- attribution patching ----------------------------------------------------------------------------
def check_attribution(m, groups, side, **kw):
    a, b = groups
    na, nb, Ta = len(a), len(b), a.clean.shape[1]
    p = T.pad_pairs([a, b], side=side)
    assert p.attention_mask is not None
    res = patching.attribution(m, p, keep_all=True, **kw)
    ra, rb = (patching.attribution(m, g, keep_all=True, **kw).set_index(KEY) for g in groups)
    mine = res.set_index(KEY)
    assert sorted(set(res.position)) == list(range(b.clean.shape[1]))   # positions count real tokens
    assert np.isfinite(res.logit_diff).all() and np.isfinite(res.raw_logit_diff).all()
    long_only = mine[mine.index.get_level_values("position") >= Ta]
    assert len(long_only) and (long_only.n == nb).all()
    for c in ("logit_diff", "raw_logit_diff"):
        close(long_only[c], rb.loc[long_only.index, c])
    both = mine[mine.index.get_level_values("position") < Ta]
    assert (both.n == na + nb).all()
    ia = both.index
    close(both.raw_logit_diff, (na * ra.loc[ia].raw_logit_diff + nb * rb.loc[ia].raw_logit_diff) / (na + nb))
    gap = [r.attrs["baselines"]["clean_logit_diff"] - r.attrs["baselines"]["corrupted_logit_diff"] for r in (ra, rb)]
    close(both.logit_diff, (na * ra.loc[ia].raw_logit_diff + nb * rb.loc[ia].raw_logit_diff)
          / (na * gap[0] + nb * gap[1]))
    # tokens come from the first pair's real tokens (no <pad>), empty where it has no such position
    tok = res.drop_duplicates("position").set_index("position").token
    assert "<pad>" not in set(tok) and (tok[tok.index >= Ta] == "").all()
    if (ra.reset_index().token != "").any():
        assert tok[tok.index < Ta].tolist() == ra.reset_index().drop_duplicates("position").token.tolist()
    return p


def check_state_effects(m, groups, p, layer):
    """`_state_effects` per pair and real position: each pair's row of its group alone, NaN beyond its length."""
    from interp.patching.attribution import _state_effects
    hm, name = hooks.wrap(m), f"blocks.{layer}.rec.state"
    mask, span = pair_span(p)
    with torch.no_grad():
        _, cc = hm.run_with_cache(p.clean, names=[name], attention_mask=mask)
    got = _state_effects(hm, p, layer, cc[name], np.ones(len(p), bool), 256, mask, span).numpy()
    r0 = 0
    for g in groups:
        with torch.no_grad():
            _, c1 = hm.run_with_cache(g.clean, names=[name])
        ref = _state_effects(hm, g, layer, c1[name], np.ones(len(g), bool), 256).numpy()
        L = g.clean.shape[1]
        mine = got[r0:r0 + len(g)]
        close(mine[:, :L], ref)
        assert np.isnan(mine[:, L:]).all()
        assert np.abs(ref).max() > 1e-4          # the state patch moves the answer
        r0 += len(g)


@pytest.mark.parametrize("side", SIDES)
def test_zoo_padded_attribution_equals_each_length_group_alone(side):
    m = model("gdn75")
    p = check_attribution(m, zoo_groups(), side, sites=["resid_pre", "rec.state", "mixer_out"], layers=[1])
    check_attribution(m, zoo_groups(), side, sites=["attn.q", "attn.pattern"], layers=[3], heads=True)
    check_state_effects(m, zoo_groups(), p, 1)


@pytest.mark.parametrize("side", SIDES)
def test_hf_hybrid_padded_attribution_equals_each_length_group_alone(side):
    m = model("qwen3_next")
    p = check_attribution(m, hf_groups(), side, sites=["resid_pre", "rec.state"], layers=[0])
    check_state_effects(m, hf_groups(), p, 0)


# --- interchange interventions -------------------------------------------------------------------
def alone_rows(ip, na, nb):
    """For each ordered row of the padded pairs (order 'both'): (group, its row in that group's own ordered pairs)."""
    out = []
    for q, clean_base in zip(ip.pair.tolist(), ip.base_is_clean.tolist()):
        g, i, n = (0, q, na) if q < na else (1, q - na, nb)
        out.append((g, i + (n if clean_base else 0)))
    return out


def check_interchange(m, groups, side, site, positions, subspaces):
    a, b = groups
    na, Ta = len(a), a.clean.shape[1]
    p = T.pad_pairs([a, b], side=side)
    ix = iv.Interchanger(m, p, site, positions=positions, batch_size=5)
    lone = []
    for g in groups:
        try:
            lone.append(iv.Interchanger(m, g, site, positions=positions, batch_size=5))
        except InterpError as e:          # an integer position the shorter group lacks
            assert isinstance(positions, list) and max(q for q in positions if isinstance(q, int)) >= Ta, e
            assert "falls outside the prompts" in str(e)
            lone.append(None)
    where = alone_rows(ix.ip, na, len(b))
    assert bool((ix.has_pos == torch.tensor([lone[g] is not None for g, _ in where])).all())
    assert ix.has_pos.any()
    pads = ~ix.ip.attention_mask
    assert not bool(pads[torch.arange(len(ix.ip))[:, None], ix.pos].any())   # every edit at a real token
    with torch.no_grad():
        plain = hooks.wrap(m)(ix.ip.base, ix.ip.attention_mask)[torch.arange(len(ix.ip)), ix.ip.answer_pos]
    for R in subspaces:
        with torch.no_grad():
            lg = ix.logits(R)
        assert (lg - plain)[ix.has_pos].abs().max() > 1e-4        # the interchange moves the answer logits
        for g, one in enumerate(lone):
            if one is None:
                continue
            rows = [r for r, (gg, _) in enumerate(where) if gg == g]
            with torch.no_grad():
                ref = one.logits(R)[[i for gg, i in where if gg == g]]
            close(lg[rows], ref)
            assert torch.equal(ix.correct[rows], one.correct[[i for gg, i in where if gg == g]])
    res = iv.intervene(m, p, site, subspaces=["full"], positions=positions)
    refs = [iv.intervene(m, g, site, subspaces=["full"], positions=positions) if one is not None else None
            for g, one in zip(groups, lone)]
    hits = sum(r.iia.item() * r.n.item() for r in refs if r is not None)
    assert res.n.item() == sum(r.n.item() for r in refs if r is not None) > 0
    assert res.iia.item() * res.n.item() == pytest.approx(hits)


@pytest.mark.parametrize("side", SIDES)
def test_zoo_padded_interventions_equal_each_length_group_alone(side):
    m = model("gdn75")
    groups = answered("gdn75")
    R = iv.random_basis(32, 2, 0)
    check_interchange(m, groups, side, iv.Site("blocks.2.resid_pre"), None, [None, R])
    check_interchange(m, groups, side, iv.Site("blocks.1.rec.state"), None, [None, "write_key"])
    check_interchange(m, groups, side, iv.Site("blocks.1.rec.state", side="key"), ["write", 7], [None])
    check_interchange(m, groups, side, iv.Site("blocks.3.resid_pre"), ["answer-1", 3], [R])


@pytest.mark.parametrize("side", SIDES)
def test_hf_hybrid_padded_interventions_equal_each_length_group_alone(side):
    m = model("qwen3_next")
    groups = answered("qwen3_next")
    check_interchange(m, groups, side, iv.Site("blocks.1.resid_pre"), None, [None, iv.random_basis(32, 2, 0)])
    check_interchange(m, groups, side, iv.Site("blocks.0.rec.state"), ["answer-1", 6], [None])


def test_padded_interchange_positions_and_refusals():
    a, b = answered("gdn75")
    p = T.pad_pairs([a, b], side="left")
    ip = iv.interchange_pairs(p, "corrupted_base")
    off, n = pair_span(p)[1]
    site = iv.Site("blocks.0.resid_pre")
    pos = iv.resolve_positions([0, "answer", 7], ip, site)
    assert torch.equal(pos[:, 0], off) and torch.equal(pos[:, 1], p.answer_pos)
    assert torch.equal(pos[:, 2], torch.where(n > 7, off + 7, -1))     # the shorter pairs lack position 7
    with pytest.raises(InterpError, match="position 'answer\\+1' falls outside the prompts \\(their real tokens\\)"):
        iv.resolve_positions(["answer+1"], ip, site)
    with pytest.raises(InterpError, match="position 9 falls outside the prompts"):
        iv.resolve_positions([9], ip, site)
    with pytest.raises(InterpError, match="write_at 7 is beyond the prompt of"):
        iv.Interchanger(model("gdn75"), p, iv.Site("blocks.1.rec.state"), write_at=7).write_keys()
    bad = T.pad_pairs([a, b], side="left")
    bad.answer_pos[0] = 0
    with pytest.raises(InterpError, match="pair 0: its answer position 0 is a pad"):
        iv.interchange_pairs(bad)


# --- the SAE interchange test --------------------------------------------------------------------
def check_sae(m, groups, side, site, coder):
    from interp.sae.interchange import interchange, interchange_preds
    L = coder.num_latents
    ranking = {v: [(7 * v + 1) % L, (3 * v + 2) % L] for v in range(-1, 48)}
    kw = dict(seeds=(0,), only_correct=False)
    hm = hooks.wrap(m)
    p = T.pad_pairs(groups, side=side)
    idx, got = interchange_preds(hm, site, coder, p, ranking, **kw)
    assert torch.equal(idx, torch.arange(len(p)))
    got = {(c, s): pred for c, s, pred, _ in got}
    r0, changed = 0, 0
    for g in groups:
        _, ref = interchange_preds(hm, site, coder, g, ranking, **kw)
        for c, s, pred, _ in ref:
            if c != "random":      # random latents are drawn per pair in batch order
                assert torch.equal(got[(c, s)][r0:r0 + len(g)], pred), c
                changed += int((pred != g.corrupted_answer).sum())
        r0 += len(g)
    assert changed > 0                                  # the edits move some answers
    rows = {r["condition"]: r for r in interchange(hm, site, coder, p, ranking, **kw)}
    lone = [{r["condition"]: r for r in interchange(hm, site, coder, g, ranking, **kw)} for g in groups]
    for c in ("aligned", "all"):
        assert rows[c]["n"] == len(p)
        for f in ("iia", "changed"):
            assert rows[c][f] * len(p) == pytest.approx(sum(r[c][f] * r[c]["n"] for r in lone))


@pytest.mark.parametrize("side", SIDES)
def test_zoo_padded_sae_interchange_equals_each_length_group_alone(side):
    pytest.importorskip("sparsify")
    from interp.sae import SaeSite
    from interp.sae import coder as C
    from interp.sae import rank1 as R1
    from interp.sae.views import rank1_view
    m, groups = model("gdn75"), answered("gdn75")
    check_sae(m, groups, side, SaeSite("blocks.2.resid_pre"), C.new(32, 4, 24, seed=1))
    site = SaeSite("blocks.0.rec.write_kd", head=1)         # the edit re-runs the recurrence (`splice_hooks`)
    check_sae(m, groups, side, site, rank1_view(R1.Rank1Coder(16, 16, 24, 2, seed=3), site))


@pytest.mark.parametrize("side", SIDES)
def test_hf_hybrid_padded_sae_interchange_equals_each_length_group_alone(side):
    pytest.importorskip("sparsify")
    from interp.sae import SaeSite
    from interp.sae import coder as C
    check_sae(model("qwen3_next"), answered("qwen3_next"), side, SaeSite("blocks.1.resid_pre"),
              C.new(32, 4, 24, seed=1))


@pytest.mark.filterwarnings("ignore:patching")
def test_cli_patch_pairs_file_with_attribution(tmp_path, capsys):
    """`interp patch --pairs FILE --attribution`: padded prompt pairs of two lengths; the attribution cells written
    equal the API's attribution of the same pairs, each over the pairs that have its position."""
    import pandas as pd
    from interp.cli import main
    from interp.models import load_any
    f, words = pairs_file(tmp_path)
    assert main(["patch", "--model", "gdn75", "--pairs", str(f), "--layer", "1", "--site", "mixer_out",
                 "--keep-all", "--direction", "denoise", "--attribution", "--out", str(tmp_path / "out")]) == 0
    got = pd.read_csv(tmp_path / "out" / "gdn75_pairs_L1_attribution.csv")
    m = load_any("gdn75")[0]
    ref = patching.attribution(m, patching.prompt_pairs(m, *zip(*words)), sites=["mixer_out"], layers=[1],
                               keep_all=True)
    assert got.position.tolist() == ref.position.tolist()
    close(got.logit_diff_attribution, ref.logit_diff)
    assert sorted(set(got.n)) == [4, 8] and "attribution patching vs exact" in capsys.readouterr().out
