"""Scan modules: chunked pure-torch paths and per-token states vs step loops and fla's naive.py.

Tolerances (float32): outputs and states within 1e-4 absolute / relative of the step loop."""
import importlib.util
from pathlib import Path

import pytest
import torch

from hooks.scan import gdn, gla, mamba2

TOL = dict(atol=1e-4, rtol=1e-4)


def fla_naive(family):
    """Load fla/ops/<family>/naive.py by path (the package __init__ imports triton)."""
    spec = importlib.util.find_spec("fla")
    if spec is None:
        pytest.skip("fla not installed")
    path = Path(spec.origin).parent / "ops" / family / "naive.py"
    s = importlib.util.spec_from_file_location(f"fla_naive_{family}", path)
    mod = importlib.util.module_from_spec(s)
    s.loader.exec_module(mod)
    return mod


def inputs(T, seed=0, B=2, H=3, K=8, V=6):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    k = torch.nn.functional.normalize(r(B, T, H, K), dim=-1)
    return dict(q=r(B, T, H, K), k=k, v=r(B, T, H, V), g=-torch.rand(B, T, H, generator=g) * 0.7,
                beta=torch.rand(B, T, H, generator=g) * 2, S0=r(B, H, K, V),
                gk=torch.nn.functional.logsigmoid(r(B, T, H, K)) / 4)


@pytest.mark.parametrize("T", [1, 17, 64, 130])
@pytest.mark.parametrize("l2", [False, True])
@pytest.mark.parametrize("init", [False, True])
def test_gdn_chunk_equals_naive_and_fla(T, l2, init):
    x = inputs(T)
    S0 = x["S0"] if init else None
    args = (x["q"], x["k"], x["v"], x["g"], x["beta"])
    o1, s1 = gdn.naive(*args, initial_state=S0, output_final_state=True, use_qk_l2norm_in_kernel=l2)
    o2, s2 = gdn.chunk_torch(*args, initial_state=S0, output_final_state=True, use_qk_l2norm_in_kernel=l2)
    torch.testing.assert_close(o2, o1, **TOL)
    torch.testing.assert_close(s2, s1, **TOL)
    q, k = (gdn.l2norm(x["q"]), gdn.l2norm(x["k"])) if l2 else (x["q"], x["k"])
    o3, s3 = fla_naive("gated_delta_rule").naive_recurrent_gated_delta_rule(
        q, k, x["v"], x["beta"], x["g"], initial_state=S0, output_final_state=True)
    torch.testing.assert_close(o1, o3, **TOL)
    torch.testing.assert_close(s1, s3, **TOL)


def step_states_gdn(q, k, v, g, beta, S0, scale):
    S = S0.clone()
    out = []
    for t in range(k.shape[1]):
        S = S * g[:, t].exp()[..., None, None]
        d = beta[:, t, :, None] * (v[:, t] - torch.einsum("bhkv,bhk->bhv", S, k[:, t]))
        S = S + k[:, t, :, :, None] * d[:, :, None]
        out.append(S)
    return torch.stack(out, 1)


@pytest.mark.parametrize("T", [5, 64, 150])
def test_gdn_states(T):
    x = inputs(T, seed=1)
    st = gdn.states(x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=x["S0"])
    ref = step_states_gdn(x["q"], x["k"], x["v"], x["g"], x["beta"], x["S0"], 1)
    assert st.shape == (2, T, 3, 8, 6) and st.dtype == torch.float32
    torch.testing.assert_close(st, ref, **TOL)
    _, fin = gdn.scan(x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=x["S0"], output_final_state=True)
    torch.testing.assert_close(st[:, -1], fin, **TOL)
    pos = [0, T // 2, T - 1]
    torch.testing.assert_close(gdn.states(x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=x["S0"],
                                          positions=pos), st[:, pos])
    torch.testing.assert_close(gdn.readout(st, x["q"]),
                               gdn.naive(x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=x["S0"])[0], **TOL)


@pytest.mark.parametrize("T", [3, 64, 100])
def test_gla_chunk_states_vs_naive_and_fla(T):
    x = inputs(T, seed=2)
    a = (x["q"], x["k"], x["v"], x["gk"])
    o1, s1 = gla.naive(*a, initial_state=x["S0"], output_final_state=True)
    o2, s2 = gla.chunk_torch(*a, initial_state=x["S0"], output_final_state=True)
    torch.testing.assert_close(o2, o1, **TOL)
    torch.testing.assert_close(s2, s1, **TOL)
    o3, s3 = fla_naive("gla").naive_recurrent_gla(*a, initial_state=x["S0"], output_final_state=True)
    torch.testing.assert_close(o1, o3.float(), **TOL)
    torch.testing.assert_close(s1, s3.float(), **TOL)
    st = gla.states(*a, initial_state=x["S0"])
    S, ref = x["S0"].clone(), []
    for t in range(T):
        S = x["gk"][:, t].exp()[..., None] * S + x["k"][:, t, ..., None] * x["v"][:, t, :, None]
        ref.append(S)
    torch.testing.assert_close(st, torch.stack(ref, 1), **TOL)


@pytest.mark.parametrize("T", [7, 64, 90])
@pytest.mark.parametrize("groups", [1, 2])
def test_mamba2_vs_step_loop_and_simple_gla(T, groups):
    g = torch.Generator().manual_seed(3)
    B, H, P, N = 2, 4, 6, 5
    x = torch.randn(B, T, H, P, generator=g)
    dt = torch.nn.functional.softplus(torch.randn(B, T, H, generator=g))
    A = -torch.rand(H, generator=g) * 2
    Bm, Cm = torch.randn(B, T, groups, N, generator=g), torch.randn(B, T, groups, N, generator=g)
    D, h0 = torch.randn(H, generator=g), torch.randn(B, H, N, P, generator=g)
    y1, h1 = mamba2.naive(x, dt, A, Bm, Cm, D, initial_state=h0, output_final_state=True)
    y2, h2 = mamba2.chunk_torch(x, dt, A, Bm, Cm, D, initial_state=h0, output_final_state=True)
    torch.testing.assert_close(y2, y1, **TOL)
    torch.testing.assert_close(h2, h1, **TOL)
    q, k, v, gg = mamba2.to_gla_inputs(x, dt, A, Bm, Cm)
    y3, h3 = fla_naive("simple_gla").naive_recurrent_simple_gla(q, k, v, gg, initial_state=h0,
                                                                 output_final_state=True, scale=1.0)
    torch.testing.assert_close(y1 - x * D.view(1, 1, -1, 1), y3.float(), **TOL)
    torch.testing.assert_close(h1, h3.float(), **TOL)
    st = mamba2.states(x, dt, A, Bm, Cm, initial_state=h0)
    torch.testing.assert_close(st[:, -1], h1, **TOL)
    torch.testing.assert_close(mamba2.states(x, dt, A, Bm, Cm, initial_state=h0, positions=[1, T - 1]),
                               st[:, [1, T - 1]])


def test_gradients_match_naive():
    x = inputs(70, seed=4)
    leaves = {n: x[n].clone().requires_grad_() for n in ("q", "k", "v", "g", "beta")}
    gr = []
    for fn in (gdn.naive, gdn.chunk_torch):
        for t in leaves.values():
            t.grad = None
        o, s = fn(leaves["q"], leaves["k"], leaves["v"], leaves["g"], leaves["beta"], output_final_state=True,
                  use_qk_l2norm_in_kernel=True)
        (o.square().sum() + s.sum()).backward()
        gr.append({n: t.grad.clone() for n, t in leaves.items()})
    for n in leaves:
        torch.testing.assert_close(gr[1][n], gr[0][n], atol=1e-3, rtol=1e-3, msg=n)


def test_shape_errors():
    x = inputs(10)
    with pytest.raises(ValueError, match=r"g has shape \[2, 10, 3, 1\], expected \[2, 10, 3\]"):
        gdn.scan(x["q"], x["k"], x["v"], x["g"][..., None], x["beta"])
    with pytest.raises(ValueError, match="v has shape"):
        gla.scan(x["q"], x["k"], x["v"][:, :5], x["gk"])
    with pytest.raises(ValueError, match="positions must lie in 0..9"):
        gdn.states(x["q"], x["k"], x["v"], x["g"], x["beta"], positions=[10])
    with pytest.raises(ValueError, match="groups, which must divide"):
        mamba2.scan(torch.randn(1, 4, 3, 2), torch.rand(1, 4, 3), -torch.rand(3), torch.randn(1, 4, 2, 2),
                    torch.randn(1, 4, 2, 2))
