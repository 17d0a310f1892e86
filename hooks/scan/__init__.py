"""State-scan modules, one per recurrence family, each with a step-loop reference (`naive`), a
pure-torch chunked path (`chunk_torch`), a dispatcher (`scan`: fla kernels for CUDA tensors only),
exact per-token states (`states`) and ``FAMILY``, the family as `hooks` sees it (`hooks.scan.family`).

``FAMILIES`` is the registry of recurrence families (name -> scan module): `hooks.recurrence`, the
hook names and the zoo adapter look families up there. Adding a family is a scan module with a
``FAMILY``, one line here and an adapter for the models that use it."""
from hooks.scan import gdn, gla, kda, mamba1, mamba2, mlstm, rwkv7, shortconv, wkv
from hooks.scan.kernels import use_kernels

FAMILIES = {"gdn": gdn, "gla": gla, "mamba2": mamba2, "mamba1": mamba1, "kda": kda, "shortconv": shortconv,
            "wkv": wkv, "mlstm": mlstm, "rwkv7": rwkv7}

__all__ = ["gdn", "gla", "kda", "mamba1", "mamba2", "mlstm", "rwkv7", "shortconv", "wkv", "FAMILIES", "use_kernels"]
