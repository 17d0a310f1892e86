"""Parallel layers apart: ``blocks.{i}.attn.out`` / ``rec.out`` (each branch's term of mixer_out) on zoo
``-par`` layers and HF falcon_h1, on tiny CPU models. Every comparison is exact (atol=rtol=0): the
cached branch terms are the very tensors the layer adds, and the reference runs (plain torch forward
hooks on the model's own modules) do the same float operations in the same order."""
import pytest
import torch

import hooks
from hooks.names import HookNameError
from test_hooks_zoo import make as zoo_make, no_hooks_left, toks

transformers = pytest.importorskip("transformers")
from test_adapters_mamba import make as hf_make  # noqa: E402

EXACT = dict(atol=0, rtol=0)
ZOO_PAR = ["gdn75-par", "gla75-par", "mamba275-par"]
CASES = ZOO_PAR + ["falcon_h1"]


def model(case):
    """(model, the parallel layer checked, its attention module, its recurrent module)."""
    if case == "falcon_h1":
        m = hf_make("falcon_h1")
        blk = m.model.layers[1]
        return m, 1, blk.self_attn, blk.mamba
    m = zoo_make(case)  # 4 layers: layer 3 is the parallel one, 0-2 recurrent only
    return m, 3, m.blocks[3].mixer.attn, m.blocks[3].mixer.rec


def plain(m, x):
    with torch.no_grad():
        return m(x) if hasattr(m, "blocks") else m(input_ids=x, use_cache=False).logits


def torch_hooked(m, x, mod, fn):
    """Logits of ``m`` with ``fn(output) -> output`` as a plain torch forward hook on ``mod``."""
    h = mod.register_forward_hook(lambda module, args, out: fn(out))
    try:
        return plain(m, x)
    finally:
        h.remove()


def check_clean(m):
    no_hooks_left(m)
    for mod in m.modules():
        assert "forward" not in vars(mod), mod  # falcon_h1's swapped layer forward is restored


@pytest.mark.parametrize("case", CASES)
def test_capture_keeps_logits_and_terms_sum_to_mixer_out(case):
    m, i, _, _ = model(case)
    hm = hooks.wrap(m)
    x = toks()
    p = f"blocks.{i}"
    assert {f"{p}.attn.out", f"{p}.rec.out"} <= set(hm.hook_names)
    ref = plain(m, x)
    with torch.no_grad():
        lg, c = hm.run_with_cache(x, names=hm.hook_names)
        lg2, c2 = hm.run_with_cache(x, names=[f"{p}.attn.out", f"{p}.rec.out"])
    torch.testing.assert_close(lg, ref, **EXACT)
    torch.testing.assert_close(lg2, ref, **EXACT)
    assert c[f"{p}.attn.out"].shape == c[f"{p}.mixer_out"].shape == (*x.shape, c[f"{p}.mixer_out"].shape[-1])
    # exact: mixer_out is the layer's own sum of these two tensors
    torch.testing.assert_close(c[f"{p}.attn.out"] + c[f"{p}.rec.out"], c[f"{p}.mixer_out"], **EXACT)
    torch.testing.assert_close(c2[f"{p}.rec.out"], c[f"{p}.rec.out"], **EXACT)
    assert c[f"{p}.attn.out"].abs().max() > 0 and c[f"{p}.rec.out"].abs().max() > 0
    check_clean(m)


@pytest.mark.parametrize("case", CASES)
def test_zero_attn_out_equals_torch_hook(case):
    m, i, attn, _ = model(case)
    hm = hooks.wrap(m)
    x = toks()
    p = f"blocks.{i}"
    zero = lambda y, n: torch.zeros_like(y)  # noqa: E731
    with torch.no_grad():
        ours = hm.run_with_hooks(x, hooks=[(f"{p}.attn.out", zero)])
        _, c = hm.run_with_cache(x, names=[f"{p}.mixer_out", f"{p}.rec.out", f"{p}.attn.out"],
                                 hooks=[(f"{p}.attn.out", zero)])
    # the model's attention module returns zeros (falcon_h1: (output, weights); zero times its multiplier)
    want = torch_hooked(m, x, attn, lambda out: (torch.zeros_like(out[0]),) + tuple(out[1:])
                        if isinstance(out, tuple) else torch.zeros_like(out))
    torch.testing.assert_close(ours, want, **EXACT)
    assert (ours - plain(m, x)).abs().max() > 1e-4  # the ablation changes something
    assert not c[f"{p}.attn.out"].any()  # the cache holds what the layer used
    torch.testing.assert_close(c[f"{p}.mixer_out"], c[f"{p}.rec.out"], **EXACT)
    check_clean(m)


@pytest.mark.parametrize("case", CASES)
def test_patch_rec_out_equals_torch_hook(case):
    m, i, _, rec = model(case)
    hm = hooks.wrap(m)
    base, src = toks(seed=0), toks(seed=1)
    p = f"blocks.{i}"
    with torch.no_grad():
        _, cs = hm.run_with_cache(src, names=[f"{p}.rec.out"])

    def put(y, n):
        y = y.clone()
        y[:, 7:] = cs[f"{p}.rec.out"][:, 7:]
        return y
    with torch.no_grad():
        ours = hm.run_with_hooks(base, hooks=[(f"{p}.rec.out", put)])
    # the same with torch hooks on the model's own recurrent module: its raw output from the source run,
    # written into the base run (falcon_h1 multiplies it by ssm_out_multiplier after the module, as it
    # did in the source run)
    saved = {}
    torch_hooked(m, src, rec, lambda out: saved.__setitem__("y", out))

    def put_raw(out):
        out = out.clone()
        out[:, 7:] = saved["y"][:, 7:]
        return out
    want = torch_hooked(m, base, rec, put_raw)
    torch.testing.assert_close(ours, want, **EXACT)
    assert (ours - plain(m, base)).abs().max() > 1e-4
    check_clean(m)


@pytest.mark.parametrize("layout,layers", [("transformer", range(4)), ("gdn75", range(4)), ("gdn75-par", range(3))])
def test_names_absent_on_sequential_layers(layout, layers):
    hm = hooks.wrap(zoo_make(layout))
    for i in layers:
        for b in ("attn", "rec"):
            name = f"blocks.{i}.{b}.out"
            assert name not in hm.hook_names
            with pytest.raises(HookNameError, match="close matches") as e:
                hm.run_with_cache(toks(), names=[name])
            assert f"unknown hook name '{name}'" in str(e.value)
            with pytest.raises(HookNameError):
                hm.name(f"{b}.out", i)
    if layout == "gdn75-par":
        assert hm.name("attn.out", 3) == "blocks.3.attn.out"
        assert hooks.names.name("rec.out", 3) == "blocks.3.rec.out"


def test_names_absent_on_hf_sequential_layers():
    hm = hooks.wrap(hf_make("bamba"))  # layer 1 attention, layers 0 and 2 Mamba2: none parallel
    assert not [n for n in hm.hook_names if n.endswith((".attn.out", ".rec.out"))]
    with pytest.raises(HookNameError, match="not a parallel layer"):
        hm.run_with_cache(toks(), names=["blocks.1.attn.out"])
    falcon = hooks.wrap(hf_make("falcon_h1"))
    assert all(f"blocks.{i}.{b}.out" in falcon.hook_names for i in range(3) for b in ("attn", "rec"))
