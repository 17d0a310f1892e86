"""A seeded random-init zoo model for benchmarks (no training): `random_zoo`."""
from __future__ import annotations

import torch

from interp.tasks import VOCAB
from interp.zoo.config import ZooConfig
from interp.zoo.model import HybridLM


def random_zoo(d: int, L: int, H: int, layout: str, dev="cpu", seed: int = 0):
    """A seeded random zoo model (``d`` wide, ``L`` blocks of ``layout``, ``H`` heads of d / H) whose weight
    matrices are scaled up 3x, so its answers depend on the prompt; in eval mode on ``dev``."""
    torch.manual_seed(seed)
    m = HybridLM(ZooConfig(vocab_size=len(VOCAB), d_model=d, n_layers=L, layout=layout, n_heads=H,
                           head_dim=d // H)).to(dev).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1:
                p.mul_(3.0)
    return m
