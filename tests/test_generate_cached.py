"""Cached decoding under hooks (hooks.generate_cached): the model's own cache with hook functions, step hooks and
a capture against the recomputation path and a prefill of the whole generated sequence; prompt patches; the
fallbacks to recomputation (and the errors of use_cache=True); hooks gone after an error mid-decode."""
import pytest
import torch

import hooks
import hf_tiny as H  # tests/hf_tiny.py, a sibling of this file
from hooks.names import HookError
from test_adapters_jamba import make as jamba_make
from test_generate import _fixed, vocab, zoo
from test_generate import hf_model as _hf_model

KINDS = ["llama", "qwen3_next", "mamba2", "jamba"]   # attention; GDN hybrid; Mamba2; Mamba1 + attention + MoE


@H.cached
def hf_model(kind):
    return jamba_make("jamba") if kind == "jamba" else _hf_model(kind)
TOL = dict(atol=2e-5, rtol=2e-5)


def _names(hm, kind):
    """Residuals of the generated tokens and a recurrent state."""
    out = ["blocks.0.resid_pre", f"blocks.{hm.n_layers - 1}.resid_post"]
    if kind != "llama":
        out.append(f"blocks.{H.rec_layers(hm)[0]}.rec.state")
    return out


def _add(vec):
    return lambda r, _: r + vec.to(r.dtype)


def _assert_capture(g, ref, names):
    for k in names:
        assert g.cache[k].shape == ref[k].shape, k
        torch.testing.assert_close(g.cache[k], ref[k], **TOL, msg=k)


@pytest.mark.parametrize("kind", KINDS)
def test_position_wise_hook_cached_equals_recompute_and_prefill(kind):
    """A hook adding a vector to resid_pre at every position: greedy and sampled tokens of the cached path equal
    the recomputation path's, and the capture recorded while decoding equals the recomputation's capture and a
    prefill of the generated sequence under the same hook (2e-5)."""
    m = hf_model(kind)
    hm, x = hooks.wrap(m), H.toks(vocab(m), B=2, n=5)
    snap = H.snapshot(m)
    vec = torch.randn(m.config.hidden_size, generator=torch.Generator().manual_seed(1))
    hk, names = [("blocks.1.resid_pre", _add(vec))], _names(hm, kind)
    for kw in (dict(),) + ((dict(sample=True, temperature=1.5, top_p=0.9, seed=3),) if kind == "qwen3_next" else ()):
        a = hm.generate(x, 6, hooks=hk, cache_names=names, **kw)
        b = hm.generate(x, 6, hooks=hk, cache_names=names, use_cache=False, **kw)
        assert (a.path, b.path) == ("cache", "recompute")
        assert torch.equal(a.tokens, b.tokens), kw
        assert not torch.equal(a.tokens, hm.generate(x, 6, **kw).tokens)       # the hook matters
        torch.testing.assert_close(a.scores, b.scores, **TOL)
        _assert_capture(a, b.cache, names)
        logits, ref = hm.run_with_cache(a.tokens, names, hooks=hk)
        _assert_capture(a, ref, names)
        torch.testing.assert_close(a.scores, logits[:, 4:-1].float(), **TOL)
    H.assert_clean(m, snap)


@pytest.mark.parametrize("kind,site", [("qwen3_next", "rec.state"), ("llama", "resid_post"),
                                       ("mamba2", "rec.state"), ("jamba", "rec.state")])
def test_step_hook_cached_equals_prefill_with_the_edits(kind, site):
    """A step hook editing the newest token's state (or residual) at steps 2 and 3: the edits stay in the
    model's cache (the step-3 hook sees the state continued from the step-2 edit), so the tokens are the greedy
    continuation of a prefill that carries the same edits at the same positions, and the capture equals that
    prefill's (2e-5); the recomputation path gives the same tokens and capture."""
    m = hf_model(kind)
    hm, x, T0 = hooks.wrap(m), H.toks(vocab(m), B=2, n=5, seed=4), 5
    i = H.rec_layers(hm)[0] if site == "rec.state" else 1
    name, names = f"blocks.{i}.{site}", _names(hm, kind)
    for edit_steps in ((2,), (2, 3)):
        edited = {}

        def step_fn(xn, hp, step):
            if step in edit_steps:
                new = xn * -2.0 + 0.25
                edited[T0 + step - 1] = new[:, 0].clone()
                return new
        g = hm.generate(x, 7, step_hooks=[(name, step_fn)], cache_names=names + [name])
        assert g.path == "cache" and sorted(edited) == [T0 + s - 1 for s in edit_steps]
        assert not torch.equal(g.tokens, hm.generate(x, 7).tokens)
        fixed = _fixed(sorted(edited.items()))
        logits, ref = hm.run_with_cache(g.tokens, names + [name], hooks=[(name, fixed)])
        assert torch.equal(logits[:, T0 - 1:-1].argmax(-1), g.new_tokens)
        torch.testing.assert_close(g.scores, logits[:, T0 - 1:-1].float(), **TOL)
        _assert_capture(g, ref, names + [name])
        if kind in ("qwen3_next", "mamba2"):
            r = hm.generate(x, 7, step_hooks=[(name, step_fn)], cache_names=names + [name], use_cache=False)
            assert r.path == "recompute" and torch.equal(r.tokens, g.tokens)
            _assert_capture(g, r.cache, names + [name])


def test_recompute_step_hooks_see_the_continued_state():
    """On the recomputation path (the zoo's) a step hook on rec.state at adjacent steps sees the state continued
    from the earlier edit, as a decode loop shows it: the tokens are the greedy continuation of a prefill with
    both edits fixed at their positions and the capture equals that prefill's."""
    m = zoo()
    hm, T0 = hooks.wrap(m), 6
    x = torch.randint(0, 40, (2, T0), generator=torch.Generator().manual_seed(3))
    name, edited, seen = f"blocks.{H.rec_layers(hm)[0]}.rec.state", {}, {}

    def step_fn(xn, hp, step):
        if step in (2, 3):
            seen[step] = xn[:, 0].clone()
            new = xn * -3.0 + 0.5
            edited[T0 + step - 1] = new[:, 0].clone()
            return new
    g = hm.generate(x, 6, step_hooks=[(name, step_fn)], cache_names=[name, "blocks.3.resid_post"])
    assert g.path == "recompute" and sorted(edited) == [T0 + 1, T0 + 2]
    logits, ref = hm.run_with_cache(g.tokens, [name, "blocks.3.resid_post"], hooks=[(name, _fixed(sorted(edited.items())))])
    assert torch.equal(logits[:, T0 - 1:-1].argmax(-1), g.new_tokens)
    _assert_capture(g, ref, [name, "blocks.3.resid_post"])
    # what the step-3 hook saw: the state after position T0 + 2 in a prefill carrying the step-2 edit only
    first = hm.run_with_cache(g.tokens, [name], hooks=[(name, _fixed([(T0 + 1, edited[T0 + 1])]))])[1][name]
    torch.testing.assert_close(seen[3], first[:, T0 + 2], **TOL)
    assert (seen[3] - hm.run_with_cache(g.tokens, [name])[1][name][:, T0 + 2]).abs().max() > 1e-3


@pytest.mark.parametrize("kind,name", [("qwen3_next", "blocks.0.rec.state"), ("llama", "blocks.1.resid_pre")])
def test_prompt_patch_before_generating_equals_prefill_patch(kind, name):
    """A hook function patching prompt position 2: it acts once in the prefill (the patch is in the cache), and
    equals the same patch in a prefill of the final tokens and the recomputation path."""
    m = hf_model(kind)
    hm, x = hooks.wrap(m), H.toks(vocab(m), B=2, n=6, seed=2)
    if kind == "qwen3_next":
        name = f"blocks.{H.rec_layers(hm)[0]}.rec.state"

    def at_2(t, _):
        t = t.clone()
        t[:, 2] = 0 if name.endswith("state") else 3.0
        return t
    cap = [name, f"blocks.{hm.n_layers - 1}.resid_post"]
    g = hm.generate(x, 6, hooks=[(name, at_2)], cache_names=cap)
    r = hm.generate(x, 6, hooks=[(name, at_2)], cache_names=cap, use_cache=False)
    assert (g.path, r.path) == ("cache", "recompute") and torch.equal(g.tokens, r.tokens)
    assert (g.scores - hm.generate(x, 6).scores).abs().max() > 1e-4          # the patch matters
    logits, ref = hm.run_with_cache(g.tokens, cap, hooks=[(name, at_2)])
    assert torch.equal(logits[:, 5:-1].argmax(-1), g.new_tokens)
    _assert_capture(g, ref, cap)
    _assert_capture(g, r.cache, cap)


def test_eos_padding_and_positions_on_the_cached_path():
    """eos (finished rows padded, early stop), left-padded prompts and capture positions under a hook: the
    cached path gives the recomputation path's tokens, scores and capture."""
    m = hf_model("qwen3_next")
    hm = hooks.wrap(m)
    vec = 0.02 * torch.randn(m.config.hidden_size, generator=torch.Generator().manual_seed(5))
    hk, names = [("blocks.0.resid_post", _add(vec))], ["blocks.1.resid_post", "blocks.0.rec.state"]
    x = H.toks(vocab(m), B=3, n=5)
    free = hm.generate(x, 8, hooks=hk)
    eos = int(free.new_tokens[0, 2])
    a, b = (hm.generate(x, 8, hooks=hk, eos_token_id=eos, cache_names=names, positions=[0, -2, -1], use_cache=u)
            for u in (True, False))
    assert (a.path, b.path) == ("cache", "recompute") and torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.scores, b.scores, **TOL)
    _assert_capture(a, b.cache, names)
    a1, b1 = H.toks(vocab(m), B=1, n=3, seed=1), H.toks(vocab(m), B=1, n=6, seed=2)
    toks = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), a1], 1), b1])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1] * 6])
    p = hm.generate(toks, 5, hooks=hk, attention_mask=mask, cache_names=names)
    q = hm.generate(toks, 5, hooks=hk, attention_mask=mask, cache_names=names, use_cache=False)
    assert p.path == "cache" and torch.equal(p.tokens, q.tokens)
    assert torch.equal(p.new_tokens[0], hm.generate(a1, 5, hooks=hk).new_tokens[0])
    for k in names:   # real tokens (the pads' values are not compared)
        torch.testing.assert_close(p.cache[k][0, 3:], q.cache[k][0, 3:], **TOL)
        torch.testing.assert_close(p.cache[k][1], q.cache[k][1], **TOL)


def test_fallbacks_and_use_cache_true_errors():
    """Where the cached path cannot give the recomputation path's result, 'auto' recomputes (same tokens as
    use_cache=False) and use_cache=True raises an error naming why."""
    m = hf_model("qwen3_next")
    hm, x = hooks.wrap(m), H.toks(vocab(m), B=1, n=4)
    i = H.rec_layers(hm)[0]
    st = f"blocks.{i}.rec.state"
    cases = [
        (dict(hooks=[(f"blocks.{i}.rec.write_v", lambda w, _: w * 0.5)]), "write_v"),
        (dict(hooks=[(st, lambda S, _: S * 0.5)]), "after an earlier change"),     # every position: refused mid-run
        (dict(cache_names=["blocks.3.attn.pattern"]), "pattern"),
        (dict(step_hooks=[("blocks.3.attn.k", lambda k, h, s: None)]), "attn.k"),
    ]
    for kw, match in cases:
        g = hm.generate(x, 3, **kw)
        r = hm.generate(x, 3, use_cache=False, **kw)
        assert g.path == "recompute" and torch.equal(g.tokens, r.tokens), match
        with pytest.raises(HookError, match=match):
            hm.generate(x, 3, use_cache=True, **kw)
    zm = hooks.wrap(zoo())
    assert zm.generate(torch.zeros(1, 3, dtype=torch.long), 2, hooks=[("blocks.0.resid_pre", _add(torch.ones(32)))]
                       ).path == "recompute"
    with pytest.raises(HookError, match="no decode cache"):
        zm.generate(torch.zeros(1, 3, dtype=torch.long), 2, cache_names=["blocks.0.resid_pre"], use_cache=True)
    with pytest.raises(HookError, match="use_cache"):
        hm.generate(x, 2, use_cache="yes")


def test_hooks_removed_after_an_error_mid_decode():
    """A hook function raising at the third decode step: the error reaches the caller, every hook and op
    replacement is gone, and the next generation equals one on a fresh model."""
    m = hf_model("qwen3_next")
    hm, x = hooks.wrap(m), H.toks(vocab(m), B=2, n=5)
    snap, calls = H.snapshot(m), []
    before = hm.generate(x, 5, cache_names=["blocks.0.rec.state"])

    def boom(t, _):
        calls.append(t.shape[1])
        if len(calls) == 4:
            raise RuntimeError("boom at step 3")
    for kw in (dict(hooks=[("blocks.0.rec.state", boom)]), dict(step_hooks=[("blocks.1.resid_post",
                                                                            lambda t, h, s: boom(t, h))])):
        calls.clear()
        with pytest.raises(RuntimeError, match="boom"):
            hm.generate(x, 5, use_cache=True, **kw)
        H.assert_clean(m, snap)
    after = hm.generate(x, 5, cache_names=["blocks.0.rec.state"])
    assert after.path == "cache" and torch.equal(after.tokens, before.tokens)
    torch.testing.assert_close(after.cache["blocks.0.rec.state"], before.cache["blocks.0.rec.state"], atol=0, rtol=0)
