"""interp.sae ground truth, interchange and the WriteSAE substitution protocol for rank-1 write dictionaries
and transcoders: interchange through a dictionary that holds the writes exactly equals patching the write
through the hooks, a transcoder's latents are read at its input and its change lands at its target,
substitution conditions against hooks-level edits. Small and CPU-only."""
import json

import pytest
import torch

import hooks
from interp.cli import main
from interp.sae import SaeSite
from interp.sae import coder as C
from interp.sae import rank1 as R
from interp.sae.run import run_eval_rank1
from interp.sae.data import family_of, site_vectors
from interp.sae.groundtruth import best_features, groundtruth, points
from interp.sae.interchange import interchange
from interp.sae.sites import splice_hooks
from interp.sae.views import rank1_dense, rank1_decode, rank1_view, transcoder_view
from interp.tasks import VOCAB, generate, make_pairs
from interp.zoo import HybridLM
from interp.zoo.config import ZooConfig
from interp.zoo.io import save_model

pytest.importorskip("sparsify")
KNOBS = {"n_pairs": 4}
HEAD = 1


def tiny(layout="gdn100", seed=0):
    torch.manual_seed(seed)
    cfg = ZooConfig(vocab_size=len(VOCAB), d_model=32, n_layers=2, layout=layout, n_heads=2, head_dim=16,
                    mamba_head_dim=16, mamba_state=8)
    return HybridLM(cfg).eval()


def _exact_coder(hm, site, *token_sets):
    """A rank-1 dictionary (k = 1) whose atoms are the head's writes at every non-pad token of the sets."""
    from interp.tasks.vocab import PAD
    rows = [site_vectors(hm, site, t)[0][t != PAD] for t in token_sets]
    key, val = R.split_kd(torch.cat(rows), 16)
    return R.Rank1Coder(16, 16, key.shape[0], 1).init_from(key, val)


def test_rank1_view_encode_decode_match_the_coder():
    g = torch.Generator().manual_seed(0)
    coder = R.Rank1Coder(16, 8, 20, 3, seed=2)
    key, val = torch.randn(11, 16, generator=g), torch.randn(11, 8, generator=g)
    z = rank1_dense(coder, torch.cat([key, val], 1))
    acts, idx = coder.encode(key, val)
    assert (z > 0).sum(1).le(3).all() and torch.allclose(z.gather(1, idx), acts)
    W = key[:, :, None] * val[:, None, :]
    assert torch.allclose(rank1_decode(coder, z), coder.reconstruct_full(W).flatten(1), atol=1e-5)


def _patched_write_logits(hm, pairs, layer, head):
    """Oracle: the corrupted run with head ``head``'s write at the answer position set to the clean run's,
    through the hooks' write_k / write_v (the recurrence continues from it)."""
    names = [f"blocks.{layer}.rec.write_k", f"blocks.{layer}.rec.write_v"]
    _, cc = hm.run_with_cache(pairs.clean, names=names)
    rows = torch.arange(pairs.n)

    def fn(x, name):
        x = x.clone()
        x[rows, pairs.answer_pos, head] = cc[name][rows, pairs.answer_pos, head].to(x.dtype)
        return x
    return hm.run_with_hooks(pairs.corrupted, hooks=[(n, fn) for n in names])


def test_rank1_interchange_all_equals_hooks_write_patch():
    m = tiny()
    hm = hooks.wrap(m)
    site = SaeSite("blocks.0.rec.write_kd", head=HEAD)
    pairs = make_pairs("mqar", 5, seed=3, **KNOBS)
    coder = _exact_coder(hm, site, pairs.clean, pairs.corrupted)
    view = rank1_view(coder, site)
    assert view.edit == SaeSite("blocks.0.rec.write", HEAD)
    ref = _patched_write_logits(hm, pairs, 0, HEAD)
    rows, ap = torch.arange(pairs.n), pairs.answer_pos
    # the spliced edit itself, at the logits
    from interp.sae.evaluate import clean_run
    _, Xc, _ = clean_run(hm, site, pairs.clean)
    cache = clean_run(hm, view.edit, pairs.corrupted)[2]
    _, Xkd, _ = clean_run(hm, site, pairs.corrupted)
    delta = view.decode(view.encode(Xc[rows, ap])) - view.decode(view.encode(Xkd[rows, ap]))
    mask = torch.zeros_like(pairs.corrupted, dtype=torch.bool)
    mask[rows, ap] = True
    got = hm.run_with_hooks(pairs.corrupted, hooks=splice_hooks(
        view.edit, lambda x, b, t: x + delta[b], mask, family_of(hm, 0), cache))
    clean_x = hm.run_with_hooks(pairs.corrupted, hooks=[])
    assert (ref - clean_x).abs().max() > 1e-3                     # the patch does something
    assert torch.allclose(got, ref, atol=1e-4), (got - ref).abs().max()
    out = {r["condition"]: r for r in interchange(hm, site, view, pairs, {}, seeds=(0,), only_correct=False)}
    pred = ref[rows, ap].argmax(-1)
    assert out["all"]["n"] == pairs.n
    assert out["all"]["iia"] == pytest.approx(float((pred == pairs.clean_answer).float().mean()))
    assert out["all"]["changed"] == pytest.approx(float((pred != pairs.corrupted_answer).float().mean()))
    un = clean_x[rows, ap].argmax(-1)                             # nothing aligned (empty ranking): unedited
    assert out["aligned"]["changed"] == pytest.approx(float((un != pairs.corrupted_answer).float().mean()))


def test_transcoder_latents_read_input_and_interchange_lands_at_target():
    m = tiny()
    hm = hooks.wrap(m)
    s, t = SaeSite("blocks.0.resid_mid"), SaeSite("blocks.0.mlp_out")
    coder = C.new(32, 4, 24, seed=1, transcode=True)
    view = transcoder_view(coder, s, t, 32)
    b = generate("mqar", 12, seed=5, **KNOBS)
    _, cache = hm.run_with_cache(b.tokens, names=[s.name])
    X = cache[s.name].float()
    table, ranking, _ = groundtruth(view, X, b, "bound_value", probe=False)
    bb, tt, y = points(b, "bound_value")
    ref, _ = best_features(C.dense_latents(coder, X[bb, tt]).detach().numpy(), y.numpy())
    assert table.equals(ref)
    pairs = make_pairs("mqar", 5, seed=3, **KNOBS)
    rows, ap = torch.arange(pairs.n), pairs.answer_pos
    xs = hm.run_with_cache(pairs.clean, names=[s.name])[1][s.name][rows, ap].float()
    xb = hm.run_with_cache(pairs.corrupted, names=[s.name])[1][s.name][rows, ap].float()
    delta = (C.reconstruct(coder, xs) - C.reconstruct(coder, xb)).detach()

    def fn(x, name):
        x = x.clone()
        x[rows, ap] += delta.to(x.dtype)
        return x
    ref = hm.run_with_hooks(pairs.corrupted, hooks=[(t.name, fn)])[rows, ap].argmax(-1)
    out = {r["condition"]: r for r in interchange(hm, s, view, pairs, {}, seeds=(0,), only_correct=False)}
    assert out["all"]["changed"] == pytest.approx(float((ref != pairs.corrupted_answer).float().mean()))
    assert out["all"]["iia"] == pytest.approx(float((ref == pairs.clean_answer).float().mean()))


def test_rank1_and_transcoder_evals_carry_groundtruth_and_interchange():
    m = tiny()
    site = SaeSite("blocks.0.rec.write_kd", head=0)
    ev = run_eval_rank1(m, R.Rank1Coder(16, 16, 24, 2), site, "mqar", KNOBS, n=16, target="bound_value",
                          n_pairs=8, seeds=(0,))
    assert {"quality", "splice", "groundtruth", "needed"} <= set(ev.section)
    au = ev.get("groundtruth", "auroc").value
    assert len(au) and au.between(0, 1).all()
    from interp.sae.transcode import run_eval_transcoder
    ev = run_eval_transcoder(m, C.new(32, 4, 24, transcode=True), SaeSite("blocks.0.resid_mid"),
                             SaeSite("blocks.0.mlp_out"), "mqar", KNOBS, n=16, target_label="bound_value",
                             n_pairs=8, seeds=(0,), probe=False)
    assert {"groundtruth"} <= set(ev.section) and "needed" not in set(ev.section)


def _trained_rank1(tmp_path, capsys) -> list:
    """The CLI options of a tiny model's head-1 write site, after `interp sae train --rank1` into tmp/r1."""
    save_model(tiny(), tmp_path / "model")
    base = ["--model", str(tmp_path / "model"), "--site", "blocks.0.rec.write_kd", "--head", "1",
            "--knob", "n_pairs=4"]
    assert main(["sae", "train", *base, "--rank1", "--k", "2", "--features", "8", "--steps", "2",
                 "--batch-size", "2", "--out", str(tmp_path / "r1")]) == 0
    capsys.readouterr()
    return base


def test_cli_eval_rank1_groundtruth(tmp_path, capsys):
    base = _trained_rank1(tmp_path, capsys)
    assert main(["sae", "eval", "--coder", str(tmp_path / "r1"), *base, "--n", "12", "--n-pairs", "6",
                 "--no-probe"]) == 0
    out = capsys.readouterr().out
    assert "auroc_mean" in out and "kl[sae]" in out


def test_cli_eval_records_its_settings_and_checks_the_coders_model(tmp_path, capsys):
    """sae eval writes <out>/sae_eval.json first (interp.oneshot): other settings are refused until --overwrite; a
    coder is evaluated only on the model its run trained on; fewer --steps than a run has done are refused."""
    base = _trained_rank1(tmp_path, capsys)
    ev = ["sae", "eval", "--coder", str(tmp_path / "r1"), *base, "--n-pairs", "6", "--no-probe"]
    assert main(ev + ["--n", "12"]) == 0
    made = json.loads((tmp_path / "r1" / "eval" / "sae_eval.json").read_text())["spec"]
    assert made["n"] == 12 and made["site"] == "blocks.0.rec.write_kd.head1" and len(made["coder"]) == 16
    capsys.readouterr()
    assert main(ev + ["--n", "10"]) == 2
    assert "sae_eval.csv was made with other settings (sae_eval.json: n: 12 -> 10)" in capsys.readouterr().err
    assert main(ev + ["--n", "10", "--overwrite"]) == 0
    save_model(tiny(seed=5), tmp_path / "other")
    other = [*ev[:4], "--model", str(tmp_path / "other"), *base[2:], "--n-pairs", "6", "--no-probe", "--n", "10"]
    capsys.readouterr()
    assert main(other + ["--out", str(tmp_path / "e2")]) == 2
    assert "the coder was trained on model" in capsys.readouterr().err and not (tmp_path / "e2").exists()
    train = ["sae", "train", *base, "--rank1", "--k", "2", "--features", "8", "--batch-size", "2", "--out",
             str(tmp_path / "r1")]
    assert main(train + ["--steps", "1"]) == 2
    assert "holds a coder trained for 2 steps, more than the 1 asked for" in capsys.readouterr().err


# --- the WriteSAE substitution protocol -----------------------------------------------------------------
def _subst_setup(coder=None, n=4):
    from interp.sae import substitute as S
    m = tiny()
    hm = hooks.wrap(m)
    site = SaeSite("blocks.0.rec.write_kd", head=HEAD)
    b = generate("mqar", n, seed=11, **KNOBS)
    coder = coder or _exact_coder(hm, site, b.tokens)
    wc = S.write_coder(m, coder, site)
    from interp.sae.evaluate import clean_run
    clean, X, cache = clean_run(hm, wc.site, b.tokens)
    return S, m, hm, wc, b, clean, X, cache


def _subst_logits(S, hm, wc, b, X, cache, mask, cond):
    from interp.tasks.vocab import PAD
    fns = S.edits(wc, X[b.tokens != PAD].mean(0), b.tokens.shape)
    return hm.run_with_hooks(b.tokens, hooks=splice_hooks(wc.site, fns[cond], mask, family_of(hm, 0), cache))


@pytest.mark.parametrize("where", ["firing", "all"])
def test_substitution_identity_and_exact_atom_change_nothing_zero_equals_hooks(where):
    S, m, hm, wc, b, clean, X, cache = _subst_setup()
    mask = S.positions(wc, X, b, where)
    assert mask.any() and (where == "all" or (mask.sum(1) <= 1).all())
    for cond in ("identity", "atom", "reconstruction"):   # one atom per write, the write itself (k = 1)
        lg = _subst_logits(S, hm, wc, b, X, cache, mask, cond)
        assert torch.allclose(lg, clean, atol=1e-4), (cond, (lg - clean).abs().max())
    lg = _subst_logits(S, hm, wc, b, X, cache, mask, "zero")

    def zero_k(x, name):                                  # hooks-level: the head's write_k zeroed there
        x = x.clone()
        x[..., HEAD, :][mask] = 0
        return x
    ref = hm.run_with_hooks(b.tokens, hooks=[("blocks.0.rec.write_k", zero_k)])
    assert (ref - clean).abs().max() > 1e-3
    assert torch.allclose(lg, ref, atol=1e-4), (lg - ref).abs().max()


def test_substitution_rows_and_random_atom_norm():
    S, m, hm, wc, b, clean, X, cache = _subst_setup(R.Rank1Coder(16, 16, 12, 2, seed=3), n=6)
    fns = S.edits(wc, X[0, 0], b.tokens.shape, seed=1)
    x = X[0, 2:5]
    bb, tt = torch.zeros(3, dtype=torch.long), torch.arange(2, 5)
    ra, at = fns["random_atom"](x, bb, tt).view(3, 16, 16), fns["atom"](x, bb, tt).view(3, 16, 16)
    assert torch.allclose(ra.flatten(1).norm(dim=1), at.flatten(1).norm(dim=1), atol=1e-5)
    assert (torch.linalg.matrix_rank(ra) <= 1).all() and (torch.linalg.matrix_rank(at) <= 1).all()
    rows = S.substitution_rows(hm, wc, b, "all", n_boot=200)
    get = {(r["condition"], r["metric"]): r for r in rows}
    assert abs(get["identity", "kl"]["value"]) < 1e-8 and abs(get["identity", "d_loss"]["value"]) < 1e-5
    assert get["zero", "kl"]["value"] > 1e-4 and get["zero", "kl"]["lo"] <= get["zero", "kl"]["value"] <= get["zero", "kl"]["hi"]
    assert 0 <= get["atom", "win_vs_zero"]["value"] <= 1 and get["atom", "kl"]["n"] == 6


def test_cli_eval_substitution(tmp_path, capsys):
    base = _trained_rank1(tmp_path, capsys)
    assert main(["sae", "eval", "--coder", str(tmp_path / "r1"), *base, "--n", "6", "--substitution", "firing"]) == 0
    out = capsys.readouterr().out
    assert "kl[atom]" in out and "win_vs_zero[atom]" in out
    assert (tmp_path / "r1" / "eval" / "substitution_firing.csv").is_file()
