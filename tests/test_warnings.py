"""Statistics that warn (issue 23): intervals from fewer than 3 seeds flagged and accuracy intervals
clipped, patching's too-small clean - corrupted gap, probes' test-set sizes and thin classes, the
trainer's warm-ups, transformers' deprecated cache keywords in our adapters, a notebook without
stored warnings or local paths."""
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from interp import probes
from interp.cli import main
from interp.stats import MIN_SEEDS, few_seeds, seed_interval, t975, warn_few_seeds

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


# --- 1. seed intervals ---------------------------------------------------------------------------
def test_seed_interval_clips_to_bounds_and_keeps_numbers_inside():
    """Two seeds give a t-interval far outside [0, 1] (t 12.7; the issue's acc_lo -0.77, acc_hi
    1.63): clipped with bounds; with three seeds inside [0, 1] the numbers do not change."""
    two = [0.05, 0.81]
    m, lo, hi = seed_interval(two)
    assert lo < 0 and hi > 1
    assert seed_interval(two, bounds=(0, 1)) == (m, 0.0, 1.0)
    three = [0.6, 0.62, 0.65]
    assert seed_interval(three, bounds=(0, 1)) == seed_interval(three)
    half = t975(2) * np.std(three, ddof=1) / np.sqrt(3)
    assert seed_interval(three)[2] == pytest.approx(np.mean(three) + half)
    one = seed_interval([0.7], bounds=(0, 1))
    assert one[0] == 0.7 and np.isnan(one[1]) and np.isnan(one[2])


def test_warn_few_seeds_names_the_count():
    assert MIN_SEEDS == 3
    with pytest.warns(UserWarning, match=r"^accuracy: 95% intervals from 2 seeds \(fewer than 3; t quantile 12\.7 "
                                         r"with 1 degree\(s\) of freedom\) are unreliable; use 3 or more seeds$"):
        assert warn_few_seeds(2, "accuracy")
    with pytest.warns(UserWarning, match=r"^accuracy: 95% intervals from 2 seeds in 2 of 3 rows \(fewer than 3"):
        assert warn_few_seeds([2, 3, 2], "accuracy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_few_seeds([1, 3, 5])            # one seed has no interval at all; 3+ are fine
    assert few_seeds(np.array([1, 2, 3])).tolist() == [True, True, False]


def _per_seed(accs):
    """Per-seed probe rows of one (layer, site) with the given test accuracies."""
    rows = [dict(model="m", load=pd.NA, layer=0, site="resid_post", target="t", answered="all",
                 control_kind="shuffled", distance=pd.NA, accuracy=a, val_accuracy=a, control=0.1,
                 selectivity=a - 0.1, majority=0.1, surface=0.1, n_train=60, n=20, n_val=20, seed=s)
            for s, a in enumerate(accs)]
    return pd.DataFrame(rows)


def test_probe_aggregate_flags_two_seeds_and_clips():
    with pytest.warns(UserWarning, match="probe accuracy and selectivity .*column few_seeds.*from 2 seeds"):
        r = probes.aggregate(_per_seed([0.05, 0.81])).iloc[0]
    assert r["few_seeds"] and r["seeds"] == 2
    assert (r["acc_lo"], r["acc_hi"]) == (0.0, 1.0)
    assert (r["sel_lo"], r["sel_hi"]) == (-1.0, 1.0)      # selectivity: a difference of two accuracies
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r3 = probes.aggregate(_per_seed([0.6, 0.62, 0.65])).iloc[0]
    m, lo, hi = seed_interval([0.6, 0.62, 0.65])
    assert not r3["few_seeds"] and r3["seeds"] == 3
    assert (r3["accuracy"], r3["acc_lo"], r3["acc_hi"]) == pytest.approx((m, lo, hi))


# --- 2. patching: clean vs corrupted gap ------------------------------------------------------------
def _cell_stats(clean, corrupted):
    from interp.patching.assemble import cell_stats
    K = 6
    c, x = np.full(K, clean), np.full(K, corrupted)
    per_pair = {"ld": np.array([np.linspace(corrupted, clean, K)]), "prob": np.full((1, K), 0.5),
                "kl": np.zeros((1, K))}
    base = {"clean_logit_diff": clean, "corrupted_logit_diff": corrupted, "n": K}
    return cell_stats(per_pair, c, x, base, n_boot=50)


def test_patching_warns_on_a_gap_too_small_to_normalise_by():
    with pytest.warns(UserWarning) as rec:
        _cell_stats(-0.004, -0.033)                   # the tiny model
    msg = str(rec[0].message)
    assert msg == ("patching: mean logit differences clean -0.0040, corrupted -0.0330 over 6 pairs: they differ by "
                   "0.0290 nats, under 0.1, too little to normalise by; the clean one is not positive (the model does "
                   "not prefer the clean answer on the clean prompt); the normalised logit_diff, (patched - corrupted) "
                   "/ (clean - corrupted), is unreliable: read raw_logit_diff and prob")
    with pytest.warns(UserWarning, match=r"clean -0\.5000, corrupted -2\.0000 over 6 pairs: the clean one is not "
                                         r"positive \(the model"):
        _cell_stats(-0.5, -2.0)
    with pytest.warns(UserWarning, match=r"clean 1\.0000, corrupted 0\.9500 over 6 pairs: they differ by 0\.0500 "
                                         r"nats, under 0\.1, too little to normalise by; the normalised"):
        _cell_stats(1.0, 0.95)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = _cell_stats(2.0, -1.0)
    assert out["logit_diff"][0] == pytest.approx(0.5)


def test_a_cell_of_rounding_noise_lies_inside_its_own_interval():
    """The point estimate comes from the same float64 per-pair values as its bootstrap: a cell whose patched logit
    differences are the corrupted ones up to float32 rounding (a float32 sum of them had put it outside)."""
    from interp.patching.assemble import cell_stats
    rng = np.random.default_rng(0)
    K = 64
    c, x = rng.normal(3.0, 0.5, K).astype(np.float32), rng.normal(-3.0, 0.5, K).astype(np.float32)
    ld = (x + rng.normal(0, 1e-6, K).astype(np.float32)).astype(np.float32)
    per_pair = {"ld": ld[None].astype(np.float64), "prob": np.full((1, K), 0.5), "kl": np.zeros((1, K))}
    base = {"clean_logit_diff": float(c.mean()), "corrupted_logit_diff": float(x.mean()), "n": K}
    out = cell_stats(per_pair, c.astype(np.float64), x.astype(np.float64), base, n_boot=200)
    assert out["logit_diff_lo"][0] <= out["logit_diff"][0] <= out["logit_diff_hi"][0]
    assert abs(out["logit_diff"][0]) < 1e-6


def test_patching_sweep_warns_on_an_untrained_model():
    from interp import patching
    from interp import tasks as T
    from interp.zoo import HybridLM, ZooConfig
    torch.manual_seed(0)
    m = HybridLM(ZooConfig(vocab_size=len(T.VOCAB), d_model=32, n_layers=2, layout="gdn50", n_heads=2,
                           head_dim=16)).eval()                                    # logits near uniform
    p = T.make_pairs("mqar", 4, seed=0, n_pairs=4)
    with pytest.warns(UserWarning, match=r"patching: mean logit differences clean -?\d\.\d{4}, corrupted "
                                         r"-?\d\.\d{4} over 4 pairs: they differ by 0\.0\d{3} nats"):
        patching.sweep(m, p, layers=[0], positions=[0, 1], progress=False, keep_all=True, n_boot=20)


def test_patch_cli_prints_the_warning_as_one_line(tmp_path, capsys):
    from interp import tasks as T
    from interp.zoo import HybridLM, ZooConfig, save_model
    torch.manual_seed(0)
    save_model(HybridLM(ZooConfig(vocab_size=len(T.VOCAB), d_model=32, n_layers=2, layout="gdn50", n_heads=2,
                                  head_dim=16)).eval(), tmp_path / "tiny")
    assert main(["patch", "--model", str(tmp_path / "tiny"), "--layer", "0", "--n", "4", "--positions", "0:2",
                 "--keep-all", "--device", "cpu", "--out", str(tmp_path / "out")]) == 0
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    w = [x for x in err if "logit differences" in x]
    assert len(w) == 1 and w[0].startswith("warning: patching: mean logit differences clean ")
    assert not any("UserWarning" in x or "warnings.warn" in x for x in err)


# --- 3. probes: test-set sizes and thin classes -------------------------------------------------
def test_probe_warns_when_a_class_has_few_test_points():
    g = torch.Generator().manual_seed(0)
    N = 300
    y = torch.randint(0, 4, (N,), generator=g)
    y[:3] = 9                                          # class 9: three points (example 0)
    ex = torch.arange(N) // 3
    pts = probes.Points(ex, torch.zeros(N, dtype=torch.long), y, torch.zeros(N, dtype=torch.long) - 1,
                        torch.zeros(N, dtype=torch.long) - 1, torch.randint(0, 20, (N,), generator=g))
    X = torch.nn.functional.one_hot(y, 10).float() + 0.01 * torch.randn(N, 10, generator=g)
    role = probes.assign(ex, seed=0)
    test_of_9 = int(((role == 2) & (y == 9)).sum())
    with pytest.warns(UserWarning, match=rf"probe test split \(seed 0\): 1 of 5 classes have fewer than 5 test "
                                         rf"points \(label 9: {test_of_9}; \d+ test points in all\)"):
        probes.probe({(0, "x"): X}, pts, seed=0)
    keep = y != 9
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probes.probe({(0, "x"): X[keep]}, pts.select(keep), seed=0)   # ~15 test points per class


def test_probe_cli_prints_split_sizes_and_one_line_warnings(tmp_path, capsys):
    assert main(["probe", "--model", "gdn100", "--task", "mqar", "--target", "bound_value", "--n", "48",
                 "--seeds", "0,1", "--knob", "n_values=8", "--site", "resid_post", "--controls", "shuffled",
                 "--causal", "none", "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    res = pd.read_parquet(tmp_path / "probes.parquet")
    r = res[(res.answered == "all") & res.distance.isna()].iloc[0]
    assert (f"probe points of bound_value, per seed (mean over 2): train {r.n_train:.0f}, val {r.n_val / 2:.0f}, "
            f"test {r.n / 2:.0f}") in out.splitlines()
    assert res["few_seeds"].all() and (res["acc_lo"] >= 0).all() and (res["acc_hi"] <= 1).all()
    lines = [x for x in err.splitlines() if x.strip()]
    assert any(x.startswith("warning: probe accuracy and selectivity") and "from 2 seeds" in x for x in lines)
    assert any(x.startswith("warning: probe test split (seed 0): ") for x in lines)
    assert not any("UserWarning" in x or "warn(" in x for x in lines), lines     # one line each, no source


# --- 4. train -------------------------------------------------------------------------------------
def _train(tmp_path, **kw):
    from interp.train import TrainConfig, train
    model = dict(d_model=32, n_layers=2, layout="gdn50", n_heads=2, head_dim=16)
    cfg = TrainConfig(out=str(tmp_path / "run"), model=model, tasks=["mqar"], batch_size=4, eval_n=8,
                      save_every=100, seed=0, device="cpu", **kw)
    return train(cfg, progress=False)


def test_train_warns_on_warmup_as_long_as_training_and_a_near_zero_warmup(tmp_path, capsys, monkeypatch):
    import interp.train as TR
    monkeypatch.setattr(TR, "answer_accuracy", lambda model, batch, chunk=256: 0.02)
    _train(tmp_path, steps=3, warmup=3, induction_steps=1, eval_every=3)
    err = capsys.readouterr().err
    assert ("warning: the learning-rate warm-up (3 steps) is as long as training (3 steps): the learning rate "
            "reaches 0.001 only at the last step and never decays") in err
    assert ("warning: the induction warm-up ended at step 1 with held-out induction accuracy 0.020 (below 0.05; "
            "--induction-steps 1, --induction-until 0.9, --lr 0.001): no induction circuit formed") in err
    monkeypatch.setattr(TR, "answer_accuracy", lambda model, batch, chunk=256: 0.5)
    _train(tmp_path / "b", steps=3, warmup=2, induction_steps=1, eval_every=3)
    assert "warning" not in capsys.readouterr().err


# --- 5. transformers' deprecated cache keywords ----------------------------------------------------
@pytest.fixture
def deprecations():
    """Python FutureWarning / DeprecationWarning as errors, and transformers' logged deprecations
    (``logger.warning_once``, remembered per process: its memory cleared) collected."""
    pytest.importorskip("transformers")
    from transformers.utils import logging as hf_logging
    logging.Logger.warning_once.cache_clear()
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            if "deprecated" in record.getMessage():
                seen.append(record.getMessage())
    h = Keep()
    log = hf_logging.get_logger("transformers")
    log.addHandler(h)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        yield seen
    log.removeHandler(h)


@pytest.mark.parametrize("kind", ["mamba2", "bamba", "falcon_h1"])
def test_adapters_pass_the_cache_under_its_current_name(kind, deprecations):
    """Our replacement forwards (the Mamba2 mixer's; falcon_h1's decoder layer while its mixer_out is
    hooked) call transformers with the cache under the keyword it takes now (``cache``): a prefill
    into a cache with hooks on and a decoding step through the fallback raise no deprecation."""
    import hooks
    from hooks.adapters.hf_mamba import use_scan_forward
    from test_adapters_mamba import make, toks
    m = make(kind)
    hm = hooks.wrap(m)
    r = [L.index for L in hm.layers if L.rec is not None][0]
    name = f"blocks.{r}.mixer_out" if kind == "falcon_h1" else f"blocks.{r}.rec.state"
    with torch.no_grad():
        with hm.hooks(cache_names=[name], cache={}):
            out = m(input_ids=toks(), use_cache=True)
        with use_scan_forward(m):
            step = m(input_ids=toks(T=1, seed=5), use_cache=True, cache=out.cache).logits
    assert torch.isfinite(step).all()
    assert deprecations == []


# --- 6. the notebook ------------------------------------------------------------------------------
def test_notebook_has_no_stored_warnings_or_local_paths():
    text = (ROOT / "experiments" / "probes.ipynb").read_text()
    for local in ("/work/", "/tmp/", "/home/", "/Users/", "site-packages"):
        assert local not in text, local
    nb = json.loads(text)
    for i, cell in enumerate(nb["cells"]):
        for o in cell.get("outputs", []):
            assert not (o["output_type"] == "stream" and o["name"] == "stderr"), f"cell {i}: stderr output"
            body = "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
            assert "Warning" not in body and o["output_type"] != "error", f"cell {i}"
