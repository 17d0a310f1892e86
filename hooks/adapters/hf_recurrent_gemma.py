"""Adapter for HF ``recurrent_gemma`` (Griffin / RecurrentGemma: RG-LRU recurrent blocks and local attention).

Block ``i`` is ``model.model.layers[i]``: ``temporal_pre_norm`` -> ``temporal_block`` -> residual add ->
``channel_pre_norm`` -> ``mlp_block`` -> residual add (pre-norm). ``mixer_out`` = ``temporal_block`` (its first
output), ``mlp_out`` = ``mlp_block``. ``embed`` is block 0's input, the token embedding times the model's
``normalizer`` (sqrt(hidden_size) rounded to bfloat16), which the model applies outside the embedding module
(`hf_mamba._BlockInput`); ``final_norm`` is ``model.model.final_norm``. The logits are soft-capped,
``cap * tanh(lm_head(x) / cap)`` (``logits_soft_cap``): `forward` returns the model's capped logits, the
cache's linear read-outs (logit lens, DLA) are before the cap (as gemma2's).

* ``sliding_attention`` layers: ``attn`` = the ``RecurrentGemmaAttention`` (local attention over
  ``attention_window_size`` tokens, GQA, partial RoPE), intercepted through `hooks.adapters.hf_common`.
* ``linear_attention`` layers (the recurrent block): ``linear_y`` branch (GeLU gate), ``linear_x`` ->
  causal depthwise ``conv_1d`` -> RG-LRU -> times the gate -> ``linear_out``. ``rec`` = the block.

The RG-LRU, per channel d of ``lru_width`` and token t, with x_t the conv output (the RG-LRU's input)::

    r_t = sigmoid(W_a x_t + b_a)   i_t = sigmoid(W_x x_t + b_x)      (block-diagonal, one block per head)
    log a_t = -8 r_t softplus(Lambda)        a_t = 0 where position_ids == 0 (a reset: the state restarts)
    h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i_t x_t)          (the sqrt factor is 1 at a reset)

is the Mamba1 recurrence (`hooks.scan.mamba1`) with N = 1, i.e. one scalar state per channel, so it is
served by the ``mamba1`` family in the Mamba1 layout (hooks.names): ``rec.v`` = i_t x_t ``[B, T, D]``,
``rec.beta`` = sqrt(1 - a_t^2) ``[B, T, D]`` (dt of Mamba1, the write strength), ``rec.decay`` = log a_t
``[B, T, D, 1]`` (``-inf`` at a reset), ``rec.q`` = ``rec.k`` = ones ``[B, T, 1]`` (C and B of Mamba1: the
RG-LRU writes and reads its whole state; a hook may still scale them), ``rec.state`` = h_t ``[B, T, D, 1]``
float32, ``rec.readout`` = h_t ``[B, T, D]`` (before the gate), ``rec.pattern`` ``[B, D, T, T]``. The view's
``A`` is -8 softplus(Lambda) ``[D, 1]`` (log a_t = r_t A); the decay is always given explicitly.

Scan interception. The RG-LRU computes its gates and calls its own method ``_rnn_scan(hidden_states,
recurrent_gate, reset, recurrent_states)`` (hidden_states = sqrt(1 - a^2) i x, recurrent_gate = a before the
reset). While ``rec.*`` names are hooked, a forward pre-hook on the RG-LRU records its input, and
``_rnn_scan`` is replaced on the instance by a stand-in that recomputes v, beta and log a from that input
with the model's own ops (so they are the tensors the model formed, bit for bit: the stand-in checks that
beta * v and exp(log a) are what it was passed, and raises otherwise) and hands the wrapper the view.
``call`` runs the model's own ``_rnn_scan`` on its own arguments, so a capture changes no output; the final
state goes back to the model (``rg_lru.recurrent_states``, the cache HF keeps on the module). The initial
state is the model's (its cache when decoding or continuing a prefill), so one-token decoding works too.
Everything is restored on exit (exceptions included).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from hooks.adapters.base import LayerInfo, swap_attr
from hooks.adapters.hf_common import HFAdapter, attn_meta, decoder_layers, forward_globals
from hooks.adapters.hf_mamba_layers import _BlockInput
from hooks.scan import mamba1 as mamba1_scan

MODEL_TYPES = ("recurrent_gemma",)


def rglru_inputs(lru, activations, position_ids):
    """(v = i_t x_t, beta = sqrt(1 - a_t^2) (1 at a reset), log a_t (before the reset), reset ``[B|1, T, 1]``)
    of RG-LRU module ``lru`` on its input ``activations`` ``[B, T, D]``, formed with the ops of the model's own
    forward (`RecurrentGemmaRglru.forward`), in the same order and dtype."""
    b, T, W = activations.shape
    H, bw = lru.num_attention_heads, lru.block_width
    reset = position_ids[:, :, None] == 0
    act = activations.reshape(b * T, H, bw).permute(1, 0, 2)
    res = torch.baddbmm(lru.input_gate_bias[:, None, :], act, lru.input_gate_weight)
    input_gate = torch.sigmoid(res.transpose(0, 1).reshape(b, T, W))
    res = torch.baddbmm(lru.recurrent_gate_bias[:, None, :], act, lru.recurrent_gate_weight)
    recurrent_gate = torch.sigmoid(res.transpose(0, 1).reshape(b, T, W))
    log_a = -8.0 * recurrent_gate * F.softplus(lru.recurrent_param)
    a_square = torch.exp(2 * log_a)
    gated = activations * input_gate
    sqrt = forward_globals(lru).get("SqrtBoundDerivative")  # the model's sqrt (its clipped gradient)
    mult = sqrt.apply(1 - a_square) if sqrt is not None else torch.sqrt(1 - a_square)
    mult = reset + ~reset * mult
    return gated, mult.type(activations.dtype), log_a, reset


def _view_kwargs(lru, gated, mult, log_a, reset, recurrent_states):
    """The Mamba1 scan kwargs (`hooks.scan.mamba1.scan`'s signature) of one RG-LRU call, N = 1."""
    ones = gated.new_ones(*gated.shape[:2], 1)
    g = log_a.masked_fill(reset, -float("inf"))[..., None]
    A = (-8.0 * F.softplus(lru.recurrent_param)).to(gated.dtype)[:, None]
    h0 = None if recurrent_states is None else recurrent_states.to(gated.device)[..., None]
    return dict(x=gated, dt=mult, A=A, B=ones, C=ones, D=None, initial_state=h0, output_final_state=True, g=g,
                dt_decay=None)


def _standin(lru, orig, wrapper, seen):
    """The replacement of ``lru._rnn_scan`` while hooked (see the module docstring)."""
    def rnn_scan(hidden_states, recurrent_gate, reset, recurrent_states, acc_dtype=torch.float32):
        if "x" not in seen:
            raise RuntimeError("RG-LRU _rnn_scan called outside its module's forward while rec.* hooks are on")
        gated, mult, log_a, reset_ = rglru_inputs(lru, seen.pop("x"), seen.pop("pos"))
        if not (torch.equal(gated * mult, hidden_states) and torch.equal(torch.exp(log_a), recurrent_gate)):
            raise RuntimeError(f"{type(lru).__name__}: its scan inputs are not the ones hooks recomputes (the "
                               "model's RG-LRU code changed?); hooks.adapters.hf_recurrent_gemma needs updating")
        kw = _view_kwargs(lru, gated, mult, log_a, reset_, recurrent_states)
        own = dict(kw)

        def call(x, dt, A, B, C, D=None, initial_state=None, output_final_state=False, g=None, dt_decay=None,
                 **unused):
            given = dict(x=x, dt=dt, B=B, C=C, initial_state=initial_state, g=g, dt_decay=dt_decay)
            if all(v is own[k] for k, v in given.items()):  # the model's own inputs: its own scan
                y, h = orig(hidden_states, recurrent_gate, reset, recurrent_states, acc_dtype)
                return y, h[..., None]
            return mamba1_scan.scan(x, dt, A, B, C, D, initial_state, True, g=g, dt_decay=dt_decay)

        y, final = wrapper(kw, call)
        if final is None:
            raise RuntimeError("the scan wrapper returned no final state; the RG-LRU keeps it as its cache")
        return y.to(hidden_states.dtype), final[..., 0].to(acc_dtype)
    return rnn_scan


@contextmanager
def patch_rglru_scan(block, wrapper):
    """Make recurrent block ``block`` (its ``rg_lru``) call ``wrapper(kwargs, call)`` instead of its
    ``_rnn_scan`` (see the module docstring). Nests: a second patch wraps the first."""
    lru = getattr(block, "rg_lru", None)
    if lru is None or not callable(getattr(lru, "_rnn_scan", None)):
        raise NotImplementedError(f"{type(block).__name__}: no rg_lru._rnn_scan found to intercept")
    seen = {}

    def pre(m, args, kwargs):
        seen["x"] = args[0] if args else kwargs["activations"]
        seen["pos"] = args[1] if len(args) > 1 else kwargs["position_ids"]

    handle = lru.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        with swap_attr(lru, "_rnn_scan", _standin(lru, lru._rnn_scan, wrapper, seen)):
            yield
    finally:
        handle.remove()
        seen.clear()


class HFRecurrentGemmaAdapter(HFAdapter):
    family = "hf_recurrent_gemma"
    model_types = MODEL_TYPES
    padding = "right"   # right padding only (HFAdapter.padding)
    padding_why = "HF's RecurrentGemma's recurrent blocks ignore attention_mask: their convolution reads left pads"

    def layers(self, model):
        out = []
        for i, blk in enumerate(decoder_layers(model)):
            tb = getattr(blk, "temporal_block", None)
            if tb is None or not hasattr(blk, "mlp_block"):
                raise TypeError(f"recurrent_gemma layer {i} ({type(blk).__name__}) has no temporal_block / "
                                "mlp_block; not a supported layout")
            if hasattr(tb, "rg_lru"):
                out.append(LayerInfo(index=i, block=blk, mixer_out=tb, mlp_out=blk.mlp_block, rec=tb,
                                     rec_family="mamba1"))
            else:
                out.append(LayerInfo(index=i, block=blk, mixer_out=tb, mlp_out=blk.mlp_block, attn=tb,
                                     attn_meta=attn_meta(tb)))
        return out

    def embed(self, model):
        return _BlockInput(decoder_layers(model)[0])

    def final_norm(self, model):
        return model.model.final_norm

    def head_projection(self, model, layer, kind):
        if kind == "rec":
            raise NotImplementedError(
                f"layer {layer.index}: an RG-LRU layer has no heads (one recurrence per channel, gated per channel "
                f"before linear_out); per-head results are not provided: use blocks.{layer.index}.mixer_out")
        return super().head_projection(model, layer, kind)

    @contextmanager
    def patch_scan(self, layer, wrapper):
        with patch_rglru_scan(layer.rec, wrapper):
            yield
