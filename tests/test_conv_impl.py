"""interp.zoo.common's short conv implementation switch (``HYBRID_INTERP_CONV``, issue #26): torch by default, a bad
value raises naming the valid ones, and ``fla`` leaves CPU tensors to torch's conv (fla's kernel itself:
tests/test_conv_fla_interp.py under the Triton interpreter)."""
import pytest
import torch
import torch.nn.functional as F

from interp.zoo import common


def reference(x, w):
    """The causal depthwise conv + SiLU written out: y_t = silu(sum_j w[:, j] x_{t-K+1+j}) (zeros before token 0)."""
    K = w.shape[-1]
    xp = F.pad(x, (0, 0, K - 1, 0))
    return F.silu(sum(xp[:, j:j + x.shape[1]] * w[:, 0, j] for j in range(K)))


@pytest.mark.parametrize("reader, var, bad", [("conv_impl", "HYBRID_INTERP_CONV", "cudnn"),
                                              ("norm_impl", "HYBRID_INTERP_NORM", "apex")])
def test_impl_switch_default_torch_and_bad_value(reader, var, bad, monkeypatch):
    """The zoo's implementation switches (one reader, `common._env_choice`): torch unless set; a bad value named."""
    monkeypatch.delenv(var, raising=False)
    assert getattr(common, reader)() == "torch"
    monkeypatch.setenv(var, bad)
    with pytest.raises(ValueError, match=f"{var}='{bad}'; valid: torch, fla"):
        getattr(common, reader)()


def test_short_conv_refuses_a_bad_switch(monkeypatch):
    monkeypatch.setenv("HYBRID_INTERP_CONV", "cudnn")
    conv = common.ShortConv(6, 4)
    with pytest.raises(ValueError, match="valid: torch, fla"):
        conv(torch.zeros(1, 3, 6))


@pytest.mark.parametrize("impl", ["torch", "fla"])
def test_short_conv_on_cpu_is_torchs(impl, monkeypatch):
    monkeypatch.setenv("HYBRID_INTERP_CONV", impl)
    torch.manual_seed(0)
    conv = common.ShortConv(6, 4)
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    y = conv.double()(x)
    torch.testing.assert_close(y, reference(x, conv.weight), rtol=1e-12, atol=1e-12)
