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
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fla_helpers as FH  # tests/fla_helpers.py, a sibling of this file
import hf_tiny as H
import hooks

pytestmark = pytest.mark.skipif(FH.FLA is None, reason="needs fla's source files (fla installed)")
V, T = 64, 9


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
    naive = FH.load_fla_file("ops/delta_rule/naive.py", "fla_naive_delta_rule_standin")
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
    naive = FH.load_fla_file("ops/kda/naive.py", "fla_naive_kda_standin")
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
    naive = FH.load_fla_file("ops/gla/naive.py", "fla_naive_gla_standin")
    o, S = naive.naive_recurrent_gla(q, k, v, g if g is not None else gk, _flip(initial_state, state_v_first),
                                     output_final_state)
    return o.to(v.dtype), _flip(S, state_v_first)


STUBS = {
    "fla.layers.utils": FH.layer_utils(),
    "fla.modules": dict(ShortConvolution=ShortConvolution, RMSNorm=RMSNorm, FusedRMSNormGated=FusedRMSNormGated),
    "fla.modules.activations": dict(swish=F.silu, elu_p1=lambda x: F.elu(x) + 1),
    "fla.modules.layernorm": dict(rms_norm_linear=rms_norm_linear),
    "fla.ops.delta_rule": dict(chunk_delta_rule=_delta_rule, fused_recurrent_delta_rule=_delta_rule),
    "fla.ops.kda": dict(chunk_kda=_kda, fused_recurrent_kda=_kda),
    "fla.ops.gla": dict(chunk_gla=_gla, fused_recurrent_gla=_gla, fused_chunk_gla=_gla),
}


MODS = FH.Standins(STUBS)  # fla's layer files run with these; sys.modules restored when this file's tests end
_restore_standins = MODS.fixture()


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

LAYERS = {"deltanet": ("delta_net", "DeltaNet"), "deltanet_neg": ("delta_net", "DeltaNet"),
          "kda": ("kda", "KimiDeltaAttention"), "kda_lb": ("kda", "KimiDeltaAttention"),
          "hgrn2": ("hgrn2", "HGRN2Attention")}  # kind -> (fla's layer file, its class)


def make(kind):
    if kind not in MODS.models:
        if ForCausalLM.__module__ not in MODS.saved:
            MODS.register(types.ModuleType(ForCausalLM.__module__))
        torch.manual_seed(0)
        d = 32
        stem, cls = LAYERS[kind]
        L = MODS.layer_module(stem)
        layers = [getattr(L, cls)(hidden_size=d, layer_idx=i, **FH.LAYER_KW[kind]) for i in range(2)]
        MODS.models[kind] = FH.spice(ForCausalLM(layers, d)).float().eval()
    return MODS.models[kind]


KINDS = ("deltanet", "deltanet_neg", "kda", "kda_lb", "hgrn2")


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
        S_ref, o_ref = FH.step_loop(*(c[f"{p}.{s}"] for s in ("q", "k", "v", "decay")), beta)
        torch.testing.assert_close(c[f"{p}.state"].double(), S_ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(c[f"{p}.readout"].double(), o_ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(c[f"{p}.state"][:, -1], FH.own_state(layer, own[i]["recurrent_state"]),
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
    """S_t := another prompt's state: the later states and readouts are the loop from it, logits before t
    bit-identical; one decode step from the model's cache continues the state (the cache's layout converted both
    ways)."""
    m = make(kind)
    x = H.toks(V, n=T)
    hm = hooks.wrap(m)
    FH.check_state_patch(m, hm, x, H.toks(V, n=T, seed=1), 1, 4)
    FH.check_decode_step(m, hm, x, 1)


@pytest.mark.parametrize("kind", ("deltanet", "kda"))
def test_raising_hooks_leave_nothing_behind(kind):
    """Raising hooks and a failure inside the model (block 1's MLP) leave no hook behind; the kernel globals
    are fla's again."""
    m = make(kind)
    kernels, leftovers = FH.kernel_globals(m)
    assert len(kernels) == 2
    names = ["blocks.0.rec.decay", "blocks.1.rec.state", "blocks.0.rec.readout", "blocks.1.mixer_out"]
    FH.check_errors_leave_nothing(m, hooks.wrap(m), H.toks(V, n=T), names, leftovers, bad=m.model.layers[1].mlp)


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
