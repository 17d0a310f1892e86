"""Save / load zoo models: ``model.safetensors`` + ``config.json`` in one directory."""
from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from interp import InterpError
from interp.store import atomic_write_text, save_safetensors
from interp.zoo.config import ZooConfig
from interp.zoo.hf import attach_tokenizer
from interp.zoo.model import HybridLM


def safetensors_intact(path) -> bool:
    """Whether ``path`` is a whole safetensors file: its JSON header parses and the tensors' byte ranges end exactly
    at the end of the file (a file cut short or overwritten fails this)."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= 100_000_000:
                return False
            header = json.loads(f.read(n))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        return Path(path).stat().st_size == 8 + n + max(ends, default=0)
    except (OSError, ValueError, TypeError, KeyError, IndexError):
        return False


def save_model(model: HybridLM, path, extra: dict | None = None) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)  # shared with embed.weight
    # each file whole or absent (`interp.store.atomic_save`); meta.json (a trainer's steps_done) last
    save_safetensors(path / "model.safetensors", state, metadata={"format": "pt"})
    atomic_write_text(path / "config.json", json.dumps(model.config.to_dict(), indent=2) + "\n")
    if extra:
        atomic_write_text(path / "meta.json", json.dumps(extra, indent=2) + "\n")
    return path


def load_config(path) -> ZooConfig:
    path = Path(path)
    f = path / "config.json"
    if not f.is_file():
        raise InterpError(f"no zoo model at '{path}': {f.name} not found (expected a directory with "
                          "config.json and model.safetensors)")
    try:
        d = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InterpError(f"invalid model config {f}: not JSON ({e}); valid: the config.json save_model "
                          "writes") from None
    if not isinstance(d, dict):
        raise InterpError(f"invalid model config {f}: a JSON {type(d).__name__}; valid: a JSON object of "
                          "ZooConfig fields")
    try:
        return ZooConfig.from_dict(d)
    except InterpError as e:
        raise InterpError(f"{e} (in {f})") from None
    except (TypeError, ValueError) as e:
        raise InterpError(f"invalid model config {f}: {e}") from None


def load_model(path, device="cpu", dtype=None) -> HybridLM:
    """Load a zoo model saved by `save_model` (weights trained on GPU load on CPU), with the task
    vocabulary's word tokenizer attached (``model.tokenizer``, `interp.zoo.hf.attach_tokenizer`), so
    ``hooks.wrap(model).run_with_cache("<bos> k1 5 ...")`` takes string prompts."""
    path = Path(path)
    cfg = load_config(path)
    wf = path / "model.safetensors"
    if not wf.is_file():
        raise InterpError(f"no weights at '{wf}'")
    model = HybridLM(cfg)
    try:
        state = load_file(str(wf), device="cpu")
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for damaged files
        if safetensors_intact(wf):  # not damage: e.g. Ctrl-C landing inside torch's storage calls
            raise InterpError(f"loading {wf} failed ({e}), although the file is whole (its header and size "
                              "agree): was the load interrupted? valid: run the same command again") from None
        raise InterpError(f"weights file {wf} is damaged or not safetensors ({e}); valid: the "
                          "model.safetensors save_model writes (train again or restore the file)") from None
    if cfg.tie_embeddings and "embed.weight" in state:
        state["lm_head.weight"] = state["embed.weight"]
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes that differ from config.json's
        lines = [x.strip() for x in str(e).splitlines() if "mismatch" in x]
        raise InterpError(f"weights in {wf} do not match config.json: {(lines or [str(e)])[0]}; valid: the weights "
                          "saved with this config.json") from None
    if missing or unexpected:
        raise InterpError(f"weights in {wf} do not match config.json: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}; valid: the weights saved with this config.json")
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    model.to(device=device, dtype=dtype)
    return attach_tokenizer(model).eval()
