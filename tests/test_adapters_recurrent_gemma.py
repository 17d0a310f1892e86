"""hooks on HF recurrent_gemma (RG-LRU recurrent blocks + local attention; hooks.adapters.hf_recurrent_gemma):
capture is exact, every hook name works, local-attention patterns equal eager attention, RG-LRU states equal a
float64 step loop written here and the model's own cache, state patches continue the recurrence, decoding from
the model's cache, nothing left behind. Tiny random models, CPU, float32."""
import math

import pytest
import torch
from transformers import DynamicCache, RecurrentGemmaConfig

import hf_tiny as H  # tests/hf_tiny.py, a sibling of this file
from hf_tiny import assert_clean, logits, snapshot
import hooks
from hooks.adapters import find, hf_recurrent_gemma
from hooks.adapters.hf_common import cache_kw
from hooks.adapters.hf_recurrent_gemma import HFRecurrentGemmaAdapter

V, D, W, HEADS, WINDOW, T = 64, 16, 24, 4, 5, 13
REC, ATT = [0, 1, 3], [2]  # block_types recurrent, recurrent, attention, repeated


def make(kind="rg", attn_implementation=None):
    cfg = RecurrentGemmaConfig(vocab_size=V, hidden_size=D, intermediate_size=48, num_hidden_layers=4,
                               num_attention_heads=HEADS, num_key_value_heads=2, lru_width=W,
                               attention_window_size=WINDOW, conv1d_width=4, logits_soft_cap=30.0)
    m = H.from_config(cfg, attn_implementation)
    spice(m)
    return m


def spice(m):
    """O(1) random weights so that the recurrence matters to the logits (HF's init keeps the conv and gates
    tiny); decays a = exp(-8 r softplus(Lambda)) spread over (0.04, 1)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "recurrent_param":
                p.copy_(torch.expm1(0.01 + 0.39 * torch.rand(p.shape, generator=g)).log())
            elif p.dim() == 1 or leaf.endswith("_bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1] if "embed" not in name else 4))


model = H.cached(lambda kind: make(kind))


def toks(B=2, seed=0, n=T):
    return H.toks(V, B, seed, n)


def lru_of(m, i):
    return m.model.layers[i].temporal_block.rg_lru


def lru_inputs(m, x, layers=REC):
    """The RG-LRU input (the conv output) of each recurrent layer in a plain forward, via torch hooks."""
    got, hs = {}, []
    for i in layers:
        hs.append(lru_of(m, i).register_forward_pre_hook(lambda mod, a, i=i: got.__setitem__(i, a[0].detach())))
    try:
        logits(m, x)
    finally:
        for h in hs:
            h.remove()
    return got


def rglru_loop(lru, x, h0=None, reset0=True):
    """The RG-LRU written out in float64: (v = i x, beta = sqrt(1 - a^2), log a, states h_t [B, T, D])."""
    x = x.double()
    b, n, w = x.shape
    xb = x.view(b, n, lru.num_attention_heads, lru.block_width)
    gate = lambda Wt, bias: torch.sigmoid(torch.einsum("bthi,hij->bthj", xb, Wt.double()) + bias.double())  # noqa
    i_t = gate(lru.input_gate_weight, lru.input_gate_bias).reshape(b, n, w)
    r_t = gate(lru.recurrent_gate_weight, lru.recurrent_gate_bias).reshape(b, n, w)
    log_a = -8.0 * r_t * torch.nn.functional.softplus(lru.recurrent_param.double())
    a = log_a.exp()
    beta = torch.sqrt(1 - a * a)
    if reset0:  # position 0: the state restarts, the input is not normalised
        a, beta = a.clone(), beta.clone()
        a[:, 0], beta[:, 0] = 0, 1
    v = i_t * x
    h = torch.zeros(b, w, dtype=torch.float64) if h0 is None else h0.double()
    out = []
    for t in range(n):
        h = a[:, t] * h + beta[:, t] * v[:, t]
        out.append(h)
    return v, beta, log_a, torch.stack(out, 1)


def loop_from(h0, v, beta, g):
    """h_t = exp(g_t) h_{t-1} + beta_t v_t from h0, float64 (g the captured log decay [B, T, D])."""
    h, out = h0.double(), []
    for t in range(v.shape[1]):
        h = g[:, t].double().exp() * h + beta[:, t].double() * v[:, t].double()
        out.append(h)
    return torch.stack(out, 1)


def rec_names(i):
    return [f"blocks.{i}.rec.{s}" for s in ("q", "k", "v", "decay", "beta", "state", "readout", "pattern")]


# --- capture is exact, every name works, nothing is left behind ------------------------------------

def test_layer_map_and_names():
    m = model("rg")
    hm = hooks.wrap(m)
    assert isinstance(hm.adapter, HFRecurrentGemmaAdapter) and isinstance(find(m), HFRecurrentGemmaAdapter)
    assert [(L.attn is not None, L.rec_family) for L in hm.layers] == [(False, "mamba1")] * 2 + [(True, None),
                                                                                                (False, "mamba1")]
    for i in REC:
        assert set(rec_names(i)) <= set(hm.hook_names)
        assert not any(n.startswith(f"blocks.{i}.attn.") for n in hm.hook_names)
    assert hm.layers[2].attn_meta["sliding_window"] == WINDOW
    with pytest.raises(NotImplementedError, match="RG-LRU layer has no heads"):
        hm.adapter.head_projection(m, hm.layers[0], "rec")


def test_capture_everything_keeps_logits():
    c, ref = H.assert_capture_everything_keeps_logits(hooks.wrap(model("rg")), toks())  # the model's own scan ran
    assert ref.abs().max() > 1
    for i in REC:
        p = f"blocks.{i}.rec"
        assert c[f"{p}.state"].shape == (2, T, W, 1) and c[f"{p}.state"].dtype == torch.float32
        assert c[f"{p}.q"].shape == c[f"{p}.k"].shape == (2, T, 1) and (c[f"{p}.q"] == 1).all()
        assert c[f"{p}.v"].shape == c[f"{p}.beta"].shape == c[f"{p}.readout"].shape == (2, T, W)
        assert c[f"{p}.decay"].shape == (2, T, W, 1) and c[f"{p}.pattern"].shape == (2, W, T, T)


def test_identity_hooks_keep_logits():
    m = model("rg")
    x = toks()
    H.assert_identity_hooks_keep_logits(hooks.wrap(m), x, logits(m, x))


def test_hook_that_raises_leaves_nothing_behind(monkeypatch):
    m, hm, x, ref = H.setup(model("rg"), toks())
    snap = snapshot(m)
    names = ("embed", "blocks.0.rec.v", "blocks.1.rec.state", "blocks.1.rec.readout", "blocks.3.rec.pattern",
             "blocks.2.attn.pattern", "blocks.2.attn.head_out", "blocks.1.mixer_out", "blocks.3.resid_mid")
    H.assert_raising_hooks_leave_nothing(hm, x, ref, names, snap)
    # the stand-in's own check fails (the model's scan inputs are not the recomputed ones): an error, no trace
    real = hf_recurrent_gemma.rglru_inputs
    monkeypatch.setattr(hf_recurrent_gemma, "rglru_inputs", lambda *a: (lambda v, b, g, r: (2 * v, b, g, r))(*real(*a)))
    with pytest.raises(RuntimeError, match="not the ones hooks recomputes"):
        hm.run_with_cache(x, names=["blocks.0.rec.state"])
    assert_clean(m, snap)
    assert torch.equal(logits(m, x), ref)


def test_residual_bookkeeping_and_softcap():
    m = model("rg")
    hm = hooks.wrap(m)
    x = toks()
    names = [n for n in hm.hook_names if ".rec." not in n and ".attn." not in n]
    with torch.no_grad():
        out, c = hm.run_with_cache(x, names=names)
        emb = m.model.embed_tokens(x) * m.model.normalizer.float()
        n = hm.n_layers
        torch.testing.assert_close(c["embed"], emb, atol=0, rtol=0)  # block 0's input: the scaled embedding
        total = c["embed"].clone()
        for i in range(n):
            p = f"blocks.{i}"
            mid, post = c[f"{p}.resid_pre"] + c[f"{p}.mixer_out"], c[f"{p}.resid_mid"] + c[f"{p}.mlp_out"]
            torch.testing.assert_close(c[f"{p}.resid_mid"], mid, atol=1e-5, rtol=0)
            torch.testing.assert_close(c[f"{p}.resid_post"], post, atol=1e-5, rtol=0)
            total += c[f"{p}.mixer_out"] + c[f"{p}.mlp_out"]
        last = c[f"blocks.{n - 1}.resid_post"]
        torch.testing.assert_close(total, last, atol=1e-4, rtol=0)
        assert hm.adapter.final_norm(m) is m.model.final_norm
        cap = m.config.logits_soft_cap
        torch.testing.assert_close(cap * torch.tanh(m.lm_head(m.model.final_norm(last)) / cap), out, atol=1e-5, rtol=0)
        # a replaced embed is what block 0 receives
        z = hm.run_with_hooks(x, hooks=[("embed", lambda e, n: torch.zeros_like(e))])
        zr = hm.run_with_hooks(x, hooks=[("blocks.0.resid_pre", lambda e, n: torch.zeros_like(e))])
    torch.testing.assert_close(z, zr, atol=0, rtol=0)


# --- local attention ------------------------------------------------------------------------------

def test_local_attention_pattern_equals_eager():
    m, x = model("rg"), toks()
    eager, ref = H.eager_twin(make, "rg", m, x)
    hm = hooks.wrap(m)
    names = [f"blocks.{i}.attn.{s}" for i in ATT for s in ("pattern", "q", "k", "v", "head_out")]
    with torch.no_grad():
        out, c = hm.run_with_cache(x, names=names)
        _, cp = hm.run_with_cache(x, names=names, positions=[0, 6, T - 1])
        eo, ce = hooks.wrap(eager).run_with_cache(x, names=names)  # the eager path intercepted too
    torch.testing.assert_close(eo, ref.logits, atol=0, rtol=0)
    weights = [w for w in ref.attentions if w is not None]
    assert len(weights) == len(ATT)
    for i, w in zip(ATT, weights):
        p = f"blocks.{i}.attn"
        pat = c[f"{p}.pattern"]
        assert pat.shape == (2, HEADS, T, T) and c[f"{p}.k"].shape == (2, T, 2, D // HEADS)
        torch.testing.assert_close(pat, w.float(), atol=1e-5, rtol=0)
        torch.testing.assert_close(ce[f"{p}.pattern"], w.float(), atol=1e-5, rtol=0)
        torch.testing.assert_close(cp[f"{p}.pattern"], w[:, :, [0, 6, T - 1]].float(), atol=1e-5, rtol=0)
        assert pat[:, :, T - 1, :T - WINDOW].abs().max() == 0 and pat[:, :, T - 1, T - WINDOW:].min() > 0  # windowed
        vv = c[f"{p}.v"].repeat_interleave(2, dim=2)
        torch.testing.assert_close(torch.einsum("bhij,bjhd->bihd", pat, vv), c[f"{p}.head_out"], atol=1e-5, rtol=0)
    # per-head results (o_proj has a bias): the heads plus the bias are the layer's mixer_out
    with torch.no_grad():
        _, c = hm.run_with_cache(x, names=[f"blocks.{ATT[0]}.attn.head_out", f"blocks.{ATT[0]}.mixer_out"])
        heads = c.head_results(ATT[0])
    assert heads.shape == (2, T, HEADS, D)
    bias = m.model.layers[ATT[0]].temporal_block.o_proj.bias
    torch.testing.assert_close(heads.sum(2) + bias, c[f"blocks.{ATT[0]}.mixer_out"], atol=1e-5, rtol=0)


# --- RG-LRU states: a float64 step loop and the model's own cache ----------------------------------

def test_states_match_step_loop_and_model_cache():
    m = model("rg")
    hm = hooks.wrap(m)
    x = toks()
    xs = lru_inputs(m, x)
    names = [n for i in REC for n in rec_names(i)]
    with torch.no_grad():
        _, c = hm.run_with_cache(x, names=names)
        _, cp = hm.run_with_cache(x, names=[f"blocks.{i}.rec.state" for i in REC], positions=[0, 7, T - 1])
        m(input_ids=x, use_cache=True)  # HF's own forward keeps its final state on the module
    for i in REC:
        p = f"blocks.{i}.rec"
        v, beta, log_a, S = rglru_loop(lru_of(m, i), xs[i])
        torch.testing.assert_close(c[f"{p}.v"].double(), v, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(c[f"{p}.beta"].double(), beta, atol=1e-6, rtol=1e-5)
        g = c[f"{p}.decay"][..., 0]
        assert (g[:, 0] == -math.inf).all()  # a reset: a_0 = 0
        torch.testing.assert_close(g[:, 1:].double(), log_a[:, 1:], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(c[f"{p}.state"][..., 0].double(), S, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(c[f"{p}.readout"].double(), S, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cp[f"{p}.state"], c[f"{p}.state"][:, [0, 7, T - 1]], atol=1e-6, rtol=0)
        torch.testing.assert_close(c[f"{p}.state"][:, -1, :, 0], lru_of(m, i).recurrent_states, atol=1e-6, rtol=0)
        # the effective attention of the recurrence: readout_t[d] = sum_s A[d, t, s] v_s[d]
        A = c[f"{p}.pattern"]
        assert torch.isfinite(A).all()
        torch.testing.assert_close(torch.einsum("bdts,bsd->btd", A, c[f"{p}.v"]), c[f"{p}.readout"],
                                   atol=1e-5, rtol=1e-5)


def test_decoding_from_the_models_cache_under_hooks():
    """A prefill with use_cache=True and rec hooks on leaves the captured final state in the model's cache;
    one-token decoding from it under hooks gives the step from that state and the full sequence's logits."""
    m = model("rg")
    hm = hooks.wrap(m)
    x = toks()
    xs = lru_inputs(m, x)
    snap = snapshot(m)
    names = [f"blocks.{i}.rec.{s}" for i in REC for s in ("state", "v", "beta", "decay")]
    with torch.no_grad():
        full = logits(m, x)
        cache = DynamicCache(config=m.config)
        pre, step = {}, {}
        with hm.hooks(cache_names=names, cache=pre):
            m(input_ids=x[:, :-1], use_cache=True, **{cache_kw(m.forward, "past_key_values"): cache})
        own = {i: lru_of(m, i).recurrent_states.clone() for i in REC}
        with hm.hooks(cache_names=names, cache=step):
            out = m(input_ids=x[:, -1:], position_ids=torch.tensor([[T - 1]]), use_cache=True,
                    **{cache_kw(m.forward, "past_key_values"): cache}).logits
    torch.testing.assert_close(out[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)
    for i in REC:
        p = f"blocks.{i}.rec"
        torch.testing.assert_close(pre[f"{p}.state"][:, -1, :, 0], own[i], atol=1e-6, rtol=0)
        assert step[f"{p}.state"].shape == (2, 1, W, 1) and torch.isfinite(step[f"{p}.decay"]).all()
        _, _, _, S = rglru_loop(lru_of(m, i), xs[i])
        torch.testing.assert_close(step[f"{p}.state"][:, 0, :, 0].double(), S[:, -1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(step[f"{p}.state"][:, 0, :, 0], lru_of(m, i).recurrent_states, atol=0, rtol=0)
    assert_clean(m, snap)


# --- interventions --------------------------------------------------------------------------------

@pytest.mark.parametrize("layer", [0, 3])
def test_state_patch_continues_the_recurrence(layer):
    m = model("rg")
    hm = hooks.wrap(m)
    a, b = toks(B=1, seed=1), toks(B=1, seed=2)
    t, p = 6, f"blocks.{layer}.rec"
    name = f"{p}.state"
    ins = [f"{p}.{s}" for s in ("v", "beta", "decay")]
    # (every logit from t on moves; the patched run holds a's state at t)
    clean, base, cb, patched, after = H.state_patch_runs(hm, a, b, p, ins, t)
    torch.testing.assert_close(patched[:, :t], base[:, :t], atol=0, rtol=0)
    v, beta, g = (cb[n] for n in ins)
    ref = loop_from(clean[:, t, :, 0], v[:, t + 1:], beta[:, t + 1:], g[:, t + 1:, :, 0])
    torch.testing.assert_close(after[name][:, t + 1:, :, 0].double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after[f"{p}.readout"][:, t:], after[name][:, t:, :, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(after[f"{p}.readout"][:, :t], cb[f"{p}.readout"][:, :t], atol=0, rtol=0)


def test_changed_scan_inputs_rerun_the_recurrence():
    """rec.decay halved (a -> sqrt(a), the write strength kept) and rec.v zeroed at one token: the states are
    the step loop on the changed inputs, and the logits move."""
    m = model("rg")
    hm = hooks.wrap(m)
    x = toks()
    p = "blocks.1.rec"
    ins = [f"{p}.{s}" for s in ("v", "beta", "decay")]

    def zero_v(v, n):
        v = v.clone()
        v[:, 4] = 0
        return v
    with torch.no_grad():
        plain, c0 = hm.run_with_cache(x, names=ins)
        out, c = hm.run_with_cache(x, names=[f"{p}.state"], hooks=[(f"{p}.decay", lambda g, n: 0.5 * g),
                                                                   (f"{p}.v", zero_v)])
    v, beta, g = (c0[n] for n in ins)
    ref = loop_from(torch.zeros(2, W), zero_v(v, None), beta, 0.5 * g[..., 0])
    torch.testing.assert_close(c[f"{p}.state"][..., 0].double(), ref, atol=1e-5, rtol=1e-5)
    assert (out - plain).abs().max() > 1e-3


def test_read_and_write_scales_and_write_strength():
    """rec.q (C = 1) scales the read-out, rec.k (B = 1) and rec.beta the write: doubling q doubles the
    readout with the states as they were; doubling k or beta doubles every state (zero initial state)."""
    m = model("rg")
    hm = hooks.wrap(m)
    x = toks()
    p = "blocks.0.rec"
    want = [f"{p}.state", f"{p}.readout"]
    with torch.no_grad():
        _, c0 = hm.run_with_cache(x, names=want)
        _, cq = hm.run_with_cache(x, names=want, hooks=[(f"{p}.q", lambda q, n: 2 * q)])
        for s in ("k", "beta"):
            _, cs = hm.run_with_cache(x, names=want, hooks=[(f"{p}.{s}", lambda t, n: 2 * t)])
            torch.testing.assert_close(cs[f"{p}.state"], 2 * c0[f"{p}.state"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(cq[f"{p}.state"], c0[f"{p}.state"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(cq[f"{p}.readout"], 2 * c0[f"{p}.readout"], atol=1e-6, rtol=1e-5)


def test_nested_sessions():
    """A capture inside another on the same layers: both see the model's own scan (logits exact), both caches
    equal a single capture's, and everything is restored when both have exited."""
    H.assert_nested_sessions(hooks.wrap(model("rg")), toks(), ["blocks.0.rec.state", "blocks.2.attn.pattern"],
                             ["blocks.0.rec.v", "blocks.0.rec.state"])
