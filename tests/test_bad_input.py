"""(#18) Bad input to the `interp` commands: exit 2, one line `error: ...` on stderr naming the bad
value and what is valid, no traceback, nothing left on disk; Ctrl-C: exit 130 with one line, and the
run resumes. Also the loading errors of `interp.models.load_any` (Hugging Face hub names offline and
online, damaged HF checkpoints) and the input checks of `interp.capture.capture`."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from interp import InterpError
from interp.cli import main
from interp.tasks import VOCAB
from interp.zoo import HybridLM, ZooConfig, save_model

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(d_model=32, n_layers=2, layout="gdn50", n_heads=2, head_dim=16)
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub look-ups from these tests


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder with a tiny zoo model, damaged copies of it, a file, a binary file and a text file."""
    w = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    save_model(HybridLM(ZooConfig(vocab_size=len(VOCAB), **TINY)).eval(), w / "model")
    for name in ("trunc", "garbage", "notjson", "listjson", "mismatch"):
        shutil.copytree(w / "model", w / name)
    os.truncate(w / "trunc" / "model.safetensors", 100)
    (w / "garbage" / "model.safetensors").write_bytes(b"garbage" * 10)
    (w / "notjson" / "config.json").write_text("{not json")
    (w / "listjson" / "config.json").write_text("[1, 2]")
    save_model(HybridLM(ZooConfig(vocab_size=len(VOCAB), **{**TINY, "d_model": 64})), w / "wide")
    shutil.copy(w / "wide" / "model.safetensors", w / "mismatch" / "model.safetensors")
    (w / "afile").write_text("x")
    (w / "binary.txt").write_bytes(bytes(range(256)))
    (w / "nul.txt").write_bytes(b"x0 = 1 ;\x00")
    (w / "words.txt").write_text("<bos> x0 = 1 ; " * 40)
    return w


M = "{w}/model"
CAP = ["capture", "--model", M, "--task", "mqar", "--n", "4", "--names", "blocks.0.rec.state", "--out", "{out}"]
TRAIN = ["train", "--layout", "gdn50", "--d-model", "32", "--n-layers", "2", "--n-heads", "2", "--head-dim", "16",
         "--task", "mqar", "--steps", "4", "--batch-size", "4", "--device", "cpu", "--out", "{out}"]
EVAL = ["eval", "--model", M, "--task", "mqar", "--knob", "n_pairs", "--n", "4"]


def cap(*extra, model=M):
    return ["capture", "--model", model, *CAP[3:], *extra]


def text(*extra):
    return ["capture", "--model", M, "--out", "{out}", "--names", "blocks.0.rec.state", "--text", *extra]


def C(name, argv, bad, valid, marks=()):
    """One case: its id, the argv, the bad value as the message must name it, and whether the
    message must also say what is valid ('valid' / argparse's 'choose from')."""
    return pytest.param(argv, bad, valid, id=name, marks=marks)


CASES = [
    # capture: numbers, positions, sizes
    C("capture-batch-size-neg", cap("--batch-size", "-1"), "-1", True),
    C("capture-batch-size-0", cap("--batch-size", "0"), "--batch-size: 0", True),
    C("capture-batch-size-float", cap("--batch-size", "2.5"), "2.5", True),
    C("capture-seq-len-0", text("{w}/words.txt", "--seq-len", "0"), "--seq-len: 0", True),
    C("capture-n-0", cap("--n", "0"), "--n: 0", True),
    C("capture-seed-neg", cap("--seed", "-1"), "-1", True),
    C("capture-positions-x", cap("--positions", "1,x"), "1,x", True),
    C("capture-positions-empty-range", cap("--positions", "5:2"), "5:2", True),
    C("capture-positions-empty", cap("--positions", ""), "''", True),
    C("capture-positions-out-of-range", cap("--positions", "999"), "999", True),
    C("capture-max-memory-inf", cap("--max-memory", "infGB"), "infGB", True),
    C("capture-max-memory-1e999", cap("--max-memory", "1e999"), "1e999", True),
    C("capture-max-memory-neg", cap("--max-memory=-1GB"), "-1GB", True),
    C("capture-max-memory-word", cap("--max-memory", "lots"), "lots", True),
    C("capture-state-dtype", cap("--state-dtype", "int8"), "int8", True),
    C("capture-dtype", cap("--dtype", "int8"), "int8", True),
    C("capture-knob-value", cap("--knob", "n_pairs=abc"), "abc", True),
    C("capture-knob-name", cap("--knob", "n_pears=4"), "n_pears", True),
    C("capture-knob-syntax", cap("--knob", "n_pairs"), "n_pairs", True),
    C("capture-task", cap("--task", "mqr"), "mqr", True),
    C("capture-name", cap("--names", "blocks.0.resid_pots"), "resid_pots", True),
    C("capture-task-and-text", cap("--text", "{w}/words.txt"), "both", True),
    C("capture-no-input", ["capture", "--model", M, "--out", "{out}"], "neither", True),
    # capture --text
    C("capture-text-missing", text("{w}/missing.txt"), "missing.txt", True),
    C("capture-text-directory", text("{w}"), "Is a directory", True),
    C("capture-text-binary", text("{w}/binary.txt"), "binary.txt", True),
    C("capture-text-nul", text("{w}/nul.txt"), "nul.txt", True),
    # output folders
    C("capture-out-file", cap(), "afile", True),
    C("capture-out-below-file", cap(), "afile/sub", True),
    C("train-out-file", TRAIN, "afile", True),
    C("train-out-below-file", TRAIN, "afile/sub", True),
    C("demo-out-file", ["demo", "--out", "{out}"], "afile", True),
    C("eval-out-directory", EVAL + ["--out", "{w}"], "is a directory", True),
    C("eval-out-below-file", EVAL + ["--out", "{w}/afile/x.csv"], "afile", True),
    # models
    C("model-truncated-safetensors", cap(model="{w}/trunc"), "trunc/model.safetensors", True),
    C("model-garbage-safetensors", cap(model="{w}/garbage"), "garbage/model.safetensors", True),
    C("model-config-not-json", cap(model="{w}/notjson"), "notjson/config.json", True),
    C("model-config-a-list", cap(model="{w}/listjson"), "listjson/config.json", True),
    C("model-weights-mismatch", cap(model="{w}/mismatch"), "mismatch/model.safetensors", True),
    C("model-not-a-model-dir", cap(model="{w}"), "config.json", True),
    C("model-unknown-name-offline", cap(model="nope_model"), "nope_model", True),
    C("eval-unknown-model-offline", ["eval", "--model", "org/nope"], "org/nope", True),
    # devices
    C("capture-device-cuda", cap("--device", "cuda"), "cuda", True, marks=NO_CUDA),
    C("eval-device-cuda", EVAL + ["--device", "cuda"], "cuda", True, marks=NO_CUDA),
    C("train-device-cuda", TRAIN + ["--device", "cuda"], "cuda", True, marks=NO_CUDA),
    C("capture-device-unknown", cap("--device", "tpu9"), "tpu9", True),
    # train numbers
    C("train-lr-nan", TRAIN + ["--lr", "nan"], "nan", True),
    C("train-lr-inf", TRAIN + ["--lr", "inf"], "inf", True),
    C("train-lr-0", TRAIN + ["--lr", "0"], "--lr: 0", True),
    C("train-steps-0", TRAIN + ["--steps", "0"], "--steps: 0", True),
    C("train-batch-size-0", TRAIN + ["--batch-size", "0"], "--batch-size: 0", True),
    C("train-eval-every-0", TRAIN + ["--eval-every", "0"], "--eval-every: 0", True),
    C("train-save-every-0", TRAIN + ["--save-every", "0"], "--save-every: 0", True),
    C("train-warmup-neg", TRAIN + ["--warmup", "-1"], "-1", True),
    C("train-seed-neg", TRAIN + ["--seed", "-1"], "-1", True),
    C("train-induction-until", TRAIN + ["--induction-until", "1.5"], "1.5", True),
    C("train-induction-steps-neg", TRAIN + ["--induction-steps", "-1"], "-1", True),
    C("train-induction-steps-too-many", TRAIN + ["--induction-steps", "4"], "induction_steps=4", True),
    C("train-time-limit-neg", TRAIN + ["--time-limit", "-1"], "-1", True),
    C("train-d-model-0", TRAIN + ["--d-model", "0"], "--d-model: 0", True),
    C("train-head-dim-odd", TRAIN + ["--head-dim", "15"], "15", False),
    C("train-layout", TRAIN + ["--layout", "gdn77"], "77", False),
    C("train-task", TRAIN + ["--task", "mqr"], "mqr", True),
    C("train-scan-backend", TRAIN + ["--scan-backend", "fast"], "fast", True),
    # eval / demo / parser
    C("eval-knob-without-task", ["eval", "--model", M, "--knob", "n_pairs"], "n_pairs", True),
    C("eval-knob-unknown", ["eval", "--model", M, "--task", "mqar", "--knob", "n_pears"], "n_pears", True),
    C("eval-n-0", EVAL + ["--n", "0"], "--n: 0", True),
    C("eval-task", ["eval", "--model", M, "--task", "mqr"], "mqr", True),
    C("demo-n-0", ["demo", "--n", "0", "--out", "{out}"], "--n: 0", True),
    C("unknown-command", ["captur"], "captur", True),
    C("unknown-option", cap("--batchsize", "2"), "--batchsize", False),
    C("missing-out", ["capture", "--model", M, "--task", "mqar"], "--out", False),
    # numbers and combinations other commands took without a word (session 26's hunt)
    C("eval-out-not-csv", EVAL + ["--out", "{out}/acc.json"], "acc.json", True),
    C("patch-top-0", ["patch", "--model", M, "--top", "0", "--out", "{out}"], "--top: 0", True),
    C("patterns-n-boot-0", ["patterns", "--who-reads", "--model", M, "--n-boot", "0", "--out", "{out}"],
      "--n-boot: 0", True),
    C("patterns-who-reads-layer", ["patterns", "--who-reads", "--model", M, "--layer", "1", "--out", "{out}"],
      "--layer", True),
    C("generate-empty-prompt", ["generate", "--model", M, "--prompt", "", "--out", "{out}"], "''", True),
    C("generate-knob-with-prompt", ["generate", "--model", M, "--prompt", "<bos> x0", "--knob", "n_steps=2",
                                    "--out", "{out}"], "--knob", True),
    C("probe-seed-and-seeds", ["probe", "--model", M, "--seed", "7", "--seeds", "0,1", "--out", "{out}"], "--seed 7",
      False),
    C("probe-seeds-repeated", ["probe", "--model", M, "--seeds", "0,0", "--out", "{out}"], "'0,0'", True),
    C("probe-flag-at-nan", ["probe", "--model", M, "--flag-at", "nan", "--out", "{out}"], "nan", True),
    C("sae-k-0", ["sae", "train", "--model", M, "--site", "blocks.0.resid_mid", "--k", "0", "--out", "{out}"],
      "--k: 0", True),
    C("sae-lr-nan", ["sae", "train", "--model", M, "--site", "blocks.0.resid_mid", "--lr", "nan", "--out", "{out}"],
      "nan", True),
    C("sae-eval-n-align-0", ["sae", "eval", "--coder", "{w}", "--model", M, "--site", "blocks.0.resid_mid",
                             "--n-align", "0"], "--n-align: 0", True),
    C("das-split-nan", ["das", "--model", M, "--site", "blocks.0.resid_pre", "--split", "nan,0.5,0.5", "--out",
                        "{out}"], "nan", False),
    C("das-lr-inf", ["das", "--model", M, "--site", "blocks.0.resid_pre", "--lr", "inf", "--out", "{out}"], "inf",
      True),
    C("intervene-batch-size-0", ["intervene", "--model", M, "--site", "blocks.0.resid_pre", "--batch-size", "0",
                                 "--out", "{out}"], "--batch-size: 0", True),
    C("intervene-seeds-empty", ["intervene", "--model", M, "--site", "blocks.0.resid_pre", "--seeds", ",",
                                "--out", "{out}"], "--seeds ','", True),
    # a knob given twice: every command kept the last one without a word (only generate and patterns refused)
    C("das-knob-twice", ["das", "--model", M, "--site", "blocks.0.resid_pre", "--knob", "n_pairs=4", "--knob",
                         "n_pairs=8", "--out", "{out}"], "--knob n_pairs is given twice (n_pairs=4, n_pairs=8)", True),
    C("capture-knob-twice", cap("--knob", "n_pairs=4", "--knob", "n_pairs=8"), "--knob n_pairs is given twice", True),
]


def run_cli(argv, capsys):
    """(exit code, stderr lines) of `interp <argv>` in this process (argparse's exit included)."""
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    return rc, [x for x in capsys.readouterr().err.splitlines() if x.strip()]


@pytest.mark.parametrize("argv,bad,valid", CASES)
def test_bad_input(argv, bad, valid, world, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = {"afile": world / "afile", "afile/sub": world / "afile" / "sub"}.get(bad, tmp_path / "out")
    argv = [a.format(w=world, out=out) for a in argv]
    before = sorted(p.name for p in world.iterdir())
    rc, err = run_cli(argv, capsys)
    assert rc == 2, (rc, err)
    assert len(err) == 1, err
    assert err[0].startswith("error: ") and "Traceback" not in err[0]
    assert bad in err[0], err[0]
    if valid:
        assert "valid" in err[0] or "choose from" in err[0], err[0]
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []   # nothing written
    assert sorted(p.name for p in world.iterdir()) == before


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs /sys")
def test_out_not_writable(world, tmp_path, capsys):
    """An output folder that cannot be created: as root, a chmod does not stop a write, so the
    place is /sys, where even root cannot make folders; otherwise a read-only folder."""
    if os.geteuid() == 0:
        place = Path("/sys/interp-test-not-writable")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        place = ro / "out"
    for argv in ([a.format(w=world, out=place) for a in CAP], [a.format(w=world, out=place) for a in TRAIN]):
        rc, err = run_cli(argv, capsys)
        assert rc == 2 and len(err) == 1 and str(place) in err[0] and "valid" in err[0], err
        assert not place.exists()


def test_seq_len_longer_than_text(world, tmp_path, capsys):
    rc, err = run_cli([a.format(w=world, out=tmp_path / "o") for a in text("{w}/words.txt", "--seq-len", "100000")],
                      capsys)
    assert rc == 2 and len(err) == 1 and "fewer than --seq-len 100000" in err[0]
    assert not (tmp_path / "o").exists()


# --- Ctrl-C ---------------------------------------------------------------------------------------
RUN = ("import signal, sys, torch\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
       "torch.set_num_threads(1)\n{prelude}"
       "from interp.cli import main\nsys.exit(main(sys.argv[1:]))\n")
# holds the third capture forward (counted once the inputs are saved: capture's memory-measuring forwards
# come before) until the test interrupts it
HOLD = ("import hooks, time\nimport interp.capture as C\nreal = hooks.HookedModel.run_with_cache\ncalls = []\n"
        "save = C._save_inputs\n"
        "def saved(*a, **k):\n    calls.append(0)\n    return save(*a, **k)\nC._save_inputs = saved\n"
        "def held(*a, **k):\n    if calls:\n        calls.append(1)\n    if len(calls) == 4:\n"
        "        print('running', flush=True)\n        time.sleep(300)\n    return real(*a, **k)\n"
        "hooks.HookedModel.run_with_cache = held\n")


def interrupt(argv, ready, prelude=""):
    """Start `interp <argv>` in a fresh process, wait until ``ready()`` (or it prints 'running'),
    send SIGINT; returns (exit code, stderr)."""
    p = subprocess.Popen([sys.executable, "-c", RUN.format(prelude=prelude), *argv], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    try:
        t0 = time.time()
        if prelude:
            assert p.stdout.readline().strip() == "running"
        else:
            while not ready():
                assert p.poll() is None and time.time() - t0 < 300, p.stderr.read()[-2000:]
                time.sleep(0.1)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
        p.wait()
    return p.returncode, err


def test_ctrl_c_capture_exits_130_and_resumes(world, tmp_path, capsys, one_thread):
    base = ["capture", "--model", str(world / "model"), "--task", "mqar", "--n", "10", "--names",
            "blocks.0.rec.state", "--batch-size", "2", "--shard-size", "1000"]
    rc, err = interrupt(base + ["--out", str(tmp_path / "cap")], None, prelude=HOLD)
    assert rc == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted; run again to resume" and "Traceback" not in err
    man = json.loads((tmp_path / "cap" / "manifest.json").read_text())
    assert man["shards"][-1]["stop"] == 4 and not (tmp_path / "cap" / ".lock").exists()
    assert main(base + ["--out", str(tmp_path / "cap")]) == 0
    assert main(base + ["--out", str(tmp_path / "ref")]) == 0
    from interp.capture import load_capture
    a, b = load_capture(tmp_path / "cap"), load_capture(tmp_path / "ref")
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_ctrl_c_while_the_cli_imports_is_one_line_too(monkeypatch, capsys):
    class Interrupting:
        def __getattr__(self, name):
            raise KeyboardInterrupt
    monkeypatch.setitem(sys.modules, "interp.tasks", Interrupting())
    assert main(["eval", "--model", "gdn75"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted; run again to resume"


def test_ctrl_c_says_whether_the_command_resumes(monkeypatch, capsys):
    from interp.cli import capture, evaluate

    def interrupted(a):
        raise KeyboardInterrupt
    monkeypatch.setattr(evaluate, "cmd_eval", interrupted)
    monkeypatch.setattr(capture, "cmd_capture", interrupted)
    assert main(["eval", "--model", "gdn75"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted; run again to redo it (this command does not resume)"
    assert main(["capture", "--out", "x"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted; run again to resume"


def test_ctrl_c_train_exits_130_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [a.format(out=out) for a in TRAIN]
    argv[argv.index("--steps") + 1] = "100000"
    rc, err = interrupt(argv + ["--save-every", "2"], lambda: (out / "checkpoint" / "trainer.pt").is_file())
    assert rc == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted; run again to resume" and "Traceback" not in err
    from interp.train import load_trainer_state
    ck = out / "checkpoint" if (out / "checkpoint").is_dir() else out / "checkpoint.old"  # SIGINT between renames
    step = load_trainer_state(ck)["step"]
    assert step >= 2
    capsys.readouterr()
    # the same settings (another --steps would be refused: interp.runfolder); a time limit ends this call early
    assert main(argv + ["--time-limit", "0.0001"]) == 0
    assert f"resuming from {ck} at step {step}" in capsys.readouterr().err


# --- loading: Hugging Face hub names and checkpoints ----------------------------------------------
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2))


def test_hub_name_offline_online_and_missing(monkeypatch):
    from huggingface_hub import HfApi
    from interp.models import load_any
    with pytest.raises(InterpError, match=r"model 'org/tiny' not found: not a local directory or default model "
                       r"name \(valid: .*gdn75.*\); no hub access \(HF_HUB_OFFLINE is set\): pass a local path"):
        load_any("org/tiny")
    with pytest.raises(InterpError, match=r"model '/no/such/dir' not found: not a local directory"):
        load_any("/no/such/dir")                     # not a hub name: no look-up at all
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

    def unreachable(self, name, **kw):
        raise ConnectionError("Name or service not known")
    monkeypatch.setattr(HfApi, "model_info", unreachable)
    with pytest.raises(InterpError, match=r"no hub access \(ConnectionError: Name or service not known\): pass a "
                       "local path"):
        load_any("org/tiny")

    class NotFound(Exception):
        response = type("R", (), {"status_code": 404})()

    def missing(self, name, **kw):
        raise NotFound("404")
    monkeypatch.setattr(HfApi, "model_info", missing)
    with pytest.raises(InterpError, match="and no model 'org/tiny' on the Hugging Face hub"):
        load_any("org/tiny")
    monkeypatch.setattr(HfApi, "model_info", lambda self, name, **kw: None)
    from transformers import AutoModelForCausalLM
    seen = {}

    def fetch(src, **kw):
        seen.update(src=src, **kw)
        return tiny_llama()
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fetch)
    model, kind = load_any("org/tiny")
    assert kind == "hf" and seen["src"] == "org/tiny" and seen["local_files_only"] is False and not model.training


def test_damaged_hf_checkpoint(tmp_path, capsys):
    tiny_llama().save_pretrained(tmp_path / "hf")
    from interp.models import load_any
    load_any(str(tmp_path / "hf"))
    os.truncate(tmp_path / "hf" / "model.safetensors", 50)
    with pytest.raises(InterpError, match=r"cannot load the Hugging Face checkpoint '.*hf'"):
        load_any(str(tmp_path / "hf"))
    (tmp_path / "hf" / "config.json").write_text("{")
    rc, err = run_cli(["capture", "--model", str(tmp_path / "hf"), "--task", "mqar", "--out", str(tmp_path / "o")],
                      capsys)
    assert rc == 2 and len(err) == 1 and "hf/config.json is not valid JSON" in err[0]


# --- Python API: capture's input checks ----------------------------------------------------------
@pytest.mark.parametrize("tokens,kw,msg", [
    (torch.rand(2, 8), {}, "tokens of dtype float32 are not valid; valid: an integer tensor"),
    (torch.full((2, 8), len(VOCAB)), {},
     f"token id {len(VOCAB)} is out of range for this model; valid: 0..{len(VOCAB) - 1}"),
    (torch.full((2, 8), -1), {}, "token id -1 is out of range"),
    (torch.zeros(8, dtype=torch.long), {}, r"tokens \[8\] are not valid; valid: a non-empty \[N, T\]"),
    (torch.zeros(2, 8, dtype=torch.long), {"batch_size": 0}, "batch size 0 is not valid; valid: integers >= 1"),
    (torch.zeros(2, 8, dtype=torch.long), {"max_memory": float("inf")}, "invalid memory size 'inf'"),
])
def test_capture_api_refuses_bad_input(world, tmp_path, tokens, kw, msg):
    from interp.capture import capture
    from interp.zoo import load_model
    with pytest.raises(InterpError, match=msg):
        capture(load_model(world / "model"), tokens, ["blocks.0.rec.state"], tmp_path / "c", progress=False, **kw)
    assert not (tmp_path / "c").exists()


def test_task_knob_of_wrong_type():
    """A knob value of the wrong type is a TaskError naming it, never a raw TypeError."""
    from interp import tasks as T
    for v in ([], {}, "S4"):
        with pytest.raises(T.TaskError, match=r"group=.* is not valid; valid: S3, S5"):
            T.generate("permutation", 2, group=v)


def test_unforeseen_os_error_is_one_line(world, tmp_path, capsys, monkeypatch):
    """A file-system refusal no check foresaw (here: a full disk while writing eval's CSV) is one
    line naming the file, exit 2."""
    import errno
    import interp.store

    def full(path, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    monkeypatch.setattr(interp.store, "save_csv", full)
    rc, err = run_cli([a.format(w=world) for a in EVAL] + ["--out", str(tmp_path / "r.csv")], capsys)
    assert rc == 2 and err[-1] == (f"error: cannot use '{tmp_path / 'r.csv'}': No space left on device; valid: a "
                                   "readable input / writable output path")
    assert [x for x in err if x.startswith("error") or "Traceback" in x] == err[-1:]   # the rest: eval's progress bar


def test_ctrl_c_in_an_experiment_script_is_one_line_and_on_its_own_line(capsys):
    """An experiment script printed a KeyboardInterrupt traceback; a bar being drawn got the message appended."""
    from tqdm import tqdm
    from interp.experiment.context import cli

    def stopped():
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as e:
        cli(stopped)
    assert e.value.code == 130 and capsys.readouterr().err == "interrupted; run again to resume\n"
    bar = tqdm(total=3, file=sys.stderr)
    try:
        with pytest.raises(SystemExit):
            cli(stopped)
    finally:
        bar.close()
    assert "\ninterrupted; run again to resume\n" in capsys.readouterr().err
