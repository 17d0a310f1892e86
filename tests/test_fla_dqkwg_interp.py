"""hooks.scan.fla_dqkwg_triton under the Triton interpreter: fla's own ``chunk_bwd_kernel_dqkwg`` launched at
32-wide blocks equals hooks.scan.fla_dqkwg's torch version (checked against autograd in tests/test_fla_dqkwg.py)
for plain and grouped value heads, with and without the delta rule's dw, both state layouts, K = 64 (two key
blocks) and K = 16; and `install` registers a backend whose verifier sends ungated calls back to fla.
Skipped where triton or fla is absent; run with ``TRITON_INTERPRET=1`` (the GPU check: tests/gpu/check_grad_gpu.py)."""
import os

import pytest
import torch

pytest.importorskip("triton")
pytest.importorskip("fla")
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("fla's kernel on CPU tensors needs TRITON_INTERPRET=1", allow_module_level=True)

from hooks.scan import fla_dqkwg as D  # noqa: E402
from hooks.scan import fla_dqkwg_triton as FT  # noqa: E402


pytestmark = pytest.mark.usefixtures("fla_first_config")   # tests/conftest.py


@pytest.mark.parametrize("H,HV,K,V,with_w,state_v_first", [(2, 2, 64, 64, True, False), (1, 2, 64, 32, True, False),
                                                           (2, 2, 16, 64, False, False), (1, 1, 64, 64, True, True)])
def test_fla_kernel_at_32_wide_blocks_equals_the_torch_version(monkeypatch, H, HV, K, V, with_w, state_v_first):
    kw = FT.check_inputs("cpu", torch.float32, H, HV, K, V, with_w, state_v_first, seed=3)
    got, want = FT.dqkwg32(**kw), D.torch_dqkwg(**kw)
    assert (got[2] is None) == (not with_w)
    for name, a, b in zip(("dq", "dk", "dw", "dg"), got, want):
        if b is not None:
            assert a.shape == b.shape, name
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item(), msg=name)
    assert FT.compare(kw, D.torch_dqkwg) < 1e-5
    FT._CHECKED.clear()
    monkeypatch.setenv("HYBRID_INTERP_DQKWG_IMPL", "triton")      # auto leaves fp32 calls to the torch version
    assert FT.usable(kw["q"], kw["k"], kw["v"], kw["w"], state_v_first, D.torch_dqkwg)


def test_install_registers_a_verifier_that_sends_ungated_calls_back_to_fla(monkeypatch):
    monkeypatch.setenv("HYBRID_INTERP_DQKWG", "1")
    D.install.cache_clear()
    assert D.install()
    from fla.backends import _get_operation_registry
    ours = [b for b in _get_operation_registry("common")._backends.values() if b.backend_type == "hybrid_interp_torch"]
    assert len(ours) == 1
    x = torch.zeros(1, 8, 2, 4)
    assert ours[0].verify("chunk_bwd_dqkwg", x, x, x, x, None, None, g=torch.zeros(1, 8, 2)) == (True, None)
    assert not ours[0].verify("chunk_bwd_dqkwg", x, x, x, x, None, None, g=None)[0]
