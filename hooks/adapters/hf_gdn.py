"""Adapter for HF attention + Gated DeltaNet hybrids: ``olmo_hybrid``, ``qwen3_next`` (and the
text-only ``qwen3_5_text`` / ``qwen3_5_moe_text``, laid out as qwen3_next).

Block ``i`` is ``model.model.layers[i]``.

=============  ==================================================================================
family         layers
=============  ==================================================================================
olmo_hybrid    ``linear_attention`` layers (pre-norm): ``rec`` = ``mixer_out`` = ``linear_attn``,
               ``mlp_out`` = ``mlp``. ``full_attention`` layers (post-norm, as olmo3):
               ``attn`` = ``self_attn``, ``mixer_out`` = ``post_attention_layernorm``, ``mlp_out``
               = ``post_feedforward_layernorm``.
qwen3_next,    pre-norm everywhere: ``mixer_out`` = ``linear_attn`` (``rec``) or ``self_attn``
qwen3_5_text   (``attn``; its output gate is applied after ``attn.head_out``), ``mlp_out`` =
               ``mlp`` (dense or sparse-MoE block).
=============  ==================================================================================

Scan interception. Both families call module-level kernels from the GDN forward:
``torch_chunk_gated_delta_rule`` (prefill / full sequence) and
``torch_recurrent_gated_delta_rule`` (one-token decoding with a cache). While ``rec.*`` names
are hooked on a layer, those two globals of the modeling module are replaced by dispatchers
and the GDN module gets a forward pre-hook / forward hook (``always_call``) that mark it as the
caller; calls from other modules go to the original kernel. The dispatcher hands the wrapper
the kernel's inputs in ``hooks.scan.gdn.scan``'s signature, exactly as the layer passes them,
i.e. after the conv + SiLU, with ``g`` = -exp(A_log) softplus(a + dt_bias), and ``beta`` after
olmo_hybrid's doubling (``linear_allow_neg_eigval``); q / k are repeated to the value heads
when the layer has fewer key heads (transformers 5.17 repeats before the call, 5.23 inside
the kernel; the canonical view is the same). ``use_qk_l2norm_in_kernel`` is passed on, so
rec.q / rec.k are l2-normalised (hooks.recurrence). Everything is restored on exit.
Instances with their own ``chunk_gated_delta_rule`` / ``recurrent_gated_delta_rule`` attribute
(older layouts) are patched on the instance instead. Packed sequences (``cu_seqlens``) are not
supported while rec.* names are hooked.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager

from hooks.adapters.base import LayerInfo, swap_attr
from hooks.adapters.hf_common import HFAdapter, decoder_layers, dispatch_globals, forward_globals
from hooks.adapters.hf_transformer import transformer_layer

MODEL_TYPES = ("olmo_hybrid", "qwen3_next", "qwen3_5_text", "qwen3_5_moe_text")
POST_NORM_ATTN = ("olmo_hybrid",)
KERNELS = {"torch_chunk_gated_delta_rule": "chunk_gated_delta_rule",
           "torch_recurrent_gated_delta_rule": "recurrent_gated_delta_rule"}
_ARGS = ("query", "key", "value", "g", "beta")


def _gdn_call(orig, chain, args, kwargs):
    """Run ``chain`` of wrappers around kernel ``orig`` called as orig(*args, **kwargs)."""
    a = dict(zip(_ARGS, args))
    if len(args) > len(_ARGS):
        raise TypeError(f"unexpected positional arguments to the GDN kernel: {len(args)}")
    kwargs = dict(kwargs)
    for n in _ARGS:
        if n in kwargs:
            a[n] = kwargs.pop(n)
    if kwargs.get("cu_seqlens") is not None:
        raise NotImplementedError("packed sequences (cu_seqlens) are not supported while rec.* hooks are on")
    q, k, v = a["query"], a["key"], a["value"]
    if q.shape[2] != v.shape[2]:  # grouped value heads: each q/k head serves consecutive v heads
        r = v.shape[2] // q.shape[2]
        q, k = q.repeat_interleave(r, dim=2), k.repeat_interleave(r, dim=2)
    kw = dict(q=q, k=k, v=v, g=a["g"], beta=a["beta"], scale=kwargs.pop("scale", None),
              initial_state=kwargs.pop("initial_state", None),
              output_final_state=kwargs.pop("output_final_state", False),
              use_qk_l2norm_in_kernel=kwargs.pop("use_qk_l2norm_in_kernel", False))
    rest = kwargs  # chunk_size, cu_seqlens=None, ...

    def run(i, kw):
        if i == len(chain):
            kw = dict(kw)
            q_, k_, v_ = kw.pop("q"), kw.pop("k"), kw.pop("v")
            if kw.get("scale") is None:
                kw.pop("scale", None)
            return orig(q_, k_, v_, **kw, **rest)
        return chain[i](kw, lambda **kw_: run(i + 1, kw_))
    return run(0, kw)


def _kernel_standin(d, fn):
    """Replacement for a module-level GDN kernel: calls from a patched GDN module (the innermost
    one running, see ``patch_gdn_scan``) go through its wrappers, others to ``fn``."""
    def kernel(*args, **kwargs):
        chain = d.chains.get(d.running[-1]) if d.running else None
        if not chain:
            return fn(*args, **kwargs)
        return _gdn_call(fn, chain, args, kwargs)
    return kernel


@contextmanager
def patch_gdn_scan(rec, wrapper, kernels=None):
    """Make GDN module ``rec`` (olmo_hybrid / qwen3_next style) call ``wrapper(kwargs, call)``
    instead of its chunk / recurrent kernel (see the module docstring). ``kernels``: {module-level
    kernel name: instance attribute name} of a layer laid out the same way with other kernel names
    (default `KERNELS`; hf_kimi's KDA layers)."""
    kernels = KERNELS if kernels is None else kernels
    own = [a for a in kernels.values() if callable(vars(rec).get(a))]
    if own:  # kernels held on the instance
        with ExitStack() as st:
            for a in own:
                fn = vars(rec)[a]
                st.enter_context(swap_attr(rec, a, lambda *args, _fn=fn, **kw: _gdn_call(_fn, [wrapper], args, kw)))
            yield
        return
    g = forward_globals(rec)
    if not any(name in g for name in kernels):
        raise NotImplementedError(f"{type(rec).__name__}: no gated-delta-rule kernel found to intercept "
                                  f"(looked for {', '.join(kernels)} in {g.get('__name__')})")
    with dispatch_globals(g, "gdn", tuple(kernels), _kernel_standin, rec, wrapper) as d:
        handles = [rec.register_forward_pre_hook(lambda m, a: d.running.append(m)),
                   rec.register_forward_hook(lambda m, a, o: _pop(d.running, m), always_call=True)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()


def _pop(stack, m):
    for j in range(len(stack) - 1, -1, -1):
        if stack[j] is m:
            del stack[j]
            return


class HFGDNAdapter(HFAdapter):
    family = "hf_gdn"
    model_types = MODEL_TYPES

    def layers(self, model):
        post = model.config.model_type in POST_NORM_ATTN
        out = []
        for i, blk in enumerate(decoder_layers(model)):
            rec = getattr(blk, "linear_attn", None)
            if rec is not None:
                out.append(LayerInfo(index=i, block=blk, mixer_out=rec, mlp_out=blk.mlp, rec=rec,
                                     rec_family="gdn"))
            else:
                out.append(transformer_layer(i, blk, post, model.config))
        return out

    @contextmanager
    def patch_scan(self, layer, wrapper):
        with patch_gdn_scan(layer.rec, wrapper):
            yield
