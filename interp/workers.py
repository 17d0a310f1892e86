"""Spawned worker pools that stop with their parent: on its Ctrl-C or SIGTERM, and when it dies (``kill -9``)."""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing as mp
import os
import threading
import time

WATCH_S = 1.0   # how often a worker looks whether its parent is still there


def _watch_parent(ppid: int) -> None:
    """In a worker: exit at once (no clean-up; its outputs are written atomically and a lock of a dead process is
    taken over) once the process that started it is gone, instead of running on as an orphan."""
    def watch():
        while True:
            time.sleep(WATCH_S)
            if os.getppid() != ppid:
                os._exit(1)
    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


@contextlib.contextmanager
def spawn_pool(workers: int):
    """A ``ProcessPoolExecutor`` of ``workers`` spawned processes whose workers exit when the parent dies, and
    which an exception in the ``with`` body (Ctrl-C, `interp.interrupts.Terminated`) ends at once: its workers
    are terminated and queued jobs cancelled, instead of waiting for the running jobs to finish."""
    ex = cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                initializer=_watch_parent, initargs=(os.getpid(),))
    try:
        yield ex
    except BaseException:
        for p in list((getattr(ex, "_processes", None) or {}).values()):
            p.terminate()
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown(wait=True)
