"""interp.oneshot: a one-shot command's record (<out>.json / spec.json) is replaced only where it is one; another
command's JSON (a capture's or an sae run's spec.json, a model's config.json) is never replaced, --overwrite or not;
a record names its outputs, so that a call with other settings and other file names cannot orphan them."""
import json

import pytest

from interp import InterpError
from interp.oneshot import one_shot


def write(spec_path, outputs, spec, overwrite=False):
    with one_shot(spec_path, outputs, spec, overwrite):
        for p in outputs:
            p.write_text("made")


def test_another_commands_json_is_never_replaced(tmp_path):
    store_spec = {"kind": "capture", "format": 1, "spec": {"model": "m1", "n": 16}}
    (tmp_path / "spec.json").write_text(json.dumps(store_spec))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"d_model": 32, "layout": "gdn50"}))
    for overwrite in (False, True):
        with pytest.raises(InterpError, match=r"spec.json is not a record of this kind of output .*valid: another "
                                              r"--out"):
            write(tmp_path / "spec.json", [tmp_path / "who_reads.png"], {"n": 4}, overwrite)
        with pytest.raises(InterpError, match="config.json is not a record"):
            write(config, [tmp_path / "config.csv"], {"n": 4}, overwrite)
    assert json.loads((tmp_path / "spec.json").read_text()) == store_spec
    assert json.loads(config.read_text()) == {"d_model": 32, "layout": "gdn50"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "spec.json"]


def test_a_record_names_its_outputs_and_guards_them(tmp_path):
    rec = tmp_path / "out.json"
    write(rec, [tmp_path / "out.csv", tmp_path / "out.png"], {"n": 4})
    assert json.loads(rec.read_text())["outputs"] == ["out.csv", "out.png"]
    with pytest.raises(InterpError, match=r"out.csv was made with other settings \(out.json: n"):
        write(rec, [tmp_path / "other.csv"], {"n": 8})        # our outputs absent, the record's present
    write(rec, [tmp_path / "out.csv", tmp_path / "out.png"], {"n": 4})          # the same settings: rewritten
    write(rec, [tmp_path / "other.csv"], {"n": 8}, overwrite=True)              # replaces the record's files too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.csv", "out.json"]


def test_a_record_of_an_earlier_version_still_counts(tmp_path):
    rec = tmp_path / "acc.json"
    rec.write_text(json.dumps({"command": "interp eval", "spec": {"n": 4}}))
    (tmp_path / "acc.csv").write_text("old")
    write(rec, [tmp_path / "acc.csv"], {"n": 4})
    with pytest.raises(InterpError, match="acc.csv was made with other settings"):
        write(rec, [tmp_path / "acc.csv"], {"n": 8})
