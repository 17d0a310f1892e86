"""hooks.scan.fla_dqkwg: the torch stand-in for fla's gated ``chunk_bwd_dqkwg`` against autograd of the
chunk equations it differentiates (float64, so the tolerance is tight), with GVA heads, a length that is not
a multiple of the chunk, and both state layouts."""
import math

import pytest
import torch

from hooks.scan import fla_dqkwg as D


def _chunk_objective(q, k, v, w, g, h, do, dh, dv, scale, BT):
    """sum over chunks c of <do, o_c> + <dh_c, h_{c+1}> + <dv, -(w h_c)>, where (g: chunk-local cumulative
    log2 decay, h_c the chunk-start state, held fixed)
        o_c     = scale exp2(g) q h_c + (tril(exp2(g_i - g_j)) * scale q k^T) v
        h_{c+1} = exp2(g_last) h_c + (exp2(g_last - g) k)^T v.
    Its gradients are what the kernel computes (dg without the ln 2 of d exp2)."""
    B, T, H, K = q.shape
    HV = v.shape[2]
    qh, kh = q.repeat_interleave(HV // H, 2), k.repeat_interleave(HV // H, 2)
    total = 0
    for c in range(math.ceil(T / BT)):
        s = slice(c * BT, min(T, (c + 1) * BT))
        qc, kc, vc, gc = qh[:, s], kh[:, s], v[:, s], g[:, s]
        hc = h[:, c]                                                    # [B, HV, K, V]
        gl = gc[:, -1]                                                  # [B, HV]
        n = gc.shape[1]
        mask = torch.tril(torch.ones(n, n, dtype=torch.bool))
        dec = torch.exp2(torch.where(mask[None, None], gc.transpose(1, 2)[..., :, None] - gc.transpose(1, 2)[..., None, :],
                                     float("-inf")))                    # [B, HV, i, j]
        A = torch.einsum("bihk,bjhk->bhij", qc, kc) * dec * scale
        o = torch.einsum("bihk,bhkv->bihv", qc * torch.exp2(gc)[..., None], hc) * scale + torch.einsum("bhij,bjhv->bihv", A, vc)
        hn = torch.exp2(gl)[..., None, None] * hc + torch.einsum("bjhk,bjhv->bhkv", kc * torch.exp2(gl[:, None] - gc)[..., None], vc)
        u = -torch.einsum("bihk,bhkv->bihv", w[:, s], hc)
        total = total + (do[:, s] * o).sum() + (dh[:, c] * hn).sum() + (dv[:, s] * u).sum()
    return total


@pytest.mark.parametrize("T,H,HV,state_v_first", [(150, 2, 2, False), (64, 1, 2, False), (100, 2, 4, True)])
def test_torch_dqkwg_equals_autograd_of_the_chunk_equations(T, H, HV, state_v_first):
    torch.manual_seed(0)
    B, K, V, BT = 2, 16, 8, 32
    NT = math.ceil(T / BT)
    f = dict(dtype=torch.float64)
    q, k = torch.randn(B, T, H, K, **f), torch.randn(B, T, H, K, **f) / K ** 0.5
    v, do, dv = torch.randn(B, T, HV, V, **f), torch.randn(B, T, HV, V, **f), torch.randn(B, T, HV, V, **f)
    w = torch.randn(B, T, HV, K, **f)
    logd = -torch.rand(B, T, HV, **f) * 0.3
    g = torch.cat([logd[:, i:i + BT].cumsum(1) for i in range(0, T, BT)], 1)   # chunk-local cumulative log2 decay
    h, dh = torch.randn(B, NT, HV, K, V, **f), torch.randn(B, NT, HV, K, V, **f)
    scale = K ** -0.5
    leaves = [x.clone().requires_grad_() for x in (q, k, w, g)]
    _chunk_objective(*leaves[:2], v, leaves[2], leaves[3], h, do, dh, dv, scale, BT).backward()
    ref_dq, ref_dk, ref_dw, ref_dg = (x.grad for x in leaves)
    hh, dhh = (h.transpose(-1, -2).contiguous(), dh.transpose(-1, -2).contiguous()) if state_v_first else (h, dh)
    dq, dk, dw, dg = D.chunk_bwd_dqkwg(q, k, v, do, hh, dhh, w=w, g=g, dv=dv, scale=scale,
                                       state_v_first=state_v_first, chunk_size=BT)
    for name, a, b in [("dq", dq, ref_dq), ("dk", dk, ref_dk), ("dw", dw, ref_dw), ("dg", dg * math.log(2), ref_dg)]:
        assert a.shape == b.shape and a.is_contiguous(), name      # fla view()s them next
        torch.testing.assert_close(a.double(), b, rtol=1e-9, atol=1e-9, msg=name)
    # without w (simple GLA's call) there is no dw and the rest is unchanged
    dq2, dk2, dw2, dg2 = D.chunk_bwd_dqkwg(q, k, v, do, hh, dhh, g=g, scale=scale, state_v_first=state_v_first,
                                          chunk_size=BT)
    assert dw2 is None and torch.equal(dq2, dq) and torch.equal(dk2, dk) and torch.equal(dg2, dg)


def test_verifier_sends_other_calls_back_to_fla(monkeypatch):
    x = torch.zeros(1, 8, 2, 4)
    assert D.verify(x, x, x, x, None, None, g=torch.zeros(1, 8, 2)) == (True, None)
    assert not D.verify(x, x, x, x, None, None, g=None)[0]
    assert not D.verify(x, x, x, x, None, None, g=torch.zeros(1, 8, 2), cu_seqlens=torch.tensor([0, 8]))[0]
    assert not D.verify(x, x, torch.zeros(1, 8, 3, 4), x, None, None, g=torch.zeros(1, 8, 3))[0]
    monkeypatch.setenv("HYBRID_INTERP_DQKWG", "0")
    assert not D.needed()
    monkeypatch.setenv("HYBRID_INTERP_DQKWG", "1")
    assert D.needed()


def test_torch_dqkwg_with_bfloat16_inputs_stays_close_to_exact():
    """With bf16 inputs (the training dtype) the stand-in rounds where the kernel rounds (h, dh, dv, ds to
    bf16 before the products); against float64 autograd on the same rounded inputs every gradient stays
    within 1e-2 of its largest value (measured ~3e-3)."""
    torch.manual_seed(0)
    B, T, H, K, V, BT = 2, 300, 2, 64, 64, 64
    NT = math.ceil(T / BT)
    f = dict(dtype=torch.float64)
    r = lambda x: x.to(torch.bfloat16).double()   # noqa: E731
    q, k = r(torch.randn(B, T, H, K, **f) / 8), r(torch.randn(B, T, H, K, **f) / 8)
    v, do, dv = r(torch.randn(B, T, H, V, **f)), r(torch.randn(B, T, H, V, **f)), r(torch.randn(B, T, H, V, **f))
    w = r(torch.randn(B, T, H, K, **f))
    logd = -torch.rand(B, T, H, **f) * 0.3
    g = torch.cat([logd[:, i:i + BT].cumsum(1) for i in range(0, T, BT)], 1).float().double()
    h, dh = torch.randn(B, NT, H, K, V).double(), torch.randn(B, NT, H, K, V).double()
    leaves = [x.clone().requires_grad_() for x in (q, k, w, g)]
    _chunk_objective(*leaves[:2], v, leaves[2], leaves[3], h, do, dh, dv, K ** -0.5, BT).backward()
    bf = lambda x: x.to(torch.bfloat16)           # noqa: E731
    out = D.chunk_bwd_dqkwg(bf(q), bf(k), bf(v), bf(do), h.float(), dh.float(), w=bf(w), g=g.float(), dv=bf(dv),
                            scale=K ** -0.5, chunk_size=BT)
    assert out[0].dtype == torch.bfloat16 and out[3].dtype == torch.float32
    for name, a, b in zip(["dq", "dk", "dw", "dg"], [out[0], out[1], out[2], out[3] * math.log(2)],
                          [x.grad for x in leaves]):
        err = ((a.double() - b).abs().max() / b.abs().max()).item()
        assert err < 1e-2, (name, err)


def test_16bit_simple_gla_calls_warn_once_that_they_are_unverified():
    D._warn_unverified.cache_clear()
    x, g = torch.randn(1, 64, 1, 16, dtype=torch.bfloat16), torch.zeros(1, 64, 1)
    h = torch.zeros(1, 1, 1, 16, 16)
    with pytest.warns(RuntimeWarning, match="not verified"):
        D.chunk_bwd_dqkwg(x, x, x, x, h, h, g=g, chunk_size=64)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        D.chunk_bwd_dqkwg(x, x, x, x, h, h, g=g, chunk_size=64)                    # once per process
        D.chunk_bwd_dqkwg(x, x, x, x, h, h, w=x, g=g, dv=x, chunk_size=64)          # the delta rule: verified


def _fake_kernel(monkeypatch, factor):
    """Route as on a GPU (CPU tensors count as runnable) with dqkwg32 replaced by the torch version's outputs
    times ``factor``; returns the list the fake appends each call to."""
    from hooks.scan import fla_dqkwg_triton as FT
    calls = []

    def fake(*args, block=32, **kw):
        calls.append(1)
        return tuple(None if x is None else x * factor for x in D.torch_dqkwg(*args, **kw))
    monkeypatch.setattr(FT, "runs_here", lambda device: True)
    monkeypatch.setattr(FT, "dqkwg32", fake)
    monkeypatch.setattr(FT, "_CHECKED", {})
    return FT, calls


def test_fla_kernel_serves_calls_only_where_its_first_use_check_passes(monkeypatch):
    """chunk_bwd_dqkwg routes to fla's kernel (at 32-wide blocks) after one check per configuration; a kernel
    that disagrees with the torch version is dropped with a warning (auto) or raises (triton)."""
    FT, calls = _fake_kernel(monkeypatch, 1.0)
    kw32 = FT.check_inputs("cpu", torch.float32, 2, 4, 16, 8, True, False, chunk_size=16, seed=1)
    D.chunk_bwd_dqkwg(**kw32)
    assert calls == [] and FT.checked() == {}                                  # auto: fp32 keeps the stand-in
    kw = FT.check_inputs("cpu", torch.bfloat16, 2, 4, 16, 8, True, False, chunk_size=16, seed=1)
    out = D.chunk_bwd_dqkwg(**kw)
    assert len(calls) == 2 and list(FT.checked().values()) == [True]          # the check, then the call
    for a, b in zip(out, D.torch_dqkwg(**kw)):
        torch.testing.assert_close(a, b)
    D.chunk_bwd_dqkwg(**kw)
    assert len(calls) == 3                                                     # checked once per configuration
    FT, calls = _fake_kernel(monkeypatch, 1.5)
    with pytest.warns(RuntimeWarning, match="failed its check"):
        out = D.chunk_bwd_dqkwg(**kw)
    assert len(calls) == 1 and list(FT.checked().values()) == [False]
    for a, b in zip(out, D.torch_dqkwg(**kw)):
        assert torch.equal(a, b)                                               # the torch version served it
    monkeypatch.setattr(FT, "_CHECKED", {})
    monkeypatch.setenv("HYBRID_INTERP_DQKWG_IMPL", "triton")
    with pytest.raises(RuntimeError, match="failed its check"):
        D.chunk_bwd_dqkwg(**kw)
    n = len(calls)
    monkeypatch.setenv("HYBRID_INTERP_DQKWG_IMPL", "torch")
    D.chunk_bwd_dqkwg(**kw)
    assert len(calls) == n                                                     # torch: the kernel is never tried
    monkeypatch.setenv("HYBRID_INTERP_DQKWG_IMPL", "fast")
    with pytest.raises(ValueError, match="valid: auto, torch, triton"):
        D.chunk_bwd_dqkwg(**kw)


def test_on_cpu_without_the_interpreter_the_torch_version_serves(monkeypatch):
    from hooks.scan import fla_dqkwg_triton as FT
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(FT, "_CHECKED", {})
    kw = FT.check_inputs("cpu", torch.float32, 1, 1, 16, 16, False, True, chunk_size=16)
    for a, b in zip(D.chunk_bwd_dqkwg(**kw), D.torch_dqkwg(**kw)):
        assert (a is None and b is None) or torch.equal(a, b)
    assert FT.checked() == {}
