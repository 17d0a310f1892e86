"""Shared helpers of the HF adapter tests: tiny models (built from a config, cached per kind), token batches,
plain logits, the layer lists, the check that a hooked model is left exactly as it was (no hook, attribute or
patched global behind), and the checks several adapters' tests make the same way (capture of every name, a hook
that raises, residual bookkeeping, patterns vs eager attention, per-layer scan captures, state patches, a decode
step from the model's cache, nested sessions)."""
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

import hooks
from hooks.adapters import hf_common
from hooks.cache import Cache

# module globals an adapter may patch while hooks are on (attention dispatch, GDN kernels, kimi's KDA kernels)
KERNEL_GLOBALS = ("ALL_ATTENTION_FUNCTIONS", "torch_chunk_gated_delta_rule", "torch_recurrent_gated_delta_rule",
                  "chunk_kimi_delta_attention", "recurrent_kimi_delta_attention")
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_always_called", "_forward_hooks_with_kwargs",
              "_forward_pre_hooks_with_kwargs")


def from_config(cfg, attn_implementation=None, seed=0):
    """A float32 causal LM in eval mode with random weights from ``cfg`` (torch seeded with ``seed`` first);
    ``attn_implementation`` passed on where given."""
    torch.manual_seed(seed)
    extra = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    return AutoModelForCausalLM.from_config(cfg, **extra).float().eval()


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


def setup(m, x):
    """(model, HookedModel, tokens, plain logits)"""
    return m, hooks.wrap(m), x, logits(m, x)


def rec_layers(hm):
    return [L.index for L in hm.layers if L.rec is not None]


def attn_layers(hm):
    return [L.index for L in hm.layers if L.attn is not None]


def cache_of(out, legacy="past_key_values"):
    """The model's cache in its output: ``cache`` from transformers 5.24 on, ``legacy`` before."""
    return out["cache"] if "cache" in out else getattr(out, legacy)


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


def unit_scale_weights(m, seed: int = 1):
    """Re-draw ``m``'s weights at O(1) scale (vectors ~ 1 + 0.2 N(0, 1), matrices ~ N(0, 1/fan_in), the embedding
    with fan-in 4), so that gates and every branch of a tiny random model vary (HF's std-0.02 init leaves most
    sublayers nearly inert). Returns ``m``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, w in m.named_parameters():
            fan_in = 4 if "embed" in name else w.shape[-1]
            w.copy_(1 + 0.2 * torch.randn(w.shape, generator=g) if w.dim() == 1
                    else torch.randn(w.shape, generator=g) / fan_in ** 0.5)
    return m


def assert_capture_everything_keeps_logits(hm, x):
    """Capturing every hook name of ``hm`` on tokens ``x`` gives the plain logits bit for bit and a cache of
    every name, and leaves the model as it was (its logits too). Returns (cache, plain logits)."""
    m = hm.model
    snap = snapshot(m)
    ref = logits(m, x)
    with torch.no_grad():
        out, c = hm.run_with_cache(x, names=hm.hook_names)
    assert torch.equal(out, ref)
    assert set(c) == set(hm.hook_names)
    assert_clean(m, snap)
    assert torch.equal(logits(m, x), ref)
    return c, ref


def boom(t, name):
    raise RuntimeError("boom")


def assert_raising_hooks_leave_nothing(hm, x, ref, names, snap, every_name=False):
    """A hook that raises at each of ``names`` (alone, with grad; ``every_name``: while every hook name is
    captured, without grad, then a failure inside the model, token ids past the vocabulary, with every hook
    on) raises and leaves the model as ``snap`` found it; the logits of ``x`` are ``ref`` after."""
    m = hm.model
    for name in names:
        with pytest.raises(RuntimeError, match="boom"):
            if every_name:
                with torch.no_grad():
                    hm.run_with_cache(x, names=hm.hook_names, hooks=[(name, boom)])
            else:
                hm.run_with_hooks(x, hooks=[(name, boom)])
        assert_clean(m, snap)
    if every_name:
        with pytest.raises(Exception), torch.no_grad():
            hm.run_with_cache(torch.full((1, 4), m.config.vocab_size + 5), names=hm.hook_names)
        assert_clean(m, snap)
    assert torch.equal(logits(m, x), ref)


def assert_residual_bookkeeping(hm, x, norm, atol=1e-5):
    """In a capture of every name on tokens ``x``: each block's resid_pre is the embedding / the previous
    block's resid_post (exactly); resid_mid = resid_pre + mixer_out, resid_post = resid_mid + mlp_out =
    resid_pre + mixer_out + mlp_out (to ``atol``); the logits are lm_head(``norm``(last resid_post)).
    Returns (logits, cache)."""
    with torch.no_grad():
        out, c = hm.run_with_cache(x, names=hm.hook_names)
    n = hm.n_layers
    close = lambda a, b: torch.testing.assert_close(a, b, atol=atol, rtol=0)  # noqa: E731
    for i in range(n):
        p = f"blocks.{i}"
        pre = c["embed"] if i == 0 else c[f"blocks.{i - 1}.resid_post"]
        assert torch.equal(c[f"{p}.resid_pre"], pre)
        close(c[f"{p}.resid_mid"], pre + c[f"{p}.mixer_out"])
        close(c[f"{p}.resid_post"], c[f"{p}.resid_mid"] + c[f"{p}.mlp_out"])
        close(c[f"{p}.resid_post"], pre + c[f"{p}.mixer_out"] + c[f"{p}.mlp_out"])
    with torch.no_grad():
        close(hm.model.lm_head(norm(c[f"blocks.{n - 1}.resid_post"])), out)
    return out, c


def assert_decode_step_continues_the_state(hm, i, x, also=()):
    """One-token decoding from the model's cache (filled by a prefill of ``x`` but its last token) through
    layer ``i``'s recurrent kernel: its hooks see the cached state as the initial state; the new state (one
    position) is the model's cached recurrent state after the step and the full run's last state (1e-5).
    ``also``: further names cached during the step."""
    m, T = hm.model, x.shape[1] - 1
    name = f"blocks.{i}.rec.state"
    with torch.no_grad():
        pkv = cache_of(m(input_ids=x[:, :T], use_cache=True))
        cache = Cache()
        with hm.hooks(cache_names=[name, *also], cache=cache):
            out = m(input_ids=x[:, T:], **{hf_common.cache_kw(m.forward, "past_key_values"): pkv}, use_cache=True)
        full = hm.run_with_cache(x, names=[name])[1][name]
    assert cache[name].shape[1] == 1
    torch.testing.assert_close(cache[name][:, 0], cache_of(out).layers[i].recurrent_states[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache[name][:, 0], full[:, T], atol=1e-5, rtol=1e-5)


def assert_patterns_equal_eager(make, kind, m, x, positions, window=None):
    """attn.pattern of every attention layer of ``m`` (on its own attention path, on its eager twin's, and the
    rows ``positions``) is the eager twin's attention weights (1e-5); with ``window``, the first attention
    layer is a sliding one of that window and its last row is zero before it. Returns (hooked model, cache)."""
    eager, ref = eager_twin(make, kind, m, x)
    hm = hooks.wrap(m)
    idx = attn_layers(hm)
    assert len(ref.attentions) == len(idx) > 0
    names = [f"blocks.{i}.attn.pattern" for i in idx]
    with torch.no_grad():
        _, c = hm.run_with_cache(x, names=names)
        _, cp = hm.run_with_cache(x, names=names, positions=positions)
        eo, ce = hooks.wrap(eager).run_with_cache(x, names=names)  # the eager path is intercepted too
    torch.testing.assert_close(eo, ref.logits, atol=0, rtol=0)
    B, T = x.shape
    for i, w in zip(idx, ref.attentions):
        pat = c[f"blocks.{i}.attn.pattern"]
        assert pat.shape == (B, m.config.num_attention_heads, T, T)
        torch.testing.assert_close(pat, w.float(), atol=1e-5, rtol=0)
        torch.testing.assert_close(ce[f"blocks.{i}.attn.pattern"], w.float(), atol=1e-5, rtol=0)
        torch.testing.assert_close(cp[f"blocks.{i}.attn.pattern"], w[:, :, positions].float(), atol=1e-5, rtol=0)
    if window is not None:  # the windowed layer really is windowed
        assert hm.layers[idx[0]].attn_meta["sliding_window"] == window
        assert c[f"blocks.{idx[0]}.attn.pattern"][:, :, T - 1, :T - window].abs().max() == 0
    return hm, c


def rec_layer_captures(hm, x, positions):
    """For each recurrent layer i of ``hm``: (i, ``blocks.i``, a capture on tokens ``x`` of its rec.q, k, v,
    decay, beta, state, readout, a capture of its rec.state at ``positions``), each layer captured on its own."""
    for i in rec_layers(hm):
        p = f"blocks.{i}"
        names = [f"{p}.rec.{s}" for s in ("q", "k", "v", "decay", "beta", "state", "readout")]
        with torch.no_grad():
            _, c = hm.run_with_cache(x, names=names)
            _, cp = hm.run_with_cache(x, names=[f"{p}.rec.state"], positions=positions)
        yield i, p, c, cp


def put_state(src, t):
    """A hook function on rec.state: the state at position t replaced by ``src[:, t]`` (in a copy)."""
    def put(S, name):
        S = S.clone()
        S[:, t] = src[:, t]
        return S
    return put


def state_patch_runs(hm, a, b, p, ins, t, base_hooks=()):
    """A state patch at layer ``p`` (``blocks.i.rec``): the states on tokens ``a`` (clean); tokens ``b`` with
    the scan inputs ``ins`` and the readout cached (base logits, cache); tokens ``b`` with the state at ``t``
    put from ``a``'s (patched logits, cache of state and readout). The patched run moves every logit from
    ``t`` on and holds ``a``'s state at ``t``. ``base_hooks``: hook functions of the base run. Returns
    (clean states, base, base cache, patched, patched cache)."""
    name = f"{p}.state"
    with torch.no_grad():
        _, clean = hm.run_with_cache(a, names=[name])
        base, cb = hm.run_with_cache(b, names=ins + [f"{p}.readout"], hooks=base_hooks)
        patched, after = hm.run_with_cache(b, names=[name, f"{p}.readout"], hooks=[(name, put_state(clean[name], t))])
    assert ((patched - base).abs().amax(-1)[0, t:] > 1e-4).all()
    torch.testing.assert_close(after[name][:, t], clean[name][:, t], atol=0, rtol=0)
    return clean[name], base, cb, patched, after


def assert_nested_sessions(hm, x, outer, inner):
    """Capture of ``inner`` names inside a capture of ``outer`` ones: the logits are the plain ones bit for
    bit, both caches equal a single capture's, and everything is restored when both have exited."""
    m = hm.model
    snap = snapshot(m)
    with torch.no_grad():
        ref = logits(m, x)
        _, one = hm.run_with_cache(x, names=list(dict.fromkeys(outer + inner)))
        got_outer, got_inner = {}, {}
        with hm.hooks(cache_names=outer, cache=got_outer):
            with hm.hooks(cache_names=inner, cache=got_inner):
                out = logits(m, x)
    assert torch.equal(out, ref)
    for c in (got_outer, got_inner):
        for n, t in c.items():
            assert torch.equal(t, one[n]), n
    assert_clean(m, snap)
