"""Adapter for HF ``minimax`` (MiniMax-Text-01: lightning attention, i.e. decayed linear attention, interleaved
with softmax attention; sparse-MoE MLPs; DeepNorm-style residuals).

Block ``i`` is ``model.model.layers[i]``. Its ``self_attn`` is a ``MiniMaxLightningAttention`` on
``linear_attention`` layers (``rec``, family ``gla``) and a ``MiniMaxAttention`` on ``full_attention`` layers
(``attn``, intercepted through `hooks.adapters.hf_common`; the config's ``sliding_window`` if set).

Residual terms. The layer keeps its normalisation inside the residual path::

    h = input_layernorm(x);           r   = alpha_a h  + beta_a self_attn(h)
    h2 = post_attention_layernorm(r); out = alpha_m h2 + beta_m mlp(h2)

(alpha / beta from the config, per layer kind), so nothing the model forms is added to the block's input. The
names keep their identities by taking each sublayer's term as the change it makes to the stream:
``resid_pre`` = x, ``resid_mid`` = r, ``resid_post`` = out (the model's tensors), ``mixer_out`` = r - x
(``beta_a self_attn(h)`` plus the renormalisation ``alpha_a h - x``), ``mlp_out`` = out - r. Then
``resid_mid = resid_pre + mixer_out`` and ``resid_post = resid_mid + mlp_out`` (to float rounding: the
model never forms x + (r - x)), and embed + sum(mixer_out + mlp_out) = the last ``resid_post``. A hook's
replacement y' of ``mixer_out`` makes r = x + y' (what post_attention_layernorm receives), of ``mlp_out``
makes out = r + y'; an identity hook changes nothing (bit for bit). The sublayers' own outputs are the
``attn.*`` / ``rec.*`` names (``attn.head_out``; ``rec.readout``, before the layer's norm and output gate).
Per-head results are not provided (``mixer_out`` is not a sum over heads).

Lightning attention as GLA (`hooks.scan.gla`) with one scalar decay per head, constant in time::

    S_t = exp(-s_h) S_{t-1} + k_t v_t^T        o_t = S_t^T q_t   (scale 1)

with s_h the layer's ``slope_rate`` and q, k, v = act(qkv_proj(h)) split per head (padding positions zeroed
by the model's own ``apply_mask_to_padding_states``). So ``rec.q`` / ``rec.k`` ``[B, T, H, K]``, ``rec.v``
``[B, T, H, V]``, ``rec.decay`` = -s_h ``[B, T, H]``, ``rec.state`` ``[B, T, H, K, V]`` (the layout of the
model's linear cache, ``K^T V`` per head), ``rec.readout`` ``[B, T, H, V]``; no ``rec.beta``. HF computes it
inline (blockwise, no kernel call to intercept): while ``rec.*`` names are hooked the module's ``forward`` is
replaced on the instance by an equivalent written with ``hooks.scan.gla`` (qkv -> scan -> norm -> output gate
-> out_proj; initial state = the model's linear cache, final state written back to it). While rec.* names are
only cached, the module's own forward gives the output (bit for bit) and the equivalent runs beside it
without touching the cache; a hook function on a rec.* name makes the equivalent's output the layer's (equal
to the model's to float rounding). Decoding from the cache and padding masks work on both paths.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn

from hooks.adapters.base import LayerInfo, swap_attr
from hooks.adapters.hf_common import HFAdapter, attn_meta, cache_kw, decoder_layers, forward_globals
from hooks.adapters.hf_mamba_layers import _first, _Handles
from hooks.scan import gla as gla_scan

MODEL_TYPES = ("minimax",)


def _with_first(args, kwargs, key, new):
    """A forward pre-hook's return value that replaces the module's first input (positional or ``key``)."""
    if args:
        return (new,) + tuple(args[1:]), kwargs
    return args, {**kwargs, key: new}


class _Delta(nn.Module):
    """A residual term no module outputs (module docstring): ``mixer`` = r - x, the change from the block's
    input to post_attention_layernorm's input; ``mlp`` = out - r, the change from there to the block's
    output. A forward hook on this module sees the term and may replace it. Not part of the model."""

    def __init__(self, block, where: str):
        super().__init__()
        self.where = where
        object.__setattr__(self, "block", block)  # not a submodule

    def _fire(self, hook, y):
        r = hook(self, (), y)
        return None if r is None or _first(r) is y else _first(r)

    def register_forward_hook(self, hook, *a, **kw):
        blk, seen = self.block, {}
        norm = blk.post_attention_layernorm

        def block_in(m, args, kwargs):  # after resid_pre's pre-hook: the (hooked) input
            seen["x"] = args[0] if args else kwargs["hidden_states"]

        def mid(m, args, kwargs):  # post_attention_layernorm's input: r
            r = args[0] if args else kwargs["hidden_states"]
            if self.where == "mlp":
                seen["r"] = r
                return None
            x = seen.pop("x")
            new = self._fire(hook, r - x)
            return None if new is None else _with_first(args, kwargs, "hidden_states", x + new)

        def block_out(m, args, out):  # ahead of resid_post's hook
            r = seen.pop("r")
            new = self._fire(hook, out - r)
            return None if new is None else r + new
        if self.where == "mixer":
            return _Handles(blk.register_forward_pre_hook(block_in, with_kwargs=True),
                            norm.register_forward_pre_hook(mid, with_kwargs=True))
        return _Handles(norm.register_forward_pre_hook(mid, with_kwargs=True),
                        blk.register_forward_hook(block_out, prepend=True))


def lightning_qkv(mod, hidden_states, attention_mask):
    """q, k, v ``[B, T, H, D]`` of lightning-attention module ``mod``, with the model's own ops."""
    b, T, _ = hidden_states.shape
    qkv = mod.act_fn(mod.qkv_proj(hidden_states))
    qkv = forward_globals(mod)["apply_mask_to_padding_states"](qkv, attention_mask)
    qkv = qkv.reshape(b, T, mod.num_attention_heads, 3 * mod.head_dim)
    return torch.split(qkv, mod.head_dim, dim=3)


def _lightning_forward(mod, wrapper, orig, hidden_states, attention_mask=None, cache=None, **kwargs):
    """Equivalent of ``MiniMaxLightningAttention.forward`` with the scan done by ``hooks.scan.gla`` and shown to
    ``wrapper(kw, call)``; returns (output, final state) as the model's forward does."""
    h0 = cache.get_linear_cache(mod.layer_idx) if cache is not None else None
    own = None
    if getattr(wrapper, "capture_only", False):  # the model's own forward gives the output and fills the cache
        own = orig(hidden_states, attention_mask=attention_mask,
                   **{cache_kw(type(mod).forward, "past_key_values"): cache}, **kwargs)
        cache = None
    b, T, _ = hidden_states.shape
    q, k, v = lightning_qkv(mod, hidden_states, attention_mask)
    g = (-mod.slope_rate.reshape(1, 1, -1)).to(q.dtype).expand(b, T, -1).contiguous()  # a hook may edit it
    kw = dict(q=q, k=k, v=v, g=g, scale=1.0, initial_state=None if h0 is None or isinstance(h0, list) else h0,
              output_final_state=True)
    o, final = wrapper(kw, gla_scan.scan)
    if own is not None:
        return own
    final = final.to(v.dtype)
    out = mod.norm(o.reshape(b, T, -1).to(v.dtype))
    out = torch.sigmoid(mod.output_gate(hidden_states)) * out
    out = mod.out_proj(out)
    if cache is not None:
        cache.set_linear_cache(mod.layer_idx, final)
    return out, final


@contextmanager
def patch_lightning_scan(mod, wrapper):
    """Replace lightning-attention module ``mod``'s forward (on the instance) by `_lightning_forward`."""
    for need in ("qkv_proj", "slope_rate", "output_gate", "out_proj", "norm"):
        if not hasattr(mod, need):
            raise NotImplementedError(f"{type(mod).__name__} has no '{need}'; not a supported lightning attention")
    orig = mod.forward

    def forward(hidden_states, position_embeddings=None, attention_mask=None, cache=None, past_key_values=None,
                **kwargs):
        cache = cache if cache is not None else past_key_values
        return _lightning_forward(mod, wrapper, orig, hidden_states, attention_mask=attention_mask, cache=cache,
                                  position_embeddings=position_embeddings, **kwargs)
    with swap_attr(mod, "forward", forward):
        yield


class HFMiniMaxAdapter(HFAdapter):
    family = "hf_minimax"
    model_types = MODEL_TYPES

    def layers(self, model):
        out = []
        for i, blk in enumerate(decoder_layers(model)):
            for need in ("self_attn", "mlp", "post_attention_layernorm"):
                if not hasattr(blk, need):
                    raise TypeError(f"minimax layer {i} ({type(blk).__name__}) has no '{need}'")
            L = LayerInfo(index=i, block=blk, mixer_out=_Delta(blk, "mixer"), mlp_out=_Delta(blk, "mlp"))
            if hasattr(blk.self_attn, "slope_rate"):
                L.rec, L.rec_family = blk.self_attn, "gla"
            else:
                L.attn, L.attn_meta = blk.self_attn, attn_meta(blk.self_attn)
                L.attn_meta["sliding_window"] = getattr(model.config, "sliding_window", None) or None
            out.append(L)
        return out

    def head_projection(self, model, layer, kind):
        raise NotImplementedError(
            f"layer {layer.index}: minimax's mixer_out is the change the sublayer makes to the stream, its "
            f"residual renormalisation included, not a sum over heads; per-head results are not provided "
            f"(the heads' outputs are blocks.{layer.index}.{'attn.head_out' if kind == 'attn' else 'rec.readout'})")

    @contextmanager
    def patch_scan(self, layer, wrapper):
        with patch_lightning_scan(layer.rec, wrapper):
            yield
