"""Stand-ins for the residual terms of HF Mamba-family layers that no HF module outputs; layer forwards routing them.

Used by `hooks.adapters.hf_mamba` (and, for `_ZeroTerm`, by the other adapters of mixer-only blocks):

* `_ZeroTerm`: a term a block does not have (the MLP of a mixer-only block, the mixer of an MLP-only
  block): zeros; a hook's replacement is added to the residual stream where the term would be.
* `_BlockInput`: ``embed`` where the model scales the embedding inline (falcon_h1's
  ``embedding_multiplier``, granitemoehybrid's): the input of block 0.
* `_Term` / `_LayerSwap`: a term the layer computes inline (a sum of branches, a product with a
  multiplier). While a hook is on such a term, the layer's ``forward`` is swapped (on that instance;
  restored when the last hook on it is removed) for an equivalent forward written here that routes
  the term through a parameterless module (`_Term`), so that a hook sees, and may replace, exactly
  what the layer adds. The equivalents use the same tensor ops in the same order as HF's, so the
  swap alone changes no output bit.

  - falcon_h1 (`_falcon_layer_forward`): ``mixer_out`` = ``ssm_out_multiplier * mamba(x) +
    attention_out_multiplier * attn(attention_in_multiplier * x)`` (`_ParallelMix`), its two terms
    ``rec.out`` / ``attn.out`` (`_MixBranch`, pre-hooks on the sum).
  - granitemoehybrid (`_granite_layer_forward`): ``mixer_out`` = ``residual_multiplier *
    mixer(x)`` (Mamba2 or attention), ``mlp_out`` = ``residual_multiplier * (moe(x) +
    shared_mlp(x))`` (``shared_mlp(x)`` alone in a dense model).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from hooks.adapters.base import swap_attr
from hooks.adapters.hf_common import cache_kw


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def _replace_first(x, new):
    return (new,) + tuple(x[1:]) if isinstance(x, tuple) else new


class _Handles:
    """Several removable things as one torch-hook-like handle."""

    def __init__(self, *items):
        self.items = items

    def remove(self):
        for h in reversed(self.items):
            h() if callable(h) else h.remove()
        self.items = ()


# --- terms a block does not have; an embedding scaled inline -----------------------------------

class _ZeroTerm(nn.Module):
    """A residual term a block does not have (``where='mixer'``: the token mixer of an MLP-only
    block; ``'mlp'``: the MLP of a mixer-only block). Its "output" is zeros; a hook's replacement
    is added to the residual stream at that place. Not part of the model."""

    def __init__(self, block, where):
        super().__init__()
        self.where = where
        object.__setattr__(self, "block", block)  # not a submodule

    def _fire(self, hook, like):
        z = torch.zeros_like(like)
        r = hook(self, (), z)
        y = z if r is None else _first(r)
        return None if y is z else y

    def register_forward_hook(self, hook, *a, **kw):
        if self.where == "mlp":
            def post(mod, args, out):
                y = self._fire(hook, _first(out))
                return None if y is None else _replace_first(out, _first(out) + y)
            return self.block.register_forward_hook(post, prepend=True)  # before resid_post's hook

        def pre(mod, args, kwargs):  # after resid_pre's pre-hook
            x = args[0] if args else kwargs["hidden_states"]
            y = self._fire(hook, x)
            if y is None:
                return None
            if args:
                return (x + y,) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": x + y}
        return self.block.register_forward_pre_hook(pre, with_kwargs=True)


class _BlockInput(nn.Module):
    """``embed`` where the embedding module's output is not the input of block 0 (falcon_h1 scales
    it inline): a hook on this module sees, and may replace, block 0's input."""

    def __init__(self, block):
        super().__init__()
        object.__setattr__(self, "block", block)

    def register_forward_hook(self, hook, *a, **kw):
        def pre(mod, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            r = hook(self, (), x)
            if r is None or _first(r) is x:
                return None
            y = _first(r)
            if args:
                return (y,) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": y}
        return self.block.register_forward_pre_hook(pre, with_kwargs=True, prepend=True)


# --- terms a layer computes inline: the layer's forward swapped while hooked ------------------

class _LayerSwap:
    """``layer.forward`` replaced by ``fn(layer, *args, **kwargs)`` while at least one hook holds it
    (`hold`); the original is restored when the last holder releases it."""

    def __init__(self, layer, fn):
        self.layer, self.fn, self._swap, self._n = layer, fn, None, 0

    def hold(self):
        """Keep the layer's forward swapped until the returned function is called."""
        if self._n == 0:
            layer, fn = self.layer, self.fn

            def forward(*args, **kwargs):
                return fn(layer, *args, **kwargs)
            self._swap = swap_attr(layer, "forward", forward)
            self._swap.__enter__()
        self._n += 1

        def release():
            self._n -= 1
            if self._n == 0:
                swap, self._swap = self._swap, None
                swap.__exit__(None, None, None)
        return release


class _Term(nn.Module):
    """One term the swapped forward of ``swap.layer`` routes through this parameterless module (the
    identity); a forward hook on it sees, and may replace, that term. Hooking it holds the swap."""

    def __init__(self, swap: _LayerSwap):
        super().__init__()
        object.__setattr__(self, "swap", swap)  # not a submodule

    def forward(self, x):
        return x

    def register_forward_hook(self, hook, *a, **kw):
        handle = super().register_forward_hook(hook, *a, **kw)
        return _Handles(self.swap.hold(), handle)


class _ParallelMix(_Term):
    """falcon_h1: the sum a layer adds to the residual stream from its parallel Mamba and
    attention branches (multipliers applied), computed here by `_falcon_layer_forward`."""

    def __init__(self, layer):
        super().__init__(_LayerSwap(layer, lambda layer, *a, **k: _falcon_layer_forward(layer, self, *a, **k)))

    def forward(self, mamba_out, attn_out):
        return mamba_out + attn_out


class _MixBranch(nn.Module):
    """falcon_h1: one term of `_ParallelMix`'s sum (``arg`` 0: ``ssm_out_multiplier * mamba(x)``,
    ``rec.out``; 1: ``attn_out_multiplier * attn(...)``, ``attn.out``). A forward hook on it sees,
    and may replace, that term before the layer sums the two."""

    def __init__(self, mix, arg):
        super().__init__()
        object.__setattr__(self, "mix", mix)
        self.arg = arg

    def register_forward_hook(self, hook, *a, **kw):
        def pre(mod, args):
            r = hook(self, (), args[self.arg])
            if r is None or _first(r) is args[self.arg]:
                return None
            return tuple(_first(r) if j == self.arg else x for j, x in enumerate(args))
        handle = self.mix.register_forward_pre_hook(pre)
        return _Handles(self.mix.swap.hold(), handle)


def _falcon_layer_forward(layer, mix, hidden_states, attention_mask=None, mamba_attention_mask=None,
                          position_ids=None, past_key_values=None, use_cache=False,
                          position_embeddings=None, cache=None, **kwargs):
    """FalconH1DecoderLayer.forward (transformers 5.17-5.24: the cache comes as ``past_key_values``
    before 5.24, as ``cache`` from 5.24 on) with the branch sum through ``mix``."""
    past_key_values = cache if cache is not None else past_key_values
    residual = hidden_states
    hidden_states = layer.input_layernorm(hidden_states)
    m = layer.mamba(hidden_states=hidden_states, attention_mask=mamba_attention_mask,
                    **{cache_kw(type(layer.mamba).forward, "cache_params"): past_key_values}, **kwargs)
    m = m * layer.ssm_out_multiplier
    a, _ = layer.self_attn(hidden_states=hidden_states * layer.attention_in_multiplier,
                           attention_mask=attention_mask, position_ids=position_ids,
                           **{cache_kw(type(layer.self_attn).forward, "past_key_values"): past_key_values},
                           use_cache=use_cache,
                           position_embeddings=position_embeddings, **kwargs)
    a = a * layer.attn_out_multiplier
    hidden_states = residual + mix(m, a)
    residual = hidden_states
    hidden_states = layer.pre_ff_layernorm(hidden_states)
    hidden_states = layer.feed_forward(hidden_states)
    return (residual + hidden_states,)

def granite_terms(layer):
    """granitemoehybrid: (mixer term, MLP term) of ``layer``, both `_Term`s of one swap to
    `_granite_layer_forward`."""
    swap = _LayerSwap(layer, lambda layer, *a, **k: _granite_layer_forward(layer, terms, *a, **k))
    terms = (_Term(swap), _Term(swap))
    return terms


def _granite_layer_forward(layer, terms, hidden_states, attention_mask=None, past_key_values=None, use_cache=False,
                           position_embeddings=None, cache=None, **kwargs):
    """GraniteMoeHybridDecoderLayer.forward (transformers 5.17-5.25; the cache comes as
    ``past_key_values`` before 5.24, as ``cache`` from 5.24 on) with its two residual terms, each
    times ``residual_multiplier``, through ``terms`` (mixer, MLP)."""
    cache = cache if cache is not None else past_key_values
    mix_term, mlp_term = terms
    residual = hidden_states
    hidden_states = layer.input_layernorm(hidden_states)
    if layer.mamba is not None:
        hidden_states = layer.mamba(hidden_states=hidden_states, attention_mask=attention_mask,
                                    **{cache_kw(type(layer.mamba).forward, "cache_params"): cache}, **kwargs)
    else:
        hidden_states, _ = layer.self_attn(hidden_states=hidden_states, attention_mask=attention_mask,
                                           **{cache_kw(type(layer.self_attn).forward, "past_key_values"): cache},
                                           use_cache=use_cache, position_embeddings=position_embeddings, **kwargs)
    hidden_states = residual + mix_term(hidden_states * layer.residual_multiplier)
    residual = hidden_states
    hidden_states = layer.post_attention_layernorm(hidden_states)
    if layer.has_experts:
        hidden_states = layer.block_sparse_moe(hidden_states) + layer.shared_mlp(hidden_states)
    else:
        hidden_states = layer.shared_mlp(hidden_states)
    return residual + mlp_term(hidden_states * layer.residual_multiplier)
