"""Hand-over of TransformerLens / nnsight wrappers to hooks.wrap (hooks.adapters.interop), CPU.
Skipped where the package is absent (install the [interop] extra)."""
import types

import pytest
import torch

import hooks
from hooks.adapters.interop import InteropAdapter, debridge, unwrap
from interp.zoo import ZooConfig
from interp.zoo.model import HybridLM

V = 64


def zoo(layout="transformer", seed=0):
    torch.manual_seed(seed)
    return HybridLM(ZooConfig(vocab_size=V, d_model=32, n_layers=2, layout=layout, n_heads=4, head_dim=8)).eval()


def toks(B=2, T=11, seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def hook_state(model):
    return {id(m): (dict(m._forward_hooks), dict(m._forward_pre_hooks), "forward" in vars(m))
            for m in model.modules()}


@pytest.fixture(scope="module")
def bridge():
    pytest.importorskip("transformer_lens")
    from interp.zoo.hf import to_transformer_bridge
    z = zoo()
    return z, to_transformer_bridge(z)


def test_bridge_hand_over_matches_tl_and_hf(bridge):
    z, br = bridge
    from interp.zoo.hf import to_hf_llama
    hm = hooks.wrap(br)
    assert isinstance(hm.adapter, InteropAdapter) and hm.adapter.wrapped_family == "hf_transformer"
    x = toks()
    names = ["embed"] + [f"blocks.{i}.{s}" for i in range(2) for s in ("resid_pre", "resid_mid", "resid_post",
                                                                      "attn.pattern", "attn.q", "attn.head_out")]
    with torch.no_grad():
        tl_logits, tl = br.run_with_cache(x)  # (TL leaves capture hooks of its own installed)
        before = hook_state(br)
        lg, c = hm.run_with_cache(x, names=names)
        ref, rc = hooks.wrap(to_hf_llama(z)).run_with_cache(x, names=names)
    assert hook_state(br) == before  # the bridge is untouched
    torch.testing.assert_close(lg, tl_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lg, ref, atol=1e-5, rtol=1e-5)
    for i in range(2):  # TL's own hook points on the same weights
        torch.testing.assert_close(c[f"blocks.{i}.resid_pre"], tl[f"blocks.{i}.hook_resid_pre"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(c[f"blocks.{i}.resid_mid"], tl[f"blocks.{i}.hook_resid_mid"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(c[f"blocks.{i}.resid_post"], tl[f"blocks.{i}.hook_resid_post"], atol=1e-5,
                                   rtol=1e-5)
        torch.testing.assert_close(c[f"blocks.{i}.attn.pattern"], tl[f"blocks.{i}.attn.hook_pattern"], atol=1e-5,
                                   rtol=1e-5)
        torch.testing.assert_close(c[f"blocks.{i}.attn.q"], tl[f"blocks.{i}.attn.hook_rot_q"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(c[f"blocks.{i}.attn.head_out"], tl[f"blocks.{i}.attn.hook_z"], atol=1e-5,
                                   rtol=1e-5)
        torch.testing.assert_close(c[f"blocks.{i}.attn.pattern"], rc[f"blocks.{i}.attn.pattern"], atol=1e-6, rtol=1e-5)


def test_bridge_interventions_and_cleanup(bridge):
    _, br = bridge
    hm = hooks.wrap(br)
    x = toks()

    def boom(t, n):
        raise RuntimeError("boom")
    before = hook_state(br)
    view = hm.adapter.inner_model
    with pytest.raises(RuntimeError, match="boom"):
        hm.run_with_hooks(x, hooks=[("blocks.1.attn.head_out", boom)])
    assert hook_state(br) == before
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in view.modules())
    with torch.no_grad():
        abl = hm.run_with_hooks(x, hooks=[("blocks.1.attn.head_out", lambda o, n: torch.zeros_like(o))])
        plain = br(x)
    assert (abl - plain).abs().max() > 1e-3


def test_debridge_shares_parameters(bridge):
    _, br = bridge
    view = debridge(br.original_model)
    assert type(view.model.layers[0]).__name__ == "LlamaDecoderLayer"
    assert type(view.model.layers[0].self_attn).__name__ == "LlamaAttention"
    assert not any(type(m).__module__.startswith("transformer_lens") for m in view.modules())
    ours = {id(p) for p in view.parameters()}
    assert ours and ours <= {id(p) for p in br.parameters()}  # a view: no copied weights
    assert type(br.original_model.model.layers[0]).__name__ == "BlockBridge"  # the bridge is unchanged


def test_processed_bridge_is_refused():
    fake = types.new_class("TransformerBridge")
    fake.__module__ = "transformer_lens.model_bridge.bridge"
    obj = fake()
    obj._weights_processed = True
    with pytest.raises(TypeError, match="weights were processed"):
        hooks.wrap(obj)
    ht = types.new_class("HookedTransformer")
    ht.__module__ = "transformer_lens.HookedTransformer"
    with pytest.raises(TypeError, match="HookedTransformer is not supported.*Hugging Face"):
        hooks.wrap(ht())


# --- nnsight ----------------------------------------------------------------------------------------

def test_nnsight_wrapped_zoo_model():
    nnsight = pytest.importorskip("nnsight")
    z = zoo("gdn75")
    nm = nnsight.NNsight(z)
    hm = hooks.wrap(nm)
    assert isinstance(hm.adapter, InteropAdapter) and hm.adapter.wrapped_family == "zoo"
    x = toks()
    rec = [L.index for L in hm.layers if L.rec is not None][0]
    names = ["blocks.1.resid_post", f"blocks.{rec}.rec.state"]
    with torch.no_grad():
        lg, c = hm.run_with_cache(x, names=names)
        ref, rc = hooks.wrap(z).run_with_cache(x, names=names)
        with nm.trace(x):
            saved = nm.blocks[1].output.save()
    torch.testing.assert_close(lg, ref, atol=0, rtol=0)
    for n in names:
        torch.testing.assert_close(c[n], rc[n], atol=0, rtol=0)
    out = saved[0] if isinstance(saved, tuple) else saved
    torch.testing.assert_close(c["blocks.1.resid_post"], out, atol=1e-6, rtol=1e-6)


def test_nnsight_language_model_of_hf_llama():
    nnsight = pytest.importorskip("nnsight")
    from interp.zoo.hf import to_hf_llama, word_tokenizer
    hf = to_hf_llama(zoo())
    lm = nnsight.LanguageModel(hf, tokenizer=word_tokenizer())
    assert unwrap(lm) is hf
    hm = hooks.wrap(lm)
    assert hm.adapter.wrapped_family == "hf_transformer"
    x = toks()
    with torch.no_grad():
        lg, c = hm.run_with_cache(x, names=["blocks.0.resid_post", "blocks.1.attn.pattern"])
        with lm.trace(x):
            saved = lm.model.layers[0].output.save()
            logits = lm.output.logits.save()
    out = saved[0] if isinstance(saved, tuple) else saved
    torch.testing.assert_close(c["blocks.0.resid_post"], out, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(lg, logits, atol=1e-6, rtol=1e-6)
    assert c["blocks.1.attn.pattern"].shape == (2, 4, 11, 11)
