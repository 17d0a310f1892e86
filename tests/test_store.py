"""interp.store (#18): a write killed at any point inside it leaves the old file or the new one;
units are complete or absent; a different spec is refused naming the fields; overwrite clears
only the store's files; the writer lock refuses a second process and takes over a dead one's."""
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from interp import InterpError
from interp import store as S
from interp.store import Store

ROOT = Path(__file__).resolve().parents[1]

# payload i (0: old, 1: new) of each writer, built the same way in the killed process and here
PAYLOADS = """
import torch, pandas as pd
def payload(fmt, i):
    if fmt == "bytes":
        return bytes([65 + i]) * (1000 * (i + 1))
    if fmt == "json":
        return {"v": i, "pad": "x" * 1000 * i}
    if fmt == "safetensors":
        return {"t": torch.arange(100 * (i + 1), dtype=torch.float32) * (i + 1)}
    return pd.DataFrame({"a": list(range(10 * (i + 1))), "b": [0.1 * (i + 1)] * 10 * (i + 1)})
WRITE = {"bytes": S.atomic_write_bytes, "json": S.atomic_write_json, "safetensors": S.save_safetensors,
         "parquet": S.save_parquet, "csv": lambda p, df: S.save_csv(p, df, index=False)}
"""
ns = {"S": S}
exec(PAYLOADS, ns)
payload, WRITE = ns["payload"], ns["WRITE"]


def read(fmt, path):
    if fmt == "bytes":
        return path.read_bytes()
    if fmt == "json":
        return json.loads(path.read_text())
    if fmt == "safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    return pd.read_parquet(path) if fmt == "parquet" else pd.read_csv(path)


def same(fmt, a, b):
    if fmt == "safetensors":
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if fmt in ("parquet", "csv"):
        return a.equals(b)
    return a == b


def run_killed(code, env):
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == -9, (r.returncode, r.stderr[-2000:])


@pytest.mark.parametrize("fmt,point", [("bytes", "write"), ("bytes", "replace"), ("bytes", "after"),
                                       ("json", "write"), ("safetensors", "write"), ("parquet", "write"),
                                       ("csv", "after")])
def test_write_killed_inside_leaves_old_or_new(tmp_path, fmt, point):
    """The process writes a file, then overwrites it and is SIGKILLed inside the second write:
    the file is the old one (killed while writing or before the rename) or the new one (after)."""
    d = tmp_path / "w"
    d.mkdir()
    f = d / f"target.{fmt}"
    code = (f"from interp import store as S\n{PAYLOADS}\n"
            f"for i in (0, 1):\n    WRITE[{fmt!r}]({str(f)!r}, payload({fmt!r}, i))\n")
    run_killed(code, {S.KILL_ENV: f"{point}:target.*:2"})
    left = [p for p in d.iterdir() if p != f]
    if point == "after":
        assert left == []
    else:   # the killed write's temporary file; the folder's next opener removes it
        assert len(left) == 1 and S.is_temp(left[0]) and left[0].name.startswith(f.name + ".tmp-")
    want = payload(fmt, 1 if point == "after" else 0)
    assert same(fmt, read(fmt, f), read(fmt, _written(tmp_path / f"ref.{fmt}", fmt, want)))


def _written(path, fmt, obj):
    WRITE[fmt](path, obj)
    return path


def test_failed_write_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    f = S.atomic_write_json(tmp_path / "m.json", {"v": 1})

    def boom(*a):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        S.atomic_write_json(f, {"v": 2})
    monkeypatch.undo()
    assert json.loads(f.read_text()) == {"v": 1} and [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_unit_killed_inside_write_is_absent_and_cleaned(tmp_path):
    d = tmp_path / "r"
    code = ("from interp.store import Store\n"
            f"with Store({str(d)!r}, 'k', {{'a': 1}}) as st:\n"
            "    st.put('u0', {'v': 0}); st.put('u1', {'v': 1, 'pad': 'x' * 5000})\n")
    run_killed(code, {S.KILL_ENV: "write:u1.json:1"})
    assert any(S.is_temp(p) for p in (d / "units").iterdir()) and (d / ".lock").is_file()
    with Store(d, "k", {"a": 1}) as st:   # the dead writer's lock is taken over, its temp file removed
        assert st.keys() == ["u0"] and not st.has("u1") and st.get("u0") == {"v": 0}
        assert sorted(p.name for p in (d / "units").iterdir()) == ["u0.json"]
        st.put("u1", {"v": 1})
        assert st.keys() == ["u0", "u1"]
    assert not (d / ".lock").exists()


# --- specs ------------------------------------------------------------------------------------------
SPEC = {"model": {"name": "m", "digest": "a" * 16}, "source": {"task": "mqar", "seed": 0}, "names": ["x", "y"],
        "positions": (1, 2)}


def test_spec_mismatch_names_the_fields(tmp_path):
    d = tmp_path / "r"
    with Store(d, "capture", SPEC) as st:
        st.put("u", {"v": 1})
    head = json.loads((d / "spec.json").read_text())
    assert head == {"kind": "capture", "format": S.FORMAT, "spec": S.normalize(SPEC)}
    with Store(d, "capture", {**SPEC, "positions": [1, 2]}) as st:   # the same spec (tuple = list): resumes
        assert st.get("u") == {"v": 1}
    other = {**SPEC, "model": {"name": "m", "digest": "b" * 16}, "source": {"task": "mqar", "seed": 1, "n": 5},
             "names": ["x", "y" * 100]}
    with pytest.raises(InterpError) as e:
        Store(d, "capture", other).open()
    msg = str(e.value)
    assert f'model.digest: "{"a" * 16}" -> "{"b" * 16}"' in msg and "source.seed: 0 -> 1" in msg
    assert "source.n: (absent) -> 5" in msg and 'names: ["x", "y"] -> ["x", "yyyy' in msg and "..." in msg
    assert "positions" not in msg and "model.name" not in msg and "source.task" not in msg
    assert "--overwrite" in msg and "new --out" in msg
    assert not (d / ".lock").exists()          # a refused open leaves no lock behind
    with pytest.raises(InterpError, match="holds a capture result, not a probe; use a new --out"):
        Store(d, "probe", SPEC).open()
    (d / "spec.json").write_text(json.dumps({**head, "format": 99}))
    with pytest.raises(InterpError, match="result format 99.*--overwrite"):
        Store(d, "capture", SPEC).open()
    (d / "spec.json").write_text('{"kind": "capt')              # damaged (by hand)
    with pytest.raises(InterpError, match=r"spec.json is damaged .*delete it"):
        Store(d, "capture", SPEC).open()


def test_folder_with_only_a_spec_takes_a_new_one(tmp_path):
    """Nothing was written under the old spec (a run that failed at once): nothing can mix."""
    Store(tmp_path, "capture", SPEC).open().close()
    with Store(tmp_path, "capture", {**SPEC, "names": ["z"]}):
        pass
    assert S.read_spec(tmp_path)["spec"]["names"] == ["z"]


def test_overwrite_clears_only_the_stores_files(tmp_path):
    owns = ("manifest.json", "rank[0-9]*/")
    with Store(tmp_path, "capture", SPEC, owns=owns) as st:
        st.put("u", {"v": 1})
        S.atomic_write_json(tmp_path / "manifest.json", {"shards": []})
        with Store(S.part_folder(tmp_path, 0), "capture", SPEC) as part:   # a distributed run's part (marked)
            part.put("x", {"v": 2})
    with Store(tmp_path / "rank7", "capture", SPEC):   # a user's own result nested here: not a part
        pass
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "ranking").mkdir()
    (tmp_path / "rank1_notes.txt").write_text("mine too")   # the user's, though the glob matches them
    (tmp_path / "rank2023").mkdir()
    (tmp_path / "rank2023" / "paper.tex").write_text("mine")
    new = {**SPEC, "source": {"seed": 7}}
    with pytest.raises(InterpError, match="source.seed"):
        Store(tmp_path, "capture", new, owns=owns).open()
    with Store(tmp_path, "capture", new, owns=owns, overwrite=True) as st:
        assert st.keys() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "rank1_notes.txt", "rank2023", "rank7",
                                                          "ranking", "spec.json", "units"]
    assert (tmp_path / "rank2023" / "paper.tex").read_text() == "mine"
    assert S.read_spec(tmp_path)["spec"]["source"] == {"seed": 7}


def test_overwrite_never_replaces_another_commands_result_or_a_foreign_spec(tmp_path):
    """--overwrite replaces a result of its own kind only: a capture folder given to another command, or a folder
    whose spec.json is someone else's, is refused either way and left as it is."""
    cap = tmp_path / "cap"
    with Store(cap, "capture", SPEC, owns=("manifest.json",)) as st:
        st.put("u", {"v": 1})
        S.atomic_write_json(cap / "manifest.json", {"shards": []})
    before = sorted(str(p.relative_to(cap)) for p in cap.rglob("*"))
    with pytest.raises(InterpError, match="holds a capture result, not a generate, so --overwrite"):
        Store(cap, "generate", SPEC, overwrite=True).open()
    assert sorted(str(p.relative_to(cap)) for p in cap.rglob("*")) == before and not (cap / ".lock").exists()
    user = tmp_path / "user"
    (user / "units").mkdir(parents=True)
    (user / "units" / "data.txt").write_text("mine")
    for text in ('{"mine": 1}', "not json"):
        (user / "spec.json").write_text(text)
        with pytest.raises(InterpError, match="spec.json is not a result spec, so --overwrite .* does not replace"):
            Store(user, "generate", SPEC, overwrite=True).open()
        assert (user / "spec.json").read_text() == text and (user / "units" / "data.txt").read_text() == "mine"


def test_old_format_folder_is_refused_with_how_to_rerun(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(InterpError, match=r"without a spec.json \(manifest.json\).*--overwrite.*new --out"):
        Store(tmp_path, "capture", SPEC, owns=("manifest.json",)).open()
    with Store(tmp_path, "capture", SPEC, owns=("manifest.json",), overwrite=True):
        pass
    assert not (tmp_path / "manifest.json").exists()


# --- the lock -----------------------------------------------------------------------------------------
def test_lock_refuses_a_second_writer_and_takes_over_a_dead_ones(tmp_path):
    d = tmp_path / "r"
    code = ("import time\nfrom interp.store import Store\n"
            f"with Store({str(d)!r}, 'k', {{'a': 1}}):\n    print('held', flush=True)\n    time.sleep(300)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(InterpError, match=rf"r is being written by pid {p.pid} on {re.escape(socket.gethostname())} since "
                                              rf"[-0-9: ]+; a second writer is refused. If no such process runs, "
                                              rf"delete .*\.lock"):
            Store(d, "k", {"a": 1}).open()
    finally:
        p.kill()
        p.wait()
    with Store(d, "k", {"a": 1}):   # its writer is gone: the lock is taken over
        assert json.loads((d / ".lock").read_text())["pid"] == os.getpid()
        with pytest.raises(InterpError, match=f"pid {os.getpid()}"):   # also within one process
            Store(d, "k", {"a": 1}).open()
    assert not (d / ".lock").exists()


def test_lock_released_on_error_and_foreign_host_refused(tmp_path):
    with pytest.raises(RuntimeError):
        with Store(tmp_path, "k", {}):
            raise RuntimeError("inside")
    assert not (tmp_path / ".lock").exists()
    (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "time": "t"}))
    with pytest.raises(InterpError, match="pid 1 on elsewhere since t"):
        Store(tmp_path, "k", {}).open()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "time": "t"}))
    with Store(tmp_path, "k", {}):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.json", "units"]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="zombies are read from Linux's /proc")
def test_a_writer_that_exited_but_is_not_reaped_yet_holds_no_lock(tmp_path):
    from interp.lock import alive
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.time() + 60
        while open(f"/proc/{zombie.pid}/stat").read().rpartition(")")[2].split()[0] != "Z":
            assert time.time() < deadline
            time.sleep(0.05)
        assert not alive(zombie.pid) and alive(os.getpid())
        (tmp_path / ".lock").write_text(json.dumps({"pid": zombie.pid, "host": socket.gethostname(), "time": "t"}))
        with Store(tmp_path, "k", {}):
            assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    finally:
        zombie.wait()
    assert not alive(zombie.pid)


# --- units --------------------------------------------------------------------------------------------
def test_units_round_trip_exactly_with_readable_names(tmp_path):
    df = pd.DataFrame({"chunk": [0, 1], "x": [np.nextafter(0.1, 1), -0.0], "s": ["a", "b"]})
    t = {"w": torch.randn(3, 4, dtype=torch.bfloat16), "i": torch.arange(5)}
    long = "k" * 300
    keys = ["chunk=0/unit=3", "a b%c~", ".hidden", long]
    (tmp_path / "units").mkdir()
    (tmp_path / "units" / "u.json.tmp-99999999").write_text("{")      # a killed writer's
    with Store(tmp_path, "k", {}) as st:
        assert not (tmp_path / "units" / "u.json.tmp-99999999").exists()
        st.put(keys[0], df)
        st.put(keys[1], t)
        st.put(keys[2], {"v": [1, 2]})
        st.put(long, {"v": "long"})
        (st.units / "junk.json.tmp-123").write_text("{")   # ignored
        assert sorted(st.keys()) == sorted(keys)
        pd.testing.assert_frame_equal(st.get(keys[0]), df, check_exact=True)
        got = st.get(keys[1])
        assert all(torch.equal(got[k], t[k]) and got[k].dtype == t[k].dtype for k in t)
        assert st.get(keys[2]) == {"v": [1, 2]} and st.get(long) == {"v": "long"}
        with pytest.raises(KeyError):
            st.get("nope")
        st.put(keys[2], df)                                  # another type replaces the old file
        assert st.get(keys[2]).equals(df) and len(st.keys()) == 4
    names = sorted(p.name for p in (tmp_path / "units").iterdir())
    assert "chunk=0%2Funit=3.parquet" in names and "a%20b%25c%7E.safetensors" in names
    assert "%2Ehidden.parquet" in names and any(n.startswith("k" * 60 + "~") for n in names)
    assert "junk.json.tmp-123" in names and len(names) == 5
    with pytest.raises(InterpError, match="not open for writing"):
        st.put("x", {"v": 1})


@pytest.mark.parametrize("payload", [{"v": 1}, {"t": torch.ones(64)}, pd.DataFrame({"a": range(64)})])
def test_damaged_unit_raises_naming_the_file(tmp_path, payload):
    with Store(tmp_path, "k", {}) as st:
        f = st.put("u", payload)
    os.truncate(f, f.stat().st_size // 2)
    with pytest.raises(InterpError, match=rf"{f.name} is damaged \(.*\); delete it and run the same command again"):
        Store(tmp_path, "k", {}).get("u")
    with pytest.raises(InterpError, match="is missing"):
        S.load_unit(tmp_path / "units" / "gone.json")


def test_digests():
    from interp.zoo import HybridLM, ZooConfig
    cfg = ZooConfig(vocab_size=20, d_model=16, n_layers=4, layout="gdn75", n_heads=2, head_dim=8)
    torch.manual_seed(0)
    a = HybridLM(cfg)
    torch.manual_seed(0)
    b = HybridLM(cfg)
    assert S.model_digest(a) == S.model_digest(b) and len(S.model_digest(a)) == 16
    import hooks
    assert S.model_digest(hooks.wrap(a)) == S.model_digest(a)
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1e-7
    assert S.model_digest(a) != S.model_digest(b)
    assert S.model_digest(a) != S.model_digest(HybridLM(cfg).to(torch.bfloat16))
    x = torch.arange(6)
    assert S.tensor_digest(x) != S.tensor_digest(x.view(2, 3)) != S.tensor_digest(x.float())
    assert S.spec_digest({"a": (1, 2), "b": 1}) == S.spec_digest({"b": 1, "a": [1, 2]})


def test_a_knob_given_at_its_default_records_the_spec_of_one_left_out():
    from interp import tasks as T
    assert T.spec_knobs("mqar", {"n_pairs": T.knobs("mqar")["n_pairs"].default, "seq_len": 64}) == {"seq_len": 64}
    assert T.spec_knobs("mqar", None) == {}
    assert T.spec_knobs("mqar", {"n_pairs": 2}) == {"n_pairs": 2}


def test_a_long_spec_difference_is_summed_up():
    from interp.store import diff_summary
    diff = [f"f{i}: 0 -> 1" for i in range(8)]
    assert diff_summary(diff) == "; ".join(diff[:6]) + " (and 2 more)"
    assert diff_summary(diff[:2]) == "f0: 0 -> 1; f1: 0 -> 1"


def test_a_one_shot_output_being_written_is_named_in_the_refusal(tmp_path):
    from interp.oneshot import one_shot
    out = tmp_path / "res.csv"
    with one_shot(tmp_path / "res.csv.json", [out], {"a": 1}):
        with pytest.raises(InterpError, match=rf"^{re.escape(str(out))} is being written by pid {os.getpid()} "):
            with one_shot(tmp_path / "res.csv.json", [out], {"a": 1}):
                pass
        with one_shot(tmp_path / "other.csv.json", [tmp_path / "other.csv"], {"a": 1}):   # another output: free
            pass


def test_unit_files_get_the_mode_a_plain_open_gives(tmp_path):
    """safetensors makes its files 0600; a result's files all get the user's usual mode."""
    with Store(tmp_path, "k", {}) as st:
        st.put("t", {"w": torch.zeros(2)})
        st.put("j", {"v": 1})
    want = 0o666 & ~S._UMASK
    for f in (tmp_path / "units").iterdir():
        assert os.stat(f).st_mode & 0o777 == want, f.name


def test_a_result_is_not_written_into_a_model_folder_nor_a_model_into_a_result(tmp_path):
    """`interp capture --out <a model folder>` mixed its spec.json, manifest and units into the model's files;
    `interp train --out <a capture folder>` mixed a model into the capture."""
    from interp.runfolder import _refuse_foreign
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    for overwrite in (False, True):
        with pytest.raises(InterpError, match=r"model holds a model \(config.json\), not a capture result; valid: a "
                                              r"new or empty folder"):
            S.Store(model, "capture", {"n": 1}, overwrite=overwrite).open()
    assert sorted(p.name for p in model.iterdir()) == ["config.json"]
    with S.Store(tmp_path / "cap", "capture", {"n": 1}) as st:
        st.put("a", {"x": torch.zeros(2)})
    with pytest.raises(InterpError, match=r"cap holds a capture result \(spec.json\), not a training run"):
        _refuse_foreign(tmp_path / "cap")
