"""The dtypes of per-token recurrent states (``rec.state``): the ``state_dtype`` option of a hook session and
the working dtype of a scan call.

States are computed in the working dtype of the layer's scan inputs (`work_dtype`): float32 for float32,
bfloat16 and float16 models, float64 for float64 models (as the scan modules' pure-torch paths compute,
`hooks.scan._common.work`). Hook functions on ``rec.state`` see and return them in that dtype; the cache
writes them in ``state_dtype`` when one is given, else in the working dtype (`hooks.session.HookSession`).
"""
from __future__ import annotations

import torch

STATE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_STATE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}


def resolve_state_dtype(dtype) -> torch.dtype:
    """The dtype cached ``rec.state`` tensors are written in: None -> float32 (exact; a hook session given None
    writes the working dtype, float64 for float64 models); a torch dtype or its name among float32, bfloat16,
    float16 (aliases fp32, bf16, fp16). Anything else raises a ValueError naming the valid choices."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        key = _STATE_ALIASES.get(key, key)
        if key in STATE_DTYPES:
            return STATE_DTYPES[key]
    elif isinstance(dtype, torch.dtype) and dtype in STATE_DTYPES.values():
        return dtype
    raise ValueError(f"state_dtype {dtype!r} is not supported; valid: None (float32), "
                     f"{', '.join(STATE_DTYPES)} (a torch dtype or its name)")


def work_dtype(c) -> torch.dtype:
    """The dtype states of the canonical view ``c`` are computed and handed to hook functions in: float64 where
    the view's values (v, else q or k) are float64, float32 otherwise."""
    for key in ("v", "q", "k"):
        t = c.get(key)
        if isinstance(t, torch.Tensor):
            return torch.float64 if t.dtype == torch.float64 else torch.float32
    return torch.float32
