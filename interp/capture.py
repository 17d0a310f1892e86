"""`interp capture`: run a task or a text file through a model and save activations/states.

Output directory, a result folder of kind 'capture' (`interp.store.Store`): ``spec.json`` (what
determines the contents: model name and weights digest, source (task, n, seed, knobs / text file
and seq_len, as the caller's ``meta``), a digest of the token ids, hook names, positions,
``state_dtype``, batch size and memory budget), ``units/shard-00000.safetensors``, ... and
``manifest.json`` (model, source, hook names, per-shard files and example ranges, shapes and
dtypes, positions, ``state_dtype``: the dtype ``rec.state`` tensors are stored in). Each shard
holds the captures of consecutive examples; a shard is written as soon as the captured bytes
reach ``--max-memory``, so long runs stream to disk instead of filling memory. Every file is
written atomically and the manifest after each shard, so a run that stops, even killed inside a
write, resumes where its manifest ends and gives the same files as a run that never stopped.
Resuming with other settings is refused, naming the fields that differ (``overwrite=True``,
``--overwrite``: capture again); a second capture into a folder being written is refused.
Folders written before ``spec.json`` existed (shards beside the manifest) still load.
"""
from __future__ import annotations

import numbers
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

import hooks
from interp import InterpError
from interp.models import input_device, parse_size
from interp.store import Store, atomic_write_json, load_unit, model_digest, read_json, read_spec, tensor_digest

# what a capture folder holds beside spec.json and units/ (older layouts and distributed parts
# included): --overwrite removes these, and their presence without a spec.json marks an old folder
OWNS = ("manifest.json", "shard-*.safetensors", "rank[0-9]*")


def _state_dtype(state_dtype) -> str:
    from hooks.core import resolve_state_dtype
    try:
        return str(resolve_state_dtype(state_dtype)).replace("torch.", "")
    except ValueError as e:
        raise InterpError(str(e)) from None


def capture_spec(model, tokens: torch.Tensor, names, positions=None, max_memory="1GB", batch_size=16,
                 meta: dict | None = None, state_dtype=None) -> dict:
    """The spec of a capture folder: everything that determines its files."""
    meta = dict(meta or {})
    return {"model": {"name": meta.pop("model", None), "digest": model_digest(model)},
            "source": meta,
            "tokens": {"shape": list(tokens.shape), "dtype": str(tokens.dtype).replace("torch.", ""),
                       "digest": tensor_digest(tokens)},
            "names": list(names), "positions": positions, "state_dtype": _state_dtype(state_dtype),
            "batch_size": int(batch_size), "max_memory": parse_size(max_memory)}


def capture(model, tokens: torch.Tensor, names, out, positions=None, max_memory="1GB", batch_size=16,
            meta: dict | None = None, progress: bool = True, state_dtype=None, overwrite: bool = False) -> Path:
    """Capture ``names`` for every example of ``tokens`` [N, T]; write shards under ``out``.
    ``state_dtype``: store ``rec.state`` tensors in float32 (None, default, exact), bfloat16 or
    float16 (half the bytes; computed in float32 and rounded once). ``meta`` (model name and
    source) goes into the manifest and the spec. An existing ``out`` with the same spec is
    resumed (nothing runs if it is complete); with another spec it is refused, unless
    ``overwrite=True``, which replaces it."""
    sdtype = _state_dtype(state_dtype)
    names, out = list(names), Path(out)
    check_inputs(model, tokens, batch_size, max_memory)
    spec = capture_spec(model, tokens, names, positions, max_memory, batch_size, meta, sdtype)
    store = open_store(out, spec, overwrite)
    try:
        n = int(tokens.shape[0])
        mf = out / "manifest.json"
        if mf.is_file():
            manifest = read_json(mf)
        elif any(p.is_dir() for p in out.glob("rank[0-9]*")):
            raise InterpError(f"{out} holds an unfinished distributed capture (rank*/ folders); resume it with torchrun "
                              "and --distributed on the same number of processes, or use --overwrite or a new --out")
        else:
            manifest = {"names": names, "positions": positions, "n_examples": n, "seq_len": int(tokens.shape[1]),
                        "state_dtype": sdtype, "meta": meta or {}, "shards": []}
        done = manifest["shards"][-1]["stop"] if manifest["shards"] else 0
        if done >= n:
            if progress:
                print(f"{out}: capture already complete ({n} examples); nothing to do "
                      "(--overwrite captures again)", file=sys.stderr)
            return out
        _run(model, tokens, names, store, manifest, done, positions, parse_size(max_memory), batch_size, sdtype,
             progress)
    finally:
        store.close()
    return out


def check_inputs(model, tokens, batch_size, max_memory):
    """Refuse, before anything is written, a batch size below 1, a memory budget that is no size,
    and tokens that are not a non-empty [N, T] integer tensor of ids the model's embedding has."""
    if not (isinstance(batch_size, numbers.Integral) and not isinstance(batch_size, bool) and batch_size >= 1):
        raise InterpError(f"batch size {batch_size!r} is not valid; valid: integers >= 1")
    parse_size(max_memory)
    if not (isinstance(tokens, torch.Tensor) and tokens.dim() == 2 and tokens.numel() > 0):
        shape = list(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise InterpError(f"tokens {shape} are not valid; valid: a non-empty [N, T] tensor of token ids")
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise InterpError(f"tokens of dtype {str(tokens.dtype).replace('torch.', '')} are not valid; valid: an "
                          "integer tensor (e.g. torch.long)")
    try:
        vocab = hooks.wrap(model).adapter.embed(model).num_embeddings
    except (AttributeError, TypeError, NotImplementedError):
        return
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab:
        raise InterpError(f"token id {lo if lo < 0 else hi} is out of range for this model; valid: 0..{vocab - 1}")


def is_complete(out, n: int) -> bool:
    """Whether ``out`` holds a finished capture of ``n`` examples (its manifest reaches example ``n``)."""
    mf = Path(out) / "manifest.json"
    if not mf.is_file():
        return False
    shards = read_json(mf).get("shards") or []
    return bool(shards) and shards[-1].get("stop") == n


def open_store(out, spec: dict, overwrite: bool = False) -> Store:
    """The capture folder ``out`` with ``spec`` (`capture_spec`), opened for writing: locked and
    checked (a refusal over the state dtype says so first). Close it when done."""
    try:
        return Store(out, "capture", spec, overwrite=overwrite, owns=OWNS).open()
    except InterpError as e:
        old = ((read_spec(out) or {}).get("spec") or {}).get("state_dtype")
        if old and old != spec["state_dtype"]:
            raise InterpError(f"{out} holds states in {old}, not {spec['state_dtype']} (resume with --state-dtype "
                              f"{old}): {e}") from None
        raise


def _run(model, tokens, names, store, manifest, done, positions, budget, batch_size, sdtype, progress):
    """Capture examples ``done``.. in batches; a shard (a store unit) and then the manifest are
    written each time ``budget`` bytes are held, and at the end."""
    hm = hooks.wrap(model)
    dev = input_device(model)  # a model spread over devices takes its inputs where it embeds them
    mf = store.path / "manifest.json"
    pending, pending_bytes, start = {}, 0, done

    def flush(stop):
        nonlocal pending, pending_bytes, start
        if not pending:
            return
        tensors = {k: torch.cat(v).contiguous() for k, v in pending.items()}
        path = store.put(f"shard-{len(manifest['shards']):05d}", tensors)
        manifest["shards"].append({"file": path.relative_to(store.path).as_posix(), "start": start, "stop": stop,
                                   "shapes": {k: list(t.shape) for k, t in tensors.items()},
                                   "dtypes": {k: str(t.dtype).replace("torch.", "") for k, t in tensors.items()}})
        atomic_write_json(mf, manifest)
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


def load_capture(path, names=None) -> dict:
    """Concatenate the shards of a capture back into {name: tensor [N, ...]} (``names``: only
    these). Each shard is checked against the shapes the manifest lists for it."""
    path = Path(path)
    mf = path / "manifest.json"
    if not mf.is_file():
        started = " (a capture started there has not finished its first shard)" if (path / "spec.json").is_file() else ""
        raise InterpError(f"{path} holds no capture: no manifest.json{started}")
    m = read_json(mf)
    parts = {}
    for sh in m["shards"]:
        f = path / sh["file"]
        for k, v in load_unit(f).items():
            want = sh.get("shapes", {}).get(k)
            if want is not None and list(v.shape) != want:
                raise InterpError(f"{f}: '{k}' has shape {list(v.shape)}, the manifest lists {want}; the file is not "
                                  "this capture's: capture again (--overwrite) or into a new --out")
            if names is None or k in names:
                parts.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in parts.items()}
