"""hooks.adapters.fla_models on CPU in the project venv (no triton): fla's own DeltaNet, KimiDeltaAttention and
HGRN2Attention layer code with torch stand-ins for their Triton pieces.

fla's layer modules import Triton kernels, so each layer's source file (``fla/layers/{delta_net,kda,hgrn2}.py``
of the installed fla, unchanged) is executed here with its imports of ``fla.modules``, ``fla.ops.*`` and
``fla.layers.utils`` answered by torch stand-ins: the recurrent kernels are fla's own pure-torch references
(``fla/ops/{delta_rule,kda,gla}/naive.py``, loaded by path) behind fla's kernel signatures (the in-kernel KDA
gate, beta sigmoid, q/k l2 norm, ``state_v_first``), the convolutions / norms are torch modules. The layers sit
in a minimal block / model with fla's block layout (``attn_norm -> attn -> + -> mlp_norm -> mlp -> +``) and
fla's module paths. This checks the adapter's plumbing (dispatch of the kernel globals, argument conversion,
state layouts, GVA, clean-up) where CI runs; fla's real kernels are checked by
tests/test_adapters_fla_classes_interp.py (Triton interpreter) and tests/gpu/check_models_gpu.py (GPU).
"""
import functools
import importlib.util
import sys
import types
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import hf_tiny as H  # tests/hf_tiny.py, a sibling of this file
import hooks

_SPEC = importlib.util.find_spec("fla")
pytestmark = pytest.mark.skipif(_SPEC is None, reason="needs fla's source files (fla installed)")
FLA = Path(_SPEC.submodule_search_locations[0]) if _SPEC else None
V, T = 64, 9
REC = ("q", "k", "v", "decay", "beta", "state", "readout")


@functools.lru_cache(maxsize=None)
def _load(rel, name):
    spec = importlib.util.spec_from_file_location(name, FLA / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --- torch stand-ins for fla's Triton pieces ---------------------------------------------------------------

class ShortConvolution(nn.Conv1d):
    """Depthwise causal conv1d (+ SiLU); its cache is the last kernel_size - 1 inputs ``[B, D, W - 1]``."""

    def __init__(self, hidden_size, kernel_size, bias=False, activation="silu", **kw):
        super().__init__(hidden_size, hidden_size, kernel_size, groups=hidden_size, bias=bias)
        self.activation = activation

    def forward(self, x, cache=None, output_final_state=False, cu_seqlens=None, **kw):
        assert cu_seqlens is None
        W, n = self.kernel_size[0], x.shape[1]
        xt = x.transpose(1, 2)
        xt = torch.cat([cache if cache is not None else xt.new_zeros(*xt.shape[:2], W - 1), xt], -1)
        y = super().forward(xt).transpose(1, 2)[:, -n:]
        return (F.silu(y) if self.activation else y), (xt[..., -(W - 1):] if output_final_state else None)


class RMSNorm(nn.Module):
    def __init__(self, hidden_size, elementwise_affine=True, bias=False, eps=1e-5, dtype=None, **kw):
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(hidden_size)), None, eps

    def forward(self, x):
        return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps) * self.weight).to(x.dtype)


class FusedRMSNormGated(RMSNorm):
    def __init__(self, hidden_size, elementwise_affine=True, eps=1e-5, activation="swish", **kw):
        super().__init__(hidden_size, eps=eps)
        self.act = torch.sigmoid if activation == "sigmoid" else F.silu

    def forward(self, x, g):
        return super().forward(x) * self.act(g)


def rms_norm_linear(x, weight, bias, lin_weight, lin_bias):
    x = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5) * weight
    return F.linear(x, lin_weight, lin_bias)


def _l2(x):
    return F.normalize(x.float(), p=2, dim=-1, eps=1e-6)


def _flip(S, on):
    return S.transpose(-1, -2) if (on and S is not None) else S


def _delta_rule(q, k, v, beta=None, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
                use_qk_l2norm_in_kernel=False, **kw):
    """fla's chunk_delta_rule / fused_recurrent_delta_rule on fla's naive delta_rule_recurrence."""
    assert cu_seqlens is None and scale is None
    naive = _load("ops/delta_rule/naive.py", "fla_naive_delta_rule_standin")
    if use_qk_l2norm_in_kernel:
        q, k = _l2(q), _l2(k)
    beta = torch.ones_like(q[..., 0]) if beta is None else beta
    tr = lambda x: x.transpose(1, 2).float()  # noqa: E731  [B, H, T, ...]
    o, S = naive.delta_rule_recurrence(tr(q), tr(k), tr(v), tr(beta), initial_state, output_final_state)
    return o.transpose(1, 2).to(v.dtype), S


def _kda(q, k, v, g, beta, A_log=None, dt_bias=None, scale=None, initial_state=None, output_final_state=False,
         use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False, use_beta_sigmoid_in_kernel=False,
         allow_neg_eigval=False, lower_bound=None, state_v_first=False, cu_seqlens=None, **kw):
    """fla's chunk_kda / fused_recurrent_kda on fla's naive_recurrent_kda (the gate as fla's naive_kda_gate /
    naive_kda_lowerbound_gate, fla/ops/kda/gate.py)."""
    assert cu_seqlens is None
    naive = _load("ops/kda/naive.py", "fla_naive_kda_standin")
    if use_qk_l2norm_in_kernel:
        q, k = _l2(q), _l2(k)
    if use_gate_in_kernel:
        HV = g.shape[-2]
        x = g.float() + dt_bias.view(HV, -1)
        g = (lower_bound * torch.sigmoid(A_log.view(HV, 1).exp() * x) if lower_bound is not None
             else -A_log.view(HV, 1).float().exp() * F.softplus(x))
    if use_beta_sigmoid_in_kernel:
        beta = beta.float().sigmoid() * (2.0 if allow_neg_eigval else 1.0)
    o, S = naive.naive_recurrent_kda(q.float(), k.float(), v.float(), g.float(), beta.float(), scale,
                                     _flip(initial_state, state_v_first), output_final_state)
    return o.to(v.dtype), _flip(S, state_v_first)


def _gla(q, k, v, g=None, gk=None, scale=None, initial_state=None, output_final_state=False, state_v_first=False,
         cu_seqlens=None, **kw):
    """fla's chunk_gla / fused_recurrent_gla on fla's naive_recurrent_gla."""
    assert cu_seqlens is None and scale is None
    naive = _load("ops/gla/naive.py", "fla_naive_gla_standin")
    o, S = naive.naive_recurrent_gla(q, k, v, g if g is not None else gk, _flip(initial_state, state_v_first),
                                     output_final_state)
    return o.to(v.dtype), _flip(S, state_v_first)


def _layer_utils():
    def get_layer_cache(layer, past):
        return past.get(layer.layer_idx) if past is not None else None

    def update_layer_cache(layer, past, **state):
        if past is not None:
            past[layer.layer_idx] = state

    def unpad_hidden_states(h, cu_seqlens, attention_mask, q_len):
        assert attention_mask is None
        return h, None, cu_seqlens
    return dict(get_layer_cache=get_layer_cache, update_layer_cache=update_layer_cache,
                unpad_hidden_states=unpad_hidden_states, repad_hidden_states=lambda o, idx, b, t: o)


STUBS = {
    "fla.layers.utils": _layer_utils(),
    "fla.modules": dict(ShortConvolution=ShortConvolution, RMSNorm=RMSNorm, FusedRMSNormGated=FusedRMSNormGated),
    "fla.modules.activations": dict(swish=F.silu, elu_p1=lambda x: F.elu(x) + 1),
    "fla.modules.layernorm": dict(rms_norm_linear=rms_norm_linear),
    "fla.ops.delta_rule": dict(chunk_delta_rule=_delta_rule, fused_recurrent_delta_rule=_delta_rule),
    "fla.ops.kda": dict(chunk_kda=_kda, fused_recurrent_kda=_kda),
    "fla.ops.gla": dict(chunk_gla=_gla, fused_recurrent_gla=_gla, fused_chunk_gla=_gla),
}


@contextmanager
def _stub_modules():
    """sys.modules answers fla's imports with the stand-ins while a layer file runs; restored after."""
    saved = {n: sys.modules.get(n) for n in ("fla", "fla.layers", "fla.ops", *STUBS)}
    try:
        for name in ("fla", "fla.layers", "fla.ops"):
            sys.modules[name] = types.ModuleType(name)
        for name, attrs in STUBS.items():
            mod = sys.modules[name] = types.ModuleType(name)
            vars(mod).update(attrs)
        yield
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


_SAVED = {}  # sys.modules entries this file replaced: restored when its tests end


def _register(mod):
    """Register ``mod`` in sys.modules for this file's tests (hf_tiny.snapshot looks modules up there)."""
    _SAVED.setdefault(mod.__name__, sys.modules.get(mod.__name__))
    sys.modules[mod.__name__] = mod
    return mod


@pytest.fixture(scope="module", autouse=True)
def _restore_modules():
    yield
    for n, m in _SAVED.items():
        if m is None:
            sys.modules.pop(n, None)
        else:
            sys.modules[n] = m
    _SAVED.clear()
    _MODELS.clear()


def fla_layer_module(stem):
    """fla's ``fla/layers/<stem>.py``, run as the module ``fla.layers.<stem>`` (registered while this file's
    tests run)."""
    if f"fla.layers.{stem}" in _SAVED:
        return sys.modules[f"fla.layers.{stem}"]
    mod = types.ModuleType(f"fla.layers.{stem}")
    mod.__file__ = str(FLA / "layers" / f"{stem}.py")
    with _stub_modules():
        exec(compile(Path(mod.__file__).read_text(), mod.__file__, "exec"), vars(mod))
    return _register(mod)


# --- a minimal fla model around the layers -------------------------------------------------------------------

class Block(nn.Module):
    def __init__(self, attn, d):
        super().__init__()
        self.attn_norm, self.attn, self.mlp_norm = nn.RMSNorm(d), attn, nn.RMSNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.SiLU(), nn.Linear(2 * d, d))

    def forward(self, h, past_key_values=None, use_cache=False):
        h = h + self.attn(hidden_states=self.attn_norm(h), past_key_values=past_key_values, use_cache=use_cache)[0]
        return h + self.mlp(self.mlp_norm(h))


class Model(nn.Module):
    def __init__(self, layers, d):
        super().__init__()
        self.embeddings, self.layers, self.norm = nn.Embedding(V, d), nn.ModuleList(layers), nn.RMSNorm(d)


class ForCausalLM(nn.Module):
    """fla's layout: ``model.embeddings``, ``model.layers``, ``model.norm``, ``lm_head``; output with
    ``logits`` and ``past_key_values`` ({layer: {'recurrent_state': ...}})."""

    def __init__(self, layers, d=32):
        super().__init__()
        self.model, self.lm_head = Model([Block(a, d) for a in layers], d), nn.Linear(d, V, bias=False)

    def get_input_embeddings(self):
        return self.model.embeddings

    def forward(self, input_ids, use_cache=False, past_key_values=None, **kw):
        past = ({} if use_cache else None) if past_key_values is None else past_key_values
        h = self.model.embeddings(input_ids)
        for blk in self.model.layers:
            h = blk(h, past_key_values=past, use_cache=use_cache)
        return types.SimpleNamespace(logits=self.lm_head(self.model.norm(h)), past_key_values=past)


ForCausalLM.__module__ = "fla.models.standin.modeling_standin"  # fla's model classes are matched by module path

_MODELS = {}


def make(kind):
    if kind not in _MODELS:
        if ForCausalLM.__module__ not in _SAVED:
            _register(types.ModuleType(ForCausalLM.__module__))
        torch.manual_seed(0)
        d = 32
        if kind == "deltanet":
            L = fla_layer_module("delta_net")
            layers = [L.DeltaNet(hidden_size=d, num_heads=2, layer_idx=i) for i in range(2)]
        elif kind == "deltanet_neg":
            L = fla_layer_module("delta_net")
            layers = [L.DeltaNet(hidden_size=d, num_heads=2, allow_neg_eigval=True, qk_norm="sum", qk_activation="relu",
                                 layer_idx=i) for i in range(2)]
        elif kind in ("kda", "kda_lb"):
            L = fla_layer_module("kda")
            kw = dict(num_v_heads=4, head_dim=8) if kind == "kda" else dict(head_dim=16, safe_gate=True, lower_bound=-5.0)
            layers = [L.KimiDeltaAttention(hidden_size=d, num_heads=2, layer_idx=i, **kw) for i in range(2)]
        else:
            L = fla_layer_module("hgrn2")
            layers = [L.HGRN2Attention(hidden_size=d, expand_ratio=16, layer_idx=i) for i in range(2)]
        m = ForCausalLM(layers, d)
        H.unit_scale_weights(m)  # O(1) weights: every path matters to the logits
        with torch.no_grad():
            for blk in m.model.layers:
                for n in ("A_log", "dt_bias"):
                    if hasattr(blk.attn, n):
                        getattr(blk.attn, n).uniform_(-1, 1)
        _MODELS[kind] = m.float().eval()
    return _MODELS[kind]


KINDS = ("deltanet", "deltanet_neg", "kda", "kda_lb", "hgrn2")


def own_state(layer, S):
    return S.float() if type(layer).__name__ == "DeltaNet" else S.float().transpose(-1, -2)


def step_loop(q, k, v, g, beta, S=None):
    """float64 states S_t [B, T, H, K, V] and readouts of the delta rule (beta None: GLA's S_t = a_t S_{t-1} +
    k_t v_t^T), a_t = exp(g_t) per head or per key dim, o_t = S_t^T q_t / sqrt(K)."""
    q, k, v, g = (t.double() for t in (q, k, v, g))
    B, n, Hh, K = k.shape
    S = torch.zeros(B, Hh, K, v.shape[-1], dtype=torch.float64) if S is None else S.double()
    Ss, os_ = [], []
    for t in range(n):
        a = g[:, t].exp()
        S = S * (a[..., None] if a.dim() == 3 else a[..., None, None])
        w = v[:, t] if beta is None else beta[:, t].double()[..., None] * (
            v[:, t] - torch.einsum("bhkv,bhk->bhv", S, k[:, t]))
        S = S + k[:, t, :, :, None] * w[:, :, None, :]
        Ss.append(S)
        os_.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t]) * K ** -0.5)
    return torch.stack(Ss, 1), torch.stack(os_, 1)


@pytest.mark.parametrize("kind", KINDS)
def test_capture_keeps_logits_and_states_equal_loop_and_cache(kind):
    m = make(kind)
    x = H.toks(V, n=T)
    hm = hooks.wrap(m)
    assert type(hm.adapter).__name__ == "FLAModelAdapter"
    assert [L.rec_family for L in hm.layers] == [{"deltanet": "gdn", "deltanet_neg": "gdn", "hgrn2": "gla"}.get(
        kind, "kda")] * 2
    c, ref = H.assert_capture_everything_keeps_logits(hm, x)
    with torch.no_grad():
        own = m(input_ids=x, use_cache=True).past_key_values
    for i in (0, 1):
        p, layer = f"blocks.{i}.rec", m.model.layers[i].attn
        beta = c.get(f"{p}.beta")
        S_ref, o_ref = step_loop(*(c[f"{p}.{s}"] for s in ("q", "k", "v", "decay")), beta)
        torch.testing.assert_close(c[f"{p}.state"].double(), S_ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(c[f"{p}.readout"].double(), o_ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(c[f"{p}.state"][:, -1], own_state(layer, own[i]["recurrent_state"]),
                                   atol=1e-5, rtol=1e-5)
        if kind.startswith("deltanet"):
            assert c[f"{p}.decay"].abs().max() == 0 and (beta.max() > 1) == kind.endswith("neg")
        if kind == "kda":
            assert c[f"{p}.q"].shape == (2, T, 4, 8)  # q / k repeated to the 4 value heads
        if kind == "hgrn2":
            assert beta is None and f"{p}.beta" not in hm.hook_names
            torch.testing.assert_close(c[f"{p}.k"], 1 - c[f"{p}.decay"].exp())


@pytest.mark.parametrize("kind", ("deltanet", "kda", "hgrn2"))
def test_state_patch_continues_and_decode_step(kind):
    """S_t := another prompt's state: the later states are the loop from it, logits before t bit-identical; one
    decode step from the model's cache continues the state (the cache's layout converted both ways)."""
    from hooks.cache import Cache
    m = make(kind)
    x = H.toks(V, n=T)
    hm = hooks.wrap(m)
    p, t = "blocks.1.rec", 4
    ins = [s for s in ("q", "k", "v", "decay", "beta") if f"{p}.{s}" in hm.hook_names]
    with torch.no_grad():
        ref = m(input_ids=x).logits
        other = hm.run_with_cache(H.toks(V, n=T, seed=1), names=[f"{p}.state"])[1][f"{p}.state"]
        out, c = hm.run_with_cache(x, names=[f"{p}.{s}" for s in ins + ["state"]],
                                   hooks=[(f"{p}.state", H.put_state(other, t))])
        pkv = m(input_ids=x[:, :-1], use_cache=True).past_key_values
        cache = Cache()
        with hm.hooks(cache_names=[f"{p}.state"], cache=cache):
            step = m(input_ids=x[:, -1:], use_cache=True, past_key_values=pkv).past_key_values
        full = hm.run_with_cache(x, names=[f"{p}.state"])[1][f"{p}.state"]
    S_ref, _ = step_loop(*(c[f"{p}.{s}"][:, t + 1:] for s in ("q", "k", "v", "decay")),
                         c[f"{p}.beta"][:, t + 1:] if "beta" in ins else None, S=other[:, t])
    torch.testing.assert_close(c[f"{p}.state"][:, t + 1:].double(), S_ref, atol=1e-5, rtol=1e-4)
    assert torch.equal(out[:, :t], ref[:, :t]) and (out[:, t:] - ref[:, t:]).abs().amax(-1).min() > 1e-6
    torch.testing.assert_close(cache[f"{p}.state"][:, 0], full[:, -1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache[f"{p}.state"][:, 0], own_state(m.model.layers[1].attn, step[1]["recurrent_state"]),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ("deltanet", "kda"))
def test_raising_hooks_leave_nothing_behind(kind):
    m = make(kind)
    x = H.toks(V, n=T)
    hm = hooks.wrap(m)
    g = type(m.model.layers[0].attn).forward.__globals__
    kernels = {n: g[n] for n in g if n.startswith(("chunk_", "fused_recurrent_"))}
    assert len(kernels) == 2
    ref, snap = m(input_ids=x).logits, H.snapshot(m)
    names = ["blocks.0.rec.decay", "blocks.1.rec.state", "blocks.0.rec.readout", "blocks.1.mixer_out"]
    for name in names:
        with pytest.raises(RuntimeError, match="boom"), torch.no_grad():
            hm.run_with_cache(x, names=hm.hook_names, hooks=[(name, H.boom)])
        H.assert_clean(m, snap)
        assert all(g[n] is f for n, f in kernels.items())  # the kernel globals are fla's again
    def fail(mod, a):
        raise ValueError("inside the model")
    h = m.model.layers[1].mlp.register_forward_pre_hook(fail)  # a failure inside the model with every hook on
    try:
        with pytest.raises(ValueError, match="inside the model"), torch.no_grad():
            hm.run_with_cache(x, names=hm.hook_names)
    finally:
        h.remove()
    H.assert_clean(m, snap)
    assert all(g[n] is f for n, f in kernels.items())
    with torch.no_grad():
        assert torch.equal(m(input_ids=x).logits, ref)


@pytest.mark.parametrize("kind", ("deltanet", "kda", "hgrn2"))
def test_head_results(kind):
    """DeltaNet / KDA: per-head results (o_proj's columns of each head) sum to mixer_out; HGRN2 (one norm over
    all heads, fused with o_proj) says it has none."""
    m = make(kind)
    x = H.toks(V, n=T)
    hm = hooks.wrap(m)
    with torch.no_grad():
        _, c = hm.run_with_cache(x, names=["blocks.0.mixer_out"], heads=True)
    if kind == "hgrn2":
        with pytest.raises(NotImplementedError, match="HGRN2 normalises all heads' readouts together"):
            c.head_results(0, "rec")
        return
    r = c.head_results(0, "rec")
    assert r.shape == (2, T, 4 if kind == "kda" else 2, 32)
    torch.testing.assert_close(r.sum(-2), c["blocks.0.mixer_out"], atol=1e-5, rtol=1e-5)


def test_unknown_mixer_is_refused_naming_the_supported_layers():
    m = make("deltanet")
    odd = ForCausalLM([nn.Identity(), nn.Identity()])
    odd.model.layers[0].attn = nn.Linear(32, 32)
    with pytest.raises(TypeError, match="Linear is not supported; supported fla layers: GatedDeltaNet, .*DeltaNet, "
                                        "KimiDeltaAttention, HGRN2Attention"):
        hooks.wrap(odd).layers
    assert hooks.wrap(m).layers  # (the supported ones are accepted)
