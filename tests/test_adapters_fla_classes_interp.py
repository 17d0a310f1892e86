"""fla's DeltaNetForCausalLM, KDAForCausalLM, HGRN2ForCausalLM and RWKV7ForCausalLM through the fla adapter on
CPU, under the Triton interpreter.

As tests/test_adapters_fla_interp.py: fla's model classes need triton, so this runs only in a separate
environment with triton and fla (never the project's CPU venv) with TRITON_INTERPRET=1, e.g.
    TRITON_INTERPRET=1 /work/venv-triton/bin/python -m pytest tests/test_adapters_fla_classes_interp.py
and is skipped elsewhere. Sequences are <= 64 tokens and run without grad, so the layers take fla's
fused-recurrent kernels (the chunk kernels call int.to() under the interpreter; KDA takes them whenever grad is
on; the T = 150 rows run on the GPU only). Checked here: the GPU script's own row check on tiny versions of its
rows (also on fla's GatedDeltaNet with GVA and GLA, whose kernel calls go through the same code); every per-token state and readout equals a
float64 step loop written here from the layer's own parameters (projections, causal convolutions, gates,
norms; not from our captured scan inputs), whose last state is the model's cached one; a one-token decode
step from fla's cache continues the state; a state patch continues the recurrence (float64 loop from the
patched state); hooks, dispatchers and kernel globals are gone after a raising hook and a failing model.
RWKV7 (fused norms, two blocks: pre_norm and the value residual): its states / readouts / scan inputs equal the
float64 loop of tests/fla_helpers.py (`rwkv7_reference`, from the layer's parameters and its actual
input), the last one fla's cache; a decode step and a state patch continue the recurrence.
"""
import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F

import fla_helpers as FH  # tests/fla_helpers.py, a sibling of this file

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" or importlib.util.find_spec("triton") is None
    or importlib.util.find_spec("fla") is None,
    reason="needs triton, fla and TRITON_INTERPRET=1 (never in the CPU venv)")

V, T = 64, 8
REC = ("q", "k", "v", "decay", "beta", "state", "readout")
KINDS = ("deltanet", "deltanet_neg", "kda", "kda_lb", "hgrn2")
MAIN = ("deltanet", "kda", "hgrn2", "rwkv7")  # the GPU rows' plain configs (the interpreter is slow: ~1 s a forward)
OLD = ("gdn", "gla")  # the adapter's earlier classes, whose kernel calls share the new code (no_grad, T <= 64)
_MODELS = {}


@pytest.fixture(scope="module")
def C():
    from test_adapters_fla_interp import _gpu_script  # tests/, a sibling: loads tests/gpu/check_models_gpu.py
    first_config = _gpu_script("first_config")
    first_config.first_config_only()  # no driver to benchmark configs on
    return _gpu_script("check_models_gpu")


CLASSES = {"deltanet": "DeltaNet", "deltanet_neg": "DeltaNet", "kda": "KDA", "kda_lb": "KDA", "hgrn2": "HGRN2",
           "rwkv7": "RWKV7", "gdn": "GatedDeltaNet", "gla": "GLA"}  # kind -> fla.models.<name>Config / ForCausalLM


def make(kind):
    """A tiny float32 fla model of ``kind`` with O(1) random weights (the GPU script's `spice`), cached."""
    if kind not in _MODELS:
        from fla import models as M
        from test_adapters_fla_interp import _gpu_script
        common = dict(vocab_size=V, hidden_size=32, fuse_cross_entropy=False,
                      num_hidden_layers=2 if kind == "rwkv7" else 1)
        cfg = getattr(M, f"{CLASSES[kind]}Config")(**FH.LAYER_KW[kind], **common)
        torch.manual_seed(0)
        m = getattr(M, f"{CLASSES[kind]}ForCausalLM")(cfg)
        _gpu_script("check_models_gpu").spice(m)
        _MODELS[kind] = m.float().eval()
    return _MODELS[kind]


def toks(seed=0, n=T):
    return torch.randint(0, V, (2, n), generator=torch.Generator().manual_seed(seed))


# --- float64 references from the layer's own parameters ----------------------------------------------------

def conv(mod, x):
    """fla's ShortConvolution (depthwise causal conv1d, optional SiLU) in float64."""
    w = mod.weight.double()
    y = F.conv1d(x.transpose(1, 2), w, None if mod.bias is None else mod.bias.double(), padding=w.shape[-1] - 1,
                 groups=x.shape[-1])[..., :x.shape[1]].transpose(1, 2)
    return F.silu(y) if mod.activation else y


def lin(mod, x):
    return F.linear(x, mod.weight.double(), None if mod.bias is None else mod.bias.double())


def heads(x, d):
    return x.reshape(*x.shape[:2], -1, d)


def l2(x):
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-6)


def l1(x):
    return x / x.abs().sum(-1, keepdim=True).clamp(min=1e-6)


def scan_inputs(layer, h, lower_bound=None):
    """(q, k, v, log decay, beta) of fla layer ``layer`` on its input ``h`` in float64, written from fla's
    layer code: q / k normalised, q / k repeated to the value heads, decay ``[B, T, H]`` or ``[B, T, H, K]``,
    beta ``[B, T, H]`` or None (GLA-like: no write strength)."""
    h = h.double()
    name = type(layer).__name__
    if name == "HGRN2Attention":
        dk = layer.head_f_dim
        q = F.silu(heads(lin(layer.q_proj, h), dk))
        g = F.logsigmoid(lin(layer.f_proj, h))
        if lower_bound is not None and layer.layer_idx > 0:
            lb = lower_bound.double()
            g = torch.logaddexp(lb.log(), torch.log1p(-lb) + g)
        return q, heads(1 - g.exp(), dk), heads(lin(layer.i_proj, h), layer.head_i_dim), heads(g, dk), None
    dk, dv = layer.head_k_dim, layer.head_v_dim
    q, k, v = (conv(getattr(layer, f"{s}_conv1d"), lin(getattr(layer, f"{s}_proj"), h)) for s in "qkv")
    q, k, v = heads(q, dk), heads(k, dk), heads(v, dv)
    if name == "DeltaNet":
        if layer.qk_activation == "relu":
            q, k = q.relu(), k.relu()
        q, k = (l2(q), l2(k)) if layer.qk_norm == "l2" else (l1(q), l1(k))
        beta = lin(layer.b_proj, h).sigmoid() * (2.0 if layer.allow_neg_eigval else 1.0)
        return q, k, v, torch.zeros_like(beta), beta
    # KimiDeltaAttention: per-key-dim gate of the value heads, GVA
    HV = layer.num_v_heads
    x = heads(lin(layer.f_proj[1], lin(layer.f_proj[0], h)), dk) + layer.dt_bias.double().view(HV, dk)
    A = layer.A_log.double().exp().view(HV, 1)
    g = layer.lower_bound * torch.sigmoid(A * x) if layer.lower_bound is not None else -A * F.softplus(x)
    beta = lin(layer.b_proj, h).sigmoid() * (2.0 if layer.allow_neg_eigval else 1.0)
    r = HV // layer.num_heads
    return l2(q).repeat_interleave(r, 2), l2(k).repeat_interleave(r, 2), v, g, beta


# --- tests ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", MAIN + OLD)
def test_gpu_row_check(C, kind):
    """The GPU script's row check (logits unchanged by capture, last state = fla's cache, states = its float32 loop
    on the captured inputs, a state patch flows forward only, nothing left behind) on a tiny model."""
    import hooks
    m, x = make(kind), toks()
    hm = hooks.wrap(m)
    assert type(hm.adapter).__name__ == "FLAModelAdapter"
    with torch.no_grad():  # (KDA takes its chunk kernel, which the interpreter cannot run, whenever grad is on)
        row = C.check(kind, m, x, C.fla_final_states(m, x, hm.layers))
    assert row["logits_diff"] == 0.0, row  # capture runs the layers' own kernel calls
    assert row["final_rel"] <= 1e-5 and row["loop_rel"] <= 1e-5, row
    assert row["patch_ok"] and row["clean_ok"] and row["ok"], row


@pytest.mark.parametrize("kind", KINDS)
def test_states_equal_float64_loop_from_layer_parameters(kind):
    import hooks
    m, x = make(kind), toks()
    hm = hooks.wrap(m)
    idx = [L.index for L in hm.layers if L.rec is not None]
    assert idx == [0]
    seen = FH.layer_inputs(m, x, ("hidden_states", "lower_bound"), idx)
    with torch.no_grad():
        _, c = hm.run_with_cache(x, names=[f"blocks.{i}.rec.{s}" for i in idx for s in REC if
                                           f"blocks.{i}.rec.{s}" in hm.hook_names])
        own = m(input_ids=x, use_cache=True).past_key_values
    for i in idx:
        layer, p = m.model.layers[i].attn, f"blocks.{i}.rec"
        q, k, v, g, beta = scan_inputs(layer, *seen[i])
        S_ref, o_ref = FH.step_loop(q, k, v, g, beta)
        S = c[f"{p}.state"]
        assert S.shape == S_ref.shape and S.dtype == torch.float32
        torch.testing.assert_close(S.double(), S_ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(c[f"{p}.readout"].double(), o_ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(c[f"{p}.decay"].double(), g, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(S[:, -1], FH.own_state(layer, own[i]["recurrent_state"]), atol=1e-5, rtol=1e-5)
        if beta is not None:
            torch.testing.assert_close(c[f"{p}.beta"].double(), beta, atol=1e-6, rtol=1e-5)
            assert beta.max() > 1.0 if "neg" in kind else beta.max() < 1.0
        else:
            assert f"{p}.beta" not in hm.hook_names  # HGRN2 is GLA: no write strength
    if kind.startswith("kda"):
        assert (g.amax(-1) - g.amin(-1)).min() > 1e-4  # really a decay per key dim


@pytest.mark.parametrize("kind", MAIN)
def test_decode_step_continues_from_the_cache(kind):
    """One-token decoding from fla's cache (a prefill of all but the last token) under hooks: the step's state is
    the full run's last state and the model's cached state after the step (the cache's state layout converted)."""
    import hooks
    m, x = make(kind), toks()
    FH.check_decode_step(m, hooks.wrap(m), x, 0)


@pytest.mark.parametrize("kind", MAIN)
def test_state_patch_continues_the_recurrence(kind):
    """S_t := another prompt's state at t: states and readouts from t on are the float64 loop continued from it;
    the logits before t are bit-identical, every later position moves."""
    import hooks
    m, x = make(kind), toks()
    FH.check_state_patch(m, hooks.wrap(m), x, toks(seed=1), 0, 3)


@pytest.mark.parametrize("kind", ("kda", "rwkv7"))
def test_hooks_gone_after_errors(C, kind):
    """Raising hooks and a failure inside the model (token ids past the vocabulary) leave no hook, dispatcher or
    patched kernel global behind."""
    import hooks
    m, x = make(kind), toks()
    before = C.kernel_globals(m)
    FH.check_errors_leave_nothing(m, hooks.wrap(m), x, ("blocks.0.rec.decay", "blocks.0.rec.state",
                                                         "blocks.0.rec.readout", "blocks.0.mixer_out"),
                                  lambda: C.leftovers(m, before), bad=torch.full((1, 4), V + 5))


def test_rwkv7_states_equal_float64_loop_from_layer_parameters():
    """RWKV7 (fla's fused norms / token shift / k update / output correction kernels, its fused recurrent scan):
    every block's states, readouts and scan inputs equal the float64 loop from the layer's own parameters on its
    actual input; the last state is fla's cache; block 0's stream starts after pre_norm."""
    import hooks
    m, x = make("rwkv7"), toks()
    hm = hooks.wrap(m)
    assert [L.rec_family for L in hm.layers] == ["rwkv7"] * 2
    seen = FH.layer_inputs(m, x, ("hidden_states", "v_first"))
    names = [n for n in hm.hook_names if ".rec." in n and not n.endswith(("pattern", "write_k", "write_v"))]
    with torch.no_grad():
        _, c = hm.run_with_cache(x, names=names + ["embed", "blocks.0.resid_pre", "blocks.0.resid_mid",
                                                   "blocks.0.mixer_out"])
        own = m(input_ids=x, use_cache=True).past_key_values
        torch.testing.assert_close(c["blocks.0.resid_pre"], m.model.layers[0].pre_norm(c["embed"]))
    torch.testing.assert_close(c["blocks.0.resid_mid"], c["blocks.0.resid_pre"] + c["blocks.0.mixer_out"])
    for i, (h, v_first) in seen.items():
        FH.assert_rwkv7_layer(c, m.model.layers[i].attn, i, h, v_first, own[i]["recurrent_state"])


def test_rwkv7_chunk_A_stage_rounds_non_causally(C):
    """Why the GPU row check lets the logits of t's 64-token chunk before t move by rounding for RWKV7 at T = 150
    (check_models_gpu.NONCAUSAL_CHUNK): fla's chunk_rwkv7 A-stage with RWKV7Attention's safe_gate=True
    (chunk_dplr_fwd_A_kernel_intra_tensorcore) factors exp2(gi[i] - gi[j]) around the chunk's middle row (32), so
    the decay of a token before the middle row changes the rows before that token by rounding (their exact values
    do not depend on it), and that of a token after it leaves them bit-identical."""
    from fla.ops.generalized_delta_rule.dplr.chunk_A_fwd import chunk_dplr_fwd_intra
    from fla.ops.rwkv6.chunk import chunk_rwkv6_fwd_cumsum
    from fla.ops.utils.constant import RCP_LN2
    assert C.NONCAUSAL_CHUNK == {"rwkv7": 64}
    g = torch.Generator().manual_seed(0)
    q, k, a, b = (torch.randn(1, 64, 1, 16, generator=g) for _ in range(4))
    w = -0.6 * torch.rand(1, 64, 1, 16, generator=g)

    def A_qk(w):  # [T, 64]: row i = q_i's intra-chunk scores
        gi, ge = chunk_rwkv6_fwd_cumsum(w, 64, scale=RCP_LN2)
        A = chunk_dplr_fwd_intra(q=q, k=k, a=a, b=b, gi=gi, ge=ge, scale=1.0, chunk_size=64, safe_gate=True)[1]
        return A[0, :, 0]
    base = A_qk(w)
    for s in (20, 40):
        w2 = w.clone()
        w2[:, s] *= 0.5
        d = (A_qk(w2) - base)[:s].abs().max().item()  # rows before s
        assert (0 < d <= 1e-5 * base.abs().max().item()) if s < 32 else d == 0, (s, d)
