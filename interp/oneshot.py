"""Files a command writes in one go outside a result folder (`interp eval --out x.csv`, a pattern drawing): what
made them, checked before they are replaced.

`one_shot(spec_path, outputs, spec)` holds a lock beside them (``.<spec file name>.lock``: a second writer is
refused), compares ``spec`` with the one ``spec_path`` recorded (other settings are refused, naming the fields,
unless ``overwrite``: then the old files go first), writes ``spec_path`` ({"command", "spec"}) before the outputs
and lets the caller write them (atomically, `interp.store`); a call that fails before writing any leaves no spec. A
kill leaves either the old files or files made under the recorded spec, never outputs of other settings under it;
output files found without a spec are refused as of unknown origin. `spec_of` builds the spec: each model's weights
digest, the settings and the non-default kernels.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import sys
from pathlib import Path

from interp import InterpError
from interp.lock import Lock


def spec_of(models: dict, **settings) -> dict:
    """{"models": {name: weights digest}, **settings, kernels (where not the defaults)}, as it reads back from JSON.
    ``models``: {name: a model, or its `interp.store.model_digest` where the caller needs it too}."""
    from interp.kernels import kernel_spec
    from interp.store import model_digest, normalize
    digests = {name: m if isinstance(m, str) else model_digest(m) for name, m in models.items()}
    return normalize({"models": digests, **settings, **kernel_spec()})


RECORD_KEYS = {"command", "spec", "outputs"}     # what `one_shot` writes ("outputs" since 2026-12-07)


def _record(spec_path: Path):
    """The record `one_shot` wrote at ``spec_path``, or None where there is none; another file there (a capture's or
    a model's JSON, a user's file) is refused, even with --overwrite: it is not this command's to replace."""
    from interp.store import read_json
    if not spec_path.exists():
        return None
    try:
        old = read_json(spec_path)
    except InterpError:
        old = None
    if not (isinstance(old, dict) and isinstance(old.get("spec"), dict) and set(old) <= RECORD_KEYS):
        raise InterpError(f"{spec_path} is not a record of this kind of output (another command's or a user's "
                          "file); valid: another --out")
    return old


def _check(spec_path: Path, outputs: list, spec: dict, overwrite: bool) -> None:
    from interp.store import diff_summary, spec_diff
    old = _record(spec_path)
    found = [p for p in outputs if p.exists()]
    # the files the recorded call wrote (records written before 2026-12-07 do not list them)
    theirs = [spec_path.parent / n for n in (old or {}).get("outputs", []) if (spec_path.parent / n).exists()]
    if overwrite:
        for p in dict.fromkeys(found + theirs + [spec_path]):
            p.unlink(missing_ok=True)
        return
    if old is not None:
        diff = spec_diff(old["spec"], spec)
        if diff and (found or theirs):
            made = (found or theirs)[0]
            raise InterpError(f"{made} was made with other settings ({spec_path.name}: {diff_summary(diff)}); "
                              "valid: the same settings, --overwrite to replace it, or another --out")
    elif found:
        raise InterpError(f"{found[0]} exists without {spec_path.name}, the record of what made it; valid: "
                          "--overwrite to replace it, or another --out")


@contextlib.contextmanager
def one_shot(spec_path, outputs, spec: dict, overwrite: bool = False):
    """Hold the lock of ``spec_path``'s files, check ``spec`` against the recorded one (see the module), write it,
    then let the caller write ``outputs`` (paths)."""
    from interp.store import atomic_write_json, normalize
    spec_path = Path(spec_path)
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    outputs = [Path(p) for p in outputs]
    lock = Lock(spec_path.parent, f".{spec_path.name}.lock", what=outputs[0] if outputs else spec_path)
    lock.acquire()
    try:
        _check(spec_path, outputs, normalize(spec), overwrite)
        first = not spec_path.exists()
        atomic_write_json(spec_path, {"command": "interp " + shlex.join(sys.argv[1:]), "spec": normalize(spec),
                                      "outputs": [os.path.relpath(p, spec_path.parent) for p in outputs]})
        try:
            yield spec_path
        except BaseException:   # failed before writing anything: leave no spec of nothing behind
            if first and not any(p.exists() for p in outputs):
                spec_path.unlink(missing_ok=True)
            raise
    finally:
        lock.release()
