"""The one line a command prints on Ctrl-C (the `interp` CLI and the experiment scripts alike)."""
from __future__ import annotations

import sys

INTERRUPTED = "interrupted; run again to resume"
REDO = "interrupted; run again to redo it (this command does not resume)"   # commands with ``resumes=False``


def interrupted(line: str = INTERRUPTED) -> None:
    """Ctrl-C's one line on stderr, on a line of its own where a progress bar was drawing."""
    from tqdm import tqdm
    print(("\n" if getattr(tqdm, "_instances", None) else "") + line, file=sys.stderr)
