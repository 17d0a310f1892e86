"""Mamba1 family: hooks.scan.mamba1 and the HF adapter for jamba / mamba / falcon_mamba
(hooks.adapters.hf_mamba1) on tiny random models, CPU, float32."""
import math

import pytest
import torch

import hooks
from hooks import recurrence as R
from hooks.adapters import find
from hooks.adapters.hf_common import cache_kw as hf_cache_kw
from hooks.adapters.hf_mamba1 import HFMamba1Adapter
from hooks.scan import mamba1

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM  # noqa: E402

V, D_MODEL, N_STATE, EXPAND = 64, 16, 4, 2
KINDS = ["jamba", "mamba", "falcon_mamba"]


def config(kind, **kw):
    if kind == "jamba":  # mamba / attention alternating, MoE feed-forward on odd layers
        return transformers.JambaConfig(
            vocab_size=V, hidden_size=D_MODEL, intermediate_size=24, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
            expert_layer_offset=1, num_experts=2, num_experts_per_tok=1, mamba_d_state=N_STATE, mamba_d_conv=4,
            mamba_expand=EXPAND, mamba_dt_rank=4, **kw)
    cls = transformers.MambaConfig if kind == "mamba" else transformers.FalconMambaConfig
    return cls(vocab_size=V, hidden_size=D_MODEL, state_size=N_STATE, num_hidden_layers=3, expand=EXPAND,
               conv_kernel=4, time_step_rank=4, **kw)


def spice(model, seed):
    """O(1) random weights so that the SSM matters to the logits (HF's init leaves it nearly inert)."""
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "A_log":
                p.copy_(torch.empty(p.shape).uniform_(0, math.log(8), generator=g))
            elif leaf == "D":
                p.copy_(1 + 0.5 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_((1.0 if "norm" in name else 0.0) + 0.2 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[-1] if "embed" not in name else 4
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))


def make(kind, seed=0, **kw):
    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(config(kind), **kw).float().eval()
    spice(m, seed)
    return m


def toks(T=19, B=2, seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def logits(m, x):
    return m(input_ids=x, use_cache=False).logits


def cache_of(out):
    """The model's cache in its output: ``cache`` from transformers 5.24 on, ``cache_params`` before."""
    return out["cache"] if "cache" in out else out.cache_params


def with_cache(m, cache) -> dict:
    """The cache as a keyword ``m`` takes (``cache`` from transformers 5.24 on; the old name deprecated)."""
    return {hf_cache_kw(m.forward, "cache_params"): cache}


def modeling(m):
    return __import__(type(m).__module__, fromlist=["x"])


def no_hooks_left(m):
    for mod in m.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks, type(mod).__name__
        assert "forward" not in vars(mod), type(mod).__name__
    g = vars(modeling(m))
    for n in ("mamba_selective_scan", "mamba_selective_state_update", "mamba_inner_fn"):
        if n in g:  # the modeling module's globals are the originals again
            assert g[n].__module__ != "hooks.adapters.hf_mamba1", n


def rec_layers(hm):
    return [L.index for L in hm.layers if L.rec is not None]


@pytest.fixture(scope="module")
def models():
    return {k: make(k) for k in KINDS}


# --- the scan module ----------------------------------------------------------------------------

def _inputs(b=2, T=37, D=6, N=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(b, T, D, generator=g), dt=torch.nn.functional.softplus(torch.randn(b, T, D, generator=g)),
                A=-3 * torch.rand(D, N, generator=g), B=torch.randn(b, T, N, generator=g),
                C=torch.randn(b, T, N, generator=g), D=torch.randn(D, generator=g))


def _loop_states(x, dt, A, B, C, h0=None, g=None):
    h = torch.zeros(x.shape[0], x.shape[2], B.shape[-1]) if h0 is None else h0
    out = []
    for t in range(x.shape[1]):
        dec = g[:, t] if g is not None else dt[:, t, :, None] * A
        h = dec.exp() * h + (dt[:, t] * x[:, t])[..., None] * B[:, t, None, :]
        out.append(h)
    return torch.stack(out, 1)


@pytest.mark.parametrize("chunk", [None, 1, 5, 64])
def test_scan_paths_agree_with_step_loop(chunk):
    a = _inputs()
    h0 = torch.randn(2, 6, 5, generator=torch.Generator().manual_seed(9))
    S = _loop_states(a["x"], a["dt"], a["A"], a["B"], a["C"], h0)
    y_ref = (S * a["C"][:, :, None, :]).sum(-1) + a["x"] * a["D"]
    y0, f0 = mamba1.naive(**a, initial_state=h0, output_final_state=True)
    y1, f1 = mamba1.chunk_torch(**a, initial_state=h0, output_final_state=True, chunk=chunk)
    for y, f in ((y0, f0), (y1, f1)):
        torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(f, S[:, -1], atol=1e-5, rtol=1e-5)
    st = {k: v for k, v in a.items() if k != "D"}
    torch.testing.assert_close(mamba1.states(**st, initial_state=h0, chunk=chunk), S, atol=1e-5, rtol=1e-5)
    pos = [36, 0, 5, 6, 17]
    torch.testing.assert_close(mamba1.states(**st, initial_state=h0, positions=pos, chunk=chunk), S[:, pos],
                               atol=1e-5, rtol=1e-5)


def test_scan_explicit_decay_and_strong_decay():
    a = _inputs(T=23)
    g = -20 * torch.rand(2, 23, 6, 5, generator=torch.Generator().manual_seed(1))  # exp(-20 * T) underflows
    S = _loop_states(a["x"], a["dt"], a["A"], a["B"], a["C"], g=g)
    st = {k: v for k, v in a.items() if k != "D"}
    out = mamba1.states(**st, g=g, chunk=4)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, S, atol=1e-5, rtol=1e-5)
    # dt_decay: the decay's dt differs from the write's
    dd = a["dt"] * 3
    S2 = _loop_states(a["x"], a["dt"], a["A"], a["B"], a["C"], g=dd[..., None] * a["A"])
    torch.testing.assert_close(mamba1.states(**st, dt_decay=dd), S2, atol=1e-5, rtol=1e-5)


def test_scan_bad_input_names_the_shape():
    a = _inputs()
    a["B"] = a["B"][:, :, :3]
    with pytest.raises(ValueError, match=r"B has shape \[2, 37, 3\], expected \[2, 37, 5\]"):
        mamba1.scan(**a)
    with pytest.raises(ValueError, match="positions must lie in 0..36"):
        mamba1.states(**{k: v for k, v in _inputs().items() if k != "D"}, positions=[37])


# --- the adapter: capture is exact, hooks are removed ---------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_capture_everything_keeps_logits(models, kind):
    m = models[kind]
    hm = hooks.wrap(m)
    assert isinstance(hm.adapter, HFMamba1Adapter) and isinstance(find(m), HFMamba1Adapter)
    x = toks()
    with torch.no_grad():
        ref = logits(m, x)
        lg, cache = hm.run_with_cache(x, names=hm.hook_names)
    assert ref.abs().max() > 1
    torch.testing.assert_close(lg, ref, atol=0, rtol=0)  # the model's own scan ran, bit for bit
    assert set(cache) == set(hm.hook_names)
    no_hooks_left(m)


@pytest.mark.parametrize("kind", KINDS)
def test_hooks_removed_when_a_hook_raises(models, kind):
    m = models[kind]
    hm = hooks.wrap(m)

    def boom(t, n):
        raise RuntimeError("boom")
    r = rec_layers(hm)[-1]
    for name in (f"blocks.{r}.rec.state", f"blocks.{r}.rec.k", f"blocks.{r}.rec.readout", f"blocks.{r}.mixer_out",
                 "blocks.0.mlp_out", "blocks.1.resid_mid", "embed"):
        with pytest.raises(RuntimeError, match="boom"):
            hm.run_with_hooks(toks(), hooks=[(name, boom)])
        no_hooks_left(m)
    with torch.no_grad():
        torch.testing.assert_close(hm(toks()), logits(m, toks()), atol=0, rtol=0)


# --- states: the model's own final state and a step loop -------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_states_match_model_cache_and_step_loop(models, kind):
    m = models[kind]
    hm = hooks.wrap(m)
    x = toks(T=29)
    B, T = x.shape
    Dn = EXPAND * D_MODEL
    with torch.no_grad():
        hf_cache = cache_of(m(input_ids=x, use_cache=True))  # HF's own forward, its own final state
    for i in rec_layers(hm):
        p = f"blocks.{i}"
        names = [f"{p}.rec.{s}" for s in ("q", "k", "v", "decay", "beta", "state", "readout")]
        with torch.no_grad():
            _, c = hm.run_with_cache(x, names=names)
            _, cp = hm.run_with_cache(x, names=[f"{p}.rec.state"], positions=[0, 13, 28])
        S = c[f"{p}.rec.state"]
        assert S.shape == (B, T, Dn, N_STATE) and S.dtype == torch.float32
        torch.testing.assert_close(S[:, -1], hf_cache.get_recurrent_state(i, state_idx=0).float(), atol=1e-5, rtol=1e-4)
        q, k, v, g, b = (c[f"{p}.rec.{s}"] for s in ("q", "k", "v", "decay", "beta"))
        assert q.shape == k.shape == (B, T, N_STATE) and v.shape == b.shape == (B, T, Dn)
        rec = hm.layers[i].rec
        A = -torch.exp(rec.A_log.float())
        torch.testing.assert_close(g, b[..., None] * A)
        torch.testing.assert_close(S, _loop_states(v, b, A, k, q), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(cp[f"{p}.rec.state"], S[:, [0, 13, 28]], atol=1e-6, rtol=1e-5)
        o = (S * q[:, :, None, :]).sum(-1) + v * rec.D
        torch.testing.assert_close(c[f"{p}.rec.readout"], o, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["jamba", "mamba"])
def test_prefill_with_cache_under_hooks(models, kind):
    """A use_cache=True forward with rec hooks on: the final state goes to HF's cache, and decoding
    on from that cache gives the logits of the full sequence."""
    m = models[kind]
    hm = hooks.wrap(m)
    x = toks(T=12)
    i = rec_layers(hm)[0]
    cache = {}
    with torch.no_grad():
        with hm.hooks(cache_names=[f"blocks.{i}.rec.state"], cache=cache):
            out = m(input_ids=x[:, :-1], use_cache=True)
        own = cache_of(out).get_recurrent_state(i, state_idx=0).float().clone()  # decoding updates it in place
        step = m(input_ids=x[:, -1:], **with_cache(m, cache_of(out)), use_cache=True).logits
        full = logits(m, x)
    torch.testing.assert_close(cache[f"blocks.{i}.rec.state"][:, -1], own)
    torch.testing.assert_close(step[:, -1], full[:, -1], atol=1e-5, rtol=1e-4)
    no_hooks_left(m)


# --- interventions ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_state_patch_flows_through_the_recurrence(models, kind):
    m = models[kind]
    hm = hooks.wrap(m)
    a, b = toks(T=24, B=1, seed=1), toks(T=24, B=1, seed=2)
    i, t = rec_layers(hm)[0], 10
    p = f"blocks.{i}"
    name = f"{p}.rec.state"
    ins = [f"{p}.rec.{s}" for s in ("q", "k", "v", "beta", "decay")]
    with torch.no_grad():
        _, clean = hm.run_with_cache(a, names=[name])
        base, cb = hm.run_with_cache(b, names=ins + [f"{p}.rec.readout"])

        def put(S, n):
            S = S.clone()
            S[:, t] = clean[name][:, t]
            return S
        patched, after = hm.run_with_cache(b, names=[name, f"{p}.rec.readout"], hooks=[(name, put)])
    # (jamba's MoE routes a different token set per expert after t: float rounding of 1e-7 before t)
    torch.testing.assert_close(patched[:, :t], base[:, :t], atol=1e-5 if kind == "jamba" else 0, rtol=0)
    assert ((patched - base).abs().amax(-1)[0, t:] > 1e-4).all()
    # the layer's inputs are unchanged; from t on the states are the step loop from the patched S_t
    q, k, v, beta, g = (cb[n] for n in ins)
    ref = _loop_states(v[:, t + 1:], beta[:, t + 1:], None, k[:, t + 1:], q[:, t + 1:],
                       h0=clean[name][:, t], g=g[:, t + 1:])
    torch.testing.assert_close(after[name][:, t], clean[name][:, t])
    torch.testing.assert_close(after[name][:, t + 1:], ref, atol=1e-5, rtol=1e-4)
    D = hm.layers[i].rec.D
    ro = (after[name] * q[:, :, None, :]).sum(-1) + v * D
    torch.testing.assert_close(after[f"{p}.rec.readout"][:, t:], ro[:, t:], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(after[f"{p}.rec.readout"][:, :t], cb[f"{p}.rec.readout"][:, :t], atol=0, rtol=0)
    no_hooks_left(m)


@pytest.mark.parametrize("kind", ["jamba", "falcon_mamba"])
def test_changed_decay_equals_changed_A(models, kind):
    """rec.decay * 0.5 at one layer == the model whose A is halved there (A = -exp(A_log))."""
    m = models[kind]
    hm = hooks.wrap(m)
    i = rec_layers(hm)[0]
    x = toks()
    with torch.no_grad():
        out = hm.run_with_hooks(x, hooks=[(f"blocks.{i}.rec.decay", lambda g, n: g * 0.5)])
        rec = hm.layers[i].rec
        rec.A_log += math.log(0.5)
        try:
            ref = logits(m, x)
        finally:
            rec.A_log -= math.log(0.5)
        plain = logits(m, x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    assert (out - plain).abs().max() > 1e-3
    no_hooks_left(m)


def test_changed_write_keeps_the_decay(models):
    """rec.beta (dt of the write) changed, decay as it was: the states follow the step loop."""
    m = models["mamba"]
    hm = hooks.wrap(m)
    p = f"blocks.{rec_layers(hm)[1]}"
    names = [f"{p}.rec.{s}" for s in ("q", "k", "v", "decay", "beta", "state")]
    with torch.no_grad():
        _, c0 = hm.run_with_cache(toks(), names=names)
        _, c = hm.run_with_cache(toks(), names=[f"{p}.rec.state"], hooks=[(f"{p}.rec.beta", lambda b, n: 2 * b)])
    ref = _loop_states(c0[f"{p}.rec.v"], 2 * c0[f"{p}.rec.beta"], None, c0[f"{p}.rec.k"], c0[f"{p}.rec.q"],
                       g=c0[f"{p}.rec.decay"])
    torch.testing.assert_close(c[f"{p}.rec.state"], ref, atol=1e-5, rtol=1e-4)


def test_canonical_view_forms_decay_lazily():
    a = _inputs(T=5)
    c = R.canonical("mamba1", dict(a, initial_state=None))
    assert "decay" in c and "decay" not in dict(c)  # not formed until read
    torch.testing.assert_close(c["decay"], a["dt"][..., None] * a["A"])
    o, f = R.scan("mamba1", c)
    y, h = mamba1.naive(**a, output_final_state=True)
    torch.testing.assert_close(o, y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f, h, atol=1e-5, rtol=1e-5)


# --- attention, layer map, unsupported paths ------------------------------------------------------

def test_jamba_pattern_equals_eager_weights():
    m = make("jamba", attn_implementation="eager")
    hm = hooks.wrap(m)
    att = [L.index for L in hm.layers if L.attn is not None]
    assert att == [1, 3]
    x = toks()
    names = [f"blocks.{i}.attn.{s}" for i in att for s in ("pattern", "q", "k", "v", "head_out")]
    with torch.no_grad():
        out = m(input_ids=x, use_cache=False, output_attentions=True)  # installs HF's own recorders
        before = {id(mod): (dict(mod._forward_hooks), dict(mod._forward_pre_hooks)) for mod in m.modules()}
        lg, c = hm.run_with_cache(x, names=names)
        abl = hm.run_with_hooks(x, hooks=[(f"blocks.{att[0]}.attn.head_out", lambda o, n: torch.zeros_like(o))])
    torch.testing.assert_close(lg, out.logits, atol=0, rtol=0)
    weights = [w for w in out.attentions if w is not None]
    assert len(weights) == len(att)
    for i, w in zip(att, weights):
        torch.testing.assert_close(c[f"blocks.{i}.attn.pattern"], w, atol=1e-5, rtol=1e-4)
        assert c[f"blocks.{i}.attn.k"].shape == (2, x.shape[1], 2, 4)  # GQA: 2 kv heads
    assert (abl - lg).abs().max() > 1e-3
    assert before == {id(mod): (dict(mod._forward_hooks), dict(mod._forward_pre_hooks)) for mod in m.modules()}


def test_residual_bookkeeping_and_zero_mlp(models):
    m = models["mamba"]
    hm = hooks.wrap(m)
    names = [n for n in hm.hook_names if ".rec." not in n]
    with torch.no_grad():
        lg, c = hm.run_with_cache(toks(), names=names)
    for i in range(hm.n_layers):
        p = f"blocks.{i}"
        assert (c[f"{p}.mlp_out"] == 0).all()
        torch.testing.assert_close(c[f"{p}.resid_mid"], c[f"{p}.resid_pre"] + c[f"{p}.mixer_out"])
        torch.testing.assert_close(c[f"{p}.resid_post"], c[f"{p}.resid_mid"])
    torch.testing.assert_close(m.lm_head(m.backbone.norm_f(c[f"blocks.{hm.n_layers - 1}.resid_post"])), lg,
                               atol=1e-5, rtol=1e-5)


def test_layer_maps(models):
    kinds = {k: [(L.attn is not None, L.rec_family) for L in hooks.wrap(models[k]).layers] for k in KINDS}
    assert kinds["jamba"] == [(False, "mamba1"), (True, None)] * 2
    assert kinds["mamba"] == kinds["falcon_mamba"] == [(False, "mamba1")] * 3
    assert "blocks.0.rec.beta" in hooks.wrap(models["mamba"]).hook_names


def test_decoding_and_training_paths(models, monkeypatch):
    m = models["mamba"]
    hm = hooks.wrap(m)
    x = toks(T=8)
    name = f"blocks.{rec_layers(hm)[0]}.rec.state"
    every = [f"blocks.{i}.rec.state" for i in rec_layers(hm)]
    with torch.no_grad():   # one-token decoding under rec hooks: HF's step, the state the full run reaches
        step = lambda: m(input_ids=x[:, :1], **with_cache(m, cache_of(m(input_ids=x, use_cache=True))),  # noqa: E731
                         use_cache=True).logits
        own, cache = step(), {}
        with hm.hooks([(name, lambda S, n: None)], cache_names=[name], cache=cache):
            hooked = step()
        full = hm.run_with_cache(torch.cat([x, x[:, :1]], 1), names=[name])[1][name]
    torch.testing.assert_close(hooked, own, atol=1e-5, rtol=1e-4)
    assert cache[name].shape[1] == 1
    torch.testing.assert_close(cache[name][:, 0], full[:, -1], atol=1e-5, rtol=1e-5)
    no_hooks_left(m)

    # training mode: a fused mamba_inner_fn (as with mamba-ssm) is bypassed while rec hooks are on
    def fused(*a, **k):
        raise AssertionError("fused kernel called")
    monkeypatch.setattr(modeling(m), "mamba_inner_fn", fused)
    m.train()
    try:
        with torch.no_grad():
            lg, c = hm.run_with_cache(x, names=every)
            with pytest.raises(AssertionError, match="fused kernel"):
                logits(m, x)  # without hooks the model does call it
    finally:
        m.eval()
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(lg, logits(m, x), atol=0, rtol=0)
    assert c[name].shape[1] == 8
