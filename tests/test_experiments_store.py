"""Experiments on `interp.store` (#18): cached result rows one unit file per ``add`` (complete or absent,
old CSV caches still read), ``spec.json`` naming the fields that differ, one writer per runs / figures
directory, an experiment killed inside a cache write and resumed equals an uninterrupted run bit for bit;
checkpoints read as data (a crafted pickle runs nothing); ``interp run`` runs only the shipped
experiments; every experiment option has help text with its default; smoke profiles write beside the
committed figures, not over them."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from interp import InterpError, cli
from interp import experiment as X
from interp import store as S

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
NAMES = ("e1_state_recall", "e2_recall_gap", "e3_token_loss", "e4_fusion")
E4 = X.load_experiment(EXPERIMENTS / "e4_fusion.py")
KEY = ["arm", "value"]


# --- ResultLog ---------------------------------------------------------------------------------------

def test_keyed_log_writes_one_unit_per_add_and_reads_them_in_order(tmp_path):
    log = X.ResultLog(tmp_path / "eval" / "rows.csv", KEY)
    assert log.frame().empty and not log.done(arm="a", value=1)
    log.add([dict(arm="a", value=2, x=0.1), dict(arm="a", value=3, x=1 / 3)])
    log.add(pd.DataFrame([dict(x=0.7, value=1, arm="None")]))             # columns in another order
    units = sorted(p.name for p in (tmp_path / "eval" / "rows.units").iterdir())
    assert units == ["000000.csv", "000001.csv"] and not (tmp_path / "eval" / "rows.csv").exists()
    again = X.ResultLog(tmp_path / "eval" / "rows.csv", KEY)                # a later call
    assert again.done(arm="a", value=3) and again.done(arm="None", value="1") and not again.done(arm="b", value=1)
    df = again.frame()
    assert list(df.columns) == ["arm", "value", "x"] and df.arm.tolist() == ["a", "a", "None"]
    assert df.x.tolist() == [0.1, 1 / 3, 0.7]                                # floats read back exactly
    with pytest.raises(InterpError, match="has columns"):
        again.add([dict(arm="c", value=1, y=2)])
    again.replace([dict(arm="z", value=0, x=1.0)])
    assert X.ResultLog(tmp_path / "eval" / "rows.csv", KEY).frame().arm.tolist() == ["z"]


def test_once_saves_the_table_atomically_and_returns_it_as_read_back(tmp_path):
    log = X.ResultLog(tmp_path / "val.csv")
    calls = []

    def fn():
        calls.append(1)
        return pd.DataFrame({"arm": ["a"], "value": [2], "acc": [0.1 + 0.2]})
    first = log.once(fn)
    second = X.ResultLog(tmp_path / "val.csv").once(fn)
    assert calls == [1] and first.equals(second) and first.acc.iloc[0] == 0.1 + 0.2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["val.csv"]


def test_a_cached_validation_with_other_columns_is_refused_not_dropped(tmp_path):
    """A run's cached validation row without val_acc (or unit, lr, seed) used to vanish from the sweep's
    table, so the unit never got a best rate and nothing said why; it is refused, naming the file."""
    from interp.experiment.seeds import validate_runs
    ctx = SimpleNamespace(runs=tmp_path, device="cpu", out_of_time=lambda: False)
    run = SimpleNamespace(name="a_s0_lr0.001", unit="a", lr=1e-3, seed=0)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "val_a_s0_lr0.001.csv").write_text("unit,lr,seed,accuracy\na,0.001,0,0.5\n")
    with pytest.raises(InterpError, match=r"cached validation '.*val_a_s0_lr0.001.csv' is damaged \(1 rows, columns "
                                          r"unit, lr, seed, accuracy\); valid: one row with unit, lr, seed, val_acc"):
        validate_runs(ctx, [run], score=None)
    (tmp_path / "eval" / "val_a_s0_lr0.001.csv").write_text("unit,lr,seed,val_acc\na,0.001,0,0.5\n")
    assert validate_runs(ctx, [run], score=None).val_acc.tolist() == [0.5]


def test_old_csv_caches_still_load_and_a_cut_short_one_is_refused(tmp_path):
    old = tmp_path / "probes.csv"                  # a keyed cache as versions before the units appended it
    old.write_text("arm,value,x\na,1,0.5\na,2,0.25\n")
    log = X.ResultLog(old, KEY)
    assert log.done(arm="a", value=2) and not log.done(arm="a", value=3)
    log.add([dict(value=3, x=0.125, arm="a")])
    assert X.ResultLog(old, KEY).frame().equals(pd.DataFrame({"arm": ["a"] * 3, "value": [1, 2, 3],
                                                              "x": [0.5, 0.25, 0.125]}))
    old.write_text("arm,value,x\na,1,0.5\na,2,0.")  # an append killed mid-row
    with pytest.raises(InterpError, match="probes.csv ends in a row cut short .*delete it and run the same command"):
        X.ResultLog(old, KEY).frame()


def test_a_kill_inside_a_unit_write_leaves_the_unit_absent(tmp_path):
    code = ("from interp.experiment import ResultLog\n"
            f"log = ResultLog({str(tmp_path / 'rows.csv')!r}, ['arm', 'value'])\n"
            "for v in range(3):\n    log.add([dict(arm='a', value=v, pad='x' * 20000)])\n")
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, S.KILL_ENV: "write:0*.csv:2"},
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == -9, r.stderr[-2000:]
    units = tmp_path / "rows.units"
    assert len([p for p in units.iterdir() if S.is_temp(p)]) == 1
    log = X.ResultLog(tmp_path / "rows.csv", KEY)                             # the next call removes the part
    assert [p.name for p in units.iterdir()] == ["000000.csv"] and log.frame().value.tolist() == [0]
    assert not log.done(arm="a", value=1)


# --- spec.json ---------------------------------------------------------------------------------------

def test_spec_is_written_in_the_store_layout_and_differences_are_named(tmp_path):
    X.check_spec(tmp_path, {"profile": "test", "steps": 3, "P": {"lrs": (1e-3,)}}, kind="e9")
    assert S.read_spec(tmp_path) == {"kind": "e9", "format": S.FORMAT,
                                     "spec": {"profile": "test", "steps": 3, "P": {"lrs": [1e-3]}}}
    X.check_spec(tmp_path, {"profile": "test", "steps": 3, "P": {"lrs": [1e-3]}}, kind="e9")     # the same: fine
    with pytest.raises(InterpError, match=r"differs in: P\.lrs: \[0\.001\] -> \[0\.003\]\); delete it"):
        X.check_spec(tmp_path, {"profile": "test", "steps": 3, "P": {"lrs": [3e-3]}}, kind="e9")
    with pytest.raises(InterpError, match="steps: 3 -> 4.*runs of profile test with 3 steps, not test with 4"):
        X.check_spec(tmp_path, {"profile": "test", "steps": 4, "P": {"lrs": [1e-3]}}, kind="e9")
    with pytest.raises(InterpError, match="holds runs of e9, not e8; give another --runs"):
        X.check_spec(tmp_path, {"profile": "test", "steps": 3, "P": {"lrs": [1e-3]}}, kind="e8")


def test_an_older_spec_json_is_taken_over_when_it_agrees(tmp_path):
    (tmp_path / "spec.json").write_text(json.dumps({"profile": "quick", "steps": 150}, indent=1))
    with pytest.raises(InterpError, match="differs in: steps: 150 -> 200"):
        X.check_spec(tmp_path, {"profile": "quick", "steps": 200}, kind="e1_state_recall")
    X.check_spec(tmp_path, {"profile": "quick", "steps": 150}, kind="e1_state_recall")
    assert S.read_spec(tmp_path)["kind"] == "e1_state_recall"


# --- one writer per runs / figures directory ------------------------------------------------------

def _args(tmp, runs="runs", out="figs"):
    return ["--tiny", "--runs", str(tmp / runs), "--out", str(tmp / out), "--no-progress", "--device", "cpu"]


def test_a_second_run_into_the_same_runs_or_figures_directory_is_refused(tmp_path):
    a = E4.build_parser().parse_args(_args(tmp_path) + ["--throughput-only"])
    with X.setup(a, E4.NAME, E4.PROFILES, []) as ctx:                     # the first call, still running
        assert (ctx.runs / ".lock").is_file() and (ctx.out / ".lock").is_file()
        for args in (_args(tmp_path, out="figs2"), _args(tmp_path, runs="runs2")):
            with pytest.raises(InterpError, match=f"is being written by pid {os.getpid()} .*a second writer is "
                                                  "refused"):
                E4.main(args + ["--throughput-only"])
        toml = _toml(tmp_path, str(EXPERIMENTS / "e4_fusion.py"), _args(tmp_path) + ["--throughput-only"])
        assert cli.main(["run", str(toml)]) == 2                             # through `interp run` too
    assert not (tmp_path / "runs" / ".lock").exists() and not (tmp_path / "figs" / ".lock").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "runs" / ".lock").write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename,
                                                         "time": "then"}))
    assert E4.main(_args(tmp_path) + ["--throughput-only"]) == 0          # a dead writer's lock is taken over


# --- killed inside a cache write, resumed: the same outputs as an uninterrupted run --------------

def _run(script, args, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}     # tiny models: one thread is fastest
    return subprocess.run([sys.executable, str(EXPERIMENTS / script), *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """E1 and E4 --tiny trained (--train-only), and a reference: evaluated in one uninterrupted call."""
    tmp = tmp_path_factory.mktemp("trained")
    for script in ("e1_state_recall.py", "e4_fusion.py"):
        base = tmp / script / "base"
        r = _run(script, _args(base) + ["--train-only"])
        assert r.returncode == 0, r.stderr[-3000:]
        shutil.copytree(base / "runs", tmp / script / "ref" / "runs")
        r = _run(script, _args(tmp / script / "ref"))
        assert r.returncode == 0, r.stderr[-3000:]
    return tmp


OUTPUTS = {"e1_state_recall.py": ["results.csv", "lr_sweep.csv", "lr_sweep_status.csv", "accuracy.png",
                                  "probes.csv", "patching.csv"],
           "e4_fusion.py": ["results.csv", "examples.parquet", "lr_sweep.csv", "accuracy.png", "loss.png",
                            "training.png"]}


@pytest.mark.parametrize("script,kill", [("e4_fusion.py", "write:0*.csv:3"),          # a unit half written
                                         ("e4_fusion.py", "after:0*.csv:5"),          # a unit just in place
                                         ("e1_state_recall.py", "replace:test_*.csv:2")])     # a whole table
def test_killed_inside_a_cache_write_then_resumed_equals_an_uninterrupted_run(trained, tmp_path, script, kill):
    shutil.copytree(trained / script / "base" / "runs", tmp_path / "runs")
    r = _run(script, _args(tmp_path), {S.KILL_ENV: kill})
    assert r.returncode == -9, r.stderr[-3000:]
    r = _run(script, _args(tmp_path))                                      # the same command again
    assert r.returncode == 0, r.stderr[-3000:]
    ref = trained / script / "ref"
    for f in OUTPUTS[script]:
        assert (tmp_path / "figs" / f).read_bytes() == (ref / "figs" / f).read_bytes(), f
    caches = sorted(p.relative_to(ref / "runs") for p in (ref / "runs" / "eval").rglob("*.csv"))
    assert caches == sorted(p.relative_to(tmp_path / "runs") for p in (tmp_path / "runs" / "eval").rglob("*.csv"))
    for c in caches:
        assert (tmp_path / "runs" / c).read_bytes() == (ref / "runs" / c).read_bytes(), c
    left = [p for p in (tmp_path / "runs").rglob("*") if S.is_temp(p) or p.name == ".lock"]
    assert left == [] and not (tmp_path / "figs" / ".lock").exists()


# --- checkpoints are read as data ------------------------------------------------------------------

class _Evil:
    """Unpickling this creates the file ``marker`` (what a crafted checkpoint could do instead)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"step": 3, "optimizer": _Evil(marker)}, path)
    return path


def test_a_crafted_checkpoint_runs_no_code(tmp_path):
    control = _crafted(tmp_path / "control.pt", tmp_path / "control_ran")
    torch.load(control, weights_only=False)                      # the payload works where pickle is trusted ...
    assert (tmp_path / "control_ran").exists()
    marker = tmp_path / "ran"
    run = X.make_runs(tmp_path / "r", {"a": {"model": dict(d_model=16, n_layers=2, layout="gdn75", n_heads=2,
                                                           head_dim=8)}}, [1e-3], steps=5, device="cpu")[0]
    _crafted(run.out / "checkpoint" / "trainer.pt", marker)
    with pytest.raises(InterpError, match="trainer.pt holds objects other than tensors and plain data.*refused"):
        X.status(run)                                            # ... not in the experiments' loader
    from interp.zoo import load_trainer_state
    with pytest.raises(InterpError, match="could run code when loaded; refused"):
        load_trainer_state(_crafted(tmp_path / "e3" / "trainer.pt", marker))
    (tmp_path / "damaged.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(InterpError, match="damaged.pt is not a readable trainer checkpoint"):
        load_trainer_state(tmp_path / "damaged.pt")
    assert not marker.exists()


def test_e3_resumes_only_a_checkpoint_of_plain_data(tmp_path):
    E3 = X.load_experiment(EXPERIMENTS / "e3_token_loss.py")
    P = E3.PROFILES["test"]
    cfg = E3.pair_configs(300, P["model"], 32)["olmo3"]
    marker = tmp_path / "ran"
    _crafted(tmp_path / "models" / E3.run_name("olmo3", 3e-3) / "trainer.pt", marker)
    ctx = SimpleNamespace(runs=tmp_path, seed=0, device="cpu", progress=False)
    with pytest.raises(InterpError, match="trainer.pt holds objects other than tensors"):
        E3.train_hf("olmo3", cfg, 3e-3, None, None, None, ctx, P)
    assert not marker.exists()


def test_bench_runs_status_and_the_zoo_loader_run_no_code(tmp_path, capsys):
    from interp.zoo import HybridLM, ZooConfig, load_model, save_model
    marker = tmp_path / "ran"
    _crafted(tmp_path / "runs" / "a_lr0.001" / "checkpoint" / "trainer.pt", marker)
    status = X.load_experiment(ROOT / "bench" / "runs_status.py")
    assert status.main([str(tmp_path / "runs")]) == 0
    out = capsys.readouterr()
    assert "a_lr0.001" in out.out and "holds objects other than tensors" in out.err
    d = save_model(HybridLM(ZooConfig(vocab_size=8, d_model=16, n_layers=1, layout="transformer", n_heads=2,
                                      head_dim=8)), tmp_path / "zoo")
    _crafted(d / "model.safetensors", marker)                   # a pickle where the weights belong
    with pytest.raises(InterpError, match="model.safetensors"):
        load_model(d)
    assert not marker.exists()


# --- interp run: only the shipped experiments ----------------------------------------------------

def _toml(tmp, script, argv=()):
    opts = {a[2:].replace("-", "_"): v for a, v in zip(argv, list(argv[1:]) + [None]) if a.startswith("--")}
    lines = [f'script = "{script}"', "[options]"]
    for k, v in opts.items():
        lines.append(f"{k} = true" if v is None or v.startswith("--") else f'{k} = "{v}"')
    f = tmp / "exp.toml"
    f.write_text("\n".join(lines) + "\n")
    return f


def test_interp_run_refuses_a_script_outside_the_shipped_experiments(tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    marker = tmp_path / "ran"
    (elsewhere / "x.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                    "import argparse\ndef build_parser():\n    return argparse.ArgumentParser()\n"
                                    "def main(argv=None):\n    return 0\n")
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "evil.toml").write_text('script = "../elsewhere/x.py"\n')
    assert cli.main(["run", str(exp / "evil.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: script '../elsewhere/x.py' named in ")
    assert "not one of the experiments the toolkit ships" in err and "--allow-any-script" in err
    assert not marker.exists()
    os.symlink(elsewhere / "x.py", exp / "link.py")              # a link is judged by where it leads
    (exp / "link.toml").write_text('script = "link.py"\n')
    assert cli.main(["run", str(exp / "link.toml")]) == 2 and not marker.exists()
    assert cli.main(["run", "--allow-any-script", str(exp / "evil.toml")]) == 0 and marker.exists()


def test_interp_run_checks_options_before_the_experiment_runs(tmp_path, capsys):
    f = _toml(tmp_path, str(EXPERIMENTS / "e4_fusion.py"), _args(tmp_path) + ["--threads", "x"])
    assert cli.main(["run", str(f)]) == 2
    err = capsys.readouterr().err
    assert "argument --threads: 'x' is not an integer; valid: integers >= 1; valid options: " in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists() and not (tmp_path / "figs").exists()    # nothing ran


# --- options: help with defaults; smoke profiles write beside the committed figures -------------

@pytest.mark.parametrize("name", NAMES)
def test_every_option_has_help_with_its_default(name):
    ap = X.load_experiment(EXPERIMENTS / f"{name}.py").build_parser()
    assert ap.formatter_class.__name__ == "ArgumentDefaultsHelpFormatter"
    for act in ap._actions:
        if act.option_strings and act.dest != "help":
            assert act.help, f"{name}: {act.option_strings[0]} has no help"
    text = ap.format_help()
    assert "(default: 0.8)" in text or name != "e1_state_recall"
    assert text.count("(default:") == len([a for a in ap._actions if a.option_strings and a.dest != "help"])


@pytest.mark.parametrize("flags,runs", [([], "runs/e4_fusion"), (["--quick"], "runs/e4_fusion_quick"),
                                       (["--tiny"], "runs/e4_fusion_test"), (["--steps", "9"], "runs/e4_fusion_steps9"),
                                       (["--runs", "r/x"], "r/x")])
def test_default_directories_keep_every_run_off_the_committed_figures(tmp_path, monkeypatch, flags, runs):
    """No profile writes into figures/ (the committed gallery) unless --out names it."""
    monkeypatch.chdir(tmp_path)
    ctx = X.setup(E4.build_parser().parse_args(flags + ["--device", "cpu"]), E4.NAME, E4.PROFILES, flags)
    assert (str(ctx.out), str(ctx.runs)) == (f"{runs}/figures", runs)
    assert not (tmp_path / "figures").exists()
    ctx = X.setup(E4.build_parser().parse_args(flags + ["--device", "cpu", "--out", "figures/e4_fusion"]), E4.NAME,
                  E4.PROFILES, flags)
    assert str(ctx.out) == "figures/e4_fusion"
    for flag in ("--out", "--runs"):
        with pytest.raises(InterpError, match=f"{flag} '' is empty; valid: a path"):
            X.setup(E4.build_parser().parse_args(flags + ["--device", "cpu", flag, ""]), E4.NAME, E4.PROFILES, flags)


def _ctx(tmp_path, *flags):
    return X.setup(E4.build_parser().parse_args(["--tiny", "--device", "cpu", *flags]), E4.NAME, E4.PROFILES, flags)


def test_a_folder_of_someone_elses_files_is_refused_and_left_as_it_is(tmp_path):
    """--out / --runs holding files that are not an experiment's: refused before anything is made or removed
    (temporary-looking names included); a gallery folder of an earlier version (its report names the script) is
    taken over; outputs of another profile in one --out are refused naming the field."""
    user = tmp_path / "mine"
    (user / "draft.tmp-1").mkdir(parents=True)
    (user / "draft.tmp-1" / "chapter1.txt").write_text("thesis")
    (user / "backup.tmp-20240101").write_text("precious")
    (user / "results.csv").write_text("mine")
    before = sorted(str(p.relative_to(user)) for p in user.rglob("*"))
    for flag in ("--out", "--runs"):
        other = tmp_path / f"new{flag}"
        with pytest.raises(InterpError, match=f"{flag} '.*mine' holds backup.tmp-20240101, draft.tmp-1, results.csv "
                                              "but no .*valid: a new or empty folder"):
            _ctx(tmp_path, flag, str(user), "--runs" if flag == "--out" else "--out", str(other))
        assert not other.exists()              # refused before either folder was made
    assert sorted(str(p.relative_to(user)) for p in user.rglob("*")) == before
    with pytest.raises(InterpError, match="--out '.*results.csv' is a file"):
        _ctx(tmp_path, "--out", str(user / "results.csv"))
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    (gallery / "report.md").write_text("# E4\n\n* command: `python experiments/e4_fusion.py --device cuda`\n")
    with _ctx(tmp_path, "--out", str(gallery), "--runs", str(tmp_path / "r")) as ctx:
        assert ctx.out == gallery and json.loads((gallery / "outputs.json").read_text())["spec"]["profile"] == "test"
    args = ["--quick", "--device", "cpu", "--out", str(gallery), "--runs", str(tmp_path / "r2")]
    with pytest.raises(InterpError, match=r"--out '.*gallery' holds the outputs of another call \(profile: "
                                          r'"test" -> "quick"'):
        X.setup(E4.build_parser().parse_args(args), E4.NAME, E4.PROFILES, args).__enter__()
    assert not (gallery / ".lock").exists()    # the refused call let its locks go


def test_cli_refusal_of_a_foreign_out_is_one_line(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    toml = EXPERIMENTS / "e4_fusion.toml"
    rc = cli.main(["run", str(toml), "--tiny", "--device", "cpu", "--out", str(tmp_path / "mine"),
                   "--runs", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "holds notes.txt but no outputs.json" in err[0], err
    assert not (tmp_path / "r").exists() and (tmp_path / "mine" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("text,message", [
    ('[options]\nsteps = [2, 4]\n', "option 'steps' in '.*' is a list; valid: one value"),
    ('[options]\nout = "x"\nfigures = "y"\n', "options 'out' and 'figures' in '.*' set the same setting"),
    ('[options]\ntime_budget = 5\n"time-budget" = 0\n', "options 'time_budget' and 'time-budget'"),
    ('description = 5\n', "'description' in '.*' must be a string, got 5")])
def test_interp_run_refuses_toml_options_it_would_otherwise_drop(tmp_path, capsys, text, message):
    f = tmp_path / "copy.toml"            # a copied TOML file: its script is found among the shipped experiments
    f.write_text('script = "e4_fusion.py"\n' + text)
    assert cli.main(["run", str(f), "--tiny", "--device", "cpu", "--runs", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and __import__("re").search(message, err[0]), err
    assert not (tmp_path / "r").exists()


def test_a_command_line_flag_replaces_the_tomls_option(tmp_path):
    from interp.experiment.toml import merge_options
    ap = E4.build_parser()
    kept = merge_options(ap, "x.toml", {"steps": 2, "quick": True, "figures": "a"}, ["--steps", "4", "--out=b"])
    assert kept == {"quick": True}
    E6 = X.load_experiment(EXPERIMENTS / "e6_recall_law.py")
    assert merge_options(E6.build_parser(), "x.toml", {"seq_len": [16], "quick": True}, ["--seq-len", "24"]) == \
        {"quick": True}                    # a repeatable option too: not 16 and 24
    with pytest.raises(InterpError, match="option 'seq_len' in 'x.toml' is an empty list"):
        merge_options(E6.build_parser(), "x.toml", {"seq_len": []}, [])
    # a profile flag replaces the TOML's profile (they are exclusive flags, so both were refused together)
    assert merge_options(ap, "x.toml", {"quick": True, "steps": 2}, ["--tiny"]) == {"steps": 2}
    assert merge_options(ap, "x.toml", {"tiny": True}, ["--profile", "quick"]) == {}


@pytest.mark.parametrize("payload", [b"\xff\xfe\x00binary", b"a,b\n1,2\n3,4,5,6\n"])
def test_a_damaged_cached_table_is_named_not_a_traceback(tmp_path, payload):
    log = X.ResultLog(tmp_path / "eval" / "val_x.csv")
    (tmp_path / "eval" / "val_x.csv").write_bytes(payload)
    with pytest.raises(InterpError, match=r"val_x.csv is damaged \(.*\); delete it and run the same command again"):
        log.frame()
    keyed = X.ResultLog(tmp_path / "k.csv", key=["a"])
    keyed.add([{"a": 1, "b": 2}])
    (tmp_path / "k.units" / "000000.csv").write_bytes(payload)
    with pytest.raises(InterpError, match="is damaged"):
        X.ResultLog(tmp_path / "k.csv", key=["a"]).frame()     # as a later call reads it


def test_a_time_budget_too_short_to_make_progress_is_refused(tmp_path):
    for budget in ("0.15", "0.99"):
        with pytest.raises(InterpError, match=f"--time-budget {float(budget):g} is out of range; valid: 0 \\(none\\) "
                                              "or >= 1 minutes"):
            _ctx(tmp_path, "--time-budget", budget, "--runs", str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()
    assert _ctx(tmp_path, "--time-budget", "1", "--runs", str(tmp_path / "r")).deadline is not None


def test_a_call_refused_by_another_calls_lock_leaves_no_folder_it_made(tmp_path):
    with _ctx(tmp_path, "--runs", str(tmp_path / "r"), "--out", str(tmp_path / "f")):      # the first, running
        second = _ctx(tmp_path, "--runs", str(tmp_path / "r"), "--out", str(tmp_path / "f2"))
        assert (tmp_path / "f2").is_dir()
        with pytest.raises(InterpError, match="is being written by pid"):
            second.__enter__()
        assert not (tmp_path / "f2").exists() and (tmp_path / "r").is_dir()
