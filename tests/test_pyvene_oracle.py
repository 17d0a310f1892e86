"""pyvene 0.1.8 as the oracle for interp.interventions on a tiny HF Llama at a residual site
(pyvene's ``block_input`` = our ``blocks.L.resid_pre``): with the same fixed rotation our interchange
gives pyvene's logits (1e-5); with the same data, rank and seed our DAS reaches pyvene's held-out IIA
(within 2 points) by running `bench/bench_das.py --quick` (which also checks that the bench runs)."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from interp import interventions as iv

pv = pytest.importorskip("pyvene")
torch.set_num_threads(1)
BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_das.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_das", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def llama():
    from transformers import AutoModelForCausalLM, LlamaConfig
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return AutoModelForCausalLM.from_config(cfg).eval()


def test_pyvene_version():
    from importlib.metadata import version
    assert version("pyvene") == "0.1.8"


@pytest.mark.parametrize("layer,rank", [(0, 1), (1, 3), (2, 8)])
def test_fixed_rotation_matches_pyvene(llama, layer, rank):
    """Same R [rank, 32], per-row positions: every logit of the intervened run equals pyvene's."""
    g = torch.Generator().manual_seed(layer)
    base, src = torch.randint(0, 60, (5, 9), generator=g), torch.randint(0, 60, (5, 9), generator=g)
    pos = torch.randint(0, 9, (5, 1), generator=g)
    R = iv.random_basis(32, rank, seed=10 + layer)
    cfg = pv.IntervenableConfig(representations=[{"layer": layer, "component": "block_input",
                                                  "low_rank_dimension": rank}],
                                intervention_types=pv.LowRankRotatedSpaceIntervention)
    im = pv.IntervenableModel(cfg, llama)
    inter = list(im.interventions.values())[0]
    with torch.no_grad():
        inter.rotate_layer.weight = R.T.clone()
    torch.testing.assert_close(inter.rotate_layer.weight.detach(), R.T, atol=1e-6, rtol=0)
    loc = [[[int(p)] for p in pos[:, 0]]]
    with torch.no_grad():
        _, out = im({"input_ids": base}, [{"input_ids": src}], {"sources->base": (loc, loc)})
        import hooks
        hm = hooks.wrap(llama)
        name = f"blocks.{layer}.resid_pre"
        _, c = hm.run_with_cache(src, names=[name])
        s = iv.Site(name)
        ours = hm.run_with_hooks(base, hooks=[(name, lambda x, _: iv.edit_site(
            x, s, pos, c[name][torch.arange(5)[:, None], pos], R))])
    torch.testing.assert_close(ours, out.logits, atol=1e-5, rtol=1e-5)


def test_pyvene_random_init_is_ours():
    """pyvene's LowRankRotateLayer after torch.manual_seed(s) starts where our Rotation(seed=s) does,
    including the random completion of the orthogonal parametrisation's base."""
    torch.manual_seed(3)
    rl = torch.nn.utils.parametrizations.orthogonal(pv.models.layers.LowRankRotateLayer(32, 2))
    ours = iv.Rotation(32, 2, seed=3)
    torch.testing.assert_close(ours.weight, rl.weight, atol=0, rtol=0)
    torch.testing.assert_close(ours.parametrizations.weight[0].base, rl.parametrizations.weight[0].base, atol=0, rtol=0)
    torch.testing.assert_close(iv.random_basis(32, 2, seed=3), rl.weight.detach().T, atol=1e-6, rtol=0)


def test_das_matches_pyvene_and_bench_runs(tmp_path, capsys):
    bench = load_bench()
    r = bench.main(["--quick", "--out", str(tmp_path / "das.json")])
    assert "held-out (test) IIA" in capsys.readouterr().out
    assert json.loads((tmp_path / "das.json").read_text())["settings"]["rank"] == 1
    assert r["n_kept"] >= 100 and r["iia_full_test"] == 1.0
    assert abs(r["iia_ours"]["test"] - r["iia_pyvene"]["test"]) <= 0.02
    assert r["iia_ours"]["test"] >= r["iia_random_test"] + 0.3            # DAS learned something real
    torch.testing.assert_close(torch.tensor(r["R_ours"]), torch.tensor(r["R_pyvene"]), atol=1e-2, rtol=0)
