"""Crash-safe, resumable, spec-checked result folders: atomic writes, one file per unit, a writer lock.

A `Store` is a folder holding

    spec.json   {"kind": ..., "format": 1, "spec": {...}}: everything that determines the contents
    units/      one file per unit (parquet, safetensors or JSON), each complete or absent
    .lock       while a writer has the folder open: {"pid", "host", "time"}

plus the files its user writes with the atomic writers below (capture's ``manifest.json``).
Every file is written to ``<name>.tmp-<pid>`` in the same folder, flushed, fsynced and renamed
over ``<name>`` (`os.replace`): a kill at any point leaves the old file or the new one, never a
part; leftover temporary files are ignored and removed when the folder is next opened. Opening a
folder whose spec differs is refused with the differing fields named (``overwrite=True`` /
``--overwrite`` replaces the old result; a folder where nothing but the spec was written takes
the new spec); a second writer is refused while the first runs; a lock left by a process that no
longer runs on this host is taken over.

Fault injection (tests): ``INTERP_STORE_KILL=POINT:GLOB:N`` makes a process SIGKILL itself in its
N-th atomic write of a file named like GLOB, at POINT ``write`` (temporary file half written),
``replace`` (written and synced, not renamed) or ``after`` (renamed into place).
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from urllib.parse import quote, unquote

from interp import InterpError
from interp.lock import LOCK, Lock, alive

FORMAT = 1
SPEC_FILE = "spec.json"
UNITS = "units"
KILL_ENV = "INTERP_STORE_KILL"
EXTS = (".parquet", ".safetensors", ".json")
KEY_META = "interp.key"     # the unit's key, kept inside its file (names of long keys are hashed)
_SAFE = "-_.=+,@"           # kept as they are in unit file names, besides letters and digits
_MAX_NAME = 120
_kill = {"writes": 0}


# --- atomic files --------------------------------------------------------------------------------
def is_temp(path) -> bool:
    """Whether ``path`` is a temporary file of an atomic write (``<name>.tmp-<pid>``)."""
    head, sep, pid = Path(path).name.rpartition(".tmp-")
    return bool(sep and head and pid.isdigit())


def _armed(path) -> str | None:
    """The kill point that INTERP_STORE_KILL arms for this write, or None."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return None
    point, _, rest = spec.partition(":")
    glob, _, n = rest.rpartition(":")
    if not fnmatch.fnmatch(Path(path).name, glob):
        return None
    _kill["writes"] += 1
    return point if str(_kill["writes"]) == n else None


def _fsync(path, directory=False):
    """fsync a file (errors raised) or a folder (best effort: not every platform can open one)."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        if not directory:
            raise


_UMASK = os.umask(0o022)   # read once (os.umask can only be read by setting it)
os.umask(_UMASK)


def atomic_save(path, write) -> Path:
    """Create ``path`` atomically through ``write(tmp)``, a function that writes the whole file at
    the path it is given: into ``<name>.tmp-<pid>`` in the same folder, fsynced, renamed over
    ``path``. A failure (or kill) leaves the previous ``path`` (or none) as it was."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    armed = _armed(path)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)   # the mode a plain open() gives (some writers make their files 0600)
        if armed == "write":
            os.truncate(tmp, os.path.getsize(tmp) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        _fsync(tmp)
        if armed == "replace":
            os.kill(os.getpid(), signal.SIGKILL)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent, directory=True)
    if armed == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return path


def atomic_write_bytes(path, data: bytes) -> Path:
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    return atomic_save(path, write)


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> Path:
    """``obj`` as indented JSON (one trailing newline), atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def save_safetensors(path, tensors: dict, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file
    return atomic_save(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def save_parquet(path, df, metadata: dict | None = None) -> Path:
    """``df`` as parquet (pyarrow, index kept as pandas does), ``metadata`` ({str: str}) added to
    the schema's metadata, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = pa.Table.from_pandas(df)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               **{k.encode(): str(v).encode() for k, v in metadata.items()}})
    return atomic_save(path, lambda tmp: pq.write_table(table, str(tmp)))


def save_csv(path, df, **to_csv) -> Path:
    """``df.to_csv(path, **to_csv)``, atomically."""
    return atomic_save(path, lambda tmp: df.to_csv(tmp, **to_csv))


def remove(path) -> None:
    """Delete a folder with what it holds (not a link's target), a file or a link; nothing if absent."""
    p = Path(path)
    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)


def damaged(path, e=None) -> InterpError:
    """The one error for a result file cut short or overwritten: names it, says why (``e``'s first line) and
    what to do."""
    msg = "" if e is None else f" ({(str(e).splitlines() or [type(e).__name__])[0][:200]})"
    return InterpError(f"{path} is damaged{msg}; delete it and run the same command again to recompute it")


def read_json(path):
    """A JSON file; a damaged one raises InterpError naming it (never a raw JSONDecodeError)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise damaged(path, e) from None


def load_unit(path):
    """A unit file by its extension: .parquet -> DataFrame, .safetensors -> {name: tensor},
    .json -> its value. A missing or damaged file raises InterpError naming it."""
    path = Path(path)
    if not path.is_file():
        raise InterpError(f"{path} is missing; the result folder is incomplete: re-run to recompute it")
    try:
        if path.suffix == ".parquet":
            import pandas as pd
            return pd.read_parquet(path)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        return json.loads(path.read_text())["value"]
    except Exception as e:  # pyarrow / safetensors / JSON errors of a file cut short or overwritten
        raise damaged(path, e) from None


# --- specs and digests -------------------------------------------------------------------------------
def _jsonable(x):
    if hasattr(x, "item") and callable(x.item):  # numpy / torch scalars
        return x.item()
    if isinstance(x, (Path, set, frozenset)) or type(x).__module__ == "torch":
        return sorted(x) if isinstance(x, (set, frozenset)) else str(x)
    raise TypeError(f"{type(x).__name__} in a result spec is not JSON-able")


def normalize(spec):
    """``spec`` as it reads back from JSON (tuples -> lists, keys -> str, dtypes/paths -> str)."""
    return json.loads(json.dumps(spec, sort_keys=True, default=_jsonable))


def spec_digest(obj, n: int = 16) -> str:
    """Short sha256 of ``obj``'s canonical JSON."""
    return hashlib.sha256(json.dumps(normalize(obj), sort_keys=True).encode()).hexdigest()[:n]


def _short(v, width=48) -> str:
    s = json.dumps(v, sort_keys=True)
    return s if len(s) <= width else s[:width - 3] + "..."


def spec_diff(old, new, prefix="") -> list:
    """['field.sub: old -> new', ...] for every leaf where two (normalized) specs differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            p = f"{prefix}.{k}" if prefix else str(k)
            if k not in old or k not in new:
                out.append(f"{p}: {_short(old[k]) if k in old else '(absent)'} -> "
                           f"{_short(new[k]) if k in new else '(absent)'}")
            else:
                out += spec_diff(old[k], new[k], p)
        return out
    return [] if old == new else [f"{prefix or 'spec'}: {_short(old)} -> {_short(new)}"]


def diff_summary(diff: list, shown: int = 6) -> str:
    """The first ``shown`` entries of a `spec_diff`, '; '-joined, with how many more there are."""
    return "; ".join(diff[:shown]) + (f" (and {len(diff) - shown} more)" if len(diff) > shown else "")


def _hash_tensor(h, name, t):
    import torch
    h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
    if t.is_meta:  # offloaded (accelerate): its bytes are not at hand; names, shapes, dtypes only
        h.update(b"meta")
        return
    h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())


def tensor_digest(t, n: int = 16) -> str:
    """Short sha256 of a tensor's dtype, shape and bytes."""
    h = hashlib.sha256()
    _hash_tensor(h, "", t)
    return h.hexdigest()[:n]


def model_digest(model, n: int = 16) -> str:
    """Short sha256 of a model's weights: every state_dict tensor (name, shape, dtype, bytes) and
    its class and config (class and values, private and version keys left out). Accepts a
    `hooks.HookedModel` and the TransformerLens / nnsight wrappers hooks accepts."""
    from hooks.adapters.interop import kind_of, unwrap
    from hooks.core import HookedModel
    if isinstance(model, HookedModel):
        model = model.model
    if kind_of(model) is not None:
        try:
            model = unwrap(model)
        except TypeError as e:
            raise InterpError(str(e)) from None
    h = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    cfg = getattr(model, "config", None)
    if cfg is not None:
        vals = cfg.to_dict() if hasattr(cfg, "to_dict") else vars(cfg) if hasattr(cfg, "__dict__") else {}
        vals = {k: v for k, v in vals.items() if not k.startswith("_") and k != "transformers_version"}
        h.update(f"{type(cfg).__qualname__}|{json.dumps(vals, sort_keys=True, default=str)}".encode())
    for name, t in sorted(model.state_dict().items()):
        _hash_tensor(h, name, t)
    return h.hexdigest()[:n]


def read_spec(path) -> dict | None:
    """The spec.json of a result folder ({"kind", "format", "spec"}), or None if it has none."""
    f = Path(path) / SPEC_FILE
    return read_json(f) if f.is_file() else None


# --- the store ---------------------------------------------------------------------------------------
def _unit_name(key: str) -> str:
    """A readable file-name stem for ``key`` (unsafe characters %-escaped; long keys cut and
    completed by a hash after '~')."""
    if not isinstance(key, str) or not key:
        raise InterpError(f"a unit key must be a non-empty string, not {key!r}")
    name = quote(key, safe=_SAFE).replace("~", "%7E")
    if name.startswith("."):
        name = "%2E" + name[1:]
    if len(name) > _MAX_NAME:
        name = f"{name[:60]}~{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    return name


def _key_in_file(path: Path) -> str:
    if path.suffix == ".json":
        return read_json(path)["key"]
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            return f.metadata()[KEY_META]
    import pyarrow.parquet as pq
    return pq.read_schema(path).metadata[KEY_META.encode()].decode()


PART = ".part"   # the mark of a distributed run's part folder (`part_folder`)


def part_folder(parent, rank: int) -> Path:
    """``parent/rank<rank>/``, made and marked as a part of the distributed run in ``parent`` (`PART`)."""
    p = Path(parent) / f"rank{int(rank)}"
    p.mkdir(parents=True, exist_ok=True)
    if not (p / PART).is_file():
        atomic_write_text(p / PART, f"part {int(rank)} of the distributed run in {Path(parent).name}\n")
    return p


def matching(folder: Path, pattern: str) -> list:
    """``folder``'s entries that match the glob ``pattern``, sorted. A pattern ending in '/' matches only the part
    folders of a distributed run (`part_folder`: marked `PART`), so that a user's 'rank2023/', 'rank1_notes.txt' or
    a result of their own nested there is never taken for one of its parts (nor removed by --overwrite)."""
    if pattern.endswith("/"):
        return [p for p in sorted(Path(folder).glob(pattern[:-1])) if (p / PART).is_file()]
    return sorted(Path(folder).glob(pattern))


class Store:
    """A crash-safe, resumable result folder of one ``kind`` ('capture', 'patch', ...), made by
    ``spec`` (a JSON-able dict of everything that determines its contents). Use as a context
    manager (or `open` / `close`): opening creates the folder, takes the writer lock, removes
    leftover temporary files and writes ``spec.json`` or checks it against ``spec``.

    ``owns``: glob patterns of the files and folders the store's user writes beside ``units/``
    (e.g. 'manifest.json', 'rank[0-9]*/': a pattern ending in '/' matches only a distributed run's parts, see
    `matching`); ``overwrite=True`` removes them with spec.json and units/ (never other files), and a folder
    holding them without a spec.json is an old-format result, refused with how to re-run."""

    def __init__(self, path, kind: str, spec: dict, overwrite: bool = False, owns=()):
        self.path, self.kind, self.spec = Path(path), kind, normalize(spec)
        self.overwrite, self.owns = overwrite, tuple(owns)
        self.units = self.path / UNITS
        self._lock = None

    def __enter__(self) -> "Store":
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def open(self) -> "Store":
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = Lock(self.path)
        self._lock.acquire()
        try:
            for f in [f for d in (self.path, self.units) if d.is_dir() for f in d.iterdir() if is_temp(f)]:
                # left by a killed writer (this one holds the lock); a lock's temp file belongs to
                # another opener until its pid is gone
                if not f.name.startswith(LOCK) or not alive(int(f.name.rpartition(".tmp-")[2])):
                    f.unlink(missing_ok=True)
            if self.overwrite:
                self._check_replaceable()
                self._clear()
            self._check_spec()
            self.units.mkdir(exist_ok=True)
        except BaseException:
            self.close()
            raise
        return self

    def close(self):
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _owned(self) -> list:
        found = [self.path / SPEC_FILE, self.units] + [p for g in self.owns for p in matching(self.path, g)]
        return [p for p in dict.fromkeys(found) if p.exists()]

    def _clear(self):
        for p in self._owned():
            remove(p)

    def _check_replaceable(self):
        """Before ``overwrite`` clears the folder: its spec.json (if any) must be a result spec of this kind. A
        result of another command, or a spec.json that is not a result spec (someone else's), is never replaced."""
        f = self.path / SPEC_FILE
        if not f.exists():
            return
        try:
            head = read_json(f)
        except InterpError:
            head = None
        if not isinstance(head, dict) or not isinstance(head.get("spec"), dict):
            raise InterpError(f"{f} is not a result spec, so --overwrite (overwrite=True) does not replace it; delete "
                              "it or use a new --out")
        if head.get("kind") != self.kind:
            raise InterpError(f"{self.path} holds a {head.get('kind')} result, not a {self.kind}, so --overwrite "
                              "(overwrite=True) does not replace it; use a new --out")

    def _check_spec(self):
        head = read_spec(self.path)
        if head is None:
            if (self.path / "config.json").is_file():
                raise InterpError(f"{self.path} holds a model (config.json), not a {self.kind} result; valid: a new "
                                  "or empty folder, or another --out")
            if self._holds_results():
                old = [p.name for p in self._owned()]
                raise InterpError(f"{self.path} holds a {self.kind} result without a spec.json ({', '.join(old[:3])}): "
                                  "written by an older version or damaged; re-run with --overwrite "
                                  "(overwrite=True) to replace it, or use a new --out")
            atomic_write_json(self.path / SPEC_FILE, {"kind": self.kind, "format": FORMAT, "spec": self.spec})
            return
        if not isinstance(head, dict) or not isinstance(head.get("spec"), dict):
            raise InterpError(f"{self.path / SPEC_FILE} is not a result spec; delete it or use a new --out")
        if head.get("kind") != self.kind:
            raise InterpError(f"{self.path} holds a {head.get('kind')} result, not a {self.kind}; use a new --out")
        if head.get("format") != FORMAT:
            raise InterpError(f"{self.path} was written in result format {head.get('format')}; this version writes "
                              f"format {FORMAT}: re-run with --overwrite (overwrite=True) or use a new --out")
        diff = spec_diff(head["spec"], self.spec)
        if diff and not self._holds_results():
            # nothing was written under the old spec (e.g. a run that failed at once): nothing to mix
            atomic_write_json(self.path / SPEC_FILE, {"kind": self.kind, "format": FORMAT, "spec": self.spec})
        elif diff:
            raise InterpError(f"{self.path} holds a {self.kind} made with other settings: {diff_summary(diff)}. "
                              "Resume with the same settings, or use --overwrite (overwrite=True: replaces it) "
                              "or a new --out")

    def _holds_results(self) -> bool:
        """Whether anything besides spec.json was written: a unit or a file of ``owns``."""
        units = self.units.iterdir() if self.units.is_dir() else ()
        return any(f.suffix in EXTS and not is_temp(f) for f in units) or \
            any(matching(self.path, g) for g in self.owns)

    # units
    def unit_path(self, key: str) -> Path | None:
        """The file holding unit ``key``, or None."""
        name = _unit_name(key)
        for ext in EXTS:
            p = self.units / (name + ext)
            if p.is_file():
                return p
        return None

    def has(self, key: str) -> bool:
        return self.unit_path(key) is not None

    def put(self, key: str, payload) -> Path:
        """Write unit ``key`` atomically (replacing an earlier one): a DataFrame as parquet, a
        non-empty dict of tensors as safetensors, any other JSON-able dict as JSON. Returns its path."""
        if self._lock is None:
            raise InterpError(f"store {self.path} is not open for writing (use it as a context manager)")
        torch = sys.modules.get("torch")  # (no tensors unless torch was imported)
        stem = self.units / _unit_name(key)
        if isinstance(payload, dict) and payload and torch and all(isinstance(v, torch.Tensor) for v in payload.values()):
            path = save_safetensors(stem.with_name(stem.name + ".safetensors"), payload, {KEY_META: key})
        elif isinstance(payload, dict):
            path = atomic_write_json(stem.with_name(stem.name + ".json"), {"key": key, "value": normalize(payload)})
        elif type(payload).__name__ == "DataFrame":
            path = save_parquet(stem.with_name(stem.name + ".parquet"), payload, {KEY_META: key})
        else:
            raise InterpError(f"a unit is a DataFrame, a dict of tensors or a JSON-able dict, not {type(payload).__name__}")
        for ext in EXTS:
            if stem.name + ext != path.name:
                stem.with_name(stem.name + ext).unlink(missing_ok=True)
        return path

    def get(self, key: str):
        """Unit ``key`` as it was put (KeyError if absent; InterpError naming a damaged file)."""
        p = self.unit_path(key)
        if p is None:
            raise KeyError(key)
        return load_unit(p)

    def keys(self) -> list:
        """The keys of the units present, sorted by file name."""
        out = []
        for f in sorted(self.units.iterdir()) if self.units.is_dir() else ():
            if is_temp(f) or f.suffix not in EXTS:
                continue
            stem = f.name[:-len(f.suffix)]
            if "~" not in stem:
                out.append(unquote(stem))
                continue
            try:
                out.append(_key_in_file(f))
            except Exception:
                raise damaged(f) from None
        return out
