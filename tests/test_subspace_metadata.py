"""A saved subspace carries where it acts and the model's weights digest in the safetensors file's own metadata:
`interp intervene --subspace` refuses a basis of another site or model even when the .safetensors is copied without
its .spec.json, refuses a file whose metadata and .spec.json disagree, keeps files of earlier versions (sidecar only)
working and takes a user's own basis (neither) with a one-line warning."""
import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from interp import InterpError, interventions as iv
from interp.cli import main
from test_interventions_checks import offline, run  # noqa: F401 (offline: the autouse no-hub fixture)

torch.set_num_threads(1)   # 2 shared cores
SITE = "blocks.3.resid_pre"



@pytest.fixture(scope="module")
def das_file(tmp_path_factory):
    """(R.safetensors, its .spec.json) of `interp das` on gdn75 at SITE."""
    out = tmp_path_factory.mktemp("das")
    assert main(["das", "--model", "gdn75", "--site", SITE, "--n", "12", "--epochs", "1", "--batch-size", "8",
                 "--random-seeds", "0", "--out", str(out)]) == 0
    st = out / f"gdn75_mqar_{SITE}_r1.safetensors"
    return st, st.with_name(st.name[:-len(".safetensors")] + ".spec.json")


def intervene(path, out, *extra, model="gdn75", site=SITE):
    return ["intervene", "--model", model, "--site", site, "--n", "4", "--subspace", str(path), "--out", str(out),
            *extra]


def test_save_subspace_writes_where_R_acts_into_the_file(tmp_path):
    spec = {"site": "blocks.2.rec.state", "head": None, "side": "key", "model_digest": "0123abcd", "other": 1}
    st, js = iv.save_subspace(iv.random_basis(32, 2, 0), spec, tmp_path / "r")
    with safe_open(str(st), framework="pt") as f:
        meta = f.metadata()
    assert meta == {"interp": json.dumps({"head": "", "model_digest": "0123abcd", "rank": "2", "side": "key",
                                          "site": "blocks.2.rec.state", "width": "32"})}
    js.unlink()                                     # the file alone still says where it acts
    R, made = iv.load_subspace(st)
    assert made == {"site": "blocks.2.rec.state", "head": None, "side": "key", "width": 32, "rank": 2,
                    "model_digest": "0123abcd"} and R.shape == (2, 32)
    st2, _ = iv.save_subspace(iv.random_basis(32, 1, 0), {"site": "blocks.0.attn.head_out", "head": 3}, tmp_path / "h")
    assert iv.load_subspace(st2)[1]["head"] == 3


def test_das_basis_copied_alone_is_checked(das_file, tmp_path, capsys):
    """The repro: `interp das`'s .safetensors copied without its .spec.json was used anywhere (exit 0)."""
    lone = tmp_path / "lone" / "R.safetensors"
    lone.parent.mkdir()
    shutil.copy(das_file[0], lone)
    out = tmp_path / "o"
    rc, err = run(intervene(lone, out, site="blocks.2.resid_pre"), capsys)
    assert rc == 2 and "learned at another site or model: site 'blocks.3.resid_pre' (here 'blocks.2.resid_pre')" \
        in err and len(err.strip().splitlines()) == 1 and not out.exists(), err
    rc, err = run(intervene(lone, out, model="transformer"), capsys)
    assert rc == 2 and "model_digest '" in err and "valid:" in err and not out.exists(), err
    rc, err = run(intervene(lone, out, "--positions", "write"), capsys)
    assert rc == 0 and "warning" not in err, err


def test_file_and_sidecar_that_disagree_are_refused(tmp_path, capsys):
    st, js = iv.save_subspace(iv.random_basis(128, 1, 0), {"site": SITE, "head": None, "side": None}, tmp_path / "r")
    spec = json.loads(js.read_text())
    js.write_text(json.dumps({**spec, "site": "blocks.2.resid_pre"}))     # a sidecar of another basis
    with pytest.raises(InterpError, match=r"disagree: site 'blocks.3.resid_pre' \(file\) vs 'blocks.2.resid_pre' "
                                          r"\(r.spec.json\); valid: "):
        iv.load_subspace(st)
    out = tmp_path / "o"
    for site in ("blocks.2.resid_pre", SITE):
        rc, err = run(intervene(st, out, site=site), capsys)
        assert rc == 2 and "disagree: site" in err and len(err.strip().splitlines()) == 1 and not out.exists(), err


def test_equal_saves_write_equal_bytes(tmp_path):
    """safetensors writes several metadata keys in a random order: two equal saves differed in bytes."""
    spec = {"site": "blocks.2.rec.state", "head": None, "side": "key", "model_digest": "0123abcd"}
    files = [iv.save_subspace(iv.random_basis(32, 2, 0), spec, tmp_path / f"r{i}")[0].read_bytes() for i in range(6)]
    assert all(f == files[0] for f in files)


def test_metadata_that_does_not_fit_R_is_refused(tmp_path):
    R = iv.random_basis(128, 2, 0)
    for meta, msg in [({"interp.width": "64"}, r"width 64 \(R has 128\)"),             # an earlier version's keys
                      ({"interp.rank": "1"}, r"rank 1 \(R has 2\)"),
                      ({"interp.head": "x"}, "metadata interp.head 'x' is not valid; valid: an integer"),
                      ({"interp": json.dumps({"width": "64"})}, r"width 64 \(R has 128\)"),   # this version's
                      ({"interp": "[1]"}, "metadata 'interp' is not a JSON object")]:
        save_file({"R": R}, str(tmp_path / "m.safetensors"), metadata=meta)
        with pytest.raises(InterpError, match=msg):
            iv.load_subspace(tmp_path / "m.safetensors")


def test_own_basis_is_used_with_one_warning(tmp_path, capsys):
    own = tmp_path / "own.safetensors"
    save_file({"R": iv.random_basis(128, 2, 0)}, str(own))                 # no metadata, no sidecar
    assert iv.load_subspace(own)[1] == {}
    rc, err = run(intervene(own, tmp_path / "o", "--positions", "write"), capsys)
    warn = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert rc == 0 and len(warn) == 1 and "own.safetensors records no site or model weights digest" in warn[0] \
        and "cannot be checked against --site or the model" in warn[0], err


def test_files_of_earlier_versions_still_checked_by_their_sidecar(das_file, tmp_path, capsys):
    """No metadata (as earlier versions wrote R) but the .spec.json: checked by it, as before."""
    old = tmp_path / "old.safetensors"
    with safe_open(str(das_file[0]), framework="pt") as f:
        save_file({"R": f.get_tensor("R")}, str(old))
    shutil.copy(das_file[1], tmp_path / "old.spec.json")
    R, made = iv.load_subspace(old)
    assert made["site"] == SITE and made["model_digest"] == json.loads(das_file[1].read_text())["model_digest"]
    out = tmp_path / "o"
    rc, err = run(intervene(old, out, site="blocks.2.resid_pre"), capsys)
    assert rc == 2 and "site 'blocks.3.resid_pre' (here 'blocks.2.resid_pre')" in err and not out.exists(), err
    rc, err = run(intervene(old, out, "--positions", "write"), capsys)
    assert rc == 0 and "warning" not in err, err
