"""hooks.matmul: TF32 rounding, the split's accuracy with TF32 products emulated in float64 (against a plain TF32
product, which the same check fails), the op and the context on the CPU, and a sweep's matmul setting in its spec."""
import pytest
import torch
import torch.nn.functional as F

from hooks import matmul
from interp import InterpError, patching, tasks
from interp.zoo.randinit import random_zoo


def _tf32(t, trunc=False):
    """float32 -> TF32 as a tensor core might read it: rounded (as `round_tf32`) or truncated."""
    b = t.contiguous().view(torch.int32)
    return ((b if trunc else b + 0x1000) & -0x2000).view(torch.float32)


def _rel(y, ref):
    return float((y - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("scale", [1e-30, 1e-3, 1.0, 1e4, 1e30])
def test_round_tf32_keeps_10_bits_to_nearest(scale):
    g = torch.Generator().manual_seed(0)
    t = torch.randn(10000, generator=g) * scale
    hi = matmul.round_tf32(t)
    assert int((hi.view(torch.int32) & 0x1FFF).abs().max()) == 0
    assert float(((t - hi).double().abs() / t.double().abs()).max()) <= 2.0 ** -11
    # to nearest: no other TF32 number is closer (the neighbours one TF32 ulp either side)
    ulp = (hi.view(torch.int32) + 0x2000).view(torch.float32) - hi
    assert bool(((t - hi).abs() <= ulp.abs() / 2 * (1 + 1e-6)).all())


@pytest.mark.parametrize("trunc", [False, True])
def test_split_accuracy_with_emulated_tf32_products(trunc):
    """The three TF32 products of the split parts (TF32 operand reads emulated, products and sums in float64) are
    within a few 2^-22 of the exact product, relative; a plain TF32 product of the same operands is ~2^-11 off."""
    g = torch.Generator().manual_seed(1)
    M, K, N = 64, 768, 96
    x, w = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g) / K ** 0.5
    ref = x.double() @ w.double().T
    (xh, xl), (wh, wl) = matmul.split(x), matmul.split(w)
    assert torch.equal(xh + xl, x) and torch.equal(wh + wl, w)
    mm = lambda a, b: _tf32(a, trunc).double() @ _tf32(b, trunc).double().T   # noqa: E731
    split = mm(xl, wh) + mm(xh, wl) + mm(xh, wh)
    plain = _tf32(x, trunc).double() @ _tf32(w, trunc).double().T
    assert _rel(split, ref) < 2.0 ** -19
    assert _rel(plain, ref) > 2.0 ** -14


def test_split_linear_on_cpu_equals_linear_with_bias_and_batch_dims():
    g = torch.Generator().manual_seed(2)
    x, w, b = torch.randn(3, 5, 40, generator=g), torch.randn(24, 40, generator=g), torch.randn(24, generator=g)
    for bias in (None, b):
        y = matmul.split_tf32_linear(x, w, bias)
        assert y.shape == (3, 5, 24)
        torch.testing.assert_close(y, F.linear(x, w, bias), rtol=1e-5, atol=1e-5)
    assert torch.backends.cuda.matmul.allow_tf32 is False


def test_context_restores_linear_and_leaves_cpu_untouched(monkeypatch):
    plain = F.linear
    calls = []
    monkeypatch.setattr(matmul, "split_tf32_linear", lambda *a: calls.append(a))
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    with matmul.split_tf32_linears():
        assert F.linear is not plain
        torch.testing.assert_close(F.linear(x, w), plain(x, w), rtol=0, atol=0)   # CPU: the plain op
        torch.testing.assert_close(torch.nn.Linear(8, 3)(x).shape, torch.Size([4, 3]))
    assert F.linear is plain and not calls
    with pytest.raises(RuntimeError), matmul.split_tf32_linears():
        raise RuntimeError("inside")
    assert F.linear is plain
    with matmul.matmul_mode("fp32"):
        assert F.linear is plain
    with pytest.raises(ValueError, match="valid: fp32, tf32x3"):
        matmul.matmul_mode("tf32")


def test_takes_float32_cuda_without_autograd_only():
    from types import SimpleNamespace as NS
    t = lambda cuda=True, dt=torch.float32, grad=False: NS(is_cuda=cuda, dtype=dt, requires_grad=grad)  # noqa: E731
    assert matmul.takes(t(), t()) and matmul.takes(t(), t(), t())
    assert not matmul.takes(t(cuda=False), t()) and not matmul.takes(t(), t(dt=torch.bfloat16))
    assert not matmul.takes(t(), t(), t(dt=torch.float16))
    assert not matmul.takes(t(grad=True), t()) and not matmul.takes(t(), t(grad=True))
    with torch.no_grad():
        assert matmul.takes(t(grad=True), t(grad=True))


def test_sweep_matmul_setting_checked_and_in_spec_only_when_set(tmp_path):
    m = random_zoo(32, 2, 2, "transformer", "cpu")
    pairs = tasks.make_pairs("mqar", 4, seed=0, n_pairs=2, seq_len=12)
    kw = dict(layers=[1], positions=[5, 9], keep_all=True, progress=False, n_boot=10)
    with pytest.raises(InterpError, match="matmul 'bf16' is not valid; valid: fp32, tf32x3"):
        patching.sweep(m, pairs, matmul="bf16", **kw)
    a = patching.sweep(m, pairs, out=tmp_path / "a", **kw)
    b = patching.sweep(m, pairs, out=tmp_path / "b", matmul="tf32x3", **kw)   # CPU: the same numbers
    assert a.logit_diff.tolist() == b.logit_diff.tolist()
    assert "matmul" not in patching.plan_sweep(m, pairs, layers=[1]).spec
    assert patching.plan_sweep(m, pairs, layers=[1], matmul="tf32x3").spec["matmul"] == "tf32x3"
    with pytest.raises(InterpError, match="matmul"):   # a resume with the other mode is refused, naming it
        patching.sweep(m, pairs, out=tmp_path / "a", matmul="tf32x3", **kw)
