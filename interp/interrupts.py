"""The one line a command prints on Ctrl-C or SIGTERM (the `interp` CLI and the experiment scripts alike)."""
from __future__ import annotations

import contextlib
import signal
import sys
import threading

INTERRUPTED = "interrupted; run again to resume"
REDO = "interrupted; run again to redo it (this command does not resume)"   # commands with ``resumes=False``


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop, ``timeout``, ``docker stop``) raised where Ctrl-C's KeyboardInterrupt would be,
    so that the same clean-up runs and the same line is printed; the command then exits with 143, not 130."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def sigterm_interrupts():
    """Within: SIGTERM raises `Terminated` in the main thread (elsewhere, or where SIGTERM is ignored: unchanged);
    the previous handler is restored on leaving."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) in (signal.SIG_IGN, None):   # (None: a handler not set from Python)
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def exit_code(e: BaseException) -> int:
    """143 for SIGTERM (`Terminated`), 130 for Ctrl-C: the shell's codes for those signals."""
    return 143 if isinstance(e, Terminated) else 130


def interrupted(line: str = INTERRUPTED, e: BaseException | None = None) -> None:
    """Ctrl-C's (or SIGTERM's: ``e`` a `Terminated`) one line on stderr, on a line of its own where a progress bar
    was drawing."""
    from tqdm import tqdm
    if isinstance(e, Terminated):
        line = line.replace("interrupted", "terminated (SIGTERM)", 1)
    print(("\n" if getattr(tqdm, "_instances", None) else "") + line, file=sys.stderr)
