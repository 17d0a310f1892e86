"""hooks on HF kimi_linear (Kimi Delta Attention + MLA attention + MoE): capture is exact, KDA per-token
states vs a float64 step loop written here and the model's cached state, rec.readout is what the layer
consumes, state patches continue the recurrence, MLA patterns vs eager weights, rec.pattern (effective
attention) rebuilds the readout, clean-up after every exit path. Tiny random models, CPU, float32."""
import sys

import pytest
import torch
from transformers import AutoConfig

import hf_tiny as H  # tests/hf_tiny.py, a sibling of this file
from hf_tiny import attn_layers, cache_of, rec_layers, snapshot
import hooks
from hooks.adapters.hf_kimi import KERNELS

V, T = 64, 11
HQK, HV = 12, 8  # MLA head dims: qk_nope + qk_rope, v
CONFIGS = {
    "kimi": dict(q_lora_rank=None, mlp_layer_types=["dense", "sparse", "sparse", "dense"]),
    "kimi_qlora": dict(q_lora_rank=8, mlp_layer_types=["dense"] * 4),  # MLA with a low-rank query path
}


def make(kind, attn_implementation=None):
    cfg = AutoConfig.for_model(
        "kimi_linear", vocab_size=V, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=16, qk_rope_head_dim=4,
        qk_nope_head_dim=8, v_head_dim=HV, num_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
        linear_head_dim=8, linear_num_heads=4, linear_conv_kernel_dim=4, pad_token_id=0, bos_token_id=None,
        eos_token_id=1, layer_types=["linear_attention", "full_attention"] * 2, **CONFIGS[kind])
    m = H.from_config(cfg, attn_implementation)
    with torch.no_grad():  # spread beta over (0, 1) and the per-key decays (random init leaves beta ~ 0.5)
        for blk in m.model.layers:
            if blk.block_type == "linear_attention":
                blk.self_attn.b_proj.weight.mul_(20)
                blk.self_attn.forget_gate.f_b_proj.weight.mul_(30)
    return m


model = H.cached(make)


def toks(B=2, seed=0, n=T):
    return H.toks(V, B, seed, n)


def setup(kind="kimi"):
    return H.setup(model(kind), toks())


def step_loop(q, k, v, g, beta, S=None):
    """KDA written out in float64: S = diag(exp(g_t)) S; d = beta_t (v_t - S^T k_t); S += k_t d_t^T;
    o_t = S^T q_t / sqrt(K). q, k already l2-normalised. Returns (o [B,T,H,V], states [B,T,H,K,V])."""
    q, k, v, g, beta = (t.double() for t in (q, k, v, g, beta))
    B, n, Hh, K = k.shape
    S = torch.zeros(B, Hh, K, v.shape[-1], dtype=torch.float64) if S is None else S.double()
    os, Ss = [], []
    for t in range(n):
        S = S * g[:, t].exp()[..., None]
        d = beta[:, t, :, None] * (v[:, t] - torch.einsum("bhkv,bhk->bhv", S, k[:, t]))
        S = S + k[:, t, :, :, None] * d[:, :, None, :]
        os.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t]) * K ** -0.5)
        Ss.append(S)
    return torch.stack(os, 1), torch.stack(Ss, 1)


REC = ("q", "k", "v", "decay", "beta", "state", "readout")


# --- capture is exact, everything is removed ----------------------------------------------------

@pytest.mark.parametrize("kind", list(CONFIGS))
def test_capture_everything_keeps_logits(kind):
    m, hm, x, _ = setup(kind)
    assert hm.adapter.family == "hf_kimi"
    assert [hm.layers[i].rec_family for i in rec_layers(hm)] == ["kda", "kda"] and attn_layers(hm) == [1, 3]
    # the KDA kernel globals are among those hf_tiny's snapshot / assert_clean check are restored
    assert set(KERNELS) <= set(sys.modules[type(m).__module__].__dict__) and set(KERNELS) <= set(H.KERNEL_GLOBALS)
    c, _ = H.assert_capture_everything_keeps_logits(hm, x)
    assert c["blocks.0.rec.decay"].shape == (2, T, 4, 8) and c["blocks.0.rec.state"].shape == (2, T, 4, 8, 8)
    assert c["blocks.1.attn.q"].shape == (2, T, 4, HQK) and c["blocks.1.attn.v"].shape == (2, T, 4, HV)


def test_identity_hooks_keep_logits():
    m, hm, x, ref = setup()
    H.assert_identity_hooks_keep_logits(hm, x, ref)


def test_residual_bookkeeping_and_moe_mlp_out():
    m, hm, x, ref = setup()
    seen = {}
    hs = [blk.mlp.register_forward_hook(lambda mod, a, o, i=i: seen.__setitem__(i, o))
          for i, blk in enumerate(m.model.layers)]
    try:
        _, c = H.assert_residual_bookkeeping(hm, x, m.model.norm)
    finally:
        for h in hs:
            h.remove()
    for i in range(4):
        assert torch.equal(c[f"blocks.{i}.mlp_out"], seen[i])  # the MoE block's output (routed + shared experts)


def test_hook_that_raises_leaves_nothing_behind():
    m, hm, x, ref = setup()
    names = ["embed", "blocks.0.rec.q", "blocks.0.rec.decay", "blocks.2.rec.state", "blocks.0.rec.readout",
             "blocks.0.rec.pattern", "blocks.1.attn.pattern", "blocks.3.attn.head_out", "blocks.3.resid_post"]
    # (then a failure inside the model while every hook is on)
    H.assert_raising_hooks_leave_nothing(hm, x, ref, names, snapshot(m), every_name=True)


# --- KDA states ------------------------------------------------------------------------------------

def test_kda_states_match_step_loop_and_cache():
    m, hm, x, _ = setup()
    idx = rec_layers(hm)
    gates = {}
    hs = [m.model.layers[i].self_attn.forget_gate.register_forward_hook(
        lambda mod, a, o, i=i: gates.__setitem__(i, o)) for i in idx]
    try:
        with torch.no_grad():
            _, c = hm.run_with_cache(x, names=[f"blocks.{i}.rec.{s}" for i in idx for s in REC])
    finally:
        for h in hs:
            h.remove()
    with torch.no_grad():
        _, cp = hm.run_with_cache(x, names=[f"blocks.{i}.rec.state" for i in idx], positions=[2, T - 1])
        own = cache_of(m(input_ids=x, use_cache=True))
    for i in idx:
        q, k, v, g, beta, S, o = (c[f"blocks.{i}.rec.{s}"] for s in REC)
        assert S.dtype == torch.float32 and g.shape == (2, T, 4, 8)
        assert torch.equal(g, gates[i])  # rec.decay is the layer's per-key-dim log decay
        assert (g.amax(-1) - g.amin(-1)).min() > 1e-3  # really per key dim: differs across K
        assert 0 < beta.min() and beta.max() < 1
        assert q.norm(dim=-1).max() <= 1 + 1e-6 and k.norm(dim=-1).max() <= 1 + 1e-6  # l2-normed (eps 1e-6)
        o_ref, S_ref = step_loop(q, k, v, g, beta)
        torch.testing.assert_close(S.double(), S_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(o.double(), o_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(S[:, -1], own.layers[i].recurrent_states[0].float(), atol=1e-5, rtol=1e-5)
        assert torch.equal(cp[f"blocks.{i}.rec.state"], S[:, [2, T - 1]])


def test_readout_is_what_the_layer_consumes():
    """rec.readout is the kernel output the layer passes to its gated norm (o_norm), bit for bit."""
    m, hm, x, _ = setup()
    seen = {}
    hs = [m.model.layers[i].self_attn.o_norm.register_forward_pre_hook(
        lambda mod, a, i=i: seen.__setitem__(i, a[0])) for i in rec_layers(hm)]
    try:
        with torch.no_grad():
            _, c = hm.run_with_cache(x, names=[f"blocks.{i}.rec.readout" for i in rec_layers(hm)])
    finally:
        for h in hs:
            h.remove()
    for i in rec_layers(hm):
        assert torch.equal(c[f"blocks.{i}.rec.readout"], seen[i])


def test_state_patch_continues_the_recurrence():
    """S_t := another run's state at t; the readouts from t on (and the states) are a step loop
    continued from the patched state; logits before t are unchanged, every later position moves."""
    m, hm, x, ref = setup()
    i, t = 2, 5
    p = f"blocks.{i}.rec"
    with torch.no_grad():
        other = hm.run_with_cache(toks(seed=1), names=[f"{p}.state"])[1][f"{p}.state"]
        out, c = hm.run_with_cache(x, names=[f"{p}.{s}" for s in REC], hooks=[(f"{p}.state", H.put_state(other, t))])
    q, k, v, g, beta, S, o = (c[f"{p}.{s}"] for s in REC)
    o_ref, S_ref = step_loop(q[:, t + 1:], k[:, t + 1:], v[:, t + 1:], g[:, t + 1:], beta[:, t + 1:], S=other[:, t])
    o_t = torch.einsum("bhkv,bhk->bhv", other[:, t].double(), q[:, t].double()) * 8 ** -0.5
    torch.testing.assert_close(o[:, t].double(), o_t, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(o[:, t + 1:].double(), o_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(S[:, t + 1:].double(), S_ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(S[:, t], other[:, t])
    assert torch.equal(out[:, :t], ref[:, :t])
    assert (out[:, t:] - ref[:, t:]).abs().amax(-1).min() > 1e-6


def test_changing_scan_inputs_reruns_the_scan():
    """A hook on rec.decay / rec.v that returns a new tensor takes hooks' own KDA scan: an equal copy keeps
    the logits (float error); a changed per-key decay gives the states of the step loop with that decay."""
    m, hm, x, ref = setup()
    p = "blocks.0.rec"

    def slower(g, n):
        g = g.clone()
        g[..., :4] = 0.5 * g[..., :4]  # only half of the key dims
        return g
    with torch.no_grad():
        same = hm.run_with_hooks(x, hooks=[(f"{p}.v", lambda v, n: v.clone()), (f"{p}.decay", lambda g, n: g.clone())])
        out, c = hm.run_with_cache(x, names=[f"{p}.{s}" for s in REC], hooks=[(f"{p}.decay", slower)])
    torch.testing.assert_close(same, ref, atol=1e-5, rtol=1e-5)
    q, k, v, g, beta, S, o = (c[f"{p}.{s}"] for s in REC)
    o_ref, S_ref = step_loop(q, k, v, g, beta)
    torch.testing.assert_close(S.double(), S_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(o.double(), o_ref, atol=1e-5, rtol=1e-5)
    assert (out - ref).abs().max() > 1e-4


def test_decode_step_uses_recurrent_kernel():
    """One-token decoding with a cache goes through the recurrent kernel: its hooks see the cached state as
    the initial state and the new state equals the model's and the full run's state at T."""
    _, hm, _, _ = setup()
    H.assert_decode_step_continues_the_state(hm, 0, toks(n=T + 1))


def test_rec_pattern_rebuilds_the_readout():
    """rec.pattern (hooks.effective, KDA's WY form with a per-key decay): readout_t = sum_s A[t, s] v_s; the
    rows of positions= are those rows; A equals the step loop's response to a unit value at s."""
    m, hm, x, _ = setup()
    p = "blocks.2.rec"
    with torch.no_grad():
        _, c = hm.run_with_cache(x, names=[f"{p}.{s}" for s in ("pattern", "readout", "v", "q", "k", "decay", "beta")])
        _, cp = hm.run_with_cache(x, names=[f"{p}.pattern"], positions=[3, T - 1])
    A = c[f"{p}.pattern"]
    assert A.shape == (2, 4, T, T) and A.triu(1).abs().max() == 0
    torch.testing.assert_close(torch.einsum("bhts,bshv->bthv", A, c[f"{p}.v"]), c[f"{p}.readout"], atol=1e-5, rtol=0)
    torch.testing.assert_close(cp[f"{p}.pattern"], A[:, :, [3, T - 1]], atol=1e-6, rtol=0)
    s = 4  # A[:, h, t, s] = readout_t with v replaced by e_1 at s and 0 elsewhere (V = 1)
    e = torch.zeros(2, T, 4, 1)
    e[:, s] = 1
    o, _ = step_loop(*(c[f"{p}.{n}"] for n in ("q", "k")), e, *(c[f"{p}.{n}"] for n in ("decay", "beta")))
    torch.testing.assert_close(A[:, :, :, s].double(), o[..., 0].transpose(1, 2), atol=1e-6, rtol=0)


# --- MLA attention ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(CONFIGS))
def test_pattern_equals_eager_weights(kind):
    m, x = model(kind), toks()
    eager, ref = H.eager_twin(make, kind, m, x)
    hm = hooks.wrap(m)
    idx = attn_layers(hm)
    assert len(ref.attentions) == len(idx) == 2
    names = [f"blocks.{i}.attn.{s}" for i in idx for s in ("pattern", "v", "head_out")]
    with torch.no_grad():
        _, c = hm.run_with_cache(x, names=names)
        eo, ce = hooks.wrap(eager).run_with_cache(x, names=names)  # the eager path is intercepted too
    torch.testing.assert_close(eo, ref.logits, atol=0, rtol=0)
    for i, w in zip(idx, ref.attentions):
        p = f"blocks.{i}.attn"
        assert c[f"{p}.pattern"].shape == (2, 4, T, T)
        torch.testing.assert_close(c[f"{p}.pattern"], w.float(), atol=1e-5, rtol=0)
        torch.testing.assert_close(ce[f"{p}.pattern"], w.float(), atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.einsum("bhij,bjhd->bihd", c[f"{p}.pattern"], c[f"{p}.v"]), c[f"{p}.head_out"],
                                   atol=1e-5, rtol=0)


def test_head_results_sum_to_mixer_out():
    m, hm, x, _ = setup()
    with torch.no_grad():
        _, c = hm.run_with_cache(x, names=[f"blocks.{i}.mixer_out" for i in range(4)], heads=True)
    for i in range(4):
        kind = "attn" if hm.layers[i].attn is not None else "rec"
        r = c.head_results(i, kind)
        assert r.shape == (2, T, 4, 32)
        torch.testing.assert_close(r.sum(-2), c[f"blocks.{i}.mixer_out"], atol=1e-5, rtol=1e-5)
