"""Adapter for HF Mamba1-family models: ``jamba``, ``mamba``, ``falcon_mamba`` and ``zamba`` (v1).

Block ``i`` is the model's ``layers[i]`` (``model.model.layers`` / ``model.backbone.layers``).

=============  =====================================================================================
family         mapping
=============  =====================================================================================
jamba          ``mamba`` layers: ``rec`` = ``mixer_out`` = ``mamba``; ``attention`` layers: ``attn``
               = ``mixer_out`` = ``self_attn`` (no RoPE, full causal); both: ``mlp_out`` =
               ``feed_forward`` (dense MLP or sparse-MoE block).
mamba,         every block: norm -> Mamba1 mixer -> residual. ``rec`` = ``mixer_out`` = ``mixer``;
falcon_mamba   no MLP (``mlp_out`` is the zero term of `hooks.adapters.hf_mamba`: zeros, and a hook's
               replacement is added to the residual stream before ``resid_post``).
zamba          Mamba1 with several mamba heads (B_t, C_t per head: `hooks.adapters.hf_zamba`).
               ``mamba`` blocks (ZambaMambaDecoderLayer): norm -> mixer -> residual, ``rec`` =
               ``mixer_out`` = ``mamba``. ``hybrid`` blocks (ZambaHybridLayer): as zamba2 in
               `hooks.adapters.hf_mamba`, the shared transformer (tied weights, one module instance
               per hybrid layer) reads ``concat(resid_pre, embeddings)`` and its output, through the
               layer's ``linear``, is added to the INPUT of the Mamba mixer, not to the residual
               stream: ``rec`` = ``mixer_out`` = ``mamba_decoder.mamba``, ``attn`` = that layer's
               ``shared_transf.self_attn`` (attn.* names are the shared block's call at this layer;
               ``attn_meta['scale']`` = ``(head_dim / 2) ** -0.5``, as the model passes). No MLP in
               the residual stream: ``mlp_out`` is the zero term (the shared MLP's output is part of
               what enters the mixer).
=============  =====================================================================================

zamba's rec.* names: ``rec.q`` / ``rec.k`` are ``[B, T, H, N]`` (C_t, B_t per mamba head), the
others as for every Mamba1 layer with D = H * Dh channels, heads folded (channel d = h * Dh + j):
``rec.state`` ``[B, T, D, N]`` (HF's cache: ``[B, H, Dh, N]``). Its scans are reached by replacing
the mixer's forward (`hooks.adapters.hf_zamba`), not through the globals below.

Scan interception. All three mixers call module-level functions of their modeling module:
``mamba_selective_scan`` (full sequence / prefill), ``mamba_selective_state_update`` (one-token
decoding from a cache) and, for ``mamba`` / ``falcon_mamba`` in training mode, the fused
``mamba_inner_fn``. While ``rec.*`` names are hooked on a layer those globals are replaced by
dispatchers (shared with other patched layers of the same modeling module, restored after the
last one exits), and the mixer gets a forward pre-hook / forward hook (``always_call``) that
mark it as the caller; calls from any other module go to the original function. For a patched
mixer:

* ``mamba_selective_scan(x, dt, A, B, C, D, z, delta_bias, delta_softplus, ...)`` is turned into
  ``hooks.scan.mamba1.scan``'s signature: x ``[B, T, D]``, dt after HF's own ``+ delta_bias``
  and ``softplus`` (same ops, same dtype), A ``[D, N]``, B / C ``[B, T, N]`` (jamba / falcon_mamba:
  after their B / C / dt RMS norms, i.e. exactly what the kernel gets), D. ``call`` runs the
  model's own function (HF's torch path, or mamba-ssm's kernel when installed) on those inputs
  with no bias / softplus / gate, so a capture changes nothing; the output gate ``y * silu(z)``
  is applied after the wrapper, so ``rec.readout`` = sum_n h_t C_t + D x_t, before the gate.
  With ``return_last_state`` (a prefill into a cache) the final state goes to HF's cache
  (``[B, D, N]``, the layout HF and mamba-ssm use).
* ``mamba_inner_fn`` returns None (HF's "no fused kernel" answer), so the mixer takes the unfused
  path above even in training mode with mamba-ssm installed.
* ``mamba_selective_state_update`` (one-token decoding from a cache) goes through the wrappers as a
  scan of one token from the cached state (``initial_state``), whose final state is written back to
  the cache's tensor, as the model's own step does; the gate is applied after the wrapper.

Padding masks need nothing special: HF zeroes padded positions before the scan, and the states
are computed from the scan's actual inputs.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch.nn.functional as F

from hooks.adapters.base import HeadProjection, LayerInfo
from hooks.adapters.hf_common import HFAdapter, attn_meta, decoder_layers, dispatch_globals, forward_globals
from hooks.adapters.hf_gdn import _pop
from hooks.adapters.hf_mamba import _ZeroTerm
from hooks.adapters.hf_zamba import is_zamba_mixer, patch_zamba_scan
from hooks.scan import mamba1 as mamba1_scan

MODEL_TYPES = ("jamba", "mamba", "falcon_mamba", "zamba")
SCAN, INNER, STEP = "mamba_selective_scan", "mamba_inner_fn", "mamba_selective_state_update"


def _scan_call(orig, wrapper, args, kwargs):
    """One ``mamba_selective_scan`` call of a patched mixer through ``wrapper(kw, call)`` (also
    mamba-ssm's ``selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
    return_last_state)``, the same function under other argument names)."""
    names = ("hidden_states", "dt", "A", "B", "C", "D", "z")  # HF's names; mamba-ssm's are u, delta, ...
    if len(args) > len(names):
        raise TypeError(f"unexpected positional arguments to {SCAN}: {len(args)}")
    kwargs = dict(kwargs)
    for mine, theirs in (("hidden_states", "u"), ("dt", "delta")):
        if theirs in kwargs:
            kwargs[mine] = kwargs.pop(theirs)
    a = dict(zip(names, args))
    for n in names:
        if n in kwargs:
            a[n] = kwargs.pop(n)
    D, z = a.get("D"), a.get("z")
    bias, soft = kwargs.pop("delta_bias", None), kwargs.pop("delta_softplus", False)
    last = bool(kwargs.pop("return_last_state", False))
    rest = kwargs  # use_mambapy, use_associative_scan, ...
    dt = a["dt"]
    if bias is not None:  # HF's own ops, in its order and dtype
        dt = dt + bias.to(dt.dtype)[..., None]
    if soft:
        dt = F.softplus(dt)
    kw = dict(x=a["hidden_states"].transpose(1, 2), dt=dt.transpose(1, 2), A=a["A"], B=a["B"].transpose(1, 2),
              C=a["C"].transpose(1, 2), D=D, initial_state=None, output_final_state=last)

    def call(x, dt, A, B, C, D=None, initial_state=None, output_final_state=False, g=None, dt_decay=None, **unused):
        if initial_state is not None or g is not None or dt_decay is not None:  # the kernel has none of these
            return mamba1_scan.scan(x, dt, A, B, C, D, initial_state, output_final_state, g=g, dt_decay=dt_decay)
        r = orig(x.transpose(1, 2), dt.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), D=D, z=None,
                 delta_bias=None, delta_softplus=False, return_last_state=output_final_state, **rest)
        y, final = r if output_final_state else (r, None)
        return y.transpose(1, 2), final

    y, final = wrapper(kw, call)
    y = y.transpose(1, 2)  # [B, D, T], as HF continues
    if z is not None:
        y = y * F.silu(z)
    return (y, final) if last else y


def _step_call(chain, args, kwargs):
    """One decode step, ``mamba_selective_state_update(state, hidden_states, dt, A, B, C, D, dt_bias=,
    dt_softplus=, z=)`` (``state`` [B, D, N] updated in place, the others one token's), through the wrappers
    in ``chain``: a scan of one token from ``state``, the final state written back to it, then the gate."""
    names = ("state", "hidden_states", "dt", "A", "B", "C", "D")
    kwargs = dict(kwargs)
    a = dict(zip(names, args))
    a.update({n: kwargs.pop(n) for n in names if n in kwargs})
    z, bias, soft = kwargs.pop("z", None), kwargs.pop("dt_bias", None), kwargs.pop("dt_softplus", False)
    state, x, dt = a["state"], a["hidden_states"], a["dt"]
    if bias is not None:  # HF's own ops, in its order and dtype
        dt = dt + bias.to(dt.dtype)
    if soft:
        dt = F.softplus(dt)
    kw = dict(x=x[:, None], dt=dt[:, None], A=a["A"], B=a["B"][:, None], C=a["C"][:, None], D=a.get("D"),
              initial_state=state.float(), output_final_state=True)

    def run(i, **k):
        if i == len(chain):
            return mamba1_scan.scan(**k)
        return chain[i](k, lambda **kk: run(i + 1, **kk))
    y, final = run(0, **kw)
    state.copy_(final.to(state.dtype))
    y = y[:, 0]
    if z is not None:
        y = y * F.silu(z)
    return y.to(x.dtype)


@contextmanager
def patch_mamba1_scan(mixer, wrapper, scan_name=SCAN, before=None):
    """Make HF Mamba1 mixer ``mixer`` (jamba / mamba / falcon_mamba) call ``wrapper(kwargs, call)``
    instead of its selective scan (see the module docstring). ``scan_name``: the global holding
    the scan function (mamba-ssm: ``selective_scan_fn``); ``before(module, args, kwargs)``: a
    check run as the mixer starts (may raise). Yields the dispatch (`hf_common.dispatch_globals`)."""
    g = forward_globals(mixer)
    if scan_name not in g:
        raise NotImplementedError(f"{type(mixer).__name__}: no {scan_name} found to intercept in {g.get('__name__')}")
    names = tuple(n for n in (scan_name, INNER, STEP) if n in g)

    with dispatch_globals(g, "mamba1", names, _make_standin, mixer, wrapper) as d, mark_running(mixer, d, before):
        yield d


@contextmanager
def mark_running(mod, d, before=None):
    """While open, ``mod`` pushes itself on ``d.running`` as it starts (after ``before(mod, args,
    kwargs)``, which may raise) and pops itself as it ends (exceptions included): the dispatchers
    of ``dispatch_globals`` learn which module calls them."""
    def enter(m, args, kwargs):
        if before is not None:
            before(m, args, kwargs)
        d.running.append(m)
    handles = [mod.register_forward_pre_hook(enter, with_kwargs=True),
               mod.register_forward_hook(lambda m, a, o: _pop(d.running, m), always_call=True)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _make_standin(d, fn):
    """dispatch_globals' ``make(dispatch, original)``: the stand-in for whichever global ``fn`` is."""
    name = next(n for n, orig in d.orig.items() if orig is fn)
    return _standin(d, fn, name)


def _standin(d, fn, name):
    """Calls from a patched mixer (the innermost one running) go through its wrappers; others to ``fn``."""
    def active():
        return d.chains.get(d.running[-1]) if d.running else None

    if name == INNER:
        def inner(*args, **kwargs):
            return None if active() else fn(*args, **kwargs)
        return inner
    if name == STEP:
        def step(*args, **kwargs):
            chain = active()
            return _step_call(chain, args, kwargs) if chain else fn(*args, **kwargs)
        return step

    def scan(*args, **kwargs):
        chain = active()
        if not chain:
            return fn(*args, **kwargs)

        def run(i, args, kwargs):
            if i == len(chain):
                return fn(*args, **kwargs)
            return _scan_call(lambda *a, **k: run(i + 1, a, k), chain[i], args, kwargs)
        return run(0, args, kwargs)
    return scan


class HFMamba1Adapter(HFAdapter):
    family = "hf_mamba1"
    model_types = MODEL_TYPES

    def layers(self, model):
        kind = model.config.model_type
        out = []
        for i, blk in enumerate(decoder_layers(model)):
            if kind == "jamba":
                if hasattr(blk, "mamba"):
                    out.append(LayerInfo(index=i, block=blk, mixer_out=blk.mamba, mlp_out=blk.feed_forward,
                                         rec=blk.mamba, rec_family="mamba1"))
                elif hasattr(blk, "self_attn"):
                    out.append(LayerInfo(index=i, block=blk, mixer_out=blk.self_attn, mlp_out=blk.feed_forward,
                                         attn=blk.self_attn, attn_meta=attn_meta(blk.self_attn)))
                else:
                    raise TypeError(f"jamba layer {i} ({type(blk).__name__}) has neither 'mamba' nor 'self_attn'")
            elif kind == "zamba":
                out.append(_zamba_layer(i, blk))
            else:
                if not hasattr(blk, "mixer"):
                    raise TypeError(f"{kind} layer {i} ({type(blk).__name__}) has no 'mixer'")
                out.append(LayerInfo(index=i, block=blk, mixer_out=blk.mixer, mlp_out=_ZeroTerm(blk, "mlp"),
                                     rec=blk.mixer, rec_family="mamba1"))
        return out

    def head_projection(self, model, layer, kind):
        """zamba: the mamba heads' outputs (gated per channel) through ``out_proj``; its shared
        attention has no heads in the residual stream. Other Mamba1 layers: no heads (`HFAdapter`)."""
        if model.config.model_type != "zamba":
            return super().head_projection(model, layer, kind)
        if kind == "attn":
            raise NotImplementedError(
                f"layer {layer.index} (zamba): the shared transformer's attention output is added to the Mamba "
                "mixer's input, not to the residual stream; its heads have no direct contribution (per-head results "
                "are given for the mamba heads)")
        return HeadProjection(layer.rec.out_proj, layer.rec.n_mamba_heads)

    @contextmanager
    def patch_scan(self, layer, wrapper):
        patch = patch_zamba_scan if is_zamba_mixer(layer.rec) else patch_mamba1_scan
        with patch(layer.rec, wrapper):
            yield


def _zamba_layer(i, blk):
    """ZambaMambaDecoderLayer (``mamba``) or ZambaHybridLayer (``hybrid``: shared attention feeding the mixer)."""
    dec = getattr(blk, "mamba_decoder", blk)
    if not hasattr(dec, "mamba"):
        raise TypeError(f"zamba layer {i} ({type(blk).__name__}) has no Mamba mixer")
    L = LayerInfo(index=i, block=blk, mixer_out=dec.mamba, mlp_out=_ZeroTerm(blk, "mlp"), rec=dec.mamba,
                  rec_family="mamba1")
    if dec is not blk:
        attn = blk.shared_transf.self_attn
        L.attn, L.attn_meta = attn, attn_meta(attn)
    return L
