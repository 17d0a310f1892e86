"""hooks on the common HF transformers for side-by-side work (issue 24): gemma, gemma2, gemma3_text,
phi3, qwen2_moe, qwen3_moe (hf_transformer) and gpt2, gpt_neox (hf_gpt). Capture is exact, every
name works, residual bookkeeping (gemma's scaled embedding, sandwich norms, MoE blocks, parallel
residual), attention patterns vs the model's own eager weights (gemma2's logit soft-cap and sliding
layers), per-head results, patching, clean-up, errors. Tiny random models, CPU, float32."""
import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import hf_tiny as H  # tests/hf_tiny.py, a sibling of this file
from hf_tiny import assert_clean, logits, snapshot
import hooks
from hooks.adapters.hf_transformer import softcap_pattern  # attention_pattern(..., softcap=)
from hooks.session import attention_pattern

V = 64
COMMON = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
              num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=None,
              eos_token_id=1, tie_word_embeddings=False)
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)
NEOX = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
            pad_token_id=0, bos_token_id=None, eos_token_id=1, tie_word_embeddings=False)
CONFIGS = {
    "gemma": ("gemma", dict(COMMON, head_dim=8)),
    "gemma2": ("gemma2", dict(COMMON, head_dim=8, sliding_window=3, query_pre_attn_scalar=8,
                              attn_logit_softcapping=2.0, final_logit_softcapping=3.0)),
    # attn_logit_softcapping is set but gemma3's attention does not pass it to its op: no cap
    "gemma3_text": ("gemma3_text", dict(COMMON, head_dim=8, sliding_window=3, sliding_window_pattern=2,
                                        query_pre_attn_scalar=8, attn_logit_softcapping=2.0)),
    "phi3": ("phi3", dict(COMMON, sliding_window=4)),
    "qwen2_moe": ("qwen2_moe", dict(COMMON, **MOE, shared_expert_intermediate_size=16, mlp_only_layers=[1])),
    "qwen3_moe": ("qwen3_moe", dict(COMMON, **MOE, head_dim=8)),
    "gpt_neox": ("gpt_neox", NEOX),
    "gpt_neox_seq": ("gpt_neox", dict(NEOX, use_parallel_residual=False)),
    "gpt2": ("gpt2", dict(vocab_size=V, n_embd=32, n_layer=4, n_head=4, n_positions=32, bos_token_id=1,
                          eos_token_id=1, tie_word_embeddings=False)),
}
FAMILY = {"gpt2": "hf_gpt", "gpt_neox": "hf_gpt", "gpt_neox_seq": "hf_gpt"}
WINDOW = {"gemma2": 3, "gemma3_text": 3, "phi3": 4}
T = 11


def make(kind, attn_implementation=None):
    mt, kw = CONFIGS[kind]
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(mt, **kw)
    extra = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    m = AutoModelForCausalLM.from_config(cfg, **extra).float().eval()
    if kind.startswith("gemma"):  # random init gives tiny logits: make the attention soft-cap bite
        with torch.no_grad():
            for blk in m.model.layers:
                blk.self_attn.q_proj.weight.mul_(8)
                blk.self_attn.k_proj.weight.mul_(8)
    return m


model = H.cached(make)


def toks(B=2, seed=0, n=T):
    return H.toks(V, B, seed, n)


def final_logits(m, kind, resid):
    """The model's logits from the last block's output: final norm, unembedding, gemma2's final cap."""
    with torch.no_grad():
        y = m.lm_head(hooks.wrap(m).adapter.final_norm(m)(resid))
    cap = getattr(m.config, "final_logit_softcapping", None)
    return y if not cap else torch.tanh(y / cap) * cap


# --- capture is exact, every name works, everything is removed -------------------------------------

@pytest.mark.parametrize("kind", list(CONFIGS))
def test_capture_everything_keeps_logits(kind):
    m = model(kind)
    hm = hooks.wrap(m)
    assert hm.adapter.family == FAMILY.get(kind, "hf_transformer")
    assert hm.n_layers == 4 and all(L.attn is not None and L.rec is None for L in hm.layers)
    x, snap = toks(), snapshot(m)
    ref = logits(m, x)
    # a cached (not hooked) resid_mid hands the mixer's term on unchanged: exact on parallel blocks too
    names = [n for n in hm.hook_names if not n.endswith("resid_mid")]
    with torch.no_grad():
        out, cache = hm.run_with_cache(x, names=names)
        out_all, cache_all = hm.run_with_cache(x, names=hm.hook_names)
    assert torch.equal(out, ref)
    torch.testing.assert_close(out_all, ref, atol=1e-6, rtol=0)
    assert torch.equal(out_all, ref)
    assert set(cache_all) == set(hm.hook_names)
    assert_clean(m, snap)
    assert torch.equal(logits(m, x), ref)


def test_parallel_resid_mid_cached_exactly_and_hookable():
    """Parallel gpt_neox: caching every name (resid_mid included, at all or some positions) keeps the
    logits bit-exact and caches resid_mid = resid_pre + mixer_out; a hook function on resid_mid still
    changes the attention term (as the same change to mixer_out does)."""
    m = model("gpt_neox")
    assert m.config.use_parallel_residual
    hm, x = hooks.wrap(m), toks()
    ref = logits(m, x)
    with torch.no_grad():
        for pos in (None, [0, 4, T - 1]):
            out, c = hm.run_with_cache(x, names=hm.hook_names, positions=pos)
            assert torch.equal(out, ref)
            for i in range(hm.n_layers):
                p = f"blocks.{i}"
                assert torch.equal(c[f"{p}.resid_mid"], c[f"{p}.resid_pre"] + c[f"{p}.mixer_out"])
        d = torch.randn(32, generator=torch.Generator().manual_seed(3))
        mid = hm.run_with_hooks(x, hooks=[("blocks.1.resid_mid", lambda t, n: t + d)])
        mix = hm.run_with_hooks(x, hooks=[("blocks.1.mixer_out", lambda t, n: t + d)])
        out, c = hm.run_with_cache(x, names=["blocks.1.resid_mid", "blocks.1.resid_pre", "blocks.1.mixer_out"],
                                   hooks=[("blocks.1.resid_mid", lambda t, n: t + d)])
    assert (mid - ref).abs().max() > 1e-3
    torch.testing.assert_close(mid, mix, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, mid, atol=0, rtol=0)
    torch.testing.assert_close(c["blocks.1.resid_mid"], c["blocks.1.resid_pre"] + c["blocks.1.mixer_out"] + d,
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_identity_hooks_keep_logits(kind):
    m, x = model(kind), toks()
    H.assert_identity_hooks_keep_logits(hooks.wrap(m), x, logits(m, x))


@pytest.mark.parametrize("kind", ["gemma2", "phi3", "qwen2_moe", "gpt2", "gpt_neox"])
def test_hook_that_raises_leaves_nothing_behind(kind):
    m = model(kind)
    hm, x, snap = hooks.wrap(m), toks(), snapshot(m)

    def boom(t, name):
        raise RuntimeError("boom")
    for name in ["embed", "blocks.0.attn.pattern", "blocks.1.attn.head_out", "blocks.2.mixer_out",
                 "blocks.2.mlp_out", "blocks.3.resid_post"]:
        with pytest.raises(RuntimeError, match="boom"), torch.no_grad():
            hm.run_with_cache(x, names=hm.hook_names, hooks=[(name, boom)])
        assert_clean(m, snap)
    with pytest.raises(Exception), torch.no_grad():  # a failure inside the model (bad token ids)
        hm.run_with_cache(torch.full((1, 4), V + 5), names=hm.hook_names)
    assert_clean(m, snap)


# --- residual stream bookkeeping ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(CONFIGS))
def test_residual_bookkeeping(kind):
    m = model(kind)
    hm, x = hooks.wrap(m), toks()
    with torch.no_grad():
        out, c = hm.run_with_cache(x, names=hm.hook_names)
    n = hm.n_layers
    assert torch.equal(c["blocks.0.resid_pre"], c["embed"])
    total = c["embed"].clone()
    for i in range(n):
        p = f"blocks.{i}"
        if i:
            assert torch.equal(c[f"{p}.resid_pre"], c[f"blocks.{i-1}.resid_post"])
        torch.testing.assert_close(c[f"{p}.resid_mid"], c[f"{p}.resid_pre"] + c[f"{p}.mixer_out"], atol=1e-5, rtol=0)
        torch.testing.assert_close(c[f"{p}.resid_post"], c[f"{p}.resid_pre"] + c[f"{p}.mixer_out"] + c[f"{p}.mlp_out"],
                                   atol=1e-5, rtol=0)
        total += c[f"{p}.mixer_out"] + c[f"{p}.mlp_out"]
    last = c[f"blocks.{n-1}.resid_post"]
    torch.testing.assert_close(total, last, atol=1e-4, rtol=0)  # embed + sum of the terms = final residual
    torch.testing.assert_close(final_logits(m, kind, last), out, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["gemma", "gemma2", "gemma3_text", "gpt2"])
def test_embed_is_block_zero_input(kind):
    """gemma: ``embed`` is the scaled embedding, W_E[x] * sqrt(d); gpt2: token plus position embedding."""
    m, x = model(kind), toks()
    with torch.no_grad():
        _, c = hooks.wrap(m).run_with_cache(x, names=["embed"])
        if kind == "gpt2":
            want = m.transformer.wte(x) + m.transformer.wpe(torch.arange(T))
        else:
            want = m.model.embed_tokens.weight[x] * torch.tensor(math.sqrt(32.0))
    torch.testing.assert_close(c["embed"], want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", ["gemma2", "gemma3_text", "qwen2_moe", "qwen3_moe", "phi3", "gpt_neox"])
def test_terms_are_what_the_layer_adds(kind):
    """mixer_out / mlp_out against the layer's own modules: sandwich norms (the normed outputs),
    MoE blocks (the sparse block's output; qwen2_moe's layer 1 is dense), gpt_neox's dropouts."""
    m = model(kind)
    hm, x = hooks.wrap(m), toks()
    got, i = {}, 2
    blk = hm.layers[i].block
    mods = {"gemma2": ("post_attention_layernorm", "post_feedforward_layernorm"),
            "gemma3_text": ("post_attention_layernorm", "post_feedforward_layernorm"),
            "phi3": ("resid_attn_dropout", "resid_mlp_dropout"),
            "gpt_neox": ("attention", "mlp")}.get(kind, ("self_attn", "mlp"))

    def keep(key):
        return lambda mod, args, out: got.__setitem__(key, out[0] if isinstance(out, tuple) else out)
    hs = [getattr(blk, a).register_forward_hook(keep(k)) for k, a in zip(("mix", "mlp"), mods)]
    try:
        with torch.no_grad():
            _, c = hm.run_with_cache(x, names=[f"blocks.{i}.mixer_out", f"blocks.{i}.mlp_out"])
    finally:
        for h in hs:
            h.remove()
    assert torch.equal(c[f"blocks.{i}.mixer_out"], got["mix"]) and torch.equal(c[f"blocks.{i}.mlp_out"], got["mlp"])
    if "moe" in kind:
        assert "Sparse" in type(blk.mlp).__name__
    if kind == "qwen2_moe":
        assert "Sparse" not in type(hm.layers[1].block.mlp).__name__


# --- attention patterns vs the model's own eager weights ---------------------------------------------

@pytest.mark.parametrize("kind", list(CONFIGS))
def test_pattern_equals_eager_weights(kind):
    m, x = model(kind), toks()
    eager, ref = H.eager_twin(make, kind, m, x)
    hm = hooks.wrap(m)
    names = [f"blocks.{i}.attn.pattern" for i in range(4)]
    with torch.no_grad():
        _, c = hm.run_with_cache(x, names=names)
        _, cp = hm.run_with_cache(x, names=names, positions=[0, 5, T - 1])
        eo, ce = hooks.wrap(eager).run_with_cache(x, names=names)  # eager path intercepted too
    torch.testing.assert_close(eo, ref.logits, atol=0, rtol=0)
    assert len(ref.attentions) == 4
    for i, w in enumerate(ref.attentions):
        pat = c[f"blocks.{i}.attn.pattern"]
        assert pat.shape == (2, 4, T, T)
        torch.testing.assert_close(pat, w.float(), atol=1e-5, rtol=0)
        torch.testing.assert_close(ce[f"blocks.{i}.attn.pattern"], w.float(), atol=1e-5, rtol=0)
        torch.testing.assert_close(cp[f"blocks.{i}.attn.pattern"], w[:, :, [0, 5, T - 1]].float(), atol=1e-5, rtol=0)
    if kind in WINDOW:  # the windowed layers really are windowed (gemma: even layers; phi3: all)
        w = WINDOW[kind]
        for i in (0, 2):
            assert hm.layers[i].attn_meta["sliding_window"] == w
            assert c[f"blocks.{i}.attn.pattern"][:, :, T - 1, :T - w].abs().max() == 0
        if kind != "phi3":
            assert hm.layers[1].attn_meta["sliding_window"] is None
            assert c["blocks.1.attn.pattern"][:, :, T - 1, :T - w].abs().max() > 0


def test_gemma2_pattern_is_soft_capped():
    """The cap changes the pattern a lot here; ours is the capped one (eager's), the uncapped
    recomputation is not; gemma3 (cap in its config, not passed to its op) stays uncapped."""
    m = model("gemma2")
    hm, x = hooks.wrap(m), toks()
    names = [f"blocks.{i}.attn.{s}" for i in (0, 1) for s in ("q", "k", "pattern")]
    with torch.no_grad():
        _, c = hm.run_with_cache(x, names=names)
    for i in (0, 1):
        L, p = hm.layers[i], f"blocks.{i}.attn"
        assert L.attn_meta["softcap"] == 2.0
        q, k = c[f"{p}.q"], c[f"{p}.k"]
        plain = attention_pattern(q, k, L.attn_meta["scale"], L.attn_meta["sliding_window"])
        capped = softcap_pattern(q, k, L.attn_meta["scale"], 2.0, L.attn_meta["sliding_window"])
        assert (plain - c[f"{p}.pattern"]).abs().max() > 0.05
        torch.testing.assert_close(capped, c[f"{p}.pattern"], atol=1e-6, rtol=0)
    g3 = hooks.wrap(model("gemma3_text"))
    with torch.no_grad():
        g3.run_with_cache(x, names=["blocks.0.attn.pattern"])
    assert g3.layers[0].attn_meta["softcap"] is None


@pytest.mark.parametrize("kind", ["gemma2", "phi3", "qwen3_moe", "gpt2", "gpt_neox"])
def test_attention_qkv_and_head_out(kind):
    """head_out = pattern @ v per head (GQA repeats v); q / k are per head (phi3: split from the fused qkv)."""
    m = model(kind)
    hm = hooks.wrap(m)
    p = "blocks.2.attn"
    with torch.no_grad():
        _, c = hm.run_with_cache(toks(), names=[f"{p}.{s}" for s in ("q", "k", "v", "pattern", "head_out")])
    Hkv = c[f"{p}.k"].shape[2]
    assert c[f"{p}.q"].shape == (2, T, 4, 8) and Hkv in (2, 4) and c[f"{p}.v"].shape[2] == Hkv
    vv = c[f"{p}.v"].repeat_interleave(4 // Hkv, dim=2)
    torch.testing.assert_close(torch.einsum("bhij,bjhd->bihd", c[f"{p}.pattern"], vv), c[f"{p}.head_out"],
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_head_results_sum_to_mixer_out(kind):
    """Per-head results (Cache.head_results) plus the out-projection's bias sum to mixer_out (gemma2/3:
    through the post-attention norm with its scale frozen; gpt2: its Conv1D c_proj)."""
    m = model(kind)
    hm = hooks.wrap(m)
    with torch.no_grad():
        _, c = hm.run_with_cache(toks(), names=[f"blocks.{i}.mixer_out" for i in range(4)], heads=True)
    for i in range(4):
        r = c.head_results(i, "attn")
        assert r.shape == (2, T, 4, 32)
        spec = hm.adapter.head_projection(m, hm.layers[i], "attn")
        b = getattr(spec.proj, "bias", None)
        b = 0 if b is None or spec.post_norm is not None else b.detach()
        torch.testing.assert_close(r.sum(-2) + b, c[f"blocks.{i}.mixer_out"], atol=1e-4, rtol=1e-4)


# --- interventions -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(CONFIGS))
def test_patching_residual_and_heads(kind):
    """Patching a block's resid_post with another input's at every position gives that input's
    logits; at one position t, only positions >= t move; ablating one head moves every later position."""
    m = model(kind)
    hm = hooks.wrap(m)
    x, y = toks(seed=0), toks(seed=1)
    ref, other = logits(m, x), logits(m, y)
    name, t = "blocks.1.resid_post", 5
    with torch.no_grad():
        src = hm.run_with_cache(y, names=[name])[1][name]
        full = hm.run_with_hooks(x, hooks=[(name, lambda r, n: src)])

        def one(r, n):
            r = r.clone()
            r[:, t] = src[:, t]
            return r
        part = hm.run_with_hooks(x, hooks=[(name, one)])

        def ablate(o, n):
            o = o.clone()
            o[:, :, 1] = 0
            return o
        abl = hm.run_with_hooks(x, hooks=[("blocks.0.attn.head_out", ablate)])
    torch.testing.assert_close(full, other, atol=1e-5, rtol=0)
    assert torch.equal(part[:, :t], ref[:, :t])
    assert (part[:, t:] - ref[:, t:]).abs().amax(-1).min() > 1e-6
    assert (abl[:, 1:] - ref[:, 1:]).abs().amax(-1).min() > 0


# --- errors ----------------------------------------------------------------------------------------------

def test_gpt2_reorder_and_upcast_under_eager_is_refused():
    mt, kw = CONFIGS["gpt2"]
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(AutoConfig.for_model(mt, **kw, reorder_and_upcast_attn=True),
                                         attn_implementation="eager").eval()
    hm, snap = hooks.wrap(m), snapshot(m)
    with pytest.raises(NotImplementedError, match="reorder_and_upcast_attn"), torch.no_grad():
        hm.run_with_cache(toks(), names=["blocks.0.attn.pattern", "blocks.0.resid_pre"])
    assert_clean(m, snap)
    with torch.no_grad():  # names outside attention still work
        out, _ = hm.run_with_cache(toks(), names=["blocks.0.mixer_out"])
    assert torch.equal(out, logits(m, toks()))


def test_unsupported_model_names_supported_families():
    torch.manual_seed(0)
    opt = AutoModelForCausalLM.from_config(AutoConfig.for_model("opt", num_hidden_layers=1, hidden_size=16,
                                                                ffn_dim=32, num_attention_heads=2, vocab_size=32,
                                                                max_position_embeddings=16, word_embed_proj_dim=16,
                                                                pad_token_id=1, bos_token_id=2, eos_token_id=2))
    with pytest.raises(TypeError, match="unsupported model 'opt'") as e:
        hooks.wrap(opt)
    for fam in ("llama", "gemma", "gemma2", "gemma3_text", "phi3", "qwen2_moe", "qwen3_moe", "gpt2", "gpt_neox"):
        assert fam in str(e.value).split("supported families: ")[1].split(", ")


def test_per_head_patching_on_hf_attention():
    """interp.patching finds the head count of HF attention modules that keep it only in their config
    (llama-style): one cell per head with heads=True, one cell for the whole site without."""
    from transformers import LlamaConfig
    from interp import patching
    from interp.tasks import PairBatch
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                                     num_hidden_layers=2, num_attention_heads=4,
                                                     num_key_value_heads=2)).eval()
    N, T = 4, 8
    clean = torch.randint(2, 64, (N, T))
    corr = clean.clone()
    corr[:, 2] = (corr[:, 2] + 5) % 60 + 2
    pairs = PairBatch(clean=clean, corrupted=corr, answer_pos=torch.full((N,), T - 1),
                      clean_answer=torch.full((N,), 3), corrupted_answer=torch.full((N,), 4),
                      diff_pos=torch.full((N,), 2), meta={})
    kw = dict(sites=["attn.head_out"], layers=[1], positions=[5], keep_all=True, progress=False, n_boot=10)
    per_head = patching.sweep(m, pairs, heads=True, **kw)
    assert sorted(per_head["head"].unique()) == [0, 1, 2, 3]
    whole = patching.sweep(m, pairs, **kw)
    assert len(whole) == 1 and whole["head"].iloc[0] == -1
