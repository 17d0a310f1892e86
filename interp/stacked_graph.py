"""CUDA-graph replay of a stacked training step's pass, one graph per token shape (`interp.stacked`).

At E1's size (8 layers, d=128) a stacked step on a GPU is still bound by host work: vmap's batching
rules, ``functional_call``, autocast and autograd's bookkeeping, one launch per kernel. `ShapeGraphs`
wraps a function of a few tensors (the stack's pass: tokens and loss mask -> per-model losses, with the
gradients written into the stack's flat gradient buffer and clipped there) so that each new input shape
is captured once (`interp.interventions.graphs.capture`: two warm-up passes on a side stream, then the
capture) and every later call of that shape copies its inputs into the graph's static tensors and
replays the graph. The caller runs the optimizer eagerly after the replay, so the warm-up passes change
nothing but the gradients, which every pass overwrites. State-recall batches come in a handful of
lengths (eight at E1's settings, plus the induction warm-up's), so a run captures a handful of graphs
(with length groups, `train_stacked(length_split=True)`, one per pair of group shapes: a few dozen).

The function must not read the host (no ``.item()``, no data-dependent shapes) and must run autocast
with ``cache_enabled=False`` (autocast's cast-weight cache cannot live across a capture). A replay
launches the kernels of the eager pass on the same inputs, so its outputs should equal the eager pass's;
the wiring (static inputs, per-shape graphs, outputs copied out before the next replay) is tested on CPU
with an eager stand-in for the capture (tests/test_stacked_graph.py). A shape whose capture fails
(`GraphUnavailable`) runs eagerly, with one warning, and ``failed`` records why.

All of a run's graphs share one memory pool: with a pool each, the ~9 graphs of an 8-model stack held up
to 39 GiB and two such processes ran out of an H100's memory (BENCHMARKS.md section 33). Sharing is safe here
because the graphs replay one at a time on one stream and each replay's outputs are copied out before
the next replay, whose intermediates may reuse that memory.
"""
from __future__ import annotations

import warnings

import torch

from interp.interventions import graphs


class ShapeGraphs:
    """``fn(*tensors) -> tuple of tensors`` replayed from one CUDA graph per input shape (module doc)."""

    def __init__(self, fn, what: str = "stacked training step"):
        self.fn, self.what = fn, what
        self.graphs: dict = {}       # shape key -> (graph, static inputs, static outputs)
        self.failed: dict = {}       # shape key -> reason its capture failed
        self.pool = None             # the memory pool all the graphs share (module doc)

    @staticmethod
    def key(tensors) -> tuple:
        return tuple((tuple(t.shape), t.dtype, str(t.device)) for t in tensors)

    def __call__(self, *tensors: torch.Tensor) -> tuple:
        """``fn(*tensors)``'s outputs (fresh tensors, not the graph's static ones)."""
        k = self.key(tensors)
        if k in self.failed:
            return self.fn(*tensors)
        if k not in self.graphs:
            static = [t.clone() for t in tensors]
            if self.pool is None and tensors[0].is_cuda:
                self.pool = torch.cuda.graph_pool_handle()
            try:
                graph, out = graphs.capture(lambda: self.fn(*static), pool=self.pool)
            except graphs.GraphUnavailable as e:
                self.failed[k] = str(e)
                warnings.warn(f"{self.what} of input shapes {[s for s, _, _ in k]} runs without CUDA "
                              f"graphs: its capture failed ({e})", stacklevel=2)
                return self.fn(*tensors)
            self.graphs[k] = (graph, static, out)
        graph, static, out = self.graphs[k]
        for s, t in zip(static, tensors):
            s.copy_(t, non_blocking=True)
        graph.replay()
        return tuple(o.clone() for o in out)
