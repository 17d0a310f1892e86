"""hooks on zoo models: capture, patterns, per-token states, interventions, hook removal."""
import pytest
import torch

import hooks
from hooks.names import HookNameError
from hooks.scan import gdn as gdn_scan, gla as gla_scan, mamba2 as mamba2_scan
from interp.zoo import HybridLM, ZooConfig

V = 40
LAYOUTS = ["transformer", "gdn75", "gla75", "mamba275", "gdn75-par", "gla75-par", "mamba275-par"]


def make(layout, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = ZooConfig(vocab_size=V, d_model=32, n_layers=4, layout=layout, n_heads=2, head_dim=16,
                    mamba_head_dim=16, mamba_state=8, **kw)
    return HybridLM(cfg).eval()


def toks(T=21, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, T), generator=g)


def no_hooks_left(model):
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks, m
        for attr in ("attn_fn", "scan_fn"):
            assert attr not in vars(m) or getattr(vars(m)[attr], "__name__", "") != "<lambda>", m


@pytest.mark.parametrize("layout", LAYOUTS)
def test_capture_everything_keeps_logits(layout):
    m = make(layout)
    hm = hooks.wrap(m)
    x = toks()
    with torch.no_grad():
        ref = m(x)
        logits, cache = hm.run_with_cache(x, names=hm.hook_names)
    torch.testing.assert_close(logits, ref, atol=0, rtol=0)
    assert set(cache) == set(hm.hook_names)
    no_hooks_left(m)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_residual_bookkeeping(layout):
    m = make(layout)
    hm = hooks.wrap(m)
    with torch.no_grad():
        logits, c = hm.run_with_cache(toks(), names=hm.hook_names)
    for i in range(4):
        p = f"blocks.{i}"
        torch.testing.assert_close(c[f"{p}.resid_mid"], c[f"{p}.resid_pre"] + c[f"{p}.mixer_out"])
        torch.testing.assert_close(c[f"{p}.resid_post"], c[f"{p}.resid_mid"] + c[f"{p}.mlp_out"])
        if i:
            torch.testing.assert_close(c[f"{p}.resid_pre"], c[f"blocks.{i-1}.resid_post"])
    torch.testing.assert_close(c["blocks.0.resid_pre"], c["embed"])
    torch.testing.assert_close(m.lm_head(m.norm_f(c["blocks.3.resid_post"])), logits)


def eager_pattern(attn, x_normed):
    """The attention weights computed the slow, explicit way from the module's own weights."""
    from interp.zoo.common import apply_rope, rope_cache
    B, T, _ = x_normed.shape
    shp = (B, T, attn.n_heads, attn.head_dim)
    q, k = attn.q_proj(x_normed).view(shp), attn.k_proj(x_normed).view(shp)
    cos, sin = rope_cache(T, attn.head_dim, attn.rope_theta, x_normed.device)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    s = torch.einsum("bihd,bjhd->bhij", q, k) / attn.head_dim ** 0.5
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return s.softmax(-1)


@pytest.mark.parametrize("layout", ["transformer", "gdn75-par"])
def test_pattern_equals_eager(layout):
    m = make(layout)
    hm = hooks.wrap(m)
    i = 3
    with torch.no_grad():
        _, c = hm.run_with_cache(toks(), names=[f"blocks.{i}.attn.pattern", f"blocks.{i}.resid_pre"])
        _, cp = hm.run_with_cache(toks(), names=[f"blocks.{i}.attn.pattern"], positions=[0, 7, 20])
        mix = m.blocks[i].mixer
        attn = mix if hasattr(mix, "q_proj") else mix.attn
        ref = eager_pattern(attn, m.blocks[i].norm1(c[f"blocks.{i}.resid_pre"]))
    torch.testing.assert_close(c[f"blocks.{i}.attn.pattern"], ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cp[f"blocks.{i}.attn.pattern"], ref[:, :, [0, 7, 20]], atol=1e-5, rtol=1e-5)


def step_states(family, c, p):
    """Independent step loop on the captured canonical scan inputs, from a zero state."""
    k, v = c[f"{p}.rec.k"], c[f"{p}.rec.v"]
    return step_states_from(family, c, p, torch.zeros(k.shape[0], k.shape[2], k.shape[3], v.shape[-1]))


@pytest.mark.parametrize("layout,family", [("gdn75", "gdn"), ("gla75", "gla"), ("mamba275", "mamba2"),
                                           ("gdn75-par", "gdn")])
@pytest.mark.parametrize("neg_eig", [False, True])
def test_states_exact(layout, family, neg_eig):
    if neg_eig and family != "gdn":
        pytest.skip("GDN option")
    m = make(layout, gdn_neg_eig=neg_eig)
    hm = hooks.wrap(m)
    p = "blocks.1"
    x = toks(T=70)
    names = [f"{p}.rec.{s}" for s in ("q", "k", "v", "decay", "state", "readout")]
    if family != "gla":
        names.append(f"{p}.rec.beta")
    with torch.no_grad():
        _, c = hm.run_with_cache(x, names=names)
        _, cp = hm.run_with_cache(x, names=[f"{p}.rec.state"], positions=[0, 33, 69])
    ref = step_states(family, c, p)
    S = c[f"{p}.rec.state"]
    assert S.shape == ref.shape and S.dtype == torch.float32
    torch.testing.assert_close(S, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cp[f"{p}.rec.state"], S[:, [0, 33, 69]], atol=1e-6, rtol=1e-5)
    # read-out: o_t = S_t^T (scale q_t) (+ D x_t for Mamba2)
    rec = m.blocks[1].mixer if not hasattr(m.blocks[1].mixer, "rec") else m.blocks[1].mixer.rec
    scale = 1.0 if family == "mamba2" else rec.head_dim ** -0.5
    o = torch.einsum("bthk,bthkv->bthv", c[f"{p}.rec.q"].float() * scale, S)
    if family == "mamba2":
        o = o + c[f"{p}.rec.v"] * rec.D.view(1, 1, -1, 1)
    torch.testing.assert_close(c[f"{p}.rec.readout"].float(), o, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("layout", ["gdn100", "gla100", "mamba2100"])
def test_state_patch_flows_through_recurrence(layout):
    """Replacing S_t equals re-running the reference recurrence from the replaced state; tokens
    before t are unchanged, later ones change."""
    m = make(layout)
    hm = hooks.wrap(m)
    a, b = toks(T=30, B=1, seed=1), toks(T=30, B=1, seed=2)
    p, t = "blocks.2", 12
    with torch.no_grad():
        clean_logits, clean = hm.run_with_cache(a, names=[f"{p}.rec.state"])
        corr_logits = m(b)

        def put(S, name):
            S = S.clone()
            S[:, t] = clean[name][:, t]
            return S
        patched = hm.run_with_hooks(b, hooks=[(f"{p}.rec.state", put)])
        _, after = hm.run_with_cache(b, names=[f"{p}.rec.state"], hooks=[(f"{p}.rec.state", put)])
    torch.testing.assert_close(patched[:, :t], corr_logits[:, :t], atol=1e-6, rtol=1e-6)
    assert (patched[:, t:] - corr_logits[:, t:]).abs().max() > 1e-6  # random init: small but real
    # the state at t is the clean one, and the later states evolve from it (not the old ones)
    torch.testing.assert_close(after[f"{p}.rec.state"][:, t], clean[f"{p}.rec.state"][:, t])
    # oracle: scan the remaining inputs with the reference step loop from the patched state
    with torch.no_grad():
        _, cb = hm.run_with_cache(b, names=[f"{p}.rec.{s}" for s in ("q", "k", "v", "decay")]
                                  + ([f"{p}.rec.beta"] if "gla" not in layout else []))
    fam = {"gdn100": "gdn", "gla100": "gla", "mamba2100": "mamba2"}[layout]
    tail = {k: v[:, t + 1:] for k, v in cb.items()}
    S0 = clean[f"{p}.rec.state"][:, t]
    ref = step_states_from(fam, tail, p, S0)
    torch.testing.assert_close(after[f"{p}.rec.state"][:, t + 1:], ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("layout", ["gdn100", "gla100", "mamba2100"])
def test_state_patch_different_position_per_row(layout):
    """One batch whose rows patch the state at different positions (and one row at two) equals
    running each row's patch on its own: rows do not leak into each other's recurrence."""
    m = make(layout)
    hm = hooks.wrap(m)
    name = "blocks.1.rec.state"
    a, b = toks(T=24, B=1, seed=3), toks(T=24, B=1, seed=4)
    plan = [[5], [9], [], [5, 14], [0]]
    with torch.no_grad():
        _, clean = hm.run_with_cache(a, names=[name])
        src = clean[name][0]

        def put_rows(S, _):
            S = S.clone()
            for r, ts in enumerate(plan):
                for t in ts:
                    S[r, t] = src[t]
            return S
        batched = hm.run_with_hooks(b.repeat(len(plan), 1), hooks=[(name, put_rows)])
        for r, ts in enumerate(plan):
            def put(S, _, ts=ts):
                S = S.clone()
                for t in ts:
                    S[:, t] = src[t]
                return S
            single = hm.run_with_hooks(b, hooks=[(name, put)])
            torch.testing.assert_close(batched[r:r + 1], single, atol=1e-5, rtol=1e-5)
    assert (batched[0] - batched[1]).abs().max() > 1e-6


def step_states_from(family, c, p, S0):
    """The step loop of each family from state S0 on captured inputs [B, T, ...]."""
    q, k, v, g = (c[f"{p}.rec.{s}"].float() for s in ("q", "k", "v", "decay"))
    S = S0.clone().float()
    out = []
    for t in range(k.shape[1]):
        if family == "gla":
            S = g[:, t].exp()[..., None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        elif family == "mamba2":
            bt = c[f"{p}.rec.beta"][:, t].float()
            S = g[:, t].exp()[..., None, None] * S + bt[..., None, None] * k[:, t, :, :, None] * v[:, t, :, None, :]
        else:
            bt = c[f"{p}.rec.beta"][:, t].float()
            S = g[:, t].exp()[..., None, None] * S
            d = bt[..., None] * (v[:, t] - torch.einsum("bhkv,bhk->bhv", S, k[:, t]))
            S = S + k[:, t, :, :, None] * d[:, :, None, :]
        out.append(S)
    return torch.stack(out, 1)


def test_identity_and_ablation_hooks():
    m = make("gdn75")
    hm = hooks.wrap(m)
    x = toks()
    with torch.no_grad():
        ref = m(x)
        same = hm.run_with_hooks(x, hooks=[("blocks.1.resid_post", lambda t, n: t.clone()),
                                           ("blocks.1.rec.state", lambda t, n: None)])
        torch.testing.assert_close(same, ref, atol=1e-6, rtol=1e-6)

        def zero_head(o, name):
            o = o.clone()
            o[:, :, 0] = 0
            return o
        abl = hm.run_with_hooks(x, hooks=[("blocks.3.attn.head_out", zero_head)])
    assert (abl - ref).abs().max() > 1e-4
    no_hooks_left(m)


def test_hooks_removed_on_exception():
    m = make("gdn75")
    hm = hooks.wrap(m)

    def boom(t, n):
        raise RuntimeError("boom")
    for name in ("blocks.1.rec.state", "blocks.3.attn.q", "blocks.0.resid_pre"):
        with pytest.raises(RuntimeError, match="boom"):
            hm.run_with_hooks(toks(), hooks=[(name, boom)])
        no_hooks_left(m)
    with torch.no_grad():
        torch.testing.assert_close(hm(toks()), m(toks()))


def test_bad_names():
    hm = hooks.wrap(make("gdn75"))
    with pytest.raises(HookNameError, match="close matches: blocks.1.resid_post"):
        hm.run_with_cache(toks(), names=["blocks.1.resid_pst"])
    with pytest.raises(HookNameError, match="layer 9 out of range 0..3"):
        hm.run_with_cache(toks(), names=["blocks.9.resid_pre"])
    with pytest.raises(HookNameError, match="layer 3 has no recurrent mixer"):
        hm.run_with_cache(toks(), names=["blocks.3.rec.state"])
    with pytest.raises(HookNameError, match=r"unknown hook name 'blocks.1.rec.stat'; close matches: blocks.1.rec.state"):
        hm.run_with_cache(toks(), names=["blocks.1.rec.stat"])
    with pytest.raises(HookNameError, match="layer 0 has no attention"):
        hm.run_with_cache(toks(), names=["blocks.0.attn.pattern"])


def test_cache_to_disk(tmp_path):
    hm = hooks.wrap(make("gdn75"))
    _, c = hm.run_with_cache(toks(), names=["blocks.1.rec.state", "blocks.2.resid_post"], positions=[3, 5])
    c.save(tmp_path / "cap")
    c2 = hooks.Cache.load(tmp_path / "cap")
    assert c2.positions == [3, 5]
    for k in c:
        torch.testing.assert_close(c2[k], c[k])
