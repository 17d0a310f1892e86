"""`interp capture --max-memory` covers the forward's working memory too (#18): batches run as forwards
sized to the budget (said on stderr; the same files whatever their size), a budget below one example's
forward is refused naming what it needs, the tensor-bytes meter, and peak RSS within 1.3x the budget."""
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import hooks
import interp.capture as C
from interp.capture import HEAP_ALLOWANCE, ForwardPeak, capture, fit_batch, load_capture, pieces
from interp.cli import main
from interp.tasks import VOCAB
from interp.zoo import HybridLM, ZooConfig, save_model

ROOT = Path(__file__).resolve().parents[1]


def model(d=128, layers=2, layout="gdn100"):
    torch.manual_seed(0)
    return HybridLM(ZooConfig(vocab_size=len(VOCAB), d_model=d, n_layers=layers, layout=layout, n_heads=4,
                              head_dim=d // 4)).eval()


def files(d):
    """{relative path: bytes} of every file under ``d``."""
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(Path(d).rglob("*")) if p.is_file()}


def test_pieces_split_each_batch_the_same_wherever_it_starts():
    assert list(pieces(0, 20, 8, 3)) == [(0, 2), (2, 5), (5, 8), (8, 10), (10, 13), (13, 16), (16, 18), (18, 20)]
    assert list(pieces(8, 20, 8, 3)) == list(pieces(0, 20, 8, 3))[3:]      # a resumed shard, another rank
    assert list(pieces(0, 20, 8, 8)) == list(pieces(0, 20, 8, 99)) == [(0, 8), (8, 16), (16, 20)]
    assert list(pieces(4, 9, 4, 1)) == [(4, 5), (5, 6), (6, 7), (7, 8), (8, 9)]


def test_forward_peak_counts_new_storages_until_freed():
    w = torch.zeros(1000)                                  # made before: its views and in-place ops are not new
    with ForwardPeak() as p:
        a = torch.zeros(1000)                              # 4000 bytes
        a.add_(1)
        _ = a.view(10, 100), w[:10], w.t(), w.mul_(1)
        c = a * 2                                          # 8000 held
        del c
        d = torch.ones(500)                                # 6000 held
    assert p.peak == {"cpu": 8000} and p.now == {"cpu": 6000}
    del a, d, _
    assert p.now == {"cpu": 0}


def test_batch_size_lowered_to_the_budget_and_said(tmp_path, one_thread):
    """24MB cannot hold 8 examples' forward (each about 4.9 MiB of tensors, 2x planned for the heap):
    forwards of 2, the most that fit (3 would not); 1GB holds the whole batch and says nothing."""
    m, x = model(), torch.randint(0, len(VOCAB), (20, 32))
    with pytest.warns(UserWarning, match=r"--max-memory 24MB holds the forward of 2 examples at a time .*"
                                         r"running batches of at most 2 instead of --batch-size 8") as said:
        capture(m, x, ["blocks.0.rec.state"], tmp_path / "c", max_memory="24MB", batch_size=8, progress=False)
    assert said[0].filename == __file__                    # points at the caller
    got = {}
    for b in (2, 3):
        with torch.no_grad(), ForwardPeak() as p:
            hooks.wrap(m).run_with_cache(x[:b], names=["blocks.0.rec.state"], device="cpu")
        got[b] = p.peak["cpu"] * HEAP_ALLOWANCE
    assert got[2] <= 24 * 2**20 < got[3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        capture(m, x, ["blocks.0.rec.state"], tmp_path / "d", max_memory="1GB", batch_size=8, progress=False)


def forced(step):
    """fit_batch with its choice of examples per forward replaced by ``step``."""
    def fit(*a, **kw):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return step, fit_batch(*a, **kw)[1]
    return fit


@pytest.mark.parametrize("step", [1, 3, 8])
def test_files_the_same_whatever_examples_per_forward(tmp_path, one_thread, monkeypatch, step):
    """The bench's model (d=128): the forwards' size changes no byte of any file (2 shards: 48 + 12)."""
    m, x = model(), torch.randint(0, len(VOCAB), (60, 32), generator=torch.Generator().manual_seed(0))
    kw = dict(max_memory="24MB", batch_size=8, progress=False)
    with pytest.warns(UserWarning, match="forward of 2 examples"):
        capture(m, x, ["blocks.0.rec.state", "blocks.1.resid_post"], tmp_path / "chosen", **kw)
    monkeypatch.setattr(C, "fit_batch", forced(step))
    capture(m, x, ["blocks.0.rec.state", "blocks.1.resid_post"], tmp_path / "forced", **kw)
    ref = files(tmp_path / "chosen")
    assert [s["stop"] for s in json.loads(ref["manifest.json"])["shards"]] == [48, 60]
    assert files(tmp_path / "forced") == ref


def test_small_model_rows_the_same_whatever_examples_per_forward(tmp_path, one_thread, monkeypatch):
    """The tests' small model (d=32): the same shards, rows and shapes; the numbers agree to float
    rounding only (torch's CPU kernels give such shapes slightly different last bits per batch size)."""
    m, x = model(32, 4, "gdn75"), torch.randint(0, len(VOCAB), (20, 24))
    names = ["blocks.1.rec.state", "blocks.3.resid_post"]
    out = {}
    for step in (1, 3, 8):
        monkeypatch.setattr(C, "fit_batch", forced(step))
        out[step] = capture(m, x, names, tmp_path / str(step), positions=[5, 23], max_memory="2MB", batch_size=8,
                            progress=False)
    man = {s: json.loads((out[s] / "manifest.json").read_text()) for s in out}
    assert man[1] == man[3] == man[8]
    got = {s: load_capture(out[s]) for s in out}
    for n in names:
        torch.testing.assert_close(got[1][n], got[8][n], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(got[3][n], got[8][n], atol=1e-6, rtol=1e-5)


def test_budget_below_one_example_is_refused_naming_what_it_needs(tmp_path, capsys):
    """Exit 2, one line naming the budget needed, nothing written but spec.json; that budget then
    works in the same --out (forwards of one example, said on stderr)."""
    save_model(model(), tmp_path / "model")
    base = ["capture", "--model", str(tmp_path / "model"), "--task", "mqar", "--n", "6", "--names",
            "blocks.0.rec.state", "--batch-size", "4", "--out", str(tmp_path / "c")]
    assert main(base + ["--max-memory", "1MB"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    need = re.fullmatch(r"error: --max-memory 1MB cannot hold the forward of one example with these hook names and "
                        r"positions \(it needs about ([0-9.]+MB)\); valid: --max-memory \1 or more\n", err)
    assert need, err
    assert sorted(files(tmp_path / "c")) == ["spec.json"]
    assert main(base + ["--max-memory", need.group(1)]) == 0
    got = capsys.readouterr()
    assert f"warning: capture: --max-memory {need.group(1)} holds the forward of 1 example at a time" in got.err
    assert "instead of --batch-size 4" in got.err and "wrote" in got.out
    assert load_capture(tmp_path / "c")["blocks.0.rec.state"].shape[0] == 6


def test_shard_size_sets_the_shards_apart_from_the_budget(tmp_path):
    """``shard_size``: shards of about that many bytes of captures, whatever the budget; in the spec
    only when given (folders captured before it existed resume)."""
    m, x = model(32, 4, "gdn75"), torch.randint(0, len(VOCAB), (10, 24))
    names = ["blocks.1.rec.state", "blocks.3.resid_post"]       # 2 x 1024 + 2 x 128 bytes an example
    out = capture(m, x, names, tmp_path / "s", positions=[5, 23], shard_size=10_000, batch_size=2, progress=False)
    man = json.loads((out / "manifest.json").read_text())
    assert [s["stop"] for s in man["shards"]] == [6, 10]          # 3 batches of 2 (4608 bytes each) reach 10_000
    assert json.loads((out / "spec.json").read_text())["spec"]["shard_size"] == 10_000
    plain = capture(m, x, names, tmp_path / "p", positions=[5, 23], batch_size=2, progress=False)
    assert "shard_size" not in json.loads((plain / "spec.json").read_text())["spec"]
    assert len(json.loads((plain / "manifest.json").read_text())["shards"]) == 1
    for n in names:
        assert torch.equal(load_capture(out)[n], load_capture(plain)[n])


@pytest.mark.parametrize("mt,kw", [
    ("gpt2", dict(n_embd=16, n_layer=1, n_head=2, n_positions=16)),
    ("gpt_neox", dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)),
])
def test_token_ids_beyond_the_vocabulary_refused_where_embed_is_a_dropout(tmp_path, mt, kw):
    """gpt2 / gpt_neox hook ``embed`` on an embedding dropout (no ``num_embeddings``): the id range
    is read from the model's input embeddings, so an id >= vocab is the one-line InterpError."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from interp import InterpError
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(AutoConfig.for_model(mt, vocab_size=40, pad_token_id=0, bos_token_id=1,
                                                              eos_token_id=1, **kw)).eval()
    assert not hasattr(hooks.wrap(m).adapter.embed(m), "num_embeddings")
    x = torch.randint(0, 40, (2, 6))
    x[1, 3] = 40
    with pytest.raises(InterpError, match=r"^token id 40 is out of range for this model; valid: 0\.\.39$"):
        capture(m, x, ["blocks.0.resid_post"], tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists()
    x[1, 3] = 39
    assert load_capture(capture(m, x, ["blocks.0.resid_post"], tmp_path / "c", progress=False))[
        "blocks.0.resid_post"].shape[:2] == (2, 6)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_rss_within_the_budget():
    """bench/bench_capture_memory.py at a small scale: peak RSS above the baseline <= 1.3x the budget."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pytest.skip("the process's peak RSS cannot be reset here")
    r = subprocess.run([sys.executable, "bench/bench_capture_memory.py", "--budgets", "32MB", "--n", "96"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    row = [line for line in r.stdout.splitlines() if line.startswith("| 32MB")]
    assert r.returncode == 0 and row, r.stdout + r.stderr[-2000:]
    assert float(row[0].split("|")[-2]) <= 1.3
