"""DAS with the CUDA-graph path, on CPU: an eager stand-in for the capture (its replay re-runs the captured
pass into the same output tensors) must train the same subspace as plain eager DAS, so the wiring around
the graphs (static inputs, row indices on the device, R.backward(grad), the evaluation sums) is exact."""
import dataclasses

import pytest
import torch

from interp import interventions as iv, tasks as T
from interp.interventions import das, graphs


def _fake_capture(body, warmup=2):
    out = body()

    class Replay:
        def replay(self):
            with torch.enable_grad():
                for o, n in zip(out, body()):
                    o.copy_(n)
    return Replay(), out


@pytest.fixture(scope="module")
def model():
    from interp.models import load_any
    return load_any("gdn75")[0].eval()      # the shipped default: it answers mqar, so pairs are kept


@pytest.mark.parametrize("site", ["blocks.7.resid_pre", "blocks.4.rec.state"])
def test_graph_path_equals_eager(model, site, monkeypatch):
    pairs = T.make_pairs("mqar", 48, seed=0)
    # a batch size that leaves a short last batch, so graphed and eager batches mix in one epoch
    cfg = iv.DASConfig(rank=2, epochs=3, patience=3, batch_size=8, random_seeds=(0,))
    eager = iv.train_das(model, pairs, site, config=cfg)
    monkeypatch.setattr(graphs, "graphable", lambda dev: True)
    monkeypatch.setattr(graphs, "capture", _fake_capture)
    graphed = iv.train_das(model, pairs, site, config=dataclasses.replace(cfg, cuda_graphs=True))
    want = "on" if "resid" in site else "off (a rec.state patch decides on the host which steps to re-scan)"
    assert graphed.attrs["spec"]["cuda_graphs"] == want and eager.attrs["spec"]["cuda_graphs"] == "off (not on a GPU)"
    assert iv.DASConfig().cuda_graphs     # on by default (ignored on a CPU)
    assert torch.allclose(graphed.R, eager.R, atol=1e-6, rtol=0)
    assert graphed.iia.tolist() == pytest.approx(eager.iia.tolist(), abs=1e-9, nan_ok=True)
    he, hg = eager.attrs["history"], graphed.attrs["history"]
    assert [h["val_iia"] for h in hg] == [h["val_iia"] for h in he]
    assert [h["train_loss"] for h in hg] == pytest.approx([h["train_loss"] for h in he], rel=1e-6)


def test_failed_capture_falls_back_to_eager_with_a_warning(model, monkeypatch):
    def broken(body, warmup=2):
        raise graphs.GraphUnavailable("RuntimeError: operation not permitted when stream is capturing")
    monkeypatch.setattr(graphs, "graphable", lambda dev: True)
    monkeypatch.setattr(graphs, "capture", broken)
    pairs = T.make_pairs("mqar", 24, seed=0)
    cfg = iv.DASConfig(rank=1, epochs=1, batch_size=8, random_seeds=(0,), cuda_graphs=True)
    with pytest.warns(UserWarning, match="without CUDA graphs"):
        res = iv.train_das(model, pairs, "blocks.7.resid_pre", config=cfg)
    assert res.attrs["spec"]["cuda_graphs"].startswith("off (capture failed")
