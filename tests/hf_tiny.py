"""Shared helpers of the HF adapter tests: a per-kind cache of tiny models, token batches, plain logits, and the
check that a hooked model is left exactly as it was (no hook, attribute or patched global behind)."""
import sys

import torch

from hooks.adapters import hf_common

# module globals an adapter may patch while hooks are on (attention dispatch, GDN kernels)
KERNEL_GLOBALS = ("ALL_ATTENTION_FUNCTIONS", "torch_chunk_gated_delta_rule", "torch_recurrent_gated_delta_rule")
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_always_called", "_forward_hooks_with_kwargs",
              "_forward_pre_hooks_with_kwargs")


def cached(make):
    """``model(kind)``: ``make(kind)`` built once per kind and reused."""
    models = {}

    def model(kind):
        if kind not in models:
            models[kind] = make(kind)
        return models[kind]
    return model


def toks(V: int, B: int = 2, seed: int = 0, n: int = 11) -> torch.Tensor:
    """[B, n] random token ids in 2..V-1 (no pad or special ids), seeded."""
    return torch.randint(2, V, (B, n), generator=torch.Generator().manual_seed(seed))


def logits(m, x):
    with torch.no_grad():
        return m(input_ids=x, use_cache=False).logits


def snapshot(m):
    """What `assert_clean` compares against: the kernel globals of the model's modules and each module's attributes."""
    mods = {type(mod).__module__ for mod in m.modules()}
    glob = {(mn, g): sys.modules[mn].__dict__.get(g) for mn in mods for g in KERNEL_GLOBALS}
    return glob, {id(mod): set(vars(mod)) for mod in m.modules()}


def assert_clean(m, snap):
    glob, attrs = snap
    for mod in m.modules():
        for d in HOOK_DICTS:
            assert not getattr(mod, d, None), (type(mod).__name__, d)
        assert set(vars(mod)) == attrs[id(mod)], type(mod).__name__
    for (mn, g), v in glob.items():
        assert sys.modules[mn].__dict__.get(g) is v, (mn, g)
    assert not hf_common._GlobalsDispatch.live


def eager_twin(make, kind, m, x):
    """(``m``'s eager-attention twin: ``make(kind, attn_implementation="eager")`` with ``m``'s weights, its
    output on tokens ``x`` with attention weights): the reference for hooked attention patterns."""
    eager = make(kind, attn_implementation="eager")
    eager.load_state_dict(m.state_dict())
    assert eager.config._attn_implementation == "eager"
    with torch.no_grad():
        return eager, eager(input_ids=x, use_cache=False, output_attentions=True)


def assert_identity_hooks_keep_logits(hm, x, ref):
    """Identity hooks on every hook name of ``hm`` leave the logits ``ref`` of tokens ``x`` as they were: exactly
    where the hooked tensor is the one the model computes, to float error with hooks on attn.pattern / resid_mid
    (they recompute: the attention output from the pattern; mid - pre)."""
    recomputed = (".attn.pattern", ".resid_mid")
    exact = [n for n in hm.hook_names if not n.endswith(recomputed)]
    with torch.no_grad():
        out = hm.run_with_hooks(x, hooks=[(n, lambda t, name: t) for n in exact])
        out_all = hm.run_with_hooks(x, hooks=[(n, lambda t, name: t) for n in hm.hook_names])
    assert torch.equal(out, ref)
    torch.testing.assert_close(out_all, ref, atol=1e-5, rtol=0)
