"""``interp run <file>.toml``: read an experiment file (``script``, ``[options]``, ``description``),
check that its script is one of the experiments the toolkit ships (`shipped_scripts`; any other
script only with ``allow_any_script``), check its options against the script's own parser, and call
the script's ``main(argv)`` with the options as flags (`run_toml`). The script is loaded from its
file (`load_experiment`).
"""
from __future__ import annotations

import contextlib
import io
import shlex
from pathlib import Path

from interp import InterpError
from interp.experiment.scripts import load_experiment, shipped_scripts

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


def _actions(ap) -> dict:
    """{option key (``out``, ``time_budget``, ...): its argparse action} of the parser ``ap``."""
    return {o[2:].replace("-", "_"): act for act in ap._actions for o in act.option_strings
            if o.startswith("--") and o != "--help"}


def merge_options(ap, toml_path, options: dict, extra) -> dict:
    """The TOML's ``[options]`` checked against the parser ``ap`` (an option given twice, e.g. ``out`` and its
    alias ``figures`` or ``time_budget`` and ``time-budget``; a list for an option that takes one value; an empty
    list), less the options that a flag of ``extra`` (the command line) sets, or one exclusive with them (a profile:
    quick, tiny, profile): the command line replaces them."""
    acts, seen = _actions(ap), {}
    for k, v in options.items():
        act = acts.get(str(k).replace("-", "_"))
        if act is None:
            continue                        # named by check_options
        if act.dest in seen:
            raise InterpError(f"options '{seen[act.dest]}' and '{k}' in '{toml_path}' set the same setting; valid: "
                              "one of them")
        seen[act.dest] = k
        repeatable = act.__class__.__name__ == "_AppendAction" or act.nargs not in (None, 0, "?")
        if isinstance(v, list) and (not repeatable or not v):
            raise InterpError(f"option '{k}' in '{toml_path}' is {'an empty list' if not v else 'a list'}; valid: "
                              + ("one or more values" if repeatable else "one value (it is not repeatable)"))
    given = set()
    for tok in extra:
        act = ap._option_string_actions.get(str(tok).split("=")[0]) if str(tok).startswith("--") else None
        if act is not None:
            given.add(act.dest)
            # a flag replaces the TOML's choice among exclusive ones too (--tiny over quick = true)
            given.update(a.dest for g in ap._mutually_exclusive_groups if act in g._group_actions
                         for a in g._group_actions)
    return {k: v for k, v in options.items()
            if str(k).replace("-", "_") not in acts or acts[str(k).replace("-", "_")].dest not in given}


def check_options(mod, toml_path, script: str, options: dict, argv: list[str]) -> None:
    """Every key of the TOML's ``[options]`` must name a flag of the script's parser
    (``mod.build_parser()``), and ``argv`` must parse; else `InterpError` with the parser's message
    and the valid keys (``--help`` prints the help and exits)."""
    if not callable(getattr(mod, "build_parser", None)):
        raise InterpError(f"script '{script}' defines no build_parser() function; an experiment script run from a "
                          "TOML file must (its [options] are checked against that parser)")
    ap = mod.build_parser()
    keys = sorted(_actions(ap))
    bad = [k for k in options if str(k).replace("-", "_") not in keys]
    if bad:
        raise InterpError(f"unknown option '{bad[0]}' in [options] of '{toml_path}'; valid options for {script}: "
                          f"{', '.join(keys)}")
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):    # argparse prints its usage and message there, then exits 2
            ap.parse_args(argv)
    except SystemExit as e:
        if e.code in (0, None):                   # --help
            raise
        message = " ".join(err.getvalue().rpartition(": error: ")[2].split()) or "invalid options"
        raise InterpError(f"{script} (run from '{toml_path}'): {message}; valid options: {', '.join(keys)}") from None


def _read(toml_path) -> tuple[Path, dict]:
    """The TOML file's path and its checked top-level keys."""
    import tomllib
    p = Path(toml_path)
    if not p.is_file():
        import interp
        shipped = Path(interp.__file__).resolve().parent.parent / "experiments"
        here = sorted(str(x) for x in (p.parent if p.parent.is_dir() else Path("experiments")).glob("*.toml")
                      if x.is_file()) or sorted(str(x) for x in shipped.glob("*.toml"))
        raise InterpError(f"experiment file '{toml_path}' not found" + (f"; available: {', '.join(here)}"
                                                                         if here else ""))
    try:
        spec = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InterpError(f"'{toml_path}' is not valid TOML: {e}") from None
    bad = [k for k in spec if k not in TOML_KEYS]
    if bad:
        raise InterpError(f"unknown key '{bad[0]}' in '{toml_path}'; valid keys: {', '.join(TOML_KEYS)}")
    if not isinstance(spec.get("script"), str) or not spec.get("script"):
        raise InterpError(f"'{toml_path}' needs script = \"<name>.py\" (the experiment to run)")
    if not isinstance(spec.get("description", ""), str):
        raise InterpError(f"'description' in '{toml_path}' must be a string, got {spec['description']!r}")
    if not isinstance(spec.get("options", {}), dict):
        raise InterpError(f"'options' in '{toml_path}' must be a table ([options]), got {spec['options']!r}")
    return p, spec


def _script(p: Path, script: str, toml_path, allow_any_script: bool) -> Path:
    """The script a TOML file names, next to it (or as given, or a shipped experiment of that name: a copied
    TOML file runs the shipped script); unless ``allow_any_script``, only one of the experiments the toolkit
    ships (after resolving links)."""
    shipped = shipped_scripts()
    named = [x for x in shipped if x.name == script]
    found = next((c for c in (p.parent / script, Path(script), *named) if c.is_file() and c.suffix == ".py"), None)
    if found is None:
        have = sorted(x.name for x in p.parent.glob("*.py") if not x.name.startswith("_")) + \
            [x.name for x in shipped]
        raise InterpError(f"script '{script}' named in '{toml_path}' not found next to it or among the shipped "
                          f"experiments; valid scripts: {', '.join(dict.fromkeys(have))}")
    if not allow_any_script and found.resolve() not in shipped:
        raise InterpError(f"script '{script}' named in '{toml_path}' is {found.resolve()}, not one of the experiments "
                          f"the toolkit ships (experiments/{', '.join(x.name for x in shipped)}); `interp run` runs "
                          "only those: pass --allow-any-script to run this file's code anyway")
    return found


def run_toml(toml_path, extra=(), allow_any_script: bool = False) -> int:
    """Read ``toml_path`` (``script = "<name>.py"``, optional ``[options]`` and ``description``),
    resolve the script next to the TOML file, and call its ``main(argv)`` with the options as flags
    followed by ``extra`` (a flag of ``extra`` replaces the TOML's option of the same setting). Returns what main returns (0 = success, 3 = unfinished: call again).
    A missing file, an unknown key, a script that is not one of the shipped experiments (unless
    ``allow_any_script``), an option the script does not take or a bad value raises `InterpError`;
    nothing of the script runs before its file and options are checked (its module is imported
    only once the file is known to be a shipped experiment, ``main`` only once the options parse)."""
    p, spec = _read(toml_path)
    script, options = spec["script"], spec.get("options", {})
    found = _script(p, script, toml_path, allow_any_script)
    mod = load_experiment(found)
    try:
        ap = mod.build_parser() if callable(getattr(mod, "build_parser", None)) else None
        kept = options if ap is None else merge_options(ap, toml_path, options, extra)
        argv = toml_argv(kept) + list(extra)
        check_options(mod, toml_path, found.name, options, argv)
        from interp.experiment import context
        context.FROM_TOML = " ".join(["interp run", shlex.quote(str(toml_path)), *map(shlex.quote, extra)])
        try:
            rc = mod.main(argv)
        finally:
            context.FROM_TOML = None
    except SystemExit as e:          # --help
        if e.code in (0, None):
            return 0
        raise
    return int(rc or 0)
