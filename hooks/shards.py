"""The on-disk layout of a saved cache, shared by `hooks.Cache.save` / `Cache.load` and ``interp capture``:
``manifest.json`` (names, positions, meta, and per shard its file, rows, shapes and dtypes: `shard_entry`) and
``units/shard-*.safetensors`` written batch by batch (`ShardWriter`), read memory-mapped (`ShardedView`); and the
checks and writes `Cache.save` / `Cache.load` use: a folder is written whole into a temporary sibling, then renamed
into place (`save_target`, `write_synced`, `swap_in`); a missing folder, a damaged manifest or a name the folder
lacks raise a one-line HookError (`read_manifest`, `check_names`, `damaged`)."""
from __future__ import annotations

import difflib
import fnmatch
import json
import math
import os
import shutil
import struct
from pathlib import Path

import torch
from safetensors import safe_open

from hooks import names as N

_ST = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64", torch.int64: "I64",
       torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


class ShardWriter:
    """A safetensors file written batch by batch into open file ``fh``: the header (shapes ``[rows, ...]``
    from ``first`` {name: [b, ...]}; rows default b), then each `write` puts a batch's rows at their offsets."""

    def __init__(self, fh, first: dict, rows: int | None = None, metadata: dict | None = None):
        header, off, self.slots = {}, 0, {}
        for k in sorted(first):
            t = first[k]
            shape = [int(t.shape[0] if rows is None else rows), *t.shape[1:]]
            nbytes = math.prod(shape) * t.element_size()
            header[k] = {"dtype": _ST[t.dtype], "shape": shape, "data_offsets": [off, off + nbytes]}
            self.slots[k] = (off, nbytes // max(1, shape[0]), t.dtype, shape)
            off += nbytes
        meta = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}} if metadata else {}
        h = json.dumps({**header, **meta}, separators=(",", ":")).encode()
        h += b" " * (-len(h) % 8)
        fh.write(struct.pack("<Q", len(h)) + h)
        self.fh, self.base, self.row = fh, 8 + len(h), 0
        fh.truncate(self.base + off)

    def write(self, batch: dict):
        n = 0  # (a file of no tensors)
        for k, (off, row_bytes, dtype, shape) in self.slots.items():
            t = batch[k].detach().cpu().contiguous()
            n = t.shape[0]
            if t.dtype != dtype or list(t.shape[1:]) != shape[1:] or self.row + n > shape[0]:
                raise N.HookError(f"'{k}': {list(t.shape)} {t.dtype} does not fit rows {self.row}.. of {shape} {dtype}")
            self.fh.seek(self.base + off + self.row * row_bytes)
            self.fh.write(t.reshape(-1).view(torch.uint8).numpy())
        self.row += n


def shard_entry(file, root, start, stop, tensors: dict) -> dict:
    """The manifest's entry for shard ``file`` (named relative to ``root``) holding rows start..stop."""
    return {"file": Path(file).relative_to(root).as_posix(), "start": start, "stop": stop,
            "shapes": {k: [stop - start, *t.shape[1:]] if t.dim() else [] for k, t in sorted(tensors.items())},
            "dtypes": {k: str(t.dtype).replace("torch.", "") for k, t in sorted(tensors.items())}}


# --- `Cache.save` / `Cache.load`: checks, and a folder written whole then renamed into place -----------------------
_OWNED = ("manifest.json", "spec.json", "units", "activations.safetensors", "shard-*.safetensors", "rank[0-9]*",
          "*.tmp-*")  # what a saved cache or a capture holds (older layouts, distributed parts, leftovers)


def _few(items, k: int = 6) -> str:
    return ", ".join(items[:k]) + (f" (and {len(items) - k} more)" if len(items) > k else "") or "nothing"


def damaged(path, e) -> N.HookError:
    return N.HookError(f"{path} is damaged ({(str(e).splitlines() or [type(e).__name__])[0][:200]}); delete it and "
                       "run the same command again to recompute it")


def read_manifest(path: Path) -> dict:
    """``path/manifest.json``; a missing folder or manifest, or a damaged one, raises a one-line HookError."""
    if not (path / "manifest.json").is_file():
        what = "not found" if not path.exists() else "holds no manifest.json" if path.is_dir() else "is not a folder"
        raise N.HookError(f"{path} {what}; valid: a folder written by Cache.save or interp capture")
    try:
        m = json.loads((path / "manifest.json").read_text())
    except ValueError as e:  # (JSONDecodeError and UnicodeDecodeError are ValueErrors)
        raise damaged(path, f"manifest.json: {e}") from None
    if isinstance(m, dict) and isinstance(m.get("shards", []), list):
        return m
    raise damaged(path, "manifest.json is not a cache's manifest")


def check_extent(path: Path, m: dict, partial: bool):
    """Refuse shards that do not tile rows 0.. in order (damaged), and a folder whose shards hold fewer rows than
    its ``n_examples`` (an unfinished ``interp capture``; ``partial``: allowed, the rows held are read)."""
    sh, n = m["shards"], m.get("n_examples")
    try:
        stops = [(int(s["start"]), int(s["stop"])) for s in sh]
    except (KeyError, TypeError, ValueError) as e:
        raise damaged(path, f"manifest.json's shard entries lack {e}") from None
    if any(a != b for a, b in zip([0] + [b for _, b in stops], [a for a, _ in stops])):
        raise damaged(path, "manifest.json's shards do not hold rows 0.. in order")
    done = stops[-1][1] if stops else 0
    if isinstance(n, int) and done != n and not partial:
        raise N.HookError(f"{path} holds an unfinished capture ({done} of {n} examples); valid: run the same "
                          "interp capture command again to finish it, or Cache.load(..., partial=True) for those held")


def check_names(names, held: list, path):
    """Refuse ``names`` the folder does not hold, naming close matches and what it holds."""
    if unknown := [n for n in names or () if n not in held]:
        close = sorted({c for u in unknown for c in difflib.get_close_matches(str(u), held, n=3, cutoff=0.8)})
        hint = f" (close matches: {', '.join(close)})" if close else ""
        raise N.HookNameError(f"{', '.join(map(repr, unknown))} not saved in {path}{hint}; valid: {_few(held)}")


def save_target(path: Path, overwrite: bool) -> Path:
    """The folder `Cache.save` writes for ``path`` (symlinks resolved), or HookError saying why it may not."""
    dest = Path(os.path.realpath(path))
    held = sorted(p.name for p in dest.iterdir()) if dest.is_dir() else ["(a file)"] if dest.exists() else []
    other = [h for h in held if not any(fnmatch.fnmatch(h, g) for g in _OWNED)]
    why = ("it is a file" if dest.exists() and not dest.is_dir() else
           f"it is not empty (it holds {_few(held)})" if held and not overwrite else
           f"it holds {_few(held)} but no saved cache (a manifest.json of one)" if held and not _is_cache(dest) else
           f"a capture may be writing it (delete {dest / '.lock'} if none is)" if ".lock" in held else
           f"besides a saved cache it holds {_few(other)}, which overwrite=True never deletes" if other else None)
    if why:
        more = ", or overwrite=True to replace a cache saved there" if dest.is_dir() and not overwrite else ""
        raise N.HookError(f"cannot save to {path}: {why}; valid: a new or empty folder{more}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest


def _is_cache(folder: Path) -> bool:
    """Whether ``folder/manifest.json`` is a readable manifest of a saved cache or capture (any layout)."""
    try:
        m = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):  # (missing, damaged; a UnicodeDecodeError is a ValueError)
        return False
    return isinstance(m, dict) and ("shards" in m or "tensors" in m)


def write_synced(f: Path, data) -> Path:
    """``data`` (bytes, or {name: tensor [rows, ...]} as safetensors: `ShardWriter`) at ``f``, flushed to disk."""
    with open(f, "wb") as fh:
        ShardWriter(fh, data).write(data) if isinstance(data, dict) else fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return f


def swap_in(tmp: Path, dest: Path, overwrite: bool):
    """Rename the finished folder ``tmp`` to ``dest``; a saved cache there (``overwrite``) is moved aside first
    and removed only after. An empty ``dest`` folder is replaced by the rename, a non-empty one is refused."""
    old = dest.with_name(tmp.name.replace(".tmp-", ".old-"))
    if not (overwrite and dest.is_dir() and any(dest.iterdir())):
        return os.replace(tmp, dest)
    os.rename(dest, old)
    try:
        os.replace(tmp, dest)
    except OSError:
        os.rename(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


class ShardedView:
    """One name across a saved folder's shards, memory-mapped (safetensors' ``safe_open``): ``shape``,
    ``dtype``; ``view[i]`` / ``view[a:b]`` (rows) reads only the shards holding those rows, ``load()``
    all of them into one tensor. Shard shapes are checked against the manifest; a damaged shard is named."""

    def __init__(self, root, shards, name):
        self.root, self.shards, self.name = Path(root), shards, name
        self.rows = [(s["start"], s["stop"]) for s in shards]
        self.dtype, shape = self._read(0)
        self.shape = torch.Size([self.rows[-1][1], *shape[1:]])

    def _read(self, i, a=None, b=None, device="cpu"):
        """Rows a..b of shard i (a None: its (dtype, shape)), its shape checked against the manifest."""
        f, want = self.root / self.shards[i]["file"], self.shards[i].get("shapes", {}).get(self.name)
        try:
            with safe_open(str(f), "pt", device=str(device)) as h:
                s = h.get_slice(self.name)
                dtype, shape = {v: k for k, v in _ST.items()}[s.get_dtype()], list(s.get_shape())
                out = None if a is None or shape != (want or shape) else s[a:b]
        except Exception as e:  # a file cut short, overwritten or missing
            raise damaged(f, e) from None
        if shape != (want or shape):
            raise N.HookError(f"{f}: '{self.name}' has shape {shape}, the manifest lists {want}; the file is not this "
                              "folder's: capture again (--overwrite) or into a new --out")
        return (dtype, shape) if a is None else out

    def load(self, device="cpu") -> torch.Tensor:
        out = torch.empty(self.shape, dtype=self.dtype, device=device)
        for i, (a, b) in enumerate(self.rows):
            out[a:b] = self._read(i, 0, b - a, device)
        return out

    def __getitem__(self, idx):
        one = not isinstance(idx, slice)
        lo, hi, step = (slice(idx, idx + 1 if idx != -1 else None) if one else idx).indices(self.shape[0])
        parts = [self._read(i, max(lo, a) - a, min(hi, b) - a) for i, (a, b) in enumerate(self.rows) if lo < b > a < hi]
        got = torch.cat(parts)[::step] if parts else torch.empty(0, *self.shape[1:], dtype=self.dtype)
        return got[0] if one else got
