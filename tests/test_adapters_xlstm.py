"""hooks on HF xlstm (mLSTM blocks; hooks.adapters.hf_xlstm, hooks.scan.mlstm): capture is exact, every hook name
works, states equal a float64 step loop written here and the model's cache (C, n, m), the effective attention
reproduces the readout, state patches continue the recurrence, changed scan inputs equal the model with changed
weights, one-token decoding from the cache under hooks, per-head results, nothing left behind. Tiny random
model, CPU, float32."""
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, xLSTMConfig

import hf_tiny as H  # tests/hf_tiny.py, a sibling of this file
from hf_tiny import assert_clean, logits, snapshot
import hooks
from hooks.adapters import find, supported_families
from hooks.adapters.hf_xlstm import HFXLSTMAdapter
from hooks.scan import mlstm

V, D, HEADS, K, T, CAP, EPS = 64, 128, 4, 16, 11, 15.0, 1e-6
LAYERS = [0, 1]
REC_NAMES = ("q", "k", "v", "decay", "beta", "state", "readout", "pattern")


def make(kind="xlstm", **over):
    # chunk_size 4 < T: HF runs two chunks of its chunkwise kernel and the last 3 tokens by its step loop
    cfg = xLSTMConfig(**{**dict(vocab_size=V, hidden_size=D, num_hidden_layers=2, num_heads=HEADS, qk_dim_factor=0.5,
                                v_dim_factor=0.5, chunk_size=4, ffn_proj_factor=1.0, ffn_round_up_to_multiple_of=16,
                                gate_soft_cap=CAP, eps=EPS), **over})
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(cfg).float().eval()
    return H.unit_scale_weights(m)   # O(1) weights: gates, stabiliser and both branches of the denominator vary


model = H.cached(lambda kind: make(kind))


def toks(B=2, seed=0, n=T):
    return H.toks(V, B, seed, n)


def mixer_inputs(m, x):
    """The mLSTM layer's input (norm_mlstm's output) of each block in a plain forward."""
    got, hs = {}, []
    for i, blk in enumerate(m.backbone.blocks):
        hs.append(blk.mlstm_layer.register_forward_pre_hook(lambda mod, a, i=i: got.__setitem__(i, a[0].detach())))
    try:
        with torch.no_grad():
            m(input_ids=x, use_cache=False)
    finally:
        for h in hs:
            h.remove()
    return got


def gates(mod, h):
    """q, k, v [B, T, H, *], log forget gate g and log input gate i [B, T, H], in float64, from the layer's input."""
    lin = lambda L: h.double() @ L.weight.double().T + (0 if L.bias is None else L.bias.double())  # noqa: E731
    b, n, _ = h.shape
    q, k, v = (lin(L).view(b, n, HEADS, -1) for L in (mod.q, mod.k, mod.v))
    i = CAP * torch.tanh(lin(mod.igate_preact) / CAP)
    f = CAP * torch.tanh(lin(mod.fgate_preact) / CAP)
    return q, k, v, F.logsigmoid(f), i


def step_loop(q, k, v, g, i, state=None):
    """The mLSTM written out in float64 (HF's stabilised step): per-token (C, n, m) and readouts."""
    b, n, h, kd = k.shape
    if state is None:
        z = lambda *shape: torch.zeros(*shape, dtype=torch.float64)  # noqa: E731
        C, nn_, m = z(b, h, kd, v.shape[-1]), z(b, h, kd), z(b, h)
    else:
        C, nn_, m = (s.double() for s in state)
    Cs, ns, ms, out = [], [], [], []
    for t in range(n):
        m_new = torch.maximum(g[:, t] + m, i[:, t])
        fa, ia = torch.exp(g[:, t] + m - m_new), torch.exp(i[:, t] - m_new)
        C = fa[..., None, None] * C + ia[..., None, None] * k[:, t, :, :, None] * v[:, t, :, None, :]
        nn_ = fa[..., None] * nn_ + ia[..., None] * k[:, t]
        m = m_new
        qs = q[:, t] / kd ** 0.5
        den = torch.maximum((qs * nn_).sum(-1).abs(), torch.exp(-m)) + EPS
        out.append(torch.einsum("bhk,bhkv->bhv", qs, C) / den[..., None])
        Cs.append(C), ns.append(nn_), ms.append(m)
    return torch.stack(Cs, 1), torch.stack(ns, 1), torch.stack(ms, 1), torch.stack(out, 1)


# --- the scan module on its own: several chunks, HF's own kernels ----------------------------------------------

def test_scan_over_several_chunks_equals_step_loop_and_hf_kernels():
    """hooks.scan.mlstm over 150 tokens (3 of its chunks, the last one partial), from an initial state: readouts,
    per-token states (all and some positions, in any order), n / m, the final state and the effective attention
    equal the float64 loop here; readouts and final state equal HF's chunkwise + step kernels too."""
    from transformers.models.xlstm import modeling_xlstm as X
    g = torch.Generator().manual_seed(3)
    B, n, h, kd, vd = 2, 150, 3, 8, 5
    q, k = torch.randn(B, n, h, kd, generator=g), torch.randn(B, n, h, kd, generator=g)
    v = torch.randn(B, n, h, vd, generator=g)
    ig = CAP * torch.tanh(3 * torch.randn(B, n, h, generator=g) / CAP)
    fg = CAP * torch.tanh((3 * torch.randn(B, n, h, generator=g) + 2) / CAP)
    S0 = (torch.randn(B, h, kd, vd, generator=g), torch.randn(B, h, kd, generator=g), torch.randn(B, h, 1, generator=g))
    lg = F.logsigmoid(fg)
    C, nn_, mm, o = step_loop(*(x.double() for x in (q, k, v, lg, ig)), state=(S0[0], S0[1], S0[2][..., 0]))
    got, (Cf, nf, mf) = mlstm.scan(q, k, v, ig, fg, eps=EPS, initial_state=S0, output_final_state=True)
    torch.testing.assert_close(got.double(), o, atol=1e-4, rtol=1e-4)
    args = dict(q=q, k=k, v=v, g=lg, i=ig, initial_state=S0)
    torch.testing.assert_close(mlstm.states(**args).double(), C, atol=1e-4, rtol=1e-4)
    pos = [149, 3, 70, 64, 2]
    torch.testing.assert_close(mlstm.states(**args, positions=pos), mlstm.states(**args)[:, pos], atol=1e-6, rtol=0)
    n32, m32 = mlstm.norm_states(**args)
    torch.testing.assert_close(n32.double(), nn_, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(m32.double(), mm, atol=1e-5, rtol=1e-5)
    for a, b in zip((Cf, nf, mf[..., 0]), (C[:, -1], nn_[:, -1], mm[:, -1])):
        torch.testing.assert_close(a.double(), b, atol=1e-4, rtol=1e-4)
    A = mlstm.pattern(**args, eps=EPS)
    C0_part = mlstm.states(q=q, k=k, v=torch.zeros_like(v), g=lg, i=ig, initial_state=S0)  # the decayed C_0 alone
    init = mlstm.readout(C0_part, n32, m32, q, eps=EPS)
    torch.testing.assert_close(torch.einsum("bhts,bshv->bthv", A, v).double() + init.double(), o, atol=1e-4, rtol=1e-4)
    naive, _ = mlstm.naive(q, k, v, lg, ig, eps=EPS, initial_state=S0)
    torch.testing.assert_close(naive.double(), o, atol=1e-4, rtol=1e-4)
    tr = lambda x: x.transpose(1, 2)  # noqa: E731  HF's [B, H, T, ...]
    hf, (hC, hn, hm) = X.wrap_chunkwise_arbitrary_sequence_length(
        X.mlstm_chunkwise_native_autograd, X.mlstm_recurrent_sequence_native, X.mlstm_recurrent_step_native,
        tr(q), tr(k), tr(v), tr(fg), tr(ig), *S0, chunk_size=32, eps=EPS, return_last_states=True)
    torch.testing.assert_close(got, tr(hf), atol=1e-4, rtol=1e-4)
    for a, b in zip((Cf, nf, mf), (hC, hn, hm)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_continue_from_several_patches():
    """Family.continue_from with two patched positions (the second in a later chunk) == the float64 loop run
    through both edits, n and m kept."""
    g = torch.Generator().manual_seed(4)
    B, n, h, kd, vd = 1, 100, 2, 4, 3
    q, k = torch.randn(B, n, h, kd, generator=g), torch.randn(B, n, h, kd, generator=g)
    v = torch.randn(B, n, h, vd, generator=g)
    ig, lg = torch.randn(B, n, h, generator=g), F.logsigmoid(torch.randn(B, n, h, generator=g) + 2)
    c = mlstm.FAMILY.view(q=q, k=k, v=v, decay=lg, beta=ig, scale=kd ** -0.5, eps=EPS, initial_state=None)
    o, _ = mlstm.FAMILY.scan(c)
    S = mlstm.FAMILY.states(c)
    P = {10: torch.randn(B, h, kd, vd, generator=g), 80: torch.randn(B, h, kd, vd, generator=g)}
    o2, fin, S2 = mlstm.FAMILY.continue_from(c, o, P, S)
    d = [x.double() for x in (q, k, v, lg, ig)]
    _, nn_, mm, o_ref = step_loop(*d)
    want_S, want_o = S.double().clone(), o_ref.clone()
    for t, end in ((10, 80), (80, n)):
        want_S[:, t] = P[t]
        Cs, _, _, os_ = step_loop(*(x[:, t + 1:end] for x in d), state=(P[t], nn_[:, t], mm[:, t]))
        want_S[:, t + 1:end], want_o[:, t + 1:end] = Cs, os_
        qs = d[0][:, t] / kd ** 0.5
        den = torch.maximum((qs * nn_[:, t]).sum(-1).abs(), torch.exp(-mm[:, t])) + EPS
        want_o[:, t] = torch.einsum("bhk,bhkv->bhv", qs, P[t].double()) / den[..., None]
    torch.testing.assert_close(S2.double(), want_S, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(o2.double(), want_o, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fin[0].double(), want_S[:, -1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fin[2][..., 0].double(), mm[:, -1], atol=1e-5, rtol=1e-5)


# --- the layer map, capture is exact, every name works, nothing is left behind ------------------------------

def test_layer_map_and_names():
    m = model("xlstm")
    hm = hooks.wrap(m)
    assert isinstance(hm.adapter, HFXLSTMAdapter) and isinstance(find(m), HFXLSTMAdapter)
    assert "xlstm" in supported_families()
    assert [(L.attn, L.rec_family) for L in hm.layers] == [(None, "mlstm")] * 2
    for i in LAYERS:
        assert {f"blocks.{i}.rec.{s}" for s in REC_NAMES} <= set(hm.hook_names)
    assert not any(".attn." in n for n in hm.hook_names)
    assert hm.adapter.final_norm(m) is m.backbone.out_norm
    with pytest.raises(NotImplementedError, match="no attention"):
        hm.adapter.head_projection(m, hm.layers[0], "attn")


def test_capture_everything_keeps_logits():
    m = model("xlstm")
    hm = hooks.wrap(m)
    c, _ = H.assert_capture_everything_keeps_logits(hm, toks())  # the model's own backend gave every output
    for i in LAYERS:
        p = f"blocks.{i}.rec"
        assert c[f"{p}.state"].shape == (2, T, HEADS, K, K) and c[f"{p}.state"].dtype == torch.float32
        assert c[f"{p}.decay"].shape == (2, T, HEADS) and c[f"{p}.beta"].shape == (2, T, HEADS)
        assert c[f"{p}.pattern"].shape == (2, HEADS, T, T) and c[f"{p}.readout"].shape == (2, T, HEADS, K)


def test_identity_hooks_keep_logits():
    m = model("xlstm")
    H.assert_identity_hooks_keep_logits(hooks.wrap(m), toks(), logits(m, toks()))


def test_hook_that_raises_leaves_nothing_behind():
    m = model("xlstm")
    hm = hooks.wrap(m)
    x = toks()
    ref = logits(m, x)
    snap = snapshot(m)

    def boom(t, n):
        raise RuntimeError("boom")
    for name in ("embed", "blocks.0.rec.q", "blocks.0.rec.beta", "blocks.1.rec.state", "blocks.1.rec.readout",
                 "blocks.1.rec.pattern", "blocks.0.mixer_out", "blocks.1.mlp_out", "blocks.1.resid_mid"):
        with pytest.raises(RuntimeError, match="boom"):
            hm.run_with_hooks(x, hooks=[(name, boom)])
        assert_clean(m, snap)
    assert torch.equal(logits(m, x), ref)


def test_long_sequence_path_is_refused_and_cleaned_up():
    """More tokens than config.max_inference_chunksize: HF runs every block once per chunk, which rec.* hooks
    refuse (clearly); with output_hidden_states HF takes its one-pass path and capture works."""
    m = make(max_inference_chunksize=8)
    hm = hooks.wrap(m)
    x = toks()
    snap = snapshot(m)
    with torch.no_grad(), pytest.raises(NotImplementedError, match="max_inference_chunksize"):
        hm.run_with_cache(x, names=["blocks.0.rec.state"])
    assert_clean(m, snap)
    with torch.no_grad():  # HF's output_hidden_states installs forward hooks of its own, kept on the model
        ref = m(input_ids=x, use_cache=False, output_hidden_states=True).logits
        own = {id(mod): {d: list(getattr(mod, d, {})) for d in H.HOOK_DICTS} for mod in m.modules()}
        c = {}
        with hm.hooks(cache_names=["blocks.0.rec.state"], cache=c):
            out = m(input_ids=x, use_cache=False, output_hidden_states=True).logits
    assert torch.equal(out, ref) and c["blocks.0.rec.state"].shape == (2, T, HEADS, K, K)
    assert own == {id(mod): {d: list(getattr(mod, d, {})) for d in H.HOOK_DICTS} for mod in m.modules()}


# --- states: a float64 step loop and the model's cache ---------------------------------------------------------

def test_states_match_step_loop_and_cache():
    m = model("xlstm")
    hm = hooks.wrap(m)
    x = toks()
    hin = mixer_inputs(m, x)
    names = [f"blocks.{i}.rec.{s}" for i in LAYERS for s in REC_NAMES]
    pos = [7, 0, 5, T - 1]
    with torch.no_grad():
        _, c = hm.run_with_cache(x, names=names)
        _, cp = hm.run_with_cache(x, names=[f"blocks.{i}.rec.state" for i in LAYERS], positions=pos)
        hf = m(input_ids=x, use_cache=True)
    both = 0
    for i in LAYERS:
        p = f"blocks.{i}.rec"
        q, k, v, g, ig = gates(m.backbone.blocks[i].mlstm_layer, hin[i])
        C, n, mm, o = step_loop(q, k, v, g, ig)
        for name, want in (("q", q), ("k", k), ("v", v), ("decay", g), ("beta", ig), ("state", C), ("readout", o)):
            torch.testing.assert_close(c[f"{p}.{name}"].double(), want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(cp[f"{p}.state"], c[f"{p}.state"][:, pos], atol=1e-6, rtol=0)
        view = dict(q=c[f"{p}.q"], k=c[f"{p}.k"], v=c[f"{p}.v"], g=c[f"{p}.decay"], i=c[f"{p}.beta"])
        n32, m32 = mlstm.norm_states(**view)
        torch.testing.assert_close(n32.double(), n, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(m32.double(), mm, atol=1e-5, rtol=1e-5)
        cC, cn, cm = hf.cache.rnn_state[i]  # HF's cache after the prefill: (C, n, m [B, H, 1])
        torch.testing.assert_close(c[f"{p}.state"][:, -1], cC, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(n32[:, -1], cn, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(m32[:, -1], cm[..., 0], atol=1e-6, rtol=1e-6)
        A = c[f"{p}.pattern"]  # effective attention: readout_t = sum_s A[t, s] v_s
        torch.testing.assert_close(torch.einsum("bhts,bshv->bthv", A, c[f"{p}.v"]).double(), o, atol=1e-4, rtol=1e-4)
        assert (A.triu(1) == 0).all()
        den = (q / K ** 0.5 * n).sum(-1).abs()
        both += int((den > torch.exp(-mm)).any()) + int((den < torch.exp(-mm)).any())
    assert both >= 3  # the denominator's two branches both occur (a test that could miss the max)


def test_pattern_rows_and_heads():
    """rec.pattern at kept rows (positions=) and `hooks.effective.pattern` of the view for some heads are the
    full pattern's rows / heads."""
    from hooks import effective
    m = model("xlstm")
    hm = hooks.wrap(m)
    x = toks()
    p = "blocks.1.rec"
    with torch.no_grad():
        _, c = hm.run_with_cache(x, names=[f"{p}.{s}" for s in ("q", "k", "v", "decay", "beta", "pattern")])
        _, cr = hm.run_with_cache(x, names=[f"{p}.pattern"], positions=[3, T - 1])
    A = c[f"{p}.pattern"]
    torch.testing.assert_close(cr[f"{p}.pattern"], A[:, :, [3, T - 1]], atol=1e-6, rtol=1e-6)
    view = mlstm.FAMILY.view(q=c[f"{p}.q"], k=c[f"{p}.k"], v=c[f"{p}.v"], decay=c[f"{p}.decay"], beta=c[f"{p}.beta"],
                             scale=K ** -0.5, eps=EPS, initial_state=None)
    sub = effective.pattern("mlstm", view, rows=[T - 1, 2], heads=[3, 0])
    torch.testing.assert_close(sub, A[:, [3, 0]][:, :, [T - 1, 2]], atol=1e-6, rtol=1e-6)


def test_interp_contributions_add_up_to_the_readout():
    """interp.patterns.contributions (rec.pattern times the values) of an mLSTM layer: what each source adds sums
    to the readout, with no rest (no initial state)."""
    from interp import patterns
    m = model("xlstm")
    con = patterns.contributions(m, toks(), 1, [2, T - 1])
    assert con.contributions.shape == (2, 2, T, HEADS, K)
    scale = con.readout.abs().max()
    assert scale > 1e-2 and con.rest.abs().max() <= 1e-5 * scale


@pytest.mark.parametrize("hooked", [False, True])
def test_decoding_one_token_from_the_cache(hooked):
    """Prefill with use_cache=True under hooks, then one-token decoding from the model's cache under hooks
    (capture only: the model's own backend; ``hooked``: a hook function that changes a rec input, so the
    hooks.scan.mlstm path runs from the cached (C, n, m)): the full sequence's last logits, and the decoded state
    is the float64 loop's last one and the cache's."""
    m = model("xlstm")
    hm = hooks.wrap(m)
    x = toks()
    hin = mixer_inputs(m, x)
    snap = snapshot(m)
    names = [f"blocks.{i}.rec.state" for i in LAYERS]
    # v (1 + 1e-6): a changed tensor (so hooks.scan.mlstm runs), the same values to float rounding
    fns = [(f"blocks.{i}.rec.v", lambda t, n: t * (1 + 1e-6)) for i in LAYERS] if hooked else []
    with torch.no_grad():
        full = logits(m, x)
        pre, step = {}, {}
        with hm.hooks(fns, cache_names=names, cache=pre):
            out = m(input_ids=x[:, :-1], use_cache=True)
        cache = out.cache
        own = {i: cache.rnn_state[i][0].clone() for i in LAYERS}
        with hm.hooks(fns, cache_names=names, cache=step):
            last = m(input_ids=x[:, -1:], use_cache=True, cache=cache).logits
    torch.testing.assert_close(last[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)
    for i in LAYERS:
        n = f"blocks.{i}.rec.state"
        torch.testing.assert_close(pre[n][:, -1], own[i], atol=1e-5, rtol=1e-5)
        C, _, _, _ = step_loop(*gates(m.backbone.blocks[i].mlstm_layer, hin[i]))
        torch.testing.assert_close(step[n][:, 0].double(), C[:, -1], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(step[n][:, 0], cache.rnn_state[i][0], atol=1e-5, rtol=1e-5)
    assert_clean(m, snap)


# --- interventions ---------------------------------------------------------------------------------------------

def test_state_patch_continues_the_recurrence():
    """C_t := another run's C_t at one position (batch row 0 only): later readouts of that row are the float64
    loop continued from (C', n_t, m_t); earlier ones and row 1 are unchanged; the change reaches the logits."""
    m = model("xlstm")
    hm = hooks.wrap(m)
    a, b = toks(B=1, seed=1), toks(B=2, seed=2)
    t, p = 5, "blocks.0.rec"
    name = f"{p}.state"
    ins = [f"{p}.{s}" for s in ("q", "k", "v", "decay", "beta")]
    with torch.no_grad():
        _, clean = hm.run_with_cache(a, names=[name])
        base, cb = hm.run_with_cache(b, names=ins + [f"{p}.readout", name])

        def put(S, n):
            S = S.clone()
            S[0, t] = clean[name][0, t]
            return S
        patched, after = hm.run_with_cache(b, names=[name, f"{p}.readout"], hooks=[(name, put)])
    q, k, v, g, ig = (cb[n].double() for n in ins)
    _, n_, m_, _ = step_loop(q, k, v, g, ig)
    C2, _, _, o2 = step_loop(q[:, t + 1:], k[:, t + 1:], v[:, t + 1:], g[:, t + 1:], ig[:, t + 1:],
                             state=(clean[name][:, t].expand(2, -1, -1, -1), n_[:, t], m_[:, t]))
    torch.testing.assert_close(after[name][0, t], clean[name][0, t], atol=0, rtol=0)
    torch.testing.assert_close(after[name][0, t + 1:].double(), C2[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(after[f"{p}.readout"][0, t + 1:].double(), o2[0], atol=1e-4, rtol=1e-4)
    ro_t = torch.einsum("hk,hkv->hv", q[0, t] / K ** 0.5, clean[name][0, t].double())
    ro_t = ro_t / (torch.maximum((q[0, t] / K ** 0.5 * n_[0, t]).sum(-1).abs(), torch.exp(-m_[0, t])) + EPS)[:, None]
    torch.testing.assert_close(after[f"{p}.readout"][0, t].double(), ro_t, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(after[f"{p}.readout"][0, :t], cb[f"{p}.readout"][0, :t], atol=1e-5, rtol=0)
    torch.testing.assert_close(after[name][1], cb[name][1], atol=1e-5, rtol=1e-5)   # row 1 not patched
    torch.testing.assert_close(patched[1], base[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(patched[0, :t], base[0, :t], atol=1e-5, rtol=0)
    assert ((patched - base).abs().amax(-1)[0, t:] > 1e-4).all()



def test_state_patch_on_a_float64_model_continues_in_float64():
    """A float64 model (``.double()``): a rec.state hook that edits C_t of row 0 runs (it raised a dtype error), and
    the readouts from t on are the float64 loop continued from the edited state (1e-9: computed in float64)."""
    m = make("xlstm").double()
    hm = hooks.wrap(m)
    b, t, p = toks(B=2, seed=2), 5, "blocks.0.rec"
    name, ins = f"{p}.state", [f"{p}.{s}" for s in ("q", "k", "v", "decay", "beta")]
    got = {}

    def edit(S, n):
        S = S.clone()
        S[0, t] = S[0, t] * 2 + 0.1
        got["C"] = S[0, t].double()
        return S
    with torch.no_grad():
        _, cb = hm.run_with_cache(b, names=ins + [f"{p}.readout"])
        _, after = hm.run_with_cache(b, names=[f"{p}.readout"], hooks=[(name, edit)])
    assert after[f"{p}.readout"].dtype == torch.float64   # (HF returns float32 logits)
    q, k, v, g, ig = (cb[n].double() for n in ins)
    _, n_, m_, _ = step_loop(q, k, v, g, ig)
    _, _, _, o2 = step_loop(q[:1, t + 1:], k[:1, t + 1:], v[:1, t + 1:], g[:1, t + 1:], ig[:1, t + 1:],
                            state=(got["C"][None], n_[:1, t], m_[:1, t]))
    qs = q[0, t] / K ** 0.5
    ro_t = torch.einsum("hk,hkv->hv", qs, got["C"])
    ro_t = ro_t / (torch.maximum((qs * n_[0, t]).sum(-1).abs(), torch.exp(-m_[0, t])) + EPS)[:, None]
    y = after[f"{p}.readout"]
    torch.testing.assert_close(y[0, t], ro_t, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(y[0, t + 1:], o2[0], atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(y[1], cb[f"{p}.readout"][1], atol=1e-5, rtol=1e-5)   # its own state, maybe rounded

def test_changed_inputs_equal_the_model_with_changed_weights():
    """rec.q and rec.v scaled per channel at layer 1 (hooks.scan.mlstm runs) == the model whose q / v projection
    rows are scaled so (HF's own kernels run; a uniform scale would mostly cancel in the normaliser and the
    per-head norm); a changed rec.beta (log input gate) and rec.decay == shifted gate biases where the layer's
    soft cap is the identity."""
    m = model("xlstm")
    hm = hooks.wrap(m)
    x = toks()
    mod = m.backbone.blocks[1].mlstm_layer
    sq, sv = torch.linspace(0.2, 3, HEADS * K), torch.linspace(3, 0.2, HEADS * K)
    with torch.no_grad():
        got = hm.run_with_hooks(x, hooks=[("blocks.1.rec.q", lambda t, n: t * sq.view(HEADS, K)),
                                          ("blocks.1.rec.v", lambda t, n: t * sv.view(HEADS, K))])
        saved = mod.q.weight.clone(), mod.v.weight.clone()
        try:
            mod.q.weight.mul_(sq[:, None]), mod.v.weight.mul_(sv[:, None])
            ref = logits(m, x)
        finally:
            mod.q.weight.copy_(saved[0]), mod.v.weight.copy_(saved[1])
        plain = logits(m, x)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert (got - plain).abs().max() > 1e-2
    m2 = make(gate_soft_cap=1e4)  # a cap that is the identity here, to float rounding
    mod2, hm2 = m2.backbone.blocks[0].mlstm_layer, hooks.wrap(m2)
    with torch.no_grad():
        got = hm2.run_with_hooks(x, hooks=[("blocks.0.rec.beta", lambda t, n: t - 1.5),
                                           ("blocks.0.rec.decay",
                                            lambda t, n: F.logsigmoid(torch.logit(t.exp()) + 0.7))])
        mod2.igate_preact.bias.sub_(1.5), mod2.fgate_preact.bias.add_(0.7)
        ref = logits(m2, x)
        mod2.igate_preact.bias.add_(1.5), mod2.fgate_preact.bias.sub_(0.7)
        plain = logits(m2, x)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert (got - plain).abs().max() > 1e-2


def test_rec_head_results_sum_to_mixer_out():
    m = model("xlstm")
    hm = hooks.wrap(m)
    with torch.no_grad():
        _, c = hm.run_with_cache(toks(), names=hm.hook_names, heads=True)
    for i in LAYERS:
        res = c.head_results(i, "rec")
        assert res.shape == (2, T, HEADS, D)
        torch.testing.assert_close(res.sum(2), c[f"blocks.{i}.mixer_out"], atol=1e-5, rtol=0)


def test_nested_sessions():
    m = model("xlstm")
    names = ["blocks.1.rec.state", "blocks.1.mixer_out", "blocks.0.rec.q"]
    H.assert_nested_sessions(hooks.wrap(m), toks(), names, names[:2])
