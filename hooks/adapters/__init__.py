"""One adapter per model family; `find(model)` picks the one that matches.

``BUILTIN`` is the registry of the adapters that ship with hooks: each one once, as (module in
hooks.adapters, class), in the order they are tried. Each module is imported on first use, and a
missing one never hides the others. Adapters added with `register` are tried after them.
"""
from __future__ import annotations

import importlib

from hooks.adapters.base import Adapter, LayerInfo  # noqa: F401  (public here)

BUILTIN = (
    # wrappers first: their attribute forwarding (nnsight envoys mirror the wrapped module's children)
    # could make them look like the model they wrap to another adapter
    ("interop", "InteropAdapter"),
    # fla's and mamba-ssm's model classes ahead of the HF adapters: their configs reuse HF model_type
    # names (fla's Mamba2Config is 'mamba2')
    ("mamba_ssm", "MambaSSMAdapter"),
    ("fla_models", "FLAModelAdapter"),
    ("zoo", "ZooAdapter"),
    ("hf_transformer", "HFTransformerAdapter"),
    ("hf_gpt", "HFGPTAdapter"),
    ("hf_gdn", "HFGDNAdapter"),
    ("hf_kimi", "HFKimiAdapter"),
    ("hf_mamba", "HFMambaAdapter"),
    ("hf_mamba1", "HFMamba1Adapter"),
    ("hf_lfm2", "HFLfm2Adapter"),
    ("hf_recurrent_gemma", "HFRecurrentGemmaAdapter"),
    ("hf_minimax", "HFMiniMaxAdapter"),
    ("hf_rwkv", "HFRwkvAdapter"),
    ("hf_xlstm", "HFXLSTMAdapter"),
)

ADAPTERS: list[type[Adapter]] = []  # the adapters in the order they are tried (BUILTIN, then registered)
_loaded = False


def register(adapter_cls: type[Adapter]) -> type[Adapter]:
    """Add an adapter class (tried after the built-in ones); returns it, so it works as a decorator."""
    if adapter_cls not in ADAPTERS:
        ADAPTERS.append(adapter_cls)
    return adapter_cls


def _load_builtin():
    """Import the ``BUILTIN`` adapters (once) and put them ahead of the registered ones."""
    global _loaded
    if _loaded:
        return
    found = []
    for mod, cls in BUILTIN:
        try:
            m = importlib.import_module(f"hooks.adapters.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"hooks.adapters.{mod}":
                raise
            continue
        found.append(getattr(m, cls))
    ADAPTERS[:0] = [a for a in found if a not in ADAPTERS]
    _loaded = True


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
