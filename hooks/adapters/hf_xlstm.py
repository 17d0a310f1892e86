"""Adapter for HF ``xlstm`` (xLSTM-7b style: every block an mLSTM layer then a gated feed-forward, pre-norm).

Block ``i`` is ``model.backbone.blocks[i]`` (``xLSTMBlock``: ``norm_mlstm`` -> ``mlstm_layer`` -> residual add ->
``norm_ffn`` -> ``ffn`` -> residual add). ``embed`` is the token embedding, ``mixer_out`` = ``mlstm_layer``
(its first output), ``mlp_out`` = ``ffn``, ``final_norm`` = ``backbone.out_norm``; ``rec`` = the
``mlstm_layer`` (family ``mlstm``, `hooks.scan.mlstm`) on every block; there is no attention. The logits are
soft-capped, ``cap * tanh(lm_head(x) / cap)`` (``output_logit_soft_cap``): `forward` returns the model's
capped logits, the cache's linear read-outs (logit lens, DLA) are before the cap. Per-head results:
``out_proj`` of the recorded gated per-head-norm output (the norm is per head, the gate per channel).

The mLSTM layer forms q, k, v, the output-gate and the soft-capped input / forget gate pre-activations, then
calls its ``mlstm_backend`` module (``xLSTMBackend``) with ``[B, H, T, ...]`` tensors and its cached state
(C, n, m); the backend runs HF's own chunkwise / sequence / step kernels (inference mode: chunks of
``chunk_size``, the remainder by the step loop, one token by the step kernel) and returns (h, (C, n, m)). The
rest of the layer (per-head layer norm, sigmoid output gate, out_proj) follows. In the hook names
(`hooks.scan.mlstm`): ``rec.q`` / ``rec.k`` ``[B, T, H, K]``, ``rec.v`` ``[B, T, H, V]`` (as the layer forms
them; the kernel scales q by K^-0.5), ``rec.decay`` = logsigmoid(f) ``[B, T, H]`` (log forget gate),
``rec.beta`` = i ``[B, T, H]`` (log input gate), ``rec.state`` = the stabilised matrix memory C_t ``[B, T,
H, K, V]`` float32 (the last one is the cache's C), ``rec.readout`` = h ``[B, T, H, V]`` (before the per-head
norm and output gate), ``rec.pattern`` ``[B, H, T(P), T]`` the exact effective attention (h_t = sum_s A[t, s]
v_s, plus the initial state's term when decoding from a cache).

Scan interception: while ``rec.*`` names are hooked on a layer, its backend's ``forward`` is replaced on the
instance by a stand-in that hands the wrapper the backend's arguments in `hooks.scan.mlstm.scan`'s
signature (``[B, T, H, ...]``, the gate pre-activations, ``eps`` from the config, the initial state as the
triple (C, n, m) or None); ``call`` runs the backend's own forward on its own arguments, so capture leaves
every output as it was (bit for bit), and the final state goes back to HF, which copies it into its cache
(decoding one token from the cache under hooks works). Hook functions that change rec inputs or states run
`hooks.scan.mlstm` instead. Everything is restored on exit (exceptions included).

Not supported while rec.* names are hooked: HF's long-sequence path (eval, more than
``config.max_inference_chunksize`` tokens and no ``output_hidden_states``), which runs every block once per
chunk of the sequence (a NotImplementedError says so); the external ``xlstm`` package's blocks (used by HF
when that package is installed; they have no ``xLSTMBackend``).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch.nn as nn

from hooks.adapters.base import HeadProjection, LayerInfo, swap_attr
from hooks.adapters.hf_common import HFAdapter

MODEL_TYPES = ("xlstm",)


def backbone(model: nn.Module) -> nn.Module:
    """The ``xLSTMModel`` (``model.backbone`` of the causal LM, or the model itself)."""
    for owner in (getattr(model, "backbone", None), model):
        if isinstance(owner, nn.Module) and isinstance(getattr(owner, "blocks", None), nn.ModuleList):
            return owner
    raise TypeError(f"{type(model).__name__}: cannot find the xLSTM blocks (no .backbone.blocks ModuleList)")


def _standin(backend, orig, wrapper):
    """The backend's forward while its layer's rec names are hooked (module docstring)."""
    cfg = backend.config

    def forward(query, key, value, igate, fgate, c_initial=None, n_initial=None, m_initial=None,
                return_last_states=None, mode=None):
        run_mode = mode or cfg.mode
        given = [s is not None for s in (c_initial, n_initial, m_initial)]
        if any(given) and not all(given):
            raise ValueError("the mLSTM initial state is given whole (c_initial, n_initial, m_initial) or not at all")
        last = True if "inference" in run_mode else bool(cfg.return_last_states if return_last_states is None
                                                         else return_last_states)
        tr = lambda x: x.transpose(1, 2)  # noqa: E731  [B, H, T, ...] <-> [B, T, H, ...]
        kw = dict(q=tr(query), k=tr(key), v=tr(value), igate=tr(igate), fgate=tr(fgate),
                  scale=query.shape[-1] ** -0.5, eps=cfg.eps,
                  initial_state=(c_initial, n_initial, m_initial) if all(given) else None, output_final_state=last)

        def call(q, k, v, igate, fgate, initial_state=None, **unused):
            c0, n0, m0 = initial_state if initial_state is not None else (None, None, None)
            out = orig(query=tr(q), key=tr(k), value=tr(v), igate=tr(igate), fgate=tr(fgate), c_initial=c0,
                       n_initial=n0, m_initial=m0, return_last_states=return_last_states, mode=mode)
            h, state = out if isinstance(out, tuple) else (out, None)
            return tr(h), state

        o, final = wrapper(kw, call)
        return (tr(o), final) if last else tr(o)
    return forward


@contextmanager
def patch_mlstm_scan(layer_module, wrapper, model_backbone=None):
    """Make mLSTM layer ``layer_module`` call ``wrapper(kwargs, call)`` instead of its backend (module
    docstring); ``model_backbone``: the ``xLSTMModel``, guarded against its chunked long-sequence path."""
    backend = getattr(layer_module, "mlstm_backend", None)
    if backend is None or not callable(getattr(backend, "_inference_fn", None)):
        raise NotImplementedError(f"{type(layer_module).__name__}: no HF xLSTMBackend to intercept (the external "
                                  "xlstm package's blocks are not supported); rec.* names need HF's own mLSTM layer")
    handle = None
    if model_backbone is not None:
        def guard(m, args, kwargs):
            x = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
            x = x if x is not None else (args[0] if args else None)
            cfg = m.config
            long = x is not None and x.shape[1] > cfg.max_inference_chunksize
            if long and not m.training and not (kwargs.get("output_hidden_states") or cfg.output_hidden_states):
                raise NotImplementedError(
                    f"{x.shape[1]} tokens > config.max_inference_chunksize ({cfg.max_inference_chunksize}): HF runs "
                    "every block once per chunk of the sequence, which rec.* hooks do not support; raise "
                    "config.max_inference_chunksize or pass output_hidden_states=True")
        handle = model_backbone.register_forward_pre_hook(guard, with_kwargs=True)
    try:
        with swap_attr(backend, "forward", _standin(backend, backend.forward, wrapper)):
            yield
    finally:
        if handle is not None:
            handle.remove()


class HFXLSTMAdapter(HFAdapter):
    family = "hf_xlstm"
    model_types = MODEL_TYPES
    padding = "right"   # right padding only (HFAdapter.padding)
    padding_why = "HF's xLSTM ignores attention_mask: left pads enter the mLSTM state"

    def layers(self, model):
        self._backbone = backbone(model)
        out = []
        for i, blk in enumerate(self._backbone.blocks):
            mix, ffn = getattr(blk, "mlstm_layer", None), getattr(blk, "ffn", None)
            if mix is None or ffn is None:
                raise TypeError(f"xlstm block {i} ({type(blk).__name__}) has no mlstm_layer / ffn; not a supported "
                                "layout")
            out.append(LayerInfo(index=i, block=blk, mixer_out=mix, mlp_out=ffn, rec=mix, rec_family="mlstm"))
        return out

    def final_norm(self, model):
        return backbone(model).out_norm

    def head_projection(self, model, layer, kind):
        if kind != "rec":
            raise NotImplementedError(f"layer {layer.index}: xlstm layers have no attention; kind='rec' only")
        return HeadProjection(layer.rec.out_proj, layer.rec.config.num_heads)

    @contextmanager
    def patch_scan(self, layer, wrapper):
        with patch_mlstm_scan(layer.rec, wrapper, getattr(self, "_backbone", None)):
            yield
