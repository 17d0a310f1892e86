"""hooks: observe and intervene on hybrid (attention + recurrence) language models.

    import hooks
    hm = hooks.wrap(model)                       # zoo model, HF hybrid or HF transformer
    logits, cache = hm.run_with_cache(tokens, names=["blocks.3.rec.state"], positions=[5, 9])
    cache.logit_attrs(cache.decompose_resid(), answer, wrong)   # needs embed, mixer_out, mlp_out cached
    logits = hm.run_with_hooks(tokens, hooks=[("blocks.3.resid_post", fn)])
    with hm.hooks([("blocks.0.mlp_out", fn)]):  # context-manager form
        model(tokens)

Hook names are documented in `hooks.names` (and README). `hooks` depends on torch, transformers
and fla only; it knows nothing of tasks, probes or patching experiments.
"""


def wrap(model, **kw):
    """Wrap ``model`` in a `HookedModel` (picks the adapter for its family; ``tokenizer=`` for string
    prompts where the model carries none)."""
    from hooks.core import HookedModel
    return HookedModel(model, **kw)


def name(site, layer=None):
    """The hook name of ``site`` at ``layer``: ``hooks.name('resid_pre', 3)`` -> ``'blocks.3.resid_pre'``
    (`hooks.names.name`; ``hm.name`` also takes negative layers)."""
    from hooks.names import name as _name
    return _name(site, layer)


def __getattr__(name):  # lazy re-exports keep `import hooks.scan.gdn` light
    if name in ("HookedModel", "Cache"):
        from hooks import core
        return getattr(core, name)
    if name in ("HookNameError", "HookError", "HookPoint", "HOOK_NAMES"):
        from hooks import names
        return getattr(names, name)
    raise AttributeError(name)
