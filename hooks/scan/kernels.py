"""Whether the scans use fla's Triton kernels: `fla_available` (checked once; installs the torch stand-in of
`hooks.scan.fla_dqkwg` where fla needs it, and IEEE fp32 products where ``HYBRID_INTERP_FLA_IEEE=1`` asks:
`hooks.scan.fla_precision`) and `use_kernels` (CUDA tensors only)."""
from __future__ import annotations

import functools
import os

import torch

from hooks.scan import fla_dqkwg, fla_precision


@functools.lru_cache(maxsize=None)
def fla_available() -> bool:
    """True when fla's Triton kernels can be imported (a CUDA host with triton). Checked once."""
    try:
        import triton  # noqa: F401
        import fla.ops  # noqa: F401
        if not torch.cuda.is_available():
            return False
    except Exception:
        return False
    fla_dqkwg.install()     # fla refuses the gated backward on Hopper + Triton < 3.7.1: see that module
    if os.environ.get(fla_precision.REQUEST_ENV) == "1":
        fla_precision.ieee_dots(fla_ok=True)
    return True


def use_kernels(t: torch.Tensor) -> bool:
    """Kernels only for CUDA tensors: CPU tensors must never reach Triton."""
    return t.is_cuda and fla_available()
