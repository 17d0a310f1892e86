"""`interp patterns` and `interp.patterns` against hostile input: bounded --example, options that would be
ignored, repeated or colliding models and tasks, too few examples for an interval, knobs at their defaults, bad
layers and kinds: one InterpError line naming the valid choices, before any output folder exists. CPU."""
import json
import shutil

import numpy as np
import pytest
import torch

from interp import InterpError
from interp import patterns as P
from interp import tasks as T


def cli(tmp_path, capsys, *args, out="o"):
    from interp.cli import main
    capsys.readouterr()
    rc = main(["patterns", "--out", str(tmp_path / out), *args])
    return rc, capsys.readouterr().err.strip()


@pytest.mark.parametrize("args,match", [
    (["--layer", "0", "--example", "1000000"], "--example 1000000 is out of range; valid: 0..9999"),
    (["--layer", "0", "--example", "-1"], "--example -1 is out of range"),
    (["--html", "--kind", "attn"], "--kind attn chooses the mixer of --layer; valid: --kind with --layer"),
    (["--layer", "0", "--n", "5"], "--n does not apply to a pattern drawing"),
    (["--layer", "0", "--n-boot", "3"], "--n-boot does not apply to a pattern drawing"),
    (["--layer", "99"], "layer 99 out of range; valid: integers 0..11"),
    (["--layer", "-1"], "layer -1 out of range"),
    (["--layer", "3", "--kind", "rec"], "layer 3 has attn, not rec; valid: attn"),
    (["--layer", "0", "--knob", "n_pairs=8", "--knob", "n_pairs=4"], "--knob n_pairs is given twice"),
    (["--who-reads", "--n", "1"], "--n 1 is out of range with --who-reads; valid: integers >= 2"),
    (["--who-reads", "--model", "gdn75", "--task", "mqar", "--task", "mqar"], "--task mqar is given twice; valid: "
                                                                            "each --task once"),
    (["--who-reads", "--model", "gdn75", "--model", "gdn75"], "--model gdn75 is given twice"),
    (["--who-reads", "--model", "gdn75", "--task", "copy"], "no ground-truth source token for task 'copy'"),
])
def test_bad_input_is_one_line_and_makes_no_folder(tmp_path, capsys, args, match):
    rc, err = cli(tmp_path, capsys, *args)
    assert rc == 2 and match in err and len(err.splitlines()) == 1 and "valid" in err, err
    assert not (tmp_path / "o").exists()


def test_a_knob_at_its_default_resumes(tmp_path, capsys):
    """A figure made without knobs is the one made with a knob at its default (the spec records neither), and a
    knob off its default is a change; state_recall keeps recording its complexity=assign (old folders resume)."""
    args = ("--model", "gdn75", "--task", "mqar", "--layer", "7")
    assert cli(tmp_path, capsys, *args)[0] == 0
    spec = tmp_path / "o" / "gdn75_mqar_L7_ex0.png.json"
    assert json.loads(spec.read_text())["spec"]["knobs"] == {}
    rc, err = cli(tmp_path, capsys, *args, "--knob", "n_pairs=8")
    assert rc == 0, err
    rc, err = cli(tmp_path, capsys, *args, "--knob", "n_pairs=6")
    assert rc == 2 and "knobs.n_pairs: (absent) -> 6" in err
    assert cli(tmp_path, capsys, "--model", "gdn75", "--task", "state_recall", "--layer", "2")[0] == 0
    s = json.loads((tmp_path / "o" / "gdn75_state_recall_L2_ex0.png.json").read_text())["spec"]
    assert s["knobs"] == {"complexity": "assign"}


def test_who_reads_gives_models_of_one_name_distinct_labels(tmp_path, capsys):
    import pandas as pd
    from interp.demo import default_model_path
    other = tmp_path / "some" / "dir" / "gdn75"
    shutil.copytree(default_model_path("gdn75"), other)
    rc, err = cli(tmp_path, capsys, "--who-reads", "--model", "gdn75", "--model", str(other), "--task", "mqar",
                  "--n", "4", "--n-boot", "20", "--knob", "n_pairs=8")
    assert rc == 0, err
    t = pd.read_csv(tmp_path / "o" / "results.csv")
    assert set(t.model) == {"gdn75", str(other)} and len(t) == 2 * 12 * 4
    assert json.loads((tmp_path / "o" / "spec.json").read_text())["spec"]["knobs"] == {"mqar": {}}


@pytest.fixture(scope="module")
def zoo():
    from interp.zoo import HybridLM, ZooConfig
    torch.manual_seed(0)
    return HybridLM(ZooConfig(vocab_size=len(T.VOCAB), d_model=32, n_layers=2, layout="gdn75", n_heads=2,
                              head_dim=16)).eval()


def test_api_bad_input_is_an_interp_error(tmp_path, zoo):
    b = T.generate("mqar", 1, seed=0)
    A3 = np.zeros((1, 3, 3))
    bad = [(lambda: P.who_reads(zoo, "mqar", n=8, n_boot=0), "n_boot=0 is out of range; valid: integers >= 1"),
           (lambda: P.who_reads(zoo, "mqar", n=1), "n=1 is out of range; valid: integers >= 2"),
           (lambda: P.plot_pattern(A3, "attn", ["a", "b", "c"], tmp_path / "x.png", rows=[10]),
            "marked row or source 10 is out of range; valid: positions 0..2"),
           (lambda: P.plot_pattern(np.zeros((0, 3, 3)), "attn", ["a", "b", "c"], tmp_path / "x.png"),
            "a pattern of shape (0, 3, 3)"),
           (lambda: P.plot_pattern(A3, "attn", ["a", "b"], tmp_path / "x.png"), "with 2 words; valid: [H >= 1, T, T]"),
           (lambda: P.pattern_html([(0, "attn", A3)], ["a", "b", "c"], tmp_path / "x.html", rows=[1], src=[7]),
            "source 7 is out of range"),
           (lambda: P.example_pattern(zoo, b, True), "layer True out of range; valid: integers 0..1"),
           (lambda: P.example_pattern(zoo, b, 0, example=5), "example 5 out of range; valid: 0..0"),
           (lambda: P.write_who_reads([], tmp_path / "w"), "valid: a non-empty list of WhoReads")]
    for f, match in bad:
        with pytest.raises(InterpError) as e:
            f()
        assert match in str(e.value), str(e.value)
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "w").exists()
    r = P.who_reads(zoo, "mqar", n=2, n_boot=5)
    with pytest.raises(InterpError, match="one per \\(model, task\\)"):
        P.write_who_reads([r, r], tmp_path / "w")
    assert P.plot_pattern(A3, "attn", ["a", "b", "c"], tmp_path / "ok.png", rows=[2], src=[0]).is_file()
