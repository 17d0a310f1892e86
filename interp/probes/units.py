"""Resumable probe units on disk: each finished (model, load, seed) unit of a run is one parquet
file under ``out/.units/<digest>/``, the digest naming the run's spec and the models' weights, and
is read back instead of recomputed when the same run is repeated."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import torch


class Units:
    """The finished units of one run (nothing is stored with ``out`` None). ``spec``: the run's
    parameters (a JSON-serialisable list); ``models``: {name: model}, fingerprinted into the digest
    so that resumed units never mix different weights."""

    def __init__(self, out, spec: list, models: dict):
        self.dir = None
        if out is not None:
            key = json.dumps(spec + [{k: _fingerprint(m) for k, m in models.items()}], sort_keys=True, default=str)
            self.dir = Path(out) / ".units" / hashlib.sha1(key.encode()).hexdigest()[:12]
            self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, name, load, seed):
        return None if self.dir is None else self.dir / f"{_safe(name)}__{_safe(str(load))}__{seed}.parquet"

    def get(self, name, load, seed) -> pd.DataFrame | None:
        """The stored rows of unit (name, load, seed), or None."""
        path = self._path(name, load, seed)
        return pd.read_parquet(path) if path is not None and path.is_file() else None

    def put(self, name, load, seed, frame: pd.DataFrame):
        """Store the rows of unit (name, load, seed) (a no-op without ``out``)."""
        path = self._path(name, load, seed)
        if path is not None:
            frame.to_parquet(path, index=False)


def _fingerprint(model) -> str:
    """A cheap digest of a model's parameters (so resumed units never mix different weights)."""
    h = hashlib.sha1()
    with torch.no_grad():
        for name, p in model.named_parameters():
            x = p.detach().double()
            h.update(f"{name}{tuple(p.shape)}{x.sum().item():.10e}{x.abs().sum().item():.10e}".encode())
    return h.hexdigest()[:12]


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]", "_", s)
