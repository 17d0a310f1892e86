"""hooks.scan.kda on CPU (Kimi Delta Attention, a decay per key dim): the chunked pure-torch scan, per-token
states, state continuation and the effective attention (hooks.effective) vs a float64 step loop written here
and fla's naive_recurrent_kda, across chunk boundaries (T > 64).

Tolerances: float32 inputs |x| ~ 1, 2e-5 absolute + 2e-5 relative; float64 inputs 1e-10."""
import pytest
import torch

from hooks import effective, recurrence as R
from hooks.scan import kda
from hooks.scan._common import fla_reference, l2norm

TOL = dict(atol=2e-5, rtol=2e-5)


def inputs(T, seed=0, B=2, H=3, K=8, V=6, decay=0.7, dtype=torch.float32):
    """q, k (unit), v, g (log decay per key dim in (-decay, 0]), beta in (0, 1), S0."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    return dict(q=r(B, T, H, K), k=torch.nn.functional.normalize(r(B, T, H, K), dim=-1), v=r(B, T, H, V),
                g=-torch.rand(B, T, H, K, generator=gen, dtype=dtype) * decay,
                beta=torch.rand(B, T, H, generator=gen, dtype=dtype), S0=r(B, H, K, V))


def args(x):
    return x["q"], x["k"], x["v"], x["g"], x["beta"]


def step(q, k, v, g, beta, S0=None):
    """The recurrence in float64: S = diag(exp(g_t)) S; d = beta_t (v_t - S^T k_t); S += k_t d^T;
    o_t = S^T q_t / sqrt(K).
    Returns (o [B, T, H, V], states [B, T, H, K, V])."""
    q, k, v, g, beta = (t.double() for t in (q, k, v, g, beta))
    B, T, H, K = k.shape
    S = torch.zeros(B, H, K, v.shape[-1], dtype=torch.float64) if S0 is None else S0.double()
    os, Ss = [], []
    for t in range(T):
        S = g[:, t].exp()[..., None] * S
        d = beta[:, t, :, None] * (v[:, t] - torch.einsum("bhkv,bhk->bhv", S, k[:, t]))
        S = S + k[:, t, :, :, None] * d[:, :, None]
        os.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t]) * K ** -0.5)
        Ss.append(S)
    return torch.stack(os, 1), torch.stack(Ss, 1)


@pytest.mark.parametrize("T", [1, 64, 150])
@pytest.mark.parametrize("init", [False, True])
def test_scan_and_states_equal_step_loop_and_fla(T, init):
    x = inputs(T)
    S0 = x["S0"] if init else None
    o_ref, S_ref = step(*args(x), S0)
    o1, s1 = kda.naive(*args(x), initial_state=S0, output_final_state=True)
    o2, s2 = kda.chunk_torch(*args(x), initial_state=S0, output_final_state=True)
    S = kda.states(*args(x), initial_state=S0)
    for o, s in ((o1, s1), (o2, s2)):
        torch.testing.assert_close(o.double(), o_ref, **TOL)
        torch.testing.assert_close(s.double(), S_ref[:, -1], **TOL)
    torch.testing.assert_close(S.double(), S_ref, **TOL)
    torch.testing.assert_close(kda.states(*args(x), initial_state=S0, positions=[0, T - 1]), S[:, [0, T - 1]],
                               atol=1e-6, rtol=0)
    fla = fla_reference("kda")
    if fla is not None:  # fla's own reference (loaded by path: fla's package needs triton)
        o3, s3 = fla.naive_recurrent_kda(*args(x), initial_state=S0, output_final_state=True)
        torch.testing.assert_close(o3, o2, **TOL)
        torch.testing.assert_close(s3, s2, **TOL)


def test_float64_l2norm_and_strong_decay():
    """float64 stays float64 (1e-10 to the step loop) with decays down to -30 per step on some key dims;
    use_qk_l2norm_in_kernel normalises q and k inside."""
    x = inputs(150, dtype=torch.float64)
    x["g"][..., :2] *= 40
    o, s = kda.chunk_torch(*args(x), initial_state=x["S0"], output_final_state=True)
    o_ref, S_ref = step(*args(x), x["S0"])
    assert o.dtype == torch.float64
    torch.testing.assert_close(o, o_ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(kda.states(*args(x), initial_state=x["S0"]), S_ref.float(), atol=1e-5, rtol=1e-5)
    raw = dict(x, q=3 * x["q"], k=2 * x["k"])
    o_l2, _ = kda.chunk_torch(*args(raw), initial_state=x["S0"], use_qk_l2norm_in_kernel=True)
    o_ref2, _ = step(l2norm(raw["q"]), l2norm(raw["k"]), x["v"], x["g"], x["beta"], x["S0"])
    torch.testing.assert_close(o_l2, o_ref2, atol=1e-10, rtol=1e-10)


def test_continue_from_patched_state():
    """Family.continue_from: S_t := P at t, later readouts and states are the step loop from P."""
    x = inputs(150)
    c = R.canonical("kda", dict(q=x["q"], k=x["k"], v=x["v"], g=x["g"], beta=x["beta"]))
    o, _ = R.scan("kda", c)
    S = R.states("kda", c)
    t, P = 70, torch.randn(2, 3, 8, 6, generator=torch.Generator().manual_seed(3))
    o2, fin, S2 = R.continue_from("kda", c, o, {t: P}, S_all=S)
    o_ref, S_ref = step(*(v[:, t + 1:] for v in args(x)), P)
    torch.testing.assert_close(o2[:, t + 1:].double(), o_ref, **TOL)
    torch.testing.assert_close(S2[:, t + 1:].double(), S_ref, **TOL)
    torch.testing.assert_close(fin.double(), S_ref[:, -1], **TOL)
    assert torch.equal(o2[:, :t], o[:, :t])


def test_effective_pattern_is_the_step_loops_response():
    """hooks.effective for KDA: readout = sum_s A[t, s] v_s + init term, and column s of A is the step loop's
    readout for a unit value at s alone (V = 1, no initial state), across chunks."""
    x = inputs(150, V=1)
    c = R.canonical("kda", dict(q=x["q"], k=x["k"], v=x["v"], g=x["g"], beta=x["beta"], initial_state=x["S0"]))
    o, _ = R.scan("kda", c, initial_state=x["S0"])
    torch.testing.assert_close(effective.readout("kda", c), o, **TOL)
    A = effective.pattern("kda", c)
    for s in (0, 63, 64, 100):
        e = torch.zeros_like(x["v"])
        e[:, s] = 1
        o_s, _ = step(x["q"], x["k"], e, x["g"], x["beta"])
        torch.testing.assert_close(A[:, :, :, s].double(), o_s[..., 0].transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_bad_inputs():
    x = inputs(5)
    with pytest.raises(ValueError, match="per key dim"):
        kda.chunk_torch(x["q"], x["k"], x["v"], x["g"][..., 0], x["beta"])  # a scalar decay is GDN, not KDA
    with pytest.raises(ValueError, match="impl"):
        kda.states(*args(x), impl="triton")
