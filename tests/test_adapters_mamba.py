"""HF Mamba2-family adapters (hooks.adapters.hf_mamba) on tiny random models, CPU, float32."""
import copy
import math

import pytest
import torch

import hooks
from hooks.adapters import find
from hooks.adapters.hf_common import cache_kw as hf_cache_kw
from hooks.adapters.hf_mamba import HFMambaAdapter, use_scan_forward

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM  # noqa: E402

V = 64
FAMILIES = ["mamba2", "bamba", "falcon_h1", "zamba2", "nemotron_h"]
MAMBA = dict(heads=4, head_dim=8, groups=2, state=8, chunk=8)


def config(kind):
    h, p, g, n, c = (MAMBA[k] for k in ("heads", "head_dim", "groups", "state", "chunk"))
    common = dict(vocab_size=V, hidden_size=16, intermediate_size=24, num_attention_heads=4, num_key_value_heads=2)
    if kind == "mamba2":
        return transformers.Mamba2Config(vocab_size=V, hidden_size=16, num_hidden_layers=3, num_heads=h, head_dim=p,
                                         expand=2, n_groups=g, state_size=n, chunk_size=c, conv_kernel=4,
                                         time_step_limit=(0.0, 3.0))
    if kind == "bamba":
        return transformers.BambaConfig(num_hidden_layers=3, mamba_n_heads=h, mamba_d_head=p, mamba_n_groups=g,
                                        mamba_d_state=n, mamba_expand=2, mamba_chunk_size=c, attn_layer_indices=[1],
                                        **common)
    if kind == "falcon_h1":  # muP multipliers != 1 so that every one of them is exercised
        return transformers.FalconH1Config(
            num_hidden_layers=3, mamba_n_heads=h, mamba_d_head=p, mamba_d_ssm=h * p, mamba_n_groups=g,
            mamba_d_state=n, mamba_chunk_size=c, mamba_rms_norm=True, ssm_multipliers=[0.5, 1.5, 0.7, 1.3, 0.9],
            ssm_in_multiplier=0.8, ssm_out_multiplier=1.2, attention_in_multiplier=0.9,
            attention_out_multiplier=1.1, embedding_multiplier=2.0, key_multiplier=0.7,
            mlp_multipliers=[0.9, 1.1], **common)
    if kind == "zamba2":
        return transformers.Zamba2Config(
            num_hidden_layers=4, layers_block_type=["mamba", "hybrid", "mamba", "hybrid"], num_mem_blocks=1,
            n_mamba_heads=h, mamba_headdim=p, mamba_ngroups=g, mamba_d_state=n, mamba_expand=2, chunk_size=c,
            use_mem_rope=True, adapter_rank=4, use_shared_attention_adapter=True, tie_word_embeddings=False,
            **{**common, "num_key_value_heads": 4})
    if kind == "nemotron_h":
        return transformers.NemotronHConfig(num_hidden_layers=4, hybrid_override_pattern="M*-M", head_dim=4,
                                            mamba_num_heads=h, mamba_head_dim=p, n_groups=g, ssm_state_size=n,
                                            chunk_size=c, **common)
    raise ValueError(kind)


def spice(model, seed):
    """HF's init leaves the SSM nearly inert (tiny projections, equal dt): draw O(1) weights so
    that every path matters to the logits."""
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "A_log":
                p.copy_(torch.empty(p.shape).uniform_(0, math.log(8), generator=g))
            elif leaf == "dt_bias":
                p.copy_(torch.empty(p.shape).uniform_(-4, 1, generator=g))
            elif leaf == "D":
                p.copy_(1 + 0.5 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:  # norm weights, biases
                p.copy_((1.0 if "norm" in name else 0.0) + 0.2 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[-1] if "embed" not in name else 4
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))


def make(kind, seed=0):
    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(config(kind)).float().eval()
    spice(m, seed)
    return m


def toks(T=21, B=2, seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def logits(m, x):
    return m(input_ids=x, use_cache=False).logits


def f32_tol(m, x, ref):
    """1e-5, or twice HF's own float32 error (vs the same model in float64) where that is larger:
    two float32 implementations cannot agree better than either is accurate (zamba2's hybrid
    layers amplify rounding to ~2e-5 on these random weights)."""
    with torch.no_grad():
        ref64 = logits(copy.deepcopy(m).double(), x)
    return max(1e-5, 2 * (ref.double() - ref64).abs().max().item())


def cache_of(out):
    """The model's cache in its output: ``cache`` from transformers 5.24 on, ``cache_params`` before."""
    return out["cache"] if "cache" in out else out.cache_params


def ssm_state(cache, i):
    """The model's own final SSM state of layer i, as [B, H, N, P] (HF keeps [B, H, P, N])."""
    return cache.layers[i].recurrent_states[0].transpose(-1, -2)


def no_hooks_left(model):
    for mod in model.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks, type(mod).__name__
        assert "forward" not in vars(mod), type(mod).__name__


def rec_layers(hm):
    return [L.index for L in hm.layers if L.rec is not None]


def attn_ok():
    try:
        from hooks.adapters import hf_common  # noqa: F401
        return True
    except ImportError:
        return False


def all_names(hm):
    return [n for n in hm.hook_names if attn_ok() or ".attn." not in n]


@pytest.fixture(scope="module")
def models():
    return {k: make(k) for k in FAMILIES}


# --- (1) replacement forward ------------------------------------------------------------------

@pytest.mark.parametrize("kind", FAMILIES)
def test_replacement_forward_equals_original(models, kind):
    m = models[kind]
    x = toks(T=37)
    with torch.no_grad():
        ref = logits(m, x)
        ref_out = m(input_ids=x, use_cache=True)
        with use_scan_forward(m):
            ours = logits(m, x)
            ours_out = m(input_ids=x, use_cache=True)  # prefill into an empty cache
    no_hooks_left(m)
    assert ref.abs().max() > 1  # the spiced model is not inert
    tol = f32_tol(m, x, ref)
    assert tol < 5e-5
    torch.testing.assert_close(ours, ref, atol=tol, rtol=0)
    torch.testing.assert_close(ours_out.logits, ref, atol=tol, rtol=0)
    # the replacement writes the cache the way HF does: decoding on from it gives HF's logits
    for i in rec_layers(hooks.wrap(m)):
        torch.testing.assert_close(ssm_state(cache_of(ours_out), i), ssm_state(cache_of(ref_out), i),
                                   atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(cache_of(ours_out).layers[i].conv_states[0],
                                   cache_of(ref_out).layers[i].conv_states[0])


# --- (2) capture never changes outputs; everything removed -------------------------------------

@pytest.mark.parametrize("kind", FAMILIES)
def test_capture_everything_keeps_logits(models, kind):
    m = models[kind]
    hm = hooks.wrap(m)
    assert isinstance(hm.adapter, HFMambaAdapter) and isinstance(find(m), HFMambaAdapter)
    x = toks()
    names = all_names(hm)
    with torch.no_grad():
        ref = logits(m, x)
        with use_scan_forward(m):
            ref_scan = logits(m, x)
        res_names = [n for n in names if ".rec." not in n and ".attn." not in n]
        lg_res, c_res = hm.run_with_cache(x, names=res_names)
        lg, cache = hm.run_with_cache(x, names=names)
        lg_fn = hm.run_with_hooks(x, hooks=[(n, lambda t, _: t.clone()) for n in names if n.endswith(".rec.v")])
    torch.testing.assert_close(lg_res, ref, atol=0, rtol=0)  # no rec hooks: HF's own forward, untouched
    # rec names only cached: HF's own forward still gives the output, the replacement runs beside it
    torch.testing.assert_close(lg, ref, atol=0, rtol=0)
    # a hook function on every layer's rec.v: every mixer gives the replacement's output (changes flow on)
    torch.testing.assert_close(lg_fn, ref_scan, atol=0, rtol=0)
    tol = f32_tol(m, x, ref)
    torch.testing.assert_close(ref_scan, ref, atol=tol, rtol=0)
    assert set(cache) == set(names)
    for n in res_names:  # the residual stream is HF's own in both captures
        torch.testing.assert_close(cache[n], c_res[n], atol=0, rtol=0)
    no_hooks_left(m)


@pytest.mark.parametrize("kind", FAMILIES)
def test_hooks_removed_when_a_hook_raises(models, kind):
    m = models[kind]
    hm = hooks.wrap(m)

    def boom(t, n):
        raise RuntimeError("boom")
    r = rec_layers(hm)[-1]
    for name in (f"blocks.{r}.rec.state", f"blocks.{r}.rec.k", f"blocks.{r}.mixer_out", "blocks.0.mlp_out",
                 "blocks.1.resid_mid", "embed"):
        with pytest.raises(RuntimeError, match="boom"):
            hm.run_with_hooks(toks(), hooks=[(name, boom)])
        no_hooks_left(m)
    with torch.no_grad():
        torch.testing.assert_close(hm(toks()), logits(m, toks()), atol=0, rtol=0)


# --- (3) states: the model's own final state and an independent step loop ---------------------

def step_states(c, p):
    q, k, v, g, b = (c[f"{p}.rec.{s}"].float() for s in ("q", "k", "v", "decay", "beta"))
    B, T, H, K = k.shape
    S = torch.zeros(B, H, K, v.shape[-1])
    out = []
    for t in range(T):
        S = g[:, t].exp()[..., None, None] * S + b[:, t, :, None, None] * k[:, t, :, :, None] * v[:, t, :, None, :]
        out.append(S)
    return torch.stack(out, 1)


@pytest.mark.parametrize("kind", FAMILIES)
def test_states_match_model_cache_and_step_loop(models, kind):
    m = models[kind]
    hm = hooks.wrap(m)
    x = toks(T=29)
    with torch.no_grad():
        hf_cache = cache_of(m(input_ids=x, use_cache=True))  # HF's own forward, its own final state
    for i in rec_layers(hm):
        p = f"blocks.{i}"
        names = [f"{p}.rec.{s}" for s in ("q", "k", "v", "decay", "beta", "state", "readout")]
        with torch.no_grad():
            _, c = hm.run_with_cache(x, names=names)
            _, cp = hm.run_with_cache(x, names=[f"{p}.rec.state"], positions=[0, 13, 28])
        S = c[f"{p}.rec.state"]
        B, T = x.shape
        H, P, N = MAMBA["heads"], MAMBA["head_dim"], MAMBA["state"]
        assert S.shape == (B, T, H, N, P) and S.dtype == torch.float32
        torch.testing.assert_close(S[:, -1], ssm_state(hf_cache, i).float(), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(S, step_states(c, p), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(cp[f"{p}.rec.state"], S[:, [0, 13, 28]], atol=1e-6, rtol=1e-5)
        # canonical names: k = B broadcast from groups, decay = dt * A, readout = S^T C + D x
        assert c[f"{p}.rec.k"].shape == (B, T, H, N) and c[f"{p}.rec.v"].shape == (B, T, H, P)
        rec = hm.layers[i].rec
        A = -torch.exp(rec.A_log.float())
        torch.testing.assert_close(c[f"{p}.rec.decay"], c[f"{p}.rec.beta"] * A)
        o = torch.einsum("bthn,bthnp->bthp", c[f"{p}.rec.q"], S) + c[f"{p}.rec.v"] * rec.D.view(1, 1, -1, 1)
        torch.testing.assert_close(c[f"{p}.rec.readout"], o, atol=1e-5, rtol=1e-4)


# --- (4) patching a state flows forward only ----------------------------------------------------

@pytest.mark.parametrize("kind", FAMILIES)
def test_state_patch_changes_later_positions_only(models, kind):
    m = models[kind]
    hm = hooks.wrap(m)
    a, b = toks(T=24, B=1, seed=1), toks(T=24, B=1, seed=2)
    i, t = rec_layers(hm)[0], 10
    name = f"blocks.{i}.rec.state"
    with torch.no_grad():
        _, clean = hm.run_with_cache(a, names=[name])
        base = hm.run_with_hooks(b, hooks=[(name, lambda S, n: None)])  # same path, no change

        def put(S, n):
            S = S.clone()
            S[:, t] = clean[name][:, t]
            return S
        patched, after = hm.run_with_cache(b, names=[name], hooks=[(name, put)])
    torch.testing.assert_close(patched[:, :t], base[:, :t], atol=0, rtol=0)
    diff = (patched - base).abs().amax(-1)[0]
    assert (diff[t:] > 1e-4).all(), diff  # S_t feeds the readout at t and everything after
    torch.testing.assert_close(after[name][:, t], clean[name][:, t])
    no_hooks_left(m)


# --- (5) residual bookkeeping -------------------------------------------------------------------

@pytest.mark.parametrize("kind", FAMILIES)
def test_residual_bookkeeping(models, kind):
    m = models[kind]
    hm = hooks.wrap(m)
    names = [n for n in hm.hook_names if ".rec." not in n and ".attn." not in n]
    with torch.no_grad():
        lg, c = hm.run_with_cache(toks(), names=names)
    n = hm.n_layers
    torch.testing.assert_close(c["blocks.0.resid_pre"], c["embed"], atol=0, rtol=0)
    for i in range(n):
        p = f"blocks.{i}"
        torch.testing.assert_close(c[f"{p}.resid_mid"], c[f"{p}.resid_pre"] + c[f"{p}.mixer_out"])
        torch.testing.assert_close(c[f"{p}.resid_post"], c[f"{p}.resid_mid"] + c[f"{p}.mlp_out"])
        if i:
            torch.testing.assert_close(c[f"{p}.resid_pre"], c[f"blocks.{i - 1}.resid_post"], atol=0, rtol=0)
    base = m.base_model
    final_norm = getattr(base, "norm_f", None) or getattr(base, "final_layernorm", None)
    out = m.lm_head(final_norm(c[f"blocks.{n - 1}.resid_post"]))
    if kind == "falcon_h1":
        out = out * m.model.lm_head_multiplier
    torch.testing.assert_close(out, lg, atol=1e-5, rtol=1e-5)


def test_falcon_mixer_out_is_the_parallel_sum(models):
    m = models["falcon_h1"]
    hm = hooks.wrap(m)
    parts = {}
    blk = m.model.layers[1]
    hs = [blk.mamba.register_forward_hook(lambda mod, a, o: parts.__setitem__("m", o)),
          blk.self_attn.register_forward_hook(lambda mod, a, o: parts.__setitem__("a", o[0]))]
    try:
        with torch.no_grad():
            _, c = hm.run_with_cache(toks(), names=["blocks.1.mixer_out", "blocks.1.resid_pre", "blocks.1.resid_mid"])
            zeroed = hm.run_with_hooks(toks(), hooks=[("blocks.1.mixer_out", lambda y, n: torch.zeros_like(y))])
            _, cz = hm.run_with_cache(toks(), names=["blocks.1.resid_pre", "blocks.1.resid_mid"],
                                      hooks=[("blocks.1.mixer_out", lambda y, n: torch.zeros_like(y))])
    finally:
        for h in hs:
            h.remove()
    want = parts["m"] * blk.ssm_out_multiplier + parts["a"] * blk.attn_out_multiplier
    torch.testing.assert_close(c["blocks.1.mixer_out"], want)
    torch.testing.assert_close(cz["blocks.1.resid_mid"], cz["blocks.1.resid_pre"])
    assert (zeroed - logits(m, toks())).abs().max() > 1e-3
    no_hooks_left(m)


def test_falcon_embed_is_scaled_block_input(models):
    m = models["falcon_h1"]
    hm = hooks.wrap(m)
    x = toks()
    with torch.no_grad():
        _, c = hm.run_with_cache(x, names=["embed"])
        doubled = hm.run_with_hooks(x, hooks=[("embed", lambda e, n: 2 * e)])
        m.model.embedding_multiplier *= 2
        try:
            ref = logits(m, x)
        finally:
            m.model.embedding_multiplier /= 2
    torch.testing.assert_close(c["embed"], m.model.embed_tokens(x) * m.model.embedding_multiplier)
    torch.testing.assert_close(doubled, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind,i,where", [("mamba2", 1, "mlp_out"), ("nemotron_h", 2, "mixer_out"),
                                          ("zamba2", 1, "mlp_out")])
def test_zero_terms(models, kind, i, where):
    """A missing term reads as zeros; adding v there equals adding v to the residual stream."""
    m = models[kind]
    hm = hooks.wrap(m)
    x = toks()
    v = torch.randn(16, generator=torch.Generator().manual_seed(3))
    site = "resid_post" if where == "mlp_out" else "resid_pre"
    with torch.no_grad():
        _, c = hm.run_with_cache(x, names=[f"blocks.{i}.{where}"])
        a = hm.run_with_hooks(x, hooks=[(f"blocks.{i}.{where}", lambda y, n: y + v)])
        b = hm.run_with_hooks(x, hooks=[(f"blocks.{i}.{site}", lambda y, n: y + v)])
    assert (c[f"blocks.{i}.{where}"] == 0).all()
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert (a - logits(m, x)).abs().max() > 1e-3
    no_hooks_left(m)


# --- attention layers (through hooks.adapters.hf_common) ---------------------------------------

@pytest.mark.parametrize("kind", ["bamba", "falcon_h1", "zamba2", "nemotron_h"])
def test_attention_pattern_equals_eager_weights(kind):
    pytest.importorskip("hooks.adapters.hf_common")
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(config(kind), attn_implementation="eager").float().eval()
    spice(m, 0)
    hm = hooks.wrap(m)
    att = [L.index for L in hm.layers if L.attn is not None]
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
        B, T = x.shape
        assert c[f"blocks.{i}.attn.q"].shape[:2] == (B, T) and c[f"blocks.{i}.attn.head_out"].shape[:2] == (B, T)
    assert (abl - lg).abs().max() > 1e-3
    assert before == {id(mod): (dict(mod._forward_hooks), dict(mod._forward_pre_hooks)) for mod in m.modules()}


# --- layer map and unsupported paths ------------------------------------------------------------

def test_layer_maps(models):
    kinds = {k: [(L.attn is not None, L.rec is not None) for L in hooks.wrap(models[k]).layers] for k in FAMILIES}
    assert kinds["mamba2"] == [(False, True)] * 3
    assert kinds["bamba"] == [(False, True), (True, False), (False, True)]
    assert kinds["falcon_h1"] == [(True, True)] * 3
    assert kinds["zamba2"] == [(False, True), (True, True), (False, True), (True, True)]
    assert kinds["nemotron_h"] == [(False, True), (True, False), (False, False), (False, True)]
    z = hooks.wrap(models["zamba2"]).layers
    assert z[1].attn is models["zamba2"].model.layers[1].shared_transformer.self_attn
    assert z[1].attn_meta["scale"] == pytest.approx((z[1].attn.head_dim / 2) ** -0.5)


@pytest.mark.parametrize("kind", ["mamba2", "bamba"])
def test_unsupported_paths(models, kind):
    m = models[kind]
    hm = hooks.wrap(m)
    i = rec_layers(hm)[0]
    x = toks()
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    with torch.no_grad():
        ref = m(input_ids=x, attention_mask=mask, use_cache=False).logits
        # a padding mask runs on the replacement forward (pads zeroed as HF does; tests/test_padding.py)
        with hm.hooks([(f"blocks.{i}.rec.state", lambda S, n: None)]):
            padded = m(input_ids=x, attention_mask=mask, use_cache=False).logits
        torch.testing.assert_close(padded, ref, atol=1e-5, rtol=1e-4)
        no_hooks_left(m)
        # decoding on from a cache under a rec hook: the replacement continues from HF's cached state and conv
        # window, and gives HF's own decode step
        nxt = toks(T=1, seed=5)
        extra = {"cache_position": torch.tensor([x.shape[1]])} if kind == "mamba2" else {}
        step = lambda: m(input_ids=nxt, use_cache=True, **extra,  # noqa: E731
                         **{hf_cache_kw(m.forward, 'cache_params'): cache_of(m(input_ids=x, use_cache=True))}).logits
        own = step()
        with hm.hooks([(f"blocks.{i}.rec.k", lambda S, n: None)]):
            hooked = step()
        torch.testing.assert_close(hooked, own, atol=1e-5, rtol=1e-4)
        no_hooks_left(m)
        with use_scan_forward(m):
            ours = m(input_ids=x, attention_mask=mask, use_cache=False).logits
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


# --- CUDA: the replacement runs fla's kernels (skipped without a GPU) ---------------------------

def mild(model, seed=0):
    """Mamba2's own init ranges (A in [1, 16], dt in [1e-3, 1e-1]) on the spiced weights."""
    g = torch.Generator().manual_seed(seed + 2000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.empty(p.shape).uniform_(1, 16, generator=g).log())
            elif name.endswith("dt_bias"):
                dt = torch.exp(torch.empty(p.shape).uniform_(math.log(1e-3), math.log(1e-1), generator=g))
                p.copy_(dt + torch.log(-torch.expm1(-dt)))
    return model


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", FAMILIES)
def test_cuda_kernels_path(kind, dtype):
    """fla's kernels (tf32 dots in fp32) instead of HF's torch SSD: close, not exact."""
    from hooks.scan import use_kernels
    dev = torch.device("cuda")
    assert use_kernels(torch.empty(1, device=dev)), "fla kernels unavailable on this CUDA host"
    m = mild(make(kind)).to(dev, dtype)
    hm = hooks.wrap(m)
    x = toks(T=150, B=2).to(dev)
    i = rec_layers(hm)[-1]
    names = [f"blocks.{i}.rec.state", f"blocks.{i}.rec.readout"]
    with torch.no_grad():
        ref = logits(m, x).float()
        hf_cache = cache_of(m(input_ids=x, use_cache=True))
        lg, c = hm.run_with_cache(x, names=names)
        with use_scan_forward(m):
            plain = logits(m, x).float()
    rel = lambda a, b: ((a - b).abs().max() / b.abs().max()).item()  # noqa: E731
    errs = (rel(lg.float(), ref), rel(plain, ref), rel(c[f"blocks.{i}.rec.state"][:, -1], ssm_state(hf_cache, i).float()))
    print(f"{kind} {dtype}: rel err hooked {errs[0]:.2e} all-fla {errs[1]:.2e} state {errs[2]:.2e}")
    tol = 5e-3 if dtype == torch.float32 else 5e-2
    assert max(errs) < tol, errs
    no_hooks_left(m)
