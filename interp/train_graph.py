"""A single run's training pass (forward, loss, backward, clipping), replayed from CUDA graphs where it can be.

A single run's step is bound by launching kernels from Python, not by arithmetic, at E1's size (8 layers,
d=128) and still at 12 layers d=768 (gdn75's eager step keeps an H100 busy about half its wall time;
BENCHMARKS.md sections 36-37). `GradPass` is a step's pass as a function of tensors alone, tokens [B, T] and
the loss mask [B, T] -> (loss,): the forward under bf16 autocast (its cast-weight cache off, which a capture
needs), `interp.train.lm_loss` (a masked mean that reads nothing on the host), the backward into each
parameter's ``.grad`` and the clipping there. The gradients are allocated once, before any capture, and
zeroed in place by every pass, so every graph writes the same tensors, which the optimizer then reads;
`interp.stacked_graph.ShapeGraphs` captures one graph per batch shape (state-recall batches come in a
handful of lengths) and replays it, and the caller runs the optimizer eagerly after the replay. A replay
launches the eager pass's kernels on the same inputs; the wiring is tested on CPU with an eager stand-in for
the capture (tests/test_train_graph.py), the real capture on a GPU by tests/gpu/check_stacked_graph_gpu.py
``--single``. A shape whose capture fails runs eagerly, with one warning. `interp.train.train` steps through
a `GradPass` in every run: graphed on a GPU (``cuda_graphs=True``, the default), eager otherwise (the same pass
called directly; its gradients zeroed in place rather than set to None, which AdamW reads the same way because
every zoo parameter gets a gradient in every step).
"""
from __future__ import annotations

import torch

from interp.stacked_graph import ShapeGraphs


class GradPass:
    """A single run's forward + backward + gradient clipping, replayed from CUDA graphs when ``graphed`` (module
    doc)."""

    def __init__(self, model, grad_clip: float, loss_fn, graphed: bool):
        self.model, self.clip, self.loss_fn = model, grad_clip, loss_fn
        self.params = [p for p in model.parameters() if p.requires_grad]
        for p in self.params:            # allocated outside every graph's pool; every pass overwrites them
            p.grad = torch.zeros_like(p) if p.grad is None else p.grad
        dev = self.params[0].device
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if dev.type == "cuda"
                         else torch.autocast("cpu", enabled=False))
        self.graphs = ShapeGraphs(self.grads, what="training step") if graphed else None

    def grads(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor]:
        """(loss,) of the batch; the clipped gradients in the parameters' ``.grad``. Reads nothing on the host."""
        with self.autocast:
            loss = self.loss_fn(self.model, tokens, mask)
        torch._foreach_zero_([p.grad for p in self.params])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        return (loss.detach(),)

    def __call__(self, batch) -> torch.Tensor:
        (loss,) = (self.graphs or self.grads)(batch.tokens, batch.loss_mask)
        return loss
