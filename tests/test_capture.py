"""`interp capture`: shards + manifest, streaming under a memory budget, resume, errors."""
import json

import torch

import hooks
from interp.capture import capture, load_capture
from interp.cli import main
from interp.zoo import HybridLM, ZooConfig, save_model


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
    # budget of ~1 batch -> several shards
    out = capture(m, x, names, tmp_path / "cap", positions=[5, 23], max_memory=20_000, batch_size=2,
                  progress=False)
    man = json.loads((out / "manifest.json").read_text())
    assert len(man["shards"]) > 1 and man["shards"][-1]["stop"] == 10
    got = load_capture(out)
    _, ref = hooks.wrap(m).run_with_cache(x, names=names, positions=[5, 23])
    for n in names:
        torch.testing.assert_close(got[n], ref[n], atol=1e-6, rtol=1e-5)


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
