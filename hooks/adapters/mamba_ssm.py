"""Adapter for mamba-ssm's ``MambaLMHeadModel`` (``mamba_ssm.models.mixer_seq_simple``): Mamba1
(``Mamba``) or Mamba2 layers, plus the ``MHA`` attention layers of ``attn_layer_idx``.

mamba-ssm imports its CUDA extension and Triton, so nothing here imports it: models and layers
are recognised by class name and module path, kernel functions are found in the globals of each
layer's ``forward``. Checked on CUDA by ``tests/gpu/check_models_gpu.py`` (skipped where mamba-ssm
is not installed).

Residual stream. mamba-ssm's ``Block`` is "Add -> LN -> Mixer": it takes ``(hidden_states,
residual)`` (the previous block's branch output and residual) and returns the same pair, so no
module's input or output IS the residual stream. Block ``i`` is therefore a stand-in
(`_ResidualBlock`): its "input" is ``hidden_states + residual`` (what the block adds to form its
residual, = ``resid_pre``), its "output" ``hidden_states + residual`` of the returned pair
(= ``resid_post``); the model's final ``norm_f`` reads the same sum. A hook that changes one of
them hands the block ``(new, None)`` (its add is then the identity) or makes it return
``(new, 0)``; unchanged values are passed on untouched, so capture changes nothing.
``mixer_out`` = ``mixer``, ``mlp_out`` = ``mlp`` (``d_intermediate = 0``: the zero term of
`hooks.adapters.hf_mamba`).

Scans and attention (while their names are hooked; everything restored on exit):

* Capture only (rec names cached, no hook function on them): the layer's own forward gives the output,
  its fused path included, bit for bit; the unfused path described next runs beside it, without
  ``inference_params``, for the capture (`own_output_beside`). With a hook function:
* ``Mamba`` (Mamba1): the instance's ``use_fast_path`` is turned off, so the layer calls
  ``selective_scan_fn`` (not the fused ``mamba_inner_fn``); that global is dispatched for patched
  layers exactly as HF's ``mamba_selective_scan`` (`hooks.adapters.hf_mamba1`: dt after bias and
  softplus, state ``[B, D, N]``, ``rec.readout`` before the z gate). The gate is applied outside
  the kernel, so logits under rec hooks equal the fused path's to float rounding, not bit for bit.
* ``Mamba2``: ``use_mem_eff_path`` is turned off, and ``mamba_chunk_scan_combined`` is dispatched:
  dt = softplus(dt + dt_bias) clamped to ``dt_limit``, x ``[B, T, H, P]``, B / C ``[B, T, G, N]``,
  state ``[B, H, N, P]`` (mamba-ssm keeps ``[B, H, P, N]``; converted both ways); a z gate
  (``rmsnorm=False``) and a per-channel D (``D_has_hdim``) are applied after the wrapper.
* ``MHA``: its ``F.scaled_dot_product_attention`` call (q, and k / v already repeated to all heads)
  is dispatched through a stand-in for the module's ``F``; ``scale`` = ``softmax_scale``.
* Decoding with ``inference_params`` (a kv / ssm cache past its first step) raises
  NotImplementedError while rec / attn names of that layer are hooked. ``Mamba3`` layers get the
  residual names only. `HookedModel.start_at` is not supported (blocks are stand-ins).
"""
from __future__ import annotations

import inspect
from contextlib import ExitStack, contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from hooks.adapters.base import Adapter, LayerInfo, swap_attr
from hooks.adapters.hf_common import dispatch_globals, forward_globals
from hooks.adapters.hf_mamba import _ZeroTerm
from hooks.adapters.hf_mamba1 import mark_running, patch_mamba1_scan
from hooks.scan import mamba2 as mamba2_scan

MIXERS = {("mamba_ssm.modules.mamba_simple", "Mamba"): "mamba1",
          ("mamba_ssm.modules.mamba2", "Mamba2"): "mamba2",
          ("mamba_ssm.modules.mha", "MHA"): "attn"}


def mixer_kind(m) -> str | None:
    for c in type(m).__mro__:
        k = MIXERS.get((c.__module__, c.__name__))
        if k:
            return k
    return None


def is_mamba_ssm_model(model) -> bool:
    return any(c.__module__.startswith("mamba_ssm.") and c.__name__ == "MambaLMHeadModel" for c in type(model).__mro__)


def _first(x):
    return x[0] if isinstance(x, tuple) else x


class _ResidualBlock(nn.Module):
    """Block ``i`` seen as residual stream in -> residual stream out (module docstring). Hooks
    registered on it are installed on the real block, translated; it is not part of the model."""

    def __init__(self, block):
        super().__init__()
        object.__setattr__(self, "block", block)

    @staticmethod
    def _split(args, kwargs):
        hs = args[0] if args else kwargs["hidden_states"]
        res = args[1] if len(args) > 1 else kwargs.get("residual")
        return hs, res

    def register_forward_pre_hook(self, hook, *, prepend=False, with_kwargs=False):
        def pre(mod, args, kwargs):
            hs, res = self._split(args, kwargs)
            x = hs if res is None else hs + res
            r = hook(self, (x,), {}) if with_kwargs else hook(self, (x,))
            if r is None:
                return None
            new = r[0][0] if with_kwargs else _first(r)
            if new is x:
                return None
            rest = {k: v for k, v in kwargs.items() if k not in ("hidden_states", "residual")}
            return (new, None) + tuple(args[2:]), rest
        return self.block.register_forward_pre_hook(pre, prepend=prepend, with_kwargs=True)

    def register_forward_hook(self, hook, *, prepend=False, **kw):
        def post(mod, args, out):
            h, res = out
            x = h if res is None else h + res
            r = hook(self, args, x)
            y = None if r is None else _first(r)
            if y is None or y is x:
                return None
            return (y, torch.zeros_like(y) if res is None else torch.zeros_like(res))
        return self.block.register_forward_hook(post, prepend=prepend)


def _check_no_decode(what):
    def before(m, args, kwargs):
        ip = kwargs.get("inference_params", args[1] if len(args) > 1 else None)
        if ip is not None and (getattr(ip, "seqlen_offset", 0) or what == "attn"):
            raise NotImplementedError(f"{what}.* hooks on mamba-ssm layers need a full-sequence forward without "
                                      "inference_params (decoding / kv-cache paths are not intercepted)")
    return before


# --- Mamba2: mamba_chunk_scan_combined in hooks.scan.mamba2's signature ----------------------------

_SSD = ("x", "dt", "A", "B", "C", "chunk_size", "D", "z", "dt_bias", "initial_states", "seq_idx", "cu_seqlens",
        "dt_softplus", "dt_limit", "return_final_states", "return_varlen_states")


def _ssd_call(orig, wrapper, args, kwargs):
    a = dict(zip(_SSD, args))
    a.update(kwargs)
    if a.get("seq_idx") is not None or a.get("cu_seqlens") is not None or a.get("return_varlen_states"):
        raise NotImplementedError("packed sequences (seq_idx / cu_seqlens) are not supported while rec.* hooks are on")
    dt = a["dt"]
    if a.get("dt_bias") is not None:
        dt = dt + a["dt_bias"]
    if a.get("dt_softplus"):
        dt = F.softplus(dt)
    lim = a.get("dt_limit", (0.0, float("inf")))
    if tuple(lim) != (0.0, float("inf")):
        dt = dt.clamp(lim[0], lim[1])
    D, z = a.get("D"), a.get("z")
    per_channel = D is not None and D.dim() == 2
    init = a.get("initial_states")
    last = bool(a.get("return_final_states"))
    kw = dict(x=a["x"], dt=dt, A=a["A"], B=a["B"], C=a["C"], D=None if per_channel else D,
              initial_state=None if init is None else init.transpose(-1, -2), output_final_state=last)

    def call(x, dt, A, B, C, D=None, initial_state=None, output_final_state=False, **unused):
        if initial_state is not None:
            return mamba2_scan.scan(x, dt, A, B, C, D, initial_state, output_final_state)
        r = orig(x, dt, A, B, C, a["chunk_size"], D=D, z=None, dt_bias=None, dt_softplus=False,
                 return_final_states=output_final_state)
        y, fin = (r[0], r[1]) if output_final_state else (r, None)
        return y, (None if fin is None else fin.transpose(-1, -2))
    y, fin = wrapper(kw, call)
    if per_channel:
        y = y + a["x"] * D.to(a["x"].dtype)
    if z is not None:
        y = y * F.silu(z)
    return (y, None if fin is None else fin.transpose(-1, -2).contiguous()) if last else y


def _ssd_standin(d, fn):
    def kernel(*args, **kwargs):
        chain = d.chains.get(d.running[-1]) if d.running else None
        if not chain:
            return fn(*args, **kwargs)

        def run(i, args, kwargs):
            if i == len(chain):
                return fn(*args, **kwargs)
            return _ssd_call(lambda *a, **k: run(i + 1, a, k), chain[i], args, kwargs)
        return run(0, args, kwargs)
    return kernel


@contextmanager
def patch_mamba2(mixer, wrapper):
    """Dispatch the mixer's ``mamba_chunk_scan_combined`` calls to ``wrapper``; yields the dispatch. (The
    fused path, ``use_mem_eff_path``, does not call it: `MambaSSMAdapter.patch_scan` turns that off.)"""
    g = forward_globals(mixer)
    if "mamba_chunk_scan_combined" not in g:
        raise NotImplementedError(f"{type(mixer).__name__}: no mamba_chunk_scan_combined to intercept")
    with ExitStack() as st:
        d = st.enter_context(dispatch_globals(g, "mamba_ssm-ssd", ("mamba_chunk_scan_combined",),
                                              _ssd_standin, mixer, wrapper))
        st.enter_context(mark_running(mixer, d, _check_no_decode("rec")))
        yield d


@contextmanager
def own_output_beside(mixer, d, fused_flag: str):
    """For a capture only (``wrapper.capture_only``): the mixer's own forward, its kernel calls not
    dispatched, gives the output (the fused path when the layer takes it: bit for bit as without hooks);
    then the unfused path (``fused_flag`` off), whose kernel calls the wrapper sees, runs beside it
    without ``inference_params`` and its output is dropped. Why by hand: mamba-ssm's fused kernels
    expose no scan call to intercept, and the unfused path's output differs from theirs by rounding."""
    orig = mixer.forward
    sig = inspect.signature(orig)

    def forward(*args, **kwargs):
        chain = d.chains.pop(mixer, None)  # the stand-ins pass a mixer without a chain to the kernel
        try:
            out = orig(*args, **kwargs)
        finally:
            if chain is not None:
                d.chains[mixer] = chain
        bound = sig.bind(*args, **kwargs)
        if "inference_params" in sig.parameters:
            bound.arguments["inference_params"] = None
        with swap_attr(mixer, fused_flag, False):
            orig(*bound.args, **bound.kwargs)
        return out
    with swap_attr(mixer, "forward", forward):
        yield


# --- MHA: its F.scaled_dot_product_attention --------------------------------------------------------

class _F:
    """Stands in for torch.nn.functional in mamba_ssm.modules.mha: everything is the real module's
    except scaled_dot_product_attention, which goes through the wrappers of a patched MHA."""

    def __init__(self, d, orig):
        self._d, self._orig = d, orig

    def __getattr__(self, name):
        if name in ("_d", "_orig"):
            raise AttributeError(name)
        if name != "scaled_dot_product_attention":
            return getattr(self._orig, name)
        sdpa, d = self._orig.scaled_dot_product_attention, self._d

        def attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
            chain = d.chains.get(d.running[-1]) if d.running else None
            if not chain:
                return sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **kw)
            if attn_mask is not None or not is_causal or q.shape[2] != k.shape[2]:
                raise NotImplementedError("attn.* hooks on mamba-ssm MHA need causal full-sequence attention")

            def run(i, q_, k_, v_):  # ours: [B, T, H, D]; SDPA: [B, H, T, D]
                if i == len(chain):
                    return sdpa(q_.transpose(1, 2), k_.transpose(1, 2), v_.transpose(1, 2), dropout_p=dropout_p,
                                is_causal=True, scale=scale, **kw).transpose(1, 2)
                wrapper, meta = chain[i]
                meta["scale"] = float(scale if scale is not None else q.shape[-1] ** -0.5)
                return wrapper(q_, k_, v_, lambda a, b, c: run(i + 1, a, b, c))
            return run(0, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        return attention


@contextmanager
def patch_mha(attn, wrapper, meta):
    g = forward_globals(attn)
    if "F" not in g:
        raise NotImplementedError(f"{type(attn).__name__}: no F (torch.nn.functional) global to intercept")
    with ExitStack() as st:
        d = st.enter_context(dispatch_globals(g, "mamba_ssm-mha", ("F",), lambda d, orig: _F(d, orig), attn,
                                              (wrapper, meta)))
        st.enter_context(mark_running(attn, d, _check_no_decode("attn")))
        yield


# --- the adapter ---------------------------------------------------------------------------------------

class MambaSSMAdapter(Adapter):
    family = "mamba_ssm"
    model_types = ("mamba_ssm MambaLMHeadModel",)

    @classmethod
    def matches(cls, model) -> bool:
        return is_mamba_ssm_model(model)

    def layers(self, model):
        out = []
        for i, blk in enumerate(model.backbone.layers):
            mix = blk.mixer
            kind = mixer_kind(mix)
            mlp = getattr(blk, "mlp", None)
            L = LayerInfo(index=i, block=_ResidualBlock(blk), mixer_out=mix,
                          mlp_out=mlp if mlp is not None else _ZeroTerm(blk, "mlp"))
            if kind == "attn":
                if not getattr(mix, "causal", True):
                    raise NotImplementedError(f"layer {i}: non-causal MHA is not supported")
                L.attn = mix
                L.attn_meta = {"scale": float(getattr(mix, "softmax_scale", None) or mix.head_dim ** -0.5),
                               "sliding_window": None}
            elif kind in ("mamba1", "mamba2"):
                L.rec, L.rec_family = mix, kind
            out.append(L)
        return out

    def embed(self, model):
        return model.backbone.embedding

    def unembed(self, model):
        return model.lm_head

    def forward(self, model, tokens):
        out = model(tokens)
        return getattr(out, "logits", out)

    @contextmanager
    def patch_attention(self, layer, wrapper):
        with patch_mha(layer.attn, wrapper, layer.attn_meta):
            yield

    @contextmanager
    def patch_scan(self, layer, wrapper):
        mix = layer.rec
        with ExitStack() as st:
            if layer.rec_family == "mamba1":
                flag = "use_fast_path"
                d = st.enter_context(patch_mamba1_scan(mix, wrapper, scan_name="selective_scan_fn",
                                                       before=_check_no_decode("rec")))
            else:
                flag = "use_mem_eff_path"
                d = st.enter_context(patch_mamba2(mix, wrapper))
            if getattr(wrapper, "capture_only", False) and d.chains.get(mix) == [wrapper]:
                st.enter_context(own_output_beside(mix, d, flag))
            else:  # a hook function (or another HookedModel on the same layer): the unfused path's output
                st.enter_context(swap_attr(mix, flag, False))
            yield
