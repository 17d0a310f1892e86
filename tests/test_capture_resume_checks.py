"""A capture resume rechecks the shards its manifest lists (a missing, cut or foreign shard is recomputed with those
after it; never 'already complete' with one missing), and an unfinished capture is never read as a finished one:
`load_capture` refuses it naming how many examples it holds (``partial=True``: those, tokens and labels alike), and
`interp sae train --capture` says so (exit 2). Small and CPU-only."""
import json
import shutil
from pathlib import Path

import pytest
import torch

import hooks
import interp.capture as C
from interp import InterpError
from interp.capture import capture, is_complete, load_capture
from interp.cli import main
from interp.tasks import VOCAB, generate
from interp.zoo import HybridLM, ZooConfig, save_model

NAMES = ["blocks.0.rec.state", "blocks.0.resid_post"]
KW = dict(batch_size=2, shard_size=1, progress=False)   # one batch of 2 examples per shard


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model (saved as ``model``), a task batch of 7 examples and its finished capture ``ref``."""
    w = tmp_path_factory.mktemp("resume_checks")
    torch.manual_seed(0)
    m = HybridLM(ZooConfig(vocab_size=len(VOCAB), d_model=32, n_layers=2, layout="gdn50", n_heads=2,
                           head_dim=16)).eval()
    save_model(m, w / "model")
    b = generate("mqar", 7, seed=0, n_pairs=4)
    capture(m, b.tokens, NAMES, w / "ref", inputs=b, meta={"task": "mqar"}, **KW)
    return w, m, b


def files(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(Path(d).rglob("*")) if p.is_file()}


def shards(out):
    return [s["file"] for s in json.loads((Path(out) / "manifest.json").read_text())["shards"]]


def interrupted_at(monkeypatch, forwards: int):
    """Make the capture stop (Ctrl-C) after ``forwards`` forwards, as a user's interruption would."""
    calls = []

    def stop():
        calls.append(1)
        if len(calls) > forwards:
            raise KeyboardInterrupt
    monkeypatch.setattr(C, "release_free_memory", stop)


# --- 1. a resume rechecks the shards --------------------------------------------------------------------------
@pytest.mark.parametrize("harm", ["cut", "delete", "foreign"])
def test_resume_recomputes_a_bad_shard_and_those_after_it(world, tmp_path, harm):
    w, m, b = world
    out = tmp_path / "c"
    shutil.copytree(w / "ref", out)
    listed = shards(out)
    assert len(listed) == 4
    f = out / listed[1]
    if harm == "cut":
        f.write_bytes(f.read_bytes()[:100])
    elif harm == "delete":
        f.unlink()
    else:                                   # a whole file, but the last shard's (1 example, not 2)
        shutil.copy(out / listed[3], f)
    assert not is_complete(out, 7)
    with pytest.warns(UserWarning, match=r"shard-00001.safetensors is (damaged|missing|not the shard the manifest "
                                         r"lists).*recomputing it and the 2 after it"):
        capture(m, b.tokens, NAMES, out, inputs=b, meta={"task": "mqar"}, **KW)
    assert files(out) == files(w / "ref") and is_complete(out, 7)


def test_cli_rerun_after_deleting_a_damaged_shard_recomputes_it(world, tmp_path, capsys):
    w, _, _ = world
    out = tmp_path / "cr"
    argv = ["capture", "--model", str(w / "model"), "--task", "mqar", "--n", "6", "--knob", "n_pairs=4",
            "--names", ",".join(NAMES), "--batch-size", "2", "--shard-size", "1", "--out", str(out)]
    assert main(argv) == 0
    first, f = files(out), out / "units" / "shard-00000.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(InterpError, match="shard-00000.safetensors is damaged"):
        load_capture(out)["blocks.0.rec.state"]
    f.unlink()                                          # as the message says
    capsys.readouterr()
    assert main(argv) == 0
    got = capsys.readouterr()
    assert "already complete" not in got.err and "wrote" in got.out and "shard-00000.safetensors is missing" in got.err
    assert files(out) == first
    assert main(argv) == 0 and "capture already complete (6 examples)" in capsys.readouterr().err


def test_a_damaged_inputs_unit_is_rewritten(world, tmp_path):
    w, m, b = world
    out = tmp_path / "c"
    shutil.copytree(w / "ref", out)
    f = out / "units" / "inputs.safetensors"
    f.write_bytes(f.read_bytes()[:50])
    assert not is_complete(out, 7)
    capture(m, b.tokens, NAMES, out, inputs=b, meta={"task": "mqar"}, **KW)
    assert files(out) == files(w / "ref")


def test_a_merged_distributed_manifest_is_cut_and_its_ranks_recompute(world, tmp_path):
    """A bad shard of a rank: the merged manifest is cut (rank files kept), so the capture is not complete; the rank
    recomputes its own shards and the merge gives what one process writes."""
    from interp import distributed
    from interp.capture import OWNS, capture_spec, open_store
    from interp.store import Store, part_folder
    w, m, b = world
    x, out, ranges = b.tokens, tmp_path / "cap", [(0, 4), (4, 7)]
    kw = dict(positions=[2, 5], batch_size=2, shard_size=1)
    spec = capture_spec(m, x, NAMES, meta={"x": 1}, **kw)
    Store(out, "capture", spec, owns=OWNS).open().close()
    for r, (a, e) in enumerate(ranges):
        capture(m, x[a:e], NAMES, part_folder(out, r), meta={"x": 1, "range": [a, e]}, progress=False, **kw)
    distributed.merge_captures(out, ranges, meta={"x": 1})
    ref = files(out)
    (out / "rank1" / "units" / "shard-00000.safetensors").unlink()
    assert not is_complete(out, 7)
    with pytest.warns(UserWarning, match="rank1/units/shard-00000.safetensors is missing"):
        open_store(out, spec).close()
    man = json.loads((out / "manifest.json").read_text())
    assert man["ranks"] == 2 and [s["file"] for s in man["shards"]] == [f"rank0/units/shard-0000{i}.safetensors"
                                                                         for i in range(2)]
    assert (out / "rank1" / "units" / "shard-00001.safetensors").is_file()        # the rank's own files are kept
    assert distributed._capture_state(out, 7, ranges) is False
    with pytest.warns(UserWarning, match="recomputing it and the 1 after it"):
        capture(m, x[4:7], NAMES, out / "rank1", meta={"x": 1, "range": [4, 7]}, progress=False, **kw)
    distributed.merge_captures(out, ranges, meta={"x": 1})
    assert files(out) == ref


# --- 2. an unfinished capture is not read as a finished one ---------------------------------------------------------
def test_load_capture_refuses_an_interrupted_capture_and_partial_gives_what_it_holds(world, tmp_path, monkeypatch):
    w, m, b = world
    out = tmp_path / "c"
    with monkeypatch.context() as mp:
        interrupted_at(mp, 2)
        with pytest.raises(KeyboardInterrupt):
            capture(m, b.tokens, NAMES, out, inputs=b, meta={"task": "mqar"}, **KW)
    assert len(shards(out)) == 2
    with pytest.raises(InterpError, match=r"c holds an unfinished capture \(4 of 7 examples\); valid: run the same "
                                          r"interp capture command again to finish it") as e:
        load_capture(out)
    assert "\n" not in str(e.value)
    for lazy in (False, True):   # hooks.Cache.load alike (it returned the 4 rows as if they were all)
        with pytest.raises(hooks.HookError, match=r"c holds an unfinished capture \(4 of 7 examples\); valid: run"):
            hooks.Cache.load(out, lazy=lazy)
        assert all(hooks.Cache.load(out, lazy=lazy, partial=True)[k].shape[0] == 4 for k in NAMES)
        part, ref = load_capture(out, partial=True, lazy=lazy), load_capture(w / "ref")
        assert part.tokens.shape[0] == 4 and torch.equal(part.tokens, ref.tokens[:4])
        assert part.labels and all(torch.equal(v, ref.labels[k][:4]) for k, v in part.labels.items())
        assert all(torch.equal(part[k], ref[k][:4]) for k in NAMES)
    capture(m, b.tokens, NAMES, out, inputs=b, meta={"task": "mqar"}, **KW)          # finished by the same call
    assert files(out) == files(w / "ref") and load_capture(out).tokens.shape[0] == 7


def test_sae_train_on_an_interrupted_capture_exits_2(world, tmp_path, capsys, monkeypatch):
    pytest.importorskip("sparsify")
    w, _, _ = world
    cap = tmp_path / "cint"
    with monkeypatch.context() as mp:
        interrupted_at(mp, 2)
        assert main(["capture", "--model", str(w / "model"), "--task", "mqar", "--n", "7", "--knob", "n_pairs=4",
                     "--names", ",".join(NAMES), "--batch-size", "2", "--shard-size", "1", "--out", str(cap)]) == 130
    capsys.readouterr()
    assert main(["sae", "train", "--model", str(w / "model"), "--capture", str(cap), "--site", "blocks.0.rec.state",
                 "--k", "2", "--features", "8", "--steps", "2", "--out", str(tmp_path / "sae")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cint holds an unfinished capture (4 of 7 examples)" in err[0], err
    assert "run the same interp capture command again" in err[0] and not (tmp_path / "sae").exists()


def test_capture_source_refuses_an_unfinished_text_capture(world, tmp_path, monkeypatch):
    """A capture of text windows (no task pads to drop) was read whole, its missing windows silently left out."""
    from interp.sae import CaptureSource, SaeSite
    w, m, b = world
    with monkeypatch.context() as mp:
        interrupted_at(mp, 1)
        with pytest.raises(KeyboardInterrupt):
            capture(m, b.tokens, NAMES, tmp_path / "t", meta={"text": "t.txt", "seq_len": 26}, **KW)
    with pytest.raises(InterpError, match=r"unfinished capture \(2 of 7 examples\)"):
        CaptureSource(tmp_path / "t", SaeSite("blocks.0.resid_post"))


def test_capture_source_refuses_tokens_of_other_examples_than_its_rows(world, tmp_path, monkeypatch):
    """Activations of fewer examples than the tokens beside them (a folder cut short): a one-line error, not an
    IndexError."""
    from interp.sae import CaptureSource, SaeSite
    w, _, b = world
    out = tmp_path / "c"
    shutil.copytree(w / "ref", out)
    man = json.loads((out / "manifest.json").read_text())
    man["shards"], man["n_examples"] = man["shards"][:2], 4          # as if it held 4 examples, tokens of 7 beside
    (out / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(InterpError, match=r"c holds activations of 4 examples but tokens of 7; valid: a finished "):
        CaptureSource(out, SaeSite("blocks.0.resid_post"))
