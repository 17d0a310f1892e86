"""`hooks.Cache.save` / `Cache.load` checks: save never mixes two caches in one folder (a non-empty folder is refused;
``overwrite=True`` replaces only a saved cache or capture, never other files; the new folder is written whole, then
renamed into place), the attention mask, head inputs and gradients survive the round trip, an empty cache saves, and
a misspelt name, a damaged manifest or a missing folder raise a one-line HookError naming it."""
import json
import os

import pytest
import torch

import hooks
from hooks.cache import Cache
from hooks.names import HookError, HookNameError
from interp import InterpError, tasks
from interp.capture import capture, load_capture
from interp.tasks import VOCAB
from interp.zoo import HybridLM, ZooConfig

NAMES = ["blocks.1.rec.state", "blocks.3.resid_pre"]


def model():
    torch.manual_seed(0)
    return HybridLM(ZooConfig(vocab_size=len(VOCAB), d_model=32, n_layers=4, layout="gdn75", n_heads=2,
                              head_dim=16)).eval()


def small_cache(rows=2):
    _, c = hooks.wrap(model()).run_with_cache(torch.randint(2, 40, (rows, 7)), names=["blocks.0.resid_pre"])
    return c


def listing(folder):
    return sorted(os.path.relpath(os.path.join(r, f), folder) for r, _, fs in os.walk(folder) for f in fs)


def siblings(path):
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def test_save_refuses_a_capture_folder_and_overwrite_replaces_it_whole(tmp_path):
    b = tasks.generate("mqar", n=10, seed=0)
    out = capture(model(), b.tokens, NAMES, tmp_path / "cap", positions=[2, 5], shard_size=20_000, batch_size=2,
                  progress=False, inputs=b)
    before, manifest = listing(out), (out / "manifest.json").read_bytes()
    assert len(json.loads(manifest)["shards"]) > 1 and "spec.json" in before
    small = small_cache()
    with pytest.raises(HookError, match=r"cannot save to .*cap: it is not empty \(it holds .*manifest\.json.*\); "
                                        r"valid: a new or empty folder, or overwrite=True") as e:
        small.save(out)
    assert "\n" not in str(e.value)
    assert listing(out) == before and (out / "manifest.json").read_bytes() == manifest
    assert torch.equal(load_capture(out).tokens, b.tokens)          # the capture is untouched
    assert small.save(out, overwrite=True) == out
    assert listing(out) == ["manifest.json", "units/shard-00000.safetensors"]  # no shard or spec of the capture left
    back = Cache.load(out)
    assert list(back) == ["blocks.0.resid_pre"] and torch.equal(back["blocks.0.resid_pre"], small["blocks.0.resid_pre"])
    assert siblings(out) == []                                      # no temporary or old folder left beside it


def test_overwrite_never_deletes_other_files(tmp_path):
    c = small_cache()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    for ow in (False, True):
        with pytest.raises(HookError, match=r"cannot save to .*notes: .*todo\.txt.*valid: a new or empty folder"):
            c.save(notes, overwrite=ow)
    assert (notes / "todo.txt").read_text() == "mine"
    other = tmp_path / "webapp"                                     # someone else's manifest.json
    (other / "units").mkdir(parents=True)
    (other / "manifest.json").write_text('{"name": "my app"}')
    with pytest.raises(HookError, match=r"webapp: it holds manifest\.json, units but no saved cache"):
        c.save(other, overwrite=True)
    assert (other / "manifest.json").is_file()
    mixed = c.save(tmp_path / "mixed")
    (mixed / "plot.png").write_bytes(b"x")
    with pytest.raises(HookError, match=r"besides a saved cache it holds plot\.png, which overwrite=True never"):
        c.save(mixed, overwrite=True)
    assert (mixed / "plot.png").is_file() and len(Cache.load(mixed)) == 1
    (tmp_path / "f").write_text("a file")
    with pytest.raises(HookError, match=r"cannot save to .*f: it is a file; valid: a new or empty folder"):
        c.save(tmp_path / "f", overwrite=True)
    assert (tmp_path / "f").read_text() == "a file"


def test_save_into_new_or_empty_folders_and_resave_own_folder(tmp_path):
    c = small_cache()
    (tmp_path / "empty").mkdir()
    for p in (tmp_path / "empty", tmp_path / "new" / "deeper"):
        assert c.save(p) == p and len(Cache.load(p)) == 1
    with pytest.raises(HookError, match="not empty"):
        c.save(tmp_path / "empty")
    lazy = Cache.load(tmp_path / "empty", lazy=True)               # re-saved over the files it maps
    lazy.save(tmp_path / "empty", meta={"again": 1}, overwrite=True)
    assert torch.equal(Cache.load(tmp_path / "empty")["blocks.0.resid_pre"], c["blocks.0.resid_pre"])
    assert json.loads((tmp_path / "empty" / "manifest.json").read_text())["meta"] == {"again": 1}


def test_a_failed_save_leaves_the_old_cache_whole(tmp_path, monkeypatch):
    c, big = small_cache(), small_cache(rows=3)
    p = c.save(tmp_path / "c")
    before = {f: (p / f).read_bytes() for f in listing(p)}

    def crash(self, batch):
        raise OSError("disk full")
    monkeypatch.setattr("hooks.cache.ShardWriter.write", crash)
    with pytest.raises(OSError, match="disk full"):
        big.save(tmp_path / "fresh")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["c"]      # no half-written folder, no leftovers
    with pytest.raises(OSError, match="disk full"):
        big.save(p, overwrite=True)
    assert {f: (p / f).read_bytes() for f in listing(p)} == before and siblings(p) == []


def test_round_trip_keeps_mask_head_inputs_and_grad(tmp_path):
    hm = hooks.wrap(model())
    assert Cache().attention_mask is None and Cache().grad is None and Cache().head_inputs == {}
    toks = torch.randint(2, 40, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, :3] = 0
    names = ["blocks.1.resid_post", "blocks.3.resid_pre"]
    _, c = hm.run_with_cache(toks, names=names, attention_mask=mask, heads=True, backward=lambda lg: lg[:, -1].sum())
    assert c.attention_mask is not None and c.head_inputs and c.grad is not None
    assert torch.equal(c.to("cpu").attention_mask, c.attention_mask)
    c.save(tmp_path / "c")
    for back in (Cache.load(tmp_path / "c"), Cache.load(tmp_path / "c", lazy=True)):
        assert torch.equal(back.attention_mask, c.attention_mask) and back.attention_mask.dtype == torch.bool
        assert set(back.head_inputs) == set(c.head_inputs)
        assert all(torch.equal(back.head_inputs[k], v) for k, v in c.head_inputs.items())
        assert set(back.grad) == set(c.grad) and all(torch.equal(back.grad[k], c.grad[k]) for k in c.grad)
        torch.testing.assert_close(back.attach(hm).head_results(1, "rec"), c.head_results(1, "rec"))
    assert set(Cache.load(tmp_path / "c", names=names[:1]).grad) == set(names[:1])
    plain = small_cache()
    plain.save(tmp_path / "plain")
    back = Cache.load(tmp_path / "plain")
    assert back.attention_mask is None and back.grad is None and back.head_inputs == {}


def test_load_refuses_a_name_the_folder_lacks(tmp_path):
    b = tasks.generate("mqar", n=6, seed=0)
    out = capture(model(), b.tokens, NAMES, tmp_path / "cap", shard_size=20_000, batch_size=2, progress=False)
    with pytest.raises(HookNameError, match=r"'blocks\.3\.resid_pr' not saved in .*cap \(close matches: blocks\.3\."
                                            r"resid_pre\); valid: blocks\.1\.rec\.state, blocks\.3\.resid_pre"):
        Cache.load(out, names=["blocks.3.resid_pr"])
    with pytest.raises(InterpError, match=r"'blocks\.1\.rec\.stat' not saved in .*close matches: blocks\.1\.rec\.st"):
        load_capture(out, names=["blocks.1.rec.stat"])
    with pytest.raises(HookNameError, match="'nope' not saved"):
        Cache.load(out, names=[NAMES[0], "nope"], lazy=True)
    assert list(Cache.load(out, names=NAMES[1])) == [NAMES[1]]      # one name as a string


def test_an_empty_cache_saves_and_loads(tmp_path):
    Cache().save(tmp_path / "e")
    back = Cache.load(tmp_path / "e")
    assert isinstance(back, Cache) and len(back) == 0 and back.attention_mask is None


def test_load_names_a_missing_or_damaged_folder(tmp_path):
    with pytest.raises(HookError, match=r"^\S*nope not found; valid: a folder written by Cache\.save or interp"):
        Cache.load(tmp_path / "nope")
    (tmp_path / "bare").mkdir()
    with pytest.raises(HookError, match=r"bare holds no manifest\.json; valid: a folder written by Cache\.save"):
        Cache.load(tmp_path / "bare")
    p = small_cache().save(tmp_path / "c")
    for bad in ("{not json", "[]", '{"shards": [{"start": 0}]}'):
        (p / "manifest.json").write_text(bad)
        with pytest.raises(HookError, match=r"^\S*c is damaged \(manifest\.json.*\); delete it and run the same "
                                            r"command again to recompute it$"):
            Cache.load(p)


def test_load_refuses_shards_out_of_order_and_an_unfinished_folder(tmp_path):
    p = small_cache(rows=4).save(tmp_path / "c")
    m = json.loads((p / "manifest.json").read_text())
    (p / "manifest.json").write_text(json.dumps({**m, "n_examples": 6}))
    with pytest.raises(HookError, match=r"c holds an unfinished capture \(4 of 6 examples\)"):
        Cache.load(p)
    assert Cache.load(p, partial=True)["blocks.0.resid_pre"].shape[0] == 4
    m["shards"][0]["start"] = 1
    (p / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(HookError, match=r"c is damaged \(manifest\.json's shards do not hold rows 0\.\. in order\)"):
        Cache.load(p)
