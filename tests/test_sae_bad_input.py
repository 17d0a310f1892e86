"""interp sae refuses bad input before it writes anything: heads and blocks the model lacks, captures of other
weights / of scattered positions / padded rows, a capture known by its spec (not its path), a diverging run, options
that do not apply, sizes out of range, someone else's folder; exit 2 with one line naming the value and the valid
ones, nothing left on disk. Small and CPU-only."""
import json
import shutil

import pytest
import torch

from interp import InterpError
from interp.cli import main
from interp.sae import CaptureSource, SaeEval, SaeSite, train
from interp.sae import coder as C
from interp.sae.data import STRIDE, step_seed
from interp.sae.evaluate import quality
from interp.tasks import VOCAB, generate
from interp.zoo import HybridLM
from interp.zoo.config import ZooConfig
from interp.zoo.io import save_model

pytest.importorskip("sparsify")
KNOB = ["--knob", "n_pairs=4"]
SMALL = ["--k", "2", "--features", "8", "--steps", "2", "--batch-size", "2"]
CAP_NAMES = "blocks.0.resid_post,blocks.0.rec.k,blocks.0.rec.v,blocks.0.rec.beta,blocks.0.rec.decay,blocks.0.rec.state"


def tiny(seed=0):
    torch.manual_seed(seed)
    cfg = ZooConfig(vocab_size=len(VOCAB), d_model=32, n_layers=2, layout="gdn100", n_heads=2, head_dim=16)
    return HybridLM(cfg).eval()


class Toy:
    def spec(self):
        return {"kind": "toy"}

    def rows(self, step):
        return torch.randn(64, 16, generator=torch.Generator().manual_seed(step))


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    """Two tiny models (other weights) and a trained resid_post coder of the first (run folder ``run``)."""
    w = tmp_path_factory.mktemp("sae_bad")
    save_model(tiny(), w / "model")
    save_model(tiny(seed=5), w / "other")
    assert main(["sae", "train", "--model", str(w / "model"), "--site", "blocks.0.resid_post", *SMALL, *KNOB,
                 "--out", str(w / "run")]) == 0
    return w


def err_of(capsys, argv, code=2) -> str:
    try:
        rc = main(argv)
    except SystemExit as e:          # argparse's refusals (a type or a choice)
        rc = e.code
    err = capsys.readouterr().err.strip().replace("\r", "\n").splitlines()[-1]   # (after any progress bar)
    assert rc == code, (argv, err)
    if code == 2:
        assert err.startswith("error:") and err.count("\n") == 0 and "Traceback" not in err, err
    return err


def train_cli(w, *args):
    return ["sae", "train", "--model", str(w / "model"), *args]


def eval_cli(w, *args, coder="run", site="blocks.0.resid_post"):
    return ["sae", "eval", "--coder", str(w / coder), "--model", str(w / "model"), "--site", site, "--n", "6",
            *KNOB, *args]


# --- heads, blocks, sizes -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("head", ["0", 1.5, -1, True])
def test_site_refuses_a_head_that_is_not_a_non_negative_int(head):
    with pytest.raises(InterpError, match="valid: an integer >= 0"):
        SaeSite("blocks.0.rec.state", head=head)


def test_site_head_beyond_the_layers_heads_is_refused(tmp_path):
    from interp.sae import ModelSource
    m, site = tiny(), SaeSite("blocks.0.rec.state", head=2)
    with pytest.raises(InterpError, match=r"head 2 of blocks.0.rec.state does not exist; valid: 0\.\.1"):
        train(m, site, ModelSource(m, site, "mqar", {"n_pairs": 4}, 2), k=2, features=8, steps=2, out=tmp_path / "o",
              progress=False)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args,word", [
    (["--site", "blocks.0.rec.readout", "--head", "7", "--transcode", "--target", "blocks.0.mlp_out"], "0..1"),
    (["--site", "blocks.0.rec.state", "--head", "99"], "0..1"),
    (["--site", "blocks.0.rec.state", "--head", "-1"], "head -1"),
    (["--site", "blocks.0.resid_pre", "--transcode", "--target", "blocks.0.rec.write_kd", "--target-head", "-2"],
     "head -2"),
    (["--site", "blocks.9.resid_post"], "blocks 0..1"),
    (["--site", "blocks.0.resid_post", "--transcode", "--target", "blocks.5.mlp_out"], "blocks 0..1"),
    (["--site", "blocks.0.resid_post", "--k", "100", "--features", "64"], "k <= features"),
    (["--site", "blocks.0.rec.write_kd", "--head", "0", "--rank1", "--k", "100", "--features", "64"], "k <= features"),
    (["--site", "blocks.0.resid_post", "--batch-size", "1000000000"], "<= 65536"),
    (["--site", "blocks.0.rec.write_kd", "--head", "0", "--rank1", "--auxk-alpha", "0.1"], "--auxk-alpha"),
    (["--site", "blocks.0.rec.write_kd", "--head", "0", "--rank1", "--dead-tokens", "10"], "--dead-tokens"),
    (["--site", "blocks.0.rec.write_kd", "--head", "0", "--rank1", "--decoder", "eager"], "--decoder"),
])
def test_cli_train_refuses_and_writes_nothing(w, capsys, tmp_path, args, word):
    err = err_of(capsys, train_cli(w, *SMALL, *KNOB, *args, "--out", str(tmp_path / "o")))
    assert word in err and not (tmp_path / "o").exists(), err


def test_cli_out_empty_is_refused(w, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "--out ''" in err_of(capsys, train_cli(w, "--site", "blocks.0.resid_post", *SMALL, *KNOB, "--out", ""))
    assert "--out ''" in err_of(capsys, eval_cli(w, "--target", "none", "--out", ""))
    assert not (tmp_path / "runs").exists() and not (w / "run" / "eval").exists()


def test_cli_bounds_are_the_apis():
    from interp.cli import sae as cli
    from interp.sae import checks
    assert (cli.MAX_FEATURES, cli.MAX_EXAMPLES) == (checks.MAX_FEATURES, checks.MAX_EXAMPLES)


def test_huge_seed_trains_and_step_seeds_do_not_overflow(w, capsys, tmp_path):
    assert step_seed(3, 7) == 3 * STRIDE + 7                              # ordinary seeds keep their data
    assert 0 <= step_seed(2 ** 53, 10 ** 6) < 2 ** 63
    assert main(train_cli(w, "--site", "blocks.0.resid_post", *SMALL, *KNOB, "--seed", str(2 ** 53),
                          "--out", str(tmp_path / "o"))) == 0


# --- captures -------------------------------------------------------------------------------------------------------
def _capture(w, name, *extra, model="model"):
    out = w / name
    if not out.exists():
        assert main(["capture", "--model", str(w / model), "--task", "mqar", "--n", "4", *KNOB, "--names", CAP_NAMES,
                     "--out", str(out), *extra]) == 0
    return out


def test_capture_of_other_weights_is_refused(w, capsys, tmp_path):
    cap = _capture(w, "cap")
    err = err_of(capsys, ["sae", "train", "--model", str(w / "other"), "--site", "blocks.0.resid_post", *SMALL,
                          "--capture", str(cap), "--out", str(tmp_path / "o")])
    assert "other model weights" in err and not (tmp_path / "o").exists()


def test_capture_refuses_task_and_knob(w, capsys, tmp_path):
    cap = _capture(w, "cap")
    for extra in (["--task", "mqar"], KNOB):
        err = err_of(capsys, train_cli(w, "--site", "blocks.0.resid_post", *SMALL, "--capture", str(cap), *extra,
                                       "--out", str(tmp_path / "o")))
        assert "does not apply to --capture" in err and not (tmp_path / "o").exists()


def test_gdn_write_site_from_scattered_positions_is_refused(w, capsys, tmp_path):
    cap = _capture(w, "cap_pos", "--positions", "3,5,9")
    site = SaeSite("blocks.0.rec.write_kd", 0)
    with pytest.raises(InterpError, match="positions 3,5,9 are not 0..n-1"):
        CaptureSource(cap, site, family="gdn")
    assert CaptureSource(cap, SaeSite("blocks.0.resid_post")).x.shape[0] == 4 * 3   # other sites read them
    assert CaptureSource(_capture(w, "cap"), site, family="gdn").x.shape[1] == 32


def test_padded_capture_trains_on_real_tokens_only(w, tmp_path):
    from interp.capture import capture
    from interp.sae.data import site_vectors, wrap
    m = tiny()
    tokens = generate("mqar", 3, seed=0, n_pairs=4).tokens
    mask = torch.ones_like(tokens)
    mask[1, :5] = 0
    mask[2, :2] = 0
    capture(m, tokens, ["blocks.0.resid_post"], tmp_path / "c", inputs={"attention_mask": mask}, progress=False,
            meta={"text": "x"})
    src = CaptureSource(tmp_path / "c", SaeSite("blocks.0.resid_post"))
    assert src.x.shape[0] == int(mask.sum())
    X, _ = site_vectors(wrap(m), SaeSite("blocks.0.resid_post"), tokens[:1])
    assert torch.allclose(src.x[:tokens.shape[1]], X[0], atol=1e-5)       # example 0 (no pads) comes first


def test_capture_run_resumes_by_spec_not_path(w, tmp_path, monkeypatch):
    m, site = tiny(), SaeSite("blocks.0.resid_post")
    kw = dict(k=2, features=8, save_every=1, progress=False)
    cap = _capture(w, "cap")
    train(m, site, CaptureSource(cap, site, 8, model=m), steps=1, out=tmp_path / "r", **kw)
    monkeypatch.chdir(cap.parent)
    train(m, site, CaptureSource(cap.name, site, 8, model=m), steps=2, out=tmp_path / "r", **kw)  # relative path
    again = _capture(w, "cap_seed1", "--seed", "1")                        # the same shape, other examples
    shutil.rmtree(tmp_path / "moved", ignore_errors=True)
    shutil.copytree(again, tmp_path / "moved")
    with pytest.raises(InterpError, match="other settings.*source.capture"):
        train(m, site, CaptureSource(tmp_path / "moved", site, 8, model=m), steps=3, out=tmp_path / "r", **kw)


# --- training ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad,word", [({"k": 0}, "k=0"), ({"features": 0}, "features=0"), ({"save_every": 0},
                                      "save_every=0"), ({"steps": 0}, "steps=0"), ({"steps": -3}, "steps=-3"),
                                      ({"dead_tokens": -1}, "dead_tokens=-1"), ({"auxk_alpha": -5}, "auxk_alpha=-5"),
                                      ({"k": 2.5}, "k=2.5"), ({"lr": float("nan")}, "lr=nan"), ({"seed": -1}, "seed")])
def test_train_api_refuses_bad_settings_before_writing(tmp_path, bad, word):
    kw = dict(k=2, features=8, steps=2, save_every=1, progress=False, out=tmp_path / "o")
    with pytest.raises(InterpError, match=word.replace(".", r"\.")):
        train(tiny(), SaeSite("blocks.0.resid_post"), Toy(), **{**kw, **bad})
    assert not (tmp_path / "o").exists()


def test_diverging_run_saves_no_coder(w, capsys, tmp_path):
    with pytest.raises(InterpError, match="diverged.*lower --lr"):
        train(tiny(), SaeSite("blocks.0.resid_post"), Toy(), k=2, features=8, steps=4, lr=1e30, save_every=4,
              out=tmp_path / "a", progress=False)
    assert not (tmp_path / "a").exists()                                    # failed before its first checkpoint
    err = err_of(capsys, train_cli(w, "--site", "blocks.0.resid_post", *SMALL, *KNOB, "--steps", "4", "--lr", "1e30",
                                   "--out", str(tmp_path / "b")))
    assert "diverged" in err and not (tmp_path / "b" / "coder").exists()


def test_someone_elses_folder_is_refused_even_with_overwrite(w, capsys, tmp_path):
    f = tmp_path / "f"
    (f / "coder").mkdir(parents=True)
    (f / "coder" / "README").write_text("mine")
    (f / "metrics.parquet").write_text("x")
    for extra in ([], ["--overwrite"]):
        err = err_of(capsys, train_cli(w, "--site", "blocks.0.resid_post", *SMALL, *KNOB, "--out", str(f), *extra))
        assert "no spec.json" in err and "--overwrite" not in err
    assert (f / "coder" / "README").read_text() == "mine"


def test_overwrite_removes_the_old_runs_eval(tmp_path):
    kw = dict(k=2, features=8, steps=2, save_every=1, progress=False, out=tmp_path / "r")
    train(tiny(), SaeSite("blocks.0.resid_post"), Toy(), **kw)
    (tmp_path / "r" / "eval").mkdir()
    (tmp_path / "r" / "eval" / "sae_eval_summary.md").write_text("old coder")
    train(tiny(), SaeSite("blocks.0.resid_post"), Toy(), **{**kw, "features": 16}, overwrite=True)
    assert not (tmp_path / "r" / "eval").exists()


# --- evaluation -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,word", [
    (["--target", "none", "--where", "all"], "--where does not apply to --target none"),
    (["--target", "none", "--offset", "-99"], "--offset does not apply"),
    (["--target", "none", "--n-align", "1000"], "--n-align does not apply"),
    (["--where", "bogus"], "invalid choice"),
    (["--offset", "-99"], "no points"),
    (["--target", "bogus"], "target 'bogus'"),
    (["--n-align", "1000"], "valid: 1..8"),
    (["--n", "1000000000"], "<= 65536"),
    (["--eval-seed", "-1"], "--eval-seed"),
])
def test_cli_eval_refuses_and_writes_nothing(w, capsys, tmp_path, args, word):
    err = err_of(capsys, eval_cli(w, *args, "--out", str(tmp_path / "e")))
    assert word in err and not (tmp_path / "e").exists(), err


def test_cli_eval_substitution_refuses_causal_options(w, capsys, tmp_path):
    for extra in (["--target", "bogus"], ["--where", "all"], ["--n-pairs", "3"], ["--n-align", "2"], ["--offset", "5"]):
        err = err_of(capsys, eval_cli(w, "--substitution", "firing", *extra, "--out", str(tmp_path / "e")))
        assert "does not apply to --substitution" in err and not (tmp_path / "e").exists()


def test_cli_eval_records_only_what_it_used(w, capsys, tmp_path):
    assert main(eval_cli(w, "--target", "none", "--out", str(tmp_path / "e"))) == 0
    made = json.loads((tmp_path / "e" / "sae_eval.json").read_text())["spec"]
    assert made["target"] is None and made["where"] is None and made["n_align"] is None


def test_copied_coder_checks_its_model(w, capsys, tmp_path):
    shutil.copytree(w / "run" / "coder", tmp_path / "mine")
    err = err_of(capsys, ["sae", "eval", "--coder", str(tmp_path / "mine"), "--model", str(w / "other"), "--site",
                          "blocks.0.resid_post", "--n", "6", *KNOB, "--target", "none"])
    assert "the coder was trained on model" in err and not (tmp_path / "mine" / "eval").exists()


def test_plain_sparsify_coder_of_another_width(w, capsys, tmp_path):
    (tmp_path / "plain").mkdir()
    for f in ("cfg.json", "sae.safetensors"):
        shutil.copy(w / "run" / "coder" / f, tmp_path / "plain" / f)
    err = err_of(capsys, eval_cli(w, "--head", "0", "--target", "none", coder=tmp_path / "plain",
                                  site="blocks.0.rec.readout"))
    assert "the coder is 32 wide but the site's rows are 16 wide" in err
    assert not (tmp_path / "plain" / "eval").exists()


def test_n_align_above_16_is_honoured(monkeypatch):
    from interp.sae import run as RUN
    seen = {}

    def fake(hm, site, coder, pairs, ranking, n_align=1, seeds=()):
        seen.update(ranking=ranking, n_align=n_align)
        return []
    monkeypatch.setattr(RUN, "interchange", fake)
    m = tiny()
    site = SaeSite("blocks.0.resid_post")
    b = generate("mqar", 16, seed=0, n_pairs=4)
    from interp.sae.evaluate import clean_run
    from interp.sae.data import wrap
    _, X, _ = clean_run(wrap(m), site, b.tokens)
    coder = C.new(32, 4, 64)
    RUN.causal_rows(wrap(m), coder, site, X, b, "mqar", {"n_pairs": 4}, n_pairs=4, n_align=20, probe=False)
    assert seen["n_align"] == 20 and all(len(v) == 20 for v in seen["ranking"].values())
    with pytest.raises(InterpError, match="n_align=65"):
        RUN.causal_rows(wrap(m), coder, site, X, b, "mqar", {"n_pairs": 4}, n_pairs=4, n_align=65, probe=False)


def test_quality_refuses_mismatched_empty_and_constant_rows():
    coder = C.new(16, 2, 8)
    x = torch.randn(10, 16)
    with pytest.raises(InterpError, match="16 wide but the site's rows are 12"):
        quality(coder, x[:, :12])
    with pytest.raises(InterpError, match="rows"):
        quality(coder, x[:0])
    for flat in (x[:1], torch.ones(5, 16)):
        with pytest.raises(InterpError, match="do not vary"):
            quality(coder, flat)
    assert 0 <= quality(coder, x)["fvu"] < 10


def test_empty_eval_table_and_substitution_title(tmp_path):
    with pytest.raises(InterpError, match="no rows"):
        SaeEval.from_rows([], {}).save(tmp_path / "e")
    rows = [{"section": "substitution", "metric": "kl", "condition": c, "value": 0.1, "lo": 0.0, "hi": 0.2, "n": 3}
            for c in ("identity", "zero")]
    fig = SaeEval.from_rows(rows, {"site": "s", "k": 2, "features": 8}).plot()
    assert "nan" not in fig._suptitle.get_text()


def test_a_coder_of_another_site_says_which_site_is_valid(w, capsys, tmp_path):
    err = err_of(capsys, eval_cli(w, "--target", "none", "--out", str(tmp_path / "e"), site="blocks.1.resid_post"))
    assert "the coder was trained on blocks.0.resid_post head None, not blocks.1.resid_post; valid: --site " \
           "blocks.0.resid_post" in err and not (tmp_path / "e").exists()
