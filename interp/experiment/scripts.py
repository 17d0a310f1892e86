"""Experiment scripts by file path: the ones the toolkit ships (`shipped_scripts`), import one
(`load_experiment`), and name one of its functions so that a spawned worker process can call it
(`script_function`). The scripts under ``experiments/``
are not an installed package, so nothing imports them by module name; a worker loads the script
from its file instead.

An experiment script defines ``PROFILES``, ``build_parser()`` (its `argparse` parser) and
``main(argv=None) -> int`` (0 = done, 3 = unfinished: call again).
"""
from __future__ import annotations

import importlib.util
import inspect
from dataclasses import dataclass
from pathlib import Path

from interp import InterpError
from interp.experiment.context import REPO


def shipped_scripts() -> list[Path]:
    """The experiments the toolkit ships: ``experiments/e<N>_*.py`` of the source checkout (resolved
    paths)."""
    return sorted(p.resolve() for p in (REPO / "experiments").glob("e[0-9]*.py"))


def load_experiment(path):
    """Import an experiment script as a module from its file (it must define ``main(argv)``)."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"_interp_experiment_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not callable(getattr(mod, "main", None)):
        raise InterpError(f"script '{path}' defines no main(argv) function; an experiment script must")
    return mod


_LOADED: dict[str, object] = {}      # this process's scripts loaded by ScriptFunction, by path


@dataclass(frozen=True)
class ScriptFunction:
    """A top-level function of an experiment script, by file and name: picklable, so a spawned worker
    process can call it (the worker loads the script once)."""
    path: str
    name: str

    def __call__(self, *args, **kwargs):
        if self.path not in _LOADED:
            _LOADED[self.path] = load_experiment(self.path)
        return getattr(_LOADED[self.path], self.name)(*args, **kwargs)


def script_function(fn) -> ScriptFunction:
    """``fn``, a top-level function of an experiment script, as a `ScriptFunction` (for
    ``ProcessPoolExecutor.submit`` and the like)."""
    return ScriptFunction(str(Path(inspect.getfile(fn)).resolve()), fn.__name__)
