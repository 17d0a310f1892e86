"""`interp run`: run an experiment from its TOML file (interp.experiment.run_toml)."""
from __future__ import annotations

import argparse
from pathlib import Path

from interp import InterpError


def add_parser(sub):
    r = sub.add_parser("run", help="run an experiment from its TOML file (experiments/<name>.toml)")
    r.add_argument("--allow-any-script", action="store_true",
                   help="also run a TOML file whose script is not one of the experiments the toolkit ships "
                        "(experiments/e<N>_*.py): that file's code runs, so only for scripts you trust")
    r.add_argument("file", nargs="?", help="experiments/<name>.toml (script = ..., [options] = the script's flags)")
    r.add_argument("args", nargs=argparse.REMAINDER, help="more flags for the script, e.g. --quick (a flag given "
                   "here replaces the TOML's option of the same setting)")
    r.set_defaults(func=cmd_run)


def cmd_run(a):
    """``interp run [--allow-any-script] experiments/<name>.toml [flags]``: the experiment script's
    exit code. Only the shipped experiments run unless ``--allow-any-script`` is given."""
    import interp
    root = Path(interp.__file__).resolve().parent.parent  # experiments/ lives next to interp/ in a checkout
    if not (root / "experiments").is_dir():
        raise InterpError(f"no experiments/ directory next to the interp package ({root}); `interp run` needs the "
                          "source checkout")
    if a.file is None:
        shipped = sorted(f"experiments/{p.name}" for p in (root / "experiments").glob("*.toml"))
        raise InterpError(f"interp run needs an experiment file; valid: {', '.join(shipped)} (or your own copy)")
    if "--allow-any-script" in a.args:
        raise InterpError("--allow-any-script is an option of interp run, not of the script; valid: interp run "
                          "--allow-any-script FILE.toml [flags]")
    from interp.experiment import run_toml
    return run_toml(a.file, a.args, allow_any_script=a.allow_any_script)
