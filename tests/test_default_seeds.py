"""(#20) The default models' extra training seeds by name: ``gdn75@seed1`` loads ``$INTERP_SEEDS_DIR/gdn75@seed1``
(``runs/defaults`` when unset), ``@seed0`` is the shipped model, and a missing or malformed name is one clear
error (exit 2 from the CLI) that says how to make the seed."""
import pytest
import torch

from interp import InterpError
from interp.cli import main
from interp.demo import default_model_path
from interp.models import load_any
from interp.tasks import VOCAB
from interp.zoo import HybridLM, ZooConfig, save_model


@pytest.fixture
def seeds(tmp_path, monkeypatch):
    torch.manual_seed(1)
    save_model(HybridLM(ZooConfig(vocab_size=len(VOCAB), d_model=32, n_layers=2, layout="gdn50", n_heads=2,
                                  head_dim=16)).eval(), tmp_path / "gdn75@seed1")
    monkeypatch.setenv("INTERP_SEEDS_DIR", str(tmp_path))
    return tmp_path


def test_seed_name_loads_that_folder(seeds):
    m, kind = load_any("gdn75@seed1")
    assert kind == "zoo" and m.config.d_model == 32                 # the tiny model, not the shipped gdn75
    assert default_model_path("gdn75@seed1") == seeds / "gdn75@seed1"


def test_seed0_is_the_shipped_model(seeds):
    assert default_model_path("gdn75@seed0") == default_model_path("gdn75")
    assert load_any("gdn75@seed0")[0].config.d_model == 128


@pytest.mark.parametrize("name, says", [("gdn75@seed2", "train_defaults.sh"), ("gdn75@x", "<name>@seed<k>"),
                                        ("nosuch@seed1", "not found")])
def test_bad_seed_names(seeds, name, says):
    with pytest.raises(InterpError, match=says.replace(".", r"\.")):
        load_any(name)


def test_cli_missing_seed_exits_2(seeds, capsys):
    assert main(["eval", "--model", "gdn100@seed7", "--task", "mqar", "--n", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gdn100@seed7" in err[0] and "INTERP_SEEDS_DIR" in err[0]
