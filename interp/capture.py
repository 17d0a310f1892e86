"""`interp capture`: run a task or a text file through a model and save activations/states.

Output directory: ``shard-00000.safetensors``, ``shard-00001.safetensors``, ... plus
``manifest.json`` (model, source, hook names, per-shard example ranges, shapes and dtypes,
positions, ``state_dtype``: the dtype ``rec.state`` tensors are stored in). Each
shard holds the captures of consecutive examples; a shard is written as soon as the captured bytes
reach ``--max-memory``, so long runs stream to disk instead of filling memory. A run that stops can
be resumed: shards already listed in the manifest are skipped.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

import hooks
from interp import InterpError


def parse_size(s) -> int:
    if isinstance(s, (int, float)):
        return int(s)
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    t = str(s).strip().lower().rstrip("ib").rstrip("b")
    try:
        return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(float(t))
    except (ValueError, KeyError):
        raise InterpError(f"invalid memory size '{s}'; examples: 512MB, 2GB, 1e9") from None


def capture(model, tokens: torch.Tensor, names, out, positions=None, max_memory="1GB", batch_size=16,
            meta: dict | None = None, progress: bool = True, state_dtype=None) -> Path:
    """Capture ``names`` for every example of ``tokens`` [N, T]; write shards under ``out``.
    ``state_dtype``: store ``rec.state`` tensors in float32 (None, default, exact), bfloat16 or
    float16 (half the bytes; computed in float32 and rounded once)."""
    from hooks.core import resolve_state_dtype
    try:
        sdtype = str(resolve_state_dtype(state_dtype)).replace("torch.", "")
    except ValueError as e:
        raise InterpError(str(e)) from None
    hm = hooks.wrap(model)
    budget = parse_size(max_memory)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mf = out / "manifest.json"
    manifest = json.loads(mf.read_text()) if mf.is_file() else {
        "names": list(names), "positions": positions, "n_examples": int(tokens.shape[0]),
        "seq_len": int(tokens.shape[1]), "state_dtype": sdtype, "meta": meta or {}, "shards": []}
    if manifest["names"] != list(names) or manifest["n_examples"] != int(tokens.shape[0]):
        raise InterpError(f"{out} holds a different capture (names/examples differ); use a new --out")
    if manifest.get("state_dtype", "float32") != sdtype:
        raise InterpError(f"{out} holds states in {manifest.get('state_dtype', 'float32')}, not {sdtype}; resume "
                          f"with --state-dtype {manifest.get('state_dtype', 'float32')} or use a new --out")
    done = manifest["shards"][-1]["stop"] if manifest["shards"] else 0
    from interp.models import input_device
    dev = input_device(model)  # a model spread over devices takes its inputs where it embeds them
    pending, pending_bytes, start = {}, 0, done

    def flush(stop):
        nonlocal pending, pending_bytes, start
        if not pending:
            return
        i = len(manifest["shards"])
        fname = f"shard-{i:05d}.safetensors"
        tensors = {k: torch.cat(v).contiguous() for k, v in pending.items()}
        save_file(tensors, str(out / fname))
        manifest["shards"].append({"file": fname, "start": start, "stop": stop,
                                   "shapes": {k: list(t.shape) for k, t in tensors.items()},
                                   "dtypes": {k: str(t.dtype).replace("torch.", "") for k, t in tensors.items()}})
        mf.write_text(json.dumps(manifest, indent=2) + "\n")
        pending, pending_bytes, start = {}, 0, stop

    bar = tqdm(range(done, tokens.shape[0], batch_size), disable=not progress, desc="capture")
    for s in bar:
        x = tokens[s:s + batch_size].to(dev)
        with torch.no_grad():
            _, cache = hm.run_with_cache(x, names=names, positions=positions, device="cpu", state_dtype=sdtype)
        for k, v in cache.items():
            pending.setdefault(k, []).append(v)
            pending_bytes += v.numel() * v.element_size()
        if pending_bytes >= budget:
            flush(min(s + batch_size, tokens.shape[0]))
    flush(tokens.shape[0])
    return out


def load_capture(path, names=None) -> dict:
    """Concatenate the shards of a capture back into {name: tensor [N, ...]}."""
    from safetensors.torch import load_file
    path = Path(path)
    m = json.loads((path / "manifest.json").read_text())
    parts = {}
    for sh in m["shards"]:
        for k, v in load_file(str(path / sh["file"])).items():
            if names is None or k in names:
                parts.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in parts.items()}
