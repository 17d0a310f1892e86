"""Save / load zoo models: ``model.safetensors`` + ``config.json`` in one directory."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from interp import InterpError
from interp.zoo.config import ZooConfig
from interp.zoo.model import HybridLM


def save_model(model: HybridLM, path, extra: dict | None = None) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)  # shared with embed.weight
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_dict()
    (path / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    if extra:
        (path / "meta.json").write_text(json.dumps(extra, indent=2) + "\n")
    return path


def load_config(path) -> ZooConfig:
    path = Path(path)
    f = path / "config.json"
    if not f.is_file():
        raise InterpError(f"no zoo model at '{path}': {f.name} not found (expected a directory with "
                          "config.json and model.safetensors)")
    try:
        d = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise InterpError(f"invalid model config {f}: {e}") from None
    return ZooConfig.from_dict(d)


def load_model(path, device="cpu", dtype=None) -> HybridLM:
    """Load a zoo model saved by `save_model` (weights trained on GPU load on CPU)."""
    path = Path(path)
    cfg = load_config(path)
    wf = path / "model.safetensors"
    if not wf.is_file():
        raise InterpError(f"no weights at '{wf}'")
    model = HybridLM(cfg)
    state = load_file(str(wf), device="cpu")
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["embed.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InterpError(f"weights in {wf} do not match config.json: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}")
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    model.to(device=device, dtype=dtype)
    return model.eval()
