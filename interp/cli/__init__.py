"""The `interp` command line. Every user error prints one line `error: ...` and exits with 2.

One module per command (train, evaluate, capture, probe, patch, demo, run), each with its
``add_parser(sub)`` and ``cmd_*``; the options they share are in `interp.cli.options`."""
from __future__ import annotations

import argparse
import sys

from interp import InterpError
from interp.cli import capture, das, demo, evaluate, intervene, patch, probe, run, train


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="interp", description="hybrid-interp: where recall and state "
                                "tracking live inside hybrid (attention + recurrence) models")
    sub = p.add_subparsers(dest="cmd", required=True)
    for command in (train, evaluate, capture, probe, patch, intervene, das, demo, run):
        command.add_parser(sub)
    return p


def main(argv=None) -> int:
    from interp.tasks import TaskError
    from hooks.names import HookNameError
    try:
        args = build_parser().parse_args(argv)
        rc = args.func(args)
    except (InterpError, TaskError, HookNameError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if "interp.distributed" in sys.modules:  # leave a torchrun process group cleanly
            sys.modules["interp.distributed"].shutdown()
    return rc if isinstance(rc, int) else 0
