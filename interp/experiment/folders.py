"""Which folders an experiment call may write: its ``--runs`` and ``--out`` only where they are new, empty or its
own, so that a call never writes over (or clears the temporary-looking files of) a folder of someone else's.

* `check_folders` (before `interp.experiment.context.setup` makes either folder): a runs folder that holds files
  but no ``spec.json`` (`interp.experiment.results.check_spec` writes it on every call) is refused, and so is an
  ``--out`` folder that holds files but no ``outputs.json`` and no report of this experiment (a gallery folder of
  an earlier version, whose ``report.md`` names ``experiments/<name>.py``, is taken over);
* `claim_runs` (under the call's writer lock): ``<runs>/experiment.json`` names the experiment that owns the
  runs folder (also before a call has written its spec.json);
* `claim_out` (under the call's writer lock): ``<out>/outputs.json`` records which experiment, profile and steps
  wrote the folder; a call of another one is refused naming the differing fields, so that figures and tables of
  two configurations never mix in one folder.
"""
from __future__ import annotations

from pathlib import Path

from interp import InterpError
from interp.store import FORMAT, SPEC_FILE, atomic_write_json, read_json, spec_diff

OUT_RECORD = "outputs.json"
RUNS_RECORD = "experiment.json"   # {"experiment": name}: a runs folder's owner, beside its spec.json
KIND = "experiment outputs"
IGNORED = (".lock",)   # a writer lock (a dead one is taken over): not a file of anyone's


def _entries(folder: Path, skip=()) -> list:
    """The names in ``folder`` (none where it does not exist) other than `IGNORED`, the folders ``skip`` and
    folders holding nothing else (an earlier call's default figures folder that another --out left empty)."""
    if not folder.is_dir():
        return []
    skip = {Path(s).resolve() for s in skip}
    return sorted(f.name for f in folder.iterdir() if f.name not in IGNORED and f.resolve() not in skip
                  and not (f.is_dir() and not f.is_symlink() and not _entries(f)))


def _our_report(out: Path, name: str) -> bool:
    """Whether ``out`` holds a report.md of experiment ``name`` (its header names the script)."""
    try:
        return f"experiments/{name}.py" in (out / "report.md").read_text(errors="replace")[:4000]
    except OSError:
        return False


def check_folders(runs, out, name: str) -> None:
    """InterpError where ``runs`` or ``out`` holds files that are not experiment ``name``'s (module doc)."""
    runs, out = Path(runs), Path(out)
    for path in (runs, out):
        if path.exists() and not path.is_dir():
            flag = "--runs" if path == runs else "--out"
            raise InterpError(f"{flag} '{path}' is a file; valid: a folder (new, empty or this experiment's)")
    found = _entries(runs, skip=[out])
    if found and not (runs / SPEC_FILE).is_file() and not (runs / RUNS_RECORD).is_file():
        raise InterpError(f"--runs '{runs}' holds {_names(found)} but no {SPEC_FILE} of an experiment's runs, so they "
                          "are not an experiment's; valid: a new or empty folder, an experiment's runs folder, or "
                          "leave --runs out for the default")
    found = _entries(out, skip=[runs])
    if found and not (out / OUT_RECORD).is_file() and not _our_report(out, name):
        raise InterpError(f"--out '{out}' holds {_names(found)} but no {OUT_RECORD} or report of {name}, so they "
                          "are not this experiment's outputs; valid: a new or empty folder, this experiment's "
                          "figures folder, or leave --out out for the default")


def _names(found: list) -> str:
    return ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")


def claim_runs(runs, name: str) -> None:
    """Record experiment ``name`` as the owner of ``runs`` (`RUNS_RECORD`); InterpError where another owns it."""
    path, spec = Path(runs) / RUNS_RECORD, Path(runs) / SPEC_FILE
    head = read_json(path) if path.is_file() else None
    if head == {"experiment": name}:
        return
    owner = (head.get("experiment") if isinstance(head, dict) else "?") if head is not None else None
    if owner is None and spec.is_file():    # a runs folder of an earlier version: its spec.json names the owner
        old = read_json(spec)
        owner = old.get("kind") if isinstance(old, dict) and "format" in old else None
    if owner is not None and owner != name:
        raise InterpError(f"--runs '{runs}' holds the runs of {owner}, not {name}; valid: another --runs, or leave "
                          "--runs out for the default")
    atomic_write_json(path, {"experiment": name})


def claim_out(out, spec: dict) -> None:
    """Record ``spec`` (experiment, profile, steps) in ``<out>/outputs.json``; InterpError naming the differing
    fields where the folder records another."""
    path = Path(out) / OUT_RECORD
    want = {"kind": KIND, "format": FORMAT, "spec": spec}
    if path.is_file():
        head = read_json(path)
        old = head.get("spec") if isinstance(head, dict) else None
        if not isinstance(old, dict):
            raise InterpError(f"{path} is not a record of an experiment's outputs; delete it or give another --out")
        diff = spec_diff(old, spec)
        if diff:
            raise InterpError(f"--out '{out}' holds the outputs of another call ({'; '.join(diff)}): its figures "
                              "and tables would mix; valid: the same experiment and settings, another --out, or "
                              "leave --out out for the default")
        if head == want:
            return
    atomic_write_json(path, want)
