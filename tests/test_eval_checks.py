"""`interp eval` and `interp.evaluate.sweep` against hostile input: repeated tasks or knobs, --overwrite without
--out, knobs of a task not swept, no model, and a model whose vocabulary lacks the task's token ids (exit 2,
one line, nothing written)."""
import pytest
import torch

from interp import InterpError
from interp.cli import main
from interp.evaluate import sweep

torch.set_num_threads(1)   # 2 shared cores


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub look-ups


@pytest.fixture(scope="module")
def hf64(tmp_path_factory):
    """A local Hugging Face checkpoint with 64 token ids (the task vocabulary has more)."""
    from transformers import AutoModelForCausalLM, LlamaConfig
    d = tmp_path_factory.mktemp("hf64") / "m"
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
    return d


def run(argv, capsys):
    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("extra,msg", [
    (["--task", "mqar", "--task", "mqar"], "--task mqar is given twice"),
    (["--task", "mqar", "--knob", "n_pairs", "--knob", "n_pairs"], "--knob n_pairs is given twice"),
    (["--task", "mqar", "--knob", "n_pairs", "--overwrite"], "--overwrite without --out"),
    (["--task", "mqar", "--model", "gdn75"], "--model gdn75 is given twice"),
])
def test_eval_refuses_repeats_and_overwrite_without_out(extra, msg, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, err = run(["eval", "--model", "gdn75", "--n", "2", *extra], capsys)
    assert rc == 2 and msg in err and "valid:" in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_eval_small_vocabulary_model_exit_2(hf64, tmp_path, capsys):
    out = tmp_path / "o" / "acc.csv"
    rc, err = run(["eval", "--model", str(hf64), "--task", "mqar", "--knob", "n_pairs", "--n", "2",
                   "--out", str(out)], capsys)
    assert rc == 2 and "out of range; valid: 0..63" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_sweep_refuses_bad_arguments():
    from interp.models import load_any
    m = load_any("gdn75")[0]
    with pytest.raises(InterpError, match="knobs are given for task 'state_recall', which is not swept"):
        sweep({"t": m}, tasks=["mqar"], knobs={"state_recall": ["n_facts"]}, n=2, progress=False)
    with pytest.raises(InterpError, match="at least one model"):
        sweep({}, tasks=["mqar"], n=2, progress=False)
    with pytest.raises(InterpError, match="task 'mqar' is given twice"):
        sweep({"t": m}, tasks=["mqar", "mqar"], n=2, progress=False)
    with pytest.raises(InterpError, match="n 0 is not valid"):
        sweep({"t": m}, tasks=["mqar"], n=0, progress=False)
    res = sweep({"t": m}, tasks="mqar", knobs={"mqar": ["n_pairs"]}, n=2, progress=False)   # one task as a string
    assert set(res.task) == {"mqar"} and (res.n == 2).all() and list(res.pivot().columns) == ["t"]
