"""The SAE bench (bench/bench_sae.py) and the default-model figure script (bench/sae_figures.py) run end to end
in their --quick CPU modes, through main() in-process, and write finite, positive numbers."""
import json
import math

import pandas as pd

from bench_scripts import load  # tests/, a sibling


def test_bench_sae_quick_writes_rates(tmp_path, capsys):
    out = tmp_path / "b.json"
    r = load("bench_sae").main(["--quick", "--out", str(out)])
    d, m = r["derived"], r["measured"]
    assert m["gdn_layers"] == [0, 1, 2] and m["heads"] == 4
    for k in ("writes_per_s_train", "final_states_per_s_train", "extrap_all_shared_s", "extrap_all_alone_s"):
        assert math.isfinite(d[k]) and d[k] > 0, k
    # examples per forward: every non-pad token's write against one state per sequence
    assert d["examples_per_forward_per_head_writes"] == m["tokens_per_forward"] > d["examples_per_forward_per_head_final"]
    assert m["writes_per_step"] == m["tokens_per_forward"] * m["heads"]
    assert d["n_dicts"] == 12 and d["extrap_all_alone_s"] > d["extrap_all_shared_s"]
    saved = json.loads(out.read_text())
    assert saved["derived"]["n_dicts"] == 12 and "Extrapolation" in saved["markdown"]
    assert "| ... + one rank-1 dictionary step per head (4) |" in capsys.readouterr().out


def test_sae_figures_quick_writes_tables_figure_report(tmp_path):
    summ = load("sae_figures").main([str(tmp_path), "--quick", "--models", "gdn100", "--dicts", "mqar readout"])
    assert list(summ.dictionary) == ["mqar readout"] and list(summ.layer) == [0]
    for f in ("summary.csv", "features.csv", "sae_gdn100.png", "report.md"):
        assert (tmp_path / f).stat().st_size > 0, f
    s = pd.read_csv(tmp_path / "summary.csv")
    for c in ("fvu", "acc_clean", "auroc_mean", "auroc_null_mean", "probe_raw"):
        assert s[c].between(0, 1.5).all(), c
    feats = pd.read_csv(tmp_path / "features.csv")
    assert len(feats) == s.n_values.iloc[0] and feats.auroc.between(0, 1).all()
    assert feats.feature.between(0, 63).all()  # --quick: 64 latents
    assert int(feats.holds.sum()) == s.values_held.iloc[0]
    assert "QUICK CPU RUN" in (tmp_path / "report.md").read_text()


def test_decoder_choice_same_reconstruction_and_clear_error():
    """use_decoder switches sparsify's sparse decoder: the eager decode equals the dense z W_dec + b_dec, the
    choice is reported back, and a bad name is refused naming the valid ones."""
    import pytest
    import torch

    from interp import InterpError
    from interp.sae import coder as C
    try:
        assert C.use_decoder("eager") == "eager"
        coder = C.new(16, 4, 64, 0)
        x = torch.randn(32, 16, generator=torch.Generator().manual_seed(1))
        dense = C.decode_dense(coder, C.dense_latents(coder, x))
        assert torch.allclose(C.reconstruct(coder, x), dense, atol=1e-5)
        with pytest.raises(InterpError, match="valid: auto, triton, eager"):
            C.use_decoder("fast")
    finally:
        C.use_decoder("auto")


def test_decoder_speed_rows_on_cpu(tmp_path):
    out = tmp_path / "d.json"
    mod = load("sae_decoder_speed")
    mod.SIZES = [("tiny", 64, 16, 64, 4)]
    r = mod.main(["--device", "cpu", "--steps", "2", "--out", str(out)])
    row = r["rows"][0]
    assert row["eager_s"] > 0 and row["faster"] in ("eager", "triton")
    assert json.loads(out.read_text())["faster_at_figures"] == row["faster"]
