"""Probe result folders on disk (`interp.store.Store`, kind 'probe'): the spec of a run, one unit
file per finished (model, load, seed) probe unit and per causal-check unit, and the run's outputs
(probes.csv / .parquet and the figures), every file written atomically. An interrupted run resumes
from its units; other settings, a second writer or an old-format folder are refused."""
from __future__ import annotations

from pathlib import Path

from interp import InterpError
from interp import tasks as T
from interp.kernels import kernel_spec
from interp.store import Store, model_digest

# what a probe folder holds beside spec.json and units/ (with the old layout's .units/): --overwrite
# removes these, and their presence without a spec.json marks an older or damaged folder
OWNS = ("probes.csv", "probes.parquet", "probes.png", "distance.png", "load.png", ".units")


def probe_spec(models: dict, task, target, sites, n, seeds, knob, loads, knobs, backend, C, split, controls,
               flag_at, causal, batch_size) -> dict:
    """Everything that determines a probe folder's contents (``causal``: a dict of its settings, or
    None)."""
    return {"models": {name: model_digest(m) for name, m in models.items()}, "task": task, "target": target,
            "knobs": T.spec_knobs(task, knobs), "sweep": None if knob is None else {knob: list(loads)}, "sites": list(sites),
            "n": int(n), "seeds": [int(s) for s in seeds], "C": float(C), "backend": backend,
            "split": {"train": split[0], "val": split[1], "test": split[2]}, "controls": list(controls),
            "flag_at": float(flag_at), "causal": causal, "batch_size": int(batch_size),
            **kernel_spec(training=causal is not None)}   # the causal check's interchange trains: its backward


def open_store(out, spec: dict, overwrite: bool = False) -> Store:
    """The probe folder ``out`` opened for writing (locked, spec checked; close it when done). A
    folder of the old layout (``.units/<digest>/`` parquet files) is refused with how to re-run."""
    out = Path(out)
    if (out / ".units").is_dir() and not overwrite:
        raise InterpError(f"{out} holds probe units in the old layout ({out / '.units'}/<digest>/), which this "
                          "version does not read; re-run with --overwrite (overwrite=True) to replace them, or use a "
                          "new --out")
    return Store(out, "probe", spec, overwrite=overwrite, owns=OWNS).open()


def unit_key(kind: str, name: str, load, seed: int) -> str:
    """'probe/model=<name>/load=<load>/seed=<seed>' ('causal/...' for a causal-check unit)."""
    return f"{kind}/model={name}/load={load}/seed={seed}"


class Units:
    """The finished units of one run: in ``store`` (an open `Store`), or in memory when it is None.
    `get` returns a unit as it reads back from its file, so a resumed run and an uninterrupted one
    see the same frames."""

    def __init__(self, store: Store | None = None):
        self.store, self.mem = store, {}

    def get(self, key):
        if self.store is None:
            return self.mem.get(key)
        return self.store.get(key) if self.store.has(key) else None

    def put(self, key, frame):
        if self.store is None:
            self.mem[key] = frame
            return frame
        self.store.put(key, frame.reset_index(drop=True))
        return self.store.get(key)
