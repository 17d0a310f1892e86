"""hooks.scan.rwkv7 on CPU (RWKV-7's generalised delta rule, S_t = diag(exp(w_t)) S_{t-1} + b_t (a_t^T S_{t-1})
+ k_t v_t^T): the scan, per-token states, state continuation, changed writes and the effective attention vs a
float64 step loop written here and fla's own dplr_recurrence (loaded by path).

Inputs as fla's RWKV7Attention forms them: a = -kk, b = kk alpha (kk unit per head, alpha in (0, 1)), log
decay w in (-0.607, 0), scale 1. Tolerances: float32 inputs |x| ~ 1, 2e-5 absolute + 2e-5 relative; float64
inputs 1e-12."""
import pytest
import torch

from hooks import effective, recurrence as R
from hooks.scan import rwkv7
from hooks.scan._common import fla_reference
from hooks.scan.family import previous

TOL = dict(atol=2e-5, rtol=2e-5)


def inputs(T, seed=0, B=2, H=3, K=8, V=6, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    kk = torch.nn.functional.normalize(r(B, T, H, K), dim=-1)
    alpha = torch.rand(B, T, H, K, generator=gen, dtype=dtype)
    return dict(q=r(B, T, H, K), k=0.5 * r(B, T, H, K), v=r(B, T, H, V),
                w=-0.6065306597126334 * torch.rand(B, T, H, K, generator=gen, dtype=dtype), a=-kk, b=kk * alpha,
                S0=r(B, H, K, V))


def args(x):
    return x["q"], x["k"], x["v"], x["w"], x["a"], x["b"]


def step(q, k, v, w, a, b, S0=None, scale=1.0):
    """The recurrence in float64, written out: S = diag(exp(w_t)) S + b_t (a_t^T S) + k_t v_t^T;
    o_t = S^T (scale q_t). Returns (o [B, T, H, V], states [B, T, H, K, V])."""
    q, k, v, w, a, b = (t.double() for t in (q, k, v, w, a, b))
    B, T, H, K = k.shape
    S = torch.zeros(B, H, K, v.shape[-1], dtype=torch.float64) if S0 is None else S0.double()
    os, Ss = [], []
    for t in range(T):
        aS = torch.einsum("bhk,bhkv->bhv", a[:, t], S)
        S = w[:, t].exp()[..., None] * S + b[:, t, :, :, None] * aS[:, :, None, :] \
            + k[:, t, :, :, None] * v[:, t, :, None, :]
        os.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t] * scale))
        Ss.append(S)
    return torch.stack(os, 1), torch.stack(Ss, 1)


def view(x, init=False):
    return R.canonical("rwkv7", dict(q=x["q"], k=x["k"], v=x["v"], w=x["w"], a=x["a"], b=x["b"], scale=1.0,
                                     initial_state=x["S0"] if init else None))


@pytest.mark.parametrize("T", [1, 70])
@pytest.mark.parametrize("init", [False, True])
def test_scan_and_states_equal_step_loop_and_fla(T, init):
    x = inputs(T)
    S0 = x["S0"] if init else None
    o_ref, S_ref = step(*args(x), S0)
    o, s = rwkv7.scan(*args(x), initial_state=S0, output_final_state=True)
    S = rwkv7.states(*args(x), initial_state=S0)
    torch.testing.assert_close(o.double(), o_ref, **TOL)
    torch.testing.assert_close(s.double(), S_ref[:, -1], **TOL)
    torch.testing.assert_close(S.double(), S_ref, **TOL)
    assert torch.equal(S[:, -1], s)
    assert torch.equal(rwkv7.states(*args(x), initial_state=S0, positions=[T - 1, 0]), S[:, [T - 1, 0]])
    fla = fla_reference("generalized_delta_rule/dplr")
    if fla is not None:  # fla's own loop: [B, H, T, K] layout, q scaled by K^-1/2 inside
        tr = lambda t: t.transpose(1, 2)  # noqa: E731
        q, k, v, w, a, b = args(x)
        o3, s3 = fla.dplr_recurrence(tr(q) * q.shape[-1] ** 0.5, tr(k), tr(v), tr(a), tr(b), tr(w), S0, True)
        torch.testing.assert_close(tr(o3), o, **TOL)
        torch.testing.assert_close(s3, s, **TOL)


def test_float64_scale_and_bad_inputs():
    x = inputs(20, dtype=torch.float64)
    o, s = rwkv7.naive(*args(x), scale=0.25, initial_state=x["S0"], output_final_state=True)
    o_ref, S_ref = step(*args(x), x["S0"], scale=0.25)
    assert o.dtype == torch.float64
    torch.testing.assert_close(o, o_ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(s, S_ref[:, -1], atol=1e-12, rtol=1e-12)
    with pytest.raises(ValueError, match="per key dim"):
        rwkv7.scan(x["q"], x["k"], x["v"], x["w"][..., 0], x["a"], x["b"])
    with pytest.raises(ValueError, match="positions must lie"):
        rwkv7.states(*args(x), positions=[20])


def test_continue_from_patched_state_and_sliced_view():
    """Family.continue_from: S_t := P at t (all rows; then row 1 only), later readouts and states are the step
    loop from P; the view's a, b are sliced with the other per-token entries."""
    x = inputs(40)
    c = view(x)
    assert c.sliced(3, 7)["a"].shape[1] == 4 and c.sliced(3, 7)["b"].shape[1] == 4
    o, _ = R.scan("rwkv7", c)
    S = R.states("rwkv7", c)
    t, P = 17, torch.randn(2, 3, 8, 6, generator=torch.Generator().manual_seed(3))
    o2, fin, S2 = R.continue_from("rwkv7", c, o, {t: P}, S_all=S)
    o_ref, S_ref = step(*(v[:, t + 1:] for v in args(x)), P)
    torch.testing.assert_close(o2[:, t + 1:].double(), o_ref, **TOL)
    torch.testing.assert_close(S2[:, t + 1:].double(), S_ref, **TOL)
    torch.testing.assert_close(fin.double(), S_ref[:, -1], **TOL)
    torch.testing.assert_close(o2[:, t].double(), torch.einsum("bhkv,bhk->bhv", P.double(), x["q"][:, t].double()),
                               **TOL)
    assert torch.equal(o2[:, :t], o[:, :t])
    o3, _, S3 = R.continue_from("rwkv7", c, o, {t: P}, S_all=S, rows={t: torch.tensor([False, True])})
    assert torch.equal(o3[0], o[0]) and torch.equal(S3[0], S[0])
    torch.testing.assert_close(S3[1, t + 1:].double(), S_ref[1], **TOL)


def test_changed_write_continues():
    """Family.rewrite with write_k = k, write_v = v: a changed v_t at one position is the step loop on the
    changed inputs."""
    x = inputs(30)
    c = view(x)
    o, _ = R.scan("rwkv7", c)
    S = R.states("rwkv7", c)
    fam = R.get_family("rwkv7")
    old = fam.write_factors(c, previous(S))
    assert torch.equal(old[0], x["k"]) and torch.equal(old[1], x["v"])
    assert torch.allclose(fam.decayed(c, previous(S)) + fam.outer(*old), S, atol=1e-5)
    v2 = x["v"].clone()
    v2[:, 11] = 3.0
    o2, fin, S2 = fam.rewrite(c, o, S, old, (old[0], v2))
    o_ref, S_ref = step(x["q"], x["k"], v2, x["w"], x["a"], x["b"])
    torch.testing.assert_close(o2.double(), o_ref, **TOL)
    torch.testing.assert_close(S2.double(), S_ref, **TOL)


def test_effective_pattern_is_the_step_loops_response():
    """readout = sum_s A[t, s] v_s + scale q_t^T M_t .. M_0 S_{-1}: with no initial state the pattern gives the
    readout; column s is the step loop's readout for a unit value at s alone; rows / heads select."""
    x = inputs(25, V=1)
    c = view(x)
    o, _ = R.scan("rwkv7", c)
    A = effective.pattern("rwkv7", c)
    assert A.shape == (2, 3, 25, 25) and torch.equal(A.triu(1), torch.zeros_like(A))
    torch.testing.assert_close(torch.einsum("bhts,bsh->bth", A, x["v"][..., 0]), o[..., 0], **TOL)
    for s in (0, 9, 24):
        e = torch.zeros_like(x["v"])
        e[:, s] = 1
        o_s, _ = step(x["q"], x["k"], e, x["w"], x["a"], x["b"])
        torch.testing.assert_close(A[:, :, :, s].double(), o_s[..., 0].transpose(1, 2), **TOL)
    torch.testing.assert_close(effective.pattern("rwkv7", c, rows=[3, 20], heads=[2]), A[:, 2:3, [3, 20]])
