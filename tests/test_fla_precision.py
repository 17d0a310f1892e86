"""hooks.scan.fla_precision.ieee_dots: sets Triton's fp32 default and fla's named precisions to IEEE, refuses once
fla's patched kernels have compiled, and only sets the environment where fla's kernels are absent. fla's modules are
stand-ins here (no GPU); the real ones: tests/gpu/check_scan_gpu.py --ieee (BENCHMARKS.md section 45)."""
import sys
import types

import pytest

from hooks.scan import fla_precision as P


class Const:
    """Stands in for ``triton.language.constexpr``: holds ``value``."""
    def __init__(self, value):
        self.value = value


def kernel(compiled: bool):
    """A Triton kernel as fla defines it: heuristics / autotuner wrappers keeping the JITFunction as ``.fn``."""
    jit = types.SimpleNamespace(device_caches={0: ({"key": "binary"} if compiled else {}, {}, None, None, None)})
    return types.SimpleNamespace(fn=types.SimpleNamespace(fn=jit))


@pytest.fixture
def fake_fla(monkeypatch):
    for key in P.ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(P, "_fla_ok", lambda: True)
    monkeypatch.setattr(P, "_ACTIVE", False)              # restored after the test: no other test sees it set
    mods = {"fla.ops.utils.solve_tril": dict(FLA_TRIL_PRECISION="ieee"),
            "fla.ops.gated_delta_rule.chunk_fwd": dict(SOLVE_TRIL_DOT_PRECISION=Const("tf32"), k=kernel(False)),
            "fla.ops.kda.chunk_intra": dict(SOLVE_TRIL_DOT_PRECISION=Const("tf32"),
                                            SAFE_GATE_DOT_PRECISION=Const("bf16x3"), k=kernel(False))}
    out = {}
    for name, attrs in mods.items():
        mod = types.ModuleType(name)
        vars(mod).update(attrs)
        monkeypatch.setitem(sys.modules, name, mod)
        out[name] = mod
    return out


def test_sets_the_default_and_every_named_precision(fake_fla):
    import os
    assert not P.active()
    lines = P.ieee_dots()
    assert P.active()
    assert os.environ["TRITON_F32_DEFAULT"] == "ieee" and os.environ["FLA_TRIL_PRECISION"] == "ieee"
    gdn, kda = fake_fla["fla.ops.gated_delta_rule.chunk_fwd"], fake_fla["fla.ops.kda.chunk_intra"]
    for v in (gdn.SOLVE_TRIL_DOT_PRECISION, kda.SOLVE_TRIL_DOT_PRECISION, kda.SAFE_GATE_DOT_PRECISION):
        assert isinstance(v, Const) and v.value == "ieee"
    assert "fla.ops.kda.chunk_intra.SAFE_GATE_DOT_PRECISION: bf16x3 -> ieee" in lines
    assert "TRITON_F32_DEFAULT: unset -> ieee" in lines


def test_refuses_after_the_kernels_compiled_and_changes_nothing(fake_fla):
    gdn = fake_fla["fla.ops.gated_delta_rule.chunk_fwd"]
    gdn.k = kernel(True)
    with pytest.raises(RuntimeError, match="already compiled"):
        P.ieee_dots()
    assert gdn.SOLVE_TRIL_DOT_PRECISION.value == "tf32"


def test_a_second_call_after_the_kernels_compiled_changes_nothing_and_passes(fake_fla):
    P.ieee_dots()
    fake_fla["fla.ops.gated_delta_rule.chunk_fwd"].k = kernel(True)     # compiled with the IEEE settings
    lines = P.ieee_dots()
    assert "fla.ops.gated_delta_rule.chunk_fwd.SOLVE_TRIL_DOT_PRECISION: ieee -> ieee" in lines


def test_refuses_a_solve_tril_imported_with_another_precision(fake_fla):
    fake_fla["fla.ops.utils.solve_tril"].FLA_TRIL_PRECISION = "tf32"
    with pytest.raises(RuntimeError, match="FLA_TRIL_PRECISION=tf32"):
        P.ieee_dots()


def test_a_module_or_name_this_fla_lacks_is_reported(fake_fla, monkeypatch):
    monkeypatch.setitem(sys.modules, "fla.ops.kda.chunk_intra", None)      # import fails
    del fake_fla["fla.ops.gated_delta_rule.chunk_fwd"].SOLVE_TRIL_DOT_PRECISION
    lines = P.ieee_dots()
    assert "fla.ops.kda.chunk_intra: not in this fla, nothing to set" in lines
    assert "fla.ops.gated_delta_rule.chunk_fwd.SOLVE_TRIL_DOT_PRECISION: not in this fla" in lines


def test_without_fla_kernels_only_the_environment_is_set(monkeypatch):
    import os
    monkeypatch.setattr(P, "_ACTIVE", False)
    monkeypatch.delenv("FLA_TRIL_PRECISION", raising=False)
    monkeypatch.setenv("TRITON_F32_DEFAULT", "tf32")
    monkeypatch.setattr(P, "_fla_ok", lambda: False)
    lines = P.ieee_dots()
    assert os.environ["TRITON_F32_DEFAULT"] == "ieee"
    assert lines[0] == "TRITON_F32_DEFAULT: tf32 -> ieee" and "not available" in lines[-1]
    assert not P.active()                              # nothing of fla's changed, so results are unchanged


def test_a_sweep_records_ieee_products_in_its_spec_and_a_resume_without_them_is_refused(monkeypatch, tmp_path):
    from interp import InterpError, patching, tasks
    from interp.zoo.randinit import random_zoo
    m = random_zoo(32, 2, 2, "gdn75", "cpu")
    pairs = tasks.make_pairs("mqar", 4, seed=0, n_pairs=2, seq_len=12)
    kw = dict(layers=[1], positions=[5, 9], keep_all=True, progress=False, n_boot=10)
    patching.sweep(m, pairs, out=tmp_path / "a", **kw)
    assert "kernels" not in patching.plan_sweep(m, pairs, layers=[1]).spec
    monkeypatch.setattr(P, "_ACTIVE", True)
    assert patching.plan_sweep(m, pairs, layers=[1]).spec["kernels"] == {"fla_products": "ieee"}
    with pytest.raises(InterpError, match=r'kernels: \(absent\) -> \{"fla_products": "ieee"\}'):
        patching.sweep(m, pairs, out=tmp_path / "a", **kw)


def test_the_bench_script_refuses_without_a_gpu_and_builds_fla_shaped_inputs(monkeypatch, capsys):
    import torch

    import bench_scripts
    monkeypatch.setitem(sys.modules, "bench_states", bench_scripts.load("bench_states"))   # beside it in bench/
    pf = bench_scripts.load("prof_fla_ieee")
    if not torch.cuda.is_available():
        assert pf.main(["--precision", "tf32"]) == 2 and "needs a GPU" in capsys.readouterr().err
    kw = pf.scan_inputs(2, 10, dev="cpu")
    assert kw["q"].shape == (2, 10, 12, 64) and kw["g"].shape == (2, 10, 12) and (kw["g"] <= 0).all()
    with pytest.raises(SystemExit):
        pf.main(["--precision", "bf16"])


@pytest.mark.parametrize("request_env", ["1", None])
def test_the_environment_request_applies_at_the_kernels_first_use(monkeypatch, request_env):
    """``HYBRID_INTERP_FLA_IEEE=1``: `hooks.scan.kernels.fla_available`, when fla's kernels can run (stand-ins for
    triton, fla and a GPU here), calls ieee_dots before any scan uses them; without it, nothing is set."""
    from hooks.scan import kernels
    for name in ("triton", "fla", "fla.ops"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setattr(kernels.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(kernels.fla_dqkwg, "install", lambda: None)
    calls = []
    monkeypatch.setattr(P, "ieee_dots", lambda fla_ok=None: calls.append(fla_ok))
    if request_env is None:
        monkeypatch.delenv(P.REQUEST_ENV, raising=False)
    else:
        monkeypatch.setenv(P.REQUEST_ENV, request_env)
    assert kernels.fla_available.__wrapped__() is True                # uncached: the cached value is this host's
    assert calls == ([True] if request_env else [])


def test_this_cpu_host_has_no_fla_kernels():
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU host")
    assert P._fla_ok() is False


def test_the_request_counts_as_active_before_the_first_scan_where_fla_can_run(monkeypatch):
    """A sweep plans (and writes its spec) before its first scan reaches `fla_available`."""
    monkeypatch.setattr(P, "_ACTIVE", False)
    monkeypatch.setenv(P.REQUEST_ENV, "1")
    monkeypatch.setattr(P, "_fla_ok", lambda: True)
    assert P.active()
    monkeypatch.setattr(P, "_fla_ok", lambda: False)    # no fla kernels here: nothing changes, nothing recorded
    assert not P.active()
