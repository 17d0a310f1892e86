"""Adapter for plain HF decoder-only transformers (attention + MLP in every layer).

Block ``i`` is ``model.model.layers[i]``; ``embed`` is the token embedding module, whose output is
the input of block 0 for all families listed here (gemma's embedding module multiplies by
``sqrt(hidden_size)`` itself, so ``embed`` holds the *scaled* embedding, the residual stream block 0
receives, and embed + sum(mixer_out + mlp_out) = the last ``resid_post`` holds). Per family:

=====================================  ==========================================================
family                                 residual terms
=====================================  ==========================================================
llama, mistral, qwen2, qwen3, olmo,    pre-norm: ``mixer_out`` = ``self_attn`` (first output),
gemma, phi3, qwen2_moe, qwen3_moe      ``mlp_out`` = ``mlp`` (MoE blocks: the sparse block's
                                       output, routed experts plus shared expert, the first
                                       element where a block returns a tuple); phi3: its residual
                                       dropouts come after (identity in eval), ``mixer_out`` /
                                       ``mlp_out`` are the dropouts' outputs
olmo2, olmo3                           post-norm: the sublayer output is normed before it is
                                       added, so ``mixer_out`` = ``post_attention_layernorm`` and
                                       ``mlp_out`` = ``post_feedforward_layernorm``
gemma2, gemma3_text                    sandwich norms (a norm before and after each sublayer):
                                       as post-norm, ``mixer_out`` = ``post_attention_layernorm``,
                                       ``mlp_out`` = ``post_feedforward_layernorm`` (the normed
                                       outputs that are added)
=====================================  ==========================================================

``attn`` = ``self_attn`` (intercepted through `hooks.adapters.hf_common`; phi3's fused
``qkv_proj`` is split by the layer before its op, so q / k / v are the usual per-head tensors);
``attn_meta`` holds its ``scaling``, per-layer sliding window (olmo3 / qwen2 / qwen3 / gemma2 /
gemma3 ``sliding_attention`` layers; mistral's and phi3's config-wide window) and ``softcap``
(gemma2's attention logit soft-capping), and is refreshed from what the layer actually passes to
its attention op while attention names are hooked. On a soft-capped layer ``attn.pattern`` is
``softmax(mask(softcap * tanh(scale * q k^T / softcap)))``, the model's own weights
(`hooks.session.attention_pattern` with ``softcap``, which the session's attention hook passes from
``attn_meta``; `softcap_pattern` is that call).

gemma2 (and gemma3 configs that set it) also soft-cap the *final* logits,
``cap * tanh(lm_head(norm(x)) / cap)``: `forward` returns the model's capped logits, while the
cache's linear read-outs (``Cache.unembed``, the logit lens, direct logit attribution) give the
logits before that cap (it is not linear; ``final_logit_softcapping`` in the config).
"""
from __future__ import annotations

import torch.nn as nn

from hooks.adapters.base import LayerInfo
from hooks.adapters.hf_common import HFAdapter, attn_meta, decoder_layers
from hooks.session import attention_pattern

PRE_NORM = ("llama", "mistral", "qwen2", "qwen3", "olmo", "gemma", "phi3", "qwen2_moe", "qwen3_moe")
POST_NORM = ("olmo2", "olmo3", "gemma2", "gemma3_text")  # gemma2/3: sandwich norms, same residual terms
CONFIG_WINDOW = ("mistral", "phi3")  # one sliding window for every layer, read from the config
SOFTCAP = ("gemma2",)  # families whose attention op is passed ``softcap=``
RESID_DROPOUT = {"phi3": ("resid_attn_dropout", "resid_mlp_dropout")}  # last op before each residual add


def transformer_layer(i, blk, post_norm: bool, config=None) -> LayerInfo:
    """LayerInfo of one HF attention + MLP decoder layer (pre- or post-norm style)."""
    for need in ("self_attn", "mlp") + (("post_attention_layernorm", "post_feedforward_layernorm")
                                        if post_norm else ()):
        if not hasattr(blk, need):
            raise TypeError(f"layer {i} ({type(blk).__name__}) has no '{need}'; not a supported layout")
    attn = blk.self_attn
    meta = attn_meta(attn)
    model_type = getattr(config, "model_type", None)
    if meta["sliding_window"] is None and not hasattr(attn, "sliding_window") and model_type in CONFIG_WINDOW:
        meta["sliding_window"] = getattr(config, "sliding_window", None) or None
    meta["softcap"] = (getattr(attn, "attn_logit_softcapping", None) or None) if model_type in SOFTCAP else None
    if post_norm:
        return LayerInfo(index=i, block=blk, mixer_out=blk.post_attention_layernorm,
                         mlp_out=blk.post_feedforward_layernorm, attn=attn, attn_meta=meta)
    mix, mlp = (getattr(blk, n) for n in RESID_DROPOUT[model_type]) if model_type in RESID_DROPOUT \
        else (attn, blk.mlp)
    return LayerInfo(index=i, block=blk, mixer_out=mix, mlp_out=mlp, attn=attn, attn_meta=meta)


def softcap_pattern(q, k, scale: float, softcap: float, sliding_window=None, rows=None):
    """`hooks.session.attention_pattern` with the logits soft-capped as gemma2's attention op does
    (``softcap * tanh(scale * q k^T / softcap)``, then the causal / window mask, then softmax)."""
    return attention_pattern(q, k, scale, sliding_window, rows, softcap=softcap)


class HFTransformerAdapter(HFAdapter):
    family = "hf_transformer"
    model_types = PRE_NORM + POST_NORM

    def layers(self, model):
        post = model.config.model_type in POST_NORM
        return [transformer_layer(i, blk, post, model.config) for i, blk in enumerate(decoder_layers(model))]

    def head_projection(self, model, layer, kind):
        """As `HFAdapter.head_projection`; a residual dropout after the out-projection (phi3) is
        not a norm to apply (identity in eval)."""
        spec = super().head_projection(model, layer, kind)
        if isinstance(spec.post_norm, nn.Dropout):
            spec.post_norm = None
        return spec
