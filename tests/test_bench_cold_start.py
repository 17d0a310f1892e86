"""bench/bench_cold_start.py: each mode gets its own empty Triton cache, shared by its cold and warm runs; the ieee
mode (and only it) asks for IEEE products; a run past --limit is reported as such; a real CPU run reports exit 0."""
import subprocess

import pytest

from bench_scripts import load  # tests/, a sibling


def test_modes_caches_and_limits(monkeypatch, capsys):
    seen, real = [], subprocess.run

    def fake_run(cmd, env=None, **kw):
        if env is None:                                             # git, for the commit line
            return real(cmd, **kw)
        seen.append((cmd, env))
        if len(seen) == 4:
            raise subprocess.TimeoutExpired(cmd, kw["timeout"])
        return subprocess.CompletedProcess(cmd, 3, "wrote x\n 50%|#####     | 1/2\n", "")

    bench = load("bench_cold_start")
    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    monkeypatch.setenv("HYBRID_INTERP_FLA_IEEE", "1")           # the caller's setting must not leak into default
    bench.main(["--args", "capture --n 4", "--modes", "default,ieee", "--warm", "1", "--limit", "7"])
    caches = [env["TRITON_CACHE_DIR"] for _, env in seen]
    assert caches[0] == caches[1] != caches[2] == caches[3]
    assert [env.get("HYBRID_INTERP_FLA_IEEE") for _, env in seen] == [None, None, "1", "1"]
    assert seen[0][0][-4:-2] == ["--n", "4"] and seen[0][0][-2] == "--out" and seen[0][0][-1] != seen[1][0][-1]
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| default") or ln.startswith("| ieee")]
    assert [r.split("|")[5].strip() for r in rows] == ["3", "3", "3", "killed"]
    assert rows[0].split("|")[6].strip() == "wrote x"                 # the progress bar is left out
    assert rows[3].split("|")[4].strip() == "> 7"


def test_bad_modes_are_refused():
    with pytest.raises(SystemExit, match="--modes 'fast'.*valid: modes of default, ieee"):
        load("bench_cold_start").main(["--modes", "fast"])


def test_a_real_run_on_the_cpu(capsys):
    load("bench_cold_start").main(["--args", "capture --model transformer --task mqar --n 4 --device cpu",
                                   "--modes", "default", "--warm", "0"])
    row = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| default")]
    assert len(row) == 1 and row[0].split("|")[5].strip() == "0" and float(row[0].split("|")[4]) > 0
