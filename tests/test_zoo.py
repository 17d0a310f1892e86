"""Zoo model: layouts, config validation, forward on CPU, reference mixers vs step loops, save/load."""
import pytest
import torch

from interp import InterpError
from interp.zoo import HybridLM, ZooConfig, load_model, match_params, resolve_layout, save_model
from hooks.scan import gdn as gdn_scan, gla as gla_scan, mamba2 as mamba2_scan

V = 50


def tiny(layout, **kw):
    base = dict(vocab_size=V, d_model=32, n_layers=4, layout=layout, n_heads=2, head_dim=16,
                mamba_head_dim=16, mamba_state=8)
    base.update(kw)
    return ZooConfig(**base)


def test_presets_12_layers():
    assert [i for i, k in enumerate(resolve_layout("gdn50", 12)) if k == "attn"] == [1, 3, 5, 7, 9, 11]
    assert [i for i, k in enumerate(resolve_layout("gla75", 12)) if k == "attn"] == [3, 7, 11]
    assert [i for i, k in enumerate(resolve_layout("mamba283", 12)) if k == "attn"] == [5, 11]
    assert resolve_layout("gdn100", 12) == ["gdn"] * 12
    assert resolve_layout("transformer", 12) == ["attn"] * 12
    assert resolve_layout("gdn@0,6", 12)[0] == "attn" and resolve_layout("gdn@0,6", 12)[6] == "attn"
    assert resolve_layout("gdn75-par", 12)[3] == "attn+gdn"
    assert resolve_layout("gdn75", 8) == ["gdn", "gdn", "gdn", "attn"] * 2  # the stated rule for other depths


@pytest.mark.parametrize("bad,match", [("gdn77", "unknown recurrent percentage 77"),
                                       ("gnd75", "did you mean gdn75"),
                                       ("gdn@12", "out of range 0..11"),
                                       ("attn,lstm," + "attn," * 10, "unknown mixer 'lstm'")])
def test_bad_layouts(bad, match):
    with pytest.raises(InterpError, match=match):
        resolve_layout(bad.rstrip(","), 12)


def test_config_validation_and_roundtrip():
    with pytest.raises(InterpError, match="d_model must be a positive integer"):
        tiny("transformer", d_model=0)
    with pytest.raises(InterpError, match="unknown field"):
        ZooConfig.from_dict({**tiny("gdn75").to_dict(), "bogus": 1})
    cfg = tiny("gla75")
    assert ZooConfig.from_dict(cfg.to_dict()) == cfg


ALL_LAYOUTS = ["transformer", "gdn75", "gla75", "mamba275", "gdn75-par", "gla75-par", "mamba275-par"]


@pytest.mark.parametrize("layout", ALL_LAYOUTS)
def test_forward_and_backward_cpu(layout):
    torch.manual_seed(0)
    m = HybridLM(tiny(layout))
    x = torch.randint(0, V, (2, 37))
    y = m(x)
    assert y.shape == (2, 37, V) and torch.isfinite(y).all()
    y.logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


@pytest.mark.parametrize("layout", ALL_LAYOUTS)
def test_causal(layout):
    """Changing a later token never changes earlier logits."""
    torch.manual_seed(0)
    m = HybridLM(tiny(layout)).eval()
    x = torch.randint(0, V, (1, 30))
    x2 = x.clone()
    x2[0, 20] = (x2[0, 20] + 1) % V
    with torch.no_grad():
        torch.testing.assert_close(m(x)[:, :20], m(x2)[:, :20], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout,module", [("gdn100", gdn_scan), ("gla100", gla_scan), ("mamba2100", mamba2_scan)])
@pytest.mark.parametrize("neg_eig", [False, True])
def test_reference_mixers_equal_step_loop(layout, module, neg_eig):
    """The whole model with its chunked pure-torch scans equals the same model run with the
    step-by-step recurrence in every mixer (fp32, tolerance 1e-4)."""
    if neg_eig and layout != "gdn100":
        pytest.skip("negative eigenvalues are a GDN option")
    torch.manual_seed(1)
    m = HybridLM(tiny(layout, gdn_neg_eig=neg_eig)).eval()
    x = torch.randint(0, V, (2, 70))  # > one 64-token chunk
    with torch.no_grad():
        ref_chunk = m(x)
        for b in m.blocks:
            b.mixer.scan_fn = module.naive
        ref_loop = m(x)
    torch.testing.assert_close(ref_chunk, ref_loop, atol=1e-4, rtol=1e-4)


def test_parallel_layers_have_both_mixers():
    m = HybridLM(tiny("gdn75-par"))
    par = m.blocks[3].mixer
    assert par.attn.n_heads == 1 and par.rec.n_heads == 1


def test_match_params():
    ref = HybridLM(tiny("transformer")).num_params()
    cfg = match_params(tiny("gdn75"), ref)
    assert abs(HybridLM(cfg).num_params() - ref) / ref < 0.02


def test_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    m = HybridLM(tiny("gdn75")).eval()
    save_model(m, tmp_path / "m")
    m2 = load_model(tmp_path / "m")
    x = torch.randint(0, V, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(m(x), m2(x), atol=0, rtol=0)
    assert m2.lm_head.weight.data_ptr() == m2.embed.weight.data_ptr()


def test_load_errors(tmp_path):
    with pytest.raises(InterpError, match="no zoo model at"):
        load_model(tmp_path / "nope")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"vocab_size": 10, "layout": "gdn99"}')
    with pytest.raises(InterpError, match="unknown recurrent percentage 99"):
        load_model(tmp_path / "bad")


def test_load_failure_on_a_whole_file_is_not_called_damage(tmp_path, monkeypatch):
    """A load that fails on an intact file (Ctrl-C inside torch's storage calls once came out as a ValueError) says
    to run again; a file cut short is still called damaged."""
    import interp.zoo.io as zio
    save_model(HybridLM(tiny("gdn75")), tmp_path / "m")
    wf = tmp_path / "m" / "model.safetensors"
    assert zio.safetensors_intact(wf)

    def broken(*a, **k):
        raise ValueError("could not determine the shape of object type 'torch.storage.UntypedStorage'")
    monkeypatch.setattr(zio, "load_file", broken)
    with pytest.raises(InterpError, match="although the file is whole.*run the same command again"):
        load_model(tmp_path / "m")
    monkeypatch.undo()
    wf.write_bytes(wf.read_bytes()[:-10])
    assert not zio.safetensors_intact(wf)
    with pytest.raises(InterpError, match="is damaged or not safetensors"):
        load_model(tmp_path / "m")
    wf.write_bytes(b"\x00" * 4)
    assert not zio.safetensors_intact(wf)
