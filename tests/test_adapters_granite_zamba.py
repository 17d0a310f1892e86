"""granitemoehybrid (hooks.adapters.hf_mamba: Mamba2 + attention, MoE, residual / embedding / logit multipliers)
and zamba v1 (hooks.adapters.hf_mamba1 + hf_zamba: Mamba1 with several mamba heads, a shared attention block) on
tiny random models, CPU, float32; the oracles are HF's own outputs and cache, eager attention and float64 step
loops written here."""
import pytest
import torch

import hooks
import hf_tiny as H  # tests/hf_tiny.py, a sibling of this file
from hf_tiny import assert_clean, attn_layers, rec_layers, snapshot
from hooks.adapters import find
from hooks.adapters.hf_common import cache_kw
from hooks.adapters.hf_mamba import HFMambaAdapter, use_scan_forward
from hooks.adapters.hf_mamba1 import HFMamba1Adapter
from hooks.scan import mamba1
from test_adapters_mamba import spice  # O(1) random weights, so that every path matters to the logits

transformers = pytest.importorskip("transformers")

V = 64
KINDS = ["granite", "granite_dense", "zamba"]
MAIN = ["granite", "zamba"]  # granite_dense (no experts, no RoPE) is checked where its layer forward differs
G_HEADS, G_HDIM, G_GROUPS, G_STATE = 4, 8, 2, 8        # granitemoehybrid's Mamba2 mixers
Z_HEADS, Z_STATE, Z_D = 2, 4, 32                       # zamba: mamba heads, state size, d_inner (2 * 16)


def config(kind):
    common = dict(vocab_size=V, hidden_size=16, intermediate_size=24, num_attention_heads=4, num_key_value_heads=2)
    if kind.startswith("granite"):  # multipliers != 1 so that each one is exercised
        dense = kind == "granite_dense"
        return transformers.GraniteMoeHybridConfig(
            num_hidden_layers=3, layer_types=["mamba", "attention", "mamba"], shared_intermediate_size=20,
            num_local_experts=0 if dense else 3, num_experts_per_tok=2, mamba_n_heads=G_HEADS, mamba_d_head=G_HDIM,
            mamba_n_groups=G_GROUPS, mamba_d_state=G_STATE, mamba_chunk_size=8, mamba_expand=2,
            embedding_multiplier=2.0, logits_scaling=3.0, residual_multiplier=0.4, attention_multiplier=0.3,
            position_embedding_type=None if dense else "rope", **common)
    if kind == "zamba":
        return transformers.ZambaConfig(num_hidden_layers=4, layers_block_type=["mamba", "hybrid", "mamba", "hybrid"],
                                        n_mamba_heads=Z_HEADS, mamba_d_state=Z_STATE, mamba_d_conv=4, mamba_expand=2,
                                        mamba_dt_rank=4, **common)
    raise ValueError(kind)


def make(kind, attn_implementation=None, seed=0):
    m = H.from_config(config(kind), attn_implementation, seed)
    spice(m, seed)
    return m


model = H.cached(make)


def toks(B=2, seed=0, n=19):
    return H.toks(V, B, seed, n)


def cache_of(out):
    return H.cache_of(out, "cache_params")


def hf_final_state(m, cache, i):
    """The model's own final SSM state of layer i in our layout: granite [B, H, N, P] (HF: [B, H, P, N]);
    zamba [B, D, N] (HF: [B, H, Dh, N], heads folded)."""
    S = cache.get_recurrent_state(i, state_idx=0)
    return S.flatten(1, 2) if m.config.model_type == "zamba" else S.transpose(-1, -2)


def loop_states(m, c, p, S0=None, t0=0):
    """float64 step loop over the captured scan inputs of layer p from position t0 (state S0 before it)."""
    q, k, v, g, b = (c[f"{p}.rec.{s}"][:, t0:].double() for s in ("q", "k", "v", "decay", "beta"))
    out = []
    if m.config.model_type == "zamba":  # Mamba1, B_t / C_t per head: channel d reads head d // Dh's
        k = k.repeat_interleave(v.shape[-1] // k.shape[2], dim=2)        # [B, T, D, N]
        S = torch.zeros(*v.shape[:1], *k.shape[2:], dtype=torch.float64) if S0 is None else S0.double()
        for t in range(v.shape[1]):
            S = g[:, t].exp() * S + (b[:, t] * v[:, t])[..., None] * k[:, t]
            out.append(S)
    else:  # Mamba2: S_t = exp(decay_t) S + beta_t k_t v_t^T, per head
        S = torch.zeros(v.shape[0], v.shape[2], k.shape[-1], v.shape[-1], dtype=torch.float64) if S0 is None \
            else S0.double()
        for t in range(v.shape[1]):
            S = g[:, t].exp()[..., None, None] * S + b[:, t, :, None, None] * k[:, t, :, :, None] * v[:, t, :, None, :]
            out.append(S)
    return torch.stack(out, 1)


def readout_of(m, c, p, S):
    """The readout from states S: granite S^T C + D x; zamba sum_n S C_(head of d) + D x."""
    rec = m.base_model.layers[int(p.split(".")[1])]
    q, v = c[f"{p}.rec.q"].double(), c[f"{p}.rec.v"].double()
    if m.config.model_type == "zamba":
        D = rec.mamba_decoder.mamba.D if hasattr(rec, "mamba_decoder") else rec.mamba.D
        return (S.double() * q.repeat_interleave(v.shape[-1] // q.shape[2], dim=2)).sum(-1) + v * D.flatten()
    return torch.einsum("bthn,bthnp->bthp", q, S.double()) + v * rec.mamba.D.view(1, 1, -1, 1)


# --- layer map ----------------------------------------------------------------------------------

def test_layer_maps():
    g, z = model("granite"), model("zamba")
    assert isinstance(find(g), HFMambaAdapter) and isinstance(find(z), HFMamba1Adapter)
    hg, hz = hooks.wrap(g), hooks.wrap(z)
    assert [(L.attn is not None, L.rec_family) for L in hg.layers] == [(False, "mamba2"), (True, None),
                                                                       (False, "mamba2")]
    assert [(L.attn is not None, L.rec_family) for L in hz.layers] == [(False, "mamba1"), (True, "mamba1")] * 2
    assert hz.layers[1].attn is z.model.layers[1].shared_transf.self_attn
    assert hz.layers[3].rec is z.model.layers[3].mamba_decoder.mamba
    assert hz.layers[1].attn_meta["scale"] == pytest.approx((hz.layers[1].attn.head_dim / 2) ** -0.5)
    assert hg.layers[1].attn_meta["scale"] == pytest.approx(0.3)  # attention_multiplier


# --- capture is exact; identity hooks; every name works -----------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_capture_leaves_logits_bit_identical(kind):
    m = model(kind)
    hm, x, snap = hooks.wrap(m), toks(), snapshot(m)
    with torch.no_grad():
        ref = H.logits(m, x)
        lg, c = hm.run_with_cache(x, names=hm.hook_names)
    assert ref.abs().max() > 0.5
    assert torch.equal(lg, ref)
    assert set(c) == set(hm.hook_names)
    assert_clean(m, snap)
    if kind == "zamba":  # the hooked forward calls the model's own scans: exact even with hook functions
        H.assert_identity_hooks_keep_logits(hm, x, ref)
    else:  # a hook function on rec.* makes the Mamba2 mixers give the replacement's output (hf_mamba)
        with torch.no_grad(), use_scan_forward(m):
            ref_scan = H.logits(m, x)
        torch.testing.assert_close(ref_scan, ref, atol=1e-5, rtol=0)
        H.assert_identity_hooks_keep_logits(hm, x, ref_scan)
    assert_clean(m, snap)


@pytest.mark.parametrize("kind", MAIN)
def test_every_hook_name_changes_the_output(kind):
    """A hook that changes the activation at any name (of the first layer of each kind: Mamba, attention /
    hybrid) changes the logits (rec.pattern, which is read-only, raises saying so); the shapes are those of
    hooks.names."""
    m = model(kind)
    hm, x, snap = hooks.wrap(m), toks(B=1, n=7), snapshot(m)
    first = {}
    for L in hm.layers:
        first.setdefault((L.attn is not None, L.rec is not None), L.index)
    names = [n for n in hm.hook_names if n == "embed" or int(n.split(".")[1]) in first.values()]
    assert len(first) == 2
    with torch.no_grad():
        ref = H.logits(m, x)
        _, c = hm.run_with_cache(x, names=hm.hook_names)
    B, T = x.shape
    for name in names:
        site = name.split(".", 2)[-1]
        if site.startswith(("resid", "mixer_out", "mlp_out")) or name == "embed":
            assert c[name].shape == (B, T, 16), name
        if site == "rec.pattern":
            with pytest.raises(NotImplementedError, match="can be cached and read, not changed"):
                hm.run_with_hooks(x, hooks=[(name, lambda t, n: t * 0.5)])
            continue
        with torch.no_grad():
            out = hm.run_with_hooks(x, hooks=[(name, lambda t, n: t * 0.5 + 0.05)])
        assert (out - ref).abs().max() > 1e-4, name
    assert_clean(m, snap)
    p = f"blocks.{rec_layers(hm)[-1]}.rec"
    if kind == "zamba":
        assert c[f"{p}.q"].shape == c[f"{p}.k"].shape == (B, T, Z_HEADS, Z_STATE)
        assert c[f"{p}.v"].shape == c[f"{p}.beta"].shape == c[f"{p}.readout"].shape == (B, T, Z_D)
        assert c[f"{p}.decay"].shape == c[f"{p}.state"].shape == (B, T, Z_D, Z_STATE)
        assert c[f"{p}.pattern"].shape == (B, Z_D, T, T)
    else:
        assert c[f"{p}.k"].shape == (B, T, G_HEADS, G_STATE) and c[f"{p}.v"].shape == (B, T, G_HEADS, G_HDIM)
        assert c[f"{p}.state"].shape == (B, T, G_HEADS, G_STATE, G_HDIM)


@pytest.mark.parametrize("kind", MAIN)
def test_hooks_removed_after_every_exit_path(kind):
    m, hm, x, ref = H.setup(model(kind), toks())
    snap = snapshot(m)
    r, a = rec_layers(hm)[-1], attn_layers(hm)[0]
    names = (f"blocks.{r}.rec.state", f"blocks.{r}.rec.k", f"blocks.{r}.rec.readout", f"blocks.{r}.mixer_out",
             f"blocks.{r}.mlp_out", f"blocks.{a}.attn.pattern", f"blocks.{a}.attn.head_out", "blocks.1.resid_mid",
             "embed")
    H.assert_raising_hooks_leave_nothing(hm, x, ref, names, snap)
    # decoding on from a cache with rec.* hooks on: zamba's Mamba1 layers raise a clear error, granite's Mamba2
    # layers give the model's own decode step; nothing left behind
    x = toks(n=8)
    with torch.no_grad():
        step = lambda: m(input_ids=x[:, :1], use_cache=True,  # noqa: E731
                         **{cache_kw(m.forward, "cache_params"): cache_of(m(input_ids=x, use_cache=True))}).logits
        if hm.adapter.family == "hf_mamba1":
            with pytest.raises(NotImplementedError, match="cache"):
                with hm.hooks([(f"blocks.{r}.rec.k", lambda t, n: None)]):
                    step()
        else:
            own = step()
            with hm.hooks([(f"blocks.{r}.rec.k", lambda t, n: None)]):
                torch.testing.assert_close(step(), own, atol=1e-5, rtol=1e-4)
    assert_clean(m, snap)
    with torch.no_grad():
        assert torch.equal(hm(toks()), H.logits(m, toks()))


# --- attention ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_attention_pattern_equals_eager_attention(kind):
    m, x = model(kind), toks()
    eager, out = H.eager_twin(make, kind, m, x)  # HF's eager weights; its output recorders stay installed
    hm, snap = hooks.wrap(m), snapshot(m)
    before = {id(mod): (dict(mod._forward_hooks), dict(mod._forward_pre_hooks)) for mod in eager.modules()}
    att = attn_layers(hm)
    names = [f"blocks.{i}.attn.{s}" for i in att for s in ("pattern", "q", "k", "v", "head_out")]
    with torch.no_grad():
        lg, c = hm.run_with_cache(x, names=names)
        eo, ce = hooks.wrap(eager).run_with_cache(x, names=names)  # the eager path intercepted too
        abl = hm.run_with_hooks(x, hooks=[(f"blocks.{att[0]}.attn.head_out", lambda o, n: torch.zeros_like(o))])
    assert torch.equal(eo, out.logits) and torch.equal(lg, H.logits(m, x))
    weights = [w for w in out.attentions if w is not None]
    assert len(weights) == len(att)
    for i, w in zip(att, weights):
        torch.testing.assert_close(c[f"blocks.{i}.attn.pattern"], w, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ce[f"blocks.{i}.attn.pattern"], w, atol=1e-5, rtol=1e-4)
        assert c[f"blocks.{i}.attn.k"].shape == (2, x.shape[1], 2, hm.layers[i].attn.head_dim)  # GQA: 2 kv heads
    assert (abl - lg).abs().max() > 1e-3
    assert_clean(m, snap)
    assert before == {id(mod): (dict(mod._forward_hooks), dict(mod._forward_pre_hooks)) for mod in eager.modules()}


# --- states -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", MAIN)
def test_states_equal_step_loop_and_hf_cache(kind):
    m = model(kind)
    hm, x = hooks.wrap(m), toks(n=23)
    with torch.no_grad():
        hf_cache = cache_of(m(input_ids=x, use_cache=True))  # HF's own forward and its final states
    for i, p, c, cp in H.rec_layer_captures(hm, x, positions=[0, 9, 22]):
        S = c[f"{p}.rec.state"]
        assert S.dtype == torch.float32
        torch.testing.assert_close(S.double(), loop_states(m, c, p), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(S[:, -1], hf_final_state(m, hf_cache, i).float(), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(cp[f"{p}.rec.state"], S[:, [0, 9, 22]], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(c[f"{p}.rec.readout"].double(), readout_of(m, c, p, S), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", MAIN)
def test_prefill_into_cache_under_hooks(kind):
    """A use_cache=True forward with rec.* names hooked writes HF's cache as HF does: the final state is the
    cached last state, and decoding on from that cache (no hooks) gives the full sequence's logits."""
    m = model(kind)
    hm, x, snap = hooks.wrap(m), toks(n=12), snapshot(m)
    names = [f"blocks.{i}.rec.state" for i in rec_layers(hm)]
    got = {}
    with torch.no_grad():
        full = H.logits(m, x)
        with hm.hooks([(names[0], lambda S, n: None)], cache_names=names, cache=got):
            out = m(input_ids=x[:, :-1], use_cache=True)
        cache = cache_of(out)
        for i, n in zip(rec_layers(hm), names):
            torch.testing.assert_close(got[n][:, -1], hf_final_state(m, cache, i).float(), atol=1e-6, rtol=1e-5)
        step = m(input_ids=x[:, -1:], use_cache=True, **{cache_kw(m.forward, "cache_params"): cache}).logits
    torch.testing.assert_close(step[:, -1], full[:, -1], atol=1e-5, rtol=1e-4)
    assert_clean(m, snap)


@pytest.mark.parametrize("kind", MAIN)
def test_state_patch_continues_the_recurrence(kind):
    m = model(kind)
    hm = hooks.wrap(m)
    a, b = toks(B=1, seed=1, n=21), toks(B=1, seed=2, n=21)
    i, t = rec_layers(hm)[0], 9
    p = f"blocks.{i}"
    name = f"{p}.rec.state"
    ins = [f"{p}.rec.{s}" for s in ("q", "k", "v", "beta", "decay")]
    # (every logit from t on moves; the patched run holds a's state at t)
    clean, base, cb, patched, after = H.state_patch_runs(hm, a, b, f"{p}.rec", ins, t,
                                                         base_hooks=[(name, lambda S, n: None)])
    # (granite's MoE batches a different token set per expert after t: float rounding before t)
    torch.testing.assert_close(patched[:, :t], base[:, :t], atol=1e-5 if kind == "granite" else 0, rtol=0)
    # the layer's inputs are unchanged; from t on the states are the step loop from the patched S_t
    ref = loop_states(m, cb, p, S0=clean[:, t], t0=t + 1)
    torch.testing.assert_close(after[name][:, t + 1:].double(), ref, atol=1e-5, rtol=1e-4)
    ro = readout_of(m, cb, p, after[name])
    torch.testing.assert_close(after[f"{p}.rec.readout"][:, t:].double(), ro[:, t:], atol=1e-5, rtol=1e-4)
    assert torch.equal(after[f"{p}.rec.readout"][:, :t], cb[f"{p}.rec.readout"][:, :t])


# --- residual terms, multipliers, heads ------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_residual_terms_and_multipliers(kind):
    m = model(kind)
    hm, x = hooks.wrap(m), toks()
    names = [n for n in hm.hook_names if ".rec." not in n and ".attn." not in n]
    got = {}
    mixers = {i: (L.rec if L.attn is None or kind == "zamba" else L.attn) for i, L in enumerate(hm.layers)}
    hs = [mod.register_forward_hook(lambda mod, a, o, i=i: got.__setitem__(i, o[0] if isinstance(o, tuple) else o))
          for i, mod in mixers.items()]
    try:
        with torch.no_grad():
            lg, c = hm.run_with_cache(x, names=names, heads=True)
    finally:
        for h in hs:
            h.remove()
    n = hm.n_layers
    rm = getattr(m.config, "residual_multiplier", 1.0) if kind != "zamba" else 1.0
    for i in range(n):
        p = f"blocks.{i}"
        assert torch.equal(c[f"{p}.mixer_out"], got[i] * rm)  # what the layer adds: the mixer times the multiplier
        torch.testing.assert_close(c[f"{p}.resid_mid"], c[f"{p}.resid_pre"] + c[f"{p}.mixer_out"])
        torch.testing.assert_close(c[f"{p}.resid_post"], c[f"{p}.resid_mid"] + c[f"{p}.mlp_out"])
        if kind == "zamba":
            assert (c[f"{p}.mlp_out"] == 0).all()
    emb = m.model.embed_tokens(x) * getattr(m.config, "embedding_multiplier", 1.0)
    assert torch.equal(c["embed"], emb) and torch.equal(c["blocks.0.resid_pre"], emb)
    torch.testing.assert_close(c.logit_lens()[-1], lg, atol=1e-5, rtol=1e-5)  # logits_scaling folded in
    # per-head results sum to mixer_out (granite: times residual_multiplier; zamba: its mamba heads)
    for i, L in enumerate(hm.layers):
        k = "attn" if L.attn is not None and kind != "zamba" else "rec"
        res = c.head_results(i, k)
        assert res.shape[-2] == {"attn": 4, "rec": Z_HEADS if kind == "zamba" else G_HEADS}[k]
        torch.testing.assert_close(res.sum(-2), c[f"blocks.{i}.mixer_out"], atol=1e-5, rtol=1e-4)
    if kind == "zamba":
        with pytest.raises(NotImplementedError, match="shared transformer"):
            c.head_results(1, "attn")


def test_mixer_and_mlp_terms_can_be_replaced():
    """granite: replacing mixer_out / mlp_out (inline products) == adding the difference to the residual stream."""
    m = model("granite")
    hm, x, snap = hooks.wrap(m), toks(), snapshot(m)
    v = torch.randn(16, generator=torch.Generator().manual_seed(3))
    for where, site in (("mixer_out", "resid_mid"), ("mlp_out", "resid_post")):
        with torch.no_grad():
            a = hm.run_with_hooks(x, hooks=[(f"blocks.1.{where}", lambda y, n: y + v)])
            b = hm.run_with_hooks(x, hooks=[(f"blocks.1.{site}", lambda y, n: y + v)])
            _, cz = hm.run_with_cache(x, names=["blocks.1.resid_pre", "blocks.1.resid_mid"],
                                      hooks=[("blocks.1.mixer_out", lambda y, n: torch.zeros_like(y))])
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        assert (a - H.logits(m, x)).abs().max() > 1e-3
        assert torch.equal(cz["blocks.1.resid_mid"], cz["blocks.1.resid_pre"])
    assert_clean(m, snap)


# --- the grouped Mamba1 scan (zamba's heads) -------------------------------------------------------

def test_grouped_mamba1_scan_equals_one_scan_per_group():
    g = torch.Generator().manual_seed(0)
    b, T, D, N, G = 2, 17, 12, 5, 3
    a = dict(x=torch.randn(b, T, D, generator=g), dt=torch.nn.functional.softplus(torch.randn(b, T, D, generator=g)),
             A=-3 * torch.rand(D, N, generator=g), B=torch.randn(b, T, G, N, generator=g),
             C=torch.randn(b, T, G, N, generator=g))
    Dsk, h0 = torch.randn(D, generator=g), torch.randn(b, D, N, generator=g)
    y_ref, f_ref, S_ref = [], [], []
    for k in range(G):
        s = slice(k * D // G, (k + 1) * D // G)
        y, f = mamba1.naive(a["x"][..., s], a["dt"][..., s], a["A"][s], a["B"][:, :, k], a["C"][:, :, k], Dsk[s],
                            h0[:, s], True)
        y_ref.append(y), f_ref.append(f)
        S_ref.append(mamba1.states(a["x"][..., s], a["dt"][..., s], a["A"][s], a["B"][:, :, k], a["C"][:, :, k],
                                   h0[:, s]))
    y_ref, f_ref, S_ref = torch.cat(y_ref, -1), torch.cat(f_ref, 1), torch.cat(S_ref, 2)
    for fn in (mamba1.naive, mamba1.chunk_torch):
        y, f = fn(**a, D=Dsk, initial_state=h0, output_final_state=True)
        torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(f, f_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mamba1.states(**a, initial_state=h0, chunk=4), S_ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="5 groups, which must divide the 12 channels"):
        mamba1.scan(**{**a, "B": a["B"][:, :, :1].repeat(1, 1, 5, 1), "C": a["C"][:, :, :1].repeat(1, 1, 5, 1)})


def test_zamba_rec_pattern_rebuilds_the_readout():
    """rec.pattern of a zamba layer (one pattern per channel, its head's B / C): readout_t[d] = sum_s A[d, t, s]
    x_s[d] + D[d] x_t[d]."""
    m = model("zamba")
    hm, x = hooks.wrap(m), toks()
    p = "blocks.1"
    with torch.no_grad():
        _, c = hm.run_with_cache(x, names=[f"{p}.rec.{s}" for s in ("pattern", "v", "readout")])
    A, v = c[f"{p}.rec.pattern"], c[f"{p}.rec.v"]
    D = hm.layers[1].rec.D.flatten()
    o = torch.einsum("bdts,bsd->btd", A, v) + v * D
    torch.testing.assert_close(o, c[f"{p}.rec.readout"], atol=1e-5, rtol=1e-4)


def test_zamba_padding_mask_under_hooks():
    """Left padding: HF zeroes padded positions before the scan; the hooked forward does the same (bit-exact), so
    nothing is written into the states there."""
    m = model("zamba")
    hm, x, snap = hooks.wrap(m), toks(n=9), snapshot(m)
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    got = {}
    with torch.no_grad():
        ref = m(input_ids=x, attention_mask=mask, use_cache=False).logits
        with hm.hooks([("blocks.1.rec.v", lambda t, n: t.clone())], cache_names=["blocks.1.rec.state"], cache=got):
            out = m(input_ids=x, attention_mask=mask, use_cache=False).logits
    assert torch.equal(out, ref)
    S = got["blocks.1.rec.state"]
    assert (S[0, :3] == 0).all() and S[0, 3:].abs().amax() > 0 and S[1, :3].abs().amax() > 0
    assert_clean(m, snap)
