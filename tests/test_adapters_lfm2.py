"""hooks on HF LFM2 hybrids (lfm2, lfm2_moe, lfm3: gated short convolutions + attention): capture is exact,
attention patterns vs eager weights, the short-conv window states vs a step loop and HF's conv cache, state
patches continue as a step loop from the edited window (and reach HF's cache), clean-up. Tiny random models,
CPU, float32."""
import pytest
import torch
from transformers import AutoConfig

import hf_tiny as H  # tests/hf_tiny.py, a sibling of this file
from hf_tiny import attn_layers, cache_of, logits, snapshot
import hooks
from hooks.adapters import hf_common
from hooks.adapters.hf_lfm2 import patch_shortconv
from hooks.cache import Cache
from hooks.scan import shortconv

V = 64
COMMON = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, pad_token_id=0, bos_token_id=None, eos_token_id=1, tie_word_embeddings=False)
CONFIGS = {
    "lfm2": ("lfm2", dict(layer_types=["conv", "full_attention", "conv", "full_attention"], conv_bias=True,
                          block_auto_adjust_ff_dim=False)),
    "lfm2_moe": ("lfm2_moe", dict(layer_types=["conv", "full_attention", "conv", "conv"], num_dense_layers=1,
                                  num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)),
    "lfm3": ("lfm3", dict(layer_types=["conv", "sliding_attention", "conv", "full_attention"], sliding_window=3,
                          head_dim=8)),
}
KINDS = list(CONFIGS)
T = 11


def make(kind, attn_implementation=None):
    mt, kw = CONFIGS[kind]
    m = H.from_config(AutoConfig.for_model(mt, **{**COMMON, **kw}), attn_implementation)
    with torch.no_grad():  # random init leaves the sandwich norms at 1 and the biases at 0: make them count
        for name, p in m.named_parameters():
            if name.endswith(("conv.bias", "post_operator_norm.weight")):
                p.add_(torch.randn_like(p) * 0.5)
    return m


model = H.cached(make)


def toks(B=2, seed=0, n=T):
    return H.toks(V, B, seed, n)


conv_layers = H.rec_layers  # the short-conv layers are the recurrent ones


def taps(layer):
    """(w [D, L], bias [D], zeros without one) of a short-conv layer's depthwise conv."""
    w = layer.conv.weight[:, 0].detach()
    return w, (layer.conv.bias.detach() if layer.conv.bias is not None else torch.zeros(w.shape[0]))


def step_loop(layer, B, C, x, S=None):
    """The gated short conv written out token by token from the layer's conv weights: the window S [B, D, L]
    of the last L writes B*x (oldest first), y_t = C_t * (sum_j w[:, j] S[:, j] + bias). Returns (readouts
    [B, T, D], windows [B, T, D, L])."""
    w, b = taps(layer)
    S = torch.zeros(B.shape[0], w.shape[0], w.shape[1]) if S is None else S.clone()
    ys, Ss = [], []
    for t in range(B.shape[1]):
        S = torch.cat([S[..., 1:], (B[:, t] * x[:, t])[..., None]], -1)
        ys.append(C[:, t] * ((S * w).sum(-1) + b))
        Ss.append(S)
    return torch.stack(ys, 1), torch.stack(Ss, 1)


# --- capture is exact, every name works, everything is removed ---------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_capture_everything_keeps_logits(kind):
    m = model(kind)
    hm = hooks.wrap(m)
    assert hm.adapter.family == "hf_lfm2"
    assert [L.rec_family for L in hm.layers if L.rec is not None] == ["shortconv"] * len(conv_layers(hm))
    c, _ = H.assert_capture_everything_keeps_logits(hm, toks())
    i = conv_layers(hm)[0]
    L = m.config.conv_L_cache
    assert c[f"blocks.{i}.rec.state"].shape == (2, T, 32, L) and c[f"blocks.{i}.rec.state"].dtype == torch.float32
    assert c[f"blocks.{i}.rec.pattern"].shape == (2, 32, T, T)


@pytest.mark.parametrize("kind", KINDS)
def test_identity_hooks_keep_logits(kind):
    m = model(kind)
    x = toks()
    H.assert_identity_hooks_keep_logits(hooks.wrap(m), x, logits(m, x))


@pytest.mark.parametrize("kind", KINDS)
def test_residual_bookkeeping_and_final_norm(kind):
    m = model(kind)
    hm = hooks.wrap(m)
    assert hm.adapter.final_norm(m) is m.model.embedding_norm
    _, c = H.assert_residual_bookkeeping(hm, toks(), m.model.embedding_norm)
    for i in conv_layers(hm):  # mixer_out is out_proj(readout) (lfm3: then its post-operator norm)
        blk = m.model.layers[i]
        with torch.no_grad():
            y = blk.conv.out_proj(c[f"blocks.{i}.rec.readout"])
            y = blk.post_operator_norm(y) if hasattr(blk, "post_operator_norm") else y
        assert torch.equal(y, c[f"blocks.{i}.mixer_out"])


# --- attention ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_pattern_equals_eager_weights(kind):
    # (lfm3: the sliding layer really is windowed)
    H.assert_patterns_equal_eager(make, kind, model(kind), toks(), [0, 5, T - 1], 3 if kind == "lfm3" else None)


@pytest.mark.parametrize("kind", ["lfm2", "lfm3"])
def test_attention_head_results_sum_to_mixer_out(kind):
    """Per-head results through out_proj / o_proj (lfm3: after its sigmoid gate, recorded) and the post-norm
    add up to mixer_out; short-conv layers have no heads and say so."""
    m = model(kind)
    hm = hooks.wrap(m)
    a, r = attn_layers(hm)[-1], conv_layers(hm)[0]
    with torch.no_grad():
        _, c = hm.run_with_cache(toks(), names=hm.hook_names, heads=True)
        res = c.head_results(a, "attn")
    assert res.shape == (2, T, 4, 32)
    torch.testing.assert_close(res.sum(2), c[f"blocks.{a}.mixer_out"], atol=1e-5, rtol=0)
    with pytest.raises(NotImplementedError, match="no heads"):
        c.head_results(r, "rec")


# --- short-conv states ---------------------------------------------------------------------------------------

def _scan_names(i):
    return [f"blocks.{i}.rec.{s}" for s in ("q", "k", "v", "state", "readout", "pattern")]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [T, 2])  # 2 < L: HF pads its conv cache with zeros
def test_conv_states_match_step_loop_and_cache(kind, n):
    m = model(kind)
    hm = hooks.wrap(m)
    x = toks(n=n)
    idx = conv_layers(hm)
    with torch.no_grad():
        _, c = hm.run_with_cache(x, names=[nm for i in idx for nm in _scan_names(i)])
        _, cp = hm.run_with_cache(x, names=[f"blocks.{i}.rec.state" for i in idx], positions=[0, n - 1])
        hf = cache_of(m(input_ids=x, use_cache=True))
    for i in idx:
        p, conv = f"blocks.{i}.rec", m.model.layers[i].conv
        C, B, xx, S, y = (c[f"{p}.{s}"] for s in ("q", "k", "v", "state", "readout"))
        with torch.no_grad():
            y_ref, S_ref = step_loop(conv, B, C, xx)
        torch.testing.assert_close(S, S_ref, atol=0, rtol=0)             # copies of B*x: exact
        torch.testing.assert_close(y, y_ref, atol=1e-6, rtol=1e-5)
        assert torch.equal(S[:, -1], hf.get_conv_state(i))               # HF's conv cache, bit for bit
        assert torch.equal(cp[f"{p}.state"], S[:, [0, n - 1]])
        # the effective attention rebuilds the readout: sum_s A[d, t, s] x_s[d] + C_t[d] bias[d]
        A = c[f"{p}.pattern"]
        torch.testing.assert_close(torch.einsum("bdts,bsd->btd", A, xx) + C * taps(conv)[1], y, atol=1e-6, rtol=1e-5)
        lag = torch.arange(n)[:, None] - torch.arange(n)[None, :]          # t - s: A is banded, 0 <= t-s < L
        assert A[..., (lag < 0) | (lag >= m.config.conv_L_cache)].abs().max() == 0


@pytest.mark.parametrize("kind", ["lfm2", "lfm3"])
def test_decode_step_states_and_cache(kind):
    """One-token decoding with a cache: the hooks see HF's window as the initial state; the new window equals
    HF's cache after the step and the full-sequence state."""
    m = model(kind)
    hm = hooks.wrap(m)
    i = conv_layers(hm)[-1]
    x = toks(n=T + 1)
    kw = hf_common.cache_kw(m.forward, "past_key_values")
    with torch.no_grad():
        pkv = cache_of(m(input_ids=x[:, :T], use_cache=True))
        cache = Cache()
        with hm.hooks(cache_names=[f"blocks.{i}.rec.state", f"blocks.{i}.rec.readout"], cache=cache):
            out = m(input_ids=x[:, T:], **{kw: pkv}, use_cache=True)
        _, full = hm.run_with_cache(x, names=[f"blocks.{i}.rec.state", f"blocks.{i}.rec.readout"])
        ref = logits(m, x)
    assert cache[f"blocks.{i}.rec.state"].shape[1] == 1
    assert torch.equal(cache[f"blocks.{i}.rec.state"][:, 0], cache_of(out).get_conv_state(i))
    # (the layers before it decode from a cache: their outputs, so this layer's inputs, agree to float error)
    torch.testing.assert_close(cache[f"blocks.{i}.rec.state"][:, 0], full[f"blocks.{i}.rec.state"][:, T],
                               atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(cache[f"blocks.{i}.rec.readout"][:, 0], full[f"blocks.{i}.rec.readout"][:, T],
                               atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.logits[:, -1], ref[:, -1], atol=1e-5, rtol=1e-5)


# --- interventions ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_state_patch_continues_as_step_loop(kind):
    """Patching the window at t: this layer's readouts at t.. follow a step loop continued from the edited
    window (and are the clean ones again from t + L on); logits before t are untouched; cached states are
    the ones the patched run went through."""
    m = model(kind)
    hm = hooks.wrap(m)
    x, other_x = toks(seed=0), toks(seed=1)
    i = conv_layers(hm)[0]
    p, conv, L = f"blocks.{i}.rec", m.model.layers[i].conv, m.config.conv_L_cache
    t = 4
    with torch.no_grad():
        ref = logits(m, x)
        _, clean = hm.run_with_cache(x, names=_scan_names(i))
        other = hm.run_with_cache(other_x, names=[f"{p}.state"])[1][f"{p}.state"]
        out, c = hm.run_with_cache(x, names=[f"{p}.state", f"{p}.readout"],
                                   hooks=[(f"{p}.state", H.put_state(other, t))])
        C, B, xx = (clean[f"{p}.{s}"] for s in ("q", "k", "v"))
        w, b = taps(conv)
        y_t = C[:, t] * ((other[:, t] * w).sum(-1) + b)
        y_after, S_after = step_loop(conv, B[:, t + 1:], C[:, t + 1:], xx[:, t + 1:], S=other[:, t])
    y = c[f"{p}.readout"]
    assert torch.equal(out[:, :t], ref[:, :t])
    assert torch.equal(y[:, :t], clean[f"{p}.readout"][:, :t])
    torch.testing.assert_close(y[:, t], y_t, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(y[:, t + 1:], y_after, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(y[:, t + L:], clean[f"{p}.readout"][:, t + L:], atol=1e-6, rtol=1e-5)
    assert (y[:, t:t + L] - clean[f"{p}.readout"][:, t:t + L]).abs().amax(-1).min() > 1e-6
    torch.testing.assert_close(c[f"{p}.state"][:, t + 1:], S_after, atol=0, rtol=0)
    assert torch.equal(c[f"{p}.state"][:, t], other[:, t])
    assert (out[:, t:] - ref[:, t:]).abs().amax(-1).min() > 1e-6


def test_state_patch_in_one_row_leaves_the_other():
    m = model("lfm2")
    hm = hooks.wrap(m)
    x, i, t = toks(), conv_layers(hm)[0], 5
    name = f"blocks.{i}.rec.state"
    ref = logits(m, x)

    def patch(S, n):
        S = S.clone()
        S[0, t] = 0
        return S
    with torch.no_grad():
        out = hm.run_with_hooks(x, hooks=[(name, patch)])
    assert torch.equal(out[:, :t], ref[:, :t])
    torch.testing.assert_close(out[1], ref[1], atol=1e-5, rtol=1e-5)
    assert (out[0, t:] - ref[0, t:]).abs().amax(-1).min() > 1e-6


@pytest.mark.parametrize("kind", ["lfm2", "lfm3"])
def test_state_patch_reaches_the_cache(kind):
    """A window patched during a prefill with use_cache=True is written to HF's conv cache; decoding from that
    cache continues as the full-sequence run with the same patch."""
    m = model(kind)
    hm = hooks.wrap(m)
    x = toks(n=T + 1)
    i = conv_layers(hm)[0]
    name = f"blocks.{i}.rec.state"
    kw = hf_common.cache_kw(m.forward, "past_key_values")
    new = torch.randn(2, 32, m.config.conv_L_cache, generator=torch.Generator().manual_seed(3))

    def patch(S, n):
        S = S.clone()
        S[:, T - 1] = new
        return S
    with torch.no_grad():
        full = hm.run_with_hooks(x, hooks=[(name, patch)])
        with hm.hooks(hooks=[(name, patch)]):
            pkv = cache_of(m(input_ids=x[:, :T], use_cache=True))
        assert torch.equal(pkv.get_conv_state(i), new)
        step = m(input_ids=x[:, T:], **{kw: pkv}, use_cache=True).logits
    torch.testing.assert_close(step[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)
    assert (full[:, -1] - logits(m, x)[:, -1]).abs().max() > 1e-4


@pytest.mark.parametrize("kind", ["lfm2", "lfm3"])
def test_changing_scan_inputs_reruns_the_conv(kind):
    """A new (equal) rec.v runs the reference conv: same logits to float error; doubling rec.k doubles every
    write, and the readout follows the step loop on the changed gate."""
    m = model(kind)
    hm = hooks.wrap(m)
    x = toks()
    ref = logits(m, x)
    i = conv_layers(hm)[0]
    p, conv = f"blocks.{i}.rec", m.model.layers[i].conv
    with torch.no_grad():
        same = hm.run_with_hooks(x, hooks=[(f"{p}.v", lambda v, n: v.clone())])
        diff, c = hm.run_with_cache(x, names=_scan_names(i), hooks=[(f"{p}.k", lambda k, n: 2 * k)])
        y_ref, S_ref = step_loop(conv, c[f"{p}.k"], c[f"{p}.q"], c[f"{p}.v"])
    torch.testing.assert_close(same, ref, atol=1e-5, rtol=1e-5)
    assert (diff - ref).abs().max() > 1e-4
    torch.testing.assert_close(c[f"{p}.readout"], y_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(c[f"{p}.state"], S_ref, atol=0, rtol=0)


# --- clean-up and errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_hook_that_raises_leaves_nothing_behind(kind):
    m = model(kind)
    hm = hooks.wrap(m)
    a, r = attn_layers(hm)[0], conv_layers(hm)[0]
    names = [f"blocks.{r}.rec.q", f"blocks.{r}.rec.state", f"blocks.{r}.rec.readout", f"blocks.{r}.rec.pattern",
             f"blocks.{a}.attn.pattern", f"blocks.{r}.mixer_out", "embed"]
    # (then a failure inside the model while every hook is on)
    H.assert_raising_hooks_leave_nothing(hm, toks(), logits(m, toks()), names, snapshot(m), every_name=True)


def test_shortconv_wrappers_nest_and_are_removed():
    """Two wrappers on one conv run outermost first; the inner one sees what the outer passes on (a changed
    input runs the reference conv); the forward is the class's again after both exit."""
    m = model("lfm2")
    x = toks()
    ref = logits(m, x)
    conv = m.model.layers[0].conv
    seen = []

    def w(tag, scale=None):
        def wrapper(kw, call):
            seen.append(tag)
            if scale is not None:
                kw = {**kw, "x": kw["x"] * scale}
            return call(**kw)
        return wrapper
    with torch.no_grad():
        with patch_shortconv(conv, w("outer")), patch_shortconv(conv, w("inner")):
            assert torch.equal(logits(m, x), ref)
        assert seen == ["outer", "inner"] and "forward" not in vars(conv)
        with patch_shortconv(conv, w("outer", 2.0)), patch_shortconv(conv, w("inner")):
            doubled = logits(m, x)
        c = {}
        with hooks.wrap(m).hooks(hooks=[("blocks.0.rec.v", lambda v, n: 2 * v)]):
            c["via_hook"] = logits(m, x)
    torch.testing.assert_close(doubled, c["via_hook"], atol=1e-6, rtol=1e-5)
    assert (doubled - ref).abs().max() > 1e-4
    assert "forward" not in vars(conv)


def test_scan_module_paths_agree():
    """hooks.scan.shortconv: naive step loop, windowed scan, states at positions, from an initial window."""
    g = torch.Generator().manual_seed(0)
    b, n, D, L = 2, 9, 5, 4
    x, B, C = (torch.randn(b, n, D, generator=g) for _ in range(3))
    w, bias, S0 = torch.randn(D, L, generator=g), torch.randn(D, generator=g), torch.randn(b, D, L, generator=g)
    y0, f0 = shortconv.naive(x, B, C, w, bias, S0, output_final_state=True)
    y1, f1 = shortconv.scan(x, B, C, w, bias, S0, output_final_state=True)
    S = shortconv.states(x, B, C, w, bias, S0)
    torch.testing.assert_close(y1, y0, atol=1e-6, rtol=1e-5)
    assert torch.equal(f1, f0) and torch.equal(S[:, -1], f0)
    assert torch.equal(S[:, 0, :, :L - 1], S0[..., 1:]) and torch.equal(S[:, 0, :, -1], B[:, 0] * x[:, 0])
    assert torch.equal(shortconv.states(x, B, C, w, bias, S0, positions=[1, 7]), S[:, [1, 7]])
    with pytest.raises(ValueError, match="expected"):
        shortconv.scan(x, B, C, w[:, None], bias)


def test_padding_mask_capture_matches_the_cache():
    """With a left-padded batch (HF zeroes padded inputs of the conv layers) capture keeps the logits and the
    last windows are HF's conv cache."""
    m = model("lfm2")
    hm = hooks.wrap(m)
    x = toks()
    mask = torch.ones(2, T, dtype=torch.long)
    mask[0, :3] = 0
    names = [f"blocks.{i}.rec.state" for i in conv_layers(hm)]
    c = Cache()
    with torch.no_grad():
        plain = m(input_ids=x, attention_mask=mask, use_cache=True)
        with hm.hooks(cache_names=names, cache=c):
            hooked = m(input_ids=x, attention_mask=mask, use_cache=False)
    assert torch.equal(hooked.logits, plain.logits)
    for i, name in zip(conv_layers(hm), names):
        assert torch.equal(c[name][:, -1], cache_of(plain).get_conv_state(i))
