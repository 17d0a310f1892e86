"""Adapter for HF LFM2 hybrids (gated short convolutions + attention): ``lfm2``, ``lfm2_moe`` and ``lfm3``.

Block ``i`` is ``model.model.layers[i]``; every block is norm -> operator -> residual, norm -> feed-forward
-> residual. The final norm is the model's ``embedding_norm`` (applied after the last block, despite its
name); ``embed`` is ``embed_tokens``, block 0's input.

=============  ==================================================================================
family         layers
=============  ==================================================================================
lfm2,          ``conv`` layers: ``rec`` = ``mixer_out`` = ``conv`` (family ``shortconv``);
lfm2_moe       attention layers: ``attn`` = ``mixer_out`` = ``self_attn`` (q / k RMS-normed per head
               before RoPE, full causal); ``mlp_out`` = ``feed_forward`` (dense MLP, or lfm2_moe's
               sparse-MoE block after its ``num_dense_layers`` dense ones).
lfm3           as lfm2, with sandwich norms: ``mixer_out`` = ``post_operator_norm``, ``mlp_out`` =
               ``post_ffn_norm`` (the normed terms that are added; identities without
               ``use_sandwich_norm``); ``sliding_attention`` layers have a window (``attn_meta``);
               the per-head sigmoid output gate (``g_proj``) is applied after ``attn.head_out``.
=============  ==================================================================================

The short-conv layer, ``y = out_proj(C (.) conv(B (.) x))`` with B, C, x = in_proj(h), is the
``shortconv`` family (`hooks.scan.shortconv`): rec.q = C, rec.k = B, rec.v = x ``[B, T, D]``,
``rec.state`` ``[B, T, D, L]`` the window of the last L = ``conv_L_cache`` writes B (.) x after each
token (HF's conv cache), ``rec.readout`` = C (.) conv before ``out_proj``.

Scan interception. The layer's forward computes B, C, x and the conv inline, so while ``rec.*`` names
are hooked the conv module's ``forward`` is replaced (on the instance; restored on exit) by one that
runs HF's own ops in HF's order (its padding mask, ``in_proj``, ``B * x``, its
``causal_conv1d_forward`` with the cache, ``C * .``, ``out_proj``) with the part from B, C, x to the
readout handed to the wrapper: ``wrapper(kw, call)``, kw in `hooks.scan.shortconv.scan`'s signature
(x, B, C, weight ``[D, L]``, bias, initial_state, output_final_state); ``call`` runs HF's conv on the
layer's own inputs, so capture leaves the outputs bit for bit. With a cache (prefill or one-token
decoding) the initial window is the cache's conv state and the wrapper's final window is written back
to it; HF's cache bookkeeping (token counts) runs as it would. Several wrappers on one layer nest
(outermost first). Caches that record past states (``activate_past_recording``) are refused.
"""
from __future__ import annotations

import types
from contextlib import contextmanager

import torch.nn as nn

from hooks.adapters.base import HeadProjection, LayerInfo
from hooks.adapters.hf_common import HFAdapter, attn_meta, chained_forward, decoder_layers, forward_globals
from hooks.scan import shortconv

MODEL_TYPES = ("lfm2", "lfm2_moe", "lfm3")
_CONV_FNS = ("apply_mask_to_padding_states", "causal_conv1d_forward")


def force_accelerate_hooks(names):
    """transformers' decorator that fires accelerate's hooks of the conv child as HF's own forward does
    (offloading); imported when first used, so that loading `hooks` does not import transformers."""
    try:
        from transformers.integrations.accelerate import force_accelerate_hooks as fah
    except ImportError:  # pragma: no cover - older transformers
        return lambda fn: fn
    return fah(names)


def _is_identity(m) -> bool:
    return m is None or isinstance(m, nn.Identity)


def _run_chain(chain, kw, own):
    """``chain[0](kw, call)`` ... innermost: the layer's own conv where the inputs are the layer's own
    tensors (``own(kw)`` returns None otherwise), `hooks.scan.shortconv.scan` on changed ones."""
    def run(i, kw_):
        if i == len(chain):
            r = own(kw_)
            return r if r is not None else shortconv.scan(**kw_)
        return chain[i](kw_, lambda **k: run(i + 1, k))
    return run(0, kw)


def _conv_forward(rec, chain):
    """The replacement ``forward`` of short-conv module ``rec`` (module docstring), wrapped by ``chain``."""
    g = forward_globals(rec)
    missing = [n for n in _CONV_FNS if not callable(g.get(n))]
    if missing:
        raise NotImplementedError(f"{type(rec).__name__}: {', '.join(missing)} not found in {g.get('__name__')}; "
                                  "this LFM2 layout is not supported by the short-conv interception")

    def forward(self, hidden_states, cache=None, attention_mask=None, past_key_values=None, **kwargs):
        cache = cache if cache is not None else past_key_values
        idx = self.layer_idx
        if cache is not None and cache.is_recording_past(idx):
            raise NotImplementedError("rec.* hooks on short-conv layers do not support caches that record past "
                                      "states (activate_past_recording); use a plain cache or none")
        hidden_states = g["apply_mask_to_padding_states"](hidden_states, attention_mask)
        B, C, x = self.in_proj(hidden_states).transpose(-1, -2).chunk(3, dim=-2)   # [B, D, T] each, as HF
        init = cache.get_conv_state(idx) if cache is not None else None
        kw = dict(x=x.transpose(1, 2), B=B.transpose(1, 2), C=C.transpose(1, 2), weight=self.conv.weight[:, 0],
                  bias=self.conv.bias, initial_state=None if init is None else init.clone(),
                  output_final_state=cache is not None)
        ran = []

        def hf_conv():  # HF's ops on the layer's own B, C, x (updating the cache as HF does)
            ran.append(True)
            h = g["causal_conv1d_forward"](self.conv, B * x, cache, idx, **kwargs)
            return (C * h).transpose(-1, -2), (cache.get_conv_state(idx) if cache is not None else None)

        def own(k):
            same = all(k.get(n) is kw[n] for n in ("x", "B", "C", "weight", "bias", "initial_state"))
            return hf_conv() if same and not ran else None

        y, final = _run_chain(chain, kw, own)
        if cache is not None:
            if not ran:  # the wrapper ran the scan itself: HF's bookkeeping, then its window
                hf_conv()
            state = cache.get_conv_state(idx)
            if final is not None and final is not state:
                state.copy_(final)
        return self.out_proj(y.contiguous())
    return types.MethodType(force_accelerate_hooks("conv")(forward), rec)


def patch_shortconv(rec, wrapper):
    """Make LFM2 short-conv module ``rec`` hand B, C, x to ``wrapper(kwargs, call)`` (module docstring)."""
    return chained_forward(rec, wrapper, _conv_forward)


class HFLfm2Adapter(HFAdapter):
    family = "hf_lfm2"
    model_types = MODEL_TYPES

    def layers(self, model):
        out = []
        for i, blk in enumerate(decoder_layers(model)):
            post_mix, post_ffn = getattr(blk, "post_operator_norm", None), getattr(blk, "post_ffn_norm", None)
            mlp = blk.feed_forward if post_ffn is None else post_ffn
            if getattr(blk, "conv", None) is not None and not getattr(blk, "is_attention_layer", False):
                out.append(LayerInfo(index=i, block=blk, mixer_out=blk.conv if post_mix is None else post_mix,
                                     mlp_out=mlp, rec=blk.conv, rec_family="shortconv"))
            elif getattr(blk, "self_attn", None) is not None:
                attn = blk.self_attn
                out.append(LayerInfo(index=i, block=blk, mixer_out=attn if post_mix is None else post_mix,
                                     mlp_out=mlp, attn=attn, attn_meta=attn_meta(attn)))
            else:
                raise TypeError(f"{model.config.model_type} layer {i} ({type(blk).__name__}) has neither 'conv' "
                                "nor 'self_attn'; not a supported layout")
        return out

    def final_norm(self, model):
        """The model's ``embedding_norm``, applied after the last block."""
        norm = getattr(getattr(model, "model", model), "embedding_norm", None)
        return norm if isinstance(norm, nn.Module) else super().final_norm(model)

    def head_projection(self, model, layer, kind):
        """Attention: ``out_proj`` (lfm2) / ``o_proj`` (lfm3, whose output gate ``g_proj`` comes first, so
        its input is recorded) of the heads; lfm3's ``post_operator_norm`` is the post-norm. Short-conv
        layers have no heads."""
        if kind == "rec":
            raise NotImplementedError(
                f"layer {layer.index}: a short-conv layer has no heads (one gated convolution per channel); "
                f"per-head results are not provided: use blocks.{layer.index}.mixer_out")
        m = layer.attn
        proj = m.o_proj if hasattr(m, "o_proj") else m.out_proj
        post = None if layer.mixer_out is m or _is_identity(layer.mixer_out) else layer.mixer_out
        gated = getattr(m, "g_proj", None) is not None
        return HeadProjection(proj, proj.in_features // m.head_dim, input_is_cached=not gated, post_norm=post)

    @contextmanager
    def patch_scan(self, layer, wrapper):
        with patch_shortconv(layer.rec, wrapper):
            yield
