"""The sweep's window path for rec.state (a GDN layer resuming from the patched state, the layers after it on the
suffix window) and direction='both' on one batch of both directions: per-pair metrics equal the hooked path
(skip_prefix=False: every patch a full hooked forward, the recurrence continued from the patched state by
`hooks`) and the two directions run apart; layers the window cannot run fall back."""
import numpy as np
import pytest
import torch

import hooks
from interp import patching
from interp import tasks as T
from interp.patching import window_state
from interp.patching.plan import plan_sweep, unit_key
from interp.patching.sweep import run_items
from interp.patching.units import MemoryUnits
from interp.tasks import VOCAB
from interp.zoo import HybridLM, ZooConfig


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def make(layout, n_layers=4, seed=0):
    torch.manual_seed(seed)
    cfg = ZooConfig(vocab_size=len(VOCAB), d_model=32, n_layers=n_layers, layout=layout, n_heads=2, head_dim=16,
                    mamba_head_dim=16, mamba_state=8)
    m = HybridLM(cfg).eval()
    with torch.no_grad():  # random init is near-uniform; make answers depend on the prompt
        for p in m.parameters():
            p.mul_(4.0) if p.dim() > 1 else None
    return hooks.wrap(m)


def per_pair(hm, p, **kw):
    """Every unit's per-pair metrics of a sweep: {(direction, site, layer): {ld, prob, kl, cells}}."""
    plan = plan_sweep(hm, p, **kw)
    store = MemoryUnits()
    run_items(plan, store, plan.items, progress=False)
    return {(d, *plan.units[u][:2]): store.get(unit_key(d, c, u)) for d, c, u in plan.items}


def assert_same(a, b, tol):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key]["cells"], b[key]["cells"]), key
        for m in ("ld", "prob", "kl"):
            np.testing.assert_allclose(a[key][m].numpy(), b[key][m].numpy(), atol=tol, rtol=0, err_msg=f"{key} {m}")


# gdn75 (gdn, gdn, gdn, attn), gdn100; a GDN layer followed by GLA falls back, the one before attention does not
@pytest.mark.parametrize("layout,window", [("gdn75", [True, True, True]), ("gdn100", [True] * 4),
                                           ("gdn,gla,gdn,attn", [False, False, True])])
def test_state_window_equals_hooked_path(layout, window, monkeypatch):
    hm, p = make(layout), T.make_pairs("mqar", 5, seed=0, n_pairs=4)
    rec = [L.index for L in hm.layers if L.rec is not None]
    assert [patching._window_ok(hm, "rec.state", i, [(3, None)]) for i in rec] == window
    assert not patching._window_ok(hm, "rec.state", rec[0], [(None, None)])  # all positions at once
    assert not patching._window_ok(hm, "rec.state", rec[0], [(3, 1)])        # one head
    monkeypatch.setattr(window_state, "STATE_BYTES", 1)  # one position's states at a time
    kw = dict(sites=["rec.state"], direction="denoise", positions=[0, 2, 3, 5, 8, 11, p.clean.shape[1] - 2])
    fast = per_pair(hm, p, batch_size=7, **kw)            # groups of several positions
    slow = per_pair(hm, p, batch_size=5, skip_prefix=False, **kw)
    assert_same(fast, slow, 1e-5)
    assert max(float((v["ld"].max(0).values - v["ld"].min(0).values).max()) for v in fast.values()) > 1e-2  # they act
    monkeypatch.setattr(window_state, "STATE_BYTES", 1 << 30)
    assert_same(per_pair(hm, p, batch_size=256, **kw), slow, 1e-5)


def test_state_window_equals_one_hooked_patch():
    """One cell by hand: hooks' own rec.state patch (run_patched) gives the sweep's per-pair logit diffs."""
    hm, p = make("gdn75"), T.make_pairs("mqar", 4, seed=1, n_pairs=4)
    got = per_pair(hm, p, sites=["rec.state"], layers=[1], positions=[4, 9], direction="noise")
    r = torch.arange(len(p))
    for j, pos in enumerate((4, 9)):
        lg = patching.run_patched(hm, p.clean, p.corrupted, "rec.state", 1, position=pos)
        want = lg[r, p.answer_pos, p.clean_answer] - lg[r, p.answer_pos, p.corrupted_answer]
        np.testing.assert_allclose(got[("noise", "rec.state", 1)]["ld"][j].numpy(), want.numpy(), atol=1e-5)


@pytest.mark.parametrize("layout,sites", [("gdn75", ["resid_pre", "mixer_out", "rec.state"]),
                                          ("transformer", ["resid_pre", "mixer_out", "attn.head_out"]),
                                          ("gdn,gla,gdn,attn", ["resid_pre", "rec.state"])])
def test_both_directions_in_one_batch_equal_each_alone(layout, sites):
    hm, p = make(layout), T.make_pairs("mqar", 5, seed=2, n_pairs=4)
    kw = dict(sites=sites, positions=[1, 4, p.clean.shape[1] - 2], batch_size=6)
    both = per_pair(hm, p, direction="both", **kw)
    alone = {**per_pair(hm, p, direction="denoise", **kw), **per_pair(hm, p, direction="noise", **kw)}
    assert_same(both, alone, 1e-6)
    # and the hooked path
    assert_same(both, per_pair(hm, p, direction="both", skip_prefix=False, **kw), 1e-5)


def test_both_directions_resume_one_missing_direction(tmp_path):
    """A sweep whose store holds one direction of a window unit computes the other on the batch of both
    again: the same numbers as an uninterrupted sweep, bit for bit."""
    hm, p = make("gdn75"), T.make_pairs("mqar", 4, seed=3, n_pairs=4)
    kw = dict(sites=["rec.state"], layers=[2], positions=[3, 7], progress=False, keep_all=True, n_boot=20)
    full = patching.sweep(hm, p, direction="both", **kw)
    plan = plan_sweep(hm, p, sites=kw["sites"], layers=[2], positions=[3, 7], direction="both")
    from interp.patching.units import open_units
    store = open_units(tmp_path, plan.spec)
    try:
        run_items(plan, store, [it for it in plan.items if it[0] == "noise"], progress=False)
    finally:
        store.close()
    resumed = patching.sweep(hm, p, direction="both", out=tmp_path, **kw)
    np.testing.assert_array_equal(resumed.raw_logit_diff, full.raw_logit_diff)
    np.testing.assert_array_equal(resumed.kl, full.kl)


def test_forward_window_from_given_state_equals_forward():
    """`HybridLM.forward_window` with each GDN layer given the state its prefix leaves and only the prefix's
    last conv inputs (the sweep's `Prefix`) gives the full forward's logits at the window's positions."""
    from interp.patching.window import Prefix
    hm, p = make("gdn75"), T.make_pairs("mqar", 3, seed=4, n_pairs=4)
    m, tok = hm.model, p.clean
    names = [f"blocks.{i}.{x}" for i in range(4) for x in ("resid_pre", "attn.k", "attn.v")
             if x == "resid_pre" or m.config.layers[i] == "attn"]
    with torch.no_grad():
        want = m(tok)
        cache = hm.run_with_cache(tok, names=names)[1]
        prefix, idx = Prefix(m, cache, 1), torch.tensor([2, 0])
        for p0 in (0, 2, 7, tok.shape[1] - 1):   # the windows move right; the states advance with them
            kv, prev = prefix(idx, p0)
            assert all(isinstance(v, tuple) and v[0].shape[1] == min(p0, 3) for v in prev.values())
            got = m.forward_window(cache["blocks.1.resid_pre"][idx, p0:], 1, p0, kv, prev=prev)
            np.testing.assert_allclose(got.numpy(), want[idx, p0:].numpy(), atol=1e-4, rtol=1e-5)
