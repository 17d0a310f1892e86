"""`interp generate`, `interp.voting` and `interp.closedloop` against hostile input: the shipped CoT tasks run,
every bad task / knob / sampling option / model vocabulary is one InterpError line naming the valid choices,
checked before anything is written; equal settings resume. CPU."""
import json

import pytest
import torch

from interp import InterpError
from interp import tasks as T
from interp.closedloop import sample_chains
from interp import voting

PROMPT = "<bos> x0 = 3 ; ? x0"


def cli(tmp_path, capsys, *args, out="o"):
    from interp.cli import main
    capsys.readouterr()
    try:
        rc = main(["generate", "--out", str(tmp_path / out), *args])
    except SystemExit as e:         # argparse's own usage errors
        rc = e.code
    return rc, capsys.readouterr().err.strip()


@pytest.fixture(scope="module")
def zoo():
    from interp.zoo import HybridLM, ZooConfig
    torch.manual_seed(0)
    return HybridLM(ZooConfig(vocab_size=len(T.VOCAB), d_model=32, n_layers=2, layout="gdn75", n_heads=2,
                              head_dim=16)).eval()


@pytest.fixture(scope="module")
def small_vocab_llama(tmp_path_factory):
    from transformers import AutoModelForCausalLM, LlamaConfig
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("hf") / "hfllama"
    AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                                 num_hidden_layers=2, num_attention_heads=2,
                                                 num_key_value_heads=2)).save_pretrained(path)
    return path


def test_the_shipped_cot_task_runs_and_resolved_task_resumes(tmp_path, capsys):
    rc, err = cli(tmp_path, capsys, "--task", "state_recall_cot", "--n", "2", "--knob", "n_steps=2", out="a")
    assert rc == 0, err
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["task"] == "state_recall_cot"
    # no --task is state_recall: the same result, so the folder resumes (it was refused as task null -> ...)
    assert cli(tmp_path, capsys, "--n", "2", "--knob", "n_steps=2", out="b")[0] == 0
    rc, err = cli(tmp_path, capsys, "--task", "state_recall", "--n", "2", "--knob", "n_steps=2", "--knob", "n_vars=3",
                  "--seed", "0", out="b")      # n_vars=3 and seed 0 are the defaults: still the same settings
    assert rc == 0, err
    assert json.loads((tmp_path / "b" / "spec.json").read_text())["spec"]["knob"] == ["n_steps=2"]


@pytest.mark.parametrize("args,match", [
    (["--task", "parity"], "--task parity has no chain-of-thought form (no 'is' steps); valid: multihop, "
                           "state_recall, state_recall_cot"),
    (["--task", "mqar", "--knob", "n_pairs=2"], "--task mqar has no chain-of-thought form"),
    (["--knob", "n_steps=0"], "with n_steps=0 writes no chain-of-thought step; valid: n_steps >= 1 (of 0..256)"),
    (["--task", "multihop", "--knob", "hops=1"], "valid: hops >= 2"),
    (["--knob", "cot=false"], "--knob cot=false is not valid"), (["--task", "state_recall_cot", "--knob", "cot=true"],
                                                                  "valid: its other knobs (n_steps, "),
    (["--knob", "n_steps=2", "--knob", "n_steps=3"], "--knob n_steps is given twice (n_steps=2, n_steps=3); valid: "
                                                     "each knob once"),
    (["--knob", "nope=2"], "unknown knob 'nope'"), (["--task", "nosuch"], "unknown task 'nosuch'"),
    (["--samples", "100000000000"], "--samples 100000000000 is out of range; valid: integers 1..1024"),
    (["--n", "100000", "--samples", "1000"], "chains is too many; valid: at most"),
    (["--prompt", PROMPT, "--temperature", "1e-310", "--samples", "2"], "--temperature 1e-310 is out of range; "
                                                                         "valid: finite numbers >= 1e-06"),
    (["--knob", "n_steps=2", "--temperature", "1e-310", "--samples", "2"], "--temperature 1e-310 is out of range"),
    (["--prompt", PROMPT, "--temperature", "0.5"], "--temperature does not apply to --samples 1"),
    (["--prompt", PROMPT, "--top-p", "0.5"], "--top-p does not apply to --samples 1"),
    (["--prompt", PROMPT, "--seed", "3"], "--seed does not apply to --samples 1"),
    (["--knob", "n_steps=2", "--temperature", "2"], "--temperature does not apply to --samples 1"),
    (["--prompt", PROMPT + " zzz"], "--prompt: prompt"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, match):
    rc, err = cli(tmp_path, capsys, *args)
    assert rc == 2 and match in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_sampling_defaults_are_accepted_greedy(tmp_path, capsys):
    """The sampling options at their defaults do nothing with --samples 1 and are not refused."""
    rc, err = cli(tmp_path, capsys, "--prompt", PROMPT, "--max-new", "2", "--temperature", "0.8", "--top-p", "0.9",
                  "--seed", "0")
    assert rc == 0, err


def test_tiny_temperature_samples_no_traceback(tmp_path, capsys):
    rc, err = cli(tmp_path, capsys, "--prompt", PROMPT, "--temperature", "1e-6", "--samples", "2", "--max-new", "2")
    assert rc == 0, err


def test_small_vocab_hf_model_is_refused_before_writing(tmp_path, capsys, small_vocab_llama):
    rc, err = cli(tmp_path, capsys, "--model", str(small_vocab_llama), "--n", "2", "--knob", "n_steps=1")
    assert rc == 2 and "out of range 0..63 (the model's vocabulary has 64 ids); valid: a model of the task" in err
    rc, err = cli(tmp_path, capsys, "--model", str(small_vocab_llama), "--prompt", "1 2 3")
    assert rc == 2 and "has none; valid: a model with one" in err and "token ids [batch" not in err
    assert not (tmp_path / "o").exists()


def test_api_sampling_options_are_checked(zoo):
    lg = torch.randn(3, 7)
    b = T.generate("state_recall", 3, seed=0, n_steps=2, n_vars=2, cot=True)
    bad = [(lambda: voting.sample_answers(lg, 4, temperature=-1), "temperature -1 is out of range; valid:"),
           (lambda: voting.sample_answers(lg, 4, temperature=0), "temperature 0 is out of range"),
           (lambda: voting.sample_answers(lg, 4, top_p=0), "top_p 0 is out of range; valid: numbers in (0, 1]"),
           (lambda: voting.sample_answers(lg, 4, top_p=5), "top_p 5"),
           (lambda: voting.sample_answers(lg, 4, temperature=1e-310), "temperature 1e-310"),
           (lambda: voting.sample_answers(lg, 0), "k=0"),
           (lambda: sample_chains(zoo, b, 2, sample=True, temperature=-1), "temperature -1"),
           (lambda: sample_chains(zoo, b, 2, sample=True, temperature=1e-310), "temperature 1e-310"),
           (lambda: sample_chains(zoo, b, 2, sample=True, top_p=5), "top_p 5"),
           (lambda: sample_chains(zoo, b, 0), "k=0 is not valid; valid: integers >= 1"),
           (lambda: voting.vote_curve(torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, dtype=torch.long), ns=(0,)),
            "ns has N=0; valid: integers >= 1 and <= 4"),
           (lambda: voting.vote_curve(torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, dtype=torch.long), ns=(8,)),
            "ns has N=8"),
           (lambda: voting.chain_vote_rows(zoo, b, ns=()), "empty")]
    for f, match in bad:
        with pytest.raises(InterpError) as e:
            f()
        assert match in str(e.value) and "valid:" in str(e.value)
    assert voting.sample_answers(lg, 4, temperature=1e-6).shape == (3, 4)      # the coldest allowed is stable
    assert torch.equal(voting.sample_answers(lg, 4, temperature=1e-6)[:, 0], lg.argmax(-1))


def test_chains_refuse_a_batch_of_several_layouts(zoo):
    def gen(**k):
        return T.generate("state_recall", 2, seed=0, n_vars=2, cot=True, **k)
    with pytest.raises(InterpError, match="batch row 0 is padded .*one layout"):
        sample_chains(zoo, T.pad_batches([gen(n_steps=2), gen(n_steps=4)]), 1)
    mixed = T.pad_batches([gen(n_steps=3), gen(n_steps=3)])
    mixed.tokens[1, (mixed.tokens[1] == T.VOCAB.id("is")).nonzero()[0]] = T.VOCAB.id(";")   # a marker moved away
    with pytest.raises(InterpError, match="batch row 1 has its markers or answer elsewhere than row 0"):
        sample_chains(zoo, mixed, 1)
    same = T.pad_batches([gen(n_steps=3), gen(n_steps=3)])        # one layout, padded or not: fine
    assert sample_chains(zoo, same, 1)["right"].shape == (4, 1)


def test_chains_check_the_models_vocabulary():
    from transformers import AutoModelForCausalLM, LlamaConfig
    m = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                                     num_hidden_layers=1, num_attention_heads=2,
                                                     num_key_value_heads=2)).eval()
    b = T.generate("state_recall", 2, seed=0, n_steps=1, cot=True)
    with pytest.raises(InterpError, match=r"out of range 0\.\.63"):
        sample_chains(m, b, 1)
