"""The writer lock of a result or run folder: ``<folder>/.lock``, refused while its writer runs, taken over once it
has exited (also as a zombie that its parent has not reaped yet)."""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from interp import InterpError

LOCK = ".lock"


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host. One that has exited but is not yet reaped (a zombie, state Z in
    Linux's /proc) does not; without /proc, `os.kill`'s answer stands."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except ProcessLookupError:
        return False
    except FileNotFoundError:   # gone since os.kill where /proc exists, or no /proc here
        return not os.path.isdir("/proc/self")
    except OSError:             # exists, owned by someone else
        return True


class Lock:
    """``<folder>/<name>`` (``.lock``) guarding ``what`` (the folder): created whole or not at all (a hard link of a written temp file, the
    O_EXCL of file systems with content), holding pid, host and time."""

    def __init__(self, folder: Path, name: str = LOCK, what: Path | None = None):
        self.path, self.held = Path(folder) / name, False
        self.what = Path(folder) if what is None else Path(what)   # what the refusal names as being written
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}

    def acquire(self):
        tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.info) + "\n")
        try:
            for _ in range(20):
                try:
                    os.link(tmp, self.path)
                    self.held = True
                    return
                except FileExistsError:
                    self._take_over_or_refuse()
        finally:
            tmp.unlink(missing_ok=True)
        raise InterpError(f"could not take the lock {self.path}: other processes keep taking it")

    def _read(self):
        text = ""
        try:
            text = self.path.read_text()
            info = json.loads(text)
        except FileNotFoundError:
            return None, ""
        except json.JSONDecodeError:
            return {}, text
        return (info if isinstance(info, dict) and "pid" in info else {}), text

    def _take_over_or_refuse(self):
        info, text = self._read()
        if info is None:  # released meanwhile: try again
            return
        pid, host = info.get("pid"), info.get("host")
        if not (isinstance(pid, int) and host == socket.gethostname() and not alive(pid)):
            who = f"pid {pid} on {host} since {info.get('time')}" if info else "an unknown writer"
            raise InterpError(f"{self.what} is being written by {who}; a second writer is refused. "
                              f"If no such process runs, delete {self.path}")
        # stale: move it aside under a name of our own (one taker wins the rename), then check
        # that what we moved is the stale lock and not a fresh one another taker just made
        mine = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        try:
            os.replace(self.path, mine)
        except FileNotFoundError:
            return
        if mine.read_text() != text:
            os.replace(mine, self.path)
        else:
            mine.unlink()

    def release(self):
        if self.held:
            info, _ = self._read()
            if info and info.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False
