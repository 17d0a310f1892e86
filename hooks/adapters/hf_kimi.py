"""Adapter for HF ``kimi_linear`` (Kimi Linear: Kimi Delta Attention layers interleaved with MLA
full-attention layers, dense MLP or MoE blocks).

Block ``i`` is ``model.model.layers[i]``, pre-norm; its mixer is ``self_attn`` in both kinds of layer.

* ``linear_attention`` layers: ``rec`` = ``mixer_out`` = ``self_attn`` (``KimiLinearDeltaAttention``),
  family ``kda`` (`hooks.scan.kda`). Its forward calls the module-level kernels
  ``chunk_kimi_delta_attention`` (prefill / full sequence) and ``recurrent_kimi_delta_attention``
  (one-token decoding with a cache); they are intercepted exactly as hf_gdn intercepts the GDN
  kernels (`hooks.adapters.hf_gdn.patch_gdn_scan`: the two globals replaced by dispatchers while
  rec.* names are hooked, the layer marked as the caller by a pre-hook / always-called hook,
  everything restored on exit). The wrapper sees the kernel's inputs as the layer passes them:
  q, k, v after the short conv + SiLU, ``g`` = -exp(A_log) softplus(f_b(f_a(x)) + dt_bias) per key
  dim ``[B, T, H, K]`` (``rec.decay``), ``beta`` = sigmoid(b_proj(x)); q / k are l2-normalised in
  the kernel (``use_qk_l2norm_in_kernel``), so rec.q / rec.k are the normalised ones. ``rec.readout``
  is the kernel output, before the gated RMSNorm (``o_norm``) and ``o_proj``.
* ``full_attention`` layers: ``attn`` = ``mixer_out`` = ``self_attn`` (``KimiLinearAttention``, MLA
  without RoPE), intercepted through `hooks.adapters.hf_common.patch_attention`: ``attn.q`` is
  ``[B, T, H, qk_nope + qk_rope]``, ``attn.k`` the per-head keys the layer expands from its latent
  (``kv_b_proj``, with the shared ``k_rot`` part) ``[B, T, H, qk_nope + qk_rope]``, ``attn.v``
  ``[B, T, H, v_head_dim]``, ``attn.head_out`` ``[B, T, H, v_head_dim]`` (o_proj's input). The
  compressed latent (what the KV cache stores) has no hook name.
* ``mlp_out`` = ``mlp`` (dense MLP, or the MoE block's output: routed experts + shared experts).

Packed sequences (``cu_seqlens``) are not supported while rec.* names are hooked.
"""
from __future__ import annotations

from contextlib import contextmanager

from hooks.adapters.base import HeadProjection, LayerInfo
from hooks.adapters.hf_common import HFAdapter, decoder_layers
from hooks.adapters.hf_gdn import patch_gdn_scan
from hooks.adapters.hf_transformer import transformer_layer

MODEL_TYPES = ("kimi_linear",)
KERNELS = {"chunk_kimi_delta_attention": "chunk_kimi_delta_attention",
           "recurrent_kimi_delta_attention": "recurrent_kimi_delta_attention"}


class HFKimiAdapter(HFAdapter):
    family = "hf_kimi"
    model_types = MODEL_TYPES

    def layers(self, model):
        out = []
        for i, blk in enumerate(decoder_layers(model)):
            kind = getattr(blk, "block_type", None)
            if kind == "linear_attention":
                out.append(LayerInfo(index=i, block=blk, mixer_out=blk.self_attn, mlp_out=blk.mlp, rec=blk.self_attn,
                                     rec_family="kda"))
            elif kind == "full_attention":
                out.append(transformer_layer(i, blk, False, model.config))
            else:
                raise TypeError(f"kimi_linear layer {i}: unknown block_type {kind!r}; supported: "
                                "'linear_attention' (KDA), 'full_attention' (MLA)")
        return out

    def head_projection(self, model, layer, kind):
        """Attention (MLA): ``o_proj`` of the cached ``attn.head_out`` (H heads of ``v_head_dim``).
        KDA: ``o_proj`` of the gated per-head RMSNorm's output (recorded), as for GDN."""
        if kind == "attn":
            m = layer.attn
            return HeadProjection(m.o_proj, m.num_heads, input_is_cached=True)
        return super().head_projection(model, layer, kind)

    @contextmanager
    def patch_scan(self, layer, wrapper):
        with patch_gdn_scan(layer.rec, wrapper, kernels=KERNELS):
            yield
