"""Resumable unit storage of a sweep: per-unit sums and per-chunk baselines (in memory or appended
under ``out``), merging what several processes wrote, and the PatchResult built from them. All
on-disk writing of units lives here."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

import hooks
from interp import InterpError
from interp.patching.result import PatchResult, _assemble


class _UnitStore:
    """Per-unit sums; in memory, or appended to ``out/units.csv`` (+ baselines) for resuming."""

    def __init__(self, out, spec):
        self.rows, self.base, self.keys = [], [], set()
        self.skip = set()  # items another process of a distributed sweep runs
        self.out = None if out is None else Path(out)
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        sp = self.out / "spec.json"
        spec = json.loads(json.dumps(spec, default=str))
        if sp.exists():
            old = json.loads(sp.read_text())
            if old != spec:
                diff = [k for k in spec if old.get(k) != spec.get(k)]
                raise InterpError(f"{self.out} holds a sweep with different settings ({', '.join(diff)}); "
                                  "use another --out or delete it")
        else:
            sp.write_text(json.dumps(spec, indent=1))
        uf, bf = self.out / "units.csv", self.out / "baselines.csv"
        if uf.exists():
            df = pd.read_csv(uf)
            self.rows = df.to_dict("records")
            self.keys = set(zip(df.chunk, df.unit))
        if bf.exists():
            self.base = pd.read_csv(bf).to_dict("records")

    def done(self, c, u):
        return (c, u) in self.keys or (c, u) in self.skip

    def add_base(self, c, base):
        if any(b["chunk"] == c for b in self.base):
            return
        self.base.append(dict(chunk=c, **base))
        self._append("baselines.csv", [self.base[-1]])

    def add(self, c, u, rows):
        rows = [dict(chunk=c, unit=u, **r) for r in rows]
        self.rows += rows
        self.keys.add((c, u))
        self._append("units.csv", rows)

    def _append(self, fname, rows):
        if self.out is not None:
            f = self.out / fname
            pd.DataFrame(rows).to_csv(f, mode="a", index=False, header=not f.exists())

    def frame(self):
        return pd.DataFrame(self.rows)

    def baselines(self):
        b = pd.DataFrame(self.base).drop_duplicates("chunk")
        return b.drop(columns="chunk").sum().to_dict()


# --- merging the parts of a distributed sweep (interp.distributed) ------------------------------
def merge_units(dirs, out=None):
    """Merge the unit sums that several processes wrote (each ran a share of one sweep, see
    ``sweep(shard=)``; one directory each) into what a single-process sweep writes: a unit found
    in several directories is taken from the first, rows are ordered by (chunk, unit) as one
    process runs them, floats are read back exactly. Returns (units, baselines) DataFrames; with
    ``out`` also writes ``out/units.csv``, ``baselines.csv`` and ``spec.json`` (a single-process
    ``sweep(out=out)`` then finds every unit done)."""
    specs, units, bases, seen = {}, [], [], set()
    for d in map(Path, dirs):
        if (d / "spec.json").is_file():
            specs[str(d)] = json.loads((d / "spec.json").read_text())
        if (d / "units.csv").is_file():
            df = read_csv_exact(d / "units.csv")
            key = list(zip(df.chunk, df.unit))
            df = df[[k not in seen for k in key]]
            seen |= set(key)
            units.append(df)
        if (d / "baselines.csv").is_file():
            bases.append(read_csv_exact(d / "baselines.csv"))
    if len({json.dumps(v, sort_keys=True) for v in specs.values()}) > 1:
        raise InterpError(f"the parts to merge hold sweeps with different settings: {', '.join(specs)}")
    if not units or not bases:
        raise InterpError(f"nothing to merge in {', '.join(map(str, dirs))}")
    u = pd.concat(units, ignore_index=True).sort_values(["chunk", "unit"], kind="stable").reset_index(drop=True)
    b = pd.concat(bases, ignore_index=True).drop_duplicates("chunk").sort_values("chunk", kind="stable")
    b = b.reset_index(drop=True)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        if specs:
            (out / "spec.json").write_text(json.dumps(next(iter(specs.values())), indent=1))
        for name, df in (("units.csv", u), ("baselines.csv", b)):
            df.to_csv(out / (name + ".tmp"), index=False)
            (out / (name + ".tmp")).replace(out / name)
    return u, b


def read_csv_exact(path) -> pd.DataFrame:
    """pd.read_csv with floats read back bit for bit (pandas >= 3 does by default)."""
    if int(pd.__version__.split(".")[0]) < 3:
        return pd.read_csv(path, float_precision="round_trip")
    return pd.read_csv(path)


def assemble_units(units, baselines, model, pairs, model_name="model", direction="denoise") -> PatchResult:
    """The PatchResult of a sweep from its unit sums and per-chunk baselines (`merge_units`)."""
    hm = model if isinstance(model, hooks.HookedModel) else hooks.wrap(model)
    base = baselines.drop_duplicates("chunk").drop(columns="chunk").sum().to_dict()
    return _assemble(units, base, hm, pairs, model_name, direction, None)
