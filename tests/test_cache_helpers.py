"""The cache's analysis methods (hooks.cache.Cache): accumulated_resid, decompose_resid, head_results /
stack_head_results, apply_ln_to_stack, logit_lens, logit_attrs. Equal to TransformerLens on a tiny HF llama
(within 1e-4); on zoo models and tiny HF hybrids checked by identities: the terms sum to the residual
stream, the heads sum to mixer_out, the logit lens ends at the logits, direct logit attribution sums to the
logit difference. CPU, float32."""
import copy
import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import hooks
from hooks.cache import Cache
from hooks.names import HookError, HookNameError
from interp.zoo import HybridLM, ZooConfig

V = 64
SITES = ("resid_pre", "resid_mid", "resid_post", "mixer_out", "mlp_out")
ANALYSIS = lambda n: n == "embed" or n.endswith(SITES)  # noqa: E731


def toks(B=2, T=9, seed=0):
    return torch.randint(2, V, (B, T), generator=torch.Generator().manual_seed(seed))


def tiny_llama(seed=0, layers=3):
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model("llama", vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
                               tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(cfg).float().eval()


# --- TransformerLens on the same weights --------------------------------------------------------

@pytest.fixture(scope="module")
def tl_pair():
    pytest.importorskip("transformer_lens")
    from transformer_lens.model_bridge import TransformerBridge
    from interp.zoo.hf import word_tokenizer
    hf = tiny_llama()
    # the bridge rewires the model it is given: it gets its own copy
    br = TransformerBridge.boot_transformers("meta-llama/Llama-3.2-1B", hf_model=copy.deepcopy(hf),
                                             tokenizer=word_tokenizer(), device="cpu", dtype=torch.float32)
    x = toks()
    with torch.no_grad():
        tl_logits, tl = br.run_with_cache(x)
        logits, c = hooks.wrap(hf).run_with_cache(x, names=ANALYSIS, heads=True)
    torch.testing.assert_close(logits, tl_logits, atol=1e-5, rtol=1e-5)
    return hf, br, tl, c


def close(a, b):
    assert a.shape == b.shape
    torch.testing.assert_close(a.float(), b.float(), atol=1e-4, rtol=1e-4)


def test_residual_stacks_equal_transformer_lens(tl_pair):
    _, _, tl, c = tl_pair
    close(c.accumulated_resid(), tl.accumulated_resid())
    close(c.accumulated_resid(incl_mid=True), tl.accumulated_resid(incl_mid=True))
    close(c.accumulated_resid(layer=2, mlp_input=True), tl.accumulated_resid(layer=2, mlp_input=True))
    close(c.accumulated_resid(apply_ln=True), tl.accumulated_resid(apply_ln=True))
    assert c.accumulated_resid(return_labels=True)[1] == tl.accumulated_resid(return_labels=True)[1]
    close(c.decompose_resid(), tl.decompose_resid())
    close(c.decompose_resid(layer=2, mlp_input=True), tl.decompose_resid(layer=2, mlp_input=True))
    close(c.decompose_resid(pos_slice=-1), tl.decompose_resid(pos_slice=-1))
    close(c.decompose_resid(apply_ln=True), tl.decompose_resid(apply_ln=True))
    ours, theirs = c.decompose_resid(return_labels=True)[1], tl.decompose_resid(return_labels=True)[1]
    assert ours == [t.replace("attn_out", "mixer_out") for t in theirs]


def test_head_results_equal_transformer_lens(tl_pair):
    _, _, tl, c = tl_pair
    close(c.stack_head_results(), tl.stack_head_results())
    close(c.stack_head_results(layer=2, incl_remainder=True, pos_slice=-1),
          tl.stack_head_results(layer=2, incl_remainder=True, pos_slice=-1))
    close(c.stack_head_results(apply_ln=True), tl.stack_head_results(apply_ln=True))
    assert c.stack_head_results(return_labels=True)[1] == tl.stack_head_results(return_labels=True)[1]
    for i in range(3):
        close(c.head_results(i), tl[f"blocks.{i}.attn.hook_result"])


def test_final_norm_logit_lens_and_dla_equal_transformer_lens(tl_pair):
    _, br, tl, c = tl_pair
    a, w = torch.tensor([3, 4]), torch.tensor([5, 6])
    close(c.apply_ln_to_stack(c.decompose_resid()), tl.apply_ln_to_stack(tl.decompose_resid()))
    close(c.logit_attrs(c.decompose_resid(), a, w), tl.logit_attrs(tl.decompose_resid(), a, incorrect_tokens=w))
    close(c.logit_attrs(c.decompose_resid(pos_slice=-1), a, w, pos_slice=-1),
          tl.logit_attrs(tl.decompose_resid(pos_slice=-1), a, incorrect_tokens=w, pos_slice=-1))
    close(c.logit_attrs(c.stack_head_results(), 7), tl.logit_attrs(tl.stack_head_results(), 7))
    close(c.logit_lens(), tl.accumulated_resid(apply_ln=True) @ br.W_U)


def test_final_norm_weight_is_applied():
    """TransformerLens leaves the final norm's weight out of apply_ln_to_stack (it folds it into W_U);
    ours applies the model's own norm: with a non-unit weight ours = TL's scale times the weight, and the
    terms' DLA still sums to the logit difference."""
    hf = tiny_llama(seed=1)
    with torch.no_grad():
        hf.model.norm.weight.uniform_(0.5, 1.5)
        logits, c = hooks.wrap(hf).run_with_cache(toks(), names=ANALYSIS)
    dec, x = c.decompose_resid(), c["blocks.2.resid_post"]
    rms = (x.pow(2).mean(-1, keepdim=True) + hf.model.norm.variance_epsilon).sqrt()
    close(c.apply_ln_to_stack(dec), dec / rms * hf.model.norm.weight)
    close(c.apply_ln_to_stack(dec).sum(0), hf.model.norm(x))
    close(c.logit_attrs(dec, 3, 5).sum(0), logits[..., 3] - logits[..., 5])
    close(c.logit_lens()[-1], logits)


# --- identities on zoo models and HF hybrids ----------------------------------------------------

def zoo(layout, seed=0):
    torch.manual_seed(seed)
    return HybridLM(ZooConfig(vocab_size=V, d_model=32, n_layers=4, layout=layout, n_heads=2, head_dim=16,
                              mamba_head_dim=16, mamba_state=8)).eval()


GDN = dict(linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8)
HF_COMMON = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, pad_token_id=0, bos_token_id=None, eos_token_id=1, tie_word_embeddings=False)
MAMBA = dict(vocab_size=V, hidden_size=16, intermediate_size=24, num_attention_heads=4, num_key_value_heads=2,
             num_hidden_layers=3, mamba_n_heads=4, mamba_d_head=8, mamba_n_groups=2, mamba_d_state=8,
             mamba_chunk_size=8)
HF = {
    "olmo_hybrid": ("olmo_hybrid", dict(HF_COMMON, **GDN)),  # post-norm attention layers
    "qwen3_next": ("qwen3_next", dict(HF_COMMON, **GDN, head_dim=8, num_experts=0)),  # gated attention, (1 + w) norm
    "bamba": ("bamba", dict(MAMBA, mamba_expand=2, attn_layer_indices=[1])),
    "falcon_h1": ("falcon_h1", dict(MAMBA, mamba_d_ssm=32, ssm_out_multiplier=1.2, attention_out_multiplier=1.1,
                                    embedding_multiplier=2.0, lm_head_multiplier=0.8)),
}


def spice(model, seed=0):
    """O(1) random weights (HF's init leaves the recurrent paths and norms nearly inert)."""
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("A_log", "dt_bias", "D"):
                continue
            if p.dim() == 1:
                p.copy_((1.0 if "norm" in name else 0.0) + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1] if "embed" not in name else 4))


def hf(kind):
    mt, kw = HF[kind]
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(AutoConfig.for_model(mt, **kw)).float().eval()
    spice(m)
    return m


MODELS = ["zoo:gdn75", "zoo:gla75", "zoo:mamba275", "zoo:gdn75-par", "hf:olmo_hybrid", "hf:qwen3_next",
          "hf:bamba", "hf:falcon_h1"]


def build(spec):
    kind, name = spec.split(":")
    return zoo(name) if kind == "zoo" else hf(name)


@pytest.mark.parametrize("spec", MODELS)
@pytest.mark.parametrize("positions", [None, [2, -1]])
def test_identities(spec, positions):
    m = build(spec)
    hm = hooks.wrap(m)
    x = toks()
    with torch.no_grad():
        logits, c = hm.run_with_cache(x, names=ANALYSIS, heads=True, positions=positions)
    if positions is not None:
        assert c.positions == [2, x.shape[1] - 1]
        logits = logits[:, c.positions]
    n = hm.n_layers
    final = c[f"blocks.{n - 1}.resid_post"]
    # the terms add up to the residual stream (embed, then each mixer_out / mlp_out)
    torch.testing.assert_close(c.decompose_resid().sum(0), final, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c.decompose_resid(layer=2, mlp_input=True).sum(0), c["blocks.2.resid_mid"],
                               atol=1e-5, rtol=1e-5)
    # each layer's heads (attention and recurrent) add up to its mixer_out
    for L in hm.layers:
        total = sum(c.head_results(L.index, k).sum(-2) for k, mod in (("attn", L.attn), ("rec", L.rec))
                    if mod is not None)
        torch.testing.assert_close(total, c[f"blocks.{L.index}.mixer_out"].float(), atol=1e-5, rtol=1e-4)
    heads, labels = c.stack_head_results(incl_remainder=True, return_labels=True)
    torch.testing.assert_close(heads.sum(0), final, atol=1e-5, rtol=1e-5)
    assert labels[-1] == "remainder" and len(labels) == heads.shape[0]
    # the final norm with its scale frozen is linear: the terms' images sum to the norm's output
    torch.testing.assert_close(c.apply_ln_to_stack(c.decompose_resid()).sum(0), c.final_norm(final),
                               atol=1e-5, rtol=1e-4)
    # the logit lens ends at the model's logits; DLA sums to the logit difference (no unembedding bias)
    torch.testing.assert_close(c.logit_lens()[-1], logits, atol=1e-4, rtol=1e-4)
    a, w = torch.tensor([3, 4]), torch.tensor([5, 6])
    diff = torch.stack([logits[0, :, 3] - logits[0, :, 5], logits[1, :, 4] - logits[1, :, 6]])
    for stack in (c.decompose_resid(), heads):
        torch.testing.assert_close(c.logit_attrs(stack, a, w).sum(0), diff, atol=1e-4, rtol=1e-4)


def test_head_results_are_per_head_readouts_through_the_out_projection():
    """Recurrent heads by hand on a zoo GDN layer: head h = o_proj's columns of h applied to
    rmsnorm(readout_h) * silu(gate_h), with the gate computed from the layer's input."""
    m = zoo("gdn75")
    with torch.no_grad():
        _, c = hooks.wrap(m).run_with_cache(toks(), names=["blocks.1.resid_pre", "blocks.1.rec.readout"], heads=True)
        mix = m.blocks[1].mixer
        xin = m.blocks[1].norm1(c["blocks.1.resid_pre"])
        B, T, _ = xin.shape
        z = mix.o_norm(c["blocks.1.rec.readout"], mix.g_proj(xin).view(B, T, mix.n_heads, mix.head_dim))
        Wh = mix.o_proj.weight.view(-1, mix.n_heads, mix.head_dim)
        ref = torch.einsum("bthv,dhv->bthd", z, Wh)
    torch.testing.assert_close(c.head_results(1, "rec"), ref, atol=1e-6, rtol=1e-5)
    assert c.stack_head_results(layer=2, return_labels=True)[1] == ["L0R0", "L0R1", "L1R0", "L1R1"]


def test_families_without_exact_heads_say_why():
    import transformers
    zcfg = transformers.Zamba2Config(
        vocab_size=V, hidden_size=16, intermediate_size=24, num_attention_heads=4, num_key_value_heads=4,
        num_hidden_layers=2, layers_block_type=["mamba", "hybrid"], num_mem_blocks=1, n_mamba_heads=4, mamba_headdim=8,
        mamba_ngroups=2, mamba_d_state=8, mamba_expand=2, chunk_size=8, use_mem_rope=True, tie_word_embeddings=False)
    torch.manual_seed(0)
    z = AutoModelForCausalLM.from_config(zcfg).float().eval()
    with torch.no_grad():
        _, c = hooks.wrap(z).run_with_cache(toks(), names=ANALYSIS, heads=True)
    with pytest.raises(NotImplementedError, match="zamba2.*Mamba mixer's input"):
        c.head_results(1, "attn")
    with pytest.raises(NotImplementedError, match="kinds=") as e:
        c.stack_head_results()
    assert "zamba2" in str(e.value)
    torch.testing.assert_close(c.head_results(1, "rec").sum(-2), c["blocks.1.mixer_out"], atol=1e-5, rtol=1e-4)
    assert c.stack_head_results(kinds=("rec",)).shape[0] == 8
    mcfg = transformers.MambaConfig(vocab_size=V, hidden_size=16, state_size=4, num_hidden_layers=2, expand=2,
                                    conv_kernel=4, time_step_rank=4)
    m1 = AutoModelForCausalLM.from_config(mcfg).float().eval()
    with torch.no_grad():
        logits, c = hooks.wrap(m1).run_with_cache(toks(), names=ANALYSIS, heads=True)
    with pytest.raises(NotImplementedError, match="Mamba1 layer has no heads.*mixer_out"):
        c.head_results(0, "rec")
    torch.testing.assert_close(c.logit_lens()[-1], logits, atol=1e-4, rtol=1e-4)  # the rest works


def test_mistakes_name_what_is_missing():
    m = zoo("gdn75")
    hm = hooks.wrap(m)
    with torch.no_grad():
        _, c = hm.run_with_cache(toks())  # default: resid_pre / resid_post only
    assert c.accumulated_resid().shape[0] == 5
    with pytest.raises(HookNameError, match=r"decompose_resid needs embed, blocks\.0\.mixer_out.*names=lambda"):
        c.decompose_resid()
    with pytest.raises(HookError, match=r"per-head results of layer 0 \(rec\).*heads=True"):
        c.stack_head_results()
    with pytest.raises(HookError, match="layer 3 has no heads of kind 'rec'"):
        c.head_results(3, "rec")
    with pytest.raises(HookError, match="final norm.*layer 2's pre-norm"):
        c.apply_ln_to_stack(c.accumulated_resid(), layer=2)
    with pytest.raises(HookError, match=r"layer 7 out of range \(valid: 0\.\.4"):
        c.accumulated_resid(layer=7)
    with pytest.raises(HookError, match="answer token ids must lie in 0..63"):
        c.logit_attrs(c.accumulated_resid(), 99)
    with pytest.raises(HookError, match="single-token strings"):
        c.logit_attrs(c.accumulated_resid(), torch.tensor([1.5]))
    with pytest.raises(HookNameError, match=r"'blocks\.1\.mlp_out' is not in this cache \(it holds blocks\.0"):
        c["blocks.1.mlp_out"]
    assert c["resid_pre", 2] is c["blocks.2.resid_pre"] and c["resid_post", -1] is c["blocks.3.resid_post"]
    assert c.to("cpu").model is hm


def test_loaded_cache_needs_its_model(tmp_path):
    m = zoo("gdn75")
    hm = hooks.wrap(m)
    with torch.no_grad():
        logits, c = hm.run_with_cache(toks())
    c.save(tmp_path / "c")
    back = Cache.load(tmp_path / "c")
    with pytest.raises(HookError, match=r"needs the model.*cache\.attach\(hooks\.wrap\(model\)\)"):
        back.logit_lens()
    torch.testing.assert_close(back.attach(hm).logit_lens()[-1], logits, atol=1e-5, rtol=1e-5)
