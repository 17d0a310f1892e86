"""CUDA-graph replay of DAS's training and evaluation passes: capture a batch's pass once, replay it per batch.

At the sizes DAS runs at (tens of rows, tens of tokens, the layers after the site), a step on a GPU is
bound by kernel launches and Python (the hooked forward, the autograd graph), not by arithmetic.
`GradStep` captures one batch's intervened forward and the backward to R (a static leaf [r, width])
into a CUDA graph; each training step copies its R and its row indices (on the device) into the static
inputs and replays the graph, and the caller runs R's orthogonal parametrisation and the optimizer
eagerly around it (``R.backward(grad)``). `EvalStep` captures one evaluation batch's no-grad pass
(hits of the source answer and the summed cross-entropy). Replays launch the kernels the eager pass
launches, on the same inputs, so they should give the eager numbers; the wiring (static inputs, the
backward through R, the evaluation sums) is tested on CPU with an eager stand-in for the capture
(tests/test_das_graphs.py); on a GPU bench/bench_das.py and tests/gpu/check_das_graphs_gpu.py compare both
(identical R and IIA on an H100, BENCHMARKS.md section 21). Batches of another size (the last of an epoch)
run eagerly. On by default: ``DASConfig(cuda_graphs=False)`` / ``interp das --no-cuda-graphs`` turn it off.

A capture fails where the model reads the host inside its forward (a ``.item()``, a data-dependent
shape); `capture` then raises `GraphUnavailable` and the caller runs eagerly (das.fit records which).
"""
from __future__ import annotations

import torch


def graphable(device: torch.device) -> bool:
    """Whether passes on ``device`` can be replayed from CUDA graphs (DAS's and the stacked trainer's)."""
    return device.type == "cuda"


class GraphUnavailable(RuntimeError):
    """The pass could not be captured into a CUDA graph (the reason is the message)."""


def capture(body, warmup: int = 2, pool=None):
    """(graph, body's outputs): ``body`` run ``warmup`` times on a side stream (lazy initialisation
    happens outside the capture), then captured once, into memory ``pool`` if given (a
    ``torch.cuda.graph_pool_handle()`` shared by graphs that never run at the same time). Raises
    `GraphUnavailable` if it cannot be."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, pool=pool):
            out = body()
    except Exception as e:  # noqa: BLE001 - any failure in the capture means: run eagerly
        torch.cuda.synchronize()
        raise GraphUnavailable(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    return graph, out


class _Static:
    """Static inputs R [r, w] and rows [B] on ``device``, first filled with ``R0`` and ``rows0``."""

    def __init__(self, R0: torch.Tensor, rows0: torch.Tensor, grad: bool):
        self.R = R0.detach().clone().requires_grad_(grad)
        self.rows = rows0.clone()
        self.B = len(rows0)

    def load(self, R: torch.Tensor, rows: torch.Tensor):
        with torch.no_grad():
            self.R.copy_(R)
        self.rows.copy_(rows)


class GradStep(_Static):
    """Replays (loss, dloss/dR) of ``loss_fn(R, rows)`` (a scalar) for batches of ``len(rows0)`` rows."""

    def __init__(self, loss_fn, R0, rows0):
        super().__init__(R0, rows0, grad=True)

        def body():
            loss = loss_fn(self.R, self.rows)
            (g,) = torch.autograd.grad(loss, self.R)
            return loss.detach(), g
        self.graph, (self.loss, self.grad) = capture(body)

    def __call__(self, R, rows):
        """(loss, grad) of this batch: static tensors, valid until the next call."""
        self.load(R, rows)
        self.graph.replay()
        return self.loss, self.grad


class EvalStep(_Static):
    """Replays ``fn(R, rows)`` -> (hits, summed cross-entropy) of one evaluation batch, without gradients, for
    batches of ``len(rows0)`` rows."""

    def __init__(self, fn, R0, rows0):
        super().__init__(R0, rows0, grad=False)
        self.graph, (self.hits, self.loss) = capture(torch.no_grad()(lambda: fn(self.R, self.rows)))

    def __call__(self, R, rows):
        self.load(R, rows)
        self.graph.replay()
        return self.hits, self.loss
