"""`interp capture`: run a task or a text file through a model and save activations/states.

Output directory, a result folder of kind 'capture' (`interp.store.Store`): ``spec.json`` (what
determines the contents: model name and weights digest, source (task, n, seed, knobs / text file and
seq_len, as the caller's ``meta``), a digest of the token ids, hook names, positions,
``state_dtype``, batch size, memory budget and a shard size if given),
``units/shard-00000.safetensors``, ..., ``units/inputs.safetensors`` (the input ``tokens`` and,
given a task batch, its labels and answer positions) and ``manifest.json`` (model, source, hook
names, per-shard files and example ranges, shapes and dtypes, positions, ``state_dtype``: the dtype
``rec.state`` tensors are stored in). The layout is `hooks.Cache.save`'s (`hooks.cache`);
`load_capture` gives a `hooks.Cache` (memory-mapped with ``lazy=True``). ``--max-memory`` bounds the
memory a capture uses: each batch runs as near-equal forwards of at most the examples whose working
memory (captures included, measured on the first examples: `fit_batch`) fits it, a warning saying
when that is fewer than ``--batch-size`` (the same shards and rows; bit for bit where the model's
kernels do not depend on the batch size), and a budget below one example's forward is refused,
naming what it needs. Each shard holds the captures of consecutive examples, the fewest whole
batches that reach ``shard_size`` (default ``--max-memory``) bytes; it is written into its file
forward by forward, so memory holds one forward's captures, never a shard's
(`bench/bench_capture_memory.py`). Every file is written atomically and the manifest after each
shard, so a run that stops, even killed inside a write, resumes where its manifest ends and gives
the same files as a run that never stopped. A resume checks each listed shard's header and recomputes
from the first missing or damaged one (`_cut_at_bad_shard`); `load_capture` refuses an unfinished capture.
Resuming with other settings is refused, naming the fields that differ (``overwrite=True``,
``--overwrite``: capture again); a second capture into a folder being written is refused.
Folders written before ``spec.json`` existed (shards beside the manifest) still load.
"""
from __future__ import annotations

import ctypes
import math
import numbers
import sys
import warnings
import weakref
from functools import partial
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from tqdm.auto import tqdm

import hooks
from interp import InterpError
from interp.kernels import kernel_spec
from interp.models import input_device, parse_size
from hooks.cache import ShardWriter, shard_entry
from interp.store import (KEY_META, Store, atomic_save, atomic_write_json, load_unit, matching, model_digest,
                          read_json, read_spec, tensor_digest)

# what a capture folder holds beside spec.json and units/ (older layouts and distributed parts
# included): --overwrite removes these, and their presence without a spec.json marks an old folder
OWNS = ("manifest.json", "shard-*.safetensors", "rank[0-9]*/")


def _state_dtype(state_dtype) -> str:
    from hooks.core import resolve_state_dtype
    try:
        return str(resolve_state_dtype(state_dtype)).replace("torch.", "")
    except ValueError as e:
        raise InterpError(str(e)) from None


def capture_spec(model, tokens: torch.Tensor, names, positions=None, max_memory="1GB", batch_size=16,
                 meta: dict | None = None, state_dtype=None, inputs=None, shard_size=None) -> dict:
    """The spec of a capture folder: everything that determines its files (``inputs``: their digests;
    ``shard_size`` only when given, so that folders captured before it existed resume; the kind of device it
    runs on, whose kernels round differently)."""
    meta = dict(meta or {})
    extra = {} if inputs is None else \
        {"inputs": {k: tensor_digest(v) for k, v in sorted(_input_tensors(inputs, tokens.shape[0]).items())}}
    if shard_size is not None:
        extra["shard_size"] = parse_size(shard_size)
    extra.update(kernel_spec())   # kernels that change results at rounding, where not the defaults (interp.kernels)
    return {**extra, "model": {"name": meta.pop("model", None), "digest": model_digest(model)},
            "source": meta,
            "tokens": {"shape": list(tokens.shape), "dtype": str(tokens.dtype).replace("torch.", ""),
                       "digest": tensor_digest(tokens)},
            "names": list(names), "positions": positions, "state_dtype": _state_dtype(state_dtype),
            "batch_size": int(batch_size), "max_memory": parse_size(max_memory),
            "device": input_device(model).type}


def capture(model, tokens: torch.Tensor, names, out, positions=None, max_memory="1GB", batch_size=16,
            meta: dict | None = None, progress: bool = True, state_dtype=None, overwrite: bool = False,
            inputs=None, shard_size=None) -> Path:
    """Capture ``names`` for every example of ``tokens`` [N, T]; write shards under ``out``.
    ``state_dtype``: store ``rec.state`` tensors in float32 (None, default, exact), bfloat16 or
    float16 (half the bytes; computed in float32 and rounded once). ``inputs``: a task's batch
    (`interp.tasks.TaskBatch`) or {name: tensor [N, ...]}, stored with ``tokens`` (`load_capture`
    gives them back as ``.tokens`` and ``.labels``); an ``attention_mask`` [N, T] among them (or a padded
    task batch's, `interp.tasks.pad_batches`) marks padded examples (1: a real token), which then run as
    padded batches (HF and zoo models). ``max_memory``: the memory budget (forwards are sized to it; see the module docstring); ``shard_size``: the bytes of captures a shard reaches
    (None: ``max_memory``). ``meta`` (model name and source) goes into the manifest and the spec. An
    existing ``out`` with the same spec is resumed (nothing runs if it is complete); with another
    spec it is refused, unless ``overwrite=True``, which replaces it."""
    sdtype = _state_dtype(state_dtype)
    names, out = ([names] if isinstance(names, str) else list(names)), Path(out)
    check_inputs(model, tokens, batch_size, max_memory)
    check_request(model, names, positions, tokens.shape[1], out)   # before anything is written
    shard_bytes = parse_size(max_memory if shard_size is None else shard_size)
    spec = capture_spec(model, tokens, names, positions, max_memory, batch_size, meta, sdtype, inputs, shard_size)
    store = open_store(out, spec, overwrite)
    try:
        n = int(tokens.shape[0])
        mf = out / "manifest.json"
        if mf.is_file():
            manifest = read_json(mf)
        elif matching(out, "rank[0-9]*/"):
            raise InterpError(f"{out} holds an unfinished distributed capture (rank*/ folders); resume it with torchrun "
                              "and --distributed on the same number of processes, or use --overwrite or a new --out")
        else:
            manifest = {"names": names, "positions": positions, "n_examples": n, "seq_len": int(tokens.shape[1]),
                        "state_dtype": sdtype, "meta": meta or {}, "shards": []}
        done = manifest["shards"][-1]["stop"] if manifest["shards"] else 0
        if done >= n:
            _save_inputs(store, tokens, inputs)   # (rewritten where missing or damaged)
            if progress:
                print(f"{out}: capture already complete ({n} examples); nothing to do "
                      "(--overwrite captures again)", file=sys.stderr)
            return out
        forward = _forward(model, tokens, names, positions, sdtype, padding_mask(inputs))
        budget = parse_size(max_memory)
        step, shapes = fit_batch(forward, n, budget, batch_size, max_memory)   # a refusal writes nothing more
        _save_inputs(store, tokens, inputs)
        _run(forward, n, store, manifest, done, shard_bytes, batch_size, step, shapes, progress)
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
    vocab = _vocab_size(model)
    if vocab is None:
        return
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab:
        raise InterpError(f"token id {lo if lo < 0 else hi} is out of range for this model; valid: 0..{vocab - 1}")


def check_request(model, names, positions, T: int, out: Path):
    """Refuse, before ``out`` is made, hook names the model lacks, positions outside 0..T-1 (negative ones count from
    the end) and an ``out`` that is a file."""
    from hooks.names import check
    from hooks.session import positions_list
    if not names:
        raise InterpError("no hook name given; valid: one or more of the model's hook names (hooks.wrap(model)"
                          ".hook_names)")
    check(names, hooks.wrap(model).hook_names)
    positions_list(positions, T)
    if out.exists() and not out.is_dir():
        raise InterpError(f"out {out} is a file; valid: a folder (new, or one this capture made)")


def _vocab_size(model) -> int | None:
    """How many token ids ``model`` embeds: its adapter's ``embed`` module's ``num_embeddings``, else
    (gpt2 / gpt_neox, whose ``embed`` is an embedding dropout) its input embeddings'; None if neither
    tells."""
    try:
        n = getattr(hooks.wrap(model).adapter.embed(model), "num_embeddings", None)
    except (AttributeError, TypeError, NotImplementedError):
        n = None
    if n is None and callable(getattr(model, "get_input_embeddings", None)):
        try:
            n = getattr(model.get_input_embeddings(), "num_embeddings", None)
        except (AttributeError, TypeError, NotImplementedError):
            n = None
    return n


def is_complete(out, n: int) -> bool:
    """Whether ``out`` holds a finished capture of ``n`` examples: its manifest reaches example ``n`` and every
    shard it lists (and its inputs unit) is whole (`bad_shard`; headers only)."""
    out, mf = Path(out), Path(out) / "manifest.json"
    if not mf.is_file():
        return False
    m = read_json(mf)
    if _extent(m)[0] != n or not m["shards"] or bad_shard(out, m):
        return False
    inputs = out / "units" / "inputs.safetensors"   # (a distributed capture's are in its rank folders)
    return "ranks" in m or not (out / "spec.json").is_file() or _damage(inputs) is None


def _damage(f: Path, entry: dict | None = None) -> str | None:
    """What is wrong with the safetensors file ``f`` ('missing', 'damaged (why)', or not holding the shapes its
    manifest ``entry`` lists), or None: only its header is read."""
    if not f.is_file():
        return "missing"
    from safetensors import safe_open
    try:
        with safe_open(str(f), "pt") as h:
            held = {k: list(h.get_slice(k).get_shape()) for k in h.keys()}
    except Exception as e:  # a file cut short or overwritten
        return f"damaged ({(str(e).splitlines() or [type(e).__name__])[0][:200]})"
    want = (entry or {}).get("shapes")
    if isinstance(want, dict) and held != {k: list(v) for k, v in want.items()}:
        return "not the shard the manifest lists (other tensors or shapes)"
    return None


def bad_shard(out, manifest: dict) -> tuple[int, str] | None:
    """(index, what is wrong) of the first shard ``manifest`` lists that is missing or damaged (`_damage`), or None."""
    for i, sh in enumerate(manifest.get("shards") or []):
        f = sh.get("file") if isinstance(sh, dict) else None
        why = _damage(Path(out) / f, sh) if isinstance(f, str) else "listed without its file"
        if why:
            return i, why
    return None


def _cut_at_bad_shard(out: Path):
    """(Holding the lock.) Where the manifest lists a missing or damaged shard, cut it before that shard (written
    atomically; removed if none is left) and remove the later shards of this folder, saying so: the resume
    recomputes them. A distributed capture's merged manifest is cut alike; its ranks check their own shards."""
    mf = out / "manifest.json"
    m = read_json(mf) if mf.is_file() else None
    if not (isinstance(m, dict) and isinstance(m.get("shards"), list)) or (bad := bad_shard(out, m)) is None:
        return
    i, why = bad
    dropped, m["shards"] = m["shards"][i:], m["shards"][:i]
    atomic_write_json(mf, m) if m["shards"] else mf.unlink()
    for f in [sh.get("file") for sh in dropped if isinstance(sh, dict)]:
        if isinstance(f, str) and not f.startswith("rank"):
            (out / f).unlink(missing_ok=True)
    first = dropped[0].get("file", i) if isinstance(dropped[0], dict) else i
    warnings.warn(f"{out}: shard {first} is {why}: recomputing it"
                  f"{f' and the {len(dropped) - 1} after it' * (len(dropped) > 1)}", stacklevel=3)


def open_store(out, spec: dict, overwrite: bool = False) -> Store:
    """The capture folder ``out`` with ``spec`` (`capture_spec`), opened for writing: locked and
    checked (a refusal over the state dtype says so first; a folder of a version that did not record the
    device resumes on any), its manifest cut before a missing or damaged shard (`_cut_at_bad_shard`). Close it
    when done."""
    old_spec = _old_spec(out)
    if old_spec is not None and "device" not in old_spec and not overwrite:
        spec = {k: v for k, v in spec.items() if k != "device"}
    try:
        store = Store(out, "capture", spec, overwrite=overwrite, owns=OWNS).open()
    except InterpError as e:
        old = (old_spec or {}).get("state_dtype")
        if old and old != spec["state_dtype"]:
            raise InterpError(f"{out} holds states in {old}, not {spec['state_dtype']} (resume with --state-dtype "
                              f"{old}): {e}") from None
        raise
    try:
        _cut_at_bad_shard(store.path)
    except BaseException:
        store.close()
        raise
    return store


def _old_spec(out) -> dict | None:
    """The spec a capture folder holds, or None (none, or not readable as one: `Store.open` says so)."""
    try:
        head = read_spec(out)
    except (InterpError, OSError):
        return None
    spec = head.get("spec") if isinstance(head, dict) else None
    return spec if isinstance(spec, dict) else None


def padding_mask(inputs):
    """The ``attention_mask`` [N, T] among ``inputs`` (padded examples, e.g. `interp capture --text --lines`, or
    a padded `interp.tasks.TaskBatch`), or None."""
    return inputs.get("attention_mask") if isinstance(inputs, dict) else getattr(inputs, "attention_mask", None)


def _forward(model, tokens, names, positions, sdtype, mask=None):
    """forward(a, b): {name: tensor on the CPU} of examples a..b of ``tokens``, captured without grad; with a
    padding ``mask`` [N, T] (1: real token) each forward gets its rows of it (`hooks`: pads write nothing)."""
    hm = hooks.wrap(model)
    dev = input_device(model)  # a model spread over devices takes its inputs where it embeds them

    def forward(a, b):
        with torch.no_grad():
            _, cache = hm.run_with_cache(tokens[a:b].to(dev), names=names, positions=positions, device="cpu",
                                         state_dtype=sdtype,
                                         attention_mask=None if mask is None else torch.as_tensor(mask)[a:b].to(dev))
        return dict(cache)
    return forward


def _run(forward, n, store, manifest, done, shard_bytes, batch_size, step, shapes, progress):
    """Capture examples ``done``..``n`` streamed: each shard (a store unit) is written into its file
    forward by forward (`hooks.cache.ShardWriter`; no shard-sized tensor is held), then the manifest.
    A shard holds the fewest whole batches of ``batch_size`` whose captures (``shapes``: per example)
    reach ``shard_bytes``; each batch runs as forwards of at most ``step`` examples (`pieces`)."""
    per_batch = sum(math.prod(v.shape[1:]) * v.element_size() for v in shapes.values()) * batch_size
    per_shard = max(1, -(-shard_bytes // max(1, per_batch))) * batch_size
    bar = tqdm(total=n - done, disable=not progress, desc="capture")
    try:
        for start in range(done, n, per_shard):
            stop, key = min(n, start + per_shard), f"shard-{len(manifest['shards']):05d}"

            def fill(tmp, start=start, stop=stop):
                with open(tmp, "wb") as fh:
                    w = ShardWriter(fh, shapes, stop - start, {KEY_META: key})
                    for a, b in pieces(start, stop, batch_size, step):
                        w.write(forward(a, b))
                        release_free_memory()
                        bar.update(b - a)
            path = atomic_save(store.units / f"{key}.safetensors", fill)
            manifest["shards"].append(shard_entry(path, store.path, start, stop, shapes))
            atomic_write_json(store.path / "manifest.json", manifest)
    finally:   # the bar's last line is written before any error or 'interrupted' message
        bar.close()


def pieces(start: int, stop: int, batch_size: int, step: int):
    """(a, b) example ranges of the forwards over ``start..stop``: each batch of ``batch_size`` (counted
    from example 0) split into the fewest near-equal forwards of at most ``step`` examples, so that the
    forwards, and the numbers they give, are the same whichever shard or process runs a batch."""
    for s in range(start - start % batch_size, stop, batch_size):
        a, e = max(s, start), min(s + batch_size, stop)
        k = -(-(e - a) // step)
        for i in range(k):
            yield a + (e - a) * i // k, a + (e - a) * (i + 1) // k


# host memory planned per byte of tensors: glibc's heap keeps blocks a forward frees resident until
# it ends (`release_free_memory`), so a CPU forward's resident set runs above the bytes its tensors
# hold at once (1.2-1.9x in bench/bench_capture_memory.py, budgets 12MB-100MB, forwards planned at
# 1x); accelerators' allocators are counted 1:1
HEAP_ALLOWANCE = 2.0


def fit_batch(forward, n: int, budget: int, batch_size: int, said=None):
    """(the most examples, at most ``batch_size``, whose forward fits ``budget`` bytes, {name: empty
    tensor [0, ...]} of the captures' per-example shapes and dtypes). ``forward(a, b)`` captures
    examples a..b; it is measured (`ForwardPeak`: tensor bytes per device, captures included; on the
    CPU times `HEAP_ALLOWANCE`) for 1 example and, unless ``batch_size`` times that fits, for 2 (if
    they fit): a fixed part plus one per example. A budget below one example's forward is refused
    naming the budget needed; a lower batch size than asked is said (a warning). ``said``: the budget
    as the user gave it, for the messages."""
    said = _size(budget) if said is None else said
    with ForwardPeak() as one:
        cache = forward(0, 1)
    shapes = {k: torch.empty((0, *v.shape[1:]), dtype=v.dtype) for k, v in cache.items()}
    del cache
    scale = {d: HEAP_ALLOWANCE if d == "cpu" else 1.0 for d in one.peak}
    need = max((math.ceil(p * scale[d]) for d, p in one.peak.items()), default=0)
    if need > budget:
        raise InterpError(f"--max-memory {said} cannot hold the forward of one example with these hook names "
                          f"and positions (it needs about {_size(need)}); valid: --max-memory {_size(need)} or more")
    step = batch_size if batch_size * need <= budget else 1   # (a fixed part + b per example <= b x one example)
    if step == 1 < min(n, batch_size) and 2 * need <= budget:
        with ForwardPeak() as two:
            forward(0, 2)
        fits = []
        for d, p1 in one.peak.items():
            each = max(1, two.peak.get(d, 0) - p1)
            fits.append(int((budget / scale[d] - p1) // each) + 1)   # the most b with p1 + (b - 1) each in it
        step = max(1, min(batch_size, *fits))
    if step < min(n, batch_size):
        warnings.warn(f"capture: --max-memory {said} holds the forward of {step} example"
                      f"{'s' * (step > 1)} at a time with these hook names and positions (one needs about "
                      f"{_size(need)}); running batches of at most {step} instead of --batch-size {batch_size} "
                      "(the same shards and rows)", stacklevel=3)
    return step, shapes


class ForwardPeak(TorchFunctionMode):
    """Within ``with ForwardPeak() as p``: ``p.peak`` {device: the most bytes held at once by tensors
    created inside the block}: each storage that a torch function or tensor method returns and that
    none of its arguments held is counted from then until it is freed. Memory a function uses only
    inside itself (one kernel's scratch space) is not seen."""

    def __init__(self):
        super().__init__()
        self.live, self.now, self.peak = {}, {}, {}

    def _freed(self, key, _ref=None):
        self.now[key[0]] -= self.live.pop(key)[1]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        given = None
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.is_meta or t.layout != torch.strided:
                continue
            st = t.untyped_storage()
            key, nbytes = (str(t.device), st.data_ptr()), st.nbytes()
            if nbytes == 0 or key in self.live:
                continue
            if given is None:   # an argument's storage returned (a view, an in-place op) is not new
                given = {x.untyped_storage().data_ptr() for x in tree_flatten((args, kwargs))[0]
                         if isinstance(x, torch.Tensor) and not x.is_meta and x.layout == torch.strided}
            if key[1] in given:
                continue
            self.live[key] = (weakref.ref(st, partial(self._freed, key)), nbytes)
            self.now[key[0]] = self.now.get(key[0], 0) + nbytes
            self.peak[key[0]] = max(self.peak.get(key[0], 0), self.now[key[0]])
        return out


def release_free_memory():
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere nothing):
    without it the freed working memory of earlier forwards stays resident, scattered between live
    blocks, and the resident set grows past the budget though the tensors held do not."""
    global _TRIM
    if _TRIM is None:
        try:
            _TRIM = ctypes.CDLL(None).malloc_trim
        except (AttributeError, OSError, TypeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None


def _size(nbytes: int) -> str:
    """Bytes as a --max-memory value (binary units, as `interp.models.parse_size` reads them), rounded up."""
    for unit, b in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if nbytes >= b:
            return f"{math.ceil(nbytes / b * 10) / 10:g}{unit}"
    return f"{nbytes}B"


def _save_inputs(store, tokens, inputs):
    """The unit ``units/inputs.safetensors``: the input ``tokens`` and the per-example ``inputs`` (a task
    batch's ``labels.<name>``, ``answer_pos``, ``answers``), once (not listed in the manifest, whose
    fields `interp.distributed.merge_captures` keeps equal to a single process's)."""
    if _damage(store.units / "inputs.safetensors") is not None:   # absent, or cut short / overwritten
        store.put("inputs", {"tokens": tokens.detach().cpu().contiguous(), **_input_tensors(inputs, tokens.shape[0])})


def _input_tensors(inputs, n: int) -> dict:
    """{name: tensor [n, ...]} of ``inputs``: a `interp.tasks.TaskBatch` or a dict of tensors."""
    if inputs is None:
        return {}
    if not isinstance(inputs, dict):
        mask = getattr(inputs, "attention_mask", None)   # a padded task batch (`interp.tasks.pad_batches`)
        inputs = {"answer_pos": inputs.answer_pos, "answers": inputs.answers,
                  **{f"labels.{k}": v for k, v in inputs.labels.items()},
                  **({} if mask is None else {"attention_mask": mask})}
    out = {k: torch.as_tensor(v).detach().cpu().contiguous() for k, v in inputs.items()}
    bad = [k for k, v in out.items() if v.dim() == 0 or v.shape[0] != n]
    if bad:
        raise InterpError(f"inputs {', '.join(bad)} do not have one row per example ({n}); valid: tensors [N, ...]")
    return out


def load_capture(path, names=None, lazy: bool = False, partial: bool = False) -> hooks.Cache:
    """A capture folder as a `hooks.Cache` {name: tensor [N, ...]} (``names``: only these) that knows
    its ``positions`` (the token positions kept, None: all), ``tokens`` [N, T] and ``labels`` ({name:
    tensor}: a task's ``labels.<name>``, ``answer_pos``, ``answers``; empty if the capture was given no
    inputs) (both None for folders written before they were stored). Each shard is checked against the
    shapes the manifest lists for it. ``lazy``: nothing is read until a name is accessed (memory-mapped
    shards; `hooks.cache.LazyCache`): ``cache[name]`` reads and concatenates that name's shards at each
    access, ``cache.view(name)[a:b]`` only the shards holding those rows; tokens and labels are read.
    An unfinished capture is refused; ``partial=True`` gives the examples it holds (tokens, labels cut alike)."""
    path = Path(path)
    mf = path / "manifest.json"
    if not mf.is_file():
        started = " (a capture started there has not finished its first shard)" if (path / "spec.json").is_file() else ""
        raise InterpError(f"{path} holds no capture: no manifest.json{started}")
    m = read_json(mf)
    done, n = _extent(m)
    if done != n and not partial:
        raise InterpError(f"{path} holds an unfinished capture ({done} of {n} examples); valid: run the same "
                          "interp capture command again to finish it (or load_capture(..., partial=True): those held)")
    try:
        cache = hooks.Cache.load(path, names=names, lazy=lazy, partial=partial)
    except hooks.HookError as e:
        raise InterpError(str(e)) from None
    one = path / "units" / "inputs.safetensors"
    ranks = sorted({int(sh["file"].split("/")[0][4:]) for sh in m.get("shards", []) if sh["file"].startswith("rank")})
    parts = [one] if one.is_file() else \
        [path / f"rank{r}" / "units" / "inputs.safetensors" for r in ranks]   # (a process given no batch wrote none)
    parts = [load_unit(f) for f in parts] if parts and all(f.is_file() for f in parts) else []
    held = {k: torch.cat([p[k] for p in parts])[:done if partial else None]   # (partial: the rows held)
            for k in (parts[0] if parts else {}) if all(k in p for p in parts)}
    cache.tokens = held.pop("tokens", None)
    cache.labels = held if cache.tokens is not None else None
    return cache


def _extent(manifest) -> tuple:
    """(examples the shards hold, examples the capture has); (None, None) where the manifest does not say."""
    m = manifest if isinstance(manifest, dict) else {}
    shards, n = m.get("shards"), m.get("n_examples")
    last = shards[-1] if isinstance(shards, list) and shards else {"stop": 0}
    done = last.get("stop") if isinstance(last, dict) else None   # (a damaged entry: `hooks.Cache.load` says so)
    return (done, n) if isinstance(n, int) and isinstance(done, int) and isinstance(shards, list) else (None, None)
