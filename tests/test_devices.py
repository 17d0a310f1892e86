"""The one device rule (`interp.devices`): "auto", checked names, and what the trainers and experiments record."""
import pytest
import torch

from interp import InterpError
from interp.devices import device_type, resolve_device
from interp.experiment.context import resolve_device as experiment_device

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors of a machine without CUDA")


def test_auto_follows_this_machine():
    here = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == here == device_type("auto")
    assert experiment_device("auto") == here


def test_device_type_names_the_kind_without_checking_it_is_here():
    assert device_type("cuda:1") == "cuda" and device_type("cpu") == "cpu"


@pytest.mark.parametrize("name", ["tpu", "cuda:x", ""])
def test_unknown_names_are_one_line_errors_naming_the_valid_ones(name):
    for resolve in (resolve_device, experiment_device):
        with pytest.raises(InterpError, match=f"device '{name}' is not valid; valid: auto, cpu, cuda, cuda:N"):
            resolve(name)


@NO_CUDA
def test_cuda_without_cuda_names_what_is_valid_here():
    for resolve in (resolve_device, experiment_device):
        with pytest.raises(InterpError, match="'cuda:0' requested but CUDA is not available .*; valid: auto, cpu$"):
            resolve("cuda:0")


@pytest.mark.parametrize("name", ["meta", "mps", "xpu:0"])
def test_kinds_the_toolkit_does_not_run_on_are_refused(name):
    for resolve in (resolve_device, experiment_device):
        with pytest.raises(InterpError, match=f"device '{name}' is not supported; valid: auto, cpu, cuda, cuda:N"):
            resolve(name)
