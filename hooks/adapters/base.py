"""What an adapter tells `hooks.core` about one model family.

An adapter maps a model onto the common vocabulary (hooks.names): for each layer, which module's
input is the residual stream, which module's output is the mixer / MLP contribution, and how to
intercept the attention core op and the recurrent scan kernel call. The core does the rest
(hooks, caching, pattern recomputation, per-token states, state patching through the recurrence).
For the cache's analysis methods (`hooks.cache.Cache`: logit lens, direct logit attribution, per-head
results) it also names the model's final norm, its unembedding and each layer's out-projections.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch.nn as nn


@dataclass
class LayerInfo:
    index: int
    block: nn.Module                 # input (first arg / hidden_states) = resid_pre; output = resid_post
    mixer_out: nn.Module             # output = what the mixer adds to the residual stream
    mlp_out: nn.Module | None        # output = what the MLP adds (None: block has no MLP)
    attn: nn.Module | None = None    # attention module (attn.* names), None if none
    rec: nn.Module | None = None     # recurrent module (rec.* names), None if none
    rec_family: str | None = None    # a name in hooks.scan.FAMILIES: 'gdn' | 'gla' | 'mamba2' | 'mamba1'
    attn_meta: dict = field(default_factory=dict)  # scale, sliding_window (None = full causal), softcap
    # parallel layers only: {'attn': module, 'rec': module}, each module's output that branch's term of
    # mixer_out (hooked as blocks.{i}.attn.out / rec.out; a hook's replacement is what the layer sums)
    branches: dict = field(default_factory=dict)


@dataclass
class HeadProjection:
    """How the heads of one kind ('attn' / 'rec') of one layer reach the residual stream
    (`Adapter.head_projection`): ``proj`` (a Linear) maps the heads' outputs, concatenated
    ``[.., n_heads * Dv]``, to ``[.., D]``; head h's result is its ``Dv`` input channels through the
    matching columns of ``proj.weight``, times ``multiplier``, through ``post_norm`` (a norm the
    layer applies to ``proj``'s output before adding it, with its scale frozen at the layer's actual
    output) if there is one. ``input_is_cached``: ``proj``'s input is the cached ``attn.head_out``
    itself; otherwise (output gates, gated norms after the readout) ``run_with_cache(heads=True)``
    records ``proj``'s input."""
    proj: nn.Module
    n_heads: int
    input_is_cached: bool = False
    multiplier: float = 1.0
    post_norm: nn.Module | None = None


FINAL_NORMS = ("norm_f", "final_layernorm", "final_layer_norm", "norm", "ln_f")


class Adapter:
    """Base class. Subclasses set ``family`` and implement ``matches``/``layers``; they override
    the two ``patch_*`` context managers to intercept the core ops of their modules."""
    family = "base"

    @classmethod
    def matches(cls, model) -> bool:
        raise NotImplementedError

    def layers(self, model) -> list[LayerInfo]:
        raise NotImplementedError

    def embed(self, model) -> nn.Module:
        raise NotImplementedError

    def unembed(self, model) -> nn.Module:
        """The module that maps final hidden states [B, T, D] to logits (HF: the output embeddings)."""
        get = getattr(model, "get_output_embeddings", None)
        head = get() if callable(get) else None
        head = head if head is not None else getattr(model, "lm_head", None)
        if not isinstance(head, nn.Module):
            raise TypeError(f"{type(model).__name__}: cannot find the unembedding (lm_head)")
        return head

    def unembed_weight(self, model):
        """(W [vocab, D], bias [vocab] or None) with logits = final_norm(x) @ W.T + bias (multipliers
        the model applies to its logits folded into W and bias)."""
        head = self.unembed(model)
        return head.weight, getattr(head, "bias", None)

    def final_norm(self, model) -> nn.Module:
        """The norm between the last block and the unembedding (found by its usual attribute names
        on the model or its decoder stack)."""
        for owner in (model, getattr(model, "model", None), getattr(model, "backbone", None),
                      getattr(model, "base_model", None)):
            for a in FINAL_NORMS:
                m = getattr(owner, a, None) if isinstance(owner, nn.Module) else None
                if isinstance(m, nn.Module):
                    return m
        raise NotImplementedError(f"{self.family}: cannot find the final norm of {type(model).__name__} "
                                  f"(looked for {', '.join(FINAL_NORMS)})")

    def head_projection(self, model, layer: LayerInfo, kind: str) -> HeadProjection:
        """How the heads of ``kind`` ('attn' or 'rec') of ``layer`` reach the residual stream
        (`HeadProjection`); NotImplementedError (saying why) where per-head results cannot be
        given exactly."""
        raise NotImplementedError(f"{self.family}: per-head results are not provided for this family")

    padding = False   # whether forward takes a padding attention_mask (HF adapters)

    def forward(self, model, tokens):
        """Run the model on [B, T] token ids and return logits [B, T, vocab]."""
        out = model(tokens)
        return getattr(out, "logits", out)

    @contextmanager
    def patch_attention(self, layer: LayerInfo, wrapper):
        """Make the layer call ``wrapper(q, k, v, call)`` instead of its attention core op.
        q: [B, T, H, Dh], k/v: [B, T, Hkv, Dh] (after RoPE); ``call(q, k, v)`` runs the original
        op; the wrapper returns o [B, T, H, Dh] (`hooks.session.AttentionHook`)."""
        raise NotImplementedError(f"{self.family}: attention interception not implemented")
        yield

    @contextmanager
    def patch_scan(self, layer: LayerInfo, wrapper):
        """Make the layer call ``wrapper(kwargs, call)`` instead of its scan kernel. ``kwargs`` are
        in the signature of ``hooks.scan.<family>.scan``; ``call(**kwargs)`` runs the original
        kernel; the wrapper (`hooks.session.ScanHook`) returns (o, final_state). An adapter that cannot reach the layer's own
        kernel and runs an equivalent forward instead should, when ``wrapper.capture_only`` is true
        (no hook function on the layer's rec names, only caching), return the layer's own output
        and run the equivalent beside it, without the cache, so that capture leaves the outputs as
        they were (fla and HF Mamba2 mixers do)."""
        raise NotImplementedError(f"{self.family}: scan interception not implemented")
        yield


@contextmanager
def swap_attr(obj, name: str, value):
    """Temporarily replace ``obj.name``; always restored (exceptions included)."""
    had = name in vars(obj)
    old = vars(obj).get(name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if had:
            setattr(obj, name, old)
        else:
            delattr(obj, name)
