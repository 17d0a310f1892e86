"""RWKV-4 state patches at several positions (hooks.scan.wkv.WKVFamily.continue_from): every readout after a patched
state, up to and including the one at the next patched position (wkv_t reads S_{t-1}), follows the patched run,
against a float64 step loop written here; through hooks on HF rwkv, re-patching a state with the value it already
has changes nothing and a batch with rows patched at different positions equals each row patched alone. CPU."""
import pytest
import torch

import hooks
from hooks.scan import wkv
from test_adapters_rwkv import model, rec_names, toks

B, T, D = 2, 12, 5


def oracle(k, v, w, u, r, patched):
    """o [B, T, D], final (num, den) [B, D, 2], states [B, T, D, 2]: the WKV step loop in float64 from zero, with
    S_t := patched[t] after token t; readout t reads S_{t-1} (patched or not) and token t."""
    k, v, w, u, r = (x.double() for x in (k, v, w, u, r))
    S = torch.zeros(k.shape[0], k.shape[2], 2, dtype=torch.float64)
    outs, states = [], []
    for t in range(k.shape[1]):
        b = torch.exp(u + k[:, t])
        outs.append(r[:, t] * (S[..., 0] + b * v[:, t]) / (S[..., 1] + b))
        e = torch.exp(k[:, t])
        S = torch.exp(w[:, t])[..., None] * S + torch.stack([e * v[:, t], e], -1)
        if t in patched:
            S = patched[t].double()
        states.append(S)
    return torch.stack(outs, 1), S, torch.stack(states, 1)


@pytest.mark.parametrize("ts", [(3,), (2, 3), (2, 6), (1, 4, 9), (T - 1,), (0, T - 1), (5, 6, 7), (2, 3, 8, 11)])
def test_continue_from_equals_a_float64_step_loop(ts):
    g = torch.Generator().manual_seed(sum(ts))
    k, v = torch.randn(B, T, D, generator=g), torch.randn(B, T, D, generator=g)
    w = -torch.rand(B, T, D, generator=g) - 0.1
    u, r = torch.randn(D, generator=g), torch.rand(B, T, D, generator=g)
    c = wkv.FAMILY.view(q=r, k=k, v=v, decay=w, u=u, scale=1.0, initial_state=None)
    o, _ = wkv.FAMILY.scan(c)
    S = wkv.FAMILY.states(c)
    P = {t: torch.stack([torch.randn(B, D, generator=g), torch.rand(B, D, generator=g) + 0.5], -1) for t in ts}
    o2, fin, S2 = wkv.FAMILY.continue_from(c, o, P, S)
    want_o, want_fin, want_S = oracle(k, v, w, u, r, P)
    torch.testing.assert_close(o2.double(), want_o, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(S2.double(), want_S, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fin.double(), want_fin, atol=1e-5, rtol=1e-5)


def test_continue_from_keeps_float64_in_float64():
    """A float64 view's patched states are continued from in float64 (they were rounded to float32)."""
    g = torch.Generator().manual_seed(3)
    k, v = (torch.randn(B, T, D, generator=g, dtype=torch.float64) for _ in range(2))
    w = -torch.rand(B, T, D, generator=g, dtype=torch.float64) - 0.1
    u, r = torch.randn(D, generator=g, dtype=torch.float64), torch.rand(B, T, D, generator=g, dtype=torch.float64)
    c = wkv.FAMILY.view(q=r, k=k, v=v, decay=w, u=u, scale=1.0, initial_state=None)
    o, _ = wkv.FAMILY.scan(c)
    S = wkv.FAMILY.states(c, out_dtype=torch.float64)
    P = {t: torch.stack([torch.randn(B, D, generator=g, dtype=torch.float64),
                         torch.rand(B, D, generator=g, dtype=torch.float64) + 0.5], -1) for t in (2, 6)}
    o2, fin, S2 = wkv.FAMILY.continue_from(c, o, P, S)
    want_o, want_fin, want_S = oracle(k, v, w, u, r, P)
    assert o2.dtype == S2.dtype == fin.dtype == torch.float64
    for got, want in ((o2, want_o), (S2, want_S), (fin, want_fin)):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def _patch(rows_at):
    """A rec.state hook: S[r, t] := 3 S[r, t] + 0.5 for each (r, t) of ``rows_at``."""
    def fn(S, _):
        S = S.clone()
        for r, t in rows_at:
            S[r, t] = S[r, t] * 3 + 0.5
        return S
    return fn


def test_repatching_a_state_with_its_own_value_changes_nothing():
    """S_2 patched; then S_2 patched and S_5 set to the value the first run gave it: every readout and the logits
    are the first run's (the readout at 5 reads S_4, which the patch at 2 changed)."""
    hm = hooks.wrap(model("plain"))
    x, n, ro = toks(B=1, n=T), "blocks.0.rec.state", "blocks.0.rec.readout"
    with torch.no_grad():
        la, ca = hm.run_with_cache(x, names=[n, ro], hooks=[(n, _patch([(0, 2)]))])
        for later in (3, 5, T - 1):
            keep = ca[n][:, later].clone()

            def again(S, name, later=later, keep=keep):
                S = _patch([(0, 2)])(S, name)
                S[:, later] = keep
                return S
            lb, cb = hm.run_with_cache(x, names=[ro], hooks=[(n, again)])
            torch.testing.assert_close(cb[ro], ca[ro], atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(lb, la, atol=1e-5, rtol=1e-5)


def test_rows_patched_at_different_positions_equal_each_row_alone():
    hm = hooks.wrap(model("plain"))
    x, n = toks(B=3, n=T, seed=1), "blocks.1.rec.state"
    at = [(0, 2), (1, 5), (2, 9)]
    with torch.no_grad():
        lb, cb = hm.run_with_cache(x, names=rec_names(1, ("state", "readout")), hooks=[(n, _patch(at))])
        for r, t in at:
            la, ca = hm.run_with_cache(x[r:r + 1], names=rec_names(1, ("state", "readout")),
                                       hooks=[(n, _patch([(0, t)]))])
            torch.testing.assert_close(lb[r], la[0], atol=1e-5, rtol=1e-5)
            for name in ca:
                torch.testing.assert_close(cb[name][r], ca[name][0], atol=1e-5, rtol=1e-5)
