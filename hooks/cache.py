"""ActivationCache-like mapping from hook names to tensors, movable to CPU and disk."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class Cache(dict):
    """name -> tensor (shapes: see hooks.names). ``positions`` records the token positions kept
    when a capture selected some (per-token names then have P instead of T entries)."""

    def __init__(self, *a, positions=None, **kw):
        super().__init__(*a, **kw)
        self.positions = positions

    def to(self, device=None, dtype=None) -> "Cache":
        return Cache({k: v.to(device=device, dtype=dtype if v.is_floating_point() else None)
                      for k, v in self.items()}, positions=self.positions)

    def cpu(self) -> "Cache":
        return self.to("cpu")

    def save(self, path, meta: dict | None = None) -> Path:
        """Write ``path/activations.safetensors`` and ``path/manifest.json`` (names, shapes,
        dtypes, positions, meta)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.items()},
                  str(path / "activations.safetensors"))
        manifest = {"tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                                for k, v in self.items()},
                    "positions": None if self.positions is None else [int(p) for p in self.positions],
                    "meta": meta or {}}
        (path / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path, device="cpu") -> "Cache":
        path = Path(path)
        m = json.loads((path / "manifest.json").read_text())
        return cls(load_file(str(path / "activations.safetensors"), device=device), positions=m["positions"])

    def __repr__(self):
        body = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in self.items())
        return f"Cache({body})"
