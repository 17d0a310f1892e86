"""Cached results of experiment calls, the one place the framework writes result files under a runs
directory: `ResultLog` (CSVs of result rows, resumable) and `check_spec` (``spec.json``, the
configuration those results were made with), so a later call reuses them instead of recomputing.
(Checkpoints are the trainer's; `interp.tokenloss` and `interp.patching` keep their own unit files.)
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from interp import InterpError


class ResultLog:
    """A CSV of result rows, read back instead of recomputed by a later call.

    With ``key`` columns it grows as units finish: a rerun skips the units already there (``done``),
    ``add`` appends rows (with a header on the first write, so an interrupted call loses at most the
    unit it was in) and ``frame()`` reads everything back. Without a key, ``once(fn)`` is a whole
    table computed once: ``fn()`` saved on the first call, read back on later ones."""

    def __init__(self, path, key=()):
        self.path, self.key = Path(path), list(key)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._done = None

    def _keys(self) -> set:
        if self._done is None:
            self._done = set()
            if self.path.is_file() and self.path.stat().st_size:
                df = pd.read_csv(self.path, usecols=self.key, dtype=str, keep_default_na=False)
                self._done = set(map(tuple, df[self.key].itertuples(index=False)))
        return self._done

    def done(self, **key) -> bool:
        return tuple(str(key[k]) for k in self.key) in self._keys()

    def add(self, rows) -> None:
        df = pd.DataFrame(rows)
        if df.empty:
            return
        missing = [k for k in self.key if k not in df]
        if missing:
            raise ValueError(f"rows lack key column(s) {missing}")
        if self.path.is_file() and self.path.stat().st_size:
            cols = list(pd.read_csv(self.path, nrows=0).columns)
            if set(cols) != set(df.columns):
                raise InterpError(f"{self.path} has columns {cols}, new rows have {list(df.columns)}; "
                                  "delete it (or use another --runs) to start over")
            df[cols].to_csv(self.path, mode="a", header=False, index=False)
        else:
            df.to_csv(self.path, index=False)
        self._keys().update(map(tuple, df[self.key].astype(str).itertuples(index=False)))

    def replace(self, rows) -> None:
        """The table becomes ``rows`` (whatever it held before is dropped)."""
        self.path.unlink(missing_ok=True)
        self._done = None
        self.add(rows)

    def frame(self) -> pd.DataFrame:
        if not self.path.is_file() or not self.path.stat().st_size:
            return pd.DataFrame()
        try:
            return pd.read_csv(self.path, keep_default_na=False, na_values=[""])   # 'None' stays a string
        except pd.errors.EmptyDataError:
            return pd.DataFrame()

    def once(self, fn) -> pd.DataFrame:
        """The saved table, or ``fn()`` (a DataFrame) saved and returned if there is none yet."""
        df = self.frame()
        if not df.empty:
            return df
        df = fn()
        self.replace(df)
        return df


def check_spec(root, spec: dict) -> None:
    """``<root>/spec.json`` records the configuration that the checkpoints and cached results in
    ``root`` were made with (profile, steps, seed, corpus, ...); a later call with another
    configuration raises `InterpError` (use another ``--runs``) instead of silently reusing them (a
    finished 2000-step run is not a 4000-step one)."""
    f = Path(root) / "spec.json"
    spec = json.loads(json.dumps(spec))
    if not f.is_file():
        Path(root).mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(spec, indent=1))
        return
    old = json.loads(f.read_text())
    if old == spec:
        return
    diff = sorted(k for k in set(old) | set(spec) if old.get(k) != spec.get(k))
    msg = f"'{root}' holds runs made with another configuration (differs in: {', '.join(diff)})"
    if _steps(old) != _steps(spec) or old.get("profile") != spec.get("profile"):
        msg += (f": runs of profile {old.get('profile')} with {_steps(old)} steps, not {spec.get('profile')} with "
                f"{_steps(spec)}; delete it or give another --runs (or leave it out: the default directory is per "
                "profile and --steps)")
    else:
        msg += "; delete it or give another --runs"
    raise InterpError(msg)


def _steps(spec: dict):
    return spec["steps"] if "steps" in spec else (spec.get("P") or {}).get("steps")
