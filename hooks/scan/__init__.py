"""State-scan modules, one per recurrence family, each with a step-loop reference (`naive`), a
pure-torch chunked path (`chunk_torch`), a dispatcher (`scan`: fla kernels for CUDA tensors only)
and exact per-token states (`states`)."""
from hooks.scan import gdn, gla, mamba1, mamba2
from hooks.scan._common import use_kernels

FAMILIES = {"gdn": gdn, "gla": gla, "mamba2": mamba2, "mamba1": mamba1}

__all__ = ["gdn", "gla", "mamba1", "mamba2", "FAMILIES", "use_kernels"]
