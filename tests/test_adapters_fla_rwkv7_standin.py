"""hooks.adapters.fla_models on fla's RWKV7Attention, on CPU in the project venv (no triton): fla's own layer code
with torch stand-ins for its Triton pieces.

As tests/test_adapters_fla_classes_standin.py: fla's ``fla/layers/rwkv7.py`` (unchanged) is executed with its
imports answered by torch stand-ins: the two kernels ``chunk_rwkv7`` / ``fused_mul_recurrent_rwkv7`` are fla's own
``dplr_recurrence`` (``fla/ops/generalized_delta_rule/dplr/naive.py``, loaded by path) behind fla's signatures,
``token_shift`` / ``fused_addcmul_rwkv7`` / ``fused_k_rwkv7`` / ``gate_output_correction`` are fla's torch references
written out (``token_shift_ref``, ``torch_addcmul_rwkv7``, ``k_update_ref``, ``gate_output_correction_ref``), LoRA is
fla's (Linear -> activation -> Linear). The layers sit in a block / model with fla's RWKV7 layout (``pre_norm`` on
block 0, ``attn_norm -> attn -> + -> ffn_norm -> ffn -> +``, ``v_first`` handed from block 0 to the others) and
fla's module paths. Oracles: a float64 step loop (tests/fla_helpers.py `rwkv7_reference`) from each layer's own
parameters and its actual input (not from our captured scan inputs), the model's cache, a full prefill for a decode step. The GPU
script's row check runs on it at T = 150 with a chunk stand-in that rounds as fla's chunk_rwkv7 A-stage does
(`chunk_rwkv7_midrow`: TF32 operands scaled around the chunk's middle row).
"""
import sys
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fla_helpers as FH  # tests/fla_helpers.py, a sibling of this file
import hf_tiny as H
import hooks

pytestmark = pytest.mark.skipif(FH.FLA is None, reason="needs fla's source files (fla installed)")
V, T, D = 64, 9, 32


def chunk_rwkv7(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False, cu_seqlens=None, **kw):
    """fla's chunk_rwkv7 on fla's dplr_recurrence ([B, H, T, K] layout, q scaled by K^-1/2 inside)."""
    assert cu_seqlens is None
    tr = lambda x: x.transpose(1, 2).float()  # noqa: E731
    dplr = FH.load_fla_file("ops/generalized_delta_rule/dplr/naive.py", "fla_naive_dplr_standin")
    o, S = dplr.dplr_recurrence(tr(r) * scale * r.shape[-1] ** 0.5, tr(k), tr(v), tr(a), tr(b), tr(w),
                                   initial_state, output_final_state)
    return o.transpose(1, 2).to(v.dtype), S


def tf32(x):
    """float32 ``x`` rounded to TF32 (10-bit mantissa, to nearest), as tensor cores read float32 dot operands."""
    i = x.float().contiguous().view(torch.int32)
    return ((i + 0x1000) & -0x2000).view(torch.float32)


def chunk_rwkv7_midrow(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False, cu_seqlens=None,
                       chunk_size=64, **kw):
    """`chunk_rwkv7` with the rounding of fla's tensor-core A-stage (``chunk_dplr_fwd_A_kernel_intra_tensorcore``,
    taken with RWKV7Attention's ``safe_gate=True``): r enters its chunk's dot products as tf32(r exp(gi - gi[mid])),
    gi the within-chunk cumulative log decay and mid the chunk's middle row, so the rounding of a row's output
    depends on the decays of later tokens of its chunk, up to the middle row."""
    r2 = torch.empty_like(r, dtype=torch.float32)
    for c0 in range(0, r.shape[1], chunk_size):
        gi = w[:, c0:c0 + chunk_size].float().cumsum(1)
        off = gi[:, gi.shape[1] // 2:gi.shape[1] // 2 + 1]
        r2[:, c0:c0 + chunk_size] = tf32(r[:, c0:c0 + chunk_size].float() * (gi - off).exp()) * (off - gi).exp()
    return chunk_rwkv7(r2.to(r.dtype), w, k, v, a, b, scale, initial_state, output_final_state, cu_seqlens)


def fused_mul_recurrent_rwkv7(r, w, k, v, kk, a, scale=1.0, initial_state=None, output_final_state=False,
                              reverse=False, cu_seqlens=None):
    assert not reverse
    return chunk_rwkv7(r, w, k, v, -kk, kk * a, scale, initial_state, output_final_state, cu_seqlens)


def token_shift(x, cu_seqlens=None, cache=None, output_cache=False):
    assert cu_seqlens is None
    prev = torch.zeros_like(x[:, :1]) if cache is None else cache.view(x.shape[0], 1, -1).to(x.dtype)
    delta = torch.cat([prev, x[:, :-1]], 1) - x
    return (delta, x[:, -1:].clone()) if output_cache else delta


def fused_addcmul_rwkv7(h, delta, *mix):
    return tuple(torch.addcmul(h, delta, m) for m in mix)


def gate_output_correction(o, r, k, r_k, v, g):
    return (o + ((r * k * r_k.unsqueeze(0).unsqueeze(0)).sum(-1, keepdim=True) * v).view(o.shape)) * g


class LoRA(nn.Module):
    def __init__(self, input_dim, output_dim, low_rank_dim, bias=True, activation="tanh"):
        super().__init__()
        act = {None: nn.Identity(), "sigmoid": nn.Sigmoid(), "tanh": nn.Tanh(), "relu": nn.ReLU()}[activation]
        self.lora = nn.Sequential(nn.Linear(input_dim, low_rank_dim, bias=False), act,
                                  nn.Linear(low_rank_dim, output_dim, bias=bias))

    def set_bias_value(self, value):
        pass

    def _initialize_weights(self, m):
        pass

    def forward(self, x):
        return self.lora(x)


STUBS = {
    "fla.layers.rwkv6": dict(LoRA=LoRA),
    "fla.layers.utils": FH.layer_utils(),
    "fla.modules": dict(GroupNorm=None),
    "fla.modules.l2norm": dict(l2_norm=None),
    "fla.modules.token_shift": dict(token_shift=token_shift),
    "fla.ops.rwkv7": dict(chunk_rwkv7=chunk_rwkv7, fused_mul_recurrent_rwkv7=fused_mul_recurrent_rwkv7),
    "fla.ops.rwkv7.fused_addcmul": dict(fused_addcmul_rwkv7=fused_addcmul_rwkv7),
    "fla.ops.rwkv7.fused_k_update": dict(fused_k_rwkv7=lambda k, a, ka: k.addcmul(k * (a - 1), ka)),
    "fla.ops.rwkv7.gate_output_correction": dict(gate_output_correction=gate_output_correction),
}
MODS = FH.Standins(STUBS)  # fla's layer file runs with these; sys.modules restored when this file's tests end
_restore_standins = MODS.fixture()


def rwkv7_module():
    """fla's ``fla/layers/rwkv7.py`` run as ``fla.layers.rwkv7`` with the stand-ins."""
    return MODS.layer_module("rwkv7")


# --- a minimal fla RWKV7 model around the layers (fla's RWKV7Block / RWKV7Model layout) ------------------------

class FFN(nn.Module):
    """fla's RWKV7FeedForward: value(sqrelu(key(x + delta x_k))), its token-shift state in the cache."""

    def __init__(self, i):
        super().__init__()
        self.layer_idx, self.x_k = i, nn.Parameter(torch.zeros(D))
        self.key, self.value = nn.Linear(D, 4 * D, bias=False), nn.Linear(4 * D, D, bias=False)

    def forward(self, x, attention_mask=None, state=None):
        old = state.get(("ffn", self.layer_idx)) if state is not None else None
        delta, last = token_shift(x, cache=old, output_cache=True)
        if state is not None:
            state[("ffn", self.layer_idx)] = last
        return self.value(F.relu(self.key(x.addcmul(delta, self.x_k))) ** 2), state


class Block(nn.Module):
    def __init__(self, attn, i):
        super().__init__()
        if i == 0:
            self.pre_norm = nn.LayerNorm(D)
        self.attn_norm, self.attn, self.ffn_norm, self.ffn = nn.LayerNorm(D), attn, nn.LayerNorm(D), FFN(i)

    def forward(self, h, past_key_values=None, use_cache=False, v_first=None):
        residual = self.pre_norm(h) if hasattr(self, "pre_norm") else h
        o, _, past_key_values, v_first = self.attn(hidden_states=self.attn_norm(residual),
                                                   past_key_values=past_key_values, use_cache=use_cache, v_first=v_first)
        h = residual + o
        return h + self.ffn(self.ffn_norm(h), None, past_key_values)[0], past_key_values, v_first


class Model(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.embeddings, self.layers, self.norm = nn.Embedding(V, D), nn.ModuleList(layers), nn.LayerNorm(D)


class RWKV7ForCausalLM(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.model, self.lm_head = Model([Block(a, i) for i, a in enumerate(layers)]), nn.Linear(D, V, bias=False)

    def get_input_embeddings(self):
        return self.model.embeddings

    def forward(self, input_ids, use_cache=False, past_key_values=None, **kw):
        past = ({} if use_cache else None) if past_key_values is None else past_key_values
        h = self.model.embeddings(input_ids)
        v_first = torch.zeros_like(h)
        for blk in self.model.layers:
            h, past, v_first = blk(h, past_key_values=past, use_cache=use_cache, v_first=v_first)
        return types.SimpleNamespace(logits=self.lm_head(self.model.norm(h)), past_key_values=past)


RWKV7ForCausalLM.__module__ = "fla.models.rwkv7.modeling_rwkv7"


def make():
    if not MODS.models:
        MODS.register(types.ModuleType(RWKV7ForCausalLM.__module__))
        L = rwkv7_module()
        torch.manual_seed(0)
        layers = [L.RWKV7Attention(hidden_size=D, layer_idx=i, num_hidden_layers=2, **FH.LAYER_KW["rwkv7"])
                  for i in range(2)]
        MODS.models["m"] = FH.spice(RWKV7ForCausalLM(layers)).float().eval()
    return MODS.models["m"]


@pytest.mark.parametrize("path", ("fused", "chunk"))
def test_capture_keeps_logits_states_equal_loop_and_cache(path):
    """fused: no grad, T < 64 (fused_mul_recurrent_rwkv7); chunk: grad on (chunk_rwkv7)."""
    m = make()
    x = H.toks(V, n=T)
    hm = hooks.wrap(m)
    assert type(hm.adapter).__name__ == "FLAModelAdapter" and [L.rec_family for L in hm.layers] == ["rwkv7"] * 2
    assert {f"blocks.0.rec.{s}" for s in ("a", "b", "write_k", "pattern")} <= set(hm.hook_names)
    assert "blocks.0.rec.beta" not in hm.hook_names
    if path == "fused":
        c, ref = H.assert_capture_everything_keeps_logits(hm, x)
    else:
        snap, ref = H.snapshot(m), m(input_ids=x).logits
        out, c = hm.run_with_cache(x, names=hm.hook_names)
        assert torch.equal(out, ref) and out.requires_grad
        H.assert_clean(m, snap)
    with torch.no_grad():
        own = m(input_ids=x, use_cache=True).past_key_values
    for i, (h, v_first) in FH.layer_inputs(m, x, ("hidden_states", "v_first")).items():
        FH.assert_rwkv7_layer(c, m.model.layers[i].attn, i, h, v_first, own[i]["recurrent_state"])
        p = f"blocks.{i}.rec"
        A = c[f"{p}.pattern"]  # readout = sum_s A[t, s] v_s (no initial state)
        torch.testing.assert_close(torch.einsum("bhts,bshv->bthv", A, c[f"{p}.v"]), c[f"{p}.readout"],
                                   atol=1e-5, rtol=1e-4)
    blk0 = m.model.layers[0]  # block 0's stream starts after pre_norm: resid_mid = resid_pre + mixer_out
    with torch.no_grad():
        torch.testing.assert_close(c["blocks.0.resid_pre"], blk0.pre_norm(c["embed"]))
    for i in (0, 1):
        torch.testing.assert_close(c[f"blocks.{i}.resid_mid"], c[f"blocks.{i}.resid_pre"] + c[f"blocks.{i}.mixer_out"])
        torch.testing.assert_close(c[f"blocks.{i}.resid_post"], c[f"blocks.{i}.resid_mid"] + c[f"blocks.{i}.mlp_out"])


def test_state_patch_continues_and_decode_step():
    """S_t := another prompt's state: the later states and readouts are the float64 loop from it (in the captured
    scan inputs), logits before t bit-identical; a patched resid_pre of block 0 is what block 0 continues with; one
    decode step from the model's cache continues the state."""
    m = make()
    x = H.toks(V, n=T)
    hm = hooks.wrap(m)
    FH.check_state_patch(m, hm, x, H.toks(V, n=T, seed=1), 1, 4)
    with torch.no_grad():
        zero = hm.run_with_hooks(x, hooks=[("blocks.0.resid_pre", lambda r, n: torch.zeros_like(r))])
    assert not torch.equal(zero, m(input_ids=x).logits)
    FH.check_decode_step(m, hm, x, 1)


def test_changed_scan_input_runs_the_recurrence_on_it():
    """A hook that zeroes rec.b (no rank-1 term: S_t = diag(exp(w_t)) S_{t-1} + k_t v_t^T) runs hooks.scan.rwkv7 on
    the changed inputs: states and readout are the float64 loop of GLA form on the captured inputs."""
    m = make()
    x = H.toks(V, n=T)
    hm = hooks.wrap(m)
    p = "blocks.1.rec"
    with torch.no_grad():
        out, c = hm.run_with_cache(x, names=[f"{p}.{s}" for s in ("q", "k", "v", "decay", "b", "state", "readout")],
                                   hooks=[(f"{p}.b", lambda b, n: torch.zeros_like(b))])
    assert c[f"{p}.b"].abs().max() == 0 and not torch.equal(out, m(input_ids=x).logits)
    q, k, v, w = (c[f"{p}.{s}"].double() for s in ("q", "k", "v", "decay"))
    S = torch.zeros_like(c[f"{p}.state"][:, 0], dtype=torch.float64)
    for u in range(T):
        S = w[:, u].exp()[..., None] * S + k[:, u, :, :, None] * v[:, u, :, None]
        torch.testing.assert_close(c[f"{p}.state"][:, u].double(), S, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(c[f"{p}.readout"][:, u].double(), torch.einsum("bhkv,bhk->bhv", S, q[:, u]),
                                   atol=1e-5, rtol=1e-4)


def test_raising_hooks_leave_nothing_behind_and_head_results():
    """Raising hooks and a failure inside the model (block 1's FFN) leave no hook or forward behind; the kernel
    globals are fla's again; per-head results sum to mixer_out."""
    m = make()
    x = H.toks(V, n=T)
    hm = hooks.wrap(m)
    _, leftovers = FH.kernel_globals(m, ("chunk_rwkv7", "fused_mul_recurrent_rwkv7"))
    FH.check_errors_leave_nothing(m, hm, x, ("blocks.0.rec.a", "blocks.1.rec.state", "blocks.0.resid_pre",
                                             "blocks.1.mlp_out"), leftovers, bad=m.model.layers[1].ffn)
    assert all(not vars(blk).get("forward") for blk in m.model.layers)
    with torch.no_grad():
        _, c = hm.run_with_cache(x, names=["blocks.1.mixer_out"], heads=True)
    r = c.head_results(1, "rec")  # per-head GroupNorm, bonus and gate: o_proj's columns of each head
    assert r.shape == (2, T, 4, D)
    torch.testing.assert_close(r.sum(-2), c["blocks.1.mixer_out"], atol=1e-5, rtol=1e-5)


def test_gpu_row_check_with_fla_chunk_rounding(monkeypatch):
    """The GPU script's row check (tests/gpu/check_models_gpu.py::check) at T = 150, where fla's layer takes
    chunk_rwkv7, here with the rounding of its A-stage (`chunk_rwkv7_midrow`): a state patch at t = 75 (block 0)
    changes block 1's inputs from t on, so its chunk [64, 128) rounds differently (middle row 96) and the logits at
    64..74 move by rounding while those before 64 and block 0's own output before t stay bit-identical. The
    check asks for exactness before 64 and lets [64, t) move within the kernel tolerance (the T = 150 GPU rows of
    fla RWKV7 failed "logits before t unchanged" for this reason)."""
    from test_adapters_fla_interp import _gpu_script  # tests/, a sibling: loads tests/gpu/check_models_gpu.py
    _gpu_script("first_config")  # the script's sibling import
    C = _gpu_script("check_models_gpu")
    m = make()
    monkeypatch.setattr(rwkv7_module(), "chunk_rwkv7", chunk_rwkv7_midrow)
    x = H.toks(V, n=150)
    before = set(sys.modules)
    try:
        with torch.no_grad():
            row = C.check("fla RWKV7 stand-in, A-stage rounding", m, x, C.fla_final_states(m, x, hooks.wrap(m).layers))
    finally:  # the script's kernel_globals tries the real fla's kernels (no triton here): drop what it imported
        for n in set(sys.modules) - before:
            if n == "fla" or n.startswith("fla."):
                del sys.modules[n]
    assert row["patch_ok"] and row["clean_ok"] and row["ok"], row
    assert row["final_rel"] <= 1e-5 and row["loop_rel"] <= 1e-5, row   # states: r does not enter them
    assert row["patch_exact_before"] == 64 and row["patch_layer_rel"] == 0.0, row
    assert 1e-5 < row["patch_drift_rel"] <= C.TOL_LOOP, row  # the rounding the former exact check failed on
