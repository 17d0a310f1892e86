"""HookSession: the state of one `HookedModel.hooks(...)` call, which installs its hooks and op replacements
and removes all of them when it exits (exceptions included).

What it installs, per layer (`HookSession._install_layer`): plain torch forward(-pre) hooks on the modules
the adapter names (residual stream, mixer and MLP outputs, the branches of parallel layers), and through
the adapter the replacement of two core ops: the attention call (`AttentionHook`: q/k/v after RoPE, the
recomputed pattern, per-head outputs) and the recurrent scan kernel call (`ScanHook`: scan inputs,
per-token states, continuing the recurrence from patched states; docs/per-token-states.md).
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import ExitStack

import torch

from hooks import effective
from hooks import names as N
from hooks import recurrence as R
from hooks.scan.family import previous
from hooks.session_checks import active_sessions, check_nesting, warn_if_dropout
from hooks.state_dtypes import STATE_DTYPES, resolve_state_dtype, work_dtype  # noqa: F401


def attention_pattern(q, k, scale: float, sliding_window=None, rows=None, softcap=None, key_mask=None):
    """Softmax pattern [B, H, T(P), T] in float32 (float64 for float64 q) from q [B,T,H,D], k [B,T,Hkv,D] (GQA repeats
    k), causal, optionally limited to a sliding window of that many keys. ``rows``: only these
    query positions. ``softcap``: the logits are soft-capped before the mask, as gemma2's attention
    op does (``softcap * tanh(scale * q k^T / softcap)``). ``key_mask``: [B, T] bool, the real
    (not padding) tokens; padding keys get weight 0 and padding queries' rows are all zeros."""
    B, T, H, _ = q.shape
    Hkv = k.shape[2]
    kk = k.repeat_interleave(H // Hkv, dim=2) if Hkv != H else k
    qi = torch.arange(T, device=q.device) if rows is None else torch.as_tensor(rows, device=q.device)
    qq = q[:, qi]
    dt = torch.promote_types(q.dtype, torch.float32)
    s = torch.einsum("bihd,bjhd->bhij", qq.to(dt), kk.to(dt)) * scale
    if softcap:
        s = torch.tanh(s / softcap) * softcap
    j = torch.arange(T, device=q.device)
    mask = j[None, :] > qi[:, None]
    if sliding_window:
        mask |= j[None, :] <= qi[:, None] - sliding_window
    if key_mask is None:
        return s.masked_fill(mask, float("-inf")).softmax(-1)
    km = key_mask.to(q.device, torch.bool)
    mask = mask[None, None] | ~km[:, None, None, :]
    return s.masked_fill(mask, float("-inf")).softmax(-1).nan_to_num(0.0) * km[:, None, qi, None]


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def _replace_first(x, new):
    return (new,) + tuple(x[1:]) if isinstance(x, tuple) else new


def hook_pairs(hooks, valid) -> list:
    """``hooks`` as a list of (name, fn): a list of pairs, one pair, or a dict {name: fn}; a name
    may be a filter function (TransformerLens style), which stands for every valid name it accepts."""
    if isinstance(hooks, dict):
        hooks = list(hooks.items())
    elif isinstance(hooks, tuple) and len(hooks) == 2 and (isinstance(hooks[0], str) or callable(hooks[0])) \
            and callable(hooks[1]):
        hooks = [hooks]
    out = []
    for h in hooks:
        if not isinstance(h, (tuple, list)) or len(h) != 2 or not callable(h[1]):
            raise TypeError(f"hooks must be (name, fn) pairs such as [('blocks.0.resid_pre', fn)], got {h!r}")
        name, fn = h
        out += [(n, fn) for n in valid if name(n)] if callable(name) and not isinstance(name, str) else [(name, fn)]
    return out


def positions_list(positions, T: int | None = None) -> list[int] | None:
    """``positions`` (None, an integer or integers) as a list of ints; with ``T`` (the number of tokens)
    negative positions count from the end and each must lie in -T..T-1. Floats are refused."""
    if positions is None:
        return None
    if isinstance(positions, torch.Tensor) and positions.dim() == 0 or not hasattr(positions, "__iter__"):
        positions = [positions]
    if isinstance(positions, str):
        raise N.HookError(f"positions must be integers, got {positions!r}")
    out = [N.as_int(p, "position") for p in positions]
    for p in out:
        if T is None and p < 0:
            raise N.HookError(f"position {p}: negative positions count from the end of the sequence, which "
                              "is known only with the tokens; give them to run_with_cache / run_with_hooks")
        if T is not None and not -T <= p < T:
            raise N.HookError(f"position {p} out of range for {T} tokens (valid: 0..{T - 1}, or -{T}..-1 "
                              "from the end)")
    return out if T is None else [p % T for p in out]


def _grad_fn(name):
    """The hook function a backward cache adds on ``name`` (after the user's): it makes the activation
    lie on the path to the logits (a leaf where nothing upstream carries a gradient; a copy for scan
    inputs, which then feed the scan; on attention patterns its presence makes the output come from the
    pattern)."""
    _, kind, site = N.parse(name)
    if kind == "rec" and site in ("state", "pattern"):
        raise N.HookError(f"no gradient for '{name}': it is computed beside the layer, not on the path to the "
                          "logits; valid for the backward cache: residual names, mixer_out, mlp_out, attn.*, "
                          "rec.q/k/v/decay/beta/readout")
    copy = kind == "rec" and site != "readout"

    def fn(x, n):
        if not x.requires_grad:
            return x.detach().clone().requires_grad_()
        return x.clone() if copy else None
    return fn


def check_return(name, r, x, what="hook"):
    """Raise a `HookError` unless a hook function's non-None return ``r`` can replace ``x`` (a tensor of x's
    shape and dtype); ``what`` names the kind of hook in the message ("hook", "step hook")."""
    if not isinstance(r, torch.Tensor):
        raise N.HookError(f"{what} on '{name}' returned {type(r).__name__}; return a tensor of shape "
                          f"{tuple(x.shape)} and dtype {x.dtype} (the replacement) or None (keep it)")
    if r.shape != x.shape:
        raise N.HookError(f"{what} on '{name}' returned shape {tuple(r.shape)}, expected {tuple(x.shape)}")
    if r.dtype != x.dtype:
        raise N.HookError(f"{what} on '{name}' returned dtype {r.dtype}, expected {x.dtype} (the "
                          f"activation's); return r.to({x.dtype})")


class HookSession:
    """One ``hooks(...)`` call on a `HookedModel` ``hm``: hook functions by name, the cache to fill and the
    names to cache, the kept positions, the cache device and the dtype of cached states. A context
    manager: entering installs everything, exiting removes everything (an error while installing
    removes what was installed so far). Arguments as `HookedModel.hooks`; ``heads``: record the
    out-projection inputs per-head results need (`hooks.cache.Cache.head_results`) into
    ``cache.head_inputs``; ``grad_names``: names whose activations `gradients` differentiates."""

    def __init__(self, hm, hooks=(), cache_names=(), positions=None, cache=None, cache_device=None, state_dtype=None,
                 heads=False, grad_names=(), key_mask=None):
        self.hm = hm
        self.key_mask = key_mask   # [B, T] bool of real tokens (padded batches), or None
        # the dtype cached states are written in; None: the scan's working dtype (`hooks.state_dtypes.work_dtype`)
        self.state_dtype = None if state_dtype is None else resolve_state_dtype(state_dtype)
        self.fns = defaultdict(list)
        for name, fn in hook_pairs(hooks, hm.hook_names):
            self.fns[name].append(fn)
        self.user_fns = set(self.fns)       # (not the gradient taps added below)
        self.want = set(cache_names or ())
        self.grad_want = set(grad_names or ())
        N.check(list(self.fns) + sorted(self.want | self.grad_want, key=str), hm.hook_names)
        for name in sorted(self.grad_want):
            self.fns[name].append(_grad_fn(name))
        if self.want and cache is None:
            raise ValueError("cache_names given without a cache to fill")
        self.cache, self.cache_device, self.heads = cache, cache_device, bool(heads) and cache is not None
        pos = positions_list(positions)
        self.positions = None if pos is None else torch.as_tensor(pos, dtype=torch.long)
        self.active = set(self.fns) | self.want
        self._points = {n: N.HookPoint(n) for n in self.active}
        self.grad_src = []  # (name, activation on the path, dim of positions)
        self._stack = self._handles = None

    # --- what happens to an activation with a hook name ------------------------------------------
    def run_fns(self, name, x):
        """Run the hook functions on ``name`` (called as ``fn(x, name)``; the name is a `HookPoint`, so
        TransformerLens-style ``fn(tensor, hook)`` works too); a returned tensor replaces x (same
        shape and dtype)."""
        for fn in self.fns.get(name, ()):
            r = fn(x, self._points.get(name, name))
            if r is not None:
                check_return(name, r, x)
                # a replacement made elsewhere (a cache on the CPU, another GPU of a sharded
                # model) goes where the activation lives
                x = r if r.device == x.device else r.to(x.device)
        return x

    def run_fns_derived(self, name, x):
        """`run_fns` on a value the session derived for the hook (scan inputs, states, write factors), which the
        layer does not read back: returns (result, edited), ``edited`` when a hook function changed ``x`` in place
        (TransformerLens's habit: edit and return it, or return None), so that ``x`` no longer holds the value
        the layer computed and the caller must not take the result for an unchanged one."""
        if name not in self.fns:
            return x, False
        try:
            v0 = x._version
        except RuntimeError:        # an inference tensor tracks no version: the functions edit a copy
            return self.run_fns(name, x.clone()), False
        new = self.run_fns(name, x)
        return new, x._version != v0

    def store(self, name, x, dtype=None):
        """Cache ``x``, which already holds only the kept positions."""
        x = x.detach()
        if self.cache_device or (dtype is not None and dtype != x.dtype):
            x = x.to(device=self.cache_device, dtype=dtype)  # one copy: cast and move together
        self.cache[name] = x

    def keep(self, name, x, dim=1, dtype=None):
        """Cache ``x`` (its kept positions along ``dim``) if ``name`` is cached; returns x."""
        if name in self.grad_want:
            self.grad_src.append((name, x, dim))
        if name in self.want:
            pos = self.positions
            self.store(name, x if pos is None else x.index_select(dim, pos.to(x.device)), dtype)
        return x

    def apply(self, name, x, dim=1):
        """Hook functions, then caching: what every hook point does with its activation."""
        return self.keep(name, self.run_fns(name, x), dim)

    # --- installing and removing -----------------------------------------------------------------
    def __enter__(self):
        warn_if_dropout(self.hm)
        outer = active_sessions(self.hm.model)
        check_nesting(self, outer)
        stack, self._handles = ExitStack(), []
        outer.append(self)
        stack.callback(outer.remove, self)
        handles = self._handles
        stack.callback(lambda: [h.remove() for h in handles])  # torch hooks go last, after the op patches
        try:
            if "embed" in self.active:
                emb = self.hm.adapter.embed(self.hm.model)
                handles.append(emb.register_forward_hook(lambda m, a, out: self.apply("embed", out)))
            for L in self.hm.layers:
                self._install_layer(L, stack)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc):
        stack, self._stack = self._stack, None
        return stack.__exit__(*exc)

    def _install_layer(self, L, stack):
        p = f"blocks.{L.index}"
        has = lambda s: f"{p}.{s}" in self.active  # noqa: E731
        apply, handles, pre_store = self.apply, self._handles, {}
        if has("resid_pre") or has("resid_mid"):
            def pre_hook(mod, args, kwargs):
                if args:
                    x = apply(f"{p}.resid_pre", args[0])
                    pre_store["x"] = x
                    return (x,) + tuple(args[1:]), kwargs
                x = apply(f"{p}.resid_pre", kwargs["hidden_states"])
                pre_store["x"] = x
                return args, {**kwargs, "hidden_states": x}
            handles.append(L.block.register_forward_pre_hook(pre_hook, with_kwargs=True))
        if has("resid_post"):
            handles.append(L.block.register_forward_hook(
                lambda m, a, out: _replace_first(out, apply(f"{p}.resid_post", _first(out)))))
        for kind, mod in L.branches.items():  # parallel layers: each branch's term, before the layer sums them
            if has(f"{kind}.out"):
                handles.append(mod.register_forward_hook(
                    lambda m, a, out, n=f"{p}.{kind}.out": _replace_first(out, apply(n, _first(out)))))
        if has("mixer_out") or has("resid_mid"):
            def mix_hook(m, a, out):
                y = apply(f"{p}.mixer_out", _first(out))
                if has("resid_mid"):  # a block's input can sit on the previous block's device
                    x = pre_store["x"].to(y.device)
                    if f"{p}.resid_mid" in self.fns:  # hooked: the mixer's term becomes (hooked mid) - pre
                        y = apply(f"{p}.resid_mid", x + y) - x
                    else:  # only cached: the term is handed on as it is (bit-exact, parallel blocks too)
                        self.keep(f"{p}.resid_mid", x + y)
                return _replace_first(out, y)
            handles.append(L.mixer_out.register_forward_hook(mix_hook))
        if has("mlp_out") and L.mlp_out is not None:
            handles.append(L.mlp_out.register_forward_hook(
                lambda m, a, out: _replace_first(out, apply(f"{p}.mlp_out", _first(out)))))
        if L.attn is not None and any(has(f"attn.{s}") for s in N.ATTN):
            stack.enter_context(self.hm.adapter.patch_attention(L, AttentionHook(self, L)))
        if L.rec is not None and any(has(f"rec.{s}") for s in N.REC):
            stack.enter_context(self.hm.adapter.patch_scan(L, ScanHook(self, L)))
        if self.heads:
            self._install_heads(L)

    def _install_heads(self, L):
        """Record the input of layer L's out-projections whose input is not a cached name (gated norms,
        output gates) into ``cache.head_inputs[(layer, kind)]``, at the kept positions; the first call
        of a forward counts (mixers that run an equivalent beside their own forward call it twice)."""
        store = self.cache.head_inputs
        for kind, mod in (("attn", L.attn), ("rec", L.rec)):
            if mod is None:
                continue
            try:
                spec = self.hm.adapter.head_projection(self.hm.model, L, kind)
            except NotImplementedError:
                continue  # Cache.head_results says why
            if spec.input_is_cached:
                continue

            def pre(m, args, key=(L.index, kind)):
                if key not in store:
                    x, pos = args[0].detach(), self.positions
                    x = x if pos is None else x.index_select(1, pos.to(x.device))
                    store[key] = x.to(self.cache_device) if self.cache_device else x
            self._handles.append(spec.proj.register_forward_pre_hook(pre))

    def gradients(self, metric) -> dict:
        """d metric / d activation for every ``grad_names`` activation of the forward just run (at the kept
        positions, moved to the cache device); an activation the metric does not depend on gets zeros."""
        if not isinstance(metric, torch.Tensor) or metric.numel() != 1:
            raise N.HookError(f"backward= must return a scalar tensor (e.g. logits[:, -1, answer].sum()), got "
                              f"{tuple(metric.shape) if isinstance(metric, torch.Tensor) else type(metric).__name__}")
        if not metric.requires_grad:
            raise N.HookError("backward=: the metric carries no gradient (was it detached or computed under "
                              "torch.no_grad()?)")
        src = self.grad_src
        grads = torch.autograd.grad(metric, [x for _, x, _ in src], allow_unused=True)
        out, pos = {}, self.positions
        for (name, x, dim), g in zip(src, grads):
            g = torch.zeros_like(x) if g is None else g
            g = g if pos is None else g.index_select(dim, pos.to(g.device))
            out[name] = g.detach().to(self.cache_device) if self.cache_device else g.detach()
        return out


class AttentionHook:
    """What a layer calls instead of its attention op while attn.* names are hooked:
    ``hook(q, k, v, call)`` (the adapters' protocol, `hooks.adapters.base.Adapter.patch_attention`)."""

    def __init__(self, session: HookSession, L):
        self.s, self.meta, self.p = session, L.attn_meta, f"blocks.{L.index}"

    def __call__(self, q, k, v, call):
        s, p, meta = self.s, self.p, self.meta
        q, k, v = s.apply(f"{p}.attn.q", q), s.apply(f"{p}.attn.k", k), s.apply(f"{p}.attn.v", v)
        name = f"{p}.attn.pattern"
        # meta is read at call time: HF adapters refresh it from what the layer passes its op
        pat_kw = dict(sliding_window=meta.get("sliding_window"), softcap=meta.get("softcap"))
        if s.key_mask is not None and s.key_mask.shape[-1] == q.shape[1]:   # (not a decode step)
            pat_kw["key_mask"] = s.key_mask
        if name in s.fns:  # the pattern is intervened on: the output is computed from it
            pat = attention_pattern(q, k, meta["scale"], **pat_kw)
            pat = s.apply(name, pat, dim=2)
            H, Hkv = q.shape[2], v.shape[2]
            vv = v.repeat_interleave(H // Hkv, dim=2) if Hkv != H else v
            o = torch.einsum("bhij,bjhd->bihd", pat, vv.to(pat.dtype)).to(v.dtype)
        else:
            o = call(q, k, v)
            if name in s.want:
                s.store(name, attention_pattern(q, k, meta["scale"], rows=s.positions, **pat_kw))
        return s.apply(f"{p}.attn.head_out", o)


def _pad_masked(A, key_mask, rows=None):
    """A pattern ``[B, H, T|P, T]`` with every entry whose query or key is padding set to 0 (as
    `attention_pattern` does); ``key_mask`` [B, T] bool of real tokens, or None (no padding; a decode step)."""
    if key_mask is None or key_mask.shape != (A.shape[0], A.shape[-1]):
        return A
    km = key_mask.to(A.device, torch.bool)
    qm = km if rows is None else km[:, rows.to(A.device)]
    return A.masked_fill(~(qm[:, None, :, None] & km[:, None, None, :]), 0)


class ScanHook:
    """What a layer calls instead of its scan kernel while rec.* names are hooked: ``hook(kw, call)``
    with ``kw`` in the signature of ``hooks.scan.<family>.scan`` (the adapters' protocol,
    `hooks.adapters.base.Adapter.patch_scan`); returns (readout, final state).

    ``capture_only``: no hook function on this layer's rec names, only caching; adapters whose hooked
    forward is an equivalent of the model's (not its own kernel) then keep the model's own output and
    run the equivalent beside it. States are computed in the working dtype of the scan inputs (float32; float64
    for float64 models, `hooks.state_dtypes.work_dtype`): hook functions see and return them so, and the cache
    writes them in the session's ``state_dtype`` where one was asked for, else in that working dtype."""

    def __init__(self, session: HookSession, L):
        self.s, self.family = session, R.get_family(L.rec_family)
        p = self.p = f"blocks.{L.index}"
        self.sname = f"{p}.rec.state"
        self.inputs = [x for x in self.family.inputs if f"{p}.rec.{x}" in session.active]
        self.cache_state = self.sname in session.active
        self.patch_state = self.sname in session.fns
        self.pattern = f"{p}.rec.pattern" in session.active  # the effective attention (hooks.effective)
        self.wnames = (f"{p}.rec.write_k", f"{p}.rec.write_v")   # the factored per-token writes
        self.writes = any(n in session.active for n in self.wnames)
        self.rewrite = any(n in session.fns for n in self.wnames)
        # q, k are l2-normalised only if something reads them (states taken from the layer's own call do not)
        self.lazy_qk = not self.inputs and not self.patch_state and not self.pattern and not self.writes
        # a hook function on rec.pattern only observes it (`_pattern`): the layer's own output is kept
        self.capture_only = not any(f"{p}.rec.{x}" in session.fns for x in N.REC if x != "pattern")

    def __call__(self, kw, call):
        s, fam, pos = self.s, self.family, self.s.positions
        c = fam.canonical(kw, lazy_qk=self.lazy_qk)
        wd = self.wd = work_dtype(c)
        sdtype = self.sdtype = s.state_dtype or wd
        modified = self._apply_inputs(c)
        if self.pattern:
            self._pattern(c)
        cached = None  # states to cache that the layer's own call produced along the way
        if modified:
            o, final = fam.scan(c, initial_state=c["initial_state"])
            final = final if kw.get("output_final_state") else None
        elif self.cache_state and not self.patch_state and not self.writes:
            o, final, cached = fam.call_with_states(call, kw, c, positions=pos, out_dtype=sdtype)
        else:
            o, final = call(**kw)
        S = None
        if self.writes:       # the writes need every state (S_{t-1}); changed ones are continued from
            S = fam.states(c, out_dtype=wd) if modified else fam.own_states(kw, c, out_dtype=wd)
            o, fin, S = self._writes(c, o, S)
            if fin is not None and kw.get("output_final_state"):
                final = fin
        if self.patch_state:  # the hook sees every state; changed ones are continued from
            fresh = None if S is not None else (lambda: fam.states(c, out_dtype=wd) if modified
                                                else fam.own_states(kw, c, out_dtype=wd))
            o, fin = self._patch_states(c, o, S if S is not None else fresh(), fresh)
            if fin is not None and kw.get("output_final_state"):
                final = fin
        elif self.cache_state:
            if S is not None:
                s.keep(self.sname, S, dtype=sdtype)
            else:
                s.store(self.sname, fam.states(c, positions=pos, out_dtype=sdtype) if modified else cached)
        return s.apply(f"{self.p}.rec.readout", o), final

    def _writes(self, c, o, S):
        """Hook functions and caching on ``rec.write_k`` / ``rec.write_v``; changed writes are continued
        from (`Family.rewrite`). Returns (readout, final state or None if unchanged, states)."""
        fam = self.family
        def factors():
            return fam.write_factors(c, previous(S.to(self.wd), c.get("initial_state")))
        old, new, edited = factors(), [], False
        for n, w in zip(self.wnames, old):
            w, e = self.s.run_fns_derived(n, w)
            new.append(self.s.keep(n, w))
            edited |= e
        if not self.rewrite:
            return o, None, S
        return fam.rewrite(c, o, S, factors() if edited else old, tuple(new))

    def _pattern(self, c):
        """``rec.pattern``: the exact effective attention of view ``c`` (after the hooks on its inputs) at
        the kept query rows, `hooks.effective.hook_pattern`. Hook functions on it see it; one that
        changes it raises NotImplementedError (the pattern is not fed back into the layer)."""
        name = f"{self.p}.rec.pattern"
        A = _pad_masked(effective.hook_pattern(name, self.family.name, c, self.s.positions), self.s.key_mask,
                        self.s.positions)
        if name in self.s.fns:
            new = self.s.run_fns(name, A)
            if new is not A and not torch.equal(new, A):
                raise NotImplementedError(f"'{name}' can be cached and read, not changed: the layer's output is "
                                          "not recomputed from a patched effective attention; patch rec.q/k/v/"
                                          "decay/beta or rec.state instead")
        if name in self.s.want:
            self.s.store(name, A)

    def _apply_inputs(self, c) -> bool:
        """Hook functions and caching on the hooked scan inputs of view ``c`` (replaced in place);
        whether any of them changed."""
        modified = False
        for x in self.inputs:
            if x in c:
                name = f"{self.p}.rec.{x}"
                new, edited = self.s.run_fns_derived(name, c[x])
                new = self.s.keep(name, new)
                # an identical replacement keeps the layer's own kernel (bit-exact clean runs);
                # one that carries a gradient graph must be on the path that is differentiated;
                # one edited in place (q, k are the layer's arguments normalised: a copy) runs the scan on it
                modified |= edited or new is not c[x] and (new.requires_grad or not torch.equal(new, c[x]))
                c[x] = new
        return modified

    def _patch_states(self, c, o, S, fresh=None):
        """Run the hook functions on the states S; continue the recurrence from the states they changed
        and cache the states the run went through. ``fresh()`` makes S again, should a hook function edit it in
        place (None: S is copied first). Returns (readout, final state or None if unchanged)."""
        S_new, edited = self.s.run_fns_derived(self.sname, S if fresh is not None else S.clone())
        if edited and fresh is not None:
            S = fresh()
        diff = (S_new != S).flatten(2).any(-1)  # [B, T]: which rows changed which states
        changed = diff.any(0).nonzero().flatten().tolist()
        fin = None
        if changed:
            o, fin, S_new = self.family.continue_from(c, o, {t: S_new[:, t] for t in changed}, S,
                                                      rows={t: diff[:, t] for t in changed})
        self.s.keep(self.sname, S_new, dtype=self.sdtype)
        return o, fin
