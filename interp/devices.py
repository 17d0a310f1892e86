"""Device names checked once for every command: an unknown name, CUDA where there is none, a GPU index
past the last one."""
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
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise InterpError(f"device '{device}' requested but CUDA is not available on this machine; valid: "
                              + ", ".join(v for v in valid.split(", ") if not v.startswith("cuda")))
        n = torch.cuda.device_count()
        if d.index is not None and d.index >= n:
            raise InterpError(f"device '{device}' is not valid: this machine has {n} GPU(s); valid: cpu, "
                              f"cuda:0..cuda:{n - 1}")
    return d
