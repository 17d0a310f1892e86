"""`interp capture`: run a task or a text file through a model and save activations/states.

Output directory, a result folder of kind 'capture' (`interp.store.Store`): ``spec.json`` (what
determines the contents: model name and weights digest, source (task, n, seed, knobs / text file
and seq_len, as the caller's ``meta``), a digest of the token ids, hook names, positions,
``state_dtype``, batch size and memory budget), ``units/shard-00000.safetensors``, ...,
``units/inputs.safetensors`` (the input ``tokens`` and, given a task batch, its labels and answer
positions) and ``manifest.json`` (model, source, hook names, per-shard files and example ranges,
shapes and dtypes, positions, ``state_dtype``: the dtype ``rec.state`` tensors are stored in). The layout is
`hooks.Cache.save`'s (`hooks.cache`); `load_capture` gives a `hooks.Cache`
(memory-mapped with ``lazy=True``). Each shard holds the captures of consecutive examples, the
fewest whole batches that reach ``--max-memory`` bytes; it is written into its file batch by batch,
so memory holds one batch's captures, never a shard's (`bench/bench_capture_memory.py`). Every file is
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
from hooks.cache import ShardWriter, shard_entry
from interp.store import (KEY_META, Store, atomic_save, atomic_write_json, load_unit, model_digest, read_json,
                          read_spec, tensor_digest)

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
                 meta: dict | None = None, state_dtype=None, inputs=None) -> dict:
    """The spec of a capture folder: everything that determines its files (``inputs``: their digests)."""
    meta = dict(meta or {})
    extra = {} if inputs is None else \
        {"inputs": {k: tensor_digest(v) for k, v in sorted(_input_tensors(inputs, tokens.shape[0]).items())}}
    return {**extra, "model": {"name": meta.pop("model", None), "digest": model_digest(model)},
            "source": meta,
            "tokens": {"shape": list(tokens.shape), "dtype": str(tokens.dtype).replace("torch.", ""),
                       "digest": tensor_digest(tokens)},
            "names": list(names), "positions": positions, "state_dtype": _state_dtype(state_dtype),
            "batch_size": int(batch_size), "max_memory": parse_size(max_memory)}


def capture(model, tokens: torch.Tensor, names, out, positions=None, max_memory="1GB", batch_size=16,
            meta: dict | None = None, progress: bool = True, state_dtype=None, overwrite: bool = False,
            inputs=None) -> Path:
    """Capture ``names`` for every example of ``tokens`` [N, T]; write shards under ``out``.
    ``state_dtype``: store ``rec.state`` tensors in float32 (None, default, exact), bfloat16 or
    float16 (half the bytes; computed in float32 and rounded once). ``inputs``: a task's batch
    (`interp.tasks.TaskBatch`) or {name: tensor [N, ...]}, stored with ``tokens`` (`load_capture`
    gives them back as ``.tokens`` and ``.labels``). ``meta`` (model name and
    source) goes into the manifest and the spec. An existing ``out`` with the same spec is
    resumed (nothing runs if it is complete); with another spec it is refused, unless
    ``overwrite=True``, which replaces it."""
    sdtype = _state_dtype(state_dtype)
    names, out = list(names), Path(out)
    check_inputs(model, tokens, batch_size, max_memory)
    spec = capture_spec(model, tokens, names, positions, max_memory, batch_size, meta, sdtype, inputs)
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
        _save_inputs(store, tokens, inputs)
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
    """Capture examples ``done``.. in batches, streamed: each shard (a store unit) is written batch by
    batch into its file (`hooks.cache.ShardWriter`; no shard-sized tensor is held), then the manifest.
    A shard holds the fewest whole batches whose captures reach ``budget`` bytes."""
    hm = hooks.wrap(model)
    dev = input_device(model)  # a model spread over devices takes its inputs where it embeds them
    n = int(tokens.shape[0])
    bar = tqdm(total=n - done, disable=not progress, desc="capture")

    def forward(s):
        with torch.no_grad():
            _, cache = hm.run_with_cache(tokens[s:s + batch_size].to(dev), names=names, positions=positions,
                                         device="cpu", state_dtype=sdtype)
        bar.update(min(batch_size, n - s))
        return dict(cache)

    try:
        first, start = forward(done), done
        rows = first[names[0]].shape[0] if names else 1
        per_batch = sum(v.numel() * v.element_size() for v in first.values()) // rows * batch_size
        per_shard = max(1, -(-budget // max(1, per_batch))) * batch_size
        while start < n:
            stop, key = min(n, start + per_shard), f"shard-{len(manifest['shards']):05d}"

            def fill(tmp, start=start, stop=stop, first=first):
                with open(tmp, "wb") as fh:
                    w = ShardWriter(fh, first, stop - start, {KEY_META: key})
                    for s in range(start, stop, batch_size):
                        w.write(first if s == start else forward(s))
            path = atomic_save(store.units / f"{key}.safetensors", fill)
            manifest["shards"].append(shard_entry(path, store.path, start, stop, first))
            atomic_write_json(store.path / "manifest.json", manifest)
            start = stop
            first = forward(start) if start < n else None
    finally:   # the bar's last line is written before any error or 'interrupted' message
        bar.close()


def _save_inputs(store, tokens, inputs):
    """The unit ``units/inputs.safetensors``: the input ``tokens`` and the per-example ``inputs`` (a task
    batch's ``labels.<name>``, ``answer_pos``, ``answers``), once (not listed in the manifest, whose
    fields `interp.distributed.merge_captures` keeps equal to a single process's)."""
    if not store.has("inputs"):
        store.put("inputs", {"tokens": tokens.detach().cpu().contiguous(), **_input_tensors(inputs, tokens.shape[0])})


def _input_tensors(inputs, n: int) -> dict:
    """{name: tensor [n, ...]} of ``inputs``: a `interp.tasks.TaskBatch` or a dict of tensors."""
    if inputs is None:
        return {}
    if not isinstance(inputs, dict):
        inputs = {"answer_pos": inputs.answer_pos, "answers": inputs.answers,
                  **{f"labels.{k}": v for k, v in inputs.labels.items()}}
    out = {k: torch.as_tensor(v).detach().cpu().contiguous() for k, v in inputs.items()}
    bad = [k for k, v in out.items() if v.dim() == 0 or v.shape[0] != n]
    if bad:
        raise InterpError(f"inputs {', '.join(bad)} do not have one row per example ({n}); valid: tensors [N, ...]")
    return out


def load_capture(path, names=None, lazy: bool = False) -> hooks.Cache:
    """A capture folder as a `hooks.Cache` {name: tensor [N, ...]} (``names``: only these) that knows
    its ``positions`` (the token positions kept, None: all), ``tokens`` [N, T] and ``labels`` ({name:
    tensor}: a task's ``labels.<name>``, ``answer_pos``, ``answers``; empty if the capture was given no
    inputs) (both None for folders written before they were stored). Each shard is checked against the
    shapes the manifest lists for it. ``lazy``: nothing is read until a name is accessed (memory-mapped
    shards; `hooks.cache.LazyCache`): ``cache[name]`` reads and concatenates that name's shards at each
    access, ``cache.view(name)[a:b]`` only the shards holding those rows; tokens and labels are read."""
    path = Path(path)
    mf = path / "manifest.json"
    if not mf.is_file():
        started = " (a capture started there has not finished its first shard)" if (path / "spec.json").is_file() else ""
        raise InterpError(f"{path} holds no capture: no manifest.json{started}")
    m = read_json(mf)
    try:
        cache = hooks.Cache.load(path, names=names, lazy=lazy)
    except hooks.HookError as e:
        raise InterpError(str(e)) from None
    one = path / "units" / "inputs.safetensors"
    parts = [one] if one.is_file() else \
        [path / f"rank{r}" / "units" / "inputs.safetensors" for r in range(m.get("ranks", 0))]
    parts = [load_unit(f) for f in parts] if parts and all(f.is_file() for f in parts) else []
    held = {k: torch.cat([p[k] for p in parts]) for k in (parts[0] if parts else {}) if all(k in p for p in parts)}
    cache.tokens = held.pop("tokens", None)
    cache.labels = held if cache.tokens is not None else None
    return cache
