"""interp.sae transcoders and rank-1 write dictionaries: training lowers the target's FVU, splicing the true
target changes nothing, the saved transcoder loads in eai-sparsify, the rank-1 reconstruction and its
factored FVU against float64 references, a rank-1 toy reconstructed exactly, resume refusals, CLI errors.
Small and CPU-only."""
import pytest
import torch

import hooks
from interp.cli import main
from interp.sae import SaeSite, train
from interp.sae import coder as C
from interp.sae import evaluate as E
from interp.sae.transcode import PairSource, input_hook, pair_vectors, predict, run_eval_transcoder
from interp.tasks import VOCAB, generate
from interp.zoo import HybridLM
from interp.zoo.config import ZooConfig
from interp.zoo.io import save_model

pytest.importorskip("sparsify")
KNOBS = {"n_pairs": 4}


def tiny(layout="gdn100", seed=0):
    torch.manual_seed(seed)
    cfg = ZooConfig(vocab_size=len(VOCAB), d_model=32, n_layers=2, layout=layout, n_heads=2, head_dim=16,
                    mamba_head_dim=16, mamba_state=8)
    return HybridLM(cfg).eval()


@pytest.mark.parametrize("inp,out", [("blocks.0.resid_mid", "blocks.0.mlp_out"),
                                     ("blocks.0.resid_pre", "blocks.0.rec.write_kd")])
def test_transcoder_fvu_falls_and_loads_in_sparsify(tmp_path, inp, out):
    import sparsify
    m = tiny()
    s, t = SaeSite(inp), SaeSite(out)
    src = PairSource(m, s, t, "mqar", KNOBS, batch_size=6)
    res = train(m, s, src, k=4, features=48, steps=40, lr=1e-2, target=t, out=tmp_path / "run",
                save_every=20, progress=False)
    f = res.metrics.fvu.to_numpy()
    assert f[-5:].mean() < 0.9 * f[:3].mean()
    X, Y = pair_vectors(hooks.wrap(m), s, t, generate("mqar", 4, seed=5, **KNOBS).tokens)
    X, Y = X.flatten(0, 1), Y.flatten(0, 1)
    loaded = sparsify.SparseCoder.load_from_disk(res.path)
    assert loaded.cfg.transcode
    y_lib = loaded(C.pad(X, loaded.d_in), y=C.pad(Y, loaded.d_in)).sae_out[:, :Y.shape[1]]
    torch.testing.assert_close(y_lib, predict(res.coder, X, Y.shape[1]), atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        q = E.quality(res.coder, X, Y=Y)  # FVU of the raw target (the folded coder acts on raw rows)
        fvu = float((Y - predict(res.coder, X, Y.shape[1])).pow(2).sum() / (Y - Y.mean(0)).pow(2).sum())
    assert abs(q["fvu"] - fvu) < 1e-6 and fvu < 0.95


@pytest.mark.parametrize("inp,out,head", [("blocks.0.resid_mid", "blocks.0.mlp_out", None),
                                          ("blocks.0.resid_pre", "blocks.0.rec.write_kd", 1),
                                          ("blocks.0.rec.readout", "blocks.1.resid_mid", None)])
def test_splicing_the_true_target_changes_nothing(inp, out, head):
    """The transcoder's splice with a perfect transcoder (the edit returns the true target, computed from
    the clean run) leaves logits unchanged; replacing it with zeros does change them; the input hook sees
    the input of the running forward."""
    hm = hooks.wrap(tiny())
    b = generate("mqar", 4, seed=1, **KNOBS)
    s, t = SaeSite(inp), SaeSite(out, head)
    X, Y = pair_vectors(hm, s, t, b.tokens)
    box = {}

    def true_target(y, rows, pos):
        assert torch.equal(s.flat(box["x"][rows, pos][:, None])[:, 0], X[rows, pos])
        return Y[rows, pos].to(y.dtype)
    rows = E.splice(hm, t, None, b, edit=true_target, hooks=[input_hook(s, box)])
    sae = next(r for r in rows if r["condition"] == "sae")
    assert sae["kl"] < 1e-7 and sae["d_accuracy"] == 0 and abs(sae["d_answer_ce"]) < 1e-5
    rows = E.splice(hm, t, None, b, edit=lambda y, r, p: torch.zeros_like(y), hooks=[input_hook(s, box)])
    assert next(r for r in rows if r["condition"] == "sae")["kl"] > 1e-5  # the splice does act


def test_transcoder_eval_table(tmp_path):
    m = tiny()
    s, t = SaeSite("blocks.0.resid_mid"), SaeSite("blocks.0.mlp_out")
    res = train(m, s, PairSource(m, s, t, "mqar", KNOBS, batch_size=4), k=4, features=32, steps=3, target=t,
                progress=False)
    ev = run_eval_transcoder(m, res.coder, s, t, "mqar", KNOBS, n=12)
    assert set(ev.section) == {"quality", "splice"}
    assert set(ev.get("splice").condition) == {"clean", "sae", "mean"}
    assert all(p.exists() for p in ev.save(tmp_path / "ev"))


def test_transcoder_resume_equals_uninterrupted_and_refuses_changed_target(tmp_path):
    m = tiny()
    s, t = SaeSite("blocks.0.resid_mid"), SaeSite("blocks.0.mlp_out")
    kw = dict(k=4, features=16, lr=3e-3, save_every=2, progress=False, target=t)
    src = lambda tt=t: PairSource(m, s, tt, "mqar", KNOBS, batch_size=4)  # noqa: E731
    full = train(m, s, src(), steps=6, out=tmp_path / "a", **kw)
    train(m, s, src(), steps=3, out=tmp_path / "r", **kw)        # stopped after step 3 (checkpoints at 2, 3)
    resumed = train(m, s, src(), steps=6, out=tmp_path / "r", **kw)
    for (n, p), q in zip(full.coder.state_dict().items(), resumed.coder.state_dict().values()):
        assert torch.equal(p, q), n
    assert full.metrics.fvu.tolist() == resumed.metrics.fvu.tolist() and resumed.scale == full.scale
    t2 = SaeSite("blocks.0.resid_post")
    with pytest.raises(Exception, match="other settings.*target"):
        train(m, s, src(t2), steps=6, out=tmp_path / "r", **{**kw, "target": t2})


def _cli(tmp_path, capsys, *argv):
    rc = main(["sae", "train", "--model", str(tmp_path / "model"), *argv])
    return rc, capsys.readouterr().err.strip()


def test_cli_transcode_bad_input_exits_2(tmp_path, capsys):
    save_model(tiny(), tmp_path / "model")
    for argv, word in [(["--site", "blocks.0.mlp_out", "--transcode", "--target", "blocks.0.resid_mid"], "before"),
                       (["--site", "blocks.0.resid_mid", "--transcode"], "--target"),
                       (["--site", "blocks.0.resid_mid", "--target", "blocks.0.mlp_out"], "--transcode"),
                       (["--site", "blocks.0.rec.state", "--transcode", "--target", "blocks.0.mlp_out"], "input"),
                       (["--site", "blocks.0.resid_mid", "--transcode", "--target", "blocks.0.nope"], "valid")]:
        rc, err = _cli(tmp_path, capsys, *argv)
        assert rc == 2 and err.count("\n") == 0 and err.startswith("error:") and word in err, (argv, err)
    rc, _ = _cli(tmp_path, capsys, "--site", "blocks.0.resid_mid", "--transcode", "--target", "blocks.0.mlp_out",
                 "--k", "2", "--features", "8", "--steps", "2", "--batch-size", "2", "--knob", "n_pairs=4",
                 "--out", str(tmp_path / "cli"))
    assert rc == 0 and (tmp_path / "cli" / "coder" / "interp.json").is_file()
    rc = main(["sae", "eval", "--coder", str(tmp_path / "cli"), "--model", str(tmp_path / "model"),
               "--site", "blocks.0.resid_mid", "--n", "6", "--knob", "n_pairs=4"])
    assert rc == 0 and "fvu" in capsys.readouterr().out


# --- rank-1 write dictionaries -------------------------------------------------------------------------
from interp.sae import rank1 as R
from interp.sae.run import run_eval_rank1  # noqa: E402


class Rank1Toy:
    """Factored writes c * u_j v_j^T of 12 planted rank-1 atoms (K = V = 16), split between the factors by a
    random scalar and sign (the write is unchanged), as write_kd rows [N, 32]."""

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.U = torch.nn.functional.normalize(torch.randn(12, 16, generator=g), dim=1)
        self.V = torch.nn.functional.normalize(torch.randn(12, 16, generator=g), dim=1)

    def spec(self):
        return {"kind": "rank1-toy"}

    def rows(self, step):
        g = torch.Generator().manual_seed(500 + step)
        j = torch.randint(0, 12, (96,), generator=g)
        c = 0.5 + torch.rand(96, generator=g)
        s = (0.2 + 3 * torch.rand(96, generator=g)) * (1 - 2 * (torch.rand(96, generator=g) < 0.5).float())
        return torch.cat([self.U[j] * (c * s)[:, None], self.V[j] / s[:, None]], 1)


def test_rank1_matches_float64_reference():
    torch.manual_seed(3)
    coder = R.Rank1Coder(5, 4, 9, 3, seed=1).double()
    with torch.no_grad():
        coder.b_enc.copy_(torch.randn(9, dtype=torch.float64) * 0.1)
    key, val = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 4, dtype=torch.float64)
    acts, idx = coder.encode(key, val)
    W = torch.stack([torch.outer(key[n], val[n]) for n in range(7)])
    with torch.no_grad():
        pre = torch.tensor([[float(coder.p[i] @ W[n] @ coder.q[i] + coder.b_enc[i]) for i in range(9)]
                            for n in range(7)], dtype=torch.float64)
    top = pre.clamp_min(0).topk(3, dim=1)
    assert torch.equal(idx.sort(1).values, top.indices.sort(1).values)
    torch.testing.assert_close(acts.sort(1).values, top.values.sort(1).values, rtol=1e-12, atol=1e-12)
    a2, i2 = coder.encode_full(W)
    torch.testing.assert_close(coder.decode_full(a2, i2), coder.decode_full(acts, idx), rtol=1e-12, atol=1e-12)
    ref = torch.zeros(7, 5, 4, dtype=torch.float64)
    for n in range(7):
        for j in range(3):
            ref[n] += acts[n, j] * torch.outer(coder.u[idx[n, j]], coder.v[idx[n, j]])
    torch.testing.assert_close(coder.decode_full(acts, idx), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(coder.sq_error(key, val, acts, idx), (W - ref).pow(2).sum((1, 2)), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(R.total_variance(key, val), (W - W.mean(0)).pow(2).sum(), rtol=1e-10, atol=1e-10)
    q = R.quality(coder, key, val)
    with torch.no_grad():
        assert abs(q["fvu"] - float((W - ref).pow(2).sum() / (W - W.mean(0)).pow(2).sum())) < 1e-10


def test_rank1_encode_full_in_chunks_matches_einsum():
    c = R.Rank1Coder(64, 8, 4096, 3).double()             # 64 rows per chunk: 130 rows are three chunks
    W = torch.randn(130, 64, 8, dtype=torch.float64)
    acts, idx = c.encode_full(W)
    with torch.no_grad():
        ref = (torch.einsum("nkv,fk,fv->nf", W, c.p, c.q) + c.b_enc).clamp_min(0).topk(3)
    assert torch.equal(idx.sort(1).values, ref.indices.sort(1).values)
    torch.testing.assert_close(acts.sort(1).values, ref.values.sort(1).values, rtol=1e-12, atol=1e-12)


def test_rank1_initialised_from_true_atoms_reconstructs_toy():
    toy = Rank1Toy()
    key, val = R.split_kd(toy.rows(7), 16)
    coder = R.Rank1Coder(16, 16, 12, 1).init_from(toy.U, toy.V)
    assert R.fvu(coder, key, val) < 1e-10
    assert R.fvu(R.Rank1Coder(16, 16, 12, 1, seed=5), key, val) > 0.5  # random atoms do not


def test_rank1_initialised_from_model_writes_splices_exactly():
    """A dictionary whose atoms are the held-out writes themselves (k = 1) reconstructs them (FVU ~ 0) and
    splicing it through the recurrence leaves the answers unchanged; the mean write does not."""
    from interp.sae.data import site_vectors
    from interp.sae.run import EVAL_SEED
    from interp.tasks.vocab import PAD
    m = tiny()
    site = SaeSite("blocks.0.rec.write_kd", head=1)
    b = generate("mqar", 3, seed=EVAL_SEED, **KNOBS)
    X, _ = site_vectors(hooks.wrap(m), site, b.tokens)
    key, val = R.split_kd(X[b.tokens != PAD], 16)
    coder = R.Rank1Coder(16, 16, key.shape[0], 1).init_from(key, val)
    ev = run_eval_rank1(m, coder, site, "mqar", KNOBS, n=3)
    assert ev.get("quality", "fvu").value.iloc[0] < 1e-8
    kl = {r.condition: r.value for r in ev.get("splice", "kl").itertuples()}
    assert kl["sae"] < 1e-6 and kl["mean"] > 20 * kl["sae"], kl


def test_rank1_training_lowers_fvu_and_resumes(tmp_path):
    m = tiny()
    site = SaeSite("blocks.0.rec.write_kd", head=0)
    kw = dict(k=1, features=24, lr=2e-2, save_every=10, progress=False)
    full = R.train_rank1(m, site, Rank1Toy(), steps=60, out=tmp_path / "a", **kw)
    f = full.metrics.fvu.to_numpy()
    assert f[-5:].mean() < 0.5 * f[:3].mean()
    key, val = R.split_kd(Rank1Toy().rows(999) * 3.0, 16)   # raw rows at another scale: the folded coder
    assert R.fvu(full.coder, key, val) < 0.5 * f[:3].mean()
    R.train_rank1(m, site, Rank1Toy(), steps=25, out=tmp_path / "b", **kw)
    resumed = R.train_rank1(m, site, Rank1Toy(), steps=60, out=tmp_path / "b", **kw)
    for (n, p), q in zip(full.coder.state_dict().items(), resumed.coder.state_dict().values()):
        assert torch.equal(p, q), n
    loaded, meta = R.load(full.path)
    assert meta["head"] == 0 and all(torch.equal(p, q) for p, q in zip(loaded.parameters(), full.coder.parameters()))
    with pytest.raises(Exception, match="other settings.*features"):
        R.train_rank1(m, site, Rank1Toy(), steps=60, out=tmp_path / "b", **{**kw, "features": 16})


def test_cli_rank1(tmp_path, capsys):
    save_model(tiny(), tmp_path / "model")
    for argv, word in [(["--site", "blocks.0.rec.write_kd", "--rank1"], "--head"),
                       (["--site", "blocks.0.rec.state", "--head", "0", "--rank1"], "write_kd"),
                       (["--site", "blocks.0.resid_pre", "--rank1", "--transcode", "--target",
                         "blocks.0.rec.write_kd"], "--rank1")]:
        rc, err = _cli(tmp_path, capsys, *argv)
        assert rc == 2 and err.count("\n") == 0 and err.startswith("error:") and word in err, (argv, err)
    save_model(tiny("gdn75"), tmp_path / "hybrid")                      # block 1 is attention
    rc = main(["sae", "train", "--model", str(tmp_path / "hybrid"), "--site", "blocks.1.rec.write_kd", "--head", "0",
               "--rank1", "--steps", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "attention" in err, err
    rc, _ = _cli(tmp_path, capsys, "--site", "blocks.0.rec.write_kd", "--head", "1", "--rank1", "--k", "2",
                 "--features", "8", "--steps", "2", "--batch-size", "2", "--knob", "n_pairs=4",
                 "--out", str(tmp_path / "r1"))
    assert rc == 0 and R.is_rank1(tmp_path / "r1" / "coder")
    rc = main(["sae", "eval", "--coder", str(tmp_path / "r1"), "--model", str(tmp_path / "model"),
               "--site", "blocks.0.rec.write_kd", "--head", "1", "--n", "6", "--knob", "n_pairs=4"])
    out = capsys.readouterr().out
    assert rc == 0 and "fvu" in out and "kl[sae]" in out
