"""One on-disk format (#23): `hooks.Cache.save` writes capture's layout, `Cache.load` reads both (and the
old single-file folders), `load_capture` gives a Cache with positions, tokens and labels, lazily if asked."""
import json

import torch
from safetensors.torch import save_file

import hooks
from interp import tasks
from interp.capture import capture, load_capture
from interp.tasks import VOCAB
from interp.zoo import HybridLM, ZooConfig

NAMES = ["blocks.1.rec.state", "blocks.3.resid_post"]


def model():
    torch.manual_seed(0)
    return HybridLM(ZooConfig(vocab_size=len(VOCAB), d_model=32, n_layers=4, layout="gdn75", n_heads=2,
                              head_dim=16)).eval()


def test_capture_stores_inputs_and_loads_lazily(tmp_path):
    m, b = model(), tasks.generate("mqar", n=10, seed=0)
    out = capture(m, b.tokens, NAMES, tmp_path / "cap", positions=[2, 5], shard_size=20_000, batch_size=2,
                  progress=False, inputs=b)
    man = json.loads((out / "manifest.json").read_text())
    assert len(man["shards"]) > 1 and (out / "units" / "inputs.safetensors").is_file()
    got = load_capture(out)
    assert isinstance(got, hooks.Cache) and got.positions == [2, 5] and torch.equal(got.tokens, b.tokens)
    assert torch.equal(got.labels["answer_pos"], b.answer_pos) and set(got.labels) >= {"answers"}
    _, ref = hooks.wrap(m).run_with_cache(b.tokens, names=NAMES, positions=[2, 5])
    lazy = load_capture(out, names=[NAMES[0]], lazy=True)
    assert list(lazy) == [NAMES[0]] and lazy.view(NAMES[0]).shape == got[NAMES[0]].shape
    for n in NAMES:
        torch.testing.assert_close(got[n], ref[n], atol=1e-6, rtol=1e-5)
    assert torch.equal(lazy[NAMES[0]], got[NAMES[0]])
    assert torch.equal(lazy.view(NAMES[0])[3:9], got[NAMES[0]][3:9]) and torch.equal(lazy.view(NAMES[0])[7],
                                                                                      got[NAMES[0]][7])
    assert load_capture(capture(m, b.tokens, NAMES, tmp_path / "plain", progress=False)).labels == {}


def test_cache_save_writes_the_capture_layout(tmp_path):
    hm = hooks.wrap(model())
    _, c = hm.run_with_cache(torch.randint(0, 50, (3, 12)), names=NAMES, positions=[1, 4])
    c.save(tmp_path / "c", meta={"x": 1})
    assert (tmp_path / "c" / "units" / "shard-00000.safetensors").is_file()
    back = load_capture(tmp_path / "c")                     # capture's reader reads it
    assert back.positions == [1, 4] and back.tokens is None and all(torch.equal(back[k], c[k]) for k in c)
    lazy = hooks.Cache.load(tmp_path / "c", lazy=True)
    assert all(torch.equal(lazy[k], c[k]) for k in c)
    old = tmp_path / "old"                                  # the single-file layout Cache.save wrote before
    old.mkdir()
    save_file({k: v.contiguous() for k, v in c.items()}, str(old / "activations.safetensors"))
    (old / "manifest.json").write_text(json.dumps({"tensors": {}, "positions": [1, 4], "meta": {}}))
    o = hooks.Cache.load(old)
    assert o.positions == [1, 4] and all(torch.equal(o[k], c[k]) for k in c)
