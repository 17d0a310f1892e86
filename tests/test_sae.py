"""interp.sae: factored writes, splicing, training (FVU falls, resume = uninterrupted), saved coders load
in eai-sparsify, ground-truth AUROC, the evaluation table. Small and CPU-only."""
import numpy as np
import pytest
import torch

import hooks
from interp.sae import SaeSite, best_features, run_eval, splice_hooks, train
from interp.sae import coder as C
from interp.sae import writes as W
from interp.sae.evaluate import clean_run
from interp.sae.groundtruth import auroc_all
from interp.tasks import VOCAB, generate
from interp.zoo import HybridLM
from interp.zoo.config import ZooConfig

pytest.importorskip("sparsify")


def tiny(layout="gdn100", seed=0):
    torch.manual_seed(seed)
    cfg = ZooConfig(vocab_size=len(VOCAB), d_model=32, n_layers=2, layout=layout, n_heads=2, head_dim=16,
                    mamba_head_dim=16, mamba_state=8)
    return HybridLM(cfg).eval()


class Toy:
    """Rows that are sparse sums of 24 planted directions in 16 dims (a dictionary can explain them)."""

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.D = torch.nn.functional.normalize(torch.randn(24, 16, generator=g), dim=1)

    def spec(self):
        return {"kind": "toy"}

    def rows(self, step):
        g = torch.Generator().manual_seed(1000 + step)
        z = torch.rand(128, 24, generator=g) * (torch.rand(128, 24, generator=g) < 0.1)
        return z @ self.D


@pytest.mark.parametrize("layout", ["gdn100", "gla100", "mamba2100"])
def test_factored_write_equals_state_difference(layout):
    hm = hooks.wrap(tiny(layout))
    fam = hm.layers[0].rec_family
    b = generate("mqar", 4, seed=0, n_pairs=4)
    names = list(dict.fromkeys([f"blocks.0.rec.{n}" for n in W.needs(fam)] + ["blocks.0.rec.state", "blocks.0.rec.decay"]))
    _, c = hm.run_with_cache(b.tokens, names=names)
    S = c["blocks.0.rec.state"]
    key, val = W.factored(fam, c, 0)
    diff = S - W.decayed(fam, W.previous_states(S), c["blocks.0.rec.decay"])
    assert (W.outer(key, val) - diff).abs().max() < 1e-5
    if fam == "gdn":
        d = W.gdn_delta(c["blocks.0.rec.k"], c["blocks.0.rec.v"], c["blocks.0.rec.beta"], c["blocks.0.rec.decay"], S)
        assert torch.allclose(d, val)


@pytest.mark.parametrize("name,head", [("blocks.0.rec.state", None), ("blocks.0.rec.state", 1),
                                       ("blocks.0.rec.write", None), ("blocks.0.rec.write_kd", 0),
                                       ("blocks.0.rec.readout", None), ("blocks.1.resid_post", None)])
def test_splice_identity_leaves_logits(name, head):
    hm = hooks.wrap(tiny())
    b = generate("mqar", 4, seed=1, n_pairs=4)
    site = SaeSite(name, head)
    clean, X, cache = clean_run(hm, site, b.tokens)
    mask = torch.ones_like(b.tokens, dtype=torch.bool)
    fam = hm.layers[site.layer].rec_family
    same = hm.run_with_hooks(b.tokens, hooks=splice_hooks(site, lambda x, r, t: x.clone(), mask, fam, cache))
    assert (same - clean).abs().max() < 1e-5
    zero = hm.run_with_hooks(b.tokens, hooks=splice_hooks(site, lambda x, r, t: torch.zeros_like(x), mask, fam, cache))
    assert (zero - clean).abs().max() > 1e-3  # the hook does act


def test_fvu_decreases_and_saved_coder_loads_in_sparsify(tmp_path):
    import sparsify
    res = train(tiny(), SaeSite("blocks.0.resid_post"), Toy(), k=4, features=64, steps=150, lr=1e-2,
                out=tmp_path / "run", save_every=50, progress=False)
    f = res.metrics.fvu.to_numpy()
    assert f[-5:].mean() < 0.3 * f[:5].mean()
    x = Toy().rows(999) * 7.0
    loaded = sparsify.SparseCoder.load_from_disk(res.path)
    assert torch.allclose(loaded(x).sae_out, C.reconstruct(res.coder, x), atol=1e-5)
    raw = C.reconstruct(res.coder, x)
    assert ((raw - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()) < 0.2


def test_resume_equals_uninterrupted(tmp_path):
    m, site = tiny(), SaeSite("blocks.0.resid_post")
    kw = dict(k=4, features=32, lr=3e-3, save_every=5, progress=False)
    full = train(m, site, Toy(), steps=12, out=tmp_path / "a", **kw)
    train(m, site, Toy(), steps=7, out=tmp_path / "b", **kw)           # stopped after step 7 (checkpoint at 5, 7)
    resumed = train(m, site, Toy(), steps=12, out=tmp_path / "b", **kw)
    for (n, p), q in zip(full.coder.state_dict().items(), resumed.coder.state_dict().values()):
        assert torch.equal(p, q), n
    assert full.metrics.fvu.tolist() == resumed.metrics.fvu.tolist()
    with pytest.raises(Exception, match="other settings"):
        train(m, site, Toy(), steps=12, out=tmp_path / "b", **{**kw, "features": 16})


def test_auroc_planted_feature():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 400)
    Z = np.abs(rng.normal(size=(400, 30))) * (rng.random((400, 30)) < 0.3)
    Z[:, 7] = (y == 3) * (1 + rng.random(400))
    table, ranking = best_features(Z, y)
    row = table[table.value == 3].iloc[0]
    assert row.feature == 7 and row.auroc > 0.999 and row.f1 > 0.999
    from sklearn.metrics import roc_auc_score
    A = auroc_all(Z, y, [0, 1, 2, 3, 4])
    assert abs(A[11, 2] - roc_auc_score(y == 2, Z[:, 11])) < 1e-12
    assert ranking[3][0] == 7


def test_run_eval_table_and_plot(tmp_path):
    m = tiny()
    site = SaeSite("blocks.0.rec.state", head=0)
    res = train(m, site, _src(m, site), k=4, features=32, steps=3, progress=False)
    ev = run_eval(m, res.coder, site, "mqar", {"n_pairs": 4}, n=24, n_pairs=24, seeds=(0,), probe=True)
    assert set(ev.section) >= {"quality", "splice", "groundtruth", "needed"}
    assert ev.get("splice", "accuracy", "clean").value.iloc[0] >= 0
    paths = ev.save(tmp_path)
    assert all(p.exists() for p in paths)


def _src(m, site):
    from interp.sae import ModelSource
    return ModelSource(m, site, "mqar", {"n_pairs": 4}, batch_size=8)
