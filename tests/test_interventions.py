"""Subspace interchange interventions and DAS (interp.interventions): the op against float64 formulas,
identity = full patch (interp.patching.run_patched), state interchanges continue the recurrence, bad
inputs, DAS on a trained model beats random subspaces, files, the CLI commands."""
import argparse
import json
import sys

import pytest
import torch

import hooks
from hooks.names import HookNameError
from interp import InterpError, interventions as iv, patching, tasks
from interp.tasks import VOCAB, PairBatch, TaskError
from interp.zoo import HybridLM, ZooConfig

torch.set_num_threads(1)   # 2 shared cores: more threads only wait on each other
KN = dict(n_pairs=2, n_keys=4, n_values=4, n_queries=1)   # mqar prompts of 8 tokens


@pytest.fixture(scope="module")
def zoo():
    torch.manual_seed(0)
    cfg = ZooConfig(vocab_size=len(VOCAB), d_model=32, n_layers=3, layout="gdn@1", n_heads=2, head_dim=16)
    return HybridLM(cfg).eval()


@pytest.fixture(scope="module")
def llama():
    from transformers import AutoModelForCausalLM, LlamaConfig
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture(scope="module")
def pairs():
    return tasks.make_pairs("mqar", 6, seed=0, **KN)


@torch.no_grad()
def self_answered(model, n, T=8, seed=0):
    """Pairs for an untrained model: a shared random context, the last token differing (token 3 or 4),
    each prompt's answer the model's own argmax at the last token; pairs whose answers differ."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(10, len(VOCAB), (n, T), generator=g)
    b = a.clone()
    a[:, -1], b[:, -1] = 3, 4
    hm = hooks.wrap(model)
    pa, pb = hm(a)[:, -1].argmax(-1), hm(b)[:, -1].argmax(-1)
    m = pa != pb
    last = torch.full((int(m.sum()),), T - 1)
    return PairBatch(a[m], b[m], last, pa[m], pb[m], last, {"task": "self_answered"})


def full_patch(model, pairs, site, layer, pos, head=None):
    """interp.patching's full patch with base = corrupted, source = clean, logits at the answers."""
    lg = patching.run_patched(model, pairs.corrupted, pairs.clean, site, layer, position=pos, head=head)
    return lg[torch.arange(len(pairs)), pairs.answer_pos]


# --- the op --------------------------------------------------------------------------------------
def test_bases_and_interchange_formula():
    R = iv.random_basis(10, 3, seed=4)
    assert R.shape == (3, 10)
    torch.testing.assert_close(R @ R.T, torch.eye(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(iv.random_basis(10, 3, seed=4), R)           # seeded
    M = torch.randn(3, 10, dtype=torch.float64)
    Q = iv.orthonormalize(M)
    P = Q.T @ Q
    torch.testing.assert_close(P, M.T @ torch.linalg.solve(M @ M.T, M))      # same row space
    hb, hs = torch.randn(5, 10), torch.randn(5, 10)
    ref = hb.double() + (hs.double() - hb.double()) @ R.double().T @ R.double()
    torch.testing.assert_close(iv.interchange(hb, hs, R).double(), ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(iv.interchange(hb, hs, torch.eye(10)), hs)    # identity: full patch


def test_probe_basis_spans_centred_scaled_directions():
    W, sd = torch.randn(4, 12, dtype=torch.float64), torch.rand(12, dtype=torch.float64) + 0.5
    R = iv.probe_basis(W, scale=sd).double()
    assert R.shape == (3, 12)                                              # 4 classes, centred: 3 directions
    D = W / sd - (W / sd).mean(0)
    torch.testing.assert_close(D @ R.T @ R, D, atol=1e-6, rtol=0)          # D lies in span(R)


def _float64_state(Sb, Ss, R, side, head):
    """The docs' formulas, written independently: S [N, H, K, V]."""
    Sb, Ss, P = Sb.double(), Ss.double(), R.double().T @ R.double()
    H, K, V = Sb.shape[1:]
    d = Ss - Sb
    if head is not None:
        out = Sb.clone()
        out[:, head] += P @ d[:, head] if side == "key" else d[:, head] @ P
        return out
    if side == "key":    # (H*K) x V matrix
        return Sb + (P @ d.reshape(-1, H * K, V)).reshape(Sb.shape)
    Dm = d.permute(0, 2, 1, 3).reshape(-1, K, H * V)                        # K x (H*V) matrix
    return Sb + (Dm @ P).reshape(-1, K, H, V).permute(0, 2, 1, 3)


@pytest.mark.parametrize("side,head", [("key", None), ("value", None), ("key", 1), ("value", 0)])
def test_state_sides_match_float64_formula(side, head):
    torch.manual_seed(0)             # (unseeded, the draws followed the tests run before: one order left 1.1e-6)
    Sb, Ss = torch.randn(3, 2, 4, 5), torch.randn(3, 2, 4, 5)
    site = iv.Site("blocks.0.rec.state", head=head, side=side)
    w = site.width((1, 1, 2, 4, 5))
    R = iv.random_basis(w, 2, seed=1)
    got = site.unvectors(iv.interchange(site.vectors(Sb), site.vectors(Ss), R), Sb)
    torch.testing.assert_close(got.double(), _float64_state(Sb, Ss, R, side, head), atol=1e-6, rtol=0)
    k = torch.randn(3, 2, 4)
    u = k.double() / k.double().norm(dim=-1, keepdim=True)
    ref = Sb.double() + torch.einsum("nhk,nhj,nhjv->nhkv", u, u, (Ss - Sb).double())
    torch.testing.assert_close(iv.write_key_interchange(Sb, Ss, k).double(), ref, atol=1e-6, rtol=1e-6)
    vb = torch.einsum("nhk,nhkv->nhv", u, ref)                              # the write key now reads v_src
    torch.testing.assert_close(vb, torch.einsum("nhk,nhkv->nhv", u, Ss.double()), atol=1e-6, rtol=0)


# --- on models -----------------------------------------------------------------------------------
CASES = [("resid_pre", 1, None, None), ("attn.head_out", 1, None, None), ("attn.head_out", 1, 1, None),
         ("rec.state", 0, None, "key"), ("rec.state", 2, None, "value"), ("rec.state", 2, 1, "key"),
         ("rec.k", 2, 0, None)]


@pytest.mark.parametrize("site,layer,head,side", CASES)
def test_identity_basis_equals_full_patch(zoo, pairs, site, layer, head, side):
    pos = int(pairs.answer_pos[0]) - (1 if site == "rec.state" else 0)
    s = iv.Site(f"blocks.{layer}.{site}", head=head, side=side)
    ix = iv.Interchanger(zoo, pairs, s, positions=[pos], order="corrupted_base")
    with torch.no_grad():
        got = ix.logits(torch.eye(ix.width))
        full = ix.logits(None)
    ref = full_patch(zoo, pairs, site, layer, pos, head)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("site", ["blocks.1.resid_pre", "blocks.2.attn.head_out"])
def test_identity_equals_full_patch_hf_llama(llama, pairs, site):
    ix = iv.Interchanger(llama, pairs, iv.Site(site), positions=["answer"], order="corrupted_base")
    with torch.no_grad():
        got = ix.logits(torch.eye(ix.width))
    short, layer = site.split(".", 2)[2], int(site.split(".")[1])
    torch.testing.assert_close(got, full_patch(llama, pairs, short, layer, int(pairs.answer_pos[0])),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_name,site", [("zoo", "blocks.1.resid_pre"), ("zoo", "blocks.1.attn.head_out"),
                                             ("llama", "blocks.2.resid_pre")])
def test_random_subspace_matches_float64(request, pairs, model_name, site):
    """The edited activation the model runs on equals h_b + R^T R (h_s - h_b) in float64, at the
    chosen positions only (other positions keep the base's), and later blocks see it."""
    model = request.getfixturevalue(model_name)
    hm = hooks.wrap(model)
    s = iv.Site(site)
    ix = iv.Interchanger(hm, pairs, s, positions=["answer", "write"], order="clean_base")
    R = iv.random_basis(ix.width, 3, seed=7)
    with torch.no_grad():
        _, cb = hm.run_with_cache(pairs.clean, names=[site])
        _, cs = hm.run_with_cache(pairs.corrupted, names=[site])
        seen = {}
        pos = ix.pos

        def fn(x, name):
            y = iv.edit_site(x, s, pos, ix.src, R)
            seen["x"] = y
            return y
        with hm.logits_at(pairs.answer_pos):
            lg = hm.run_with_hooks(pairs.clean, hooks=[(site, fn)])[:, 0]
    hb, hs = cb[site].double().flatten(2), cs[site].double().flatten(2)
    ref = hb.clone()
    r = torch.arange(len(pairs))
    for j in range(pos.shape[1]):
        p = pos[:, j]
        ref[r, p] = hb[r, p] + (hs[r, p] - hb[r, p]) @ R.double().T @ R.double()
    torch.testing.assert_close(seen["x"].double().flatten(2), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ix.logits(R).detach(), lg, atol=1e-5, rtol=1e-5)   # start_at path = plain run


def test_state_interchange_continues_recurrence(zoo, pairs):
    """A key-side rank-2 interchange of S_t (t = answer-1) equals a manual state patch with the
    float64-formula state: later readouts (and the answer) change, the state after t evolves from it."""
    hm = hooks.wrap(zoo)
    name, t = "blocks.2.rec.state", int(pairs.answer_pos[0]) - 1
    s = iv.Site(name, side="key")
    ix = iv.Interchanger(hm, pairs, s, order="clean_base")
    assert ix.pos[:, 0].tolist() == [t] * len(pairs)                       # default: just before the query
    R = iv.random_basis(ix.width, 2, seed=3)
    with torch.no_grad():
        _, cb = hm.run_with_cache(pairs.clean, names=[name])
        _, cs = hm.run_with_cache(pairs.corrupted, names=[name])
        St = _float64_state(cb[name][:, t], cs[name][:, t], R, "key", None).float()

        def put(S, _):
            S = S.clone()
            S[:, t] = St
            return S
        manual, after = hm.run_with_cache(pairs.clean, names=[name], hooks=[(name, put)])
        ours = ix.logits(R)
        plain = zoo(pairs.clean)
    r = torch.arange(len(pairs))
    torch.testing.assert_close(ours, manual[r, pairs.answer_pos], atol=1e-5, rtol=1e-5)
    assert (ours - plain[r, pairs.answer_pos]).abs().max() > 1e-4          # the answer saw the edit
    torch.testing.assert_close(after[name][:, t], St)
    assert (after[name][:, t + 1] - cb[name][:, t + 1]).abs().max() > 1e-6   # the recurrence continued from it


def test_write_key_interchange_on_model(zoo, pairs):
    hm = hooks.wrap(zoo)
    name = "blocks.0.rec.state"
    ix = iv.Interchanger(hm, pairs, iv.Site(name), order="clean_base")
    with torch.no_grad():
        lg = ix.logits("write_key")
        _, ck = hm.run_with_cache(pairs.clean, names=["blocks.0.rec.k"])
    r = torch.arange(len(pairs))
    k = ck["blocks.0.rec.k"][r, pairs.diff_pos]                             # base's key at the changed fact
    torch.testing.assert_close(ix.write_keys()[:, 0], k)
    p = ix.pos[:, 0]
    with torch.no_grad():
        _, cb = hm.run_with_cache(pairs.clean, names=[name])
        new = iv.write_key_interchange(cb[name][r, p], ix.src[:, 0], k)

        def put(S, _):
            S = S.clone()
            S[r, p] = new
            return S
        ref = hm.run_with_hooks(pairs.clean, hooks=[(name, put)])[r, pairs.answer_pos]
    torch.testing.assert_close(lg, ref, atol=1e-5, rtol=1e-5)


def test_pairs_positions_and_intervene_table(zoo, pairs, tmp_path):
    ip = iv.interchange_pairs(pairs, "both")
    n = len(pairs)
    assert torch.equal(ip.base[:n], pairs.corrupted) and torch.equal(ip.source[:n], pairs.clean)
    assert torch.equal(ip.source_answer[n:], pairs.corrupted_answer) and ip.base_is_clean[n:].all()
    pos = iv.resolve_positions(["answer-1", "write+1", 2], ip, iv.Site("blocks.0.resid_pre"))
    assert torch.equal(pos[:, 0], ip.answer_pos - 1) and torch.equal(pos[:, 1], ip.write_pos + 1)
    sp = self_answered(zoo, 12, seed=1)
    res = iv.intervene(zoo, sp, "blocks.1.resid_pre", subspaces=["full", "random", {"mine": torch.eye(32)[:4]}],
                       rank=2, seeds=[0, 1], model_name="tiny")
    assert list(res["subspace"]) == ["full", "random", "random", "mine"]
    assert (res["n"] == 2 * len(sp)).all() and res.attrs["spec"]["n_kept"] == 2 * len(sp)
    assert res[res.subspace == "full"].iia.item() > 0.5
    s = res.summary()
    assert s[s.subspace == "random"].seeds.item() == 2
    paths = res.save(tmp_path, "t")
    assert all(p.is_file() for p in paths) and len(paths) == 3


def test_bad_inputs(zoo, pairs):
    hm = hooks.wrap(zoo)
    with pytest.raises(InterpError, match="rank 40 is not valid for a site of width 32"):
        iv.random_basis(32, 40)
    with pytest.raises(HookNameError, match="close matches: blocks.0.rec.state"):
        iv.Interchanger(hm, pairs, iv.Site("blocks.0.rec.stat"))
    with pytest.raises(HookNameError, match="layer 9 out of range"):
        iv.Interchanger(hm, pairs, iv.Site("blocks.9.resid_pre"))
    with pytest.raises(HookNameError, match="has no attention"):
        iv.Interchanger(hm, pairs, iv.Site("blocks.0.attn.head_out"))
    with pytest.raises(InterpError, match="side 'key' applies only to rec.state"):
        iv.Site("blocks.0.resid_pre", side="key")
    with pytest.raises(InterpError, match="has no heads"):
        iv.Site("blocks.0.resid_pre", head=0)
    with pytest.raises(InterpError, match="cannot be intervened on"):
        iv.Site("blocks.1.attn.pattern")
    with pytest.raises(InterpError, match="head 5 out of range"):
        iv.Interchanger(hm, pairs, iv.Site("blocks.0.rec.state", head=5))
    with pytest.raises(InterpError, match="outside the prompts"):
        iv.Interchanger(hm, pairs, iv.Site("blocks.0.resid_pre"), positions=["answer+3"])
    with pytest.raises(InterpError, match="has width 16 but the site has width 32"):
        iv.intervene(hm, pairs, "blocks.0.resid_pre", subspaces=[torch.randn(2, 16)])
    with pytest.raises(InterpError, match="rank-deficient"):
        iv.intervene(hm, pairs, "blocks.0.resid_pre", subspaces=[torch.ones(2, 32)])
    with pytest.raises(InterpError, match="rank 33 is not valid"):
        iv.train_das(hm, pairs, "blocks.0.resid_pre", rank=33)
    with pytest.raises(InterpError, match="write-key interchange acts on a recurrent state"):
        iv.intervene(hm, pairs, "blocks.0.resid_pre", subspaces=["write_key"])
    with pytest.raises(InterpError, match="no training pair is answered correctly"):
        iv.train_das(hm, pairs, "blocks.0.resid_pre", rank=1)              # untrained: nothing kept


# --- DAS -----------------------------------------------------------------------------------------
def test_das_through_state_trains_and_saves(zoo, tmp_path):
    """DAS on a recurrent state's key side, at the last token (its readout feeds the answer: gradients
    go through the state hook's re-run of the recurrence): the training loss falls, R stays
    orthonormal, same seed -> same R, files round-trip."""
    sp = self_answered(zoo, 40, seed=2)
    cfg = dict(rank=2, epochs=3, batch_size=8, lr=0.05, random_seeds=(0, 1), positions=["answer"])
    res = iv.train_das(zoo, sp, iv.Site("blocks.2.rec.state", side="key"), model_name="tiny", **cfg)
    h = res.history()
    assert h.train_loss.iloc[-1] < h.train_loss.iloc[0]
    torch.testing.assert_close(res.R @ res.R.T, torch.eye(2), atol=1e-5, rtol=0)
    assert set(zip(res.subspace, res.split)) == {("das", "train"), ("das", "val"), ("das", "test"),
                                                  ("random", "test"), ("full", "test")}
    spec = res.attrs["spec"]
    assert sorted(sum(spec["splits"].values(), [])) == list(range(len(sp)))     # every pair in one split
    assert spec["config"]["seed"] == 0 and spec["width"] == 32
    again = iv.train_das(zoo, sp, iv.Site("blocks.2.rec.state", side="key"), **{**cfg, "epochs": 1})
    first = iv.train_das(zoo, sp, iv.Site("blocks.2.rec.state", side="key"), **{**cfg, "epochs": 1})
    torch.testing.assert_close(again.R, first.R, atol=0, rtol=0)
    paths = res.save(tmp_path, "das")
    R, sp2 = iv.load_subspace(tmp_path / "das.safetensors")
    torch.testing.assert_close(R, res.R)
    assert sp2["rank"] == 2 and len(sp2["history"]) == len(h) and len(paths) == 5
    assert json.loads((tmp_path / "das.spec.json").read_text())["site"] == "blocks.2.rec.state"


def test_das_beats_random_on_trained_model():
    """On the shipped gdn100 (trained on mqar), DAS at the query's residual stream in layer 11 switches
    held-out answers far more often than random subspaces of the same rank."""
    from interp.demo import load_defaults
    model = load_defaults(["gdn100"])["gdn100"]
    p = tasks.make_pairs("mqar", 96, seed=0, n_pairs=2)
    res = iv.train_das(model, p, "blocks.11.resid_pre", rank=8, epochs=8, batch_size=16, lr=0.02,
                       random_seeds=(0, 1, 2), model_name="gdn100")
    s = res.summary().set_index(["subspace", "split"])
    assert s.loc[("full", "test"), "iia"] == 1.0
    assert s.loc[("das", "test"), "n"] >= 30 and s.loc[("das", "train"), "iia"] > 0.8
    assert s.loc[("das", "test"), "iia"] >= s.loc[("random", "test"), "iia"] + 0.3


# --- CLI -----------------------------------------------------------------------------------------
def cli(argv):
    """`interp <argv>` through interp.cli.main once the commands are registered there; until then the
    same parse / run / 'error: ...' exit 2 with a parser holding only these two commands."""
    import interp.cli as C
    from interp.cli import das, intervene
    if argv[0] in C.build_parser()._subparsers._group_actions[0].choices:
        return C.main(argv)
    p = argparse.ArgumentParser(prog="interp")
    sub = p.add_subparsers(dest="cmd", required=True)
    das.add_parser(sub)
    intervene.add_parser(sub)
    a = p.parse_args(argv)
    try:
        return a.func(a) or 0
    except (InterpError, TaskError, HookNameError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def test_cli_das_and_intervene(tmp_path, capsys):
    common = ["--model", "gdn100", "--task", "mqar", "--knob", "n_pairs=2", "--n", "12", "--out", str(tmp_path)]
    assert cli(["das", *common, "--site", "blocks.11.resid_pre", "--rank", "2", "--epochs", "1",
                "--random-seeds", "0"]) == 0
    stem = tmp_path / "gdn100_mqar_blocks.11.resid_pre_r2"
    for ext in (".csv", ".parquet", ".png", ".safetensors", ".spec.json"):
        assert stem.with_name(stem.name + ext).is_file(), ext
    assert cli(["intervene", *common, "--site", "blocks.0.rec.state", "--subspace", "full", "--subspace",
                "write_key", "--n", "6"]) == 0
    out = capsys.readouterr().out
    assert "write_key" in out and (tmp_path / "gdn100_mqar_blocks.0.rec.state-key.csv").is_file()
    assert cli(["intervene", *common, "--site", "blocks.11.resid_pre", "--subspace",
                str(stem.with_name(stem.name + ".safetensors")), "--n", "4"]) == 0


@pytest.mark.parametrize("args,msg", [
    (["das", "--site", "blocks.0.rec.state", "--rank", "500"], "rank 500 is not valid for a site of width 128"),
    (["das", "--site", "blocks.0.attn.head_out"], "has no attention"),
    (["das", "--site", "blocks.0.resid_pre", "--side", "key"], "applies only to rec.state"),
    (["intervene", "--site", "blocks.0.rec.statee"], "unknown hook name"),
    (["intervene", "--site", "blocks.3.resid_pre", "--subspace", "random", "--rank", "129"], "rank 129"),
])
def test_cli_bad_input_exit_2(args, msg, capsys):
    assert cli([args[0], "--model", "gdn100", "--n", "2", *args[1:]]) == 2
    assert msg in capsys.readouterr().err


def test_cli_wrong_shape_subspace_exit_2(tmp_path, capsys):
    iv.save_subspace(torch.eye(16)[:2], {}, tmp_path / "bad")
    assert cli(["intervene", "--model", "gdn100", "--n", "2", "--site", "blocks.1.resid_pre", "--subspace",
                str(tmp_path / "bad.safetensors")]) == 2
    assert "has width 16 but the site has width 128" in capsys.readouterr().err


def test_cli_outputs_record_what_made_them(tmp_path, capsys):
    """das and intervene write <stem>.json first (interp.oneshot): other settings into the same files are refused,
    naming the field, until --overwrite; a saved subspace is refused at another site or for another model."""
    common = ["--model", "gdn100", "--task", "mqar", "--knob", "n_pairs=2", "--out", str(tmp_path)]
    das = ["das", *common, "--site", "blocks.11.resid_pre", "--rank", "1", "--epochs", "1", "--random-seeds", "0"]
    assert cli(das + ["--n", "12"]) == 0
    stem = tmp_path / "gdn100_mqar_blocks.11.resid_pre_r1"
    csv = stem.with_name(stem.name + ".csv")
    before = csv.read_bytes()
    assert json.loads(stem.with_name(stem.name + ".json").read_text())["spec"]["n"] == 12
    capsys.readouterr()
    assert cli(das + ["--n", "14"]) == 2
    assert "was made with other settings (gdn100_mqar_blocks.11.resid_pre_r1.json: n: 12 -> 14)" in \
        capsys.readouterr().err and csv.read_bytes() == before
    R = str(stem.with_name(stem.name + ".safetensors"))
    iv_args = ["intervene", *common, "--n", "4", "--subspace", R]
    assert cli(iv_args + ["--site", "blocks.10.resid_pre"]) == 2
    assert "learned at another site or model: site 'blocks.11.resid_pre' (here 'blocks.10.resid_pre')" in \
        capsys.readouterr().err
    assert cli([*iv_args[:2], "gdn75", *iv_args[3:], "--site", "blocks.11.resid_pre"]) == 2
    assert "model_digest" in capsys.readouterr().err
    assert cli(iv_args + ["--site", "blocks.11.resid_pre"]) == 0
    assert cli(iv_args + ["--site", "blocks.11.resid_pre", "--seeds", "0,0"]) == 2
    assert "--seeds '0,0' is not valid; valid: distinct" in capsys.readouterr().err
    assert cli(iv_args + ["--site", "blocks.11.resid_pre", "--batch-size", "8"]) == 2
    assert "batch_size: 64 -> 8" in capsys.readouterr().err
    assert cli(iv_args + ["--site", "blocks.11.resid_pre", "--batch-size", "8", "--overwrite"]) == 0
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x89PNG not a tensor file")
    assert cli(iv_args[:-1] + [str(junk), "--site", "blocks.11.resid_pre", "--out", str(tmp_path / "j")]) == 2
    assert "not a readable safetensors file" in capsys.readouterr().err
