"""Issue 18 for patching: a sweep's folder is an interp.store result (one file per unit and per pair
chunk's baselines, atomic, spec-checked, locked). A process killed inside a unit write, inside a
baseline write or between units resumes to exactly the uninterrupted result; a second sweep into a
folder being written is refused; other settings (batch size, seed, ...) are refused naming the
field; old units.csv folders are refused with how to re-run."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from interp import InterpError, patching
from interp import tasks as T
from interp.store import load_unit
from interp.tasks import VOCAB
from interp.zoo import HybridLM, ZooConfig, load_model, save_model

ROOT = Path(__file__).resolve().parents[1]
KW = dict(sites=["resid_pre", "rec.state"], positions=[2, 5, 9, 12], batch_size=4, direction="both",
          keep_all=True, progress=False)       # 8 pairs -> 2 pair chunks; 7 units x 2 directions per chunk
RUN = ("import sys, torch\ntorch.set_num_threads(1)\nfrom interp import patching, tasks\n"
       "from interp.zoo import load_model\n{prelude}"
       "p = tasks.make_pairs('mqar', 8, seed=0, n_pairs=4)\n"
       f"patching.sweep(load_model(sys.argv[1]), p, out=sys.argv[2], **{KW!r})\n")


def small_model(path):
    torch.manual_seed(0)
    cfg = ZooConfig(vocab_size=len(VOCAB), d_model=32, n_layers=4, layout="gdn75", n_heads=2, head_dim=16)
    m = HybridLM(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(4.0) if p.dim() > 1 else None
    save_model(m, path)


def pairs(seed=0):
    return T.make_pairs("mqar", 8, seed=seed, n_pairs=4)


def run_sweep(model_dir, out, env=None, prelude=""):
    """The sweep of RUN in a fresh process (one thread); returns the finished process."""
    return subprocess.run([sys.executable, "-c", RUN.replace("{prelude}", prelude), str(model_dir), str(out)],
                          env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


def files(d):
    """{relative path: bytes} of every file under ``d`` (the lock aside)."""
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(Path(d).rglob("*"))
            if p.is_file() and p.name != ".lock"}


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture
def ref(tmp_path, one_thread):
    small_model(tmp_path / "model")
    res = patching.sweep(load_model(tmp_path / "model"), pairs(), out=tmp_path / "ref", **KW)
    got = files(tmp_path / "ref")
    assert len([f for f in got if f.startswith("units/")]) == 2 + 2 * 2 * 7
    return res, got


@pytest.mark.parametrize("kill", ["write:denoise.chunk=*:3", "replace:noise.chunk=*:2", "write:base.chunk=*:2",
                                  "after:denoise.chunk=*:4", "write:spec.json:1"])
def test_killed_sweep_resumes_bit_for_bit(tmp_path, ref, kill):
    """SIGKILL inside a unit write, with a unit written but not renamed, inside the second chunk's
    baseline write, between two units, in the spec write: every unit file left loads, and the
    resumed sweep's result and files equal an uninterrupted run's exactly."""
    out = tmp_path / "sweep"
    r = run_sweep(tmp_path / "model", out, env={"INTERP_STORE_KILL": kill})
    assert r.returncode == -9, r.stderr[-2000:]
    for f in (out / "units").glob("*.safetensors") if (out / "units").is_dir() else ():
        load_unit(f)
    res = patching.sweep(load_model(tmp_path / "model"), pairs(), out=out, **KW)
    pd.testing.assert_frame_equal(res, ref[0], check_exact=True)
    assert res.attrs == ref[0].attrs
    assert files(out) == ref[1]


def test_second_sweep_into_one_out_is_refused(tmp_path, ref):
    """A sweep runs (held inside its first forward) while a second starts into the same folder:
    the second is refused; once the first process is gone its lock is taken over."""
    hold = ("import hooks, time\n"
            "def held(*a, **k):\n    print('running', flush=True)\n    time.sleep(300)\n"
            "hooks.HookedModel.__call__ = held\n")
    p = subprocess.Popen([sys.executable, "-c", RUN.replace("{prelude}", hold), str(tmp_path / "model"),
                          str(tmp_path / "s")], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert p.stdout.readline().strip() == "running"
        with pytest.raises(InterpError, match=f"s is being written by pid {p.pid} .*a second writer is refused"):
            patching.sweep(load_model(tmp_path / "model"), pairs(), out=tmp_path / "s", **KW)
    finally:
        p.kill()
        p.wait()
    res = patching.sweep(load_model(tmp_path / "model"), pairs(), out=tmp_path / "s", **KW)
    pd.testing.assert_frame_equal(res, ref[0], check_exact=True)


def test_other_settings_refused_naming_the_field(tmp_path, ref):
    m, out = load_model(tmp_path / "model"), tmp_path / "ref"
    before = files(out)
    for change, field in [(dict(batch_size=3), "batch_size: 4 -> 3"), (dict(direction="denoise"), 'direction: "both"'),
                          (dict(positions=[2, 5]), "positions: [2, 5, 9, 12] -> [2, 5]")]:
        with pytest.raises(InterpError, match="made with other settings") as e:
            patching.sweep(m, pairs(), out=out, **{**KW, **change})
        assert field in str(e.value) and "--overwrite" in str(e.value), str(e.value)
    with pytest.raises(InterpError, match=r"pairs.seed: 0 -> 1"):
        patching.sweep(m, pairs(seed=1), out=out, **KW)
    torch.manual_seed(1)
    other = HybridLM(ZooConfig(vocab_size=len(VOCAB), d_model=32, n_layers=4, layout="gdn75", n_heads=2,
                               head_dim=16)).eval()
    with pytest.raises(InterpError, match="model.digest: "):
        patching.sweep(other, pairs(), out=out, **KW)
    assert files(out) == before                     # nothing written
    res = patching.sweep(m, pairs(), out=out, overwrite=True, **{**KW, "batch_size": 3})
    fresh = patching.sweep(m, pairs(), **{**KW, "batch_size": 3})
    pd.testing.assert_frame_equal(res, fresh, check_exact=True)


def test_old_units_csv_folder_is_refused(tmp_path, one_thread):
    small_model(tmp_path / "model")
    old = tmp_path / "old"
    old.mkdir()
    (old / "units.csv").write_text("chunk,unit,site,layer,position,head,ld,prob,kl,n\n"
                                   "0,0,resid_pre,0,2,-1,1.0,0.5,0.1,4\n")
    (old / "baselines.csv").write_text("chunk,clean_ld,n\n0,3.0,4\n")
    m = load_model(tmp_path / "model")
    with pytest.raises(InterpError, match=r"without a spec.json .*re-run with --overwrite .*or use a new --out"):
        patching.sweep(m, pairs(), out=old, **KW)
    res = patching.sweep(m, pairs(), out=old, overwrite=True, **KW)
    assert not (old / "units.csv").exists() and len(res) == 2 * 7 * 4


def cli_sweep(tmp_path) -> list:
    """The `interp patch` arguments of a small sweep of a model saved under ``tmp_path`` into ``tmp_path/o``."""
    small_model(tmp_path / "model")
    return ["patch", "--model", str(tmp_path / "model"), "--knob", "n_pairs=4", "--n", "6", "--site", "resid_pre",
            "--positions", "2:6", "--keep-all", "--batch-size", "4", "--out", str(tmp_path / "o")]


def test_cli_refuses_other_settings_and_overwrites(tmp_path, capsys, one_thread):
    from interp.cli import main
    base = cli_sweep(tmp_path)
    assert main(base) == 0
    first = files(tmp_path / "o")
    assert "model_mqar.csv" in first and "model_mqar.json" in first and ".units/model_mqar/spec.json" in first
    capsys.readouterr()
    for extra, field in [(["--batch-size", "3"], "batch_size: 4 -> 3"), (["--seed", "1"], "pairs.seed: 0 -> 1"),
                         (["--direction", "noise"], 'direction: "both" -> "noise"')]:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and field in err and "--overwrite" in err, err
    assert files(tmp_path / "o") == first
    assert main(base + ["--batch-size", "3", "--overwrite"]) == 0
    a, b = (patching.read_csv_exact(tmp_path / "o" / "model_mqar.csv"), pd.read_csv(pd.io.common.StringIO(
        first["model_mqar.csv"].decode())))
    pd.testing.assert_frame_equal(a[["site", "position"]], b[["site", "position"]])


def test_cli_overwrite_stopped_midway_leaves_no_old_outputs(tmp_path, capsys, one_thread, monkeypatch):
    """A stopped --overwrite call left the old settings' CSV/JSON/PNG beside the new settings' spec (the files read
    as results of the new call); now they go with the old units."""
    from interp.cli import main
    from interp.store import Store
    base = cli_sweep(tmp_path)
    assert main(base) == 0 and (tmp_path / "o" / "model_mqar.csv").is_file()

    def stop(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(Store, "put", stop)
    assert main(base + ["--seed", "1", "--overwrite"]) == 130
    capsys.readouterr()
    left = files(tmp_path / "o")
    assert not [f for f in left if f.startswith("model_mqar")], left
    assert '"seed": 1' in left[".units/model_mqar/spec.json"].decode()


def test_cli_overwrite_refused_by_a_running_sweep_keeps_the_outputs(tmp_path, capsys, one_thread):
    """--overwrite deleted the old outputs before the sweep's lock refused it (another sweep of that name running)."""
    from interp.cli import main
    from interp.lock import Lock
    base = cli_sweep(tmp_path)
    assert main(base) == 0
    before = files(tmp_path / "o")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = Lock(patching.units_dir(tmp_path / "o", "model_mqar"))
        lock.info["pid"] = other.pid                     # a live writer of that name
        lock.acquire()
        capsys.readouterr()
        assert main(base + ["--seed", "1", "--overwrite"]) == 2
        assert "model_mqar" in capsys.readouterr().err
        assert {k: v for k, v in files(tmp_path / "o").items() if not k.endswith(".lock")} == before
    finally:
        other.kill()
