"""run_with_cache / run_with_hooks the way people call them: ``names`` as a string, list or filter, the
name helper, TransformerLens-style hook functions, string prompts, the backward cache (equal to
torch.autograd.grad of the same activations), and a clear hooks error for each bad input (issue 18's
Python-API cases). Zoo models and a tiny HF llama, CPU, float32."""
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import hooks
from hooks.names import HookError, HookNameError
from hooks.session_checks import active_sessions
from interp.tasks import VOCAB
from interp.zoo import HybridLM, ZooConfig
from interp.zoo.hf import attach_tokenizer, word_tokenizer

V = len(VOCAB.words)
T = 9


def zoo(layout="gdn75", seed=0):
    torch.manual_seed(seed)
    return HybridLM(ZooConfig(vocab_size=V, d_model=32, n_layers=4, layout=layout, n_heads=2, head_dim=16,
                              mamba_head_dim=16, mamba_state=8)).eval()


def llama(seed=0):
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model("llama", vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                               tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(cfg).float().eval()


def toks(B=2, seed=0):
    return torch.randint(2, V, (B, T), generator=torch.Generator().manual_seed(seed))


# --- names ----------------------------------------------------------------------------------------

def test_names_as_string_list_or_filter():
    hm = hooks.wrap(zoo())
    x = toks()
    with torch.no_grad():
        _, one = hm.run_with_cache(x, names="blocks.2.resid_post")
        _, lst = hm.run_with_cache(x, names=("blocks.2.resid_post", "embed"))
        _, gen = hm.run_with_cache(x, names=(n for n in ["embed"]))
        _, flt = hm.run_with_cache(x, names=lambda n: n.endswith("mixer_out"))
    assert list(one) == ["blocks.2.resid_post"]
    assert set(lst) == {"blocks.2.resid_post", "embed"} and list(gen) == ["embed"]
    assert set(flt) == {f"blocks.{i}.mixer_out" for i in range(4)}
    torch.testing.assert_close(one["blocks.2.resid_post"], lst["blocks.2.resid_post"], atol=0, rtol=0)
    with pytest.raises(HookError, match="names must be a hook name, a list of them or a filter function, got 3"):
        hm.run_with_cache(x, names=3)
    with pytest.raises(HookNameError, match=r"hook names are strings such as 'blocks\.0\.resid_pre', got 2 \(int\)"):
        hm.run_with_cache(x, names=["embed", 2])
    with pytest.raises(HookNameError, match=r"unknown hook name 'blocks\.2\.resid_pots'.*close matches: blocks\.2\.resid_post"):
        hm.run_with_cache(x, names="blocks.2.resid_pots")


def test_name_helper():
    assert hooks.name("resid_pre", 3) == "blocks.3.resid_pre"
    assert hooks.name("rec.state", [0, 2]) == ["blocks.0.rec.state", "blocks.2.rec.state"]
    assert hooks.name("embed") == "embed"
    # TransformerLens' site names
    assert hooks.name("hook_resid_post", 1) == "blocks.1.resid_post"
    assert hooks.name("attn_out", 1) == "blocks.1.mixer_out" and hooks.name("z", 1) == "blocks.1.attn.head_out"
    assert hooks.name("pattern", 0) == "blocks.0.attn.pattern"
    with pytest.raises(HookNameError, match="unknown site 'resid_pr'; close matches: resid_pre"):
        hooks.name("resid_pr", 1)
    with pytest.raises(HookError, match=r"needs a layer: name\('mlp_out', 3\)"):
        hooks.name("mlp_out")
    with pytest.raises(HookError, match="layer must be an integer, got 1.5"):
        hooks.name("mlp_out", 1.5)
    hm = hooks.wrap(zoo())  # gdn75 over 4 layers: attention in layer 3
    assert hm.name("resid_post", -1) == "blocks.3.resid_post"
    assert hm.name("attn.pattern", -1) == "blocks.3.attn.pattern"
    assert hm.name("mlp_out", range(-2, 0)) == ["blocks.2.mlp_out", "blocks.3.mlp_out"]
    with pytest.raises(HookNameError, match="layer 0 has no attention"):
        hm.name("attn.pattern", 0)
    with pytest.raises(HookError, match=r"layer 4 out of range for 4 layers \(valid: 0\.\.3"):
        hm.name("resid_pre", 4)


# --- hook functions ---------------------------------------------------------------------------------

def test_transformer_lens_style_hooks():
    hm = hooks.wrap(zoo())
    x = toks()
    seen = []

    def tl_style(tensor, hook):
        seen.append((hook.name, hook.layer()))
        return tensor * 0 if hook.layer() == 1 else None

    def ours(x, name):
        return x * 0 if name == "blocks.1.mlp_out" else None
    with torch.no_grad():
        a = hm.run_with_hooks(x, hooks=[(lambda n: n.endswith("mlp_out"), tl_style)])
        b = hm.run_with_hooks(x, hooks={"blocks.1.mlp_out": ours})
        c = hm.run_with_hooks(x, hooks=("blocks.1.mlp_out", ours))
        plain = hm(x)
    assert seen == [(f"blocks.{i}.mlp_out", i) for i in range(4)]
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(b, c, atol=0, rtol=0)
    assert not torch.equal(a, plain)
    with pytest.raises(TypeError, match=r"\(name, fn\) pairs"):
        hm.run_with_hooks(x, hooks=["blocks.1.mlp_out"])


@pytest.mark.parametrize("ret, msg", [
    (lambda x: x.double(), r"hook on 'blocks\.1\.resid_post' returned dtype torch\.float64, expected torch\.float32"),
    (lambda x: x[:, :-1], r"returned shape \(2, 8, 32\), expected \(2, 9, 32\)"),
    (lambda x: x.tolist(), r"returned list; return a tensor of shape \(2, 9, 32\) and dtype torch\.float32"),
])
def test_bad_hook_returns(ret, msg):
    hm = hooks.wrap(zoo())
    with pytest.raises(HookError, match=msg):
        hm.run_with_hooks(toks(), hooks=[("blocks.1.resid_post", lambda x, n: ret(x))])
    for m in hm.model.modules():  # nothing left behind
        assert not m._forward_hooks and not m._forward_pre_hooks


# --- string prompts ------------------------------------------------------------------------------------

def test_string_prompts_zoo_and_hf():
    prompt = "<bos> x0 = 9 ; x1 = 0 ; ? x0"
    ids = torch.tensor([[VOCAB.words.index(w) for w in prompt.split()]])
    m = zoo()
    hm = hooks.wrap(m)
    with pytest.raises(HookError, match=r"string prompts need a tokenizer.*attach_tokenizer\(model\)"):
        hm.run_with_cache(prompt)
    attach_tokenizer(m)
    with torch.no_grad():
        lg, c = hm.run_with_cache(prompt)
        lg2, c2 = hm.run_with_cache([prompt, prompt])
        ref, ref2 = m(ids), m(ids.repeat(2, 1))
    torch.testing.assert_close(lg, ref, atol=0, rtol=0)
    torch.testing.assert_close(lg2, ref2, atol=0, rtol=0)
    with pytest.raises(HookError, match="different numbers of tokens \\(11, 3\\)"):
        hm.run_with_cache([prompt, "<bos> x0 ="])
    with pytest.raises(HookError, match="does not know.*'<pad>'"):
        hm.run_with_cache("<bos> x0 = banana")
    with pytest.raises(HookError, match="'banana' is not a word the tokenizer knows .*'<pad>'"):
        hm.to_single_token("banana")                 # an answer word too (interp patch --pairs)
    assert hm.to_single_token("<pad>") == VOCAB.words.index("<pad>")
    # an HF model with the tokenizer given to wrap
    hf = llama()
    hh = hooks.wrap(hf, tokenizer=word_tokenizer())
    with torch.no_grad():
        lg, c = hh.run_with_cache(prompt, names="blocks.1.resid_post")
        ref = hf(input_ids=ids).logits
    torch.testing.assert_close(lg, ref, atol=0, rtol=0)
    assert hh.to_single_token("x0") == VOCAB.words.index("x0")
    with pytest.raises(HookError, match="'x0 x1' is 2 tokens"):
        c.logit_attrs(c["blocks.1.resid_post"][None], "x0 x1")


# --- backward cache ------------------------------------------------------------------------------------

def reference_grads(hm, x, names, metric, positions=None):
    """torch.autograd.grad of the metric w.r.t. the activations a plain hook function sees."""
    acts = {}

    def grab(t, name):
        acts[name] = t
    with torch.enable_grad():
        lg = hm.run_with_hooks(x, hooks=[(n, grab) for n in names])
        g = torch.autograd.grad(metric(lg), [acts[n] for n in names])
    out = {}
    for n, gi in zip(names, g):
        dim = 2 if n.endswith("attn.pattern") else 1
        out[n] = gi if positions is None else gi.index_select(dim, torch.tensor(positions))
    return out


def metric(lg):
    return lg[:, -1, 3].sum() - lg[:, -1, 5].sum()


@pytest.mark.parametrize("which", ["zoo:gdn75", "zoo:transformer", "zoo:mamba275-par", "hf:llama"])
@pytest.mark.parametrize("positions", [None, [1, -2]])
def test_backward_cache_equals_autograd(which, positions):
    kind, name = which.split(":")
    m = zoo(name) if kind == "zoo" else llama()
    hm = hooks.wrap(m)
    x = toks()
    wanted = ("embed", "resid_pre", "resid_mid", "resid_post", "mixer_out", "mlp_out", "attn.pattern",
              "attn.head_out", "attn.q", "rec.readout")
    names = [n for n in hm.hook_names if n.endswith(wanted)]
    with torch.no_grad():  # backward= turns gradients on for its run
        lg, c = hm.run_with_cache(x, names=names, backward=metric, positions=positions)
    pos = None if positions is None else [p % T for p in positions]
    ref = reference_grads(hm, x, names, metric, pos)
    assert set(c.grad) == set(names) and c.grad.positions == pos
    for n in names:
        torch.testing.assert_close(c.grad[n], ref[n], atol=1e-6, rtol=1e-5, msg=n)
    torch.testing.assert_close(lg, hm(x), atol=1e-5, rtol=1e-5)
    assert all(p.grad is None for p in m.parameters())  # no side effect on the parameters


def test_backward_cache_through_zero_terms():
    """An HF Mamba2 block has no MLP: its mlp_out is a zero term, which the backward cache still
    differentiates (a hook's replacement there is added to the residual stream, so its gradient is the
    residual stream's); rec inputs get gradients through the scan."""
    import transformers
    cfg = transformers.Mamba2Config(vocab_size=V, hidden_size=16, num_hidden_layers=2, num_heads=4, head_dim=8,
                                    expand=2, n_groups=2, state_size=8, chunk_size=8, conv_kernel=4)
    torch.manual_seed(0)
    hm = hooks.wrap(AutoModelForCausalLM.from_config(cfg).float().eval())
    names = ["blocks.0.mlp_out", "blocks.0.resid_post", "blocks.1.rec.v", "blocks.1.rec.readout"]
    _, c = hm.run_with_cache(toks(), names=names, backward=metric)
    torch.testing.assert_close(c.grad["blocks.0.mlp_out"], c.grad["blocks.0.resid_post"], atol=0, rtol=0)
    assert c.grad["blocks.0.mlp_out"].abs().max() > 0 and c.grad["blocks.1.rec.v"].abs().max() > 0


def test_backward_cache_errors():
    hm = hooks.wrap(zoo())
    x = toks()
    with pytest.raises(HookError, match=r"no gradient for 'blocks\.0\.rec\.state'.*valid for the backward cache"):
        hm.run_with_cache(x, names=["blocks.0.rec.state"], backward=metric)
    with pytest.raises(HookError, match=r"backward= must return a scalar tensor.*got \(2, 9, 40"):
        hm.run_with_cache(x, backward=lambda lg: lg[..., :40])
    with pytest.raises(HookError, match="backward must be a function of the logits"):
        hm.run_with_cache(x, backward=True)


# --- bad inputs: issue 18 ------------------------------------------------------------------------------

def test_negative_positions_count_from_the_end():
    hm = hooks.wrap(zoo("transformer"))
    x = toks()
    with torch.no_grad():
        _, last = hm.run_with_cache(x, names=["blocks.1.attn.pattern", "blocks.1.resid_post"], positions=[-1])
        _, full = hm.run_with_cache(x, names=["blocks.1.attn.pattern", "blocks.1.resid_post"])
    assert last.positions == [T - 1]
    p = last["blocks.1.attn.pattern"]
    assert p.shape == (2, 2, 1, T) and not p.isnan().any()
    torch.testing.assert_close(p, full["blocks.1.attn.pattern"][:, :, -1:], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(last["blocks.1.resid_post"], full["blocks.1.resid_post"][:, -1:], atol=0, rtol=0)
    with pytest.raises(HookError, match="negative positions count from the end.*run_with_cache"):
        with hm.hooks(cache_names=["blocks.1.resid_post"], cache={}, positions=[-1]):
            pass


@pytest.mark.parametrize("positions, msg", [
    ([1.7], r"position must be an integer, got 1\.7 \(float\)"),
    ([torch.tensor(2.0)], r"position must be an integer, got tensor\(2\.\)"),
    ([True], "position must be an integer, got True"),
    ([9], r"position 9 out of range for 9 tokens \(valid: 0\.\.8, or -9\.\.-1 from the end\)"),
    ([-10], "position -10 out of range for 9 tokens"),
    ("3", "positions must be integers, got '3'"),
])
def test_bad_positions(positions, msg):
    hm = hooks.wrap(zoo())
    with pytest.raises(HookError, match=msg):
        hm.run_with_cache(toks(), names=["blocks.0.rec.state"], positions=positions)


@pytest.mark.parametrize("which", ["zoo", "hf"])
def test_bad_tokens(which):
    hm = hooks.wrap(zoo() if which == "zoo" else llama())
    x = toks()
    bad = x.clone()
    bad[1, 3] = V + 5
    for call in (hm.run_with_cache, hm.run_with_hooks, hm):
        with pytest.raises(HookError, match=rf"token id {V + 5} out of range: the model's vocabulary has {V} ids "
                                            rf"\(valid: 0\.\.{V - 1}\)"):
            call(bad)
    bad = x.clone()
    bad[0, 0] = -1
    with pytest.raises(HookError, match="token id -1 out of range"):
        hm.run_with_cache(bad)
    with pytest.raises(HookError, match=r"tokens must be integer token ids, got dtype torch\.float32; use tokens\.long"):
        hm.run_with_cache(x.float())
    with pytest.raises(HookError, match=r"tokens must be \[batch, seq\], got shape \(9,\) \(one sequence: tokens\[None\]\)"):
        hm.run_with_cache(x[0])
    with pytest.raises(HookError, match="tokens must be a \\[batch, seq\\] tensor of token ids, a string"):
        hm.run_with_cache({"a": 1})
    with torch.no_grad():  # lists of ids and smaller integer dtypes are fine
        torch.testing.assert_close(hm(x.tolist()), hm(x), atol=0, rtol=0)
        torch.testing.assert_close(hm(x.to(torch.int16)), hm(x), atol=0, rtol=0)


def test_run_with_hooks_refuses_positions():
    """positions= limits what a cache keeps; hook functions see every position, so run_with_hooks (no cache)
    used to take it and do nothing with it."""
    hm = hooks.wrap(zoo())
    x = torch.randint(0, V, (2, T))
    seen = []
    with pytest.raises(HookError, match=r"run_with_hooks\(positions=\[5\]\): positions= limits what a cache keeps"):
        hm.run_with_hooks(x, hooks=[("blocks.0.rec.state", lambda S, n: seen.append(S.shape))], positions=[5])
    hm.run_with_cache(x, names=["blocks.0.rec.state"], positions=[5],
                      hooks=[("blocks.0.rec.state", lambda S, n: seen.append(S.shape[1]))])
    assert seen == [T]          # the hook function saw every position, the cache one


@pytest.mark.parametrize("layout", ["gdn100", "gla100", "mamba2100"])
def test_float64_models_patch_states_and_patterns(layout):
    """A float64 model: a patched rec.state continues the recurrence (the float32 state met float64 inputs:
    'expected scalar type Float but found Double'), as the float32 model does up to float32 rounding; an
    identity hook on a pattern leaves float64 logits exactly as they are (it was recomputed in float32)."""
    x = torch.randint(0, V, (2, 20))

    def put(S, n):
        S[:, 6] = 0

    out = {}
    for dt in (torch.float32, torch.float64):
        hm = hooks.wrap(zoo(layout).to(dt))
        with torch.no_grad():
            out[dt] = hm.run_with_hooks(x, hooks=[("blocks.0.rec.state", put)]).double(), hm(x).double()
    (p32, r32), (p64, r64) = out[torch.float32], out[torch.float64]
    assert (p64 - r64).abs().max() > 1e-6
    torch.testing.assert_close(p64, p32, atol=1e-5, rtol=1e-5)
    hm = hooks.wrap(zoo("gdn75").to(torch.float64))
    with torch.no_grad():
        ref = hm(x)
        same = hm.run_with_hooks(x, hooks=[("blocks.3.attn.pattern", lambda p, n: p)])
    assert torch.equal(same, ref)


def test_a_model_in_training_mode_with_dropout_is_warned_about_once():
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=8, attention_dropout=0.3)
    m = AutoModelForCausalLM.from_config(cfg)       # HF returns it in training mode
    hm, x = hooks.wrap(m), torch.randint(0, V, (2, T))
    with pytest.warns(UserWarning, match="training mode with dropout: identical runs differ at random"):
        hm.run_with_cache(x, names=["blocks.0.resid_post"])
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hm.run_with_cache(x, names=["blocks.0.resid_post"])          # once per wrapped model
        m.eval()
        hooks.wrap(m).run_with_cache(x, names=["blocks.0.resid_post"])
        hooks.wrap(zoo().train()).run_with_cache(x, names=["blocks.0.resid_post"])   # no dropout: no warning


def test_a_cache_nested_inside_a_patching_session_is_refused_where_it_would_disagree():
    """An inner session wraps the attention / scan op outside the outer one, so it saw q, k, v, patterns and
    states before the outer session's hook functions changed them while the logits included the change."""
    m = zoo()
    hm = hooks.wrap(m)
    x = torch.randint(0, V, (2, T))

    def zero(t, n):
        return torch.zeros_like(t)
    with torch.no_grad():
        with hm.hooks(hooks=[("blocks.3.attn.q", zero)]):
            with pytest.raises(HookError, match="caching 'blocks.3.attn.pattern' inside another hooks session whose "
                                                "hook function changes 'blocks.3.attn.q'"):
                hm.run_with_cache(x, names=["blocks.3.attn.pattern"])
            with pytest.raises(HookError, match="caching 'blocks.3.attn.k'"):   # through another wrapper of m too
                hooks.wrap(m).run_with_cache(x, names=["blocks.3.attn.k"])
        # the one-call form, a cache of another layer or of a module name, and nested captures are fine
        lg, c = hm.run_with_cache(x, names=["blocks.3.attn.pattern"], hooks=[("blocks.3.attn.q", zero)])
        assert torch.allclose(c["blocks.3.attn.pattern"][0, 0, 4, :5], torch.full((5,), 0.2))
        with hm.hooks(hooks=[("blocks.3.attn.q", zero)]):
            lg2, c2 = hm.run_with_cache(x, names=["blocks.0.rec.state", "blocks.3.resid_post"])
        assert torch.equal(lg2, lg)
    assert active_sessions(m) == []
