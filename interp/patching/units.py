"""Where a sweep keeps its finished units: an `interp.store.Store` of kind 'patch' (one file per
unit and per pair chunk's baselines, written atomically, spec-checked, locked) or, without an
output folder, memory; the parts a distributed sweep's processes wrote (``rank<r>/``, each a
store with the same spec) and merging them. All on-disk writing of units lives here."""
from __future__ import annotations

from pathlib import Path

from interp import InterpError

KIND = "patch"
# what a sweep folder holds beside spec.json and units/: the layout before interp.store (its
# presence without a spec.json marks an old folder) and the parts of a distributed sweep
OWNS = ("units.csv", "baselines.csv", "rank[0-9]*/")


class MemoryUnits:
    """The units of a sweep without an output folder (the `interp.store.Store` unit methods)."""
    path = None

    def __init__(self):
        self._units = {}

    def close(self):
        pass

    def has(self, key: str) -> bool:
        return key in self._units

    def put(self, key: str, payload):
        self._units[key] = payload

    def get(self, key: str):
        return self._units[key]

    def keys(self) -> list:
        return sorted(self._units)


def open_units(out, spec: dict, overwrite: bool = False):
    """The store of a sweep writing to ``out`` (None: memory), opened: locked, its spec checked
    (or written) and, from an interrupted distributed run, the units of its ``rank<r>/`` parts
    merged in. Close it when done."""
    if out is None:
        return MemoryUnits()
    from interp.store import Store
    store = Store(out, KIND, spec, overwrite=overwrite, owns=OWNS).open()
    try:
        parts = [d for d in rank_dirs(store.path) if (d / "spec.json").is_file()]  # (a part killed before its spec)
        if parts:
            merge_units(parts, out=store)
    except BaseException:
        store.close()
        raise
    return store


def run_name(model: str, task: str, layers=None) -> str:
    """Stem of a command's output files: '<model dir name>_<task>[_L<layers>]'."""
    return f"{Path(model).name}_{task}" + (f"_L{'-'.join(map(str, layers))}" if layers else "")


def units_dir(out, name: str) -> Path:
    """The sweep folder (store) of run ``name`` under the output folder ``out``: ``<out>/.units/<name>``.
    One per run name, so a re-run resumes it and a run with other settings is refused (naming the
    settings) until ``--overwrite`` or another ``--out``."""
    return Path(out) / ".units" / name


def rank_dirs(out) -> list:
    """The ``rank<r>/`` parts of a distributed sweep in ``out``, by rank."""
    out = Path(out)
    return sorted((d for d in out.glob("rank*") if d.is_dir() and d.name[4:].isdigit()), key=lambda d: int(d.name[4:]))


def _part(path):
    """A sweep folder to read units from (not locked: it is only read), and its spec."""
    from interp.store import Store, read_spec
    head = read_spec(path)
    if head is None or head.get("kind") != KIND:
        return None, None
    return Store(path, KIND, head["spec"]), head["spec"]


def merge_units(dirs, out=None) -> dict:
    """The units of the sweep folders ``dirs`` (several processes' shares of one sweep): {key: unit},
    a key found in several taken from the first. Their specs (and ``out``'s, an open
    `interp.store.Store`) must agree: folders made with other settings are named with the fields
    that differ. With ``out``, the units it lacks are written there (a sweep resuming from ``out``
    then finds them done)."""
    from interp.store import spec_diff
    ref = (str(out.path), out.spec) if out is not None else None
    found, units = 0, {}
    for d in map(Path, dirs):
        store, spec = _part(d)
        if store is None:
            continue
        found += 1
        if ref is None:
            ref = (str(d), spec)
        diff = spec_diff(ref[1], spec)
        if diff:
            raise InterpError(f"{d} holds a sweep with different settings than {ref[0]}: {'; '.join(diff[:6])}; "
                              "re-run with --overwrite (overwrite=True) or use a new --out")
        for key in store.keys():
            if key not in units and (out is None or not out.has(key)):
                units[key] = store.get(key)
    if not found:
        raise InterpError(f"nothing to merge in {', '.join(map(str, dirs))}: no sweep folder (spec.json) there")
    if out is not None:
        for key, unit in units.items():
            out.put(key, unit)
    return units


def read_csv_exact(path):
    """pd.read_csv with floats read back bit for bit (pandas >= 3 does by default)."""
    import pandas as pd
    if int(pd.__version__.split(".")[0]) < 3:
        return pd.read_csv(path, float_precision="round_trip")
    return pd.read_csv(path)
