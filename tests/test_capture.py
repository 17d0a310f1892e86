"""`interp capture`: shards + manifest, streaming under a memory budget, resume, errors; (#18) resumes with
other settings refused naming the field, kills inside any write resume bit for bit, one writer at a time."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hooks
from interp import InterpError
from interp.capture import capture, load_capture
from interp.cli import main
from interp.store import load_unit
from interp.tasks import VOCAB
from interp.zoo import HybridLM, ZooConfig, load_model, save_model


def small_model(tmp_path):
    torch.manual_seed(0)
    from interp.tasks import VOCAB
    m = HybridLM(ZooConfig(vocab_size=len(VOCAB), d_model=32, n_layers=4, layout="gdn75", n_heads=2,
                           head_dim=16)).eval()
    save_model(m, tmp_path / "model")
    return m


def test_streams_shards_and_matches_direct(tmp_path):
    m = small_model(tmp_path)
    x = torch.randint(0, 50, (10, 24))
    names = ["blocks.1.rec.state", "blocks.3.resid_post"]
    # shards of ~1 batch -> several shards
    out = capture(m, x, names, tmp_path / "cap", positions=[5, 23], shard_size=20_000, batch_size=2,
                  progress=False)
    man = json.loads((out / "manifest.json").read_text())
    assert len(man["shards"]) > 1 and man["shards"][-1]["stop"] == 10
    got = load_capture(out)
    _, ref = hooks.wrap(m).run_with_cache(x, names=names, positions=[5, 23])
    for n in names:
        torch.testing.assert_close(got[n], ref[n], atol=1e-6, rtol=1e-5)


def test_python_capture_checks_names_positions_and_out_before_writing(tmp_path):
    m = small_model(tmp_path)
    x = torch.randint(0, 50, (3, 8))
    for names, kw, match in [(["blocks.0.nope"], {}, "unknown hook name 'blocks.0.nope'"),
                             ([], {}, "no hook name given"),
                             (["blocks.0.resid_post"], {"positions": [8]}, "position 8 out of range for 8 tokens"),
                             (["blocks.0.resid_post"], {"positions": [1.5]}, "position must be an integer")]:
        with pytest.raises(ValueError, match=match):
            capture(m, x, names, tmp_path / "c", progress=False, **kw)
        assert not (tmp_path / "c").exists()
    (tmp_path / "f").write_text("mine")
    with pytest.raises(InterpError, match="is a file; valid: a folder"):
        capture(m, x, ["blocks.0.resid_post"], tmp_path / "f", progress=False)
    assert (tmp_path / "f").read_text() == "mine"
    got = load_capture(capture(m, x, "blocks.0.resid_post", tmp_path / "one", progress=False))   # one name
    assert sorted(got) == ["blocks.0.resid_post"]


def test_cli_capture_and_bad_input(tmp_path, capsys):
    small_model(tmp_path)
    out = tmp_path / "cli"
    rc = main(["capture", "--model", str(tmp_path / "model"), "--task", "mqar", "--n", "6",
               "--names", "blocks.0.rec.state,blocks.3.attn.pattern", "--positions", "0,3",
               "--out", str(out)])
    assert rc == 0
    got = load_capture(out)
    assert got["blocks.0.rec.state"].shape[:2] == (6, 2)
    assert main(["capture", "--model", str(tmp_path / "model"), "--task", "mqar", "--names",
                 "blocks.3.rec.state", "--out", str(tmp_path / "x")]) == 2
    assert "layer 3 has no recurrent mixer" in capsys.readouterr().err
    assert main(["capture", "--model", str(tmp_path / "model"), "--task", "mqar", "--positions", "999",
                 "--out", str(tmp_path / "y")]) == 2
    assert "position 999 out of range" in capsys.readouterr().err


# --- #18: spec-checked, crash-safe, single-writer capture folders ------------------------------------
ROOT = Path(__file__).resolve().parents[1]
NAMES = ["blocks.1.rec.state", "blocks.3.resid_post"]
RUN = ("import sys, torch\ntorch.set_num_threads(1)\nfrom interp.capture import capture\n"
       "from interp.zoo import load_model\n{prelude}"
       "x = torch.randint(0, 50, (10, 24), generator=torch.Generator().manual_seed(0))\n"
       f"capture(load_model(sys.argv[1]), x, {NAMES!r}, sys.argv[2], positions=[5, 23], shard_size=10_000, "
       "batch_size=2, progress=False)\n")


def run_capture(model_dir, out, env=None, prelude=""):
    """The capture of RUN in a fresh process (one thread); returns the finished process."""
    return subprocess.run([sys.executable, "-c", RUN.format(prelude=prelude), str(model_dir), str(out)],
                          env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def run_here(model_dir, out, **kw):
    x = torch.randint(0, 50, (10, 24), generator=torch.Generator().manual_seed(0))
    return capture(load_model(model_dir), x, NAMES, out, positions=[5, 23], shard_size=10_000, batch_size=2,
                   progress=False, **kw)


def files(d):
    """{relative path: bytes} of every file under ``d``."""
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(Path(d).rglob("*")) if p.is_file()}


@pytest.fixture
def ref(tmp_path, one_thread):
    small_model(tmp_path)
    run_here(tmp_path / "model", tmp_path / "ref")
    got = files(tmp_path / "ref")
    man = json.loads(got["manifest.json"])
    assert len(man["shards"]) == 3 and {"spec.json", "units/shard-00002.safetensors"} <= got.keys()
    assert [s["file"] for s in man["shards"]] == [f"units/shard-0000{i}.safetensors" for i in range(3)]
    return got


@pytest.mark.parametrize("kill", ["write:shard-*:2", "after:shard-*:2", "write:manifest.json:2",
                                  "replace:manifest.json:3", "write:spec.json:1", "after:manifest.json:1"])
def test_killed_capture_resumes_bit_for_bit(tmp_path, ref, kill):
    """SIGKILL inside a shard write, between a shard and the manifest, inside the manifest write
    (and in the spec write before anything ran): the folder stays readable, and the resumed
    capture's files equal an uninterrupted run's byte for byte."""
    out = tmp_path / "cap"
    r = run_capture(tmp_path / "model", out, env={"INTERP_STORE_KILL": kill})
    assert r.returncode == -9, r.stderr[-2000:]
    if (out / "manifest.json").is_file():          # what was written is complete and readable
        part = load_capture(out, partial=True)
        n = json.loads((out / "manifest.json").read_text())["shards"][-1]["stop"]
        assert all(v.shape[0] == n for v in part.values())
    for f in (out / "units").glob("*.safetensors") if (out / "units").is_dir() else ():
        load_unit(f)                               # units are whole files: each one loads
    run_here(tmp_path / "model", out)
    assert files(out) == ref


def test_resume_with_other_settings_is_refused_naming_the_field(tmp_path, capsys):
    small_model(tmp_path)
    out = tmp_path / "c"
    base = ["capture", "--model", str(tmp_path / "model"), "--task", "mqar", "--n", "6", "--names",
            "blocks.0.rec.state", "--positions", "0,3", "--shard-size", "3000", "--batch-size", "2", "--out", str(out)]
    assert main(base) == 0
    first = files(out)
    capsys.readouterr()
    for extra, field in [(["--seed", "1"], "source.seed: 0 -> 1"), (["--positions", "0,4"], "positions: [0, 3] -> [0, 4]"),
                         (["--state-dtype", "bfloat16"], 'state_dtype: "float32" -> "bfloat16"'),
                         (["--n", "7"], "source.n: 6 -> 7")]:
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert field in err and "--overwrite" in err and "new --out" in err, err
        assert files(out) == first                 # nothing written
    import shutil
    shutil.copytree(tmp_path / "model", tmp_path / "same")   # the same weights under another name
    assert main(base[:2] + [str(tmp_path / "same")] + base[3:]) == 2
    err = capsys.readouterr().err
    assert "model.name" in err and "model.digest" not in err
    torch.manual_seed(1)                           # other weights under the same model path
    save_model(HybridLM(ZooConfig(vocab_size=len(VOCAB), d_model=32, n_layers=4, layout="gdn75", n_heads=2,
                                  head_dim=16)).eval(), tmp_path / "model")
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "model.digest: " in err and "model.name" not in err and "source" not in err.split("settings:")[1]
    assert files(out) == first
    # the Python API replaces it with overwrite=True; a finished capture re-run says so and writes nothing
    x = torch.randint(0, 50, (6, 24))
    capture(load_model(tmp_path / "model"), x, ["blocks.0.rec.state"], out, positions=[0, 4], progress=False,
            overwrite=True)
    again = files(out)
    assert again != first and load_capture(out)["blocks.0.rec.state"].shape[:2] == (6, 2)
    capture(load_model(tmp_path / "model"), x, ["blocks.0.rec.state"], out, positions=[0, 4], progress=True)
    assert "capture already complete (6 examples); nothing to do" in capsys.readouterr().err
    assert files(out) == again


def test_a_capture_on_another_kind_of_device_is_refused_and_an_older_folder_resumes(tmp_path):
    """The spec records the kind of device (its kernels round differently): a resume on another kind is refused
    naming it; a folder of a version that did not record it resumes."""
    m = small_model(tmp_path)
    x = torch.randint(0, 50, (6, 24))
    out = tmp_path / "cap"
    capture(m, x, ["blocks.0.rec.state"], out, positions=[0, 3], batch_size=2, shard_size=3000, progress=False)
    spec_file = out / "spec.json"
    head = json.loads(spec_file.read_text())
    assert head["spec"]["device"] == "cpu"
    head["spec"]["device"] = "cuda"            # as a capture on a GPU would have written it
    spec_file.write_text(json.dumps(head))
    before = files(out)
    with pytest.raises(InterpError, match='device: "cuda" -> "cpu"'):
        capture(m, x, ["blocks.0.rec.state"], out, positions=[0, 3], batch_size=2, shard_size=3000, progress=False)
    assert files(out) == before
    del head["spec"]["device"]                 # an older version's folder
    spec_file.write_text(json.dumps(head))
    capture(m, x, ["blocks.0.rec.state"], out, positions=[0, 3], batch_size=2, shard_size=3000, progress=False)
    assert load_capture(out)["blocks.0.rec.state"].shape[:2] == (6, 2)


def test_second_capture_into_one_out_is_refused(tmp_path, ref):
    """A capture runs (held inside its first batch) while a second one starts into the same folder:
    the second is refused; once the first process is gone its lock is taken over."""
    hold = ("import hooks, time\n"
            "def held(*a, **k):\n    print('running', flush=True)\n    time.sleep(300)\n"
            "hooks.HookedModel.run_with_cache = held\n")
    code = RUN.format(prelude=hold)
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "model"), str(tmp_path / "cap")],
                         stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert p.stdout.readline().strip() == "running"
        with pytest.raises(InterpError, match=f"cap is being written by pid {p.pid} .*a second writer is refused"):
            run_here(tmp_path / "model", tmp_path / "cap")
    finally:
        p.kill()
        p.wait()
    run_here(tmp_path / "model", tmp_path / "cap")
    assert files(tmp_path / "cap") == ref


def test_old_folders_load_and_are_not_resumed(tmp_path):
    """A capture written before spec.json existed (shards beside the manifest) still loads; a
    capture into it is refused with how to re-run; a damaged shard is named."""
    from safetensors.torch import save_file
    old = tmp_path / "old"
    old.mkdir()
    t = {"blocks.0.rec.state": torch.randn(3, 2, 2, 16, 16)}
    save_file(t, str(old / "shard-00000.safetensors"))
    (old / "manifest.json").write_text(json.dumps({
        "names": ["blocks.0.rec.state"], "positions": [0, 3], "n_examples": 3, "seq_len": 24, "meta": {},
        "shards": [{"file": "shard-00000.safetensors", "start": 0, "stop": 3}]}))
    assert torch.equal(load_capture(old)["blocks.0.rec.state"], t["blocks.0.rec.state"])
    m = small_model(tmp_path)
    x = torch.randint(0, 50, (3, 24))
    with pytest.raises(InterpError, match="without a spec.json.*--overwrite"):
        capture(m, x, ["blocks.0.rec.state"], old, positions=[0, 3], progress=False)
    capture(m, x, ["blocks.0.rec.state"], old, positions=[0, 3], progress=False, overwrite=True)
    assert not (old / "shard-00000.safetensors").exists() and load_capture(old)["blocks.0.rec.state"].shape[0] == 3
    f = old / "units" / "shard-00000.safetensors"
    os.truncate(f, 100)
    with pytest.raises(InterpError, match="shard-00000.safetensors is damaged"):
        load_capture(old)
    with pytest.raises(InterpError, match="holds no capture: no manifest.json"):
        load_capture(tmp_path / "model")


def test_cli_overwrite_and_complete_rerun(tmp_path, capsys):
    """`interp capture` again with the same settings: 'already complete', no 'wrote', files untouched;
    with other settings refused; with --overwrite replaced (and then 'wrote')."""
    small_model(tmp_path)
    out = tmp_path / "c"
    base = ["capture", "--model", str(tmp_path / "model"), "--task", "mqar", "--n", "4", "--names",
            "blocks.0.rec.state", "--positions", "0,3", "--out", str(out)]
    assert main(base) == 0
    assert "wrote" in capsys.readouterr().out
    first = files(out)
    assert main(base) == 0
    got = capsys.readouterr()
    assert "wrote" not in got.out and "capture already complete (4 examples); nothing to do" in got.err
    assert files(out) == first
    assert main(base + ["--knob", "n_pairs=8"]) == 0           # mqar's default, given: the same spec
    assert "capture already complete" in capsys.readouterr().err and files(out) == first
    assert main(base + ["--seed", "1"]) == 2
    assert "source.seed: 0 -> 1" in capsys.readouterr().err and files(out) == first
    assert main(base + ["--seed", "1", "--overwrite"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert files(out) != first and json.loads((out / "spec.json").read_text())["spec"]["source"]["seed"] == 1
    assert load_capture(out)["blocks.0.rec.state"].shape[:2] == (4, 2)
