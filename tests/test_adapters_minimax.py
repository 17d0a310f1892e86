"""hooks on HF minimax (lightning attention = GLA with a constant per-head decay, interleaved with softmax
attention; hooks.adapters.hf_minimax): capture is exact, every hook name works, the DeepNorm-style residual terms,
patterns equal eager attention, lightning states equal a float64 step loop written here and the model's linear
cache, decoding from that cache, state patches continue the recurrence, a changed decay equals the model with
that decay, padding, nothing left behind. Tiny random models, CPU, float32."""
import pytest
import torch
from transformers import MiniMaxConfig

import hf_tiny as H  # tests/hf_tiny.py, a sibling of this file
from hf_tiny import assert_clean, logits, snapshot
import hooks
from hooks.adapters import find
from hooks.adapters.hf_minimax import HFMiniMaxAdapter

V, D, HEADS, HD, T = 64, 32, 4, 8, 11
ATT, REC = [0, 2], [1, 3]  # layer_types: full, linear, full, linear
FACTORS = dict(full_attn_alpha_factor=1.5, full_attn_beta_factor=0.7, linear_attn_alpha_factor=1.3,
               linear_attn_beta_factor=0.8, mlp_alpha_factor=1.2, mlp_beta_factor=0.9)


def make(kind="minimax", attn_implementation=None):
    cfg = MiniMaxConfig(vocab_size=V, hidden_size=D, intermediate_size=24, num_hidden_layers=4,
                        num_attention_heads=HEADS, num_key_value_heads=2, head_dim=HD, num_local_experts=2,
                        num_experts_per_tok=1, block_size=4, **FACTORS)  # block_size < T: HF's blockwise path
    m = H.from_config(cfg, attn_implementation)
    return H.unit_scale_weights(m)   # O(1) weights (HF's init, std 0.02, leaves every sublayer nearly inert)


model = H.cached(lambda kind: make(kind))


def toks(B=2, seed=0, n=T):
    return H.toks(V, B, seed, n)


def mixer_inputs(m, x, layers=REC, **kw):
    """The lightning-attention input (input_layernorm's output) of each layer in a plain forward."""
    got, hs = {}, []
    for i in layers:
        hs.append(m.model.layers[i].self_attn.register_forward_pre_hook(
            lambda mod, a, k, i=i: got.__setitem__(i, k["hidden_states"].detach()), with_kwargs=True))
    try:
        with torch.no_grad():
            m(input_ids=x, use_cache=False, **kw)
    finally:
        for h in hs:
            h.remove()
    return got


def lightning_loop(mod, h, S0=None):
    """Lightning attention written out in float64: (q, k, v [B, T, H, K], states [B, T, H, K, V], readout)."""
    qkv = torch.nn.functional.silu(h.double() @ mod.qkv_proj.weight.double().T)
    b, n, _ = h.shape
    q, k, v = qkv.view(b, n, HEADS, 3 * HD).split(HD, dim=-1)
    a = torch.exp(-mod.slope_rate.double().view(HEADS))
    S = torch.zeros(b, HEADS, HD, HD, dtype=torch.float64) if S0 is None else S0.double()
    states, outs = [], []
    for t in range(n):
        S = a[None, :, None, None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        states.append(S)
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return q, k, v, torch.stack(states, 1), torch.stack(outs, 1)


def gla_loop(S0, k, v, g):
    S, out = S0.double(), []
    for t in range(k.shape[1]):
        S = g[:, t].double().exp()[..., None, None] * S + k[:, t].double()[..., None] * v[:, t].double()[..., None, :]
        out.append(S)
    return torch.stack(out, 1)


# --- capture is exact, every name works, nothing is left behind ------------------------------------

def test_layer_map_and_names():
    m = model("minimax")
    hm = hooks.wrap(m)
    assert isinstance(hm.adapter, HFMiniMaxAdapter) and isinstance(find(m), HFMiniMaxAdapter)
    assert [(L.attn is not None, L.rec_family) for L in hm.layers] == [(True, None), (False, "gla")] * 2
    for i in REC:
        assert {f"blocks.{i}.rec.{s}" for s in ("q", "k", "v", "decay", "state", "readout", "pattern")} \
            <= set(hm.hook_names)
        assert f"blocks.{i}.rec.beta" not in hm.hook_names
    with pytest.raises(NotImplementedError, match="per-head results are not provided"):
        hm.adapter.head_projection(m, hm.layers[0], "attn")


def test_capture_everything_keeps_logits():
    c, _ = H.assert_capture_everything_keeps_logits(hooks.wrap(model("minimax")), toks())  # the model's own forward
    for i in REC:
        p = f"blocks.{i}.rec"
        assert c[f"{p}.state"].shape == (2, T, HEADS, HD, HD) and c[f"{p}.decay"].shape == (2, T, HEADS)
        assert c[f"{p}.pattern"].shape == (2, HEADS, T, T)


def test_identity_hooks_keep_logits():
    """Identity hooks: exact where the model's own tensors flow on; with hook functions on rec.* names the
    layer's output is the hooks.scan equivalent's, equal to float rounding."""
    m = model("minimax")
    hm = hooks.wrap(m)
    x = toks()
    ref = logits(m, x)
    exact = [n for n in hm.hook_names if ".rec." not in n and not n.endswith((".attn.pattern", ".resid_mid"))]
    with torch.no_grad():
        assert torch.equal(hm.run_with_hooks(x, hooks=[(n, lambda t, name: t) for n in exact]), ref)
        out_all = hm.run_with_hooks(x, hooks=[(n, lambda t, name: t) for n in hm.hook_names])
    torch.testing.assert_close(out_all, ref, atol=1e-5, rtol=0)


def test_hook_that_raises_leaves_nothing_behind():
    m, hm, x, ref = H.setup(model("minimax"), toks())
    names = ("embed", "blocks.1.rec.q", "blocks.1.rec.state", "blocks.3.rec.readout", "blocks.3.rec.pattern",
             "blocks.0.attn.pattern", "blocks.1.mixer_out", "blocks.2.mlp_out", "blocks.3.resid_mid")
    H.assert_raising_hooks_leave_nothing(hm, x, ref, names, snapshot(m))


# --- the DeepNorm-style residual terms -------------------------------------------------------------

def test_residual_terms_are_the_changes_to_the_stream():
    m = model("minimax")
    hm = hooks.wrap(m)
    x = toks()
    mids, outs, hs = {}, {}, []
    for i, blk in enumerate(m.model.layers):  # the model's own r (post_attention_layernorm's input) and output
        hs.append(blk.post_attention_layernorm.register_forward_pre_hook(lambda mod, a, i=i: mids.__setitem__(i, a[0])))
        hs.append(blk.register_forward_hook(lambda mod, a, o, i=i: outs.__setitem__(i, o)))
    names = [n for n in hm.hook_names if ".rec." not in n and ".attn." not in n]
    try:
        with torch.no_grad():
            out, c = hm.run_with_cache(x, names=names)
    finally:
        for h in hs:
            h.remove()
    total = c["embed"].clone()
    for i in range(hm.n_layers):
        p = f"blocks.{i}"
        torch.testing.assert_close(c[f"{p}.resid_mid"], mids[i], atol=1e-6, rtol=0)
        torch.testing.assert_close(c[f"{p}.resid_post"], outs[i], atol=0, rtol=0)
        torch.testing.assert_close(c[f"{p}.mixer_out"], mids[i] - c[f"{p}.resid_pre"], atol=0, rtol=0)
        torch.testing.assert_close(c[f"{p}.mlp_out"], outs[i] - mids[i], atol=0, rtol=0)
        total += c[f"{p}.mixer_out"] + c[f"{p}.mlp_out"]
    torch.testing.assert_close(total, c["blocks.3.resid_post"], atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(m.lm_head(m.model.norm(c["blocks.3.resid_post"])), out, atol=1e-5, rtol=0)


def test_replaced_terms_are_what_the_layer_goes_on_with():
    """mixer_out := 0 makes post_attention_layernorm read the block's input; mlp_out := 0 makes the block
    return r (checked against the same changes made with plain torch hooks)."""
    m = model("minimax")
    hm = hooks.wrap(m)
    x = toks()
    blk = m.model.layers[1]
    ins = {}
    with torch.no_grad():
        got = hm.run_with_hooks(x, hooks=[("blocks.1.mixer_out", lambda y, n: torch.zeros_like(y))])
        hs = [blk.register_forward_pre_hook(lambda mod, a, k: ins.__setitem__("x", a[0] if a else k["hidden_states"]),
                                            with_kwargs=True),
              blk.post_attention_layernorm.register_forward_pre_hook(lambda mod, a: (ins["x"],))]
        try:
            ref = logits(m, x)
        finally:
            for h in hs:
                h.remove()
        got2 = hm.run_with_hooks(x, hooks=[("blocks.1.mlp_out", lambda y, n: torch.zeros_like(y))])
        hs = [blk.post_attention_layernorm.register_forward_pre_hook(lambda mod, a: ins.__setitem__("r", a[0])),
              blk.register_forward_hook(lambda mod, a, o: ins["r"])]
        try:
            ref2 = logits(m, x)
        finally:
            for h in hs:
                h.remove()
    torch.testing.assert_close(got, ref, atol=0, rtol=0)
    torch.testing.assert_close(got2, ref2, atol=0, rtol=0)
    assert (got - logits(m, x)).abs().max() > 1e-3 and (got2 - logits(m, x)).abs().max() > 1e-3


# --- softmax attention ----------------------------------------------------------------------------

def test_pattern_equals_eager():
    m, x = model("minimax"), toks()
    eager, ref = H.eager_twin(make, "minimax", m, x)
    hm = hooks.wrap(m)
    names = [f"blocks.{i}.attn.{s}" for i in ATT for s in ("pattern", "v", "head_out")]
    with torch.no_grad():
        _, c = hm.run_with_cache(x, names=names)
        eo, ce = hooks.wrap(eager).run_with_cache(x, names=names)
    torch.testing.assert_close(eo, ref.logits, atol=0, rtol=0)
    weights = [ref.attentions[i] for i in ATT]  # the lightning layers record their linear state there
    for i, w in zip(ATT, weights):
        p = f"blocks.{i}.attn"
        assert w.shape == (2, HEADS, T, T)
        torch.testing.assert_close(c[f"{p}.pattern"], w, atol=1e-5, rtol=0)
        torch.testing.assert_close(ce[f"{p}.pattern"], w, atol=1e-5, rtol=0)
        vv = c[f"{p}.v"].repeat_interleave(2, dim=2)
        torch.testing.assert_close(torch.einsum("bhij,bjhd->bihd", c[f"{p}.pattern"], vv), c[f"{p}.head_out"],
                                   atol=1e-5, rtol=0)


# --- lightning-attention states --------------------------------------------------------------------

def test_states_match_step_loop_and_linear_cache():
    m = model("minimax")
    hm = hooks.wrap(m)
    x = toks()
    hin = mixer_inputs(m, x)
    names = [f"blocks.{i}.rec.{s}" for i in REC for s in ("q", "k", "v", "decay", "state", "readout", "pattern")]
    with torch.no_grad():
        _, c = hm.run_with_cache(x, names=names)
        _, cp = hm.run_with_cache(x, names=[f"blocks.{i}.rec.state" for i in REC], positions=[0, 5, T - 1])
        hf = m(input_ids=x, use_cache=True)
    for i in REC:
        p, mod = f"blocks.{i}.rec", m.model.layers[i].self_attn
        q, k, v, S, o = lightning_loop(mod, hin[i])
        for name, want in (("q", q), ("k", k), ("v", v), ("state", S), ("readout", o)):
            torch.testing.assert_close(c[f"{p}.{name}"].double(), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(c[f"{p}.decay"], (-mod.slope_rate.view(1, 1, HEADS)).expand(2, T, HEADS))
        torch.testing.assert_close(cp[f"{p}.state"], c[f"{p}.state"][:, [0, 5, T - 1]], atol=1e-6, rtol=0)
        torch.testing.assert_close(c[f"{p}.state"][:, -1], hf.cache.linear_cache[i], atol=1e-5, rtol=1e-5)
        A = c[f"{p}.pattern"]  # effective attention: readout_t = sum_s A[t, s] v_s
        torch.testing.assert_close(torch.einsum("bhts,bshv->bthv", A, c[f"{p}.v"]), c[f"{p}.readout"],
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hooked", [False, True])
def test_decoding_from_the_linear_cache(hooked):
    """Prefill with use_cache=True under hooks, then one-token decoding from the model's cache under hooks
    (capture only: the model's own forward; ``hooked``: a hook function, the equivalent forward): the full
    sequence's logits, and the decoded state is the step from the prefill's."""
    m = model("minimax")
    hm = hooks.wrap(m)
    x = toks()
    hin = mixer_inputs(m, x)
    snap = snapshot(m)
    names = [f"blocks.{i}.rec.state" for i in REC]
    fns = [(f"blocks.{i}.rec.v", lambda t, n: t.clone()) for i in REC] if hooked else []
    with torch.no_grad():
        full = logits(m, x)
        pre, step = {}, {}
        with hm.hooks(fns, cache_names=names, cache=pre):
            out = m(input_ids=x[:, :-1], use_cache=True)
        cache = out.cache
        own = {i: cache.linear_cache[i].clone() for i in REC}
        with hm.hooks(fns, cache_names=names, cache=step):
            last = m(input_ids=x[:, -1:], use_cache=True, cache=cache).logits
    torch.testing.assert_close(last[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)
    for i in REC:
        n = f"blocks.{i}.rec.state"
        torch.testing.assert_close(pre[n][:, -1], own[i], atol=1e-5, rtol=1e-5)
        _, _, _, S, _ = lightning_loop(m.model.layers[i].self_attn, hin[i])
        torch.testing.assert_close(step[n][:, 0].double(), S[:, -1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(step[n][:, 0], cache.linear_cache[i], atol=1e-5, rtol=1e-5)
    assert_clean(m, snap)


# --- interventions --------------------------------------------------------------------------------

def test_state_patch_continues_the_recurrence():
    m = model("minimax")
    hm = hooks.wrap(m)
    a, b = toks(B=1, seed=1), toks(B=1, seed=2)
    t, p = 5, "blocks.1.rec"
    name = f"{p}.state"
    ins = [f"{p}.{s}" for s in ("q", "k", "v", "decay")]
    # (every logit from t on moves; the patched run holds a's state at t)
    clean, base, cb, patched, after = H.state_patch_runs(hm, a, b, p, ins, t)
    torch.testing.assert_close(patched[:, :t], base[:, :t], atol=1e-5, rtol=0)  # the equivalent forward before t
    q, k, v, g = (cb[n] for n in ins)
    ref = gla_loop(clean[:, t], k[:, t + 1:], v[:, t + 1:], g[:, t + 1:])
    torch.testing.assert_close(after[name][:, t + 1:].double(), ref, atol=1e-5, rtol=1e-5)
    ro = torch.einsum("bthk,bthkv->bthv", q, after[name])
    torch.testing.assert_close(after[f"{p}.readout"][:, t:], ro[:, t:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after[f"{p}.readout"][:, :t], cb[f"{p}.readout"][:, :t], atol=1e-5, rtol=0)


def test_changed_decay_equals_the_model_with_that_decay():
    """rec.decay doubled at one layer == the model whose slope_rate (and the decay tables HF derives from it)
    is doubled there."""
    m = model("minimax")
    hm = hooks.wrap(m)
    x = toks()
    mod = m.model.layers[1].self_attn  # (not the last layer: HF gives it a slope of ~1e-5, no decay)
    with torch.no_grad():
        got = hm.run_with_hooks(x, hooks=[("blocks.1.rec.decay", lambda g, n: 2 * g)])
        saved = {n: getattr(mod, n).clone() for n in ("slope_rate", "query_decay", "key_decay", "diagonal_decay")}
        try:
            mod.slope_rate.mul_(2)
            for n, val in zip(("query_decay", "key_decay", "diagonal_decay"), mod.decay_factors(mod.slope_rate)):
                getattr(mod, n).copy_(val)
            ref = logits(m, x)
        finally:
            for n, val in saved.items():
                getattr(mod, n).copy_(val)
        plain = logits(m, x)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert (got - plain).abs().max() > 1e-3


def test_padding_mask():
    """Left padding: the model zeroes q, k, v at padded tokens; capture keeps its logits bit for bit, the states
    stay zero through the padding, and with a hook function the equivalent forward masks the same way."""
    m = model("minimax")
    hm = hooks.wrap(m)
    x = toks()
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    names = ["blocks.1.rec.state", "blocks.1.rec.k"]
    with torch.no_grad():
        ref = m(input_ids=x, attention_mask=mask, use_cache=False).logits
        c, c2 = {}, {}
        with hm.hooks(cache_names=names, cache=c):
            out = m(input_ids=x, attention_mask=mask, use_cache=False).logits
        with hm.hooks([("blocks.1.rec.v", lambda t, n: t.clone())], cache_names=names, cache=c2):
            out2 = m(input_ids=x, attention_mask=mask, use_cache=False).logits
    assert torch.equal(out, ref)
    torch.testing.assert_close(out2, ref, atol=1e-5, rtol=0)
    assert (c["blocks.1.rec.state"][0, :3] == 0).all() and (c["blocks.1.rec.k"][0, :3] == 0).all()
    assert c["blocks.1.rec.state"][0, 3].abs().max() > 0
    torch.testing.assert_close(c2["blocks.1.rec.state"], c["blocks.1.rec.state"], atol=1e-6, rtol=0)


def test_nested_sessions():
    names = ["blocks.1.rec.state", "blocks.1.mixer_out", "blocks.0.attn.pattern"]
    H.assert_nested_sessions(hooks.wrap(model("minimax")), toks(), names, names[:2])
