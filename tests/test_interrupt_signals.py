"""SIGTERM acts as Ctrl-C (one line, exit 143, no traceback), and spawned training workers stop with their parent:
at once when it is terminated, and on their own when it is killed with SIGKILL (they ran on as orphans)."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def wait_for(cond, timeout=120.0, what=""):
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def test_sigterm_during_train_is_one_line_and_exit_143(tmp_path):
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "interp.cli", "train", "--out", str(out), "--layout", "gdn50",
                          "--d-model", "16", "--n-layers", "2", "--n-heads", "2", "--head-dim", "8", "--steps",
                          "100000", "--batch-size", "2", "--eval-every", "1", "--device", "cpu"],
                         env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (out / "train_log.jsonl").is_file() or p.poll() is not None, what="training to start")
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "terminated (SIGTERM); run again to resume", err


SCRIPT = textwrap.dedent('''
    import os, sys, time
    from pathlib import Path
    from interp.interrupts import exit_code, sigterm_interrupts
    from interp.workers import spawn_pool

    def job(folder):
        Path(folder, "worker.pid").write_text(str(os.getpid()))
        time.sleep(300)

    if __name__ == "__main__":
        try:
            with sigterm_interrupts(), spawn_pool(1) as ex:
                f = ex.submit(job, sys.argv[1])
                f.result()
        except KeyboardInterrupt as e:
            sys.exit(exit_code(e))
''')


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_spawned_workers_stop_with_their_parent(tmp_path, sig):
    (tmp_path / "parent.py").write_text(SCRIPT)
    p = subprocess.Popen([sys.executable, str(tmp_path / "parent.py"), str(tmp_path)], env=ENV)
    pid_file = tmp_path / "worker.pid"
    wait_for(lambda: pid_file.is_file() and pid_file.read_text(), what="the worker to start")
    worker = int(pid_file.read_text())
    t0 = time.time()
    p.send_signal(sig)
    assert p.wait(timeout=60) == (143 if sig == signal.SIGTERM else -9)
    wait_for(lambda: not alive(worker), timeout=30, what=f"worker {worker} to exit")
    assert time.time() - t0 < 60          # (the job would have slept 300 s)
