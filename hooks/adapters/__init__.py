"""One adapter per model family; `find(model)` picks the one that matches."""
from __future__ import annotations

from hooks.adapters.base import Adapter, LayerInfo
from hooks.adapters.zoo import ZooAdapter

ADAPTERS: list[type[Adapter]] = [ZooAdapter]


def register(adapter_cls: type[Adapter]) -> type[Adapter]:
    ADAPTERS.append(adapter_cls)
    return adapter_cls


def _load_builtin():
    # HF families register themselves on import; each file is optional so one broken family
    # never hides the others.
    import importlib
    for mod in ("hf_transformer", "hf_gdn", "hf_mamba", "hf_mamba1", "fla_models", "mamba_ssm", "interop"):
        try:
            importlib.import_module(f"hooks.adapters.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"hooks.adapters.{mod}":
                raise


def supported_families() -> list[str]:
    _load_builtin()
    fams = []
    for a in ADAPTERS:
        fams += list(getattr(a, "model_types", None) or [a.family])
    return fams


def find(model) -> Adapter:
    _load_builtin()
    for a in ADAPTERS:
        if a.matches(model):
            return a()
    kind = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__
    raise TypeError(f"unsupported model '{kind}'; supported families: {', '.join(supported_families())}")
