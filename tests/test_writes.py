"""The factored per-token writes rec.write_k / rec.write_v (hooks): equal to a float64 step loop written here for
GDN (incl. beta in (0, 2)), KDA, GLA, Mamba2 and Mamba1 (shared and per-head B); the states are the decayed sum of
the writes; a hook that changes writes continues the recurrence as the step loop does with those writes (GDN's
later delta writes follow the edited past); identity hooks change nothing; families without writes refuse them."""
import pytest
import torch

import hf_tiny as H  # tests/hf_tiny.py, a sibling of this file
import hooks
from hooks.names import HookNameError
from test_adapters_granite_zamba import make as granite_zamba_make
from test_adapters_jamba import make as mamba1_make
from test_adapters_kimi import make as kimi_make
from test_adapters_lfm2 import make as lfm2_make
from test_hooks_zoo import make as zoo_make

MODELS = {
    "gdn": lambda: zoo_make("gdn75"),
    "gdn_neg": lambda: zoo_make("gdn75", gdn_neg_eig=True),
    "gla": lambda: zoo_make("gla75"),
    "mamba2": lambda: zoo_make("mamba275"),
    "kda": lambda: kimi_make("kimi"),
    "mamba1": lambda: mamba1_make("mamba"),
    "zamba": lambda: granite_zamba_make("zamba"),
}
model = H.cached(lambda kind: MODELS[kind]())


def toks(m, T=14, B=2):
    V = m.config.vocab_size
    return torch.randint(2, V, (B, T), generator=torch.Generator().manual_seed(3))


def first_rec(hm):
    return next(L for L in hm.layers if L.rec is not None)


def loop(fam, c, edits=None):
    """Float64 step loop from the canonical inputs ``c`` (rec.* of a capture); ``edits``: {(row, t): (k, v)} writes
    that replace the computed ones. Returns (write_k, write_v, states) of every token."""
    k, v = c["k"].double(), c["v"].double()
    a = c["decay"].double().exp()
    beta = c["beta"].double() if "beta" in c else None
    B, T = v.shape[:2]
    if fam == "mamba1":
        S = torch.zeros(B, v.shape[2], k.shape[-1], dtype=torch.float64)
    else:
        S = torch.zeros(B, v.shape[2], k.shape[-1], v.shape[-1], dtype=torch.float64)
    wks, wvs, Ss = [], [], []
    for t in range(T):
        if fam == "mamba1":
            Sd = a[:, t] * S
            wk, wv = k[:, t], beta[:, t] * v[:, t]
        else:
            at = a[:, t]
            Sd = S * (at[..., None] if at.dim() == 3 else at[..., None, None])
            wk = k[:, t]
            if fam in ("gdn", "kda"):
                wv = beta[:, t, :, None] * (v[:, t] - torch.einsum("bhkv,bhk->bhv", Sd, wk))
            else:
                wv = v[:, t] * (beta[:, t, :, None] if beta is not None else 1.0)
        wk, wv = wk.clone(), wv.clone()
        for (r, tt), (ek, ev) in (edits or {}).items():
            if tt == t:
                wk[r], wv[r] = ek.double(), ev.double()
        if fam == "mamba1":
            kk = wk if wk.dim() == 2 else wk.repeat_interleave(wv.shape[1] // wk.shape[1], dim=1)
            S = Sd + wv[:, :, None] * (kk[:, None, :] if kk.dim() == 2 else kk)
        else:
            S = Sd + wk[..., :, None] * wv[..., None, :]
        wks.append(wk), wvs.append(wv), Ss.append(S)
    return torch.stack(wks, 1), torch.stack(wvs, 1), torch.stack(Ss, 1)


def family_of(kind):
    return {"gdn_neg": "gdn", "zamba": "mamba1"}.get(kind, kind)


def capture(hm, x, i, hooks_=()):
    names = [f"blocks.{i}.rec.{n}" for n in ("q", "k", "v", "decay", "beta", "state", "write_k", "write_v")]
    names = [n for n in names if n in hm.hook_names]
    with torch.no_grad():
        return hm.run_with_cache(x, names=names, hooks=list(hooks_))


@pytest.mark.parametrize("kind", list(MODELS))
def test_writes_equal_step_loop_and_sum_to_the_states(kind):
    m = model(kind)
    hm, x = hooks.wrap(m), toks(m)
    i = first_rec(hm).index
    with torch.no_grad():
        ref = hm(x)
    lg, cache = capture(hm, x, i)
    torch.testing.assert_close(lg, ref, atol=0, rtol=0)                 # capture alone changes nothing
    c = {n: cache[f"blocks.{i}.rec.{n}"] for n in ("k", "v", "decay", "beta") if f"blocks.{i}.rec.{n}" in cache}
    wk, wv, S = loop(family_of(kind), c)
    got_k, got_v = cache[f"blocks.{i}.rec.write_k"], cache[f"blocks.{i}.rec.write_v"]
    assert got_k.dtype == got_v.dtype == torch.float32
    torch.testing.assert_close(got_k.double(), wk, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got_v.double(), wv, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cache[f"blocks.{i}.rec.state"].double(), S, atol=1e-5, rtol=1e-4)
    with torch.no_grad():   # identity hooks on the writes keep the output exactly
        same = hm.run_with_hooks(x, hooks=[(f"blocks.{i}.rec.write_k", lambda w, n: w.clone()),
                                           (f"blocks.{i}.rec.write_v", lambda w, n: None)])
    torch.testing.assert_close(same, ref, atol=0, rtol=0)


@pytest.mark.parametrize("kind", list(MODELS))
def test_changed_writes_continue_the_recurrence(kind):
    """Row 0's value factor at t=4 scaled, every row's key factor at t=9 replaced: the states equal the step loop
    with those writes (later writes computed from the edited past), and the logits equal a run whose states are
    replaced by the loop's (the trusted state-patch path); nothing before t=4 changes."""
    m = model(kind)
    hm, x = hooks.wrap(m), toks(m)
    i = first_rec(hm).index
    nk, nv = f"blocks.{i}.rec.write_k", f"blocks.{i}.rec.write_v"
    seen = {}

    def fv(w, n):
        seen["v"] = w.clone()
        w = w.clone()
        w[0, 4] = -1.5 * w[0, 4]
        return w

    def fk(w, n):
        seen["k"] = w.clone()
        w = w.clone()
        w[:, 9] = w[:, 9].flip(-1) * 0.7
        return w
    lg, cache = capture(hm, x, i, [(nk, fk), (nv, fv)])
    c = {n: cache[f"blocks.{i}.rec.{n}"] for n in ("k", "v", "decay", "beta") if f"blocks.{i}.rec.{n}" in cache}
    edits = {(0, 4): (seen["k"][0, 4], -1.5 * seen["v"][0, 4])}
    for r in range(x.shape[0]):
        edits[(r, 9)] = (seen["k"][r, 9].flip(-1) * 0.7, seen["v"][r, 9])
    _, _, S = loop(family_of(kind), c, edits)
    torch.testing.assert_close(cache[f"blocks.{i}.rec.state"].double(), S, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        ref = hm(x)
        via_states = hm.run_with_hooks(x, hooks=[(f"blocks.{i}.rec.state", lambda s, n: S.to(s.dtype))])
    torch.testing.assert_close(lg, via_states, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(lg[:, :4], ref[:, :4], atol=1e-6, rtol=1e-6)
    _, _, S0 = loop(family_of(kind), c)
    for r, t in ((0, 4), (1, 9)):   # the edits change the states by a good fraction of their size
        assert (S[r, t:] - S0[r, t:]).abs().max() > 0.05 * S0[r, t:].abs().max()
    torch.testing.assert_close(S[1, :9], S0[1, :9])
    torch.testing.assert_close(lg[1, :9], ref[1, :9], atol=1e-5, rtol=1e-5)   # row 1 changes only at t=9


def test_positions_and_families_without_writes():
    m = model("gdn")
    hm, x = hooks.wrap(m), toks(m)
    i = first_rec(hm).index
    _, full = capture(hm, x, i)
    with torch.no_grad():
        _, part = hm.run_with_cache(x, names=[f"blocks.{i}.rec.write_v"], positions=[2, 7])
    torch.testing.assert_close(part[f"blocks.{i}.rec.write_v"], full[f"blocks.{i}.rec.write_v"][:, [2, 7]])
    lf = hooks.wrap(lfm2_make("lfm2"))
    conv = first_rec(lf).index
    assert f"blocks.{conv}.rec.state" in lf.hook_names and f"blocks.{conv}.rec.write_v" not in lf.hook_names
    with pytest.raises(HookNameError, match="write_v"):
        lf.run_with_cache(toks(lf.model), names=[f"blocks.{conv}.rec.write_v"])
