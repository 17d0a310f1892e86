"""Helpers shared by the Hugging Face adapters (hf_transformer, hf_gpt, hf_gdn, hf_mamba).

API (kept small; transformers >= 5.17, < 6):

``patch_attention(attn, wrapper, meta=None)``
    Context manager. While it is open, the HF attention module ``attn`` calls
    ``wrapper(q, k, v, call)`` instead of its attention op: q ``[B, T, H, Dh]``, k / v
    ``[B, T, Hkv, Dh]`` (after RoPE / q-k norms, before GQA repetition); ``call(q, k, v)`` runs the
    model's own implementation (eager / sdpa / flash / flex, with its mask, scaling, window,
    GQA, dropout) and returns o ``[B, T, H, Dh]``; the wrapper returns o (what goes on to the
    output projection; for gated attention such as qwen3_next that is before the gate). ``meta``
    (optional dict, e.g. ``LayerInfo.attn_meta``) is updated in place, before each wrapper call,
    with the ``scale``, ``sliding_window`` and ``softcap`` (attention logit soft-capping, gemma2;
    None where the op is given none) the model actually passed to its attention op.
``attn_meta(attn)``
    ``{'scale': attn.scaling, 'sliding_window': attn.sliding_window or None}`` (static guess,
    refined at call time by ``patch_attention(..., meta=)``).
``base_model(model)`` / ``decoder_layers(model)``
    The decoder stack (``model.model``, ``model.backbone``, ... or the model itself) and its
    ``ModuleList`` of decoder layers.
``forward_logits(model, tokens)``
    Logits of a cache-free forward (``last_hidden_state`` for a headless base model).
``forward_globals(module)``
    The module-globals dict that ``type(module).forward`` resolves names in (for patching
    module-level kernel functions such as ``torch_chunk_gated_delta_rule``).
``dispatch_globals(g, tag, names, make, module, entry)``
    Context manager behind ``patch_attention`` (and hf_gdn's kernel patching): swaps globals of a
    modeling module for per-module dispatchers while any module of it is patched.
``HFAdapter``
    Adapter base for HF families: ``model_types`` matching, ``embed``, ``forward``,
    ``patch_attention``, ``head_projection`` (subclasses implement ``layers`` and, for recurrent
    layers, ``patch_scan``).

How attention is intercepted: every HF 5.x attention ``forward`` picks its op with
``ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)``,
looked up in its modeling module's globals. While any attention module of that modeling module
is patched, that global name is replaced by a stand-in whose ``get_interface`` / ``[...]`` return
the real op wrapped by a dispatcher: modules with an installed wrapper go through it, every other
module calls the real op unchanged. Configs are not touched (so mask creation, which also reads
``config._attn_implementation``, is unaffected) and the eager path works like the others. The
global is restored when the last patch on that modeling module exits (exceptions included).
Attention modules that do not look their op up that way raise NotImplementedError.
"""
from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager

import torch.nn as nn

from hooks.adapters.base import Adapter, HeadProjection, swap_attr

_ATTN_GLOBAL = "ALL_ATTENTION_FUNCTIONS"


@functools.lru_cache(maxsize=None)  # called on every forward of a replaced layer; signatures don't change
def cache_kw(fn, legacy: str) -> str:
    """The keyword under which ``fn`` takes the cache: ``cache`` from transformers 5.24 on, where
    ``cache_params`` / ``past_key_values`` were renamed (the old names still work there, deprecated,
    until 5.40), else ``legacy``. Our replacement forwards accept both and call HF code with this."""
    try:
        return "cache" if "cache" in inspect.signature(fn).parameters else legacy
    except (TypeError, ValueError):
        return legacy


def forward_globals(module: nn.Module) -> dict:
    """Globals of the function that implements ``type(module).forward`` (decorators unwrapped)."""
    fn = inspect.unwrap(type(module).forward)
    return fn.__globals__


def base_model(model: nn.Module) -> nn.Module:
    """The decoder stack holding ``.layers``: model.model / model.backbone / model.transformer /
    model.get_decoder() / the model itself."""
    for name in ("model", "backbone", "transformer"):
        sub = getattr(model, name, None)
        if isinstance(sub, nn.Module) and isinstance(getattr(sub, "layers", None), nn.ModuleList):
            return sub
    if isinstance(getattr(model, "layers", None), nn.ModuleList):
        return model
    get = getattr(model, "get_decoder", None)
    if callable(get):
        dec = get()
        if isinstance(getattr(dec, "layers", None), nn.ModuleList):
            return dec
    raise TypeError(f"{type(model).__name__}: cannot find the decoder layers (no .layers ModuleList)")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return base_model(model).layers


def forward_logits(model, tokens, attention_mask=None):
    """Logits of one forward without cache. With a padding ``attention_mask`` [B, T] the positions count
    real tokens only (``position_ids`` = cumsum(mask) - 1, as HF's generate does for left padding),
    where the model takes position ids, so a padded prompt is encoded as it is alone."""
    kw = {}
    if attention_mask is not None:
        kw["attention_mask"] = attention_mask.long()
        if "position_ids" in inspect.signature(model.forward).parameters:
            kw["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=tokens, use_cache=False, **kw)
    logits = getattr(out, "logits", None)
    return logits if logits is not None else out.last_hidden_state


def attn_meta(attn: nn.Module) -> dict:
    scale = getattr(attn, "scaling", None)
    if scale is None:
        scale = getattr(attn, "head_dim") ** -0.5
    return {"scale": float(scale), "sliding_window": getattr(attn, "sliding_window", None) or None}


class _GlobalsDispatch:
    """Some globals of one modeling module replaced by stand-ins while at least one module of it
    is patched. ``chains``: patched module -> [entry, ...]; ``running``: a stack the stand-ins
    may use to learn the calling module."""
    live: dict = {}  # (id(globals), tag) -> instance

    def __init__(self, g: dict, names, make):
        self.g, self.chains, self.running, self.users = g, {}, [], 0
        self.orig = {n: g[n] for n in names if n in g}
        self.standins = {n: make(self, fn) for n, fn in self.orig.items()}
        g.update(self.standins)

    def restore(self):
        for n, fn in self.orig.items():
            if self.g.get(n) is self.standins[n]:
                self.g[n] = fn


@contextmanager
def dispatch_globals(g: dict, tag: str, names, make, module: nn.Module, entry):
    """Context manager: replace the globals ``names`` of modeling-module dict ``g`` by
    ``make(dispatch, original)`` (once per ``(g, tag)``, shared by every patched module) and add
    ``entry`` to ``dispatch.chains[module]``; undone on exit (globals restored after the last
    user). Yields the dispatch. Used for attention here and for GDN kernels in hf_gdn."""
    key = (id(g), tag)
    d = _GlobalsDispatch.live.get(key)
    if d is None:
        d = _GlobalsDispatch.live[key] = _GlobalsDispatch(g, names, make)
    d.users += 1
    chain = d.chains.setdefault(module, [])
    chain.append(entry)
    try:
        yield d
    finally:
        for j in range(len(chain) - 1, -1, -1):
            if chain[j] is entry:
                del chain[j]
                break
        if not chain:
            d.chains.pop(module, None)
        d.users -= 1
        if d.users == 0:
            d.restore()
            _GlobalsDispatch.live.pop(key, None)


class _AttentionFunctions:
    """Stands in for a modeling module's ALL_ATTENTION_FUNCTIONS: behaves like the original
    mapping (other attributes and keys are delegated) except that the functions it hands out
    dispatch on the calling module (``chains``: module -> [(wrapper, meta), ...])."""

    def __init__(self, orig, chains):
        self._orig, self._chains = orig, chains

    def get_interface(self, attn_implementation, default):
        return self._bind(self._orig.get_interface(attn_implementation, default))

    def __getitem__(self, key):
        return self._bind(self._orig[key])

    def get(self, key, default=None):
        fn = self._orig.get(key, default)
        return self._bind(fn) if callable(fn) else fn

    def __setitem__(self, key, value):
        self._orig[key] = value

    def __contains__(self, key):
        return key in self._orig

    def __iter__(self):
        return iter(self._orig)

    def __len__(self):
        return len(self._orig)

    def __getattr__(self, name):
        if name in ("_orig", "_chains"):  # not yet set (copy / unpickling)
            raise AttributeError(name)
        return getattr(self._orig, name)

    def _bind(self, fn):
        chains = self._chains

        def attention(module, query, key, value, attention_mask, *args, **kwargs):
            chain = chains.get(module)
            if not chain:
                return fn(module, query, key, value, attention_mask, *args, **kwargs)
            weights = []
            scale = kwargs.get("scaling")
            if scale is None:
                scale = query.shape[-1] ** -0.5
            window = kwargs.get("sliding_window") or None
            softcap = kwargs.get("softcap") or None  # gemma2's attention logit soft-capping

            def run(i, q, k, v):  # q [B,T,H,D]; HF ops take [B,H,T,D] and return [B,T,H,D]
                if i == len(chain):
                    o, w = fn(module, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                              attention_mask, *args, **kwargs)
                    weights.append(w)
                    return o
                wrapper, meta = chain[i]
                if meta is not None:
                    meta["scale"] = float(scale)
                    meta["sliding_window"] = window
                    meta["softcap"] = softcap
                return wrapper(q, k, v, lambda q_, k_, v_: run(i + 1, q_, k_, v_))

            o = run(0, query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
            return o, (weights[-1] if weights else None)
        return attention


@contextmanager
def patch_attention(attn: nn.Module, wrapper, meta: dict | None = None):
    """See the module docstring. Nests (several wrappers on one module run outermost-first)."""
    g = forward_globals(attn)
    if g.get(_ATTN_GLOBAL) is None:
        raise NotImplementedError(
            f"{type(attn).__name__}: its forward does not pick its op from {_ATTN_GLOBAL}; "
            "attention interception is not supported for this module")
    with dispatch_globals(g, "attention", (_ATTN_GLOBAL,), lambda d, orig: _AttentionFunctions(orig, d.chains),
                          attn, (wrapper, meta)):
        yield


_FORWARD_CHAINS: dict = {}  # module -> its wrappers (outermost first) while its forward is swapped


@contextmanager
def chained_forward(module: nn.Module, wrapper, make_forward):
    """Swap ``module.forward`` for ``make_forward(module, chain)`` (a forward that hands its recurrence to the
    wrappers in ``chain``, outermost first) while ``wrapper`` is installed; a nested call on the same module
    appends its wrapper to the installed chain instead of swapping again. Restored on exit."""
    chain = _FORWARD_CHAINS.get(module)
    if chain is not None:  # nested: the installed forward reads the shared chain
        chain.append(wrapper)
        try:
            yield
        finally:
            chain.remove(wrapper)
        return
    chain = _FORWARD_CHAINS[module] = [wrapper]
    try:
        with swap_attr(module, "forward", make_forward(module, chain)):
            yield
    finally:
        del _FORWARD_CHAINS[module]


class HFAdapter(Adapter):
    """Base for HF adapters: subclasses set ``family`` and ``model_types`` and implement
    ``layers``."""
    model_types: tuple[str, ...] = ()

    @classmethod
    def matches(cls, model) -> bool:
        cfg = getattr(model, "config", None)
        return getattr(cfg, "model_type", None) in cls.model_types and hasattr(model, "get_input_embeddings")

    def embed(self, model):
        return model.get_input_embeddings()

    # True: forward takes a padding attention_mask, left or right padding. "right": right padding only, for models
    # whose forward lets pads reach the tokens after them (it ignores the mask, or a convolution window reads pads);
    # pads after the real tokens are harmless in a causal model. ``padding_why`` says how (hooks' refusal names it).
    padding = True
    padding_why = ""

    def forward(self, model, tokens, attention_mask=None):
        return forward_logits(model, tokens, attention_mask)

    def head_projection(self, model, layer, kind):
        """Attention: ``o_proj`` of the cached ``attn.head_out`` (recorded instead where the layer
        gates it first: qwen3_next's output gate, whose ``q_proj`` also yields the gate). GDN:
        ``o_proj`` / ``out_proj`` of the gated per-head norm's output. Post-norm layers (olmo2,
        olmo3, olmo_hybrid attention) apply their ``mixer_out`` norm to it."""
        if kind == "rec" and layer.rec_family == "mamba1":
            raise NotImplementedError(
                f"layer {layer.index}: a Mamba1 layer has no heads (one recurrence per channel, gated per channel "
                f"before out_proj); per-head results are not provided: use blocks.{layer.index}.mixer_out")
        m = layer.attn if kind == "attn" else layer.rec
        proj = m.o_proj if hasattr(m, "o_proj") else m.out_proj
        post = None if layer.mixer_out is m else layer.mixer_out
        if kind == "attn":
            q = getattr(m, "q_proj", None)
            gated = isinstance(q, nn.Linear) and q.out_features == 2 * proj.in_features
            return HeadProjection(proj, proj.in_features // m.head_dim, input_is_cached=not gated, post_norm=post)
        return HeadProjection(proj, getattr(m, "num_v_heads", None) or m.num_heads, post_norm=post)

    @contextmanager
    def patch_attention(self, layer, wrapper):
        with patch_attention(layer.attn, wrapper, meta=layer.attn_meta):
            yield
