"""Shared pytest fixtures: ``one_thread`` (one torch thread for the test: on the shared 2-core machine, and the
setting of the subprocesses some tests compare against, so both run the same kernels and give the same bits)."""
import pytest
import torch


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
