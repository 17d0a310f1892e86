"""Adapter for HF ``rwkv`` (RWKV-4): time mix (the WKV recurrence) and channel mix per block, no softmax attention.

Block ``i`` is ``model.rwkv.blocks[i]``: ``h = h + attention(ln1(h))``, ``h = h + feed_forward(ln2(h))``;
``embed`` is ``rwkv.embeddings``, the final norm ``rwkv.ln_out``, the unembedding ``head``.

=================  ==============================================================================
name               what
=================  ==============================================================================
``resid_pre``      the residual stream entering block i. Block 0 normalises its input first
                   (``pre_ln``): its ``resid_pre`` is ``pre_ln(embed)``, the stream block 0's terms are
                   added to (a hook's replacement is what block 0 continues with), so ``resid_mid =
                   resid_pre + mixer_out`` holds in every block.
``mixer_out``      the time mix's output, ``attention.output(q (.) wkv)`` (``RwkvSelfAttention``)
``mlp_out``        the channel mix's output, ``sigmoid(r') (.) value(relu(key(.))^2)`` (``RwkvFeedForward``)
``resid_post``     the block's output
``rec.*``          every block: the WKV recurrence (family ``wkv``, `hooks.scan.wkv`)
=================  ==============================================================================

Rescaling. In eval mode with ``rescale_every > 0`` (RWKV-4 checkpoints: 6) HF divides the time mix's
``output`` and the channel mix's ``value`` weights of block i by 2^(i // rescale_every) and halves the stream
after each block i with (i + 1) % rescale_every == 0, between blocks (in ``RwkvModel.forward``, no module). So
there ``resid_pre`` of block i + 1 is ``resid_post`` of block i / 2 (and the final norm's input is the last
``resid_post`` / 2 when the depth is a multiple of rescale_every: ``ln_out`` is nearly scale-free, not
exactly, through its eps); each block's terms are in that block's scale. With ``rescale_every = 0`` (or in
training mode) embed + sum(mixer_out + mlp_out) is the last ``resid_post``.

WKV names (`hooks.scan.wkv`; D = ``attention_hidden_size``): ``rec.q`` = sigmoid(receptance) ``[B, T, D]`` (the
output gate: the layer feeds ``q (.) wkv`` to ``attention.output``), ``rec.k`` / ``rec.v`` = key / value
``[B, T, D]`` (after the token shift mix), ``rec.decay`` = -exp(time_decay) at every token ``[B, T, D]``,
``rec.state`` ``[B, T(P), D, 2]`` = (num_t, den_t) after token t in its real scale (HF's cache keeps the
stabilised triple (num', den', max): num = num' e^max), ``rec.readout`` = q (.) wkv ``[B, T, D]``, the input
of ``attention.output``; ``rec.pattern`` ``[B, D, T(P), T]`` one exact pattern per channel. No ``rec.beta``.
The token-shift states (the previous token's ln1 / ln2 output, HF's ``state[1]`` / ``state[0]``) have no
hook name: they are a copy of the previous position's normed stream.

Scan interception. While ``rec.*`` names are hooked on a block, its ``attention``'s ``forward`` is replaced
(on the instance; restored on exit) by one that runs HF's own code in HF's order: ``extract_key_value``
(token shift from the cache, key / value / receptance, shift state written), the layer's WKV state from
HF's cache, ``rwkv_linear_attention`` (looked up in the modeling module, so HF's CUDA kernel where it is
loaded), the state written back, ``output(receptance * rwkv)``; the part from (r, k, v, w, u, initial state)
to ``receptance * rwkv`` is handed to the wrapper: ``wrapper(kw, call)``, kw in `hooks.scan.wkv.scan`'s
signature (initial_state: HF's triple ``[B, D, 3]`` from its cache, None without one). ``call`` runs HF's
function on the layer's own inputs, so capture leaves every output bit as it was; on changed inputs it is
`hooks.scan.wkv.scan`. A final state the wrapper changed goes back to HF's cache as (num, den, max = 0), so
prefill with ``use_cache=True`` and one-token decoding from HF's ``state`` work under hooks (states
continue from the cache's triple exactly). Several wrappers on one layer nest (outermost first).
HF's one-token step (``hidden.size(1) == 1`` with a state) broadcasts the token-shift state ``[B, D]`` against
``[B, 1, D]`` (transformers 5.25), which mixes the rows of a batch of more than one; hooks run HF's code as it
is and share that (decode one row at a time, or two tokens at a time, which take the other branch).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn

from hooks.adapters.base import LayerInfo
from hooks.adapters.hf_common import HFAdapter, chained_forward, forward_globals
from hooks.scan import wkv

MODEL_TYPES = ("rwkv",)
KERNEL = "rwkv_linear_attention"
_OWN = ("r", "k", "v", "w", "u", "initial_state")
_MISSING = object()


def blocks(model) -> nn.ModuleList:
    """The model's ``blocks`` (``RwkvForCausalLM.rwkv.blocks`` or ``RwkvModel.blocks``)."""
    base = getattr(model, "rwkv", model)
    bl = getattr(base, "blocks", None)
    if not isinstance(bl, nn.ModuleList):
        raise TypeError(f"{type(model).__name__}: no 'blocks' ModuleList found (not an HF RWKV model)")
    return bl


class _StreamStart(nn.Module):
    """Block 0 as residual stream in -> out: its input seen after ``pre_ln`` (module docstring; ``norm``: the
    name of that first norm, fla's RWKV7Block: ``pre_norm``). Forward pre-hooks registered here run on its output
    (and may replace it); forward hooks, and a ``forward`` set here (`hooks.core.HookedModel.start_at`), go to the
    block. Not part of the model."""

    def __init__(self, block, norm: str = "pre_ln"):
        super().__init__()
        object.__setattr__(self, "block", block)
        object.__setattr__(self, "_norm", norm)
        object.__setattr__(self, "_saved", [])

    def register_forward_pre_hook(self, hook, *, prepend=False, with_kwargs=False):
        def post(m, args, out):
            r = hook(self, (out,), {}) if with_kwargs else hook(self, (out,))
            if r is None:
                return None
            new = r[0][0] if with_kwargs else (r[0] if isinstance(r, tuple) else r)
            return None if new is out else new
        return getattr(self.block, self._norm).register_forward_hook(post, prepend=prepend)

    def register_forward_hook(self, hook, *args, **kwargs):
        return self.block.register_forward_hook(hook, *args, **kwargs)

    def __setattr__(self, name, value):
        if name == "forward":  # start_at's swap_attr: the block's forward, restored by __delattr__
            self._saved.append(vars(self.block).get("forward", _MISSING))
            setattr(self.block, "forward", value)
        else:
            super().__setattr__(name, value)

    def __delattr__(self, name):
        if name != "forward":
            return super().__delattr__(name)
        old = self._saved.pop()
        if old is _MISSING:
            delattr(self.block, "forward")
        else:
            setattr(self.block, "forward", old)


def _run_chain(chain, kw, own):
    """``chain[0](kw, call)`` ... innermost: HF's function where the inputs are the layer's own tensors
    (``own(kw)`` returns None otherwise), `hooks.scan.wkv.scan` on changed ones."""
    def run(i, kw_):
        if i == len(chain):
            r = own(kw_)
            return r if r is not None else wkv.scan(**kw_)
        return chain[i](kw_, lambda **k: run(i + 1, k))
    return run(0, kw)


def _attention_forward(mod, chain):
    """The replacement ``forward`` of time-mix module ``mod`` (module docstring), wrapped by ``chain``."""
    g = forward_globals(mod)
    if not callable(g.get(KERNEL)) or not callable(getattr(mod, "extract_key_value", None)):
        raise NotImplementedError(f"{type(mod).__name__}: no {KERNEL} / extract_key_value found in "
                                  f"{g.get('__name__')}; this RWKV layout is not supported by the WKV interception")

    def forward(hidden, state=None, use_cache=False, **kwargs):
        receptance, key, value, state = mod.extract_key_value(hidden, state=state)
        lid = mod.layer_id
        layer_state = tuple(s[:, :, lid] for s in state[2:]) if state is not None else None
        kw = dict(r=receptance, k=key, v=value, w=-torch.exp(mod.time_decay), u=mod.time_first,
                  initial_state=None if layer_state is None else torch.stack(layer_state, -1),
                  output_final_state=bool(use_cache) or layer_state is not None)

        def own(k):
            if not all(k.get(n) is kw[n] for n in _OWN):
                return None
            rwkv, st = g[KERNEL](mod.time_decay, mod.time_first, key, value, state=layer_state,
                                 return_state=use_cache)
            return receptance * rwkv, (None if st is None else torch.stack(list(st), -1))

        o, final = _run_chain(chain, kw, own)
        if layer_state is not None:
            if final is None:
                raise RuntimeError(f"time mix of block {lid}: the scan wrapper returned no final state to write "
                                   "to the model's cache")
            final = wkv.to_triple(final)
            for j in range(3):
                state[2 + j][:, :, lid] = final[..., j].to(state[2 + j].dtype)
        return mod.output(o), state
    return forward


def patch_wkv(mod, wrapper):
    """Make HF time-mix module ``mod`` hand its WKV call to ``wrapper(kwargs, call)`` (module docstring)."""
    return chained_forward(mod, wrapper, _attention_forward)


class HFRwkvAdapter(HFAdapter):
    family = "hf_rwkv"
    model_types = MODEL_TYPES
    padding = "right"   # right padding only (HFAdapter.padding)
    padding_why = "HF's RWKV ignores attention_mask: left pads enter the WKV state"

    def layers(self, model):
        out = []
        for i, blk in enumerate(blocks(model)):
            for need in ("attention", "feed_forward"):
                if not hasattr(blk, need):
                    raise TypeError(f"rwkv block {i} ({type(blk).__name__}) has no '{need}'")
            start = _StreamStart(blk) if isinstance(getattr(blk, "pre_ln", None), nn.Module) else blk
            out.append(LayerInfo(index=i, block=start, mixer_out=blk.attention, mlp_out=blk.feed_forward,
                                 rec=blk.attention, rec_family="wkv"))
        return out

    def final_norm(self, model):
        """``ln_out``, after the last block."""
        norm = getattr(getattr(model, "rwkv", model), "ln_out", None)
        return norm if isinstance(norm, nn.Module) else super().final_norm(model)

    def head_projection(self, model, layer, kind):
        raise NotImplementedError(
            f"layer {layer.index}: an RWKV time mix has no heads (one WKV recurrence per channel, gated per channel "
            f"before its output projection); per-head results are not provided: use blocks.{layer.index}.mixer_out")

    @contextmanager
    def patch_scan(self, layer, wrapper):
        with patch_wkv(layer.rec, wrapper):
            yield
