"""Adapter for flash-linear-attention's own model classes (fla 0.6): ``GatedDeltaNetForCausalLM``,
``GLAForCausalLM``, ``DeltaNetForCausalLM``, ``KDAForCausalLM``, ``HGRN2ForCausalLM`` (each with its hybrid
``attn`` layers, ``config.attn = {'layers': [...], ...}``), ``RWKV7ForCausalLM`` (family rwkv7,
`hooks.scan.rwkv7`) and ``Mamba2ForCausalLM``.

fla's models import Triton, so nothing here imports fla: models are recognised by the module
path of their class (``fla.models.*``) and layers by their class (``fla.layers.<name>``); kernel
functions are found in the globals of each layer's ``forward``. The layers run on CUDA (their
projections, norms and convolutions are Triton kernels); checked by ``tests/gpu/check_models_gpu.py``
and, on CPU under the Triton interpreter (fused-recurrent kernels, T <= 64, no grad), by
``tests/test_adapters_fla_interp.py`` and ``tests/test_adapters_fla_classes_interp.py``.

Block ``i`` is ``model.model.layers[i]`` (``backbone.layers`` for Mamba2):

=====================  =============================================================================
block                  mapping
=====================  =============================================================================
GatedDeltaNetBlock,    ``attn_norm -> attn -> + -> mlp_norm -> mlp -> +``: ``mixer_out`` = ``attn``
GLABlock, DeltaNet-,   (first output), ``mlp_out`` = ``mlp``; ``attn`` is the recurrent layer
KDA-, HGRN2Block       (``rec``: GatedDeltaNet -> family gdn, GatedLinearAttention -> gla, DeltaNet
                       -> gdn with g = 0, KimiDeltaAttention -> kda, HGRN2Attention -> gla) or, on
                       the layers of ``config.attn``, fla's softmax ``Attention`` (``attn``). Blocks
                       with attention residuals (``attnres_block_size``) have no single residual
                       stream: refused.
RWKV7Block             ``[pre_norm ->] attn_norm -> attn -> + -> ffn_norm -> ffn -> +``: ``mixer_out`` =
                       ``attn`` (RWKV7Attention, family rwkv7; its output after o_proj), ``mlp_out`` =
                       ``ffn`` (the channel mix). Block 0 normalises its input first (``pre_norm``): its
                       ``resid_pre`` is ``pre_norm(embed)``, the stream its terms are added to, so
                       ``resid_mid = resid_pre + mixer_out`` holds in every block (as HF RWKV-4's
                       ``pre_ln``, `hooks.adapters.hf_rwkv`). With ``fuse_norm`` the add sits inside
                       ``ffn_norm`` (fused add + norm); the terms are the same.
Mamba2Block            ``norm -> mixer -> +``: ``rec`` = ``mixer_out`` = ``mixer`` (family mamba2),
                       no MLP (``mlp_out`` is the zero term of `hooks.adapters.hf_mamba`).
=====================  =============================================================================

Interception (everything restored on exit, exceptions included):

* GatedDeltaNet: the module globals ``chunk_gated_delta_rule`` / ``fused_recurrent_gated_delta_rule``
  (fla picks the recurrent kernel for <= 64 tokens without grad) are replaced by dispatchers
  while a layer is patched; a pre-hook / always-called forward hook mark the calling layer. The
  call is turned into ``hooks.scan.gdn.scan``'s signature: the in-kernel gate
  ``g = -exp(A_log) softplus(a + dt_bias)``, ``beta = sigmoid(b)`` (times 2 with
  ``allow_neg_eigval``), q / k repeated to the value heads (GVA), states in our ``[K, V]`` layout
  (fla's layers keep ``state_v_first`` ``[V, K]``; converted both ways). ``call`` runs the layer's
  own kernel call unchanged, so capture changes nothing.
* DeltaNet: ``chunk_delta_rule`` / ``fused_recurrent_delta_rule`` likewise, as GDN with ``g`` = 0
  (``rec.decay`` is a float32 zero ``[B, T, H]``; ``beta`` = sigmoid(b_proj), times 2 with
  ``allow_neg_eigval``, or ones without ``use_beta``); its state is already ``[K, V]``.
* KDA (``KimiDeltaAttention``): ``chunk_kda`` / ``fused_recurrent_kda`` likewise, family kda: the
  in-kernel gate per key dim ``g = -exp(A_log) softplus(f + dt_bias)`` (or, with ``lower_bound``,
  ``lower_bound sigmoid(exp(A_log) (f + dt_bias))``) ``[B, T, HV, K]``, beta as GDN, q / k repeated to
  the value heads, states converted from ``state_v_first``.
* RWKV7 (``RWKV7Attention``): ``chunk_rwkv7(r, w, k, v, a, b)`` (grad on or T >= 64) /
  ``fused_mul_recurrent_rwkv7(r, w, k, v, kk, a)`` likewise, in `hooks.scan.rwkv7.scan`'s signature: q = r,
  w (the log decay per key dim, -exp(-1/2) sigmoid(w_lora)), k (after the k_a update), v (after the value
  residual lerp with ``v_first``), a, b (the fused call's (kk, alpha) as the kernel forms them, in float32:
  a = -kk, b = kk alpha), scale (1); fla's state layout is already ``[K, V]``. ``rec.readout`` is the
  kernel's output S_t^T r_t ``[B, T, H, V]``, before the per-head GroupNorm (``g_norm``) and before
  ``gate_output_correction``, which adds the bonus term (r_t . (r_k (.) k_t)) v_t per head after the norm
  and multiplies by the gate g. That bonus reads the layer's own r, k, v: hooks on ``rec.q / k / v`` change
  the scan (states and readout) only, not the bonus. ``v_first`` (block 0's ``v_proj`` output, mixed into
  every later block's values, the value residual) has no hook name: a hook on ``blocks.0.rec.v`` changes
  block 0's scan, not the ``v_first`` later blocks mix in. The token-shift states (the previous token's
  normed input, fla's ``conv_state`` / ``ffn_state``) have no hook names. fla scales padded tokens' inputs
  by the mask but they still decay the state (fla's behaviour, captured as it is).
* GLA: ``chunk_gla`` / ``fused_recurrent_gla`` likewise (``g`` / ``gk`` is the log decay, per key dim).
  HGRN2 calls the same kernels: q = swish(q_proj), decay = logsigmoid(f_proj) (after the model's
  ``lower_bound`` mix), k = 1 - exp(decay), v = i_proj (``mode='fused_chunk'`` is refused by fla itself).
* Attention: fla's ``Attention`` calls ``flash_attn_func(q, k, v, causal=True, window_size=...)``;
  that global is dispatched the same way (q, k, v ``[B, T, H(kv), D]``; ``sliding_window`` =
  ``window_size``; padding masks / decoding raise NotImplementedError while attn names are hooked).
* Mamba2: fla computes SSD inline (``torch_forward``, or mamba-ssm kernels when installed), so
  while rec names are hooked the layer runs an equivalent forward written with
  ``hooks.scan.mamba2`` (in_proj -> conv -> x, B, C -> dt = clamp(softplus(dt + dt_bias), dt_limit)
  -> scan -> gated norm -> out_proj), as for HF's Mamba2 (`hooks.adapters.hf_mamba`). Groups map to
  heads as in mamba-ssm (head h uses group h // (H / G)); fla 0.6's torch path tiles them instead
  (``B.repeat``), so with ``n_groups > 1`` fla's own CPU/torch path and its CUDA path differ, and we
  follow the CUDA one. A per-channel ``D`` (``D_has_hdim``) is added after the scan (then
  ``rec.readout`` excludes it). Decoding from a cache and padding masks raise NotImplementedError.
  When rec names are only cached (``wrapper.capture_only``) the layer's own forward gives the output,
  bit for bit, and the equivalent runs beside it without the cache; a hook function on a rec name
  makes the equivalent's output the layer's.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from hooks.adapters.base import LayerInfo, swap_attr
from hooks.adapters.hf_common import HFAdapter, dispatch_globals, forward_globals
from hooks.adapters.hf_mamba import _ZeroTerm
from hooks.adapters.hf_mamba1 import mark_running
from hooks.adapters.hf_rwkv import _StreamStart
from hooks.scan import gdn as gdn_scan
from hooks.scan import gla as gla_scan
from hooks.scan import kda as kda_scan
from hooks.scan import mamba2 as mamba2_scan
from hooks.scan import rwkv7 as rwkv7_scan

LAYERS = {("fla.layers.gated_deltanet", "GatedDeltaNet"): "gdn",
          ("fla.layers.gla", "GatedLinearAttention"): "gla",
          ("fla.layers.delta_net", "DeltaNet"): "delta",
          ("fla.layers.kda", "KimiDeltaAttention"): "kda",
          ("fla.layers.hgrn2", "HGRN2Attention"): "gla",
          ("fla.layers.rwkv7", "RWKV7Attention"): "rwkv7",
          ("fla.layers.mamba2", "Mamba2"): "mamba2",
          ("fla.layers.attn", "Attention"): "attn"}
KERNELS = {"gdn": ("chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule"),
           "gla": ("chunk_gla", "fused_recurrent_gla"),
           "delta": ("chunk_delta_rule", "fused_recurrent_delta_rule"),
           "kda": ("chunk_kda", "fused_recurrent_kda"),
           "rwkv7": ("chunk_rwkv7", "fused_mul_recurrent_rwkv7"),
           "attn": ("flash_attn_func", "flash_attn_varlen_func")}
KIND_OF = {name: kind for kind, names in KERNELS.items() for name in names}
FAMILY_OF = {"delta": "gdn"}  # layer kind -> recurrence family where they differ
SUPPORTED = ("GatedDeltaNet", "GatedLinearAttention", "DeltaNet", "KimiDeltaAttention", "HGRN2Attention",
             "RWKV7Attention", "Mamba2", "Attention")


def layer_kind(m) -> str | None:
    """'gdn' / 'gla' / 'delta' / 'kda' / 'rwkv7' / 'mamba2' / 'attn' for fla's layer classes (matched by name, no
    import; HGRN2Attention is 'gla')."""
    for c in type(m).__mro__:
        k = LAYERS.get((c.__module__, c.__name__))
        if k:
            return k
    return None


def is_fla_model(model) -> bool:
    return type(model).__module__.startswith("fla.models.")


# --- kernel calls turned into our signatures -------------------------------------------------------

def _args(names, args, kwargs):
    if len(args) > len(names):
        raise TypeError(f"unexpected positional arguments: {len(args)}")
    a = dict(zip(names, args))
    a.update(kwargs)
    if a.get("cu_seqlens") is not None:
        raise NotImplementedError("packed / padded sequences (cu_seqlens) are not supported while rec.* hooks are on")
    return a


def _v_first(a):
    return bool(a.get("state_v_first") or a.get("transpose_state_layout"))


def _flip(S, flip):
    return S.transpose(-1, -2).contiguous() if flip and S is not None else S


def _own_call(orig, args, kwargs, given, keys, flip):
    """``call`` for a wrapper: the layer's own kernel call when the wrapper passes back what it
    was given (states converted to our [K, V] layout), else None."""
    def call(**kw):
        if all(kw.get(n) is given.get(n) for n in keys) and kw.get("scale") == given.get("scale"):
            o, fin = orig(*args, **kwargs)
            return o, (_flip(fin, flip) if kw.get("output_final_state") else None)
        return None
    return call


def _kernel_gate(a, g):
    """fla's in-kernel gate (``use_gate_in_kernel``) on the raw ``g`` ``[B, T, HV]`` (GDN) or ``[B, T, HV, K]``
    (KDA): -exp(A_log) softplus(g + dt_bias), or lower_bound sigmoid(exp(A_log) (g + dt_bias))."""
    per_key = g.dim() == 4
    HV = g.shape[2]
    x = g.float()
    if a.get("dt_bias") is not None:
        x = x + (a["dt_bias"].float().view(HV, -1) if per_key else a["dt_bias"].float())
    A = a.get("A_log")
    A = None if A is None else (A.float().view(HV, 1) if per_key else A.float())
    if a.get("lower_bound") is not None:
        return a["lower_bound"] * torch.sigmoid(x if A is None else A.exp() * x)
    return -A.exp() * F.softplus(x)


def _delta_call(orig, wrapper, args, kwargs, kind="gdn"):
    """A delta-rule kernel call (``kind`` gdn, kda: g per key dim, delta: DeltaNet, no g) in
    ``hooks.scan.gdn.scan`` / ``hooks.scan.kda.scan``'s signature."""
    a = _args(("q", "k", "v", "beta") if kind == "delta" else ("q", "k", "v", "g", "beta"), args, kwargs)
    if a.get("gk") is not None or a.get("gv") is not None:
        raise NotImplementedError("GDN with per-key / per-value gates (gk / gv) is not supported")
    q, k, v, beta = a["q"], a["k"], a["v"], a.get("beta")
    if kind == "delta":  # DeltaNet: the gated delta rule without decay
        g = torch.zeros(v.shape[:3], dtype=torch.float32, device=v.device)
        beta = torch.ones_like(q[..., 0]) if beta is None else beta
    else:
        g = a["g"]
    if a.get("use_gate_in_kernel"):
        g = _kernel_gate(a, g)
    if a.get("use_beta_sigmoid_in_kernel"):
        beta = beta.float().sigmoid() * (2.0 if a.get("allow_neg_eigval") else 1.0)
    H, HV = q.shape[2], v.shape[2]
    if HV != H:  # GVA: q/k head i serves value heads i*HV/H .. (i+1)*HV/H - 1
        q, k = q.repeat_interleave(HV // H, dim=2), k.repeat_interleave(HV // H, dim=2)
    flip = _v_first(a)
    kw = dict(q=q, k=k, v=v, g=g, beta=beta, scale=a.get("scale"), initial_state=_flip(a.get("initial_state"), flip),
              output_final_state=bool(a.get("output_final_state")),
              use_qk_l2norm_in_kernel=bool(a.get("use_qk_l2norm_in_kernel")))
    own = _own_call(orig, args, kwargs, dict(kw), ("q", "k", "v", "g", "beta", "initial_state",
                                                  "use_qk_l2norm_in_kernel"), flip)
    ours = kda_scan.scan if kind == "kda" else gdn_scan.scan

    def call(**kw2):
        r = own(**kw2)
        return r if r is not None else ours(**kw2)
    o, fin = wrapper(kw, call)
    return o, _flip(fin, flip)


def _gla_call(orig, wrapper, args, kwargs):
    a = _args(("q", "k", "v", "g", "scale", "initial_state", "output_final_state"), args, kwargs)
    g = a.get("g") if a.get("g") is not None else a.get("gk")
    if g is None or a.get("gv") is not None or a.get("reverse"):
        raise NotImplementedError("GLA call without a per-key log decay, or with gv / reverse, is not supported")
    flip = _v_first(a)
    kw = dict(q=a["q"], k=a["k"], v=a["v"], g=g, scale=a.get("scale"),
              initial_state=_flip(a.get("initial_state"), flip), output_final_state=bool(a.get("output_final_state")))
    own = _own_call(orig, args, kwargs, dict(kw), ("q", "k", "v", "g", "initial_state"), flip)

    def call(**kw2):
        r = own(**kw2)
        return r if r is not None else gla_scan.scan(**kw2)
    o, fin = wrapper(kw, call)
    return o, _flip(fin, flip)


def _rwkv7_call(orig, wrapper, args, kwargs, name):
    """``chunk_rwkv7(r, w, k, v, a, b, ...)`` or ``fused_mul_recurrent_rwkv7(r, w, k, v, kk, a, ...)`` in
    `hooks.scan.rwkv7.scan`'s signature (a, b of the fused call: -kk, kk alpha, in float32 as its kernel forms them)."""
    fused = name == "fused_mul_recurrent_rwkv7"
    a = _args(("r", "w", "k", "v", "kk", "a") if fused else ("r", "w", "k", "v", "a", "b"), args, kwargs)
    if a.get("reverse") or a.get("cp_context") is not None:
        raise NotImplementedError("RWKV7 kernel calls with reverse=True or a context-parallel context are not supported")
    if fused:
        kk = a["kk"].float()
        ra, rb = -kk, kk * a["a"].float()
    else:
        ra, rb = a["a"], a["b"]
    scale = a.get("scale", 1.0)
    kw = dict(q=a["r"], k=a["k"], v=a["v"], w=a["w"], a=ra, b=rb, scale=1.0 if scale is None else scale,
              initial_state=a.get("initial_state"), output_final_state=bool(a.get("output_final_state")))
    own = _own_call(orig, args, kwargs, dict(kw), ("q", "k", "v", "w", "a", "b", "initial_state"), False)

    def call(**kw2):
        r = own(**kw2)
        return r if r is not None else rwkv7_scan.scan(**kw2)
    return wrapper(kw, call)


def _attn_call(orig, wrapper, meta, args, kwargs):
    a = dict(zip(("q", "k", "v"), args))
    rest = {n: v for n, v in kwargs.items() if n not in ("q", "k", "v")}
    a.update({n: kwargs[n] for n in ("q", "k", "v") if n in kwargs})
    q, k, v = a["q"], a["k"], a["v"]
    if q.shape[1] != k.shape[1] or not rest.get("causal", False):
        raise NotImplementedError("attn.* hooks on fla Attention need a causal full-sequence forward "
                                  "(no decoding from a cache)")
    w = rest.get("window_size", (-1, -1))
    meta["scale"] = float(rest.get("softmax_scale") or q.shape[-1] ** -0.5)
    meta["sliding_window"] = int(w[0]) + 1 if w is not None and w[0] is not None and w[0] >= 0 else None
    return wrapper(q, k, v, lambda q_, k_, v_: orig(q_, k_, v_, **rest))


def _standin(d, fn, name):
    def active():
        return d.chains.get(d.running[-1]) if d.running else None

    def kernel(*args, **kwargs):
        chain = active()
        if not chain:
            return fn(*args, **kwargs)
        if name == "flash_attn_varlen_func":
            raise NotImplementedError("attn.* hooks on fla Attention do not support padding masks / packed "
                                      "sequences (flash_attn_varlen_func)")

        def run(i, args, kwargs):
            if i == len(chain):
                return fn(*args, **kwargs)
            nxt = lambda *a, **k: run(i + 1, a, k)  # noqa: E731
            entry, kind = chain[i], KIND_OF[name]
            if kind == "attn":
                return _attn_call(nxt, entry[0], entry[1], args, kwargs)
            if kind == "gla":
                return _gla_call(nxt, entry, args, kwargs)
            if kind == "rwkv7":
                return _rwkv7_call(nxt, entry, args, kwargs, name)
            return _delta_call(nxt, entry, args, kwargs, kind)
        return run(0, args, kwargs)
    return kernel


def _make_standin(d, fn):
    name = next(n for n, orig in d.orig.items() if orig is fn)
    return _standin(d, fn, name)


@contextmanager
def patch_kernels(layer, kind, entry):
    """Dispatch the kernel globals of fla layer ``layer`` (``kind`` gdn / gla / delta / kda / rwkv7 / attn) to ``entry``
    (a scan wrapper, or ``(attention wrapper, meta)``) while it runs."""
    g = forward_globals(layer)
    names = tuple(n for n in KERNELS[kind] if n in g)
    if not names:
        raise NotImplementedError(f"{type(layer).__name__}: none of {', '.join(KERNELS[kind])} found to intercept "
                                  f"in {g.get('__name__')}")
    with dispatch_globals(g, f"fla-{kind}", names, _make_standin, layer, entry) as d, mark_running(layer, d):
        yield


# --- fla Mamba2: an equivalent forward written with hooks.scan ----------------------------------------

def _mamba2_forward(mixer, wrapper, orig, hidden_states, attention_mask=None, past_key_values=None, use_cache=False,
                    output_attentions=False, **kwargs):
    g = forward_globals(mixer)
    last = g["get_layer_cache"](mixer, past_key_values) if past_key_values is not None else None
    bad = None
    if last is not None:
        bad = "continuing from a cache (decoding)"
    elif attention_mask is not None and not bool((attention_mask == 1).all()):
        bad = "a padding attention mask"
    elif kwargs.get("cu_seqlens") is not None:
        bad = "packed sequences (cu_seqlens)"
    if bad:
        raise NotImplementedError(f"fla Mamba2 (layer {mixer.layer_idx}): rec.* hooks need a full-sequence forward "
                                  f"without padding; this call has {bad}")
    b, T, _ = hidden_states.shape
    orig_call = lambda: orig(hidden_states, attention_mask=attention_mask,  # noqa: E731
                             past_key_values=past_key_values, use_cache=use_cache,
                             output_attentions=output_attentions, **kwargs)
    if T == 0:
        return orig_call()
    own = None
    if getattr(wrapper, "capture_only", False):  # the layer's own output; ours beside it, without the cache
        own, past_key_values, use_cache = orig_call(), None, False
    H, P, G, N, I = mixer.num_heads, mixer.head_dim, mixer.n_groups, mixer.ssm_state_size, mixer.intermediate_size
    proj = mixer.in_proj(hidden_states)
    d_mlp = (proj.shape[-1] - 2 * I - 2 * G * N - H) // 2
    if d_mlp:
        raise NotImplementedError(f"fla Mamba2 with an inline MLP (d_mlp={d_mlp}) is not supported")
    gate, xBC, dt = proj.split([I, mixer.conv_dim, H], dim=-1)
    conv_state = None
    if use_cache:
        xt = xBC.transpose(1, 2)
        conv_state = F.pad(xt, (mixer.conv_kernel_size - xt.shape[-1], 0))
    xBC = mixer.act(mixer.conv1d(xBC.transpose(1, 2))[..., :T].transpose(1, 2))
    x, Bm, Cm = torch.split(xBC, [I, G * N, G * N], dim=-1)
    dt = F.softplus(dt + mixer.dt_bias)
    dt = torch.clamp(dt, mixer.dt_limit[0], mixer.dt_limit[1])
    A = -torch.exp(mixer.A_log.float())
    per_channel = mixer.D.numel() != H
    kw = dict(x=x.reshape(b, T, H, P).float(), dt=dt.float(), A=A, B=Bm.reshape(b, T, G, N).float(),
              C=Cm.reshape(b, T, G, N).float(), D=None if per_channel else mixer.D.float(), initial_state=None,
              output_final_state=bool(use_cache) or past_key_values is not None)
    y, final = wrapper(kw, mamba2_scan.scan) if wrapper is not None else mamba2_scan.scan(**kw)
    if per_channel:
        y = y + kw["x"] * mixer.D.float().view(H, P)
    y = y.reshape(b, T, I)
    y = mixer.norm(y, gate) if mixer.rmsnorm else y * mixer.act(gate)
    out = mixer.out_proj(y.to(hidden_states.dtype))
    if past_key_values is not None:
        # as fla's torch_forward: the final state [B, H, P, N] (ours is [B, H, N, P]) and the conv window
        g["update_layer_cache"](mixer, past_key_values, recurrent_state=_flip(final, True), conv_state=conv_state,
                                offset=T)
    return (out, None, past_key_values) if own is None else own


@contextmanager
def patch_mamba2(mixer, wrapper):
    orig = mixer.forward

    def forward(hidden_states, *args, **kwargs):
        names = ("attention_mask", "past_key_values", "use_cache", "output_attentions")
        kwargs.update(dict(zip(names, args)))
        return _mamba2_forward(mixer, wrapper, orig, hidden_states, **kwargs)
    with swap_attr(mixer, "forward", forward):
        yield


# --- the adapter ---------------------------------------------------------------------------------------

class FLAModelAdapter(HFAdapter):
    family = "fla"
    model_types = ("fla GatedDeltaNetForCausalLM", "fla GLAForCausalLM", "fla DeltaNetForCausalLM",
                   "fla KDAForCausalLM", "fla HGRN2ForCausalLM", "fla RWKV7ForCausalLM", "fla Mamba2ForCausalLM")

    @classmethod
    def matches(cls, model) -> bool:
        return is_fla_model(model) and cls._base(model) is not None

    @staticmethod
    def _base(model):
        for name in ("model", "backbone"):
            sub = getattr(model, name, None)
            if sub is not None and isinstance(getattr(sub, "layers", None), torch.nn.ModuleList):
                return sub
        return model if isinstance(getattr(model, "layers", None), torch.nn.ModuleList) else None

    def layers(self, model):
        out = []
        for i, blk in enumerate(self._base(model).layers):
            if getattr(blk, "use_attnres", False):
                raise NotImplementedError(f"{type(blk).__name__} {i} uses attention residuals (attnres_block_size): "
                                          "there is no single residual stream to hook")
            mix = getattr(blk, "attn", None)
            if mix is None:
                mix = getattr(blk, "mixer", None)
            kind = layer_kind(mix) if mix is not None else None
            if kind is None:
                raise TypeError(f"{type(model).__name__} layer {i} ({type(blk).__name__}): mixer "
                                f"{type(mix).__name__} is not supported; supported fla layers: "
                                f"{', '.join(SUPPORTED)} (models: {', '.join(self.model_types)})")
            mlp = getattr(blk, "mlp", None)
            mlp = getattr(blk, "ffn", None) if mlp is None else mlp  # RWKV7Block: the channel mix
            start = _StreamStart(blk, "pre_norm") if isinstance(getattr(blk, "pre_norm", None), nn.Module) else blk
            L = LayerInfo(index=i, block=start, mixer_out=mix, mlp_out=mlp if mlp is not None else _ZeroTerm(blk, "mlp"))
            if kind == "attn":
                L.attn = mix
                L.attn_meta = {"scale": mix.head_dim ** -0.5, "sliding_window": getattr(mix, "window_size", None)}
            else:
                L.rec, L.rec_family = mix, FAMILY_OF.get(kind, kind)
            out.append(L)
        return out

    def head_projection(self, model, layer, kind):
        """As `HFAdapter.head_projection`; HGRN2 has no per-head results: one RMSNorm over all heads' readouts,
        fused with ``o_proj`` (``rms_norm_linear``, so o_proj is never called as a module)."""
        if kind == "rec" and type(layer.rec).__name__ == "HGRN2Attention":
            raise NotImplementedError(f"layer {layer.index}: HGRN2 normalises all heads' readouts together before "
                                      f"o_proj (fused rms_norm_linear), so its heads have no separate results; use "
                                      f"blocks.{layer.index}.mixer_out or blocks.{layer.index}.rec.readout")
        return super().head_projection(model, layer, kind)

    @contextmanager
    def patch_attention(self, layer, wrapper):
        with patch_kernels(layer.attn, "attn", (wrapper, layer.attn_meta)):
            yield

    @contextmanager
    def patch_scan(self, layer, wrapper):
        with ExitStack() as st:
            if layer.rec_family == "mamba2":
                st.enter_context(patch_mamba2(layer.rec, wrapper))
            else:
                st.enter_context(patch_kernels(layer.rec, layer_kind(layer.rec), wrapper))
            yield
