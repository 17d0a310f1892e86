"""The sweep's zoo window path on padded pairs (left and right): per pair and per cell it equals the same sweep
forced onto the general path and each length group swept alone unpadded, for resid_pre, mixer_out and rec.state
(the window units) next to general-path units (attn.pattern) in the same chunks, one direction or both; a spy
shows the padded chunks took the window path."""
import importlib

import numpy as np
import pytest
import torch

import hooks
from interp import tasks as T
from interp.patching.plan import plan_sweep, unit_key
from interp.patching.sweep import run_items
from interp.patching.units import MemoryUnits
from interp.zoo.randinit import random_zoo

sweep_mod = importlib.import_module("interp.patching.sweep")   # (interp.patching.sweep is also the function)


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture
def spy(monkeypatch):
    """Counts the window-path units run on padded rows (``span`` given) and on unpadded ones."""
    calls = {"padded": 0, "unpadded": 0}
    real = sweep_mod._win_unit

    def counted(*a, span=None, **kw):
        calls["unpadded" if span is None else "padded"] += 1
        return real(*a, span=span, **kw)
    monkeypatch.setattr(sweep_mod, "_win_unit", counted)
    return calls


def per_pair(hm, p, **kw):
    """Every unit's per-pair metrics, the chunks joined: {(direction, site, layer): {ld, prob, kl: [cells, N]}}."""
    plan = plan_sweep(hm, p, **kw)
    store = MemoryUnits()
    run_items(plan, store, plan.items, progress=False)
    out = {}
    for d in plan.directions:
        for u, (site, layer, _) in enumerate(plan.units):
            parts = [store.get(unit_key(d, c, u)) for c in range(len(plan.chunks))]
            out[(d, site, layer)] = {m: torch.cat([q[m] for q in parts], 1).numpy() for m in ("ld", "prob", "kl")}
    return out


def assert_close(got, want, what):
    for m in ("ld", "prob", "kl"):
        assert np.array_equal(np.isnan(got[m]), np.isnan(want[m])), (what, m)
        np.testing.assert_allclose(got[m], want[m], rtol=1e-5, atol=1e-5, err_msg=f"{what} {m}")


def groups():
    return T.make_pairs("mqar", 3, seed=0, n_pairs=2), T.make_pairs("mqar", 4, seed=1, n_pairs=4)


# attention after GDN (gdn75: gdn, gdn, gdn, attn), GDN after attention, and attention only
CASES = [("gdn75", ["resid_pre", "mixer_out", "rec.state", "attn.pattern"], "both", 256),
         ("attn,gdn,attn,gdn", ["resid_pre", "mixer_out", "rec.state"], "noise", 4),
         ("transformer", ["resid_pre", "mixer_out", "attn.pattern"], "both", 5)]


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("layout,sites,direction,batch_size", CASES)
def test_padded_window_equals_general_path_and_each_group_alone(layout, sites, direction, batch_size, side, spy,
                                                               monkeypatch):
    hm = hooks.wrap(random_zoo(32, 4, 2, layout))
    a, b = groups()
    p = T.pad_pairs([a, b], side=side)
    assert p.attention_mask is not None
    kw = dict(sites=sites, direction=direction, batch_size=batch_size)
    fast = per_pair(hm, p, **kw)
    assert spy["padded"] > 0 and spy["unpadded"] == 0            # the padded chunks took the window path
    # they act: the window units' patches move the logit diff
    moved = [np.nanmax(v["ld"]) - np.nanmin(v["ld"]) for k, v in fast.items() if k[1] != "attn.pattern"]
    assert max(moved) > 1e-2
    alone = [per_pair(hm, g, **kw) for g in (a, b)]
    with monkeypatch.context() as mp:                             # the same sweep on the general path
        mp.setattr(sweep_mod, "_window_ok", lambda *_: False)
        spy["padded"] = 0
        slow = per_pair(hm, p, **kw)
        assert spy["padded"] == 0
    assert fast.keys() == slow.keys()
    rows = [slice(0, len(a)), slice(len(a), len(a) + len(b))]
    for key in fast:
        assert_close(fast[key], slow[key], key)
        for g, r, one in zip((a, b), rows, alone):               # pair by pair, position p = its p-th real token
            Tg = g.clean.shape[1]
            mine = {m: v[:, r] for m, v in fast[key].items()}
            assert_close({m: v[:Tg] for m, v in mine.items()}, one[key], (key, Tg))
            assert all(np.isnan(v[Tg:]).all() for v in mine.values())   # positions the group lacks: no value


def test_padded_window_on_chunks_with_and_without_pads(spy):
    """A chunk whose pairs all have the longest length (no pad in it) next to a padded one: both on the window path,
    equal to the groups alone."""
    hm = hooks.wrap(random_zoo(32, 4, 2, "gdn75", seed=1))
    a, b = groups()
    p = T.pad_pairs([a, b], side="left")
    kw = dict(sites=["resid_pre", "rec.state"], layers=[1, 2], direction="denoise", batch_size=3)
    got = per_pair(hm, p, **kw)
    assert spy["padded"] == 3 * 4                               # 3 chunks x 4 units, all padded (one of them
    for g, r in ((a, slice(0, 3)), (b, slice(3, 7))):          # without a pad) on the window path
        one = per_pair(hm, g, **kw)
        for key in got:
            assert_close({m: v[:g.clean.shape[1], r] for m, v in got[key].items()}, one[key], key)
