"""Adapter for HF Mamba2-family models: ``mamba2``, ``bamba``, ``falcon_h1``, ``zamba2``, ``nemotron_h``,
``granitemoehybrid``.

Block ``i`` is the model's ``layers[i]`` (HF layer index = our block index). Per family:

=============  =====================================================================================
family         mapping
=============  =====================================================================================
mamba2         every block: norm -> Mamba2 mixer -> residual. ``mixer_out`` = ``rec`` = the mixer;
               no MLP (``mlp_out`` is the zero term, see below).
bamba          ``linear_attention`` blocks: ``rec`` = ``mamba``; ``full_attention`` blocks: ``attn``
               = ``self_attn``; both: ``mixer_out`` = that module, ``mlp_out`` = ``feed_forward``.
falcon_h1      every block runs Mamba2 and attention IN PARALLEL on the same normed input and adds
               ``ssm_out_multiplier * mamba(x) + attention_out_multiplier * attn(attention_in_multiplier
               * x)``, computed inline (no module outputs that sum). ``mixer_out`` is exactly that sum
               (multipliers included): while a ``mixer_out`` / ``resid_mid`` hook is installed the
               layer's forward is swapped for an equivalent one that routes the sum through a
               parameterless module (`_ParallelMix`); restored when the hook is removed. Its two
               terms are ``rec.out`` and ``attn.out`` (`_MixBranch`: pre-hooks on that module, so a
               replaced term is what it sums; the same swap). ``rec`` = ``mamba``, ``attn`` =
               ``self_attn``, ``mlp_out`` = ``feed_forward`` (its down multiplier included). ``embed``
               is the input of block 0, i.e. the token embedding times ``embedding_multiplier``
               (hooked as a pre-hook on block 0).
zamba2         ``mamba`` blocks: norm -> mixer -> residual, as mamba2. ``hybrid`` blocks: the SHARED
               transformer (tied weights, one module instance per hybrid layer) reads
               ``concat(resid_pre, embeddings)``, its attention + MLP output goes through the
               layer's ``linear`` and is added to the INPUT of the Mamba mixer, not to the residual
               stream; only the mixer output is added to the residual. So ``mixer_out`` = ``rec`` =
               the Mamba mixer (its output depends on the attention branch), ``attn`` = that
               layer's ``shared_transformer.self_attn`` (attn.* names are the shared block's call
               at this layer), and ``mlp_out`` is the zero term (the shared MLP's output is not a
               residual-stream term; capture it with a plain torch hook if needed).
nemotron_h     one mixer per block (``layers_block_type``): ``linear_attention`` -> ``rec`` and
               ``mixer_out``; ``full_attention`` -> ``attn`` and ``mixer_out``; ``mlp`` / ``moe`` ->
               ``mlp_out`` = the MLP, and ``mixer_out`` is the zero term. Mixer blocks have no MLP
               (``mlp_out`` = zero term). Blocks are not merged: block i is HF layer i.
granitemoe-    as bamba (``linear_attention`` blocks: ``rec`` = ``mamba``, a Mamba2 mixer like bamba's;
hybrid         attention blocks: ``attn`` = ``self_attn``), but the layer adds ``residual_multiplier *
               mixer(x)`` and ``residual_multiplier * (moe(x) + shared_mlp(x))`` inline: ``mixer_out``
               / ``mlp_out`` are exactly those products (the layer's forward is swapped while they
               are hooked, `hooks.adapters.hf_mamba_layers`). ``embed`` is block 0's input, the
               embedding times ``embedding_multiplier``; the unembedding folds in 1 / ``logits_scaling``.
=============  =====================================================================================

Zero terms: a block without an MLP (or without a token mixer) still has every residual name.
The missing term reads as zeros [B, T, D]; a hook that returns something else adds it to the
residual stream where the term would be (mixer: after ``resid_pre``; MLP: before
``resid_post``). So ``resid_mid = resid_pre + mixer_out`` and ``resid_post = resid_mid +
mlp_out`` hold in every block.

Recurrent scan. HF computes SSD inline (CPU: `torch_forward`-style chunk code; CUDA: mamba-ssm
kernels), so there is no kernel call to intercept. While ``rec.*`` names are hooked, the mixer's
``forward`` is replaced (on that instance only; always restored) by `_mixer_forward`, an
equivalent forward written with ``hooks.scan.mamba2.scan``: in_proj -> split (gate z, xBC, dt)
-> causal conv1d + act -> split x, B, C -> dt = clamp(softplus(dt + dt_bias), time_step_limit)
-> A = -exp(A_log) -> scan -> gated RMSNorm with z -> out_proj. Scan inputs are float32, as in
HF. Family specifics: falcon_h1's ``ssm_in_multiplier`` / ``mup_vector`` (``ssm_multipliers``)
and its optional norm (``mamba_rms_norm=False``: y * silu(z)); the per-family norms are the
modules' own ``norm`` (so version differences between transformers releases follow along).
On CUDA the replacement runs fla's kernels through ``hooks.scan``, not mamba-ssm (that path,
tests/test_adapters_mamba.py::test_cuda_kernels_path, has not yet been run on a GPU; the CPU
tests pass with transformers 5.17 and 5.23).
`use_scan_forward(model)` installs the same replacement on every mixer without hooks.

While rec.* names are only cached (no hook function on them), the mixer's own forward still gives
the output, bit for bit as without hooks, and the replacement runs beside it without the cache
(``wrapper.capture_only``); a hook function on a rec.* name makes the replacement's output the
mixer's, so that the change flows on.

Supported paths of the replacement: a full-sequence forward without cache (``use_cache=False``,
what `HookedModel` runs), a prefill into an empty cache (it writes the conv and SSM states the
way HF does) and continuing from a cache (decoding, a chunked prefill: the scan starts from the
cached SSM state, the convolution from the cached window, and both are written back; beside a
capture-only wrapper the equivalent starts from copies taken before the mixer's own forward updates
them), with a padding mask of the sequence so far (the model's own apply_mask_to_padding_states on
the new positions). A cache without ``get_recurrent_state`` / ``get_conv_state`` to continue from
raises NotImplementedError while rec.* hooks are installed; the plain replacement
(`use_scan_forward`) falls back to the original forward there.

Attention layers are intercepted through ``hooks.adapters.hf_common.patch_attention`` (shared
with the other HF adapters); q / k / v are what the model hands its attention op (falcon_h1's k
includes ``key_multiplier``; zamba2's q / k / v include the per-layer LoRA adapters), and
``attn_meta['scale']`` is the scaling the model passes (zamba2: ``(head_dim / 2) ** -0.5``).
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager

import torch
import torch.nn.functional as F

from hooks.adapters.hf_common import cache_kw, forward_globals, forward_logits
from hooks.adapters.base import Adapter, HeadProjection, LayerInfo, swap_attr
from hooks.adapters.hf_mamba_layers import _BlockInput, _MixBranch, _ParallelMix, _ZeroTerm, granite_terms
from hooks.scan import mamba2 as mamba2_scan

MODEL_TYPES = ("mamba2", "bamba", "falcon_h1", "zamba2", "nemotron_h", "granitemoehybrid")


# --- the Mamba2 mixer forward, written with hooks.scan ----------------------------------------

class _Mixer:
    """Per-family pieces of the mixer forward around the shared SSD part."""

    @staticmethod
    def project(mixer, h):
        return mixer.in_proj(h)

    @staticmethod
    def gate_out(mixer, y, gate):
        return mixer.norm(y, gate)


class _FalconMixer(_Mixer):
    @staticmethod
    def project(mixer, h):
        return mixer.in_proj(h * mixer.ssm_in_multiplier) * mixer.mup_vector

    @staticmethod
    def gate_out(mixer, y, gate):
        if mixer.mamba_rms_norm:
            return mixer.norm(y, gate)
        return y * F.silu(gate)


def _fam_of(mixer):
    return _FalconMixer if hasattr(mixer, "mup_vector") else _Mixer


def _act(name):
    from transformers.activations import ACT2FN
    return ACT2FN[name]


def _unsupported(mixer, hidden_states, cache_params, attention_mask):
    """Why the replacement forward cannot run this call (None: it can)."""
    if attention_mask is not None:
        if attention_mask.dim() != 2 or attention_mask.shape[0] != hidden_states.shape[0] \
                or attention_mask.shape[1] < hidden_states.shape[1]:
            return f"an attention mask of shape {list(attention_mask.shape)}"
    if cache_params is not None:
        try:
            prev = cache_params.has_previous_state(mixer.layer_idx)
        except Exception as e:  # an unknown cache type
            return f"a cache of type {type(cache_params).__name__} ({e})"
        if prev and not (hasattr(cache_params, "get_recurrent_state") and hasattr(cache_params, "get_conv_state")):
            return f"continuing from a cache of type {type(cache_params).__name__} (no get_recurrent_state)"
    return None


def _continued(mixer, cache_params):
    """(state, conv window) a forward continues from when the cache holds them (decoding, a chunked prefill):
    HF's ``[B, H, P, N]`` state as ours ``[B, H, N, P]`` (float32) and the window of the last conv inputs
    ``[B, conv_dim, K]``, both copied (the model's own forward updates them in place); else (None, None)."""
    if cache_params is None or not cache_params.has_previous_state(mixer.layer_idx):
        return None, None
    S0 = cache_params.get_recurrent_state(mixer.layer_idx).transpose(-1, -2).float().clone()
    return S0, cache_params.get_conv_state(mixer.layer_idx).clone()


def _mixer_forward(mixer, fam, wrapper, orig, hidden_states, cache_params=None, attention_mask=None, **kwargs):
    """Equivalent of the HF Mamba2-style mixer forward with the scan done by ``hooks.scan``;
    ``wrapper(kw, call)`` (HookedModel's scan wrapper) sees the scan call when given. With
    ``wrapper.capture_only`` the mixer's own forward gives the output (bit for bit as without hooks)
    and the equivalent runs after it, without the cache, only for what the wrapper caches."""
    why = _unsupported(mixer, hidden_states, cache_params, attention_mask)
    orig_call = lambda: orig(hidden_states, attention_mask=attention_mask,  # noqa: E731
                             **{cache_kw(type(mixer).forward, "cache_params"): cache_params}, **kwargs)
    if why:
        if wrapper is None:
            return orig_call()
        raise NotImplementedError(
            f"{type(mixer).__name__} (layer {mixer.layer_idx}): rec.* hooks support a full-sequence "
            f"forward, a prefill into a cache and continuing from transformers' linear-attention cache; this "
            f"call has {why}. Run the prompt in one forward with use_cache=False.")
    own, (S0, window) = None, _continued(mixer, cache_params)
    if getattr(wrapper, "capture_only", False):
        own, cache_params = orig_call(), None
    b, T, _ = hidden_states.shape
    dtype = hidden_states.dtype
    H, P, G, N = mixer.num_heads, mixer.head_dim, mixer.n_groups, mixer.ssm_state_size
    I = mixer.intermediate_size

    # padding: the model's own apply_mask_to_padding_states zeroes pad tokens before in_proj and after the
    # conv, as HF's forward does (so pads write nothing into the state)
    pad = forward_globals(mixer).get("apply_mask_to_padding_states")
    if attention_mask is not None and pad is None and not bool((attention_mask == 1).all()):
        raise NotImplementedError(f"{type(mixer).__name__}: no apply_mask_to_padding_states to follow for a padding mask")
    if attention_mask is not None:                  # a decode step gets the mask of the whole sequence
        attention_mask = attention_mask[:, -T:]
    masked = (lambda h: pad(h, attention_mask)) if attention_mask is not None and pad is not None else (lambda h: h)
    proj = fam.project(mixer, masked(hidden_states))
    gate, xBC, dt = proj.split([I, mixer.conv_dim, H], dim=-1)

    xBC = xBC.transpose(1, 2)
    if cache_params is not None:  # prefill: the new inputs (padded); continuing: the cached window before them
        xBC = cache_params.update_conv_state(xBC, mixer.layer_idx, conv_kernel_size=mixer.conv_kernel_size)
    elif window is not None:      # the equivalent beside the model's own forward: the window it started from
        xBC = torch.cat([window.to(xBC.dtype), xBC], -1)
    L = xBC.shape[-1]
    xBC = _act(mixer.activation)(mixer.conv1d(xBC.to(mixer.conv1d.weight.dtype))[..., :L]).to(xBC.dtype)
    xBC = masked(xBC[..., -T:].transpose(1, 2))
    x, Bm, Cm = torch.split(xBC, [I, G * N, G * N], dim=-1)

    dt = F.softplus(dt + mixer.dt_bias.to(dt.dtype))
    lim = getattr(mixer, "time_step_limit", None)
    if lim is not None:
        dt = torch.clamp(dt, min=lim[0], max=lim[1])
    A = -torch.exp(mixer.A_log.float())
    kw = dict(x=x.reshape(b, T, H, P).float(), dt=dt.float(), A=A, B=Bm.reshape(b, T, G, N).float(),
              C=Cm.reshape(b, T, G, N).float(), D=mixer.D.float(), initial_state=S0,
              output_final_state=cache_params is not None)
    if wrapper is None:
        y, final = mamba2_scan.scan(**kw)
    else:
        y, final = wrapper(kw, mamba2_scan.scan)
    if cache_params is not None:
        # HF caches h as [B, H, P, N]; ours is [B, H, N, P]
        cache_params.update_recurrent_state(final.transpose(-1, -2).contiguous(), layer_idx=mixer.layer_idx)
    y = fam.gate_out(mixer, y.reshape(b, T, H * P), gate)
    out = mixer.out_proj(y.to(dtype))
    return out if own is None else own


@contextmanager
def _swap_mixer_forward(mixer, fam, wrapper):
    orig = mixer.forward

    def forward(hidden_states, cache_params=None, attention_mask=None, cache=None, **kwargs):
        # transformers >= 5.24 passes the cache as `cache`, earlier versions as `cache_params`
        return _mixer_forward(mixer, fam, wrapper, orig, hidden_states,
                              cache_params=cache if cache is not None else cache_params,
                              attention_mask=attention_mask, **kwargs)
    with swap_attr(mixer, "forward", forward):
        yield


@contextmanager
def use_scan_forward(model):
    """Run every Mamba2 mixer of ``model`` with the `hooks.scan` replacement forward (no hooks);
    unsupported calls (a cache it cannot continue from) use the original forward."""
    with ExitStack() as stack:
        for L in HFMambaAdapter().layers(model):
            if L.rec is not None:
                stack.enter_context(_swap_mixer_forward(L.rec, _fam_of(L.rec), None))
        yield model


# --- the adapter -------------------------------------------------------------------------------

def _mult(blk, branch):
    """The factor a layer applies to a branch's out-projection: falcon_h1's per-branch multiplier,
    granitemoehybrid's ``residual_multiplier``, else 1."""
    return float(getattr(blk, branch, getattr(blk, "residual_multiplier", 1.0)))


def _attn_meta(attn):
    return {"scale": float(attn.scaling), "sliding_window": getattr(attn, "sliding_window", None) or None}


class HFMambaAdapter(Adapter):
    family = "hf_mamba"
    model_types = MODEL_TYPES

    @classmethod
    def matches(cls, model) -> bool:
        cfg = getattr(model, "config", None)
        return (getattr(cfg, "model_type", None) in MODEL_TYPES
                and hasattr(getattr(model, "base_model", None), "layers"))

    def _base(self, model):
        return model.base_model

    def layers(self, model):
        kind = model.config.model_type
        out = []
        for i, blk in enumerate(self._base(model).layers):
            out.append(getattr(self, f"_layer_{kind}")(i, blk))
        return out

    # one LayerInfo per HF layer, per family
    @staticmethod
    def _rec(i, blk, mixer, mlp=None, mixer_out=None):
        return LayerInfo(index=i, block=blk, mixer_out=mixer_out or mixer,
                         mlp_out=mlp if mlp is not None else _ZeroTerm(blk, "mlp"),
                         rec=mixer, rec_family="mamba2")

    @staticmethod
    def _attn(i, blk, attn, mlp=None, mixer_out=None):
        return LayerInfo(index=i, block=blk, mixer_out=mixer_out or attn,
                         mlp_out=mlp if mlp is not None else _ZeroTerm(blk, "mlp"),
                         attn=attn, attn_meta=_attn_meta(attn))

    def _layer_mamba2(self, i, blk):
        return self._rec(i, blk, blk.mixer)

    def _layer_bamba(self, i, blk):
        if blk.block_type == "full_attention":
            return self._attn(i, blk, blk.self_attn, blk.feed_forward)
        return self._rec(i, blk, blk.mamba, blk.feed_forward)

    def _layer_falcon_h1(self, i, blk):
        mix = _ParallelMix(blk)
        L = self._rec(i, blk, blk.mamba, blk.feed_forward, mixer_out=mix)
        L.attn, L.attn_meta = blk.self_attn, _attn_meta(blk.self_attn)
        L.branches = {"attn": _MixBranch(mix, 1), "rec": _MixBranch(mix, 0)}
        return L

    def _layer_zamba2(self, i, blk):
        if hasattr(blk, "shared_transformer"):  # Zamba2HybridLayer
            L = self._rec(i, blk, blk.mamba_decoder.mamba)
            attn = blk.shared_transformer.self_attn
            L.attn, L.attn_meta = attn, _attn_meta(attn)
            return L
        return self._rec(i, blk, blk.mamba)

    def _layer_nemotron_h(self, i, blk):
        t = blk.block_type
        if t in ("linear_attention", "mamba"):
            return self._rec(i, blk, blk.mixer)
        if t in ("full_attention", "attention"):
            return self._attn(i, blk, blk.mixer)
        return LayerInfo(index=i, block=blk, mixer_out=_ZeroTerm(blk, "mixer"), mlp_out=blk.mixer)

    def _layer_granitemoehybrid(self, i, blk):
        mix, mlp = granite_terms(blk)
        if blk.mamba is not None:
            return self._rec(i, blk, blk.mamba, mlp, mixer_out=mix)
        return self._attn(i, blk, blk.self_attn, mlp, mixer_out=mix)

    def embed(self, model):
        if model.config.model_type in ("falcon_h1", "granitemoehybrid"):  # the embedding is scaled inline
            return _BlockInput(self._base(model).layers[0])
        return model.get_input_embeddings()

    padding = True

    def forward(self, model, tokens, attention_mask=None):
        return forward_logits(model, tokens, attention_mask)

    def unembed_weight(self, model):
        W, b = super().unembed_weight(model)
        mult = getattr(self._base(model), "lm_head_multiplier", 1.0)  # falcon_h1
        if model.config.model_type == "granitemoehybrid":
            mult = mult / getattr(model.config, "logits_scaling", 1.0)
        return (W, b) if mult == 1.0 else (W * mult, None if b is None else b * mult)

    def head_projection(self, model, layer, kind):
        """Mamba2 mixers: ``out_proj`` of the gated norm's output (its scale per group of heads is the
        layer's own); attention: ``o_proj`` of the cached ``attn.head_out``. falcon_h1: times the
        branch's output multiplier. zamba2's shared attention has no heads of its own in the
        residual stream (its output enters the Mamba mixer's input). granitemoehybrid: times
        ``residual_multiplier``."""
        blk = layer.block
        if kind == "attn":
            if model.config.model_type == "zamba2":
                raise NotImplementedError(
                    f"layer {layer.index} (zamba2): the shared transformer's attention output is added to the "
                    "Mamba mixer's input, not to the residual stream; its heads have no direct contribution "
                    "(per-head results are given for the Mamba heads)")
            proj = layer.attn.o_proj
            return HeadProjection(proj, proj.in_features // layer.attn.head_dim, input_is_cached=True,
                                  multiplier=_mult(blk, "attn_out_multiplier"))
        return HeadProjection(layer.rec.out_proj, layer.rec.num_heads, multiplier=_mult(blk, "ssm_out_multiplier"))

    @contextmanager
    def patch_scan(self, layer, wrapper):
        with _swap_mixer_forward(layer.rec, _fam_of(layer.rec), wrapper):
            yield

    @contextmanager
    def patch_attention(self, layer, wrapper):
        from hooks.adapters.hf_common import patch_attention  # imported late: optional module
        with patch_attention(layer.attn, wrapper, meta=layer.attn_meta):
            yield
