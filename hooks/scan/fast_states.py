"""GPU path for per-token states.

For now the chunked torch formula of gdn/gla run on the GPU tensors (exact, one pass over the
chunks); a fused state-writing kernel is the planned speed-up (see BENCHMARKS.md for the
measured ratio to the fused forward)."""
from __future__ import annotations


def gdn_states(q, k, v, g, beta, initial_state, positions):
    from hooks.scan import gdn
    want = "all" if positions is None else positions
    return gdn._chunks(q, k, v, g, beta, 1.0, initial_state, want=want)[2]


def gla_states(k, v, g, initial_state, positions):
    from hooks.scan import gla
    if g.dim() == 3:
        g = g[..., None].expand(*g.shape, k.shape[-1])
    want = "all" if positions is None else positions
    return gla._chunks(k, k, v, g, 1.0, initial_state, want=want)[2]
