"""hooks on HF transformers (llama, olmo3, ...) and HF GDN hybrids (olmo_hybrid, qwen3_next):
capture is exact, residual bookkeeping, attention patterns vs eager weights, GDN states vs the
model's cache and fla's naive recurrence, interventions, clean-up, errors. Tiny random models,
CPU, float32."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import hf_tiny as H  # tests/hf_tiny.py, a sibling of this file
from hf_tiny import assert_clean, attn_layers, cache_of, logits, rec_layers, snapshot
import hooks
from hooks.adapters import hf_common
from hooks.names import HookNameError

V = 64
COMMON = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
              num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=None,
              eos_token_id=1, tie_word_embeddings=False)
GDN = dict(linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8)
CONFIGS = {
    "llama": ("llama", {}),
    "olmo3": ("olmo3", dict(sliding_window=3, layer_types=["sliding_attention", "full_attention"] * 2)),
    "olmo_hybrid": ("olmo_hybrid", dict(GDN, linear_allow_neg_eigval=True)),
    "olmo_hybrid_noneg": ("olmo_hybrid", dict(GDN, linear_allow_neg_eigval=False,
                                              layer_types=["linear_attention", "full_attention"] * 2)),
    "qwen3_next": ("qwen3_next", dict(GDN, head_dim=8, num_experts=0)),
    "qwen3_next_moe": ("qwen3_next", dict(GDN, head_dim=8, num_experts=4, num_experts_per_tok=2,
                                          moe_intermediate_size=16, shared_expert_intermediate_size=16)),
    "qwen3_5_text": ("qwen3_5_text", dict(GDN, head_dim=8)),
    "qwen3_5_moe_text": ("qwen3_5_moe_text", dict(GDN, head_dim=8, num_experts=4, num_experts_per_tok=2,
                                                  moe_intermediate_size=16, shared_expert_intermediate_size=16)),
    # further plain transformers the adapter covers
    "mistral": ("mistral", dict(sliding_window=4)),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", dict(head_dim=8)),
    "olmo": ("olmo", {}),
    "olmo2": ("olmo2", {}),
}
MAIN = ["llama", "olmo3", "olmo_hybrid", "olmo_hybrid_noneg", "qwen3_next"]
GDN_KINDS = ["olmo_hybrid", "olmo_hybrid_noneg", "qwen3_next", "qwen3_5_text"]
T = 11


def make(kind, attn_implementation=None):
    mt, kw = CONFIGS[kind]
    m = H.from_config(AutoConfig.for_model(mt, **{**COMMON, **kw}), attn_implementation)
    if kind.startswith("olmo_hybrid"):  # random init leaves beta ~ 0.5: spread b_proj so beta*2 > 1 occurs
        with torch.no_grad():
            for blk in m.model.layers:
                if hasattr(blk, "linear_attn"):
                    blk.linear_attn.b_proj.weight.mul_(20)
    return m


model = H.cached(make)


def toks(B=2, seed=0, n=T):
    return H.toks(V, B, seed, n)


def setup(kind):
    """(model, HookedModel, tokens, plain logits)"""
    return H.setup(model(kind), toks())


def fla_naive():
    """fla's naive_recurrent_gated_delta_rule(q, k, v, beta, g, ...), loaded by path (fla's
    package __init__ needs triton); hooks.scan.gdn.naive where fla is not installed."""
    spec = importlib.util.find_spec("fla")
    if spec is None:
        from hooks.scan import gdn
        return lambda q, k, v, beta, g, **kw: gdn.naive(q, k, v, g, beta, **kw)
    path = Path(spec.origin).parent / "ops" / "gated_delta_rule" / "naive.py"
    s = importlib.util.spec_from_file_location("fla_naive_gdn_hf", path)
    mod = importlib.util.module_from_spec(s)
    s.loader.exec_module(mod)
    return mod.naive_recurrent_gated_delta_rule


# --- capture is exact, everything is removed ----------------------------------------------------

@pytest.mark.parametrize("kind", list(CONFIGS))
def test_capture_everything_keeps_logits(kind):
    hm = hooks.wrap(model(kind))
    fam = "hf_gdn" if kind.startswith(("olmo_hybrid", "qwen3_")) and kind != "qwen3" else "hf_transformer"
    assert hm.adapter.family == fam
    H.assert_capture_everything_keeps_logits(hm, toks())


@pytest.mark.parametrize("kind", MAIN)
def test_identity_hooks_keep_logits(kind):
    m, hm, x, ref = setup(kind)
    H.assert_identity_hooks_keep_logits(hm, x, ref)


@pytest.mark.parametrize("kind", MAIN)
def test_hook_that_raises_leaves_nothing_behind(kind):
    m, hm, x, ref = setup(kind)
    a, r = attn_layers(hm)[0], (rec_layers(hm) or [None])[0]
    names = [f"blocks.{a}.attn.pattern", f"blocks.{a}.attn.head_out", f"blocks.{hm.n_layers - 1}.resid_post", "embed"]
    if r is not None:  # raised inside the scan kernel call, while the GDN module is marked running
        names += [f"blocks.{r}.rec.q", f"blocks.{r}.rec.state", f"blocks.{r}.rec.readout"]
    # (then a failure inside the model, bad token ids, while every hook is installed)
    H.assert_raising_hooks_leave_nothing(hm, x, ref, names, snapshot(m), every_name=True)


# --- residual stream bookkeeping ----------------------------------------------------------------

@pytest.mark.parametrize("kind", list(CONFIGS))
def test_residual_bookkeeping(kind):
    m = model(kind)
    H.assert_residual_bookkeeping(hooks.wrap(m), toks(), hf_common.base_model(m).norm)


# --- attention patterns vs the model's own eager weights -----------------------------------------

@pytest.mark.parametrize("kind", MAIN + ["qwen3_5_text", "mistral", "qwen2", "qwen3", "olmo", "olmo2"])
def test_pattern_equals_eager_weights(kind):
    # (olmo3, mistral: a windowed layer really is windowed)
    window = {"olmo3": 3, "mistral": 4}.get(kind)
    H.assert_patterns_equal_eager(make, kind, model(kind), toks(), [0, 5, T - 1], window)


@pytest.mark.parametrize("kind", ["llama", "olmo3", "qwen3_next"])
def test_attention_qkv_and_head_out(kind):
    """q, k after RoPE / norms (GQA: Hkv heads); head_out = eager softmax(q k^T) v per head."""
    m = model(kind)
    hm = hooks.wrap(m)
    i = attn_layers(hm)[-1]
    p = f"blocks.{i}.attn"
    with torch.no_grad():
        _, c = hm.run_with_cache(toks(), names=[f"{p}.{s}" for s in ("q", "k", "v", "pattern", "head_out")])
    assert c[f"{p}.q"].shape == (2, T, 4, 8) and c[f"{p}.k"].shape == (2, T, 2, 8)
    vv = c[f"{p}.v"].repeat_interleave(2, dim=2)
    torch.testing.assert_close(torch.einsum("bhij,bjhd->bihd", c[f"{p}.pattern"], vv), c[f"{p}.head_out"],
                               atol=1e-5, rtol=0)


# --- GDN states ----------------------------------------------------------------------------------

def model_cache_states(m, x):
    with torch.no_grad():
        out = m(input_ids=x, use_cache=True)
    return {i: cache_of(out).layers[i].recurrent_states[0] for i in range(len(m.model.layers))
            if hasattr(m.model.layers[i], "linear_attn")}


@pytest.mark.parametrize("kind", GDN_KINDS)
def test_gdn_states_match_cache_and_naive(kind):
    m = model(kind)
    hm = hooks.wrap(m)
    x = toks()
    idx = rec_layers(hm)
    assert idx and all(hm.layers[i].rec_family == "gdn" for i in idx)
    names = [f"blocks.{i}.rec.{s}" for i in idx for s in ("q", "k", "v", "decay", "beta", "state", "readout")]
    with torch.no_grad():
        _, c = hm.run_with_cache(x, names=names)
        _, cp = hm.run_with_cache(x, names=[f"blocks.{i}.rec.state" for i in idx], positions=[2, T - 1])
    own = model_cache_states(m, x)
    naive = fla_naive()
    for i in idx:
        p = f"blocks.{i}.rec"
        q, k, v, g, beta, S = (c[f"{p}.{s}"] for s in ("q", "k", "v", "decay", "beta", "state"))
        assert q.shape == (2, T, 4, 8) and v.shape == (2, T, 4, 8) and S.shape == (2, T, 4, 8, 8)
        assert S.dtype == torch.float32
        assert q.norm(dim=-1).max() <= 1 + 1e-6 and k.norm(dim=-1).max() <= 1 + 1e-6  # l2-normed (eps 1e-6)
        torch.testing.assert_close(S[:, -1], own[i].float(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cp[f"{p}.state"], S[:, [2, T - 1]], atol=1e-6, rtol=0)
        state, ref = None, []
        for t in range(T):
            o_t, state = naive(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], beta[:, t:t + 1], g[:, t:t + 1],
                               initial_state=state, output_final_state=True)
            ref.append(state)
            torch.testing.assert_close(c[f"{p}.readout"][:, t:t + 1], o_t, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(S, torch.stack(ref, 1), atol=1e-5, rtol=1e-5)
        if kind == "olmo_hybrid":   # beta taken where the kernel is called: doubled, in (0, 2)
            assert beta.max() > 1.0 and beta.min() > 0 and beta.max() < 2.0
        else:
            assert beta.max() <= 1.0


@pytest.mark.parametrize("kind", ["olmo_hybrid", "qwen3_next"])
def test_gdn_decode_step_uses_recurrent_kernel(kind):
    """One-token decoding with a cache goes through the recurrent kernel; its hooks see the
    cached state as the initial state and the new state equals the model's."""
    hm = hooks.wrap(model(kind))
    i = rec_layers(hm)[0]
    H.assert_decode_step_continues_the_state(hm, i, toks(n=T + 1), also=[f"blocks.{i}.rec.v"])


# --- interventions ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", MAIN)
def test_zero_ablating_one_head_changes_logits(kind):
    m, hm, x, ref = setup(kind)
    i = attn_layers(hm)[0]

    def ablate(o, name):
        o = o.clone()
        o[:, :, 1] = 0
        return o
    with torch.no_grad():
        out = hm.run_with_hooks(x, hooks=[(f"blocks.{i}.attn.head_out", ablate)])
    assert (out[:, 1:] - ref[:, 1:]).abs().amax(-1).min() > 0  # every later position moves


@pytest.mark.parametrize("kind", GDN_KINDS)
def test_patching_state_changes_only_later_positions(kind):
    m = model(kind)
    hm = hooks.wrap(m)
    x, y = toks(seed=0), toks(seed=1)
    i = rec_layers(hm)[0]
    name = f"blocks.{i}.rec.state"
    t = 5
    with torch.no_grad():
        ref = logits(m, x)
        other = hm.run_with_cache(y, names=[name])[1][name]
        out, c = hm.run_with_cache(x, names=[name], hooks=[(name, H.put_state(other, t))])
    torch.testing.assert_close(out[:, :t], ref[:, :t], atol=0, rtol=0)
    assert (out[:, t + 1:] - ref[:, t + 1:]).abs().amax(-1).min() > 1e-6
    torch.testing.assert_close(c[name][:, t], other[:, t], atol=0, rtol=0)  # cached as the run saw it


@pytest.mark.parametrize("kind", ["olmo_hybrid", "qwen3_next"])
def test_changing_scan_inputs_reruns_the_scan(kind):
    """A hook on rec.v that returns a new (equal) tensor takes the re-computation path: logits
    stay the same up to float error; scaling v changes them."""
    m, hm, x, ref = setup(kind)
    i = rec_layers(hm)[0]
    with torch.no_grad():
        same = hm.run_with_hooks(x, hooks=[(f"blocks.{i}.rec.v", lambda v, n: v.clone())])
        diff = hm.run_with_hooks(x, hooks=[(f"blocks.{i}.rec.v", lambda v, n: 2 * v)])
    torch.testing.assert_close(same, ref, atol=1e-5, rtol=1e-5)
    assert (diff - ref).abs().max() > 1e-4


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("kind", ["olmo_hybrid", "qwen3_next", "zoo"])
def test_a_hook_that_edits_in_place_acts_as_one_that_returns_a_copy(kind, mode):
    """TransformerLens's habit (edit the tensor in place, return it or None) on rec.* names: the states, q, k
    and the write factors are values derived for the hook, so such an edit was ignored (the logits unchanged,
    the cache showing it); now it acts exactly as returning an edited copy, and the cache holds what ran."""
    if kind == "zoo":
        from interp.models import load_any
        m, x = load_any("gdn75")[0], toks(B=2, n=14) % 32
    else:
        m, x = model(kind), toks()
    hm = hooks.wrap(m)
    i = rec_layers(hm)[0]

    def in_place(v, hook):
        v[:, 4] = 0
        return v

    def in_place_none(v, hook):
        v[:, 4] = 0

    def copy(v, hook):
        v = v.clone()
        v[:, 4] = 0
        return v
    with torch.no_grad() if mode == "no_grad" else torch.inference_mode():
        ref = hm(x)
        for site in ("state", "q", "k", "v", "beta", "write_k", "write_v"):
            name = f"blocks.{i}.rec.{site}"
            want, c0 = hm.run_with_cache(x, names=[name], hooks=[(name, copy)])
            assert (want - ref).abs().max() > 1e-6, name
            for fn in (in_place, in_place_none):
                got, c = hm.run_with_cache(x, names=[name], hooks=[(name, fn)])
                torch.testing.assert_close(got, want, atol=0, rtol=0, msg=f"{name} {fn.__name__}")
                torch.testing.assert_close(c[name], c0[name], atol=0, rtol=0)


# --- errors ------------------------------------------------------------------------------------------

def test_unknown_hook_name_lists_close_matches():
    hm = hooks.wrap(model("olmo_hybrid"))
    with pytest.raises(HookNameError, match="close matches: blocks.0.resid_post"):
        hm.run_with_cache(toks(), names=["blocks.0.resid_postt"])
    with pytest.raises(HookNameError, match="no recurrent mixer"):
        hm.run_with_cache(toks(), names=["blocks.3.rec.state"])
    with pytest.raises(HookNameError, match="has no attention"):
        hm.run_with_hooks(toks(), hooks=[("blocks.0.attn.pattern", lambda t, n: t)])


def test_unsupported_model_names_supported_families():
    torch.manual_seed(0)
    opt = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "opt", num_hidden_layers=1, hidden_size=16, ffn_dim=32, num_attention_heads=2, vocab_size=32,
        max_position_embeddings=16, word_embed_proj_dim=16, pad_token_id=1, bos_token_id=2, eos_token_id=2))
    with pytest.raises(TypeError, match="unsupported model 'opt'") as e:
        hooks.wrap(opt)
    for fam in ("llama", "olmo3", "olmo_hybrid", "qwen3_next", "gpt2", "gemma2"):
        assert fam in str(e.value)


def test_attention_dispatch_nests_and_falls_back():
    """Two wrappers on one module run outermost first; an unpatched layer of the same model
    keeps its plain op; the modeling global is restored after the last exit."""
    m = model("llama")
    x = toks()
    ref = logits(m, x)
    a0, a1 = m.model.layers[0].self_attn, m.model.layers[1].self_attn
    g = hf_common.forward_globals(a0)
    orig = g["ALL_ATTENTION_FUNCTIONS"]
    seen = []

    def w(tag):
        def wrapper(q, k, v, call):
            seen.append(tag)
            return call(q, k, v)
        return wrapper
    with torch.no_grad(), hf_common.patch_attention(a0, w("outer")), hf_common.patch_attention(a0, w("inner")):
        assert g["ALL_ATTENTION_FUNCTIONS"] is not orig
        out = logits(m, x)
    assert seen == ["outer", "inner"]
    assert torch.equal(out, ref)
    assert g["ALL_ATTENTION_FUNCTIONS"] is orig
    assert a1 is not a0


# --- CUDA: HF's fla kernel path (run on a CUDA host with fla installed) ----------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["olmo_hybrid", "qwen3_next"])
def test_cuda_gdn_kernel_path(kind, dtype):
    """With fla installed HF's GDN layers call fla's chunk kernel: capture keeps logits, per-token
    states end in the model's cached state, a patched state changes only later positions."""
    import inspect
    dev = torch.device("cuda")
    m = make(kind).to(dev, dtype)
    hm = hooks.wrap(m)
    snap = snapshot(m)
    x = toks(n=150).to(dev)
    idx = rec_layers(hm)
    i = idx[0]
    kernel = sys.modules[type(m.model.layers[i].linear_attn).__module__].torch_chunk_gated_delta_rule
    impl = inspect.getclosurevars(kernel).nonlocals.get("implementation")
    assert getattr(impl, "__module__", "").startswith("fla"), f"HF does not use fla's kernel here: {impl}"
    names = hm.hook_names
    with torch.no_grad():
        ref = m(input_ids=x, use_cache=False).logits.float()
        pkv = cache_of(m(input_ids=x, use_cache=True))
        lg, c = hm.run_with_cache(x, names=names)
        other = hm.run_with_cache(toks(n=150, seed=1).to(dev), names=[f"blocks.{i}.rec.state"])[1][f"blocks.{i}.rec.state"]
    rel = lambda a, b: ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()  # noqa: E731
    tol = 5e-3 if dtype == torch.float32 else 5e-2
    errs = {"logits": rel(lg, ref)}
    for j in idx:
        errs[f"state{j}"] = rel(c[f"blocks.{j}.rec.state"][:, -1], pkv.layers[j].recurrent_states[0])
    t = 70
    name = f"blocks.{i}.rec.state"
    with torch.no_grad():
        out = hm.run_with_hooks(x, hooks=[(name, H.put_state(other, t))]).float()
    errs["before_t"] = rel(out[:, :t], ref[:, :t])
    print(f"{kind} {dtype} kernel {impl.__module__}.{impl.__name__}: {errs}")
    assert max(errs.values()) < tol, errs
    assert rel(out[:, t + 1:], ref[:, t + 1:]) > 10 * errs["before_t"] and rel(out[:, t + 1:], ref[:, t + 1:]) > 1e-3
    assert_clean(m, snap)
