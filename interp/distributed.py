"""Data-parallel patching sweeps and captures on ``torch.distributed`` (launched by ``torchrun``).

    torchrun --nproc-per-node 2 -m interp.cli -- patch --model gdn75 --task mqar --n 1024 --device cuda --distributed
    torchrun --nproc-per-node 2 -m interp.cli -- capture --model gdn75 --task mqar --n 4096 --out runs/cap --distributed

(the ``--`` keeps torchrun's parser off our options: it would take ``--n`` for its ``--nnodes``)

In Python, inside a script that torchrun starts::

    from interp import distributed
    ctx = distributed.init()                      # reads RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR
    model = load(...).to(ctx.device("cuda"))      # cuda:<local rank> (cpu stays cpu)
    res = distributed.sweep(model, pairs, out="runs/sweep", sites=["resid_pre"])  # rank 0: the PatchResult
    distributed.capture(model, tokens, names, "runs/cap")                         # rank 0 merges the manifest

Each process (rank) takes a deterministic, contiguous share of the work items (patching: (direction,
pair chunk, site x layer unit) items, balanced by an estimate of their cost; capture: whole batches of
examples), runs them exactly as one process would (same batches, so the same numbers) and writes
its results incrementally to ``<out>/rank<r>/``. After a barrier rank 0 merges: the sweep's units
are copied into ``<out>`` and assembled into the same PatchResult a single-process run produces,
the capture's shards are listed in one ``<out>/manifest.json`` that reads like a single-process
capture. An interrupted run resumes: finished items (in any ``rank*/`` directory or the merged
folder) are not run again, also when the number of processes changes (patching). ``<out>`` and
each ``rank<r>/`` are `interp.store` result folders (spec-checked, locked, written atomically);
a capture resumes with the same number of processes.

Backend: NCCL for CUDA hosts, gloo otherwise; the ranks exchange only small control messages
(barriers, the list of finished items) and never tensors, over a gloo group in both cases.
Without torchrun's environment variables everything runs as one process (rank 0 of 1).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch

from interp import InterpError
from interp.store import atomic_write_json, part_folder, read_json, read_spec, spec_diff

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
BACKENDS = ("gloo", "nccl")


@dataclass
class Context:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` on this host)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    group: object = field(default=None, repr=False)   # gloo group for control messages
    owned: bool = field(default=False, repr=False)    # init() created the process group

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device="cpu") -> torch.device:
        """The device this rank computes on: 'cuda' -> cuda:<local rank>; anything else as given."""
        d = torch.device(device)
        if d.type == "cuda" and d.index is None:
            if torch.cuda.device_count() <= self.local_rank:
                raise InterpError(f"rank {self.rank} needs cuda:{self.local_rank}, but this host has "
                                  f"{torch.cuda.device_count()} GPU(s); start at most that many processes per node")
            return torch.device("cuda", self.local_rank)
        return d

    def barrier(self):
        if self.distributed:
            torch.distributed.barrier(group=self.group)

    def broadcast(self, obj=None):
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, obj):
        """[obj of rank 0, obj of rank 1, ...] on every rank."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj, group=self.group)
        return out

    def on_main(self, fn, share=True):
        """Run ``fn()`` on rank 0 and return its result on every rank (``share=False``: on rank 0,
        None elsewhere); an InterpError raised there is raised on every rank (so no rank is left
        waiting for the others)."""
        res = err = None
        if self.is_main:
            try:
                res = fn()
            except InterpError as e:
                err = str(e)
        err, got = self.broadcast((err, res if share else None))
        if err is not None:
            raise InterpError(err)
        return res if self.is_main else got


_CTX: Context | None = None


def init(backend: str | None = None, timeout_minutes: float | None = None) -> Context:
    """Join the process group that torchrun describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT), once per process; later calls return the same context.
    ``backend``: 'nccl' (default when CUDA is available) or 'gloo' (default otherwise). Without
    those variables: a single-process context, no process group. ``timeout_minutes`` (default
    $INTERP_DIST_TIMEOUT or 720): how long a rank that finished its share waits for the others."""
    global _CTX
    if _CTX is not None:
        return _CTX
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():  # the caller set the group up itself
        _CTX = Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                       dist.get_backend())
        _CTX.group = _control_group(_CTX.backend, timeout_minutes)
        return _CTX
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        _CTX = Context()
        return _CTX
    missing = [k for k in ENV if k not in os.environ]
    if missing:
        raise InterpError(f"incomplete torch.distributed environment: {', '.join(missing)} not set; "
                          "start with torchrun (e.g. torchrun --nproc-per-node 2 -m interp.cli -- patch ... --distributed)")
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend not in BACKENDS:
        raise InterpError(f"backend '{backend}' is not valid; valid: {', '.join(BACKENDS)}")
    if not dist.is_available():
        raise InterpError("this torch build has no torch.distributed")
    timeout = timedelta(minutes=_timeout(timeout_minutes))
    kw = {}
    if backend == "nccl":
        if torch.cuda.device_count() <= local:
            raise InterpError(f"rank {rank} (local rank {local}) has no GPU: this host has "
                              f"{torch.cuda.device_count()}; use --nproc-per-node <= that, or backend gloo")
        torch.cuda.set_device(local)
        kw["device_id"] = torch.device("cuda", local)
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout, **kw)
    _CTX = Context(rank, world, local, backend, owned=True)
    _CTX.group = _control_group(backend, timeout_minutes)
    return _CTX


def _timeout(minutes):
    if minutes is not None:
        return float(minutes)
    v = os.environ.get("INTERP_DIST_TIMEOUT", "720")
    try:
        return float(v)
    except ValueError:
        raise InterpError(f"INTERP_DIST_TIMEOUT '{v}' is not a number of minutes") from None


def _control_group(backend, timeout_minutes):
    """Barriers and object messages go over gloo (CPU, no GPU stream held while a rank waits)."""
    if torch.distributed.get_world_size() == 1:
        return None
    if backend == "gloo":
        return None  # the default group
    return torch.distributed.new_group(backend="gloo", timeout=timedelta(minutes=_timeout(timeout_minutes)))


def shutdown():
    """Leave the process group if `init` created it (one the caller set up stays)."""
    global _CTX
    if _CTX is not None and _CTX.owned and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _CTX = None


# --- sharding -------------------------------------------------------------------------------------
def shard(items, rank: int, world_size: int, costs=None) -> list:
    """Rank ``rank``'s share of ``items``: a contiguous run of them, cut where the cumulative
    cost (``costs``: a list or {item: cost}; default 1 each) is closest to r/W of the total, so
    every rank gets about the same cost. Deterministic; the shares of ranks 0..W-1 partition the
    items in order (a rank may get none when there are fewer items than ranks)."""
    items = list(items)
    if not 0 <= rank < world_size:
        raise InterpError(f"rank {rank} out of range 0..{world_size - 1}")
    if costs is None:
        w = [1.0] * len(items)
    elif isinstance(costs, dict):
        w = [float(costs[i]) for i in items]
    else:
        w = [float(c) for c in costs]
        if len(w) != len(items):
            raise InterpError(f"{len(w)} costs for {len(items)} items")
    if any(c < 0 for c in w):
        raise InterpError("costs must be >= 0")
    cum = [0.0]
    for c in w:
        cum.append(cum[-1] + c)
    total = cum[-1]

    def cut(r):  # index i (0..n) whose prefix cost is closest to r/W of the total; ties -> earlier
        if r <= 0:
            return 0
        if r >= world_size:
            return len(items)
        if total == 0:
            return round(len(items) * r / world_size)
        target = total * r / world_size
        return min(range(len(cum)), key=lambda i: (abs(cum[i] - target), i))
    a, b = cut(rank), cut(rank + 1)
    return items[a:max(a, b)]


# --- patching ---------------------------------------------------------------------------------------
def _rank_dirs(out: Path):
    """The ``rank<r>/`` parts of a distributed sweep in ``out``, by rank."""
    from interp.patching import rank_dirs
    return rank_dirs(out)


def _done_items(store, plan) -> list:
    """The items of ``plan`` whose units ``store`` (the sweep's folder, opened by rank 0 before
    any rank writes, the ranks' parts merged in) holds."""
    from interp.patching.plan import unit_key
    return [it for it in plan.items if store.has(unit_key(*it))]


def sweep(model, pairs, out, ctx: Context | None = None, progress=None, overwrite: bool = False,
          keep_all: bool = False, n_boot: int = 1000, **kw):
    """`interp.patching.sweep` spread over the ranks of ``ctx`` (default: `init()`). Every rank
    calls it with the same arguments and its own copy of the model (e.g. on cuda:<local rank>).
    Rank 0 opens ``out`` (the sweep's `interp.store.Store`: spec-checked against the settings,
    locked for the whole run, ``overwrite=True`` replaces it) and lists the finished items; each
    rank runs a share of the rest (balanced by estimated cost) into its part ``out/rank<r>/`` (a
    store with the same spec); rank 0 merges the parts into ``out`` and returns the PatchResult
    (equal to a single-process ``sweep``), the other ranks return None. ``out`` is required (the
    ranks meet there); ``kw``: the other arguments of `interp.patching.sweep`."""
    from interp import patching
    from interp.patching.plan import unit_key
    from interp.patching.units import KIND
    from interp.store import Store
    ctx = ctx or init()
    if out is None:
        raise InterpError("a distributed sweep needs an output directory (out=) where the ranks write their parts")
    out = Path(out)
    if progress is None:
        progress = ctx.is_main
    if not ctx.distributed:  # one process: a plain sweep (it merges what an interrupted distributed run left)
        return patching.sweep(model, pairs, out=out, progress=progress, overwrite=overwrite, keep_all=keep_all,
                              n_boot=n_boot, **kw)
    plan = patching.plan_sweep(model, pairs, **kw)
    held = {}

    def open_out():  # rank 0, before any rank writes: check and lock out; the finished items
        held["store"] = patching.open_units(out, plan.spec, overwrite)
        return _done_items(held["store"], plan)
    try:
        done = set(map(tuple, ctx.on_main(open_out)))
        mine = shard([it for it in plan.items if it not in done], ctx.rank, ctx.world_size,
                     {it: plan.cost(it) for it in plan.items})
        err = None
        try:
            with Store(part_folder(out, ctx.rank), KIND, plan.spec) as part:
                patching.run_items(plan, part, [it for it in mine if not part.has(unit_key(*it))], progress)
        except InterpError as e:
            err = str(e)
        _raise_any(ctx.gather(("error", err) if err else ("ok", None)))

        def merge():
            patching.merge_units(_rank_dirs(out), out=held["store"])
            return patching.assemble(plan, held["store"], keep_all=keep_all, n_boot=n_boot)
        return ctx.on_main(merge, share=False)
    finally:
        if "store" in held:
            held["store"].close()


def _raise_any(msgs):
    errs = [m for s, m in msgs if s == "error"]
    if errs:
        e = InterpError(errs[0])
        e.agreed = True
        raise e


# --- capture ------------------------------------------------------------------------------------------
def capture(model, tokens, names, out, ctx: Context | None = None, batch_size: int = 16, meta=None,
            progress=None, overwrite: bool = False, **kw) -> Path:
    """`interp.capture.capture` spread over the ranks: rank r captures a contiguous run of whole
    batches (the batches a single process would run, so the numbers are the same) into
    ``out/rank<r>/``, a capture folder of its own; rank 0 then writes ``out/manifest.json``
    listing every shard in example order, so `load_capture(out)` reads it like a single-process
    capture. ``out`` gets the spec a single-process capture would (checked, and locked by rank 0
    for the whole run); resumable with the same number of processes; ``overwrite=True`` replaces
    what ``out`` holds. ``kw``: positions, max_memory (per rank), state_dtype."""
    from interp.capture import capture as capture_one, capture_spec, open_store
    ctx = ctx or init()
    out = Path(out)
    if progress is None:
        progress = ctx.is_main
    names = list(names)
    if not ctx.distributed:
        return capture_one(model, tokens, names, out, batch_size=batch_size, meta=meta, progress=progress,
                           overwrite=overwrite, **kw)
    N = int(tokens.shape[0])
    n_batches = -(-N // batch_size)
    parts = [shard(range(n_batches), r, ctx.world_size) for r in range(ctx.world_size)]
    ranges = [(min(N, p[0] * batch_size), min(N, (p[-1] + 1) * batch_size)) if p else (N, N) for p in parts]
    held = {}

    def open_out():  # rank 0, before any rank writes: check and lock out; True if it is complete
        spec = capture_spec(model, tokens, names, batch_size=batch_size, meta=meta, **kw)
        held["store"] = open_store(out, spec, overwrite)
        return _capture_state(out, N, ranges)
    try:
        if ctx.on_main(open_out):  # finished (by one process or by these): nothing to do
            return out
        a, b = ranges[ctx.rank]
        err = None
        if a < b:
            try:
                capture_one(model, tokens[a:b], names, part_folder(out, ctx.rank), batch_size=batch_size,
                            meta={**(meta or {}), "range": [a, b]}, progress=progress, **_rows_of(kw, N, a, b))
            except InterpError as e:
                err = str(e)
        _raise_any(ctx.gather(("error", err) if err else ("ok", None)))
        ctx.on_main(lambda: merge_captures(out, ranges, meta=meta), share=False)
    finally:
        if "store" in held:
            held["store"].close()
    return out


def _rows_of(kw: dict, n: int, a: int, b: int) -> dict:
    """``kw`` with its per-example ``inputs`` (a task batch or a dict of [n, ...] tensors) cut to examples a..b-1."""
    if kw.get("inputs") is None:
        return kw
    from interp.capture import _input_tensors
    return {**kw, "inputs": {k: v[a:b] for k, v in _input_tensors(kw["inputs"], n).items()}}


def _capture_state(out: Path, n: int, ranges) -> bool:
    """True if ``out`` holds a finished capture of ``n`` examples; refuses an unfinished
    single-process capture and rank folders cut for another number of processes."""
    mf = out / "manifest.json"
    if mf.is_file():
        m = read_json(mf)
        if m["shards"] and m["shards"][-1]["stop"] == n:
            return True
        if "ranks" not in m:
            raise InterpError(f"{out} holds an unfinished single-process capture; finish it without "
                              "--distributed, or use --overwrite or a new --out")
    for r, (a, b) in enumerate(ranges):
        head = read_spec(out / f"rank{r}")
        got = head["spec"].get("source", {}).get("range") if isinstance(head, dict) else None
        if head is not None and got != [a, b]:
            raise InterpError(f"{out}/rank{r} holds examples {got}, but with {len(ranges)} processes rank {r} "
                              f"captures {[a, b]}; resume with the same number of processes, or use --overwrite "
                              "or a new --out")
    return False


def merge_captures(out, ranges, meta=None) -> Path:
    """Write ``out/manifest.json`` (atomically) for the rank directories ``out/rank<r>/`` (rank r
    holds the examples ``ranges[r]``): the shards of every rank in example order, file names
    relative to ``out``, as a single-process capture of all examples would list them. The ranks'
    specs must agree but for their example ranges (an InterpError names the fields)."""
    out = Path(out)
    shards, head, first = [], None, None
    for r, (a, b) in enumerate(ranges):
        if a >= b:
            continue
        d = out / f"rank{r}"
        m = read_json(d / "manifest.json") if (d / "manifest.json").is_file() else None
        if m is None or not m["shards"] or m["shards"][-1]["stop"] != b - a:
            raise InterpError(f"{d} is incomplete (examples {a}..{b})")
        spec = (read_spec(d) or {}).get("spec", {})
        spec = {k: ({**v, "range": None} if k == "source" else v) for k, v in spec.items()
                if k not in ("tokens", "inputs")}   # (digests of each rank's own rows)
        first = first or (r, spec)
        diff = spec_diff(first[1], spec)
        if diff:
            raise InterpError(f"{d} was captured with other settings than {out}/rank{first[0]}: {'; '.join(diff[:6])}; "
                              "capture again with --overwrite or into a new --out")
        head = head or m
        for s in m["shards"]:
            shards.append({**s, "file": f"rank{r}/{s['file']}", "start": s["start"] + a, "stop": s["stop"] + a})
    manifest = {"names": head["names"], "positions": head["positions"], "n_examples": ranges[-1][1],
                "seq_len": head["seq_len"], "state_dtype": head.get("state_dtype", "float32"), "meta": meta or {},
                "shards": shards, "ranks": len(ranges)}
    atomic_write_json(out / "manifest.json", manifest)
    return out
