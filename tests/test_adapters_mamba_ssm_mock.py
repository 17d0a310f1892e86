"""hooks.adapters.mamba_ssm on CPU, on a stand-in for mamba-ssm's MambaLMHeadModel.

mamba-ssm needs CUDA, so its modules are mimicked here: classes with mamba-ssm's module paths and
names, forwards that call the kernel functions by the same global names and with the same
arguments as mamba-ssm's sources (``selective_scan_fn`` from mamba_simple.Mamba's unfused path,
``mamba_chunk_scan_combined`` from mamba2.Mamba2, ``F.scaled_dot_product_attention`` from mha.MHA,
and the "Add -> LN -> Mixer" Block), with float32 reference kernels. This checks the adapter's
plumbing (residual stand-ins, dispatch, argument conversion, state layouts); the real kernels are
checked by tests/gpu/check_models_gpu.py."""
import math
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import hooks
from hooks.adapters.mamba_ssm import MambaSSMAdapter
from hooks.scan import mamba1 as m1
from hooks.scan import mamba2 as m2

SRC = {
    "mamba_ssm.ops.selective_scan_interface": '''
import torch, torch.nn.functional as F
from hooks.scan import mamba1 as m1
def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    y, last = m1.naive(u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), D,
                       output_final_state=True)
    y = y.transpose(1, 2)
    if z is not None:
        y = y * F.silu(z)
    return (y, last) if return_last_state else y
fused_scan = selective_scan_fn  # stands in for mamba_inner_fn: same numbers, not interceptable
''',
    "mamba_ssm.ops.triton.ssd_combined": '''
import torch, torch.nn.functional as F
from hooks.scan import mamba2 as m2
def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                              seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, float("inf")),
                              return_final_states=False, return_varlen_states=False):
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = F.softplus(dt)
    y, h = m2.naive(x, dt, A, B, C, D, output_final_state=True)
    if z is not None:
        y = y * F.silu(z)
    return (y, h.transpose(-1, -2)) if return_final_states else y      # mamba-ssm keeps [B, H, P, N]
fused_ssd = mamba_chunk_scan_combined  # stands in for mamba_split_conv1d_scan_combined
''',
    "mamba_ssm.modules.mamba_simple": '''
import torch, torch.nn as nn, torch.nn.functional as F
class Mamba(nn.Module):
    def __init__(self, d_model, d_state=4, d_conv=4, expand=2, layer_idx=None):
        super().__init__()
        self.d_inner, self.d_state, self.dt_rank, self.d_conv = expand * d_model, d_state, 4, d_conv
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner)
        self.A_log = nn.Parameter(torch.rand(self.d_inner, d_state) * 2)
        self.D = nn.Parameter(torch.randn(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.use_fast_path, self.layer_idx, self.act = True, layer_idx, nn.SiLU()
    def forward(self, hidden_states, inference_params=None):
        batch, seqlen, dim = hidden_states.shape
        xz = (self.in_proj.weight @ hidden_states.reshape(-1, dim).T).reshape(-1, batch, seqlen).transpose(0, 1)
        A = -torch.exp(self.A_log.float())
        fused = self.use_fast_path and inference_params is None
        self.fused_calls = getattr(self, "fused_calls", 0) + fused
        x, z = xz.chunk(2, dim=1)
        x = self.act(self.conv1d(x)[..., :seqlen])
        x_dbl = self.x_proj(x.transpose(1, 2).reshape(batch * seqlen, -1))
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (self.dt_proj.weight @ dt.t()).reshape(-1, batch, seqlen).transpose(0, 1)
        B = B.reshape(batch, seqlen, -1).transpose(1, 2).contiguous()
        C = C.reshape(batch, seqlen, -1).transpose(1, 2).contiguous()
        ssm_state = None if inference_params is None else inference_params.states.setdefault(self.layer_idx, [None])
        y = (fused_scan if fused else selective_scan_fn)(x, dt, A, B, C, self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(),
                              delta_softplus=True, return_last_state=ssm_state is not None)
        if ssm_state is not None:
            y, ssm_state[0] = y
        return self.out_proj(y.transpose(1, 2))
''',
    "mamba_ssm.modules.mamba2": '''
import torch, torch.nn as nn, torch.nn.functional as F
class Mamba2(nn.Module):
    def __init__(self, d_model, d_state=8, headdim=8, ngroups=1, expand=2, layer_idx=None, rmsnorm=False):
        super().__init__()
        self.d_ssm = expand * d_model
        self.nheads, self.headdim, self.ngroups, self.d_state = self.d_ssm // headdim, headdim, ngroups, d_state
        self.in_proj = nn.Linear(d_model, 2 * self.d_ssm + 2 * ngroups * d_state + self.nheads, bias=False)
        cd = self.d_ssm + 2 * ngroups * d_state
        self.conv1d = nn.Conv1d(cd, cd, 4, groups=cd, padding=3)
        self.dt_bias = nn.Parameter(torch.rand(self.nheads) * 3 - 3)
        self.A_log = nn.Parameter(torch.rand(self.nheads) * 2)
        self.D = nn.Parameter(torch.randn(self.nheads))
        self.out_proj = nn.Linear(self.d_ssm, d_model, bias=False)
        self.use_mem_eff_path, self.layer_idx, self.rmsnorm, self.chunk_size = True, layer_idx, rmsnorm, 8
        self.dt_limit = (0.0, float("inf"))
    def forward(self, u, seqlen=None, seq_idx=None, cu_seqlens=None, inference_params=None):
        batch, seqlen, dim = u.shape
        zxbcdt = self.in_proj(u)
        A = -torch.exp(self.A_log.float())
        fused = self.use_mem_eff_path and inference_params is None
        self.fused_calls = getattr(self, "fused_calls", 0) + fused
        z, xBC, dt = torch.split(zxbcdt, [self.d_ssm, self.d_ssm + 2 * self.ngroups * self.d_state, self.nheads], -1)
        xBC = F.silu(self.conv1d(xBC.transpose(1, 2)).transpose(1, 2)[:, :-3])
        x, B, C = torch.split(xBC, [self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        ssm_state = None if inference_params is None else inference_params.states.setdefault(self.layer_idx, [None])
        y = (fused_ssd if fused else mamba_chunk_scan_combined)(
            x.reshape(batch, seqlen, self.nheads, self.headdim), dt, A,
            B.reshape(batch, seqlen, self.ngroups, -1), C.reshape(batch, seqlen, self.ngroups, -1),
            chunk_size=self.chunk_size, D=self.D, z=z.reshape(batch, seqlen, self.nheads, self.headdim),
            dt_bias=self.dt_bias, dt_softplus=True, seq_idx=seq_idx, cu_seqlens=cu_seqlens,
            return_final_states=ssm_state is not None, return_varlen_states=False)
        if ssm_state is not None:
            y, ssm_state[0] = y
        return self.out_proj(y.reshape(batch, seqlen, -1))
''',
    "mamba_ssm.modules.mha": '''
import torch, torch.nn as nn, torch.nn.functional as F
class MHA(nn.Module):
    def __init__(self, embed_dim, num_heads, num_heads_kv=None, causal=True, layer_idx=None):
        super().__init__()
        self.num_heads, self.num_heads_kv = num_heads, num_heads_kv or num_heads
        self.head_dim, self.causal, self.softmax_scale, self.layer_idx = embed_dim // num_heads, causal, None, layer_idx
        self.in_proj = nn.Linear(embed_dim, (num_heads + 2 * self.num_heads_kv) * self.head_dim)
        self.out_proj = nn.Linear(num_heads * self.head_dim, embed_dim)
    def forward(self, x, inference_params=None):
        qkv = self.in_proj(x)
        q, kv = qkv.split([self.num_heads * self.head_dim, self.num_heads_kv * 2 * self.head_dim], dim=-1)
        q = q.reshape(*q.shape[:2], -1, self.head_dim)
        k, v = kv.reshape(*kv.shape[:2], 2, -1, self.head_dim).unbind(dim=-3)
        k = torch.repeat_interleave(k, dim=2, repeats=self.num_heads // self.num_heads_kv)
        v = torch.repeat_interleave(v, dim=2, repeats=self.num_heads // self.num_heads_kv)
        context = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 is_causal=self.causal, scale=self.softmax_scale).transpose(1, 2)
        return self.out_proj(context.reshape(*context.shape[:2], -1))
''',
    "mamba_ssm.models.mixer_seq_simple": '''
import torch, torch.nn as nn
from collections import namedtuple
class Block(nn.Module):
    def __init__(self, dim, mixer, mlp=None, residual_in_fp32=True):
        super().__init__()
        self.norm, self.mixer, self.residual_in_fp32 = nn.LayerNorm(dim), mixer, residual_in_fp32
        self.mlp = mlp
        if mlp is not None:
            self.norm2 = nn.LayerNorm(dim)
    def forward(self, hidden_states, residual=None, inference_params=None, **mixer_kwargs):
        residual = (hidden_states + residual) if residual is not None else hidden_states
        hidden_states = self.norm(residual.to(dtype=self.norm.weight.dtype))
        if self.residual_in_fp32:
            residual = residual.to(torch.float32)
        hidden_states = self.mixer(hidden_states, inference_params=inference_params, **mixer_kwargs)
        if self.mlp is not None:
            residual = hidden_states + residual
            hidden_states = self.norm2(residual.to(dtype=self.norm2.weight.dtype))
            hidden_states = self.mlp(hidden_states)
        return hidden_states, residual
class MixerModel(nn.Module):
    def __init__(self, layers, d, V):
        super().__init__()
        self.embedding, self.layers, self.norm_f = nn.Embedding(V, d), nn.ModuleList(layers), nn.LayerNorm(d)
    def forward(self, input_ids, inference_params=None, **mixer_kwargs):
        hidden_states = self.embedding(input_ids)
        residual = None
        for layer in self.layers:
            hidden_states, residual = layer(hidden_states, residual, inference_params=inference_params, **mixer_kwargs)
        residual = (hidden_states + residual) if residual is not None else hidden_states
        return self.norm_f(residual.to(dtype=self.norm_f.weight.dtype))
class MambaLMHeadModel(nn.Module):
    def __init__(self, layers, d, V):
        super().__init__()
        self.backbone, self.lm_head = MixerModel(layers, d, V), nn.Linear(d, V, bias=False)
    def forward(self, input_ids, position_ids=None, inference_params=None, num_last_tokens=0, **mixer_kwargs):
        hidden_states = self.backbone(input_ids, inference_params=inference_params, **mixer_kwargs)
        return namedtuple("CausalLMOutput", ["logits"])(logits=self.lm_head(hidden_states))
'''}

V, D = 32, 16


def load():
    """The stand-in modules; kernel functions are module globals of the layers, as in mamba-ssm."""
    mods = {}
    for name, src in SRC.items():
        mod = types.ModuleType(name)
        for k in ("mamba_ssm.ops.selective_scan_interface", "mamba_ssm.ops.triton.ssd_combined"):
            if k in mods:
                mod.__dict__.update({n: v for n, v in vars(mods[k]).items() if callable(v) and not n.startswith("_")})
        exec(compile(src, f"<{name}>", "exec"), mod.__dict__)
        mods[name] = mod
    return mods


@pytest.fixture(scope="module")
def M():
    return load()


def build(M, mlp=False, seed=0):
    torch.manual_seed(seed)
    S, M2, A = (M["mamba_ssm.modules.mamba_simple"].Mamba, M["mamba_ssm.modules.mamba2"].Mamba2,
                M["mamba_ssm.modules.mha"].MHA)
    Blk, LM = M["mamba_ssm.models.mixer_seq_simple"].Block, M["mamba_ssm.models.mixer_seq_simple"].MambaLMHeadModel
    mk = (lambda: nn.Sequential(nn.Linear(D, 24), nn.SiLU(), nn.Linear(24, D))) if mlp else (lambda: None)
    layers = [Blk(D, S(D, layer_idx=0), mk()), Blk(D, A(D, 4, 2, layer_idx=1), mk()), Blk(D, M2(D, layer_idx=2), mk())]
    m = LM(layers, D, V).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape) / math.sqrt(p[0].numel()))
    return m


def plain(m, x):
    return m(x).logits


def toks(T=13, B=2, seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def clean(m):
    for mod in m.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks and "forward" not in vars(mod)
    for blk in m.backbone.layers:
        assert getattr(blk.mixer, "use_fast_path", True) and getattr(blk.mixer, "use_mem_eff_path", True)


@pytest.mark.parametrize("mlp", [False, True])
def test_capture_states_and_residuals(M, mlp):
    m = build(M, mlp)
    hm = hooks.wrap(m)
    assert isinstance(hm.adapter, MambaSSMAdapter)
    assert [(L.rec_family, L.attn is not None) for L in hm.layers] == [("mamba1", False), (None, True), ("mamba2", False)]
    x = toks()
    mixers = [blk.mixer for blk in m.backbone.layers]
    with torch.no_grad():
        ref = plain(m, x)
        fused = [getattr(mx, "fused_calls", 0) for mx in mixers]
        lg, c = hm.run_with_cache(x, names=hm.hook_names)
        after_capture = [getattr(mx, "fused_calls", 0) for mx in mixers]
        state = [n for n in hm.hook_names if n.endswith(".rec.state")]
        lg_fn = hm.run_with_hooks(x, hooks=[(n, lambda S, _: S.clone()) for n in state])
    # capture only: each Mamba layer's own (fused) forward gives the output, bit for bit; the unfused path
    # runs beside it for the capture
    assert fused[0] == fused[2] == 1 and after_capture == [2, 0, 2]
    torch.testing.assert_close(lg, ref, atol=0, rtol=0)
    # a hook function on rec names: the unfused path gives the output (no fused call), equal to rounding
    assert [getattr(mx, "fused_calls", 0) for mx in mixers] == after_capture
    torch.testing.assert_close(lg_fn, ref, atol=1e-5, rtol=1e-5)
    clean(m)
    for i in range(3):  # residual bookkeeping through the Add -> LN -> Mixer stand-ins
        p = f"blocks.{i}"
        torch.testing.assert_close(c[f"{p}.resid_mid"], c[f"{p}.resid_pre"] + c[f"{p}.mixer_out"])
        torch.testing.assert_close(c[f"{p}.resid_post"], c[f"{p}.resid_mid"] + c[f"{p}.mlp_out"])
        if i:
            torch.testing.assert_close(c[f"{p}.resid_pre"], c[f"blocks.{i - 1}.resid_post"])
    torch.testing.assert_close(c["blocks.0.resid_pre"], c["embed"])
    torch.testing.assert_close(m.lm_head(m.backbone.norm_f(c["blocks.2.resid_post"])), lg, atol=1e-5, rtol=1e-5)
    # states: the model's own final states and step loops
    ip = types.SimpleNamespace(states={}, seqlen_offset=0)
    with torch.no_grad():
        m(x, inference_params=ip)
    S1, S2 = c["blocks.0.rec.state"], c["blocks.2.rec.state"]
    torch.testing.assert_close(S1[:, -1], ip.states[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(S2[:, -1], ip.states[2][0].transpose(-1, -2), atol=1e-5, rtol=1e-5)
    p = "blocks.0.rec."
    ref1 = m1.states(c[p + "v"], c[p + "beta"], -torch.exp(m.backbone.layers[0].mixer.A_log), c[p + "k"], c[p + "q"])
    torch.testing.assert_close(S1, ref1, atol=1e-5, rtol=1e-5)
    p = "blocks.2.rec."
    mix = m.backbone.layers[2].mixer
    ref2 = m2.states(c[p + "v"], c[p + "beta"], -torch.exp(mix.A_log), c[p + "k"][:, :, :1], c[p + "q"][:, :, :1])
    torch.testing.assert_close(S2, ref2, atol=1e-5, rtol=1e-5)
    # attention: the pattern is what SDPA computed
    pat, v, o = c["blocks.1.attn.pattern"], c["blocks.1.attn.v"], c["blocks.1.attn.head_out"]
    torch.testing.assert_close(torch.einsum("bhij,bjhd->bihd", pat, v), o, atol=1e-5, rtol=1e-5)


def test_interventions_and_cleanup(M):
    m = build(M)
    hm = hooks.wrap(m)
    x = toks(T=16)
    t = 8
    with torch.no_grad():
        base = plain(m, x)
        for name in ("blocks.0.rec.state", "blocks.2.rec.state"):
            _, co = hm.run_with_cache(x.roll(1, 0), names=[name])

            def put(S, n):
                S = S.clone()
                S[:, t] = co[name][:, t]
                return S
            pt = hm.run_with_hooks(x, hooks=[(name, put)])
            torch.testing.assert_close(pt[:, :t], base[:, :t], atol=1e-5, rtol=1e-5)
            assert (pt[:, t:] - base[:, t:]).abs().amax() > 1e-3
        # a residual change is passed on as (new, 0): equal to adding v to the next block's input
        vec = torch.randn(D)
        a = hm.run_with_hooks(x, hooks=[("blocks.0.resid_post", lambda r, n: r + vec)])
        b = hm.run_with_hooks(x, hooks=[("blocks.1.resid_pre", lambda r, n: r + vec)])
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        assert (a - base).abs().max() > 1e-3
        abl = hm.run_with_hooks(x, hooks=[("blocks.1.attn.head_out", lambda o, n: torch.zeros_like(o))])
        assert (abl - base).abs().max() > 1e-3

    def boom(t_, n):
        raise RuntimeError("boom")
    for name in ("blocks.0.rec.k", "blocks.2.rec.state", "blocks.1.attn.pattern", "blocks.1.resid_pre"):
        with pytest.raises(RuntimeError, match="boom"):
            hm.run_with_hooks(x, hooks=[(name, boom)])
        clean(m)
    ip = types.SimpleNamespace(states={}, seqlen_offset=3)
    with pytest.raises(NotImplementedError, match="inference_params"):
        with hm.hooks(cache_names=["blocks.2.rec.state"], cache={}):
            m(x, inference_params=ip)
    clean(m)
