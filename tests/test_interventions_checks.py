"""Checks of interp.interventions and `interp intervene` / `interp das` against hostile input: a diverged DAS run
(never a NaN epoch, never a NaN R saved), bases labelled one each, no kept pair, options that would do nothing,
non-finite or malformed arguments of the Python API, and no --out folder left by a refused call."""
import pytest
import torch

from interp import InterpError, interventions as iv, tasks
from interp.cli import main
from interp.tasks import VOCAB
from interp.zoo import HybridLM, ZooConfig, save_model

torch.set_num_threads(1)   # 2 shared cores
SITE = "blocks.3.resid_pre"


@pytest.fixture(scope="module")
def gdn75():
    from interp.models import load_any
    return load_any("gdn75")[0].eval()


@pytest.fixture(scope="module")
def pairs16():
    return tasks.make_pairs("mqar", 16, seed=0)


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """A zoo model with random weights: it answers (almost) no mqar pair right on both prompts."""
    d = tmp_path_factory.mktemp("untrained") / "m"
    torch.manual_seed(0)
    save_model(HybridLM(ZooConfig(vocab_size=len(VOCAB), d_model=32, n_layers=2, layout="gdn@1", n_heads=2,
                                  head_dim=16)), d)
    return d


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub look-ups


def run(argv, capsys):
    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err


# --- 1. DAS divergence ----------------------------------------------------------------------------------------
def test_das_never_keeps_a_nan_epoch(gdn75, pairs16):
    """At lr 1e30 epoch 1 stays finite and epoch 2 diverges (val loss NaN): epoch 1 is kept (the old ranking put
    a NaN loss above every finite one and kept epoch 2, an all-NaN R)."""
    res = iv.train_das(gdn75, pairs16, SITE, rank=2, epochs=2, lr=1e30, positions=["write"], random_seeds=(0,))
    h = res.history()
    assert h.val_loss.iloc[0] == h.val_loss.iloc[0] and h.val_loss.iloc[1] != h.val_loss.iloc[1]
    assert res.attrs["spec"]["best_epoch"] == 1 and bool(torch.isfinite(res.R).all())


def test_das_all_epochs_diverged_is_refused_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "d" / "x"
    rc, err = run(["das", "--model", "gdn75", "--n", "16", "--site", SITE, "--positions", "write", "--rank", "2",
                   "--epochs", "2", "--batch-size", "4", "--lr", "1e30", "--random-seeds", "0", "--out", str(out)],
                  capsys)
    assert rc == 2 and "DAS diverged at lr 1e+30" in err and "valid: a lower learning rate (--lr)" in err
    assert not (tmp_path / "d").exists()            # the folders one_shot made are gone again


def test_nan_subspace_is_never_saved(tmp_path):
    nan = torch.full((1, 8), float("nan"))
    with pytest.raises(InterpError, match="not a finite"):
        iv.save_subspace(nan, {}, tmp_path / "s" / "r")
    res = iv.DASResult([dict(model="m", task="t", site="s", subspace="das", rank=1, split="test", seed=-1, iia=0.0,
                             n=1, n_total=1)])
    res.R = nan
    with pytest.raises(InterpError, match="not a finite"):
        res.save(tmp_path / "out", "x", plot=False)
    assert not any(tmp_path.iterdir())


# --- 2. labels of saved bases ---------------------------------------------------------------------------------
def test_cli_bases_get_labels_of_their_own(tmp_path, capsys):
    spec = {"site": SITE, "head": None, "side": None}
    for stem, seed in (("a/x", 1), ("b/x", 2), ("random", 3), ("c", 4)):
        iv.save_subspace(iv.random_basis(128, 2, seed), spec, tmp_path / stem)
    base = ["intervene", "--model", "gdn75", "--site", SITE, "--n", "4", "--positions", "write"]
    f = {k: str(tmp_path / f"{k}.safetensors") for k in ("a/x", "b/x", "random", "c")}
    out = tmp_path / "o"
    rc, _ = run(base + ["--subspace", f["a/x"], "--subspace", f["b/x"], "--subspace", f["c"], "--out", str(out)],
                capsys)
    assert rc == 0
    import pandas as pd
    df = pd.read_csv(next(out.glob("*.csv")))
    assert sorted(df.subspace) == sorted([f["a/x"][:-12], f["b/x"][:-12], "c"]) and (df.seed == -1).all()
    for argv, msg in [(["--subspace", "random", "--subspace", f["random"]], "its name 'random' is that of a built-in"),
                      (["--subspace", "full", "--subspace", "full"], "--subspace full is given twice"),
                      (["--subspace", f["c"], "--subspace", str(tmp_path / "." / "c.safetensors")], "given twice")]:
        rc, err = run(base + argv + ["--out", str(tmp_path / "n")], capsys)
        assert rc == 2 and msg in err and not (tmp_path / "n").exists(), argv


def test_api_labels_are_unique(gdn75, pairs16):
    E = torch.eye(128)
    res = iv.intervene(gdn75, pairs16, SITE, subspaces=[E[:2], E[2:4], "full"], positions="write")
    assert list(res.subspace) == ["given0", "given1", "full"]
    with pytest.raises(InterpError, match="subspace 'full' is given twice"):
        iv.intervene(gdn75, pairs16, SITE, subspaces=["full", "full"])
    with pytest.raises(InterpError, match="'random' is the name of a built-in subspace"):
        iv.intervene(gdn75, pairs16, SITE, subspaces=[{"random": E[:2]}])
    with pytest.raises(InterpError, match="subspace 'x' is given twice"):
        iv.intervene(gdn75, pairs16, SITE, subspaces=[{"x": E[:2]}, {"x": E[2:4]}])


# --- 3. no kept pair ------------------------------------------------------------------------------------------
def test_cli_intervene_without_kept_pairs_exits_2(untrained, tmp_path, capsys):
    out = tmp_path / "o"
    rc, err = run(["intervene", "--model", str(untrained), "--site", "blocks.0.rec.state", "--n", "8",
                   "--out", str(out)], capsys)
    assert rc == 2 and "none of the 16 ordered pairs is answered correctly" in err and "valid:" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


# --- 4, 5, 10. options that do nothing, --out, folders --------------------------------------------------------
@pytest.mark.parametrize("extra,msg", [
    (["--subspace", "full", "--key-from", "banana"], "--key-from 'banana' is not valid; valid: base, source"),
    (["--subspace", "full", "--write-at", "banana"], "--write-at 'banana' is not valid"),
    (["--subspace", "full", "--write-at", "answer"], "--write-at does not apply"),
    (["--subspace", "full", "--key-from", "source"], "--key-from does not apply"),
    (["--subspace", "full", "--rank", "2"], "--rank does not apply"),
    (["--subspace", "full", "--seeds", "1"], "--seeds does not apply"),
    (["--subspace", "banana"], "--subspace 'banana' is not valid"),
    (["--order", "banana"], "--order 'banana' is not valid"),
    (["--positions", "banana"], "--positions 'banana' is not valid"),
    (["--device", "banana"], "device 'banana' is not valid"),
    (["--model", "no/such/model"], "no/such/model"),
])
def test_cli_intervene_refuses_before_making_out(extra, msg, tmp_path, capsys):
    out = tmp_path / "o"
    rc, err = run(["intervene", "--model", "gdn75", "--site", SITE, "--n", "4", *extra, "--out", str(out)], capsys)
    assert rc == 2 and msg in err and not out.exists(), err


@pytest.mark.parametrize("extra,msg", [(["--order", "banana"], "order 'banana' is not valid"),
                                       (["--positions", "banana"], "--positions 'banana' is not valid")])
def test_cli_das_refuses_before_making_out(extra, msg, tmp_path, capsys):
    out = tmp_path / "o"
    rc, err = run(["das", "--model", "gdn75", "--site", SITE, "--n", "4", *extra, "--out", str(out)], capsys)
    assert rc == 2 and msg in err and not out.exists(), err


@pytest.mark.parametrize("cmd", ["intervene", "das"])
def test_cli_empty_out_is_refused(cmd, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, err = run([cmd, "--model", "gdn75", "--site", SITE, "--n", "4", "--out", ""], capsys)
    assert rc == 2 and "--out '' is empty" in err and not any(tmp_path.iterdir())


def test_cli_write_key_options_still_apply(tmp_path, capsys):
    rc, err = run(["intervene", "--model", "gdn75", "--site", "blocks.0.rec.state", "--n", "4", "--subspace",
                   "write_key", "--key-from", "source", "--write-at", "write", "--out", str(tmp_path / "o")], capsys)
    assert rc == 0, err


# --- 6, 7. the Python API -------------------------------------------------------------------------------------
def test_api_refuses_non_finite_and_malformed(gdn75, pairs16):
    nan = torch.full((1, 128), float("nan"))
    cases = [
        (lambda: iv.intervene(gdn75, pairs16, SITE, subspaces=[nan], positions="write"), "NaN or inf entries"),
        (lambda: iv.train_das(gdn75, pairs16, SITE, rank=1, epochs=1, init=nan), "init .* NaN or inf entries"),
        (lambda: iv.train_das(gdn75, pairs16, SITE, rank=1, epochs=1, lr=float("inf")), "lr inf is not valid"),
        (lambda: iv.train_das(gdn75, pairs16, SITE, rank=0, epochs=1), "rank=0 is not valid"),
        (lambda: iv.intervene(gdn75, pairs16, SITE, subspaces=["random"], seeds=(1, 1)), r"seeds \(1, 1\)"),
        (lambda: iv.intervene(gdn75, pairs16, SITE, subspaces=["random"], seeds=(-5,)), r"seeds \(-5,\)"),
        (lambda: iv.intervene(gdn75, pairs16, SITE, batch_size=0), "batch_size=0 is not valid"),
        (lambda: iv.intervene(gdn75, pairs16, SITE, subspaces=["random"], seeds=()), "needs at least one seed"),
        (lambda: iv.intervene(gdn75, pairs16, SITE, subspaces=[]), "no subspace given"),
        (lambda: iv.intervene(gdn75, pairs16, SITE, key_from="banana"), "key_from 'banana'"),
        (lambda: iv.Site("blocks.3.attn.head_out", head=True), "head True is not valid"),
    ]
    for fn, msg in cases:
        with pytest.raises(InterpError, match=msg):
            fn()


def test_api_intervene_without_kept_pairs_is_nan_with_n_0(untrained):
    from interp.models import load_any
    m = load_any(str(untrained))[0]
    p = tasks.make_pairs("mqar", 4, seed=0)
    plan = iv.plan_intervene(m, p, "blocks.0.rec.state", subspaces=["full"])
    assert plan.n_kept == 0
    res = plan.run()
    assert res.n.item() == 0 and res.iia.isna().all()


def test_das_on_a_head_that_carries_nothing_is_one_line_and_no_cuda_graphs_is_no_other_setting(tmp_path, capsys):
    """gdn100's layer-0 state, head 2, holds the same values in both prompts of every mqar pair: the patch cannot
    change a base run, so there is no gradient (a RuntimeError traceback before); --no-cuda-graphs (ignored on a
    CPU, the same R on a GPU) is not a setting of the result, so a rerun with it is not refused."""
    base = ["das", "--model", "gdn100", "--task", "mqar", "--site", "blocks.0.rec.state", "--n", "64", "--epochs", "1"]
    assert main(base + ["--side", "value", "--head", "2", "--rank", "8", "--out", str(tmp_path / "h2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not depend on R on these pairs" in err[0] and not (tmp_path / "h2").exists()
    out = ["--rank", "1", "--out", str(tmp_path / "o")]
    assert main(base + out) == 0
    assert main(base + out + ["--no-cuda-graphs"]) == 0
