"""bench/prof_sweep_share.py: kernel names sort into matmul / attention / rest as written, the profiler's rows are
summed per kind in seconds, and without a GPU it exits 2 with one line."""
import sys
from types import SimpleNamespace

import pytest

from bench_scripts import load  # tests/, a sibling


@pytest.fixture
def ps(monkeypatch):
    monkeypatch.setitem(sys.modules, "bench_patch", load("bench_patch"))   # its sibling import
    return load("prof_sweep_share")


def test_kernel_kinds_and_sums(ps):
    assert ps.kind_of("sm90_xmma_gemm_f32f32_tf32f32_f32_tn_n_tilesize128x128x32") == "matmul"
    assert ps.kind_of("cutlass::Kernel2<cutlass_80_simt_sgemm_128x64_8x5_nt_align1>") == "matmul"
    assert ps.kind_of("_mm") == "matmul"
    assert ps.kind_of("fmha_cutlassF_f32_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel)") == "attention"
    assert ps.kind_of("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>") == "rest"
    assert ps.kind_of("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float, float>") == "rest"
    ev = lambda key, us, n=1: SimpleNamespace(key=key, self_device_time_total=us, count=n)  # noqa: E731
    prof = SimpleNamespace(key_averages=lambda: [ev("ampere_sgemm_128x64_nn", 3e6, 4), ev("fmha_x", 1e6),
                                                 ev("layer_norm_kernel", 5e5, 2), ev("cpu_op", 0, 9)])
    kinds, names, count = ps.kernel_times(prof)
    assert kinds == {"matmul": 3.0, "attention": 1.0, "rest": 0.5}
    assert names["layer_norm_kernel"] == 0.5 and count == 7


def test_no_gpu_exits_2(ps, capsys, monkeypatch):
    monkeypatch.setattr(ps.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        ps.main([])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
