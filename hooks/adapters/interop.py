"""Hand-over from TransformerLens and nnsight: ``hooks.wrap(x)`` for x a TransformerLens
``TransformerBridge`` or an nnsight ``NNsight`` / ``LanguageModel`` (any nnsight ``Envoy``).

Neither package is imported here: wrappers are recognised by class name and module path.

nnsight
    The wrapped module (``envoy._module``; ``_model`` in older releases) is the user's own torch
    model, untouched by nnsight outside a trace. `InteropAdapter` runs it directly with the
    adapter of its family (HF, zoo, ...); nnsight interventions set up in a ``trace`` do not
    apply to our runs, and ours do not leak into nnsight's. A ``LanguageModel`` that was never
    dispatched holds meta tensors: construct it with ``dispatch=True`` (or run one trace) first.
TransformerLens ``TransformerBridge`` (TL 4)
    The bridge keeps the HF model (``bridge.original_model``) but replaces its submodules by
    bridge components that wrap the originals and re-implement parts of the forward (attention,
    for one). `debridge` builds a view of that HF model in which every bridge component is
    replaced by the HF module it wraps: a shallow copy of the modules on the path to a bridge
    component, sharing every parameter and buffer (no memory), with hook dicts of its own. Our
    adapters run on that view with HF's own code, so everything the HF family supports works
    (patterns, recurrent states of HF hybrids, state patching). The bridge itself is not
    modified and its TL hooks do not fire in our runs. A bridge whose weights were processed
    (``process_weights`` / ``enable_compatibility_mode``: LayerNorm folding, centring) no longer
    computes with the HF weights; it is refused with an error saying what to hand over instead.
TransformerLens ``HookedTransformer`` (TL < 4)
    Refused with an error: it has its own module structure and re-implemented blocks, and TL 4
    removed it; hand over the HF model (``AutoModelForCausalLM``) or a ``TransformerBridge``.
"""
from __future__ import annotations

import copy

import torch.nn as nn

from hooks.adapters.base import Adapter

_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks",
               "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
               "_load_state_dict_post_hooks")


def _classes(obj):
    return [(c.__module__ or "", c.__name__) for c in type(obj).__mro__]


def _from(obj, package: str, names) -> bool:
    return any(m.split(".")[0] == package and n in names for m, n in _classes(obj))


def kind_of(model) -> str | None:
    """'nnsight', 'tl_bridge', 'tl_hooked' or None."""
    if _from(model, "nnsight", ("Envoy",)):
        return "nnsight"
    if _from(model, "transformer_lens", ("TransformerBridge",)):
        return "tl_bridge"
    if _from(model, "transformer_lens", ("HookedTransformer", "HookedEncoder", "HookedEncoderDecoder")):
        return "tl_hooked"
    return None


def _is_bridge_component(m: nn.Module) -> bool:
    return isinstance(m, nn.Module) and type(m).__module__.split(".")[0] == "transformer_lens" \
        and isinstance(m._modules.get("_original_component"), nn.Module)


def debridge(module: nn.Module, _memo=None) -> nn.Module:
    """A view of ``module`` with every TransformerLens bridge component replaced by the module it
    wraps (see the module docstring). Modules with no bridge component below them are returned
    as they are; the others are shallow copies sharing parameters and buffers."""
    memo = {} if _memo is None else _memo
    if id(module) in memo:
        return memo[id(module)]
    orig = module
    while _is_bridge_component(module):
        module = module._modules["_original_component"]
    kids = {n: (debridge(c, memo) if c is not None else None) for n, c in module._modules.items()}
    if all(kids[n] is c for n, c in module._modules.items()):
        out = module
    else:
        out = copy.copy(module)
        out.__dict__["_modules"] = type(module._modules)(kids)
        for d in _HOOK_DICTS:
            if d in module.__dict__:
                out.__dict__[d] = type(module.__dict__[d])()
    memo[id(orig)] = out
    return out


def unwrap(model) -> nn.Module:
    """The torch model hooks runs for a TransformerLens / nnsight wrapper (TypeError with what to
    do instead where there is none)."""
    kind = kind_of(model)
    if kind == "nnsight":
        d = vars(model)
        inner = d.get("_module", d.get("_model"))
        if not isinstance(inner, nn.Module):
            raise TypeError(f"{type(model).__name__}: cannot find the wrapped torch module (no _module / _model)")
        p = next(inner.parameters(), None)
        if p is not None and p.is_meta:
            raise TypeError(f"{type(model).__name__} holds meta tensors (not dispatched yet): construct it with "
                            "dispatch=True, or run one trace, before hooks.wrap")
        return inner
    if kind == "tl_bridge":
        if getattr(model, "_weights_processed", False) or getattr(model, "compatibility_mode", False):
            raise TypeError(
                "this TransformerBridge's weights were processed by TransformerLens (process_weights / "
                "enable_compatibility_mode fold LayerNorms and centre weights), so its HF model no longer "
                "computes with the original weights; hand hooks.wrap the HF model itself, or a bridge "
                "before process_weights / enable_compatibility_mode")
        inner = vars(model).get("original_model")
        if not isinstance(inner, nn.Module):
            raise TypeError("TransformerBridge: no original_model to hand over")
        return debridge(inner)
    if kind == "tl_hooked":
        raise TypeError(
            f"TransformerLens {type(model).__name__} is not supported: it re-implements every block in "
            "its own module structure (and TransformerLens 4 removed it). Hand hooks.wrap the Hugging Face "
            "model (AutoModelForCausalLM) or a TransformerLens 4 TransformerBridge; for TL-style hook names "
            "see the table in README 'Models hooks supports'")
    raise TypeError(f"{type(model).__name__} is not a TransformerLens or nnsight wrapper")


class InteropAdapter(Adapter):
    """Runs the model inside a TransformerLens bridge / nnsight wrapper with that model's own
    adapter (every method delegates to it)."""
    family = "interop"
    model_types = ("transformer_lens.TransformerBridge", "nnsight")

    def __init__(self):
        self.inner_model = None
        self.inner = None
        self._for = None

    @classmethod
    def matches(cls, model) -> bool:
        return kind_of(model) is not None

    def _resolve(self, model):
        if self._for is not model:
            from hooks.adapters import find
            inner = unwrap(model)
            if kind_of(inner) is not None:
                raise TypeError(f"{type(model).__name__} wraps another wrapper ({type(inner).__name__})")
            self.inner_model, self.inner, self._for = inner, find(inner), model
        return self.inner_model, self.inner

    @property
    def wrapped_family(self) -> str | None:
        return None if self.inner is None else self.inner.family

    def layers(self, model):
        m, a = self._resolve(model)
        return a.layers(m)

    def embed(self, model):
        m, a = self._resolve(model)
        return a.embed(m)

    def unembed(self, model):
        m, a = self._resolve(model)
        return a.unembed(m)

    def forward(self, model, tokens):
        m, a = self._resolve(model)
        return a.forward(m, tokens)

    def unembed_weight(self, model):
        m, a = self._resolve(model)
        return a.unembed_weight(m)

    def final_norm(self, model):
        m, a = self._resolve(model)
        return a.final_norm(m)

    def head_projection(self, model, layer, kind):
        m, a = self._resolve(model)
        return a.head_projection(m, layer, kind)

    def patch_attention(self, layer, wrapper):
        return self.inner.patch_attention(layer, wrapper)

    def patch_scan(self, layer, wrapper):
        return self.inner.patch_scan(layer, wrapper)
