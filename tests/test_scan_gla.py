"""hooks.scan.gla on CPU: chunked pure-torch scan and per-token states vs step loops and fla's naive.py.

Tolerances (float32, |inputs| ~ 1): within 2e-5 absolute + 2e-5 relative of the step loop and
of fla's naive_recurrent_gla / naive_recurrent_simple_gla; gradients vs naive within 1e-4;
gradcheck (fast mode) in float64 at its defaults. (The GPU path is exercised under the Triton interpreter in
tests/test_scan_gdn.py and on CUDA by tests/gpu/check_scan_gpu.py.)
"""
import pytest
import torch

from hooks.scan import gla
from hooks.scan._common import fla_reference

TOL = dict(atol=2e-5, rtol=2e-5)


def inputs(T, seed=0, B=2, H=3, K=8, V=6, strength=4.0, dtype=torch.float64):
    """q, k, v, gk (log decay per key dim, logsigmoid / strength), g (scalar per head), S0."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    return dict(q=r(B, T, H, K), k=r(B, T, H, K), v=r(B, T, H, V),
                gk=torch.nn.functional.logsigmoid(r(B, T, H, K)) / strength,
                g=-torch.rand(B, T, H, generator=gen, dtype=dtype), S0=r(B, H, K, V))


def f32(x):
    return {n: t.float() for n, t in x.items()}


def step_states(k, v, g, S0):
    """Independent step loop S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T -> [B, T, H, K, V]."""
    g = g[..., None].expand_as(k) if g.dim() == 3 else g
    S = torch.zeros(*k.shape[:1], k.shape[2], k.shape[3], v.shape[-1]) if S0 is None else S0.clone()
    out = []
    for t in range(k.shape[1]):
        S = g[:, t].exp()[..., None] * S + k[:, t, ..., None] * v[:, t, :, None]
        out.append(S)
    return torch.stack(out, 1)


@pytest.mark.parametrize("T", [1, 3, 64, 100, 130])
@pytest.mark.parametrize("init", [False, True])
@pytest.mark.parametrize("gate", ["gk", "g"])
def test_chunk_equals_naive_and_fla(T, init, gate):
    x = f32(inputs(T, seed=2))
    S0 = x["S0"] if init else None
    a = (x["q"], x["k"], x["v"], x[gate])
    o1, s1 = gla.naive(*a, initial_state=S0, output_final_state=True)
    o2, s2 = gla.chunk_torch(*a, initial_state=S0, output_final_state=True)
    torch.testing.assert_close(o2, o1, **TOL)
    torch.testing.assert_close(s2, s1, **TOL)
    o0, s0 = gla.scan(*a, initial_state=S0, output_final_state=True)
    assert torch.equal(o0, o2) and torch.equal(s0, s2)  # CPU tensors: scan is chunk_torch
    if gate == "gk":
        o3, s3 = fla_reference("gla").naive_recurrent_gla(*a, initial_state=S0, output_final_state=True)
    else:
        o3, s3 = fla_reference("simple_gla").naive_recurrent_simple_gla(*a, initial_state=S0, output_final_state=True)
    torch.testing.assert_close(o1, o3.float(), **TOL)
    torch.testing.assert_close(s1, s3.float(), **TOL)


def test_scalar_gate_equals_broadcast_gate():
    x = f32(inputs(90, seed=3))
    o1, s1 = gla.chunk_torch(x["q"], x["k"], x["v"], x["g"], initial_state=x["S0"], output_final_state=True)
    o2, s2 = gla.chunk_torch(x["q"], x["k"], x["v"], x["g"][..., None].expand_as(x["k"]), initial_state=x["S0"],
                             output_final_state=True)
    torch.testing.assert_close(o1, o2, **TOL)
    torch.testing.assert_close(s1, s2, **TOL)


def test_strong_decay_stays_exact():
    """Per-key log decays down to about -40 per step."""
    x = f32(inputs(150, seed=4, strength=0.1))
    a = (x["q"], x["k"], x["v"], x["gk"])
    o1, s1 = gla.naive(*a, initial_state=x["S0"], output_final_state=True)
    o2, s2 = gla.chunk_torch(*a, initial_state=x["S0"], output_final_state=True)
    assert x["gk"].min() < -30
    torch.testing.assert_close(o2, o1, **TOL)
    torch.testing.assert_close(s2, s1, **TOL)
    torch.testing.assert_close(gla.states(*a, initial_state=x["S0"]), step_states(x["k"], x["v"], x["gk"], x["S0"]),
                               **TOL)


@pytest.mark.parametrize("T", [3, 64, 100])
@pytest.mark.parametrize("gate", ["gk", "g"])
def test_states_every_token_and_positions(T, gate):
    x = f32(inputs(T, seed=5))
    a = (x["q"], x["k"], x["v"], x[gate])
    st = gla.states(*a, initial_state=x["S0"])
    assert st.shape == (2, T, 3, 8, 6) and st.dtype == torch.float32
    torch.testing.assert_close(st, step_states(x["k"], x["v"], x[gate], x["S0"]), **TOL)
    _, fin = gla.scan(*a, initial_state=x["S0"], output_final_state=True)
    torch.testing.assert_close(st[:, -1], fin, **TOL)
    pos = [T - 1, 0, T // 2, 0]
    torch.testing.assert_close(gla.states(*a, initial_state=x["S0"], positions=pos), st[:, pos], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(gla.states(*a), step_states(x["k"], x["v"], x[gate], None), **TOL)


def test_gradients_match_naive():
    x = f32(inputs(70, seed=6))
    names = ("q", "k", "v", "gk", "S0")
    leaves = {n: x[n].clone().requires_grad_() for n in names}
    grads = []
    for fn in (gla.naive, gla.chunk_torch):
        for t in leaves.values():
            t.grad = None
        o, s = fn(*(leaves[n] for n in names[:4]), initial_state=leaves["S0"], output_final_state=True)
        (o.square().sum() + s.sum()).backward()
        grads.append({n: t.grad.clone() for n, t in leaves.items()})
    for n in names:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-4, rtol=1e-4, msg=n)


@pytest.mark.parametrize("gate", ["gk", "g"])
def test_gradcheck_chunk_and_states(gate):
    """float64 gradcheck across a chunk boundary (T=66), through outputs, final and per-token states."""
    x = inputs(66, seed=7, B=1, H=1, K=3, V=2)
    leaves = tuple(x[n].clone().requires_grad_() for n in ("q", "k", "v", gate, "S0"))

    def f(q, k, v, g, S0):
        o, s = gla.chunk_torch(q, k, v, g, initial_state=S0, output_final_state=True)
        return o, s, gla.states(q, k, v, g, initial_state=S0, positions=[0, 64, 65], out_dtype=torch.float64)
    assert torch.autograd.gradcheck(f, leaves, fast_mode=True)


def test_bad_inputs():
    x = f32(inputs(10))
    q, k, v, gk = x["q"], x["k"], x["v"], x["gk"]
    with pytest.raises(ValueError, match=r"v has shape \[2, 5, 3, 6\], expected \[2, 10, 3, \*\]"):
        gla.scan(q, k, v[:, :5], gk)
    with pytest.raises(ValueError, match=r"g has shape \[2, 10, 3, 4\], expected \[2, 10, 3, 8\]"):
        gla.chunk_torch(q, k, v, gk[..., :4])
    with pytest.raises(ValueError, match=r"g has shape \[2, 10, 1\], expected \[2, 10, 3\]"):
        gla.naive(q, k, v, x["g"][..., :1])
    with pytest.raises(ValueError, match=r"initial_state has shape \[2, 3, 8\], expected \[2, 3, 8, 6\]"):
        gla.states(q, k, v, gk, initial_state=x["S0"][..., 0])
    with pytest.raises(ValueError, match="positions must lie in 0..9"):
        gla.states(q, k, v, gk, positions=[-1])
