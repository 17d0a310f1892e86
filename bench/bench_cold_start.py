"""A command's first-call cost: an empty Triton cache against a warm one, with and without IEEE fp32 products in fla.

    python bench/bench_cold_start.py        # `interp capture` of gdn75's states, modes default and ieee
    python bench/bench_cold_start.py --args "patch --model gdn75 --task mqar --n 16 --layer 1,3" --limit 280

For each mode (default: fla's kernels as shipped; ieee: ``HYBRID_INTERP_FLA_IEEE=1``, every fp32 product of
fla's kernels in IEEE fp32, `hooks.scan.fla_precision`) the command runs in child processes
(``python -m interp.cli ARGS --out DIR``), each into a fresh ``--out``, with a fresh ``TRITON_CACHE_DIR`` per
mode: ``cold`` first (an empty cache: Triton compiles every kernel the command meets and fla autotunes them),
then ``--warm`` more runs on that cache (compiled kernels are read from disk; fla's autotuning is kept per
process, so it runs again). Reported per run: wall seconds from start to exit, or "> LIMIT" when the run was
stopped at ``--limit`` seconds (then the mode's warm runs start on what the cold run had cached), and the exit
status. The first line gives the device, date, command and commit.
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = {"default": {}, "ieee": {"HYBRID_INTERP_FLA_IEEE": "1"}}
ARGS = "capture --model gdn75 --task mqar --n 64 --device cuda"   # every resid_post and rec.state


def run_once(args: list, out: Path, env: dict, limit: float) -> tuple:
    """(seconds, exit status, last line of output) of one child run; seconds is None when it ran past ``limit``."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "interp.cli", *args, "--out", str(out)], env=env,
                           capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return None, "killed", ""
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip() and not re.search(r"\d%\|", ln)]
    return time.perf_counter() - t0, p.returncode, lines[-1][:120] if lines else ""   # progress bars left out


def device_name() -> str:
    import torch
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU ({os.cpu_count()} cores), torch {torch.__version__}"


def main(argv=None):
    from interp.experiment.context import git_commit
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--args", default=ARGS, help=f"the `interp` command's arguments, without --out (default: {ARGS})")
    ap.add_argument("--modes", default="default,ieee", help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--warm", type=int, default=1, help="runs on the warm cache after the cold one, per mode")
    ap.add_argument("--limit", type=float, default=300.0, help="seconds one run may take before it is stopped")
    a = ap.parse_args(argv)
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes or a.warm < 0 or not a.limit > 0:
        sys.exit(f"bench_cold_start: --modes {a.modes!r} / --warm {a.warm} / --limit {a.limit} is not valid; "
                 f"valid: modes of {', '.join(MODES)}, --warm >= 0, --limit > 0")
    args = shlex.split(a.args)
    print(f"device: {device_name()}, date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}"
          f", commit: {git_commit()}")
    print(f"command: python bench/bench_cold_start.py {shlex.join(argv if argv is not None else sys.argv[1:])}")
    print(f"runs: python -m interp.cli {shlex.join(args)} --out DIR\n")
    print("| mode | run | Triton cache | seconds | exit | last line |\n|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="cold_start_") as tmp:
        for mode in modes:
            cache = Path(tmp) / f"triton_{mode}"
            env = {**{k: v for k, v in os.environ.items() if k not in ("HYBRID_INTERP_FLA_IEEE",)},
                   "TRITON_CACHE_DIR": str(cache), **MODES[mode]}
            for i in range(1 + a.warm):
                s, rc, last = run_once(args, Path(tmp) / f"{mode}_{i}", env, a.limit)
                secs = f"> {a.limit:.0f}" if s is None else f"{s:.1f}"
                print(f"| {mode} | {'cold' if i == 0 else f'warm {i}'} | {'empty' if i == 0 else 'warm'} | {secs} "
                      f"| {rc} | {last.replace('|', '/')} |", flush=True)


if __name__ == "__main__":
    main()
