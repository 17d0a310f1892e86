"""hooks.effective: the exact effective attention of every recurrence family. (a) against float64 step
loops written here from the recurrences themselves (one-hot-in-time values; GDN also by explicit
products of its transitions); (b) the readout rebuilt from it equals hooks.recurrence.scan's and the
layers' own readouts (zoo and tiny HF models); (c) zeroing A[:, s] is knocking out v_s; (d) rows= and
heads= are slices of the full result; (e) the memory guard. CPU, float32 unless said otherwise."""
import math

import pytest
import torch

import hooks
from hooks import effective as E
from hooks import recurrence as R
from interp.zoo import HybridLM, ZooConfig

transformers = pytest.importorskip("transformers")
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

B, T = 2, 150                     # three chunks of 64, the last one partial


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def gen(seed):
    return torch.Generator().manual_seed(seed)


# --- random canonical views, built with hooks.recurrence.canonical from kernel kwargs ---------------

def view(family, seed=0, init=True, gva=False, strong=False):
    g = gen(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    u = lambda *s: torch.rand(*s, generator=g)   # noqa: E731
    H, K, V = 4, 8, 5
    if family == "gdn":
        Hk = 2 if gva else H
        kw = dict(q=r(B, T, Hk, K), k=r(B, T, Hk, K), v=r(B, T, H, V), g=-u(B, T, H) * 0.3,
                  beta=2 * u(B, T, H), use_qk_l2norm_in_kernel=True)  # beta in (0, 2): negative eigenvalues
    elif family == "gla":
        dec = -u(B, T, H, K) * 0.5
        if strong:
            dec[:, 10:12] = -60.0                                   # exp(G_t) underflows, exp(-G_s) would overflow
        kw = dict(q=r(B, T, H, K), k=r(B, T, H, K), v=r(B, T, H, V), g=dec)
    elif family == "mamba2":
        kw = dict(x=r(B, T, H, V), dt=u(B, T, H) * 0.5, A=-u(H) * 2, B=r(B, T, 2, K), C=r(B, T, 2, K),
                  D=r(H))
        H, K = H, K
    else:
        Dn = 6
        kw = dict(x=r(B, T, Dn), dt=u(B, T, Dn) * 0.5, A=-u(Dn, K) * 2, B=r(B, T, K), C=r(B, T, K), D=r(Dn))
        H, V = Dn, 1
    if init:
        kw["initial_state"] = r(B, H, K) if family == "mamba1" else r(B, H, K, V)
    return R.canonical(family, kw)


def full_heads(c):
    """A GVA view with its q / k repeated to the value heads (what the adapters hand over)."""
    H = c["v"].shape[2]
    rep = H // c["q"].shape[2]
    return {**c, "q": c["q"].repeat_interleave(rep, 2), "k": c["k"].repeat_interleave(rep, 2)}


# --- (a) float64 references from the recurrences ---------------------------------------------------

def step_loop(family, c, v, S0):
    """Readout (no skip term) of the recurrence of hooks.names in float64, explicit matrices.
    v: [B, T, H, V'] any values (Mamba1: [B, T, D, V'], a V' axis of independent copies)."""
    d = lambda x: x.double()  # noqa: E731
    q, k, dec, scale = d(c["q"]), d(c["k"]), d(c["decay"]), float(c["scale"])
    v = d(v)
    Tn, H, Vn = v.shape[1], v.shape[2], v.shape[-1]
    K = k.shape[-1]
    if family == "mamba1":                                        # h[b, d, n, v']
        S = torch.zeros(v.shape[0], H, K, Vn, dtype=torch.float64) if S0 is None else d(S0)[..., None].expand(-1, -1, -1, Vn)
        out = []
        for t in range(Tn):
            S = dec[:, t, :, :, None].exp() * S + (d(c["beta"][:, t])[:, :, None, None] * k[:, t, None, :, None]
                                                    * v[:, t, :, None, :])
            out.append(torch.einsum("bdnv,bn->bdv", S, q[:, t]))
        return torch.stack(out, 1)
    S = torch.zeros(v.shape[0], H, K, Vn, dtype=torch.float64) if S0 is None else d(S0)
    eye = torch.eye(K, dtype=torch.float64)
    out = []
    for t in range(Tn):
        kt = k[:, t]
        if family == "gdn":
            bt = d(c["beta"][:, t])[..., None, None]
            M = dec[:, t].exp()[..., None, None] * (eye - bt * kt[..., :, None] * kt[..., None, :])
            S = M @ S + bt * kt[..., :, None] * v[:, t, :, None, :]
        elif family == "gla":
            a = dec[:, t].exp()
            a = a[..., None] if a.dim() == 3 else a[..., None, None]
            S = a * S + kt[..., :, None] * v[:, t, :, None, :]
        else:                                                      # mamba2: scalar decay, write strength dt
            S = (dec[:, t].exp()[..., None, None] * S
                 + d(c["beta"][:, t])[..., None, None] * kt[..., :, None] * v[:, t, :, None, :])
        out.append(scale * torch.einsum("bhkv,bhk->bhv", S, q[:, t]))
    return torch.stack(out, 1)


def ref_pattern(family, c):
    """A [B, H, T, T] (Mamba1: [B, D, T, T]) in float64: one value channel per source s carrying a
    one-hot-in-time input, so channel s of the readout at t is A[t, s]."""
    Bn, Tn, H = c["v"].shape[:3]
    onehot = torch.eye(Tn, dtype=torch.float64)[None, :, None, :].expand(Bn, Tn, H, Tn)
    return step_loop(family, c, onehot, None).permute(0, 2, 1, 3)


def ref_init(family, c):
    v = c["v"] if family != "mamba1" else c["v"][..., None]
    o = step_loop(family, c, torch.zeros_like(v), c["initial_state"])
    return o[..., 0] if family == "mamba1" else o


def explicit_M(c, t, s):
    """GDN's M_{t,s} = prod_{r=t..s+1} a_r (I - beta_r k_r k_r^T), multiplied out in float64."""
    k, b, g = c["k"].double(), c["beta"].double(), c["decay"].double()
    K = k.shape[-1]
    M = torch.eye(K, dtype=torch.float64).expand(*k.shape[:1], k.shape[2], K, K)
    for r in range(s + 1, t + 1):
        kr = k[:, r]
        Pr = g[:, r].exp()[..., None, None] * (torch.eye(K, dtype=torch.float64)
                                               - b[:, r, :, None, None] * kr[..., :, None] * kr[..., None, :])
        M = Pr @ M                                                   # later transitions on the left
    return M


FAMS = ["gdn", "gla", "mamba2", "mamba1"]


@pytest.mark.parametrize("family", FAMS)
def test_pattern_equals_float64_step_loop(family):
    c = view(family)
    A = E.pattern(family, c)
    ref = ref_pattern(family, c)
    assert A.dtype == torch.float32 and A.shape == ref.shape
    assert rel(A, ref) < 1e-5
    assert (A.double() - ref).abs().max() / ref.abs().max() < 1e-5
    assert torch.count_nonzero(A.triu(1)) == 0                       # causal
    init = E.init_term(family, c)
    assert rel(init, ref_init(family, c)) < 1e-5
    c64 = {key: (x.double() if torch.is_tensor(x) and x.is_floating_point() else x) for key, x in c.items()}
    assert rel(E.pattern(family, c64), ref) < 1e-12                  # float64 views stay float64


def test_gdn_pattern_equals_explicit_transition_products():
    c = view("gdn", seed=3)
    A = E.pattern("gdn", c).double()
    q, k, b = c["q"].double(), c["k"].double(), c["beta"].double()
    for t, s in [(149, 0), (149, 148), (100, 30), (64, 63), (63, 63), (127, 64)]:
        M = explicit_M(c, t, s)
        want = c["scale"] * b[:, s] * torch.einsum("bhk,bhkl,bhl->bh", q[:, t], M, k[:, s])
        torch.testing.assert_close(A[:, :, t, s], want, atol=1e-6, rtol=1e-5)


def test_gdn_grouped_value_heads():
    c = view("gdn", seed=1, gva=True)
    assert c["q"].shape[2] == 2 and c["v"].shape[2] == 4
    cf = full_heads(c)
    A = E.pattern("gdn", c)
    assert rel(A, ref_pattern("gdn", cf)) < 1e-5
    torch.testing.assert_close(A, E.pattern("gdn", cf), atol=0, rtol=0)
    torch.testing.assert_close(E.readout("gdn", c), R.scan("gdn", cf, initial_state=cf["initial_state"])[0],
                               atol=1e-5, rtol=1e-5)


def test_strong_decay_stays_finite_and_exact():
    c = view("gla", seed=2, strong=True)
    A = E.pattern("gla", c)
    assert torch.isfinite(A).all()
    assert rel(A, ref_pattern("gla", c)) < 1e-5
    assert A[:, :, 20:, :10].abs().max() < 1e-20                      # nothing crosses the -60 decays


@pytest.mark.parametrize("family", FAMS)
def test_readout_equals_scan(family):
    c = view(family, seed=4)
    o, _ = R.scan(family, c, initial_state=c["initial_state"])
    assert rel(E.readout(family, c), o) < 1e-5
    if family == "mamba1":                                           # the decay formed (a rec.decay hook) or not
        _ = c["decay"]
        assert rel(E.readout(family, c), o) < 1e-5


# --- (b) views taken from models -------------------------------------------------------------------

def record_views(hm, x, hooks_=()):
    """Run hm capturing every rec layer's scan inputs and readout: (cache, {layer: (family, view)}), the
    canonical view rebuilt from the cached rec.q/k/v/decay/beta and the layer's constants (scale K^-0.5
    for GDN / GLA as all these models call their kernels, 1 for Mamba; Mamba's D and, for Mamba1's
    scan, A = -exp(A_log); no initial state in a full-sequence forward)."""
    layers = [L for L in hm.layers if L.rec is not None]
    names = [f"blocks.{L.index}.rec.{s}" for L in layers for s in ("q", "k", "v", "decay", "beta", "readout")
             if not (s == "beta" and L.rec_family == "gla")]
    with torch.no_grad():
        _, cache = hm.run_with_cache(x, names=names, hooks=list(hooks_))
    views = {}
    for L in layers:
        fam, p = L.rec_family, f"blocks.{L.index}.rec"
        c = {s: cache[f"{p}.{s}"] for s in ("q", "k", "v", "decay", "beta") if f"{p}.{s}" in cache}
        c.update(scale=c["q"].shape[-1] ** -0.5 if fam in ("gdn", "gla") else 1.0, initial_state=None)
        if fam in ("mamba2", "mamba1"):
            c["D"] = L.rec.D.detach().float()
        if fam == "mamba1":
            c.update(A=-L.rec.A_log.detach().float().exp(), decay_dt=c["beta"])
        views[L.index] = (fam, c)
    return cache, views


def zoo(layout, neg_eig=False, seed=0):
    torch.manual_seed(seed)
    cfg = ZooConfig(vocab_size=40, d_model=32, n_layers=len(layout), layout=layout, n_heads=2, head_dim=16,
                    mamba_head_dim=16, mamba_state=8, gdn_neg_eig=neg_eig)
    m = HybridLM(cfg).eval()
    if neg_eig:                                                       # spread beta over (0, 2)
        with torch.no_grad():
            for mod in m.modules():
                if hasattr(mod, "b_proj"):
                    mod.b_proj.weight.mul_(20)
    return m


HF_V = 64
HF_COMMON = dict(vocab_size=HF_V, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, pad_token_id=0, bos_token_id=None, eos_token_id=1, tie_word_embeddings=False)
HF_GDN = dict(linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8)


def spice(model, seed):
    """O(1) random SSM weights (HF's init leaves the SSM nearly inert), as tests/test_adapters_mamba.py."""
    g = gen(seed + 1000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "A_log":
                p.copy_(torch.empty(p.shape).uniform_(0, math.log(8), generator=g))
            elif leaf == "dt_bias":
                p.copy_(torch.empty(p.shape).uniform_(-4, 1, generator=g))
            elif leaf == "D":
                p.copy_(1 + 0.5 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_((1.0 if "norm" in name else 0.0) + 0.2 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[-1] if "embed" not in name else 4
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))


def hf(kind):
    torch.manual_seed(0)
    if kind == "qwen3_next":                                          # GVA: 2 q/k heads, 4 value heads
        cfg = AutoConfig.for_model("qwen3_next", **HF_COMMON, **HF_GDN, head_dim=8, num_experts=0)
    elif kind == "olmo_hybrid":                                       # beta doubled: (0, 2)
        cfg = AutoConfig.for_model("olmo_hybrid", **HF_COMMON, **HF_GDN, linear_allow_neg_eigval=True)
    elif kind == "mamba2":
        cfg = transformers.Mamba2Config(vocab_size=HF_V, hidden_size=16, num_hidden_layers=2, num_heads=4, head_dim=8,
                                        expand=2, n_groups=2, state_size=8, chunk_size=8, conv_kernel=4,
                                        time_step_limit=(0.0, 3.0))
    elif kind == "mamba":
        cfg = transformers.MambaConfig(vocab_size=HF_V, hidden_size=16, state_size=4, num_hidden_layers=2, expand=2,
                                       conv_kernel=4, time_step_rank=4)
    else:
        cfg = transformers.JambaConfig(vocab_size=HF_V, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, attn_layer_period=2,
                                       attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1,
                                       num_experts=2, num_experts_per_tok=1, mamba_d_state=4, mamba_d_conv=4,
                                       mamba_expand=2, mamba_dt_rank=4)
    m = AutoModelForCausalLM.from_config(cfg).float().eval()
    if kind in ("mamba2", "mamba", "jamba"):
        spice(m, 0)
    if kind == "olmo_hybrid":
        with torch.no_grad():
            for blk in m.model.layers:
                if hasattr(blk, "linear_attn"):
                    blk.linear_attn.b_proj.weight.mul_(20)
    return m


MODELS = {
    "zoo": lambda: zoo(["gdn", "gla", "mamba2", "attn"]),
    "zoo_neg_eig": lambda: zoo(["gdn", "attn"], neg_eig=True, seed=1),
    "qwen3_next": lambda: hf("qwen3_next"),
    "olmo_hybrid": lambda: hf("olmo_hybrid"),
    "mamba2": lambda: hf("mamba2"),
    "mamba": lambda: hf("mamba"),
    "jamba": lambda: hf("jamba"),
}
_built = {}


def model(kind):
    if kind not in _built:
        _built[kind] = MODELS[kind]()
    return _built[kind]


def tokens(kind, n=T):
    V = 40 if kind.startswith("zoo") else HF_V
    return torch.randint(2, V, (B, n), generator=gen(7))


@pytest.mark.parametrize("kind", list(MODELS))
def test_readout_from_pattern_equals_the_layers(kind):
    m = model(kind)
    if kind == "qwen3_next":
        assert m.config.linear_num_key_heads < m.config.linear_num_value_heads       # grouped value heads
    hm = hooks.wrap(m)
    cache, views = record_views(hm, tokens(kind))
    seen = set()
    for i, (fam, c) in views.items():
        seen.add(fam)
        if fam == "gdn":
            assert c["beta"].min() >= 0 and (c["beta"].max() > 1) == (kind in ("zoo_neg_eig", "olmo_hybrid"))
        o = E.readout(fam, c)
        assert rel(o, cache[f"blocks.{i}.rec.readout"]) < 1e-5, (i, fam)
        assert rel(o, R.scan(fam, c, initial_state=c["initial_state"])[0]) < 1e-5, (i, fam)
    want = {"zoo": {"gdn", "gla", "mamba2"}, "zoo_neg_eig": {"gdn"}, "mamba": {"mamba1"}, "jamba": {"mamba1"},
            "mamba2": {"mamba2"}}.get(kind, {"gdn"})
    assert seen == want


# --- (c) knockout of one source token ---------------------------------------------------------------

@pytest.mark.parametrize("kind", ["zoo", "zoo_neg_eig", "qwen3_next", "mamba2", "mamba"])
def test_zeroing_a_column_is_knocking_out_the_value(kind):
    hm = hooks.wrap(model(kind))
    x = tokens(kind)
    _, views = record_views(hm, x)
    for i, (fam, c) in views.items():
        full = E.pattern(fam, c)
        for s in (0, 70, T - 1):
            def zero(v, name, s=s):
                v = v.clone()
                v[:, s] = 0
                return v
            with torch.no_grad():
                _, cache = hm.run_with_cache(x, names=[f"blocks.{i}.rec.readout"], hooks=[(f"blocks.{i}.rec.v", zero)])
            A = full.clone()
            A[..., s] = 0
            v = c["v"].float()
            ko = {**c, "v": zero(c["v"], "")}                      # a plain dict: hooks.effective takes those
            if fam == "mamba1":
                o = torch.einsum("bdts,bsd->btd", A, v)
            else:
                o = torch.einsum("bhts,bshv->bthv", A, v)
            o = o + E.init_term(fam, c) + E.skip_term(fam, ko)
            assert rel(o, cache[f"blocks.{i}.rec.readout"]) < 1e-5, (i, fam, s)


# --- (d) rows= and heads= ---------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMS)
def test_rows_and_heads_are_slices_of_the_full_result(family):
    c = view(family, seed=5)
    A = E.pattern(family, c)
    rows = [149, 0, 63, 64, 100, 64, 128]
    torch.testing.assert_close(E.pattern(family, c, rows=rows), A[:, :, rows], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(E.pattern(family, c, rows=torch.tensor([5])), A[:, :, [5]], atol=1e-6, rtol=1e-5)
    heads = [2, 0]
    torch.testing.assert_close(E.pattern(family, c, rows=rows, heads=heads), A[:, heads][:, :, rows],
                               atol=1e-6, rtol=1e-5)
    init = E.init_term(family, c)
    torch.testing.assert_close(E.init_term(family, c, rows=rows), init[:, rows], atol=1e-6, rtol=1e-5)
    con = E.contributions(family, c, rows)
    if family == "mamba1":
        want = A[:, :, rows].permute(0, 2, 3, 1) * c["v"].float()[:, None]
    else:
        want = torch.einsum("bhps,bshv->bpshv", A[:, :, rows], c["v"].float())
    torch.testing.assert_close(con, want, atol=1e-6, rtol=1e-5)
    o = R.scan(family, c, initial_state=c["initial_state"])[0]
    rebuilt = con.sum(2) + E.init_term(family, c, rows) + E.skip_term(family, c, rows)
    assert rel(rebuilt, o[:, rows]) < 1e-5
    norms = E.contribution_norms(family, c, rows=rows)
    if family == "mamba1":                                           # the reduced view: norm over channels
        torch.testing.assert_close(norms, con.norm(dim=-1), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(E.contribution_norms(family, c, rows=rows, block=4), norms, atol=1e-6, rtol=1e-5)
    else:
        torch.testing.assert_close(norms, con.norm(dim=-1).permute(0, 3, 1, 2), atol=1e-6, rtol=1e-5)


def test_no_initial_state_and_no_skip_give_zeros():
    c = view("gla", init=False)
    assert c["initial_state"] is None
    assert E.init_term("gla", c).abs().max() == 0 and E.skip_term("gla", c).abs().max() == 0
    assert rel(E.readout("gla", c), R.scan("gla", c)[0]) < 1e-5


def test_unknown_family_and_bad_rows():
    with pytest.raises(ValueError, match="unknown recurrence family"):
        E.pattern("rwkv", view("gla"))
    with pytest.raises(ValueError, match="positions must lie"):
        E.pattern("gla", view("gla"), rows=[T])


# --- (e) the memory guard ---------------------------------------------------------------------------

def test_memory_guard_names_the_size():
    c = dict(q=torch.empty(1, 100_000, 8, 64, device="meta"), k=torch.empty(1, 100_000, 8, 64, device="meta"),
             v=torch.empty(1, 100_000, 8, 64, device="meta"), decay=torch.empty(1, 100_000, 8, device="meta"),
             scale=0.125, initial_state=None)
    n = 1 * 8 * 100_000 * 100_000 * 4
    assert E.pattern_bytes("gla", c) == n
    with pytest.raises(ValueError, match=rf"\[1, 8, 100000, 100000\].*{n / 2**30:.2f} GiB.*positions="):
        E.pattern("gla", c)
    with pytest.raises(ValueError, match="contributions"):
        E.contributions("gla", c, rows=list(range(20)))
    assert E.check_memory("gla", c, rows=[0, 1]) == 1 * 8 * 2 * 100_000 * 4
    small = view("gla")
    with pytest.raises(ValueError, match="GiB"):
        E.pattern("gla", small, budget=1000)
    assert E.pattern("gla", small, budget=None).shape == (B, 4, T, T)
