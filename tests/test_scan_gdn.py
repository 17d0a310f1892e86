"""hooks.scan.gdn on CPU: chunked pure-torch scan and per-token states vs step loops and fla's naive.py.

Tolerances (float32, |inputs| ~ 1): chunk_torch vs naive and states vs the step loop within
2e-5 absolute + 2e-5 relative; fla's naive.py within the same; gradients of chunk_torch vs
naive within 1e-4; gradcheck (fast mode) in float64 at its defaults (atol 1e-5, rtol 1e-3).

The last section runs the GPU path (`hooks.scan.triton_states`: fla's chunk pieces and the state
expansion kernel) under the Triton interpreter on CPU tensors. It runs only in a separate
environment that has triton (never the project's CPU venv) with TRITON_INTERPRET=1, e.g.
    TRITON_INTERPRET=1 /work/venv-triton/bin/python -m pytest tests/test_scan_gdn.py -k interp
and is skipped elsewhere.
"""
import importlib.util
import os
import sys

import pytest
import torch

from hooks.scan import gdn
from hooks.scan._common import fla_reference, l2norm

TOL = dict(atol=2e-5, rtol=2e-5)


def inputs(T, seed=0, B=2, H=3, K=8, V=6, normalized=True, decay=0.7, dtype=torch.float32):
    """q, k, v, g (log decay in (-decay, 0]), beta in (0, 2) (negative-eigenvalue range), S0."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    k = r(B, T, H, K)
    if normalized:
        k = torch.nn.functional.normalize(k, dim=-1)
    return dict(q=r(B, T, H, K), k=k, v=r(B, T, H, V), g=-torch.rand(B, T, H, generator=gen, dtype=dtype) * decay,
                beta=torch.rand(B, T, H, generator=gen, dtype=dtype) * 2, S0=r(B, H, K, V))


def args(x):
    return x["q"], x["k"], x["v"], x["g"], x["beta"]


def step_states(q, k, v, g, beta, S0):
    """Independent step loop: S_t after each token [B, T, H, K, V] (k as the scan sees it)."""
    B, T, H, K = k.shape
    S = torch.zeros(B, H, K, v.shape[-1], dtype=v.dtype) if S0 is None else S0.clone()
    out = []
    for t in range(T):
        S = S * g[:, t].exp()[..., None, None]
        d = beta[:, t, :, None] * (v[:, t] - torch.einsum("bhkv,bhk->bhv", S, k[:, t]))
        S = S + k[:, t, :, :, None] * d[:, :, None]
        out.append(S)
    return torch.stack(out, 1)


@pytest.mark.parametrize("T", [1, 17, 64, 130])
@pytest.mark.parametrize("l2", [False, True])
@pytest.mark.parametrize("init", [False, True])
def test_chunk_equals_naive_and_fla(T, l2, init):
    x = inputs(T, normalized=not l2)  # with l2norm, raw keys: the normalisation must happen inside
    S0 = x["S0"] if init else None
    o1, s1 = gdn.naive(*args(x), initial_state=S0, output_final_state=True, use_qk_l2norm_in_kernel=l2)
    o2, s2 = gdn.chunk_torch(*args(x), initial_state=S0, output_final_state=True, use_qk_l2norm_in_kernel=l2)
    torch.testing.assert_close(o2, o1, **TOL)
    torch.testing.assert_close(s2, s1, **TOL)
    o0, s0 = gdn.scan(*args(x), initial_state=S0, output_final_state=True, use_qk_l2norm_in_kernel=l2)
    assert torch.equal(o0, o2) and torch.equal(s0, s2)  # CPU tensors: scan is chunk_torch
    q, k = (l2norm(x["q"]), l2norm(x["k"])) if l2 else (x["q"], x["k"])
    o3, s3 = fla_reference("gated_delta_rule").naive_recurrent_gated_delta_rule(
        q, k, x["v"], x["beta"], x["g"], initial_state=S0, output_final_state=True)
    torch.testing.assert_close(o1, o3, **TOL)
    torch.testing.assert_close(s1, s3, **TOL)


def test_l2norm_is_the_kernels_not_f_normalize():
    """x / sqrt(sum x^2 + 1e-6), as fla's kernel and HF; F.normalize clamps the norm instead."""
    x = torch.tensor([[3e-4, 4e-4], [3.0, 4.0]])
    torch.testing.assert_close(l2norm(x), x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6), atol=0, rtol=1e-6)
    assert (l2norm(x)[0] - torch.nn.functional.normalize(x, dim=-1)[0]).abs().max() > 0.1


def test_output_dtype_and_scale():
    x = inputs(70, seed=5)
    o, s = gdn.chunk_torch(*(t.bfloat16() for t in args(x)), output_final_state=True)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    o1, _ = gdn.chunk_torch(*args(x), scale=0.3)
    o2, _ = gdn.naive(*args(x), scale=0.3)
    torch.testing.assert_close(o1, o2, **TOL)
    o3, _ = gdn.naive(*args(x), scale=8 ** -0.5)
    torch.testing.assert_close(gdn.naive(*args(x))[0], o3, atol=0, rtol=0)  # default scale K^-0.5


def test_strong_decay_stays_exact():
    """Log decays down to -30 per step: exp(G_t - G_s) is summed directly, never a product that
    over/underflows; still within TOL of the step loop, no NaN."""
    x = inputs(150, seed=6, decay=30.0)
    o1, s1 = gdn.naive(*args(x), initial_state=x["S0"], output_final_state=True)
    o2, s2 = gdn.chunk_torch(*args(x), initial_state=x["S0"], output_final_state=True)
    torch.testing.assert_close(o2, o1, **TOL)
    torch.testing.assert_close(s2, s1, **TOL)
    st = gdn.states(*args(x), initial_state=x["S0"])
    torch.testing.assert_close(st, step_states(x["k"], x["k"], x["v"], x["g"], x["beta"], x["S0"]), **TOL)


@pytest.mark.parametrize("T", [5, 64, 150])
@pytest.mark.parametrize("l2", [False, True])
def test_states_every_token(T, l2):
    x = inputs(T, seed=1, normalized=not l2)
    st = gdn.states(*args(x), initial_state=x["S0"], use_qk_l2norm_in_kernel=l2)
    k = l2norm(x["k"]) if l2 else x["k"]
    assert st.shape == (2, T, 3, 8, 6) and st.dtype == torch.float32
    torch.testing.assert_close(st, step_states(x["q"], k, x["v"], x["g"], x["beta"], x["S0"]), **TOL)
    _, fin = gdn.scan(*args(x), initial_state=x["S0"], output_final_state=True, use_qk_l2norm_in_kernel=l2)
    torch.testing.assert_close(st[:, -1], fin, **TOL)
    o = gdn.naive(*args(x), initial_state=x["S0"], use_qk_l2norm_in_kernel=l2)[0]
    torch.testing.assert_close(gdn.readout(st, l2norm(x["q"]) if l2 else x["q"]), o, **TOL)


def test_states_positions_and_dtype():
    T = 150
    x = inputs(T, seed=2)
    full = gdn.states(*args(x))
    for pos in ([0, 63, 64, 149], [149, 3, 3, 70], torch.tensor([5]), []):
        got = gdn.states(*args(x), positions=pos)
        assert got.shape == (2, len(pos), 3, 8, 6)
        torch.testing.assert_close(got, full[:, torch.as_tensor(pos, dtype=torch.long)], atol=1e-6, rtol=1e-6)
    bf = gdn.states(*args(x), positions=[10], out_dtype=torch.bfloat16)
    assert bf.dtype == torch.bfloat16
    torch.testing.assert_close(bf.float(), full[:, [10]], atol=2e-2, rtol=1e-2)


def test_states_without_initial_state_start_from_zero():
    x = inputs(20, seed=3)
    st = gdn.states(*args(x))
    torch.testing.assert_close(st, step_states(*args(x), None), **TOL)
    # the first state is the first write alone: S_0 = k_0 (beta_0 v_0)^T
    torch.testing.assert_close(st[:, 0], x["k"][:, 0, :, :, None] * (x["beta"][:, 0, :, None] * x["v"][:, 0])[:, :, None],
                               **TOL)


def test_gradients_match_naive():
    x = inputs(70, seed=4, normalized=False)
    leaves = {n: x[n].clone().requires_grad_() for n in ("q", "k", "v", "g", "beta", "S0")}
    grads = []
    for fn in (gdn.naive, gdn.chunk_torch):
        for t in leaves.values():
            t.grad = None
        o, s = fn(*(leaves[n] for n in ("q", "k", "v", "g", "beta")), initial_state=leaves["S0"],
                  output_final_state=True, use_qk_l2norm_in_kernel=True)
        (o.square().sum() + s.sum()).backward()
        grads.append({n: t.grad.clone() for n, t in leaves.items()})
    for n in leaves:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-4, rtol=1e-4, msg=n)


def test_gradcheck_chunk_and_states():
    """float64 gradcheck across a chunk boundary (T=66), through the output, final and per-token states."""
    x = inputs(66, seed=7, B=1, H=1, K=3, V=2, dtype=torch.float64)
    leaves = tuple(x[n].clone().requires_grad_() for n in ("q", "k", "v", "g", "beta", "S0"))

    def f(q, k, v, g, beta, S0):
        o, s = gdn.chunk_torch(q, k, v, g, beta, initial_state=S0, output_final_state=True,
                               use_qk_l2norm_in_kernel=True)
        st = gdn.states(q, k, v, g, beta, initial_state=S0, use_qk_l2norm_in_kernel=True, positions=[0, 63, 65],
                        out_dtype=torch.float64)
        return o, s, st
    assert torch.autograd.gradcheck(f, leaves, fast_mode=True)


@pytest.mark.parametrize("init", [False, True])
def test_scan_variable_length_equals_each_sequence(init):
    """fla's variable-length form off the kernel path: sequences of lengths 1, 70 (two chunks) and 5 back to back in
    one row, each from its own initial state, equal the step loop of each alone (float64 reference)."""
    lens = [1, 70, 5]
    x = inputs(sum(lens), seed=3, B=1)
    S0 = inputs(1, seed=4, B=3)["S0"] if init else None
    cu = torch.tensor([0, 1, 71, 76])
    o, S = gdn.scan(*args(x), scale=0.3, initial_state=S0, output_final_state=True, use_qk_l2norm_in_kernel=True,
                    cu_seqlens=cu)
    assert o.shape == x["v"].shape and S.shape == (3, 3, 8, 6)
    for n in range(3):
        sl = slice(int(cu[n]), int(cu[n + 1]))
        one = [t[:, sl].double() for t in args(x)]
        want_o, want_S = gdn.naive(*one, scale=0.3, initial_state=None if S0 is None else S0[n:n + 1].double(),
                                   output_final_state=True, use_qk_l2norm_in_kernel=True)
        torch.testing.assert_close(o[:, sl].double(), want_o, **TOL)
        torch.testing.assert_close(S[n:n + 1].double(), want_S.double(), **TOL)
    assert gdn.scan.takes_cu_seqlens
    with pytest.raises(ValueError, match="one row"):
        gdn.scan(*args(inputs(4, B=2)), cu_seqlens=torch.tensor([0, 2, 4]))
    with pytest.raises(ValueError, match="initial_state"):
        gdn.scan(*args(x), initial_state=inputs(1, B=2)["S0"], cu_seqlens=cu)


def test_bad_inputs():
    x = inputs(10)
    q, k, v, g, beta = args(x)
    with pytest.raises(ValueError, match=r"g has shape \[2, 10, 3, 1\], expected \[2, 10, 3\]"):
        gdn.scan(q, k, v, g[..., None], beta)
    with pytest.raises(ValueError, match=r"beta has shape \[2, 9, 3\], expected \[2, 10, 3\]"):
        gdn.chunk_torch(q, k, v, g, beta[:, :9])
    with pytest.raises(ValueError, match=r"q has shape \[2, 10, 3, 4\], expected \[2, 10, 3, 8\]"):
        gdn.naive(q[..., :4], k, v, g, beta)
    with pytest.raises(ValueError, match=r"v has shape \[2, 10, 6\], expected \[2, 10, 3, \*\]"):
        gdn.scan(q, k, v[:, :, 0], g, beta)
    with pytest.raises(ValueError, match=r"initial_state has shape \[2, 3, 6, 8\], expected \[2, 3, 8, 6\]"):
        gdn.states(q, k, v, g, beta, initial_state=x["S0"].transpose(-1, -2))
    with pytest.raises(ValueError, match="positions must lie in 0..9"):
        gdn.states(q, k, v, g, beta, positions=[10])
    with pytest.raises(ValueError, match="impl 'triton' needs CUDA"):
        gdn.states(q, k, v, g, beta, impl="triton")


# --- GPU path under the Triton interpreter (separate venv with triton, TRITON_INTERPRET=1) -------

interp = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" or importlib.util.find_spec("triton") is None,
                            reason="needs triton and TRITON_INTERPRET=1 (never in the CPU venv)")


@pytest.fixture
def ts():
    import triton.runtime.autotuner as at
    from hooks.scan import triton_states
    at.Autotuner._bench = lambda self, *a, config=None, **k: [0.0, 0.0, 0.0]  # no driver to time configs on
    return triton_states


def fla_kernel(fn):
    """fla 0.6.0's kernels call int.to() on loop indices, which the interpreter does not allow."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001
        if "has no attribute 'to'" in str(e):  # str: repr escapes the quotes of a wrapped error
            pytest.skip("fla's kernel does not run under this Triton interpreter (int.to)")
        raise


def expand_case(seed, H, per_key, B=2, T=70, K=8, V=12):
    """Random expansion inputs over two chunks (h, k, w, g; scalar or per-key log decays) and the torch
    formula's states for them."""
    from hooks.scan._common import expand_states
    gen = torch.Generator().manual_seed(seed)
    k, w = torch.randn(B, T, H, K, generator=gen), torch.randn(B, T, H, V, generator=gen)
    h = torch.randn(B, 2, H, K, V, generator=gen)
    g = -torch.rand(B, T, H, *((K,) if per_key else ()), generator=gen) * 3
    return (h, k, w, g), expand_states(h, k, w, g)


@interp
@pytest.mark.parametrize("per_key", [False, True])
def test_interp_expand_kernel_equals_torch(ts, per_key):
    (h, k, w, g), full = expand_case(0, 2, per_key)
    torch.testing.assert_close(ts.expand_triton(h, k, w, g), full, **TOL)
    for pos in ([69, 0, 63, 64, 64], [5], []):
        pos = torch.tensor(pos, dtype=torch.long)
        torch.testing.assert_close(ts.expand_triton(h, k, w, g, pos), full[:, pos], **TOL)
    bf = ts.expand_triton(h, k, w, g, out_dtype=torch.bfloat16)
    assert bf.dtype == torch.bfloat16


@interp
@pytest.mark.parametrize("per_key", [False, True])
def test_interp_expand_kernel_configs_agree(ts, per_key):
    """Every V-block width gives the torch formula's states, and under the interpreter the same bits as the
    first config (each state element sees the same operations in the same order; on a GPU the compiler may
    contract multiply-adds differently per block shape, bench/prof_expand.py reports by how much)."""
    (h, k, w, g), full = expand_case(1, 3, per_key)
    base = ts.expand_triton(h, k, w, g, config=dict(BV=16, num_warps=4))
    torch.testing.assert_close(base, full, **TOL)
    pos = torch.tensor([69, 0, 63, 64], dtype=torch.long)
    for bv in (8, 4):
        assert torch.equal(ts.expand_triton(h, k, w, g, config=dict(BV=bv, num_warps=2)), base), bv
        assert torch.equal(ts.expand_triton(h, k, w, g, pos, config=dict(BV=bv, num_warps=2)), base[:, pos]), bv


@interp
def test_interp_prof_expand_floors(ts, monkeypatch):
    """bench/prof_expand.py's two floors compute what they claim: the recurrence with the chunk's first k, w and
    a fixed decay 0.99 ("no per-token loads"), and every token's exp(g_t) h_c + k_t w_t^T ("no loop")."""
    import bench_scripts
    monkeypatch.setitem(sys.modules, "bench_states", bench_scripts.load("bench_states"))
    pe = bench_scripts.load("prof_expand")
    B, T, H, K, V, BT = 2, 128, 3, 16, 16, 64
    gen = torch.Generator().manual_seed(4)
    h, k = torch.randn(B, T // BT, H, K, V, generator=gen), torch.randn(B, T, H, K, generator=gen)
    w, g = torch.randn(B, T, H, V, generator=gen), -torch.rand(B, T, H, generator=gen)
    first = torch.zeros(B, T, H, K, V)
    pe._floor[(H, T // BT, B)](h, k, w, g, first, T, H=H, K=K, V=V, BT=BT, CARRY=True, num_warps=4)
    io = torch.zeros(B, T, H, K, V)
    pe._floor[(H, T // BT, B)](h, k, w, g, io, T, H=H, K=K, V=V, BT=BT, CARRY=False, num_warps=4)
    c = torch.arange(T) // BT
    kw = torch.einsum("bthk,bthv->bthkv", k.double(), w.double())
    torch.testing.assert_close(io.double(), h[:, c].double() * g.double().exp()[..., None, None] + kw, **TOL)
    s = h.double()
    for t in range(BT):   # a chunk's first write, decayed by 0.99 per step, added every step
        s = 0.99 * s + kw[:, ::BT]
        torch.testing.assert_close(first[:, t::BT].double(), s, **TOL)


@interp
def test_interp_prof_tf32x3_matmul(ts, monkeypatch):
    """bench/prof_tf32x3.py's Triton matmul is x @ w.T on shapes no block divides (its masks and strides; the
    interpreter computes every input precision in fp32, so the precisions themselves are timed on the GPU only)."""
    import bench_scripts
    import triton
    monkeypatch.setitem(sys.modules, "bench_states", bench_scripts.load("bench_states"))
    pt = bench_scripts.load("prof_tf32x3")
    gen = torch.Generator().manual_seed(5)
    M, N, K = 70, 40, 48
    x, w = torch.randn(M, K, generator=gen), torch.randn(N, K, generator=gen)
    y = torch.full((M, N), float("nan"))
    pt._mm.fn[(triton.cdiv(M, 32), triton.cdiv(N, 16))](x, w, y, M, N, K, 128, PREC="tf32x3", BM=32, BN=16, BK=32)
    torch.testing.assert_close(y.double(), x.double() @ w.double().T, **TOL)


@interp
def test_interp_fla_pieces(ts):
    """fla's v_new is exactly the effective write d_t = beta_t (v_t - exp(g_t) S_{t-1}^T k_t) and h
    the chunk-start states: equal to the pure-torch chunk pieces, and the GPU-path states equal states()."""
    x = inputs(70, seed=8)
    q, k, v, g, beta = args(x)
    h, d = fla_kernel(lambda: ts.gdn_pieces(k, v, g, beta, x["S0"]))
    _, _, h_ref, d_ref = gdn._chunks(q, k, v, g, beta, 1.0, x["S0"], keep=True)
    torch.testing.assert_close(d, d_ref, **TOL)
    torch.testing.assert_close(h, h_ref, **TOL)
    ref = gdn.states(*args(x), initial_state=x["S0"])
    for impl in ("auto", "triton", "einsum"):
        torch.testing.assert_close(ts.gdn_states(k, v, g, beta, x["S0"], None, impl=impl), ref, **TOL)
    pos = torch.tensor([0, 63, 64, 69])
    for impl in ("auto", "einsum"):
        torch.testing.assert_close(ts.gdn_states(k, v, g, beta, x["S0"], pos, impl=impl), ref[:, pos], **TOL)
    # with the kernel's l2norm on raw keys
    x = inputs(70, seed=10, normalized=False)
    ref = gdn.states(*args(x), initial_state=x["S0"], use_qk_l2norm_in_kernel=True)
    got = ts.gdn_states(x["k"], x["v"], x["g"], x["beta"], x["S0"], None, l2=True)
    torch.testing.assert_close(got, ref, **TOL)


@interp
@pytest.mark.parametrize("per_key", [False, True])
def test_interp_gla_pieces(ts, per_key):
    from hooks.scan import gla
    x = inputs(70, seed=9)
    gk = torch.nn.functional.logsigmoid(torch.randn(2, 70, 3, 8)) / 4 if per_key else x["g"]
    h = fla_kernel(lambda: ts.gla_pieces(x["k"], x["v"], gk, x["S0"]))
    _, _, h_ref = gla._chunks(x["q"], x["k"], x["v"], gk, 1.0, x["S0"], keep=True)
    torch.testing.assert_close(h, h_ref, **TOL)
    ref = gla.states(x["q"], x["k"], x["v"], gk, initial_state=x["S0"])
    torch.testing.assert_close(ts.gla_states(x["k"], x["v"], gk, x["S0"], None), ref, **TOL)


@interp
def test_interp_kept_pieces(ts, monkeypatch):
    """kept_gdn_pieces records what fla's chunk forward looks up as chunk_gated_delta_rule_fwd_h (here
    a stand-in computing the pure-torch pieces, since fla's kernel does not run under the interpreter),
    passes its results through untouched, expands them to the states (afterwards, or at once with
    ``expand``), and restores the function on every exit; a call it cannot expand (variable lengths) or a second call gives None."""
    import fla.ops.gated_delta_rule.chunk as chunk_mod
    x = inputs(70, seed=11)
    q, k, v, g, beta = args(x)

    def fwd_h(k, w, u, g=None, initial_state=None, cu_seqlens=None, chunk_size=64, **kw):
        _, _, h, d = gdn._chunks(q, k, v, x["g"], beta, 1.0, x["S0"], keep=True)
        return h, d, None
    monkeypatch.setattr(chunk_mod, "chunk_gated_delta_rule_fwd_h", fwd_h)
    call = lambda **kw: chunk_mod.chunk_gated_delta_rule_fwd_h(k=k, w=None, u=None, **kw)  # noqa: E731
    with ts.kept_gdn_pieces() as got:
        h, d, _ = call()
    assert chunk_mod.chunk_gated_delta_rule_fwd_h is fwd_h
    assert len(got) == 1 and got[0][1] is h and got[0][2] is d
    ref = gdn.states(*args(x), initial_state=x["S0"])
    torch.testing.assert_close(ts.expand_kept(got, g, None), ref, **TOL)
    pos = torch.tensor([3, 64, 69])
    torch.testing.assert_close(ts.expand_kept(got, g, pos), ref[:, pos], **TOL)
    with ts.kept_gdn_pieces(expand=lambda *rec: ts.expand_kept([rec], g, pos)) as got:  # expanded at once
        call()
    assert len(got) == 1
    torch.testing.assert_close(got[0], ref[:, pos], **TOL)
    with ts.kept_gdn_pieces() as got:
        call(cu_seqlens=torch.tensor([0, 70]))
    assert got == [None] and ts.expand_kept(got, g, None) is None
    with ts.kept_gdn_pieces() as got:
        call(), call()
    assert ts.expand_kept(got, g, None) is None
    assert ts.expand_kept([(k, torch.cat([h, h], 2), torch.cat([d, d], 2))], g, None) is None  # grouped value heads
    with pytest.raises(RuntimeError, match="boom"):
        with ts.kept_gdn_pieces():
            raise RuntimeError("boom")
    assert chunk_mod.chunk_gated_delta_rule_fwd_h is fwd_h
