"""Device names checked once for every command: "auto" resolved, an unknown name or a kind the toolkit does not
run on (meta, mps, ...), CUDA where there is none, a GPU index past the last one."""
from __future__ import annotations

from interp import InterpError


def check_device(device, valid: str = "cpu, cuda, cuda:N"):
    """``device`` (a string or torch.device) as a torch.device, checked: an unknown name, CUDA on a
    machine without it, or a GPU index past the last one is an InterpError naming ``valid``."""
    import torch
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InterpError(f"device '{device}' is not valid; valid: {valid}") from None
    if d.type not in ("cpu", "cuda"):   # meta, mps, xpu ...: the toolkit runs on CPUs and CUDA GPUs
        raise InterpError(f"device '{device}' is not supported; valid: {valid}")
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise InterpError(f"device '{device}' requested but CUDA is not available on this machine; valid: "
                              + ", ".join(v for v in valid.split(", ") if not v.startswith("cuda")))
        n = torch.cuda.device_count()
        if d.index is not None and d.index >= n:
            raise InterpError(f"device '{device}' is not valid: this machine has {n} GPU(s); valid: cpu, "
                              f"cuda:0..cuda:{n - 1}")
    return d


def resolve_device(device, valid: str = "auto, cpu, cuda, cuda:N"):
    """``device`` as a torch.device: "auto" is `device_type`'s choice; any other name is `check_device`'s."""
    import torch
    return torch.device(device_type("auto")) if device == "auto" else check_device(device, valid=valid)


def device_type(device) -> str:
    """'cpu' or 'cuda', the kind of device that ``device`` names, without checking that it is here: "auto" is
    CUDA where this machine has it, else the CPU (the one "auto" rule of the trainers, their run folders and the
    experiments)."""
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type
