"""The run context of one experiment call: the command line every experiment takes (`parser`), the
settings it resolves to (`Ctx`, made by `setup`; ``with setup(...) as ctx:`` holds the writer locks of
its runs and figures directories), the time budget (`out_of_time`), the device, and
the facts a report names (`device_name`, `git_commit`).

Profiles: ``full`` (the experiment, meant for a GPU), ``quick`` (``--quick``: CPU, a few minutes)
and ``test`` (``--tiny``: the test suite's size, seconds; its numbers mean nothing).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from interp import InterpError
from interp.experiment.folders import check_folders, claim_out, claim_runs
from interp.experiment.results import WriterLocks, backend_spec

REPO = Path(__file__).resolve().parents[2]      # the source checkout: experiments/ and .git live here


# --- the command line ---------------------------------------------------------------------------

def parser(name: str, doc: str | None, profiles: dict, seed: bool = False,
           workers: bool = False) -> argparse.ArgumentParser:
    """The flags every experiment takes (`add_common_args`), plus ``--seed`` and ``--workers`` where
    the experiment uses them; the script adds its own."""
    ap = argparse.ArgumentParser(prog=f"experiments/{name}.py", description=(doc or "").split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(ap, name, profiles)
    if seed:
        from interp.cli.options import int_at_least
        ap.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the models' initialisation and data")
    if workers:
        ap.add_argument("--workers", type=int, default=None,
                        help="parallel training processes (None: the profile's on a GPU, 1 on CPU)")
    return ap


def add_common_args(ap: argparse.ArgumentParser, name: str, profiles: dict) -> None:
    """Profile, output and runs directories, device, time budget, progress bars, and `add_run_args`."""
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="CPU profile: tiny models, a few minutes")
    g.add_argument("--tiny", action="store_true", help="test-suite profile: seconds, numbers meaningless")
    g.add_argument("--profile", choices=list(profiles), default=None,
                   help="full | quick | test (None: full, or quick / test with --quick / --tiny)")
    ap.add_argument("--out", "--figures", dest="out", default=None,
                    help=f"figures, tables and report.md (None: <runs>/figures, e.g. runs/{name}/figures; the "
                         f"committed gallery figures/{name} is written only when named here)")
    ap.add_argument("--runs", default=None, help=f"checkpoints and resumable intermediate results (None: "
                                                 f"runs/{name}[_<profile>][_steps<N>])")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    from interp.cli.options import finite_float
    ap.add_argument("--time-budget", type=finite_float(0), default=None,
                    help="minutes for this call, evaluation included (0 = none; None: the profile's); stops "
                         "cleanly, calling again continues")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_run_args(ap)


def add_run_args(ap: argparse.ArgumentParser) -> None:
    """``--train-only``, ``--train-devices``, ``--stack``, ``--length-split``, ``--scan-backend`` and ``--steps``,
    shared by every experiment that trains runs."""
    ap.add_argument("--train-only", action="store_true",
                    help="train (or continue) the runs and stop, without evaluating; exit 0 once all are finished, "
                         "3 while some are not")
    ap.add_argument("--train-devices", default=None,
                    help="comma-separated GPUs to spread the training runs over, e.g. cuda:0,cuda:1 (None: "
                         "--device); evaluation runs on --device")
    ap.add_argument("--stack", type=int, default=None,
                    help="train up to this many runs that differ only in seed / learning rate as one stacked "
                         "module per worker process (interp.stacked; several times more runs per GPU-hour at "
                         "d=128, BENCHMARKS.md section 19); 1 = one run per process (None: the profile's, else 1)")
    ap.add_argument("--length-split", action="store_true",
                    help="with --stack: a step's shorter batches run in a second, shorter pass (interp.stacked."
                         "split_groups; the same numbers up to float rounding); with --scan-backend auto, --stack 8 "
                         "and six --workers on an H100, 4.57x the runs per GPU-hour of six one-run processes on the "
                         "reference scans, BENCHMARKS.md section 36")
    ap.add_argument("--scan-backend", default=None, choices=["reference", "auto"],
                    help="recurrent scans the zoo runs train with: the pure-torch reference (every experiment's "
                         "default) or auto (fla's kernels on CUDA, the reference elsewhere; with --stack 8 and four "
                         "--workers on an H100, 3.65x the runs per GPU-hour of six one-run processes on the reference, "
                         "BENCHMARKS.md section 35); recorded in the runs' spec.json")
    from interp.cli.options import int_at_least
    ap.add_argument("--steps", type=int_at_least(1), default=None,
                    help="training steps instead of the profile's (a longer budget; the induction warm-up of "
                         "attention arms scales with it: min(2000, steps/4); None: the profile's); the default "
                         "--runs and --out directories get a _steps<N> suffix")


def cli(main):
    """Run ``main()`` as a command: an `InterpError` prints ``error: ...`` and exits with 2; Ctrl-C (SIGTERM)
    prints that the same command resumes and exits with 130 (143) (no traceback)."""
    from interp.interrupts import exit_code, interrupted, sigterm_interrupts
    try:
        with sigterm_interrupts():
            rc = main()
    except InterpError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        interrupted(e=e)
        sys.exit(exit_code(e))
    sys.exit(rc)


# --- the resolved context -----------------------------------------------------------------------

@dataclass
class Ctx:
    """The resolved run context of one experiment call."""
    name: str
    profile: str
    P: dict                     # the profile's settings (``--steps`` applied)
    out: Path                   # figures + report
    runs: Path                  # checkpoints, cached results
    device: str
    seed: int
    argv: list
    started: float
    deadline: float | None
    progress: bool
    workers: int = 1                             # parallel training processes (`train_runs`)
    stack: int = 1                               # runs trained as one stacked module per process (`train_runs`)
    length_split: bool = False                   # stacks run a step's shorter batches in a second pass
    notes: list = field(default_factory=list)   # lines the report adds under the header
    train_only: bool = False                     # --train-only: train what is unfinished, evaluate nothing
    train_devices: list | None = None            # --train-devices: GPUs the training runs are spread over
    made: list = field(default_factory=list)     # the folders `setup` made (removed again if this call is refused)

    def __enter__(self) -> "Ctx":
        """Take the writer locks of the runs and figures directories for this call (a second call
        into either is refused while it runs); released on leaving the ``with`` block."""
        try:
            self._locks = WriterLocks(self.runs, self.out).acquire()
            claim_runs(self.runs, self.name)
            claim_out(self.out, {"experiment": self.name, "profile": self.profile, "steps": self.P.get("steps"),
                                 "seed": self.seed, **backend_spec(self.P)})
        except BaseException:
            self.__exit__()
            for folder in sorted(self.made, key=lambda f: -len(f.resolve().parts)):   # a refused call leaves no
                # folder it made (an empty one only)
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise
        return self

    def __exit__(self, *exc):
        locks = self.__dict__.pop("_locks", None)
        if locks is not None:
            locks.release()

    def __getstate__(self):     # a copy sent to a worker process holds no locks
        return {k: v for k, v in self.__dict__.items() if k != "_locks"}

    @property
    def command(self) -> str:
        return " ".join(["python", f"experiments/{self.name}.py", *map(shlex.quote, self.argv)])

    @property
    def scan_backend(self) -> str:
        """The scans the zoo runs train with (``--scan-backend``; the profile's, else ``reference``)."""
        return self.P.get("scan_backend", "reference")

    def out_of_time(self, reserve_s: float = 0.0) -> bool:
        return out_of_time(self.deadline, reserve_s)


FROM_TOML = None   # the `interp run` call running this experiment (set by interp.experiment.toml.run_toml)
MIN_BUDGET = 1.0   # minutes: a call of less trains nothing (a run needs 0.25 left to start) and evaluates nothing


def setup(a: argparse.Namespace, name: str, profiles: dict, argv=None, min_budget: float = MIN_BUDGET) -> Ctx:
    """The `Ctx` of the parsed flags ``a``; makes the figures and runs directories. ``argv``: the
    flags as given (default ``sys.argv[1:]``), for the report's command line; ``min_budget``: the shortest
    ``--time-budget`` (minutes) in which a call makes progress. Use it as ``with
    setup(...) as ctx:`` so that the call holds its directories' writer locks.

    Default directories: ``runs/<name>`` and its ``figures/`` for the full profile; ``--quick`` / ``--tiny``
    and ``--steps N`` add ``_quick`` / ``_test`` and ``_steps<N>``. Outputs never go over tracked files by
    default: the committed gallery ``figures/<name>`` is rewritten only where ``--out`` names it."""
    started = time.time()
    profile = a.profile or ("test" if a.tiny else "quick" if a.quick else "full")
    if profile not in profiles:
        raise InterpError(f"profile '{profile}' is not valid; valid: {', '.join(profiles)}")
    device = resolve_device(a.device)
    suffix = "" if profile == "full" else f"_{profile}"
    P, runs_suffix = with_steps(dict(profiles[profile]), a.steps, suffix)
    backend = getattr(a, "scan_backend", None)
    if backend is not None and backend != P.get("scan_backend", "reference"):
        P["scan_backend"] = backend     # absent unless set: the runs' spec.json of earlier versions still agrees
    workers = getattr(a, "workers", None)
    if workers is not None and workers < 1:
        raise InterpError(f"--workers {workers} is out of range; valid: integers >= 1")
    stack = getattr(a, "stack", None)
    if stack is not None and stack < 1:
        raise InterpError(f"--stack {stack} is out of range; valid: integers >= 1")
    for flag, v in (("--runs", a.runs), ("--out", a.out)):
        if v is not None and not str(v).strip():
            raise InterpError(f"{flag} {v!r} is empty; valid: a path, or leave {flag} out for the default")
    runs = Path(a.runs or f"runs/{name}{runs_suffix}")
    out = Path(a.out or runs / "figures")
    budget = P.get("time_budget", 0) if a.time_budget is None else a.time_budget
    if budget is not None and (budget < 0 or 0 < budget < min_budget):
        raise InterpError(f"--time-budget {budget:g} is out of range; valid: 0 (none) or >= {min_budget:g} minutes (a "
                          "shorter call cannot finish a step of the experiment, so calling again would never end)")
    devices = train_devices(a.train_devices, device)
    check_folders(runs, out, name)      # every check before a folder is made: a refused call leaves none
    made = [f for f in (out, runs) if not f.exists()]
    out.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    argv = list(sys.argv[1:] if argv is None else argv)
    return Ctx(name, profile, P, out, runs, device, getattr(a, "seed", 0), argv, started,
               deadline_from(budget, started), not a.no_progress,
               workers or (P.get("workers", 1) if device != "cpu" else 1),
               train_only=a.train_only, train_devices=devices,
               stack=stack or P.get("stack", 1), length_split=bool(getattr(a, "length_split", False)), made=made)


def with_steps(P: dict, steps: int | None, runs_suffix: str) -> tuple[dict, str]:
    """``--steps`` applied: (the profile with ``steps`` replaced, the default runs-directory suffix)."""
    if steps is None:
        return P, runs_suffix
    if steps < 1:
        raise InterpError(f"--steps {steps} is out of range; valid: integers >= 1")
    return {**P, "steps": steps}, f"{runs_suffix}_steps{steps}"


def deadline_from(minutes: float | None, started: float) -> float | None:
    return None if not minutes else started + 60 * minutes


def out_of_time(deadline: float | None, reserve_s: float = 0.0) -> bool:
    return deadline is not None and time.time() > deadline - reserve_s


# --- devices and the report's facts -------------------------------------------------------------

def resolve_device(device: str) -> str:
    """``--device`` resolved and checked (`interp.devices.resolve_device`), as the name the runs record."""
    from interp.devices import resolve_device as resolve
    return str(resolve(device))


def train_devices(spec: str | None, device: str) -> list[str] | None:
    """``--train-devices`` checked: None (train on ``device``) or a list of available CUDA devices."""
    if not spec:
        return None
    import torch
    n = torch.cuda.device_count()
    valid = [f"cuda:{i}" for i in range(n)]
    devs = [d.strip() for d in spec.split(",") if d.strip()]
    bad = [d for d in devs if d not in valid]
    if bad or not devs:
        raise InterpError(f"--train-devices '{spec}': {', '.join(bad) or 'empty'} not available; valid: "
                          f"{', '.join(valid) or 'none (no CUDA device here)'}")
    return devs


def device_name(device: str) -> str:
    import torch
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores (torch {torch.__version__})"


def git_commit() -> str:
    if os.environ.get("INTERP_GIT_COMMIT"):
        # set by whoever shipped this tree to another host (e.g. a GPU host whose copy of .git can be stale)
        return os.environ["INTERP_GIT_COMMIT"] + " (from INTERP_GIT_COMMIT)"
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout
        files = [line[3:] for line in dirty.splitlines() if line.strip()]
        return sha + (f" (uncommitted changes in {', '.join(files[:8])}{', ...' if len(files) > 8 else ''})"
                      if files else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
