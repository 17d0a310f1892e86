"""``HYBRID_INTERP_CONV=fla`` under the Triton interpreter (issue #26): `interp.zoo.common.ShortConv` on fla's
``causal_conv1d`` kernel (the SiLU fused) gives torch's F.conv1d path's outputs and gradients (inputs and weights)
with the same parameters. Skipped where triton or fla is absent; run with ``TRITON_INTERPRET=1`` (README: the
Triton-interpreter venv)."""
import os

import pytest
import torch

pytest.importorskip("triton")
pytest.importorskip("fla")
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("fla's kernels on CPU tensors need TRITON_INTERPRET=1", allow_module_level=True)

from interp.zoo import common  # noqa: E402


pytestmark = pytest.mark.usefixtures("fla_first_config")   # tests/conftest.py


@pytest.mark.parametrize("T", [1, 37])
def test_fla_conv_equals_torch_conv(T, monkeypatch):
    torch.manual_seed(0)
    conv = common.ShortConv(48, 4)
    x = torch.randn(2, T, 48, requires_grad=True)
    g = torch.randn(2, T, 48)
    out = {}
    for impl in ("torch", "fla"):
        monkeypatch.setenv("HYBRID_INTERP_CONV", impl)
        monkeypatch.setattr(common, "use_kernels", lambda t: impl == "fla")   # fla's kernel for these CPU tensors
        y = conv(x)
        out[impl] = (y,) + torch.autograd.grad(y, (x, conv.weight), g)
    for a, b, what in zip(out["fla"], out["torch"], ("y", "dx", "dw")):
        assert a.shape == b.shape, what
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=what)
