"""``HYBRID_INTERP_NORM=fla`` under the Triton interpreter (issue #26): `interp.zoo.common.GatedRMSNorm` on fla's
``rms_norm_gated`` kernel gives the torch composite's outputs and gradients (x, gate, weight), float32 x with a
float32 or bfloat16 gate (as under autocast: the scan's readout cast to the layer's dtype, the gate from a bf16
matmul). Skipped where triton or fla is absent; run with ``TRITON_INTERPRET=1`` (README: the Triton-interpreter
venv)."""
import os

import pytest
import torch

pytest.importorskip("triton")
pytest.importorskip("fla")
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("fla's kernels on CPU tensors need TRITON_INTERPRET=1", allow_module_level=True)

from interp.zoo import common  # noqa: E402

pytestmark = pytest.mark.usefixtures("fla_first_config")   # tests/conftest.py


@pytest.mark.parametrize("gate_dtype", [torch.float32, torch.bfloat16])
def test_fla_gated_norm_equals_torch(gate_dtype, monkeypatch):
    torch.manual_seed(0)
    norm = common.GatedRMSNorm(16)
    norm.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(2, 9, 3, 16, requires_grad=True)
    gate = torch.randn(2, 9, 3, 16).to(gate_dtype).requires_grad_(True)
    dy = torch.randn(2, 9, 3, 16)
    out = {}
    for impl in ("torch", "fla"):
        monkeypatch.setenv("HYBRID_INTERP_NORM", impl)
        monkeypatch.setattr(common, "use_kernels", lambda t: impl == "fla")   # fla's kernel for these CPU tensors
        y = norm(x, gate)
        out[impl] = (y,) + torch.autograd.grad(y, (x, gate, norm.weight), dy)
    for a, b, what in zip(out["fla"], out["torch"], ("y", "dx", "dgate", "dw")):
        assert a.shape == b.shape and a.dtype == b.dtype, what
        tol = 1e-5 if what != "dgate" or gate_dtype == torch.float32 else 1e-2
        torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol, msg=what)
