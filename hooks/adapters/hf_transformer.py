"""Adapter for plain HF decoder-only transformers (attention + MLP in every layer).

Block ``i`` is ``model.model.layers[i]``; ``embed`` is the token embedding (= input of block 0 for
all families listed here). Per family:

=====================================  ==========================================================
family                                 residual terms
=====================================  ==========================================================
llama, mistral, qwen2, qwen3, olmo     pre-norm: ``mixer_out`` = ``self_attn`` (first output),
                                       ``mlp_out`` = ``mlp``
olmo2, olmo3                           post-norm: the sublayer output is normed before it is
                                       added, so ``mixer_out`` = ``post_attention_layernorm`` and
                                       ``mlp_out`` = ``post_feedforward_layernorm``
=====================================  ==========================================================

``attn`` = ``self_attn`` (intercepted through `hooks.adapters.hf_common`); ``attn_meta`` holds
its ``scaling`` and per-layer sliding window (olmo3 / qwen2 / qwen3 ``sliding_attention``
layers; mistral's config-wide window), and is refreshed from what the layer actually passes to
its attention op while attention names are hooked.
"""
from __future__ import annotations

from hooks.adapters.base import LayerInfo
from hooks.adapters.hf_common import HFAdapter, attn_meta, decoder_layers

PRE_NORM = ("llama", "mistral", "qwen2", "qwen3", "olmo")
POST_NORM = ("olmo2", "olmo3")


def transformer_layer(i, blk, post_norm: bool, config=None) -> LayerInfo:
    """LayerInfo of one HF attention + MLP decoder layer (pre- or post-norm style)."""
    for need in ("self_attn", "mlp") + (("post_attention_layernorm", "post_feedforward_layernorm")
                                        if post_norm else ()):
        if not hasattr(blk, need):
            raise TypeError(f"layer {i} ({type(blk).__name__}) has no '{need}'; not a supported layout")
    attn = blk.self_attn
    meta = attn_meta(attn)
    if meta["sliding_window"] is None and not hasattr(attn, "sliding_window") and config is not None \
            and getattr(config, "model_type", None) == "mistral":
        meta["sliding_window"] = getattr(config, "sliding_window", None) or None
    if post_norm:
        return LayerInfo(index=i, block=blk, mixer_out=blk.post_attention_layernorm,
                         mlp_out=blk.post_feedforward_layernorm, attn=attn, attn_meta=meta)
    return LayerInfo(index=i, block=blk, mixer_out=attn, mlp_out=blk.mlp, attn=attn, attn_meta=meta)


class HFTransformerAdapter(HFAdapter):
    family = "hf_transformer"
    model_types = PRE_NORM + POST_NORM

    def layers(self, model):
        post = model.config.model_type in POST_NORM
        return [transformer_layer(i, blk, post, model.config) for i, blk in enumerate(decoder_layers(model))]
