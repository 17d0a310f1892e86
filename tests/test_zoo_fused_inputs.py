"""The zoo mixers' input projections in one matmul and one conv (`interp.zoo.common.proj_conv`, issue #26) give the
scan inputs and gradients of one call per projection; the gated norm's switch (``HYBRID_INTERP_NORM``): torch by
default, a bad value raises naming the valid ones, CPU tensors stay on torch (fla's kernel itself:
tests/test_norm_fla_interp.py under the Triton interpreter)."""
import pytest
import torch

from interp.zoo import common
from interp.zoo.gdn import GatedDeltaNet
from interp.zoo.gla import GatedLinearAttention


def _inputs_and_grads(mixer, x, fuse, monkeypatch):
    monkeypatch.setattr(common, "FUSE_PROJECTIONS", fuse)
    x = x.clone().requires_grad_(True)
    kw = mixer.scan_inputs(x)
    outs = [kw[k] for k in ("q", "k", "v", "g", "beta") if k in kw]
    loss = sum((o.double() * torch.linspace(-1, 1, o.numel(), dtype=torch.float64).view(o.shape)).sum() for o in outs)
    params = [p for p in mixer.parameters()]
    grads = torch.autograd.grad(loss, [x] + params, allow_unused=True)
    return outs, grads


@pytest.mark.parametrize("make", [lambda: GatedDeltaNet(24, 2, 8, neg_eig=True),
                                  lambda: GatedLinearAttention(24, 2, 8)], ids=["gdn", "gla"])
def test_fused_projections_equal_separate(make, monkeypatch):
    torch.manual_seed(0)
    mixer = make()
    x = torch.randn(3, 11, 24)
    fused, gf = _inputs_and_grads(mixer, x, True, monkeypatch)
    sep, gs = _inputs_and_grads(mixer, x, False, monkeypatch)
    assert len(fused) == len(sep) >= 4
    for a, b in zip(fused, sep):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    for a, b in zip(gf, gs):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_projections_in_float64_equal_to_rounding(monkeypatch):
    """In float64 the one-matmul path equals the separate calls to 1e-12: the same sums, whatever the blocking."""
    torch.manual_seed(1)
    mixer = GatedDeltaNet(16, 2, 8).double()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    fused, _ = _inputs_and_grads(mixer, x, True, monkeypatch)
    sep, _ = _inputs_and_grads(mixer, x, False, monkeypatch)
    for a, b in zip(fused, sep):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", ["fla", "torch"])
def test_gated_norm_on_cpu_is_torchs(impl, monkeypatch):
    """On CPU tensors either setting runs the composite (float32 inside): rmsnorm(x) * w * silu(gate), written out
    here in float64."""
    monkeypatch.setenv("HYBRID_INTERP_NORM", impl)
    torch.manual_seed(0)
    norm = common.GatedRMSNorm(8)
    norm.weight.data.uniform_(0.5, 1.5)
    x, gate = torch.randn(2, 5, 3, 8), torch.randn(2, 5, 3, 8)
    xd, gd, w = x.double(), gate.double(), norm.weight.double()
    want = xd / torch.sqrt((xd * xd).mean(-1, keepdim=True) + norm.eps) * w * gd * torch.sigmoid(gd)
    got = norm(x, gate)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)


def test_gated_norm_dispatch(monkeypatch):
    """Where fla's kernel is called: on tensors `use_kernels` accepts, with ``HYBRID_INTERP_NORM=fla`` (not the
    default), under the ``auto`` scan backend, outside torch.vmap (interp.stacked); a stand-in for fla's function
    records the calls."""
    import sys
    import types

    calls = []
    fake = types.ModuleType("fla.modules.norm.fused_norm_gate")
    fake.rms_norm_gated = lambda x, g, w, b, activation, eps: calls.append(x.shape) or torch.zeros_like(x)
    monkeypatch.setitem(sys.modules, "fla.modules.norm.fused_norm_gate", fake)
    monkeypatch.setattr(common, "use_kernels", lambda t: True)
    monkeypatch.delenv("HYBRID_INTERP_NORM", raising=False)
    from interp.zoo import HybridLM, ZooConfig
    m = HybridLM(ZooConfig(vocab_size=11, d_model=16, n_layers=2, layout="gdn100", n_heads=2, head_dim=8))
    norms = [n for n in m.modules() if isinstance(n, common.GatedRMSNorm)]
    x = torch.randn(2, 3, 2, 8)
    norms[0](x, x)                                                  # the default: the composite
    assert calls == []
    monkeypatch.setenv("HYBRID_INTERP_NORM", "fla")
    assert len(norms) == 2 and all(n.kernels for n in norms)
    assert torch.equal(norms[0](x, x), torch.zeros_like(x)) and calls == [x.shape]
    torch.vmap(lambda t: norms[0](t, t))(x)                         # under vmap: the composite
    assert calls == [x.shape]
    monkeypatch.setenv("HYBRID_INTERP_NORM", "torch")
    norms[0](x, x)
    assert calls == [x.shape]
    monkeypatch.setenv("HYBRID_INTERP_NORM", "fla")
    m.set_scan_backend("reference")
    assert not any(n.kernels for n in norms)
    norms[0](x, x)
    assert calls == [x.shape]
    m.set_scan_backend("auto")
    assert all(n.kernels for n in norms)
