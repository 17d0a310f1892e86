"""The ``kernels`` field of result specs (interp.kernels): absent with the defaults, the non-default settings
where set, recorded by every result writer, and a resume under other kernels refused naming it."""
import argparse
import json

import pytest
import torch

from interp import InterpError, tasks
from interp.cli import main
from interp.kernels import kernel_spec, settings
from interp.zoo import HybridLM, ZooConfig

KERNEL_ENV = ("HYBRID_INTERP_FLA_IEEE", "HYBRID_INTERP_CONV", "HYBRID_INTERP_NORM", "HYBRID_INTERP_DQKWG",
              "HYBRID_INTERP_DQKWG_IMPL", "HYBRID_INTERP_DQKWG_COMPILE")


@pytest.fixture(autouse=True)
def default_kernels(monkeypatch):
    for var in KERNEL_ENV:
        monkeypatch.delenv(var, raising=False)


def tiny():
    torch.manual_seed(0)
    return HybridLM(ZooConfig(vocab_size=len(tasks.VOCAB), d_model=32, n_layers=2, layout="gdn50", n_heads=2,
                              head_dim=16)).eval()


def test_settings_name_only_what_differs_from_the_defaults(monkeypatch):
    assert settings() == {} and kernel_spec(training=True) == {}
    monkeypatch.setenv("HYBRID_INTERP_CONV", "fla")
    monkeypatch.setenv("HYBRID_INTERP_DQKWG_IMPL", "torch")
    monkeypatch.setenv("HYBRID_INTERP_DQKWG", "0")
    assert kernel_spec() == {"kernels": {"conv": "fla"}}
    assert settings(training=True) == {"conv": "fla", "dqkwg": "off", "dqkwg_impl": "torch"}
    monkeypatch.setenv("HYBRID_INTERP_NORM", "apex")
    with pytest.raises(InterpError, match="HYBRID_INTERP_NORM='apex'; valid: torch, fla"):
        settings()


def test_ieee_products_are_named(monkeypatch):
    from hooks.scan import fla_precision
    monkeypatch.setattr(fla_precision, "_ACTIVE", True)
    assert settings() == {"fla_products": "ieee"}


def test_each_writer_records_them(monkeypatch, tmp_path):
    from interp.capture import capture_spec
    from interp.cli.generate import _spec
    from interp.interventions.store import save_subspace
    from interp.probes.units import probe_spec
    from interp.sae.train import spec_of
    m, x = tiny(), tasks.generate("mqar", 2, seed=0).tokens
    gen = argparse.Namespace(model="m", prompt=["a"], task=None, knob=None, n=1, max_new=2, samples=1,
                             temperature=1.0, top_p=1.0, seed=0)

    class Site:
        def label(self):
            return "L0.resid_post"

    class Source:
        def spec(self):
            return {"task": "mqar"}

    def specs():
        return {"capture": capture_spec(m, x, ["L0.resid_post"]),
                "probe": probe_spec({"m": m}, "mqar", "answer", ["L0.resid_post"], 8, [0], None, [], {}, "torch",
                                    1.0, (0.5, 0.25, 0.25), [], 0.5, None, 8),
                "sae": spec_of(m, Site(), Source(), 4, 16, 1e-3, 0.0, 100, 0),
                "generate": _spec(gen, m)}

    assert all("kernels" not in s for s in specs().values())
    monkeypatch.setenv("HYBRID_INTERP_NORM", "fla")
    assert {k: s.get("kernels") for k, s in specs().items()} == {k: {"norm": "fla"} for k in specs()}
    _, js = save_subspace(torch.eye(2, 4), {"site": "x"}, tmp_path / "R")
    assert json.loads(js.read_text())["kernels"] == {"norm": "fla"}


def test_a_trained_model_and_a_runs_directory_record_them(monkeypatch, tmp_path):
    from interp.experiment.results import check_spec
    from interp.train import TrainConfig, train
    monkeypatch.setenv("HYBRID_INTERP_DQKWG_COMPILE", "1")
    c = TrainConfig(out=str(tmp_path / "run"), model=dict(d_model=32, n_layers=2, layout="gdn50", n_heads=2,
                    head_dim=16), tasks=["mqar"], steps=2, batch_size=4, eval_every=2, eval_n=8, warmup=1,
                    device="cpu")
    train(c, progress=False, stop_after=1)
    with monkeypatch.context() as env:   # the checkpoint records its kernels: resuming under others is refused
        env.delenv("HYBRID_INTERP_DQKWG_COMPILE")
        with pytest.raises(InterpError, match=r'kernels: \{"dqkwg_compile": true\} -> \(absent\)'):
            train(c, progress=False)
    train(c, progress=False)
    assert json.loads((tmp_path / "run" / "meta.json").read_text())["kernels"] == {"dqkwg_compile": True}
    check_spec(tmp_path / "runs", {"profile": "quick"})
    monkeypatch.delenv("HYBRID_INTERP_DQKWG_COMPILE")
    with pytest.raises(InterpError, match="kernels"):
        check_spec(tmp_path / "runs", {"profile": "quick"})


def test_a_capture_resumed_under_other_kernels_is_refused(monkeypatch, tmp_path, capsys):
    argv = ["capture", "--model", "gdn100", "--task", "mqar", "--n", "2", "--names", "blocks.0.resid_post",
            "--device", "cpu", "--out", str(tmp_path / "cap")]
    assert main(argv) == 0
    spec = json.loads((tmp_path / "cap" / "spec.json").read_text())["spec"]
    assert "kernels" not in spec
    capsys.readouterr()
    monkeypatch.setenv("HYBRID_INTERP_CONV", "fla")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'kernels: (absent) -> {"conv": "fla"}' in err[0]
