"""hooks on HF RWKV-4 (``rwkv``): capture is exact, every name works, the WKV states (num, den) vs a float64 step
loop and HF's returned state, the effective attention rebuilds the readout, state patches continue as a step loop
from the edited state (and reach HF's state), decoding from HF's state under hooks, residual bookkeeping (block 0's
pre_ln, the rescaling halvings), clean-up after every exit. Tiny random models, CPU, float32."""
import pytest
import torch
from transformers import AutoModelForCausalLM, RwkvConfig
from transformers.models.rwkv.modeling_rwkv import rwkv_linear_attention_cpu

import hf_tiny as H  # tests/hf_tiny.py, a sibling of this file
from hf_tiny import assert_clean, logits, snapshot
import hooks
from hooks.cache import Cache
from hooks.names import HookNameError
from hooks.scan import wkv

V, D, NL, T = 64, 32, 3, 9
CONFIGS = {"plain": dict(rescale_every=0), "rescaled": dict(rescale_every=2)}  # rescaled: halving after block 1
KINDS = list(CONFIGS)


def make(kind):
    torch.manual_seed(0)
    cfg = RwkvConfig(vocab_size=V, hidden_size=D, attention_hidden_size=D, intermediate_size=48, num_hidden_layers=NL,
                     context_length=64, **CONFIGS[kind])
    m = AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():  # HF's init sets time_first to ones and a tiny embedding: make every parameter count
        for name, p in m.named_parameters():
            if name.endswith(("time_decay", "time_first")):
                p.copy_(torch.randn_like(p))
            elif "time_mix" in name:
                p.copy_(torch.rand_like(p))
            elif name.endswith("embeddings.weight"):
                p.copy_(torch.randn_like(p))
            elif name.endswith(("key.weight", "value.weight", "receptance.weight", "output.weight")):
                p.mul_(2.0)
    return m


model = H.cached(make)


def toks(B=2, seed=0, n=T):
    return H.toks(V, B, seed, n)


def rec_names(i, sites=("q", "k", "v", "decay", "state", "readout")):
    return [f"blocks.{i}.rec.{s}" for s in sites]


def step_loop(k, v, w, u, S0=None):
    """WKV written out token by token in float64, without the running max: wkv_t = (num_{t-1} + e^{u+k_t} v_t) /
    (den_{t-1} + e^{u+k_t}); num_t = e^{w_t} num_{t-1} + e^{k_t} v_t, den_t likewise with 1 for v. k, v, w
    [B, T, D], u [D], S0 [B, D, 2] (num, den). Returns (wkv [B, T, D], states [B, T, D, 2])."""
    k, v, w, u = (t.double() for t in (k, v, w, u))
    num = torch.zeros_like(k[:, 0]) if S0 is None else S0[..., 0].double()
    den = torch.zeros_like(k[:, 0]) if S0 is None else S0[..., 1].double()
    outs, states = [], []
    for t in range(k.shape[1]):
        b = torch.exp(u + k[:, t])
        outs.append((num + b * v[:, t]) / (den + b))
        a, e = torch.exp(w[:, t]), torch.exp(k[:, t])
        num, den = a * num + e * v[:, t], a * den + e
        states.append(torch.stack([num, den], -1))
    return torch.stack(outs, 1), torch.stack(states, 1)


def hf_pair(state, i):
    """HF's returned WKV state of layer i, (num', den', max) -> (num, den) [B, D, 2]."""
    return wkv.pair(state[2][:, :, i], state[3][:, :, i], state[4][:, :, i])


# --- capture is exact, every name works, everything is removed ---------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_capture_everything_keeps_logits(kind):
    m = model(kind)
    hm = hooks.wrap(m)
    assert hm.adapter.family == "hf_rwkv" and [L.rec_family for L in hm.layers] == ["wkv"] * NL
    assert not any(".attn." in n or n.endswith(".rec.beta") for n in hm.hook_names)
    c, _ = H.assert_capture_everything_keeps_logits(hm, toks())
    for i in range(NL):
        p = f"blocks.{i}.rec"
        assert c[f"{p}.state"].shape == (2, T, D, 2) and c[f"{p}.state"].dtype == torch.float32
        assert c[f"{p}.pattern"].shape == (2, D, T, T)
        for s in ("q", "k", "v", "decay", "readout"):
            assert c[f"{p}.{s}"].shape == (2, T, D)
        assert torch.equal(c[f"{p}.decay"], (-m.rwkv.blocks[i].attention.time_decay.exp()).expand(2, T, D))


@pytest.mark.parametrize("kind", KINDS)
def test_identity_hooks_keep_logits(kind):
    m = model(kind)
    x = toks()
    H.assert_identity_hooks_keep_logits(hooks.wrap(m), x, logits(m, x))


def test_every_name_changes_the_output_when_hooked():
    """A hook that changes the activation changes the logits at every name (so every hook point is live);
    rec.pattern is read-only and says so."""
    m = model("plain")
    hm = hooks.wrap(m)
    x = toks()
    snap = snapshot(m)
    ref = logits(m, x)
    with torch.no_grad():
        for n in hm.hook_names:
            if n.endswith("rec.pattern"):
                with pytest.raises(NotImplementedError, match="cannot|can be cached"):
                    hm.run_with_hooks(x, hooks=[(n, lambda t, name: t * 0.5)])
                continue
            out = hm.run_with_hooks(x, hooks=[(n, lambda t, name: 0.5 * t + 0.25 * t.roll(1, -1))])
            assert not torch.allclose(out, ref, atol=1e-4), n
    assert_clean(m, snap)


@pytest.mark.parametrize("kind", KINDS)
def test_residual_bookkeeping_and_final_norm(kind):
    """resid_pre of block 0 is pre_ln(embed); resid_mid = pre + mixer_out, resid_post = mid + mlp_out;
    mixer_out = output(readout); the stream is halved between blocks at the rescale points (module docstring of
    hooks.adapters.hf_rwkv); the logits are head(ln_out(last resid_post, halved there))."""
    m = model(kind)
    hm = hooks.wrap(m)
    every = m.config.rescale_every
    half = lambda i: every > 0 and (i + 1) % every == 0  # noqa: E731
    with torch.no_grad():
        out, c = hm.run_with_cache(toks(), names=hm.hook_names)
        assert torch.equal(c["blocks.0.resid_pre"], m.rwkv.blocks[0].pre_ln(c["embed"]))
        for i in range(NL):
            p, blk = f"blocks.{i}", m.rwkv.blocks[i]
            if i:
                prev = c[f"blocks.{i - 1}.resid_post"]
                assert torch.equal(c[f"{p}.resid_pre"], prev / 2 if half(i - 1) else prev)
            assert torch.equal(c[f"{p}.resid_mid"], c[f"{p}.resid_pre"] + c[f"{p}.mixer_out"])
            assert torch.equal(c[f"{p}.resid_post"], c[f"{p}.resid_mid"] + c[f"{p}.mlp_out"])
            assert torch.equal(blk.attention.output(c[f"{p}.rec.readout"]), c[f"{p}.mixer_out"])
        last = c[f"blocks.{NL - 1}.resid_post"]
        assert hm.adapter.final_norm(m) is m.rwkv.ln_out
        torch.testing.assert_close(m.head(m.rwkv.ln_out(last / 2 if half(NL - 1) else last)), out, atol=1e-5, rtol=0)
    if kind == "rescaled":
        assert half(1) and not half(0)
    with pytest.raises(NotImplementedError, match="no heads"):
        hm.adapter.head_projection(m, hm.layers[0], "rec")


def test_block_outputs_and_start_at():
    """Block 0 seen through its pre_ln (a stand-in module): block_outputs / start_at still reach the real block."""
    m = model("plain")
    hm = hooks.wrap(m)
    x = toks()
    snap = snapshot(m)
    ref = logits(m, x)
    outs = hm.block_outputs(x)
    with hm.start_at(2, outs[1]), torch.no_grad():
        out = hm(x)
    assert torch.equal(out, ref)
    assert_clean(m, snap)


# --- the WKV states, readout and effective attention ---------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_states_match_step_loop_and_hf_state(kind):
    m = model(kind)
    hm = hooks.wrap(m)
    x = toks()
    names = [n for i in range(NL) for n in rec_names(i) + [f"blocks.{i}.resid_pre"]]
    with torch.no_grad():
        _, c = hm.run_with_cache(x, names=names)
        _, cp = hm.run_with_cache(x, names=[f"blocks.{i}.rec.state" for i in range(NL)], positions=[0, 4, T - 1])
        hf = m(input_ids=x, use_cache=True)
    for i in range(NL):
        p, att = f"blocks.{i}.rec", m.rwkv.blocks[i].attention
        q, k, v, w, S, y = (c[f"{p}.{s}"] for s in ("q", "k", "v", "decay", "state", "readout"))
        out, states = step_loop(k, v, w, att.time_first.detach())
        torch.testing.assert_close(S.double(), states, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(y.double(), q.double() * out, rtol=1e-5, atol=1e-6)
        with torch.no_grad():  # q, k, v: HF's token shift mix of ln1(resid_pre), then receptance / key / value
            h = m.rwkv.blocks[i].ln1(c[f"blocks.{i}.resid_pre"])
            sh = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], 1)
            mix = lambda tm: h * tm + sh * (1 - tm)  # noqa: E731
            assert torch.equal(q, torch.sigmoid(att.receptance(mix(att.time_mix_receptance))))
            assert torch.equal(k, att.key(mix(att.time_mix_key)))
            assert torch.equal(v, att.value(mix(att.time_mix_value)))
        assert torch.equal(cp[f"{p}.state"], S[:, [0, 4, T - 1]])
        assert torch.equal(S[:, -1], hf_pair(hf.state, i))   # HF's own state after the prompt, bit for bit
        assert S[..., 1].min() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_pattern_rebuilds_readout(kind):
    """rec.pattern: readout_t = sum_s A[d, t, s] v_s[d]; each row sums to q_t[d] (a normalised attention gated by
    q); positions= keeps those rows."""
    m = model(kind)
    hm = hooks.wrap(m)
    x = toks()
    with torch.no_grad():
        _, c = hm.run_with_cache(x, names=rec_names(1, ("q", "v", "readout", "pattern")))
        _, cp = hm.run_with_cache(x, names=["blocks.1.rec.pattern"], positions=[2, T - 1])
    A, q, v, y = (c[f"blocks.1.rec.{s}"] for s in ("pattern", "q", "v", "readout"))
    torch.testing.assert_close(torch.einsum("bdts,bsd->btd", A, v), y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(A.sum(-1), q.transpose(1, 2), atol=1e-6, rtol=1e-5)
    assert A[:, :, 3, 4:].abs().max() == 0 and A.min() >= 0
    torch.testing.assert_close(cp["blocks.1.rec.pattern"], A[:, :, [2, T - 1]], atol=1e-7, rtol=0)


def test_scan_module_against_hf_and_float64():
    """hooks.scan.wkv on its own: HF's CPU function bit for bit (also from HF's state triple), a pair initial state
    and a per-token decay as the float64 loop, the pattern with an initial state rebuilds the readout."""
    g = torch.Generator().manual_seed(1)
    B, n, d = 2, 7, 5
    k, v = torch.randn(B, n, d, generator=g) * 3, torch.randn(B, n, d, generator=g)
    td, tf, r = torch.randn(d, generator=g), torch.randn(d, generator=g), torch.rand(B, n, d, generator=g)
    w = -td.exp()
    o_hf, st = rwkv_linear_attention_cpu(td, tf, k, v, return_state=True)
    o, fin = wkv.scan(k, v, w, tf, output_final_state=True)
    assert torch.equal(o, o_hf) and torch.equal(fin, wkv.pair(*st))
    o2_hf, st2 = rwkv_linear_attention_cpu(td, tf, k, v, state=list(st))
    o2, fin2 = wkv.scan(k, v, w, tf, initial_state=torch.stack(st, -1), output_final_state=True)
    assert torch.equal(o2, o2_hf) and torch.equal(fin2, wkv.pair(*st2))
    S0 = torch.stack([torch.randn(B, d, generator=g), torch.rand(B, d, generator=g) + 0.5], -1)
    wt = w + 0.3 * torch.randn(B, n, d, generator=g)
    ref_o, ref_S = step_loop(k, v, wt, tf, S0)
    o3, fin3 = wkv.scan(k, v, wt, tf, r=r, initial_state=S0, output_final_state=True)
    torch.testing.assert_close(o3.double(), r.double() * ref_o, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(wkv.states(k, v, wt, tf, initial_state=S0).double(), ref_S, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fin3.double(), ref_S[:, -1], rtol=1e-5, atol=1e-5)
    A = wkv.pattern(k, wt, tf, r=r, initial_state=S0)
    lead = torch.cat([torch.zeros(B, 1, d, dtype=torch.float64), wt[:, :-1].double().cumsum(1)], 1)  # sum_{r<t} w_r
    den_before = torch.cat([S0[None, ..., 1].transpose(0, 1).double(), ref_S[:, :-1, :, 1]], 1)      # den_{t-1}
    init = r.double() * S0[..., 0].double()[:, None] * lead.exp() / (den_before + (tf + k).double().exp())
    rebuilt = torch.einsum("bdts,bsd->btd", A.double(), v.double()) + init
    torch.testing.assert_close(rebuilt, o3.double(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="initial_state has shape"):
        wkv.scan(k, v, w, tf, initial_state=torch.zeros(B, d, 4))


# --- state patching and decoding --------------------------------------------------------------------------------

def test_state_patch_continues_the_recurrence():
    """S_t of row 0 at layer 1 replaced (t = 4): this layer's readouts change from t + 1 on, exactly as the step loop
    continued from the edited state; row 1 and the readouts up to t keep theirs; the patched run's states are cached;
    the final state reaches HF's state with use_cache=True."""
    m = model("plain")
    hm = hooks.wrap(m)
    x = toks()
    t0, i = 4, 1
    with torch.no_grad():
        _, c = hm.run_with_cache(x, names=rec_names(i))
    S = c[f"blocks.{i}.rec.state"]
    edit = torch.stack([S[0, t0, :, 0] * -2.0 + 0.5, S[0, t0, :, 1] * 3.0], -1)

    def patch(s, name):
        s = s.clone()
        s[0, t0] = edit
        return s
    with torch.no_grad():
        _, cp = hm.run_with_cache(x, names=rec_names(i), hooks=[(f"blocks.{i}.rec.state", patch)])
        with hm.hooks([(f"blocks.{i}.rec.state", patch)]):
            hf = m(input_ids=x, use_cache=True)
    q, k, v, w = (c[f"blocks.{i}.rec.{s}"] for s in ("q", "k", "v", "decay"))
    for s in ("q", "k", "v", "decay"):   # this layer's inputs come before its state
        assert torch.equal(cp[f"blocks.{i}.rec.{s}"], c[f"blocks.{i}.rec.{s}"])
    u = m.rwkv.blocks[i].attention.time_first.detach()
    out, states = step_loop(k[:1, t0 + 1:], v[:1, t0 + 1:], w[:1, t0 + 1:], u, edit[None])
    y, y0 = cp[f"blocks.{i}.rec.readout"], c[f"blocks.{i}.rec.readout"]
    assert torch.equal(y[:, :t0 + 1], y0[:, :t0 + 1])
    torch.testing.assert_close(y[1], y0[1], atol=1e-6, rtol=1e-6)  # re-run from its own state: float rounding only
    torch.testing.assert_close(y[:1, t0 + 1:].double(), q[:1, t0 + 1:].double() * out, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(y[0, t0 + 1:], y0[0, t0 + 1:], atol=1e-3)
    Sp = cp[f"blocks.{i}.rec.state"]
    assert torch.equal(Sp[0, t0], edit) and torch.equal(Sp[:, :t0], S[:, :t0])
    torch.testing.assert_close(Sp[1], S[1], atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(Sp[:1, t0 + 1:].double(), states, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hf_pair(hf.state, i)[0].double(), states[0, -1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hf_pair(hf.state, i)[1], S[1, -1], atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("B,new", [(1, 1), (2, 2)])
def test_decode_from_hf_state_under_hooks(B, new):
    """Prefill with use_cache=True, then ``new`` tokens from HF's state with hooks on: the captured states / readouts
    are the full run's at those positions, the logits the full run's; a prefill under capture gives HF's state bit
    for bit; with a hook that changes rec.k (our scan from HF's state triple, the state written back) decoding equals
    the full run under the same hook. (B = 1 for one token: HF's one-token step mixes the batch rows for B > 1 in
    transformers 5.25, its token shift state is not broadcast per row; the two-token path has no such problem.)"""
    m = model("plain")
    hm = hooks.wrap(m)
    x = toks(B=B, n=T + 1)
    P = T + 1 - new                                  # the prefill length
    i = NL - 1
    names = [f"blocks.{i}.rec.state", f"blocks.{i}.rec.readout"]
    bump = [(f"blocks.{j}.rec.k", lambda t, name: t * 1.5) for j in range(NL)]
    snap = snapshot(m)
    with torch.no_grad():
        pre = m(input_ids=x[:, :P], use_cache=True)
        with hm.hooks(cache_names=hm.hook_names, cache=Cache()):
            pre_hooked = m(input_ids=x[:, :P], use_cache=True)
        cache = Cache()
        with hm.hooks(cache_names=names, cache=cache):
            out = m(input_ids=x[:, P:], state=[s.clone() for s in pre.state], use_cache=True)
        ref, full = hm.run_with_cache(x, names=names)
        with hm.hooks(bump):
            st = m(input_ids=x[:, :P], use_cache=True).state
            out_b = m(input_ids=x[:, P:], state=st, use_cache=True)
        ref_b = hm.run_with_hooks(x, hooks=bump)
    for a, b in zip(pre_hooked.state, pre.state):
        assert torch.equal(a, b)
    assert cache[names[0]].shape == (B, new, D, 2)
    torch.testing.assert_close(cache[names[0]], full[names[0]][:, P:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache[names[1]], full[names[1]][:, P:], atol=1e-6, rtol=1e-5)
    assert torch.equal(cache[names[0]][:, -1], hf_pair(out.state, i))
    torch.testing.assert_close(out.logits[:, -1], ref[:, -1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_b.logits[:, -1], ref_b[:, -1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out_b.logits[:, -1], ref[:, -1], atol=1e-3)
    assert_clean(m, snap)


def test_nested_sessions():
    """Two hook sessions on one layer nest (both caches filled, logits exact)."""
    m = model("plain")
    hm, hm2 = hooks.wrap(m), hooks.wrap(m)
    x = toks()
    snap = snapshot(m)
    ref = logits(m, x)
    c1, c2 = Cache(), Cache()
    with torch.no_grad(), hm.hooks(cache_names=rec_names(0), cache=c1), hm2.hooks(cache_names=rec_names(0), cache=c2):
        out = m(input_ids=x, use_cache=False).logits
    assert torch.equal(out, ref)
    for n in rec_names(0):
        assert torch.equal(c1[n], c2[n])
    assert_clean(m, snap)


# --- errors and clean-up --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["blocks.0.resid_pre", "blocks.1.rec.k", "blocks.1.rec.state", "blocks.2.rec.readout",
                                  "blocks.0.mixer_out"])
def test_hooks_removed_after_errors(name):
    m = model("plain")
    hm = hooks.wrap(m)
    x = toks()
    snap = snapshot(m)
    ref = logits(m, x)

    def boom(t, n):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"), torch.no_grad():
        hm.run_with_hooks(x, hooks=[(name, boom)])
    assert_clean(m, snap)
    with pytest.raises(HookNameError, match="rec.beta"):
        hm.run_with_cache(x, names=["blocks.0.rec.beta"])
    with pytest.raises(HookNameError, match="no attention"):
        hm.run_with_cache(x, names=["blocks.0.attn.q"])
    assert_clean(m, snap)
    assert torch.equal(logits(m, x), ref)


def test_backward_cache_matches_finite_differences():
    """cache.grad at rec.v / rec.decay (the hooked path runs hooks.scan.wkv, differentiable) equals a central
    finite difference of the metric under an additive hook."""
    m = model("plain")
    hm = hooks.wrap(m)
    x = toks()
    metric = lambda lg: lg[:, -1, 5].sum()  # noqa: E731
    names = ["blocks.1.rec.v", "blocks.1.rec.decay"]
    _, c = hm.run_with_cache(x, names=names, backward=metric)
    eps = 1e-2
    for n, (b, t, d) in zip(names, [(0, 3, 7), (1, 6, 2)]):
        delta = torch.zeros(2, T, D)
        delta[b, t, d] = eps
        with torch.no_grad():
            up, down = (metric(hm.run_with_hooks(x, hooks=[(n, lambda a, name, s=s: a + s * delta)])) for s in (1, -1))
        fd = (up - down) / (2 * eps)
        assert abs(c.grad[n][b, t, d]) > 1e-4
        torch.testing.assert_close(fd, c.grad[n][b, t, d], atol=2e-5, rtol=2e-2)


def test_patch_at_every_position_reads_each_patched_state():
    """A hook that edits S_t at every t (consecutive patches): readout t + 1 is read from the edited S_t, readout 0
    keeps its value, and the cached states are the edited ones."""
    m = model("plain")
    hm = hooks.wrap(m)
    x = toks()
    i = 2
    f = lambda s, name: torch.stack([0.5 * s[..., 0] + 0.2 * s[..., 1], 1.5 * s[..., 1]], -1)  # noqa: E731
    with torch.no_grad():
        _, c = hm.run_with_cache(x, names=rec_names(i))
        _, cp = hm.run_with_cache(x, names=rec_names(i), hooks=[(f"blocks.{i}.rec.state", f)])
    q, k, v, S = (c[f"blocks.{i}.rec.{s}"].double() for s in ("q", "k", "v", "state"))
    u = m.rwkv.blocks[i].attention.time_first.detach().double()
    E = f(S, None)
    b = torch.exp(u + k[:, 1:])
    want = q[:, 1:] * (E[:, :-1, :, 0] + b * v[:, 1:]) / (E[:, :-1, :, 1] + b)
    y = cp[f"blocks.{i}.rec.readout"]
    assert torch.equal(y[:, 0], c[f"blocks.{i}.rec.readout"][:, 0])
    torch.testing.assert_close(y[:, 1:].double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cp[f"blocks.{i}.rec.state"].double(), E, rtol=1e-6, atol=1e-6)
