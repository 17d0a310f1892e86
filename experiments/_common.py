"""What every experiment script shares: the command line, the run context, resumable result CSVs,
figure saving and the markdown report header (command, device, date, git commit).

An experiment is ``experiments/<name>.py`` with ``PROFILES`` and ``main(argv=None) -> int``; it runs
as ``python experiments/<name>.py [--quick | --tiny] [--out figures/<name>]`` or through
``interp run experiments/<name>.toml`` (`run_toml`, which maps the TOML's ``[options]`` onto the
same flags). Profiles: ``full`` (the experiment, meant for a GPU), ``quick`` (CPU, a few minutes)
and ``test`` (``--tiny``: the test suite's size, seconds; its numbers mean nothing).

The lower-level helpers (git commit, device name, markdown tables, matplotlib setup, the
learning-rate sweep machinery) live in `experiments._sweeps` and are re-exported here.
"""
from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments._sweeps import (REPO, add_run_args, cli, device_name, git_commit, md_table,  # noqa: E402,F401
                                 check_spec, out_of_time, pyplot, resolve_device, save_fig, train_devices,
                                 with_steps)
from interp import InterpError  # noqa: E402

PROFILE_FLAGS = {"quick": "--quick", "test": "--tiny"}


def parser(name: str, doc: str | None, profiles: dict) -> argparse.ArgumentParser:
    """The flags every experiment takes; the script adds its own."""
    ap = argparse.ArgumentParser(prog=f"experiments/{name}.py", description=(doc or "").split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="CPU profile: tiny models, a few minutes")
    g.add_argument("--tiny", action="store_true", help="test-suite profile: seconds, numbers meaningless")
    g.add_argument("--profile", choices=list(profiles), default=None, help="full (default) | quick | test")
    ap.add_argument("--out", "--figures", dest="out", default=None,
                    help=f"figures, tables and report.md (default figures/{name}, or figures/{name}_<profile> "
                         "for --tiny)")
    ap.add_argument("--runs", default=None, help=f"checkpoints and resumable intermediate results "
                                                 f"(default runs/{name}[_<profile>])")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-budget", type=float, default=None,
                    help="minutes for this call (0 = none); stops cleanly, calling again continues")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_run_args(ap)
    return ap


@dataclass
class Ctx:
    """The resolved run context of one experiment call."""
    name: str
    profile: str
    P: dict
    out: Path                   # figures + report
    runs: Path                  # checkpoints, unit files
    device: str
    seed: int
    argv: list
    started: float
    deadline: float | None
    progress: bool
    notes: list = field(default_factory=list)   # lines the report adds under the header
    train_only: bool = False                     # --train-only: train what is unfinished, evaluate nothing
    train_devices: list | None = None            # --train-devices: GPUs the training runs are spread over

    @property
    def command(self) -> str:
        return " ".join(["python", f"experiments/{self.name}.py", *map(shlex.quote, self.argv)])

    def out_of_time(self, reserve_s: float = 0.0) -> bool:
        return out_of_time(self.deadline, reserve_s)


def setup(a: argparse.Namespace, name: str, profiles: dict, argv) -> Ctx:
    profile = a.profile or ("test" if a.tiny else "quick" if a.quick else "full")
    if profile not in profiles:
        raise InterpError(f"profile '{profile}' is not valid; valid: {', '.join(profiles)}")
    device = resolve_device(a.device)
    suffix = "" if profile == "full" else f"_{profile}"
    P, runs_suffix = with_steps(dict(profiles[profile]), a.steps, suffix)
    out = Path(a.out or (f"figures/{name}" if profile != "test" else f"figures/{name}{suffix}"))
    out.mkdir(parents=True, exist_ok=True)
    runs = Path(a.runs or f"runs/{name}{runs_suffix}")
    runs.mkdir(parents=True, exist_ok=True)
    budget = P.get("time_budget", 0) if a.time_budget is None else a.time_budget
    if budget is not None and budget < 0:
        raise InterpError(f"--time-budget {budget} is out of range; valid: minutes >= 0 (0 = none)")
    started = time.time()
    argv = list(sys.argv[1:] if argv is None else argv)
    return Ctx(name, profile, P, out, runs, device, a.seed, argv, started,
               started + 60 * budget if budget else None, not a.no_progress,
               train_only=a.train_only, train_devices=train_devices(a.train_devices, device))


# --- resumable results -------------------------------------------------------------------------

class ResultLog:
    """A CSV of result rows that grows as units finish, keyed by ``key`` columns: a rerun skips the
    units already there (``done``) and ``frame()`` reads everything back. Rows are appended (with
    a header on the first write), so an interrupted call loses at most the unit it was in."""

    def __init__(self, path, key: list[str]):
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

    def frame(self) -> pd.DataFrame:
        if not self.path.is_file() or not self.path.stat().st_size:
            return pd.DataFrame()
        return pd.read_csv(self.path, keep_default_na=False, na_values=[""])   # 'None' stays a string


def check_runs_spec(ctx: Ctx, spec: dict) -> None:
    """``<runs>/spec.json`` records the configuration that the cached checkpoints and results in
    ``ctx.runs`` were made with; a later call with another configuration (profile, seed, corpus,
    ...) must use another ``--runs`` instead of silently reusing them."""
    import json
    spec = json.loads(json.dumps(spec))

    def mismatch(old):
        diff = sorted(k for k in set(old) | set(spec) if old.get(k) != spec.get(k))
        return (f"'{ctx.runs}' holds runs made with another configuration (differs in: {', '.join(diff)}); delete "
                "it or give another --runs")
    check_spec(ctx.runs, spec, mismatch)


# --- figures and report ------------------------------------------------------------------------

def save_figure(fig, path, dpi: int = 120) -> Path:
    """tight_layout, save (PNG), close; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_fig(fig, path, dpi)
    return path


def header(ctx: Ctx, title: str) -> list[str]:
    return [f"# {title}", "",
            f"* command: `{ctx.command}` (or `interp run experiments/{ctx.name}.toml`"
            + (f" `{PROFILE_FLAGS[ctx.profile]}`" if ctx.profile in PROFILE_FLAGS else "") + ")",
            f"* profile: `{ctx.profile}`",
            f"* device: {device_name(ctx.device)}",
            f"* date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; this call took "
            f"{(time.time() - ctx.started) / 60:.1f} min",
            f"* git commit: {git_commit()}", ""] + ctx.notes


def write_report(ctx: Ctx, title: str, body: list[str], verdicts: list[str] | None = None) -> Path:
    """``<out>/report.md``: the header, the body and the comparison with the published shape."""
    lines = header(ctx, title) + body
    if verdicts is not None:
        lines += ["", "## Comparison with the published shape", ""] + verdicts
    if ctx.profile != "full":
        lines += ["", f"_Profile `{ctx.profile}` uses tiny models trained briefly on CPU: it checks the pipeline end "
                      "to end; its numbers say little about the architectures. The full profile (GPU) is the "
                      "experiment._"]
    path = ctx.out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def fmt_table(df: pd.DataFrame, floatfmt: str = "{:.3f}") -> list[str]:
    return md_table(df, floatfmt)


def sweep_edge_note(best_lr: dict, lrs) -> list[str]:
    """A warning for every arm whose best learning rate is the smallest or largest one swept (its
    optimum may lie outside the sweep, so the comparison may not use its best setting)."""
    lrs = sorted(float(x) for x in lrs)
    if len(lrs) < 2:
        return [f"_Only one learning rate ({lrs[0]:g}) in this profile: no sweep._", ""] if lrs else []
    edge = {a: float(lr) for a, lr in best_lr.items() if float(lr) in (lrs[0], lrs[-1])}
    if not edge:
        return []
    return ["**Best learning rate at the edge of the sweep** for " + ", ".join(
        f"{a} ({lr:g}, the {'largest' if lr == lrs[-1] else 'smallest'})" for a, lr in edge.items())
        + ": the optimum may lie outside the swept range, so these arms may be under-tuned relative to the others.",
        ""]


# --- `interp run <file>.toml` --------------------------------------------------------------------

TOML_KEYS = ("script", "options", "description")


def toml_argv(options: dict) -> list[str]:
    """{"quick": true, "out": "x", "lr": [1, 2]} -> ["--quick", "--out", "x", "--lr", "1", "--lr", "2"]."""
    argv = []
    for k, v in options.items():
        flag = "--" + str(k).replace("_", "-")
        if isinstance(v, bool):
            argv += [flag] if v else []
        elif isinstance(v, list):
            for x in v:
                if isinstance(x, (dict, list)):
                    raise InterpError(f"option '{k}': list items must be strings or numbers, got {x!r}")
                argv += [flag, str(x)]
        elif isinstance(v, dict):
            raise InterpError(f"option '{k}' is a table; options take strings, numbers, booleans or lists")
        else:
            argv += [flag, str(v)]
    return argv


def load_experiment(path):
    """Import an experiment script as a module (it must define ``main(argv)``)."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"_interp_experiment_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not callable(getattr(mod, "main", None)):
        raise InterpError(f"script '{path}' defines no main(argv) function; an experiment script must")
    return mod


@contextmanager
def _checked_options(toml_path, script: str, options: dict):
    """While open, the first argument parser that parses (the experiment's) first checks that every
    key of the TOML's ``[options]`` names one of its flags, and any parse error (a bad value, an
    unknown extra flag) raises `InterpError` naming the valid keys instead of exiting."""
    orig_parse, orig_error = argparse.ArgumentParser.parse_known_args, argparse.ArgumentParser.error

    def valid(parser) -> list[str]:
        return sorted({o[2:].replace("-", "_") for act in parser._actions for o in act.option_strings
                       if o.startswith("--") and o != "--help"})

    def parse_known_args(self, args=None, namespace=None):
        keys = valid(self)
        bad = [k for k in options if str(k).replace("-", "_") not in keys]
        if bad:
            raise InterpError(f"unknown option '{bad[0]}' in [options] of '{toml_path}'; valid options for {script}: "
                              f"{', '.join(keys)}")
        argparse.ArgumentParser.parse_known_args = orig_parse        # only the experiment's own parser
        return orig_parse(self, args, namespace)

    def error(self, message):
        raise InterpError(f"{script} (run from '{toml_path}'): {message}; valid options: {', '.join(valid(self))}")
    argparse.ArgumentParser.parse_known_args = parse_known_args
    argparse.ArgumentParser.error = error
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_known_args = orig_parse
        argparse.ArgumentParser.error = orig_error


def run_toml(toml_path, extra=()) -> int:
    """Read ``toml_path`` (``script = "<name>.py"``, optional ``[options]`` and ``description``),
    resolve the script next to the TOML file, and call its ``main(argv)`` with the options as flags
    followed by ``extra``. Returns what main returns (0 = success, 3 = unfinished: call again).
    A missing file, an unknown key, an option the script does not take or a bad value raises
    `InterpError`."""
    import tomllib
    p = Path(toml_path)
    if not p.is_file():
        here = sorted(str(x) for x in (p.parent if p.parent.is_dir() else Path("experiments")).glob("*.toml"))
        raise InterpError(f"experiment file '{toml_path}' not found" + (f"; available: {', '.join(here)}"
                                                                         if here else ""))
    try:
        spec = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InterpError(f"'{toml_path}' is not valid TOML: {e}") from None
    bad = [k for k in spec if k not in TOML_KEYS]
    if bad:
        raise InterpError(f"unknown key '{bad[0]}' in '{toml_path}'; valid keys: {', '.join(TOML_KEYS)}")
    script = spec.get("script")
    if not isinstance(script, str) or not script:
        raise InterpError(f"'{toml_path}' needs script = \"<name>.py\" (the experiment to run)")
    options = spec.get("options", {})
    if not isinstance(options, dict):
        raise InterpError(f"'options' in '{toml_path}' must be a table ([options]), got {options!r}")
    cand = [p.parent / script, Path(script)]
    found = next((c for c in cand if c.is_file() and c.suffix == ".py"), None)
    if found is None:
        have = sorted(x.name for x in p.parent.glob("*.py") if not x.name.startswith("_"))
        raise InterpError(f"script '{script}' named in '{toml_path}' not found next to it; valid scripts: "
                          f"{', '.join(have) or 'none'}")
    argv = toml_argv(options) + list(extra)
    mod = load_experiment(found)
    with _checked_options(toml_path, found.name, options):
        try:
            rc = mod.main(argv)
        except SystemExit as e:          # --help
            if e.code in (0, None):
                return 0
            raise
    return int(rc or 0)
