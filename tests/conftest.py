"""Shared pytest fixtures: ``one_thread`` (one torch thread for the test: on the shared 2-core machine, and the
setting of the subprocesses some tests compare against, so both run the same kernels and give the same bits);
``fla_first_config`` (for the Triton-interpreter tests: fla's autotuned kernels keep their first config)."""
import pytest
import torch


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def fla_first_config():
    """fla's autotuned kernels keep their first config: under the Triton interpreter there is no driver to benchmark
    the configs on (tests/gpu/first_config.py, loaded as check_models_gpu imports it)."""
    from test_adapters_fla_interp import _gpu_script  # tests/, a sibling
    _gpu_script("first_config").first_config_only()
