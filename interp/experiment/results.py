"""Crash-safe result files of experiment calls, the one place the framework writes cached results under
a runs directory: `ResultLog` (tables of result rows, resumable unit by unit), `check_spec`
(``spec.json``, the configuration those results were made with) and `WriterLocks` (one writer at a
time per runs / figures directory). Every file is written with `interp.store`'s atomic writes (a
temporary name in the same folder, fsynced, renamed): a call killed at any point leaves each file
complete or absent, and the same command again continues.
(Checkpoints are the trainer's; `interp.tokenloss` and `interp.patching` keep their own unit files.)
"""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pandas as pd

from interp import InterpError
from interp.kernels import kernel_spec
from interp.store import (FORMAT, SPEC_FILE, Lock, damaged, atomic_write_json, atomic_write_text, is_temp, normalize,
                          read_spec, save_csv, spec_diff)

UNITS_SUFFIX = ".units"     # a keyed log's folder of units: <name>.units/000000.csv, 000001.csv, ...


def remove_temps(folder, prefix: str = "") -> None:
    """Delete the temporary files (and folders) of atomic writes (``<name>.tmp-<pid>``, names starting
    with ``prefix``) that a killed call left in ``folder``; this process's own are kept."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for f in folder.iterdir():
        if is_temp(f) and f.name.startswith(prefix) and not f.name.startswith(".lock") \
                and f.name.rpartition(".tmp-")[2] != str(os.getpid()):
            shutil.rmtree(f, ignore_errors=True) if f.is_dir() and not f.is_symlink() else f.unlink(missing_ok=True)


class ResultLog:
    """A table of result rows, read back instead of recomputed by a later call.

    With ``key`` columns it grows unit by unit: ``add(rows)`` writes one unit, the file
    ``<name>.units/<n>.csv`` (atomically: complete or absent), a rerun skips the units already there
    (``done``) and ``frame()`` reads all of them back in the order they were added. Without a key,
    ``once(fn)`` is a whole table computed once: ``fn()`` saved (atomically, at ``path``) on the first
    call and read back on later ones.

    A keyed log's CSV at ``path`` itself, written by versions before the units (rows appended in
    place), is read as its first unit; one whose last row was cut short by a kill is refused with how
    to recompute it."""

    def __init__(self, path, key=()):
        self.path, self.key = Path(path), list(key)
        self.units = self.path.with_suffix(UNITS_SUFFIX) if self.key else None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_temps(self.path.parent, self.path.name + ".tmp-")
        if self.units is not None:
            remove_temps(self.path.parent, self.units.name + ".tmp-")    # a replace() killed half way
            remove_temps(self.units)
        self._done = None

    # --- the files ----------------------------------------------------------------------------
    def _unit_files(self) -> list[Path]:
        if self.units is None or not self.units.is_dir():
            return []
        return sorted(f for f in self.units.iterdir() if f.suffix == ".csv" and f.stem.isdigit() and not is_temp(f))

    def _parts(self) -> list[Path]:
        """The files holding the rows, in the order they were written (an old-format CSV first)."""
        return ([self.path] if self.path.is_file() else []) + self._unit_files()

    def _texts(self) -> list[tuple[Path, str]]:
        out = []
        for f in self._parts():
            try:
                text = f.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise damaged(f, e) from None
            if f == self.path and self.units is not None and text and not text.endswith("\n"):
                raise InterpError(f"{f} ends in a row cut short (an older version was killed while appending to it); "
                                  "delete it and run the same command again to recompute it")
            if text.strip():
                out.append((f, text))
        return out

    def _text(self) -> str:
        """All rows as one CSV text: the header once, then every part's rows in order."""
        texts = self._texts()
        if not texts:
            return ""
        header = texts[0][1].split("\n", 1)[0]
        body = []
        for f, text in texts:
            head, _, rows = text.partition("\n")
            if head != header:
                raise InterpError(f"{f} has columns {head!r}, the log's other files {header!r}; delete "
                                  f"{self.units or self.path} (or use another --runs) to start over")
            body.append(rows)
        return header + "\n" + "".join(body)

    def _read(self, text: str, **kw) -> pd.DataFrame:
        try:   # 'None' stays a string
            return pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=[""], **kw)
        except pd.errors.EmptyDataError:
            return pd.DataFrame()
        except (pd.errors.ParserError, ValueError) as e:
            raise damaged(self.units or self.path, e) from None

    # --- reading --------------------------------------------------------------------------------
    def _keys(self) -> set:
        if self._done is None:
            text = self._text()
            self._done = set()
            if text:
                try:
                    df = pd.read_csv(io.StringIO(text), usecols=self.key, dtype=str, keep_default_na=False)
                except (pd.errors.ParserError, ValueError) as e:
                    raise damaged(self.units or self.path, e) from None
                self._done = set(map(tuple, df[self.key].itertuples(index=False)))
        return self._done

    def done(self, **key) -> bool:
        return tuple(str(key[k]) for k in self.key) in self._keys()

    def frame(self) -> pd.DataFrame:
        text = self._text()
        return self._read(text) if text else pd.DataFrame()

    # --- writing --------------------------------------------------------------------------------
    def _columns(self) -> list[str] | None:
        """The columns of the rows already there (the first file's header), or None."""
        for f in self._parts():
            with open(f, encoding="utf-8") as fh:
                header = fh.readline()
            if header.strip():
                return list(self._read(header, nrows=0).columns)
        return None

    def add(self, rows) -> None:
        """Append ``rows`` (a DataFrame or a list of dicts): one new unit file of a keyed log; a log
        without a key is rewritten whole (atomically) with the rows appended."""
        df = pd.DataFrame(rows)
        if df.empty:
            return
        missing = [k for k in self.key if k not in df]
        if missing:
            raise ValueError(f"rows lack key column(s) {missing}")
        cols = self._columns()
        if cols is not None:
            if set(cols) != set(df.columns):
                raise InterpError(f"{self.units or self.path} has columns {cols}, new rows have {list(df.columns)}; "
                                  "delete it (or use another --runs) to start over")
            df = df[cols]
        if self.units is None:
            old = self.path.read_text(encoding="utf-8") if self.path.is_file() else ""
            atomic_write_text(self.path, old + df.to_csv(index=False, header=not old.strip()))
        else:
            self.units.mkdir(exist_ok=True)
            n = max((int(f.stem) for f in self._unit_files()), default=-1) + 1
            save_csv(self.units / f"{n:06d}.csv", df, index=False)
        self._keys().update(map(tuple, df[self.key].astype(str).itertuples(index=False)))

    def replace(self, rows) -> None:
        """The table becomes ``rows`` (whatever it held before is dropped)."""
        df = pd.DataFrame(rows)
        if self.units is None:
            if df.empty:
                self.path.unlink(missing_ok=True)
            else:
                save_csv(self.path, df, index=False)
            self._done = None
            return
        if self.units.is_dir():     # set aside in one rename: a kill leaves whole units or none
            aside = self.units.with_name(f"{self.units.name}.tmp-{os.getpid()}")
            os.replace(self.units, aside)
            shutil.rmtree(aside)
        self.path.unlink(missing_ok=True)
        self._done = None
        self.add(df)

    def once(self, fn) -> pd.DataFrame:
        """The saved table, or ``fn()`` (a DataFrame) saved and returned if there is none yet. The
        table is returned as read back from its file, so a first call and a later one that reuses
        it return the same frame."""
        df = self.frame()
        if not df.empty:
            return df
        df = fn()
        self.replace(df)
        return df if df.empty else self.frame()


# --- the runs directory's configuration ---------------------------------------------------------

def backend_spec(P: dict) -> dict:
    """The scan backend as a spec field: ``{"scan_backend": ...}`` when ``--scan-backend`` set one (`setup`
    puts it in the profile ``P``), else nothing, so that runs made before the flag existed keep their spec."""
    return {"scan_backend": P["scan_backend"]} if "scan_backend" in P else {}


def check_spec(root, spec: dict, kind: str = "experiment") -> None:
    """``<root>/spec.json`` records the configuration that the checkpoints and cached results in
    ``root`` were made with (profile, steps, seed, corpus, ...) and the experiment (``kind``) that made
    them, in `interp.store`'s layout (``{"kind", "format", "spec"}``, written atomically). A later call
    with another configuration raises `InterpError` naming the differing fields (use another
    ``--runs``) instead of silently reusing them (a finished 2000-step run is not a 4000-step one).
    A ``spec.json`` of an older version (the bare configuration) is taken over when it agrees."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    remove_temps(root, SPEC_FILE + ".tmp-")
    # the kernels that trained and ran the models, where not the defaults (interp.kernels)
    want = {"kind": kind, "format": FORMAT, "spec": normalize({**spec, **kernel_spec(training=True)})}
    head = read_spec(root)
    if head is None:
        atomic_write_json(root / SPEC_FILE, want)
        return
    if not isinstance(head, dict):
        raise InterpError(f"{root / SPEC_FILE} is not a runs configuration; delete it or give another --runs")
    ours = "format" in head and isinstance(head.get("spec"), dict)
    old, old_kind = (head["spec"], head.get("kind")) if ours else (head, kind)
    if old_kind != kind:
        raise InterpError(f"'{root}' holds runs of {old_kind}, not {kind}; give another --runs")
    if ours and head.get("format") != FORMAT:
        raise InterpError(f"'{root}' was written in format {head.get('format')}, this version writes {FORMAT}; give "
                          "another --runs")
    diff = spec_diff(old, want["spec"])
    if not diff:
        if head != want:
            atomic_write_json(root / SPEC_FILE, want)
        return
    more = f" and {len(diff) - 6} more" if len(diff) > 6 else ""
    msg = f"'{root}' holds runs made with another configuration (differs in: {'; '.join(diff[:6])}{more})"
    new = want["spec"]
    if _steps(old) != _steps(new) or old.get("profile") != new.get("profile"):
        msg += (f": runs of profile {old.get('profile')} with {_steps(old)} steps, not {new.get('profile')} with "
                f"{_steps(new)}; delete it or give another --runs (or leave it out: the default directory is per "
                "profile and --steps)")
    else:
        msg += "; delete it or give another --runs"
    raise InterpError(msg)


def _steps(spec: dict):
    return spec["steps"] if "steps" in spec else (spec.get("P") or {}).get("steps")


# --- one writer per folder ------------------------------------------------------------------------

class WriterLocks:
    """The writer locks (`interp.store`'s ``.lock``: pid, host, time) of the folders one experiment
    call writes, its runs and figures directories: a second call into either is refused while the
    first runs; a lock left by a dead process of this host is taken over. Taking them also removes
    the temporary files a killed call left at the folders' top level."""

    def __init__(self, *folders):
        self.folders = list(dict.fromkeys(Path(f).resolve() for f in folders))
        self._held = []

    def acquire(self) -> "WriterLocks":
        try:
            for folder in self.folders:
                folder.mkdir(parents=True, exist_ok=True)
                lock = Lock(folder)
                lock.acquire()
                self._held.append(lock)
                remove_temps(folder)
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        while self._held:
            self._held.pop().release()
