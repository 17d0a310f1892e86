"""Adapter for the HF GPT-style transformers whose layout is not llama's: GPT-2 and GPT-NeoX (Pythia).

=====================  ==============================================================================
family                 layout and names
=====================  ==============================================================================
gpt2                   blocks ``transformer.h[i]``: ``x + attn(ln_1(x))``, then ``+ mlp(ln_2(.))``;
                       ``mixer_out`` = ``attn`` (after its ``c_proj`` and residual dropout),
                       ``mlp_out`` = ``mlp``; ``embed`` = ``transformer.drop``, whose output is the
                       token plus the learned position embedding (``wte + wpe``, after the
                       embedding dropout), the input of block 0; q / k / v split from the fused
                       ``c_attn``; ``attn_meta['scale']`` includes
                       ``scale_attn_by_inverse_layer_idx``
gpt_neox               blocks ``gpt_neox.layers[i]``; ``mixer_out`` = ``post_attention_dropout``,
                       ``mlp_out`` = ``post_mlp_dropout`` (the terms added, identity in eval);
                       ``embed`` = ``emb_dropout`` (= ``embed_in``'s output in eval); q / k after
                       the partial rotary embedding. With ``use_parallel_residual`` (Pythia) the
                       block is ``x + attn(ln1(x)) + mlp(ln2(x))``: the MLP reads ``resid_pre``,
                       not ``resid_mid``; ``resid_mid`` = ``resid_pre + mixer_out`` is kept as a
                       name (patching it changes the attention term only)
=====================  ==============================================================================

Both families' attention picks its op from ``ALL_ATTENTION_FUNCTIONS`` and is intercepted through
`hooks.adapters.hf_common.patch_attention`, except GPT-2 with ``reorder_and_upcast_attn`` under
eager attention, which calls its own op (refused). ``head_projection``: GPT-2's ``c_proj`` is a
``Conv1D`` (weight ``[in, out]``), given as a Linear-shaped view; GPT-NeoX's ``dense``.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch.nn as nn

from hooks.adapters.base import HeadProjection, LayerInfo
from hooks.adapters.hf_common import HFAdapter, attn_meta, base_model, decoder_layers


class _LinearView(nn.Module):
    """A GPT-2 ``Conv1D`` seen as a Linear: ``weight`` ``[out, in]`` (its transpose), its ``bias``."""

    def __init__(self, conv):
        super().__init__()
        object.__setattr__(self, "conv", conv)  # not a submodule: the view owns no parameters

    @property
    def weight(self):
        return self.conv.weight.T

    @property
    def bias(self):
        return self.conv.bias

    @property
    def in_features(self):
        return self.conv.weight.shape[0]


def _gpt2_base(model):
    base = getattr(model, "transformer", model)
    if not isinstance(getattr(base, "h", None), nn.ModuleList):
        raise TypeError(f"{type(model).__name__}: cannot find GPT-2's blocks (transformer.h)")
    return base


def _gpt2_layer(i, blk, config) -> LayerInfo:
    if getattr(config, "add_cross_attention", False) or hasattr(blk, "crossattention"):
        raise TypeError(f"layer {i} ({type(blk).__name__}) has cross-attention; not a supported layout "
                        "(decoder-only GPT-2 is)")
    return LayerInfo(index=i, block=blk, mixer_out=blk.attn, mlp_out=blk.mlp, attn=blk.attn,
                     attn_meta=attn_meta(blk.attn))


def _neox_layer(i, blk) -> LayerInfo:
    for need in ("attention", "mlp", "post_attention_dropout", "post_mlp_dropout"):
        if not hasattr(blk, need):
            raise TypeError(f"layer {i} ({type(blk).__name__}) has no '{need}'; not a supported layout")
    attn = blk.attention
    meta = {"scale": float(attn.scaling), "sliding_window": None}
    return LayerInfo(index=i, block=blk, mixer_out=blk.post_attention_dropout, mlp_out=blk.post_mlp_dropout,
                     attn=attn, attn_meta=meta)


class HFGPTAdapter(HFAdapter):
    family = "hf_gpt"
    model_types = ("gpt2", "gpt_neox")

    def layers(self, model):
        if model.config.model_type == "gpt2":
            return [_gpt2_layer(i, blk, model.config) for i, blk in enumerate(_gpt2_base(model).h)]
        return [_neox_layer(i, blk) for i, blk in enumerate(decoder_layers(model))]

    def embed(self, model):
        if model.config.model_type == "gpt2":
            return _gpt2_base(model).drop
        return base_model(model).emb_dropout

    def head_projection(self, model, layer, kind):
        """``attn.head_out`` (cached) through the out-projection: GPT-2's ``c_proj`` (as a Linear
        view), GPT-NeoX's ``dense``."""
        attn = layer.attn
        if model.config.model_type == "gpt2":
            return HeadProjection(_LinearView(attn.c_proj), attn.num_heads, input_is_cached=True)
        return HeadProjection(attn.dense, attn.dense.in_features // attn.head_size, input_is_cached=True)

    @contextmanager
    def patch_attention(self, layer, wrapper):
        attn = layer.attn
        if getattr(attn, "reorder_and_upcast_attn", False) and attn.config._attn_implementation == "eager":
            raise NotImplementedError(
                f"layer {layer.index}: GPT-2 with reorder_and_upcast_attn under eager attention computes "
                "attention in its own method, which cannot be intercepted; load the model with "
                "attn_implementation='sdpa' (which does not reorder; equal up to float rounding)")
        with super().patch_attention(layer, wrapper):
            yield
