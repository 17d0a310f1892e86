"""A second CUDA stream for capture's state expansion, so that writing the states overlaps the forward.

Writing every per-token state is memory bound (`hooks.scan.triton_states`: 29 GB of fp32 states for a
12-layer d=768 `gdn75` at B=8, T=2048), while much of the forward is compute bound. Inside a
`side_streams` block, `beside` queues such work on one extra stream per GPU, after everything the
forward's stream had queued (a GPU-side wait: the host never blocks); the forward's stream goes on with the
next layers. When the block ends, each forward stream waits (again on the GPU) for its side stream, so
whatever is queued after the block sees finished states.

Safe only where nothing reads the results inside the block: `hooks.core.HookedModel.run_with_cache`
enters it when states stay on their GPU and no backward is taken (not `hooks()` or cached decoding, which
read their cache while the session lasts). Tensors the side stream reads are marked with
``record_stream`` so that the caching allocator does not hand their memory out before the side stream is
done. Off inside CUDA-graph capture, and with ``HYBRID_INTERP_SIDE_STREAM=0`` (for paired timing).
"""
from __future__ import annotations

import contextlib
import contextvars
import os

import torch

_ACTIVE = contextvars.ContextVar("hybrid_interp_side_streams", default=None)
_STREAMS: dict = {}   # device -> its side stream, made once


def wanted() -> bool:
    """False when ``HYBRID_INTERP_SIDE_STREAM=0`` turns side streams off."""
    return os.environ.get("HYBRID_INTERP_SIDE_STREAM", "1") != "0"


@contextlib.contextmanager
def side_streams(enabled: bool = True):
    """Within the block `beside` runs its work on a side stream; on exit every forward stream that queued
    work there waits for it. A no-op when not ``enabled``, off by `wanted`, or without CUDA."""
    if not (enabled and wanted() and torch.cuda.is_available()):
        yield
        return
    used = {}
    token = _ACTIVE.set(used)
    try:
        yield
    finally:
        _ACTIVE.reset(token)
        for main, side in used.values():
            main.wait_stream(side)


def active(device: torch.device) -> bool:
    """Whether `beside` would use a side stream for work on ``device`` now."""
    return (_ACTIVE.get() is not None and device.type == "cuda"
            and not torch.cuda.is_current_stream_capturing())


def beside(fn, reads, device: torch.device):
    """``fn()`` queued on ``device``'s side stream after all the current stream has queued, when `active`;
    else ``fn()`` as is. ``reads``: every tensor fn reads or writes that was made on the current stream
    (None entries skipped), kept from reuse until the side stream is done with it. Allocate fn's outputs
    before the call, on the current stream, and pass them in ``reads``."""
    if not active(device):
        return fn()
    used = _ACTIVE.get()
    main = torch.cuda.current_stream(device)
    side = _STREAMS.get(device)
    if side is None:
        side = _STREAMS[device] = torch.cuda.Stream(device)
    side.wait_stream(main)
    used[device] = (main, side)
    with torch.cuda.stream(side):
        result = fn()
    for t in reads:
        if t is not None:
            t.record_stream(side)
    return result
