"""Probes: torch backend vs scikit-learn on the same data, controls, errors."""
import pytest
import torch

from interp import InterpError, probes
from interp import tasks as T
from interp.cli import main
from interp.zoo import HybridLM, ZooConfig


def model(layout="gdn75"):
    torch.manual_seed(0)
    return HybridLM(ZooConfig(vocab_size=len(T.VOCAB), d_model=32, n_layers=4, layout=layout, n_heads=2,
                              head_dim=16)).eval()


def test_torch_backend_agrees_with_sklearn():
    """Same features, same split, same L2 strength: test accuracies within 3 points (small data)."""
    feats, y, ex, tok = probes.collect(model(), "state_recall", "var_value[0]", ["resid_post", "rec.state"], n=96)
    a = probes.probe(feats, y, ex, tok, backend="torch")
    b = probes.probe(feats, y, ex, tok, backend="sklearn")
    assert len(a) == 4 + 3  # resid_post at 4 layers + rec.state at the 3 GDN layers
    for ra, rb in zip(a, b):
        assert (ra["layer"], ra["site"]) == (rb["layer"], rb["site"])
        assert abs(ra["accuracy"] - rb["accuracy"]) <= 0.03, (ra, rb)
        assert abs(ra["control"] - rb["control"]) <= 0.03, (ra, rb)


def test_probe_decodes_a_planted_feature():
    """A feature that is a linear code of the label is decoded perfectly; noise is not."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (600,))
    ex = torch.arange(600) // 6
    tok = torch.randint(0, 50, (600,))
    planted = torch.nn.functional.one_hot(y, 5).float() + 0.01 * torch.randn(600, 5, generator=g)
    noise = torch.randn(600, 5, generator=g)
    rows = {r["site"]: r for r in probes.probe({(0, "planted"): planted, (0, "noise"): noise}, y, ex, tok)}
    assert rows["planted"]["accuracy"] == 1.0
    assert rows["noise"]["accuracy"] < 0.45


def test_result_frame_and_plot(tmp_path):
    df = probes.run({"a": model(), "b": model("transformer")}, "mqar", "bound_value", n=48)
    assert {"model", "layer", "site", "target", "accuracy", "control", "selectivity", "majority"} <= set(df.columns)
    df.plot(tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


@pytest.mark.parametrize("kw,msg", [
    (dict(task="mqar", target="var_value[0]"), "target 'var_value[0]' is not produced by task 'mqar'; valid targets: bound_value"),
    (dict(task="state_recall", target="var_value"), "needs a column index"),
    (dict(task="state_recall", target="var_value[0]", sites=["rec.state"], layout="transformer"), "site 'rec.state' is not present"),
    (dict(task="state_recall", target="var_value[0]", sites=["resid"]), "unknown probe site 'resid'"),
])
def test_errors(kw, msg):
    layout = kw.pop("layout", "gdn75")
    with pytest.raises(InterpError, match=None) as e:
        probes.collect(model(layout), n=8, **kw)
    assert msg in str(e.value)


def test_cli_probe(tmp_path, capsys):
    assert main(["probe", "--model", "gdn100", "--task", "state_recall", "--target", "var_value[1]", "--n", "32",
                 "--out", str(tmp_path)]) == 0
    assert (tmp_path / "probes.csv").is_file() and (tmp_path / "probes.png").is_file()
    assert main(["probe", "--model", "transformer", "--site", "rec.state", "--n", "8", "--out", str(tmp_path)]) == 2
    assert "not present in" in capsys.readouterr().err
    # with several models a site missing in some of them is skipped there
    df = probes.run({"t": model("transformer"), "g": model()}, "state_recall", "var_value[0]",
                    sites=["rec.state"], n=16)
    assert set(df.model) == {"g"}
