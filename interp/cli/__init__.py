"""The `interp` command line. Every user error prints one line `error: ...` and exits with 2.

One module per command (train, eval, capture, probe, patch, patterns, intervene, das, generate, sae, demo, run), each with
its ``add_parser(sub)`` and ``cmd_*``; the options they share are in `interp.cli.options`. The
parser class here gives every command's help the defaults of its options and turns argparse's
usage errors into the same one line (exit 2); Ctrl-C (SIGTERM) prints one line and exits with 130 (143); warnings
print as one line ``warning: ...`` on stderr (above any progress bar)."""
from __future__ import annotations

import argparse
import sys
import warnings

from interp import InterpError
from interp.interrupts import INTERRUPTED, REDO, exit_code, interrupted, sigterm_interrupts
from interp.cli import capture, das, demo, evaluate, generate, intervene, patch, patterns, probe, run, sae, train


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless the help already says it or there is
    none to say (no default, a flag that is off)."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if (d is None or d is False or d is argparse.SUPPRESS or "%(default)" in text or "(default" in text
                or "default:" in text):
            return text
        return f"{text} (default: %(default)s)".strip()


class Parser(argparse.ArgumentParser):
    """`interp`'s parser (and, through add_subparsers, every command's): defaults in the help,
    an option without help text still shows its default, and a usage error is one line on
    stderr (``error: interp <cmd>: ...``, exit 2) instead of the usage block."""

    def __init__(self, *args, **kw):
        kw.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kw)

    def add_argument(self, *args, **kw):
        action = super().add_argument(*args, **kw)
        if action.option_strings and action.help is None and action.default is not None and action.default is not False:
            action.help = "(default: %(default)s)"
        return action

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="interp", description="hybrid-interp: where recall and state "
               "tracking live inside hybrid (attention + recurrence) models")
    sub = p.add_subparsers(dest="cmd", required=True)
    for command in (train, evaluate, capture, probe, patch, patterns, intervene, das, generate, sae, demo, run):
        command.add_parser(sub)
    return p


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """A warning as one line on stderr (above a progress bar), like the CLI's errors."""
    from tqdm.auto import tqdm
    tqdm.write(f"warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    try:    # a Ctrl-C while the error types' modules import is an interruption too
        from interp.tasks import TaskError
        from hooks.names import HookError
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    args = None
    try:
        args = build_parser().parse_args(argv)
        with warnings.catch_warnings(), sigterm_interrupts():   # SIGTERM: as Ctrl-C, exit 143
            warnings.showwarning = _show_warning
            rc = args.func(args)
    except (InterpError, TaskError, HookError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        interrupted(INTERRUPTED if getattr(args, "resumes", True) else REDO, e)
        return exit_code(e)
    except OSError as e:  # a file system refusal the commands did not foresee (disk full, permissions)
        where = f" '{e.filename}'" if e.filename else ""
        print(f"error: cannot use{where}: {e.strerror or e}; valid: a readable input / writable output path",
              file=sys.stderr)
        return 2
    finally:
        if "interp.distributed" in sys.modules:  # leave a torchrun process group cleanly
            sys.modules["interp.distributed"].shutdown()
    return rc if isinstance(rc, int) else 0
