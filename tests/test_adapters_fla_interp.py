"""fla's Mamba2ForCausalLM through the fla adapter on CPU, under the Triton interpreter.

fla's model classes need triton (their norms are Triton kernels), so this runs only in a separate
environment that has triton and fla (never the project's CPU venv) with TRITON_INTERPRET=1, e.g.
    TRITON_INTERPRET=1 /work/venv-triton/bin/python -m pytest tests/test_adapters_fla_interp.py
and is skipped elsewhere. It runs the GPU script's own row check (tests/gpu/check_models_gpu.py::check:
logits unchanged by capture, last state = the model's cached state, states = a float32 step loop,
a state patch flows forward only, nothing left behind) on the tiny Mamba2 model, fp32 and bf16.
fla's GDN / GLA chunk kernels do not run under the interpreter (fla 0.6 calls int.to() in them); with no
grad and T <= 64 their fused-recurrent kernels do (tests/test_adapters_fla_classes_interp.py runs those rows).
"""
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" or importlib.util.find_spec("triton") is None
    or importlib.util.find_spec("fla") is None,
    reason="needs triton, fla and TRITON_INTERPRET=1 (never in the CPU venv)")


def _gpu_script(name):
    """tests/gpu/<name>.py imported by file path and registered under its plain name in sys.modules, where
    check_models_gpu's own ``import first_config`` (a sibling import) finds it."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / "gpu" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


@pytest.fixture(scope="module")
def C():
    first_config = _gpu_script("first_config")
    check_models_gpu = _gpu_script("check_models_gpu")
    if check_models_gpu.flash_attn_shim() and "fla.layers.attn" in sys.modules:
        # fla's Attention module was imported (by another test) before the stand-in existed
        attn = sys.modules["fla.layers.attn"]
        attn.flash_attn_func = sys.modules["flash_attn"].flash_attn_func
        attn.flash_attn_varlen_func = sys.modules["flash_attn"].flash_attn_varlen_func
    first_config.first_config_only()  # no driver to benchmark configs on
    return check_models_gpu


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fla_mamba2_capture(C, dtype):
    import hooks
    name, model = [m for m in C.fla_models("cpu", torch.float32) if m[0] == "fla Mamba2"][0]
    torch.manual_seed(0)
    C.spice(model)
    m = model.to(dtype).eval()
    x = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(40))
    row = C.check(name, m, x, C.fla_final_states(m, x, hooks.wrap(m).layers))
    assert row["logits_diff"] == 0.0, row  # capture keeps the layer's own forward
    tol = C.TOL_LOOP if dtype == torch.float32 else 5e-2
    assert row["final_rel"] <= tol and row["loop_rel"] <= tol, row
    assert row["patch_ok"] and row["clean_ok"], row
