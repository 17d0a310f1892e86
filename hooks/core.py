"""HookedModel: run any supported model with caches and interventions on the common hook names.

Mechanism: plain torch forward(-pre) hooks on the modules an adapter names (residual stream,
mixer and MLP outputs), plus temporary replacement of two core ops per layer: the attention call
(to read q/k/v after RoPE, recompute the pattern, patch heads) and the recurrent scan kernel call
(to read scan inputs, compute per-token states with `hooks.scan`, and continue the recurrence from
patched states). Every hook and replacement is removed when the context exits, exceptions
included.
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import ExitStack, contextmanager

import torch

from hooks import names as N
from hooks import recurrence as R
from hooks.adapters import find
from hooks.adapters.base import swap_attr
from hooks.cache import Cache


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def _replace_first(x, new):
    return (new,) + tuple(x[1:]) if isinstance(x, tuple) else new


def _map_tensors(x, fn):
    """Apply fn to every tensor in x (a tensor, or a tuple/list of tensors and other things)."""
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, (tuple, list)):
        return type(x)(_map_tensors(v, fn) for v in x)
    return x


STATE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_STATE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}


def resolve_state_dtype(dtype) -> torch.dtype:
    """The dtype cached ``rec.state`` tensors are written in: None -> float32 (exact); a torch
    dtype or its name among float32, bfloat16, float16 (aliases fp32, bf16, fp16). Anything else
    raises a ValueError naming the valid choices."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        key = _STATE_ALIASES.get(key, key)
        if key in STATE_DTYPES:
            return STATE_DTYPES[key]
    elif isinstance(dtype, torch.dtype) and dtype in STATE_DTYPES.values():
        return dtype
    raise ValueError(f"state_dtype {dtype!r} is not supported; valid: None (float32), "
                     f"{', '.join(STATE_DTYPES)} (a torch dtype or its name)")


def attention_pattern(q, k, scale: float, sliding_window=None, rows=None):
    """Softmax pattern [B, H, T(P), T] in float32 from q [B,T,H,D], k [B,T,Hkv,D] (GQA repeats
    k), causal, optionally limited to a sliding window of that many keys. ``rows``: only these
    query positions."""
    B, T, H, _ = q.shape
    Hkv = k.shape[2]
    kk = k.repeat_interleave(H // Hkv, dim=2) if Hkv != H else k
    qi = torch.arange(T, device=q.device) if rows is None else torch.as_tensor(rows, device=q.device)
    qq = q[:, qi]
    s = torch.einsum("bihd,bjhd->bhij", qq.float(), kk.float()) * scale
    j = torch.arange(T, device=q.device)
    mask = j[None, :] > qi[:, None]
    if sliding_window:
        mask |= j[None, :] <= qi[:, None] - sliding_window
    return s.masked_fill(mask, float("-inf")).softmax(-1)


class HookedModel:
    """Wrap a model: ``hm = HookedModel(model)`` or ``hooks.wrap(model)``.

    Hook functions are called as ``fn(tensor, name)``; returning a tensor replaces the activation,
    returning None keeps it."""

    def __init__(self, model, adapter=None):
        self.model = model
        self.adapter = adapter or find(model)
        self.layers = self.adapter.layers(model)
        self.hook_names = N.valid_names(self.layers)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def __call__(self, tokens):
        return self.adapter.forward(self.model, tokens)

    def run_with_hooks(self, tokens, hooks=(), positions=None):
        with self.hooks(hooks, positions=positions):
            return self(tokens)

    def run_with_cache(self, tokens, names=None, positions=None, device=None, hooks=(), state_dtype=None):
        """Returns (logits, Cache). names: list of hook names (default: every residual-stream
        name); positions: keep only these token positions (states are computed only there);
        device: move cached tensors there; state_dtype: the dtype of cached ``rec.state`` tensors
        (None = float32, exact; bfloat16 / float16 halve their bytes: the states are computed in
        float32 and rounded once where they are written). Hooks on ``rec.state`` still see float32."""
        names = list(names) if names is not None else [n for n in self.hook_names
                                                        if n.endswith(("resid_pre", "resid_post"))]
        cache = Cache(positions=None if positions is None else [int(p) for p in positions])
        with self.hooks(hooks, cache_names=names, positions=positions, cache=cache, cache_device=device,
                        state_dtype=state_dtype):
            logits = self(tokens)
        return logits, cache

    @contextmanager
    def hooks(self, hooks=(), cache_names=(), positions=None, cache=None, cache_device=None, state_dtype=None):
        """Context manager: install ``hooks`` [(name, fn), ...] and caching of ``cache_names``
        into ``cache``; remove everything on exit. ``state_dtype``: dtype of the *cached*
        ``rec.state`` tensors (see `run_with_cache`); a hook function on ``rec.state`` always
        receives (and may return) float32 states, whatever this is."""
        sdtype = resolve_state_dtype(state_dtype)
        fns = defaultdict(list)
        for h in hooks:
            if len(h) != 2 or not callable(h[1]):
                raise TypeError(f"hooks must be (name, fn) pairs, got {h!r}")
            fns[h[0]].append(h[1])
        want = set(cache_names or ())
        N.check(list(fns) + sorted(want), self.hook_names)
        if want and cache is None:
            raise ValueError("cache_names given without a cache to fill")
        pos = None if positions is None else torch.as_tensor(list(positions), dtype=torch.long)
        active = set(fns) | want

        def run_fns(name, x):
            for fn in fns.get(name, ()):
                r = fn(x, name)
                if r is not None:
                    if r.shape != x.shape:
                        raise ValueError(f"hook on '{name}' returned shape {tuple(r.shape)}, "
                                         f"expected {tuple(x.shape)}")
                    # a replacement made elsewhere (a cache on the CPU, another GPU of a sharded
                    # model) goes where the activation lives
                    x = r if r.device == x.device else r.to(x.device)
            return x

        def store(name, x, dtype=None):  # x already holds only the kept positions
            x = x.detach()
            if cache_device or (dtype is not None and dtype != x.dtype):
                x = x.to(device=cache_device, dtype=dtype)  # one copy: cast and move together
            cache[name] = x

        def keep(name, x, dim=1, dtype=None):
            if name in want:
                store(name, x if pos is None else x.index_select(dim, pos.to(x.device)), dtype)
            return x

        def apply(name, x, dim=1):
            return keep(name, run_fns(name, x), dim)
        apply.run_fns, apply.keep, apply.store = run_fns, keep, store

        with ExitStack() as stack:
            handles = []
            stack.callback(lambda: [h.remove() for h in handles])
            if "embed" in active:
                emb = self.adapter.embed(self.model)
                handles.append(emb.register_forward_hook(lambda m, a, out: apply("embed", out)))
            for L in self.layers:
                self._install_layer(L, active, apply, fns, want, pos, handles, stack, cache, cache_device, sdtype)
            yield self

    # --- compute-saving interventions (used by sweeps that run many patched copies) -----------
    @contextmanager
    def logits_at(self, positions):
        """Inside the context the model computes logits only at one position per row:
        ``positions`` [B] (a tensor or list); the logits come out as [B, 1, vocab]. Saves the
        unembedding of every other position (for real vocabularies, a large part of a forward)."""
        head = self.adapter.unembed(self.model)
        orig = head.forward
        pos = torch.as_tensor(positions, dtype=torch.long)

        def fwd(x, *a, **kw):
            if x.dim() != 3 or x.shape[0] != pos.shape[0]:
                raise ValueError(f"logits_at: hidden states {tuple(x.shape)} do not match "
                                 f"{pos.shape[0]} positions")
            rows = torch.arange(x.shape[0], device=x.device)
            return orig(x[rows, pos.to(x.device)].unsqueeze(1), *a, **kw)
        with swap_attr(head, "forward", fwd):
            yield

    def block_outputs(self, tokens) -> list:
        """Run ``tokens`` once and return every block's raw output object (for `start_at`)."""
        outs, handles = [None] * self.n_layers, []
        try:
            for L in self.layers:
                handles.append(L.block.register_forward_hook(
                    lambda m, a, out, i=L.index: outs.__setitem__(i, out)))
            self(tokens)
        finally:
            for h in handles:
                h.remove()
        return outs

    @contextmanager
    def start_at(self, layer: int, prev_output, repeat: int = 1):
        """Inside the context blocks ``0 .. layer-1`` are not computed: they return
        ``prev_output`` (block ``layer-1``'s output from `block_outputs`, its batch tiled
        ``repeat`` times), so a batch of copies that differ only from block ``layer`` on costs only
        the blocks they change. The token batch passed to the model must have the tiled size."""
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer {layer} out of range 0..{self.n_layers - 1}")
        if layer == 0:
            yield
            return
        tiled = _map_tensors(prev_output, lambda t: t.repeat(repeat, *[1] * (t.dim() - 1)))
        with ExitStack() as stack:
            for L in self.layers[:layer]:
                stack.enter_context(swap_attr(L.block, "forward", lambda *a, **kw: tiled))
            yield

    # --- per layer -------------------------------------------------------------------------
    def _install_layer(self, L, active, apply, fns, want, pos, handles, stack, cache, cache_device, sdtype):
        p = f"blocks.{L.index}"
        has = lambda s: f"{p}.{s}" in active  # noqa: E731
        pre_store = {}
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
        if has("mixer_out") or has("resid_mid"):
            def mix_hook(m, a, out):
                y = apply(f"{p}.mixer_out", _first(out))
                if has("resid_mid"):  # a block's input can sit on the previous block's device
                    x = pre_store["x"].to(y.device)
                    y = apply(f"{p}.resid_mid", x + y) - x
                return _replace_first(out, y)
            handles.append(L.mixer_out.register_forward_hook(mix_hook))
        if has("mlp_out") and L.mlp_out is not None:
            handles.append(L.mlp_out.register_forward_hook(
                lambda m, a, out: _replace_first(out, apply(f"{p}.mlp_out", _first(out)))))
        if L.attn is not None and any(has(f"attn.{s}") for s in N.ATTN):
            stack.enter_context(self.adapter.patch_attention(L, self._attn_wrapper(L, p, has, fns, want, apply, pos, cache, cache_device)))
        if L.rec is not None and any(has(f"rec.{s}") for s in N.REC):
            stack.enter_context(self.adapter.patch_scan(L, self._scan_wrapper(L, p, has, fns, apply, pos, sdtype)))

    def _attn_wrapper(self, L, p, has, fns, want, apply, pos, cache, cache_device):
        meta = L.attn_meta

        def wrapper(q, k, v, call):
            q, k, v = apply(f"{p}.attn.q", q), apply(f"{p}.attn.k", k), apply(f"{p}.attn.v", v)
            name = f"{p}.attn.pattern"
            if name in fns:  # the pattern is intervened on: the output is computed from it
                pat = attention_pattern(q, k, meta["scale"], meta.get("sliding_window"))
                pat = apply(name, pat, dim=2)
                H, Hkv = q.shape[2], v.shape[2]
                vv = v.repeat_interleave(H // Hkv, dim=2) if Hkv != H else v
                o = torch.einsum("bhij,bjhd->bihd", pat, vv.float()).to(v.dtype)
            else:
                o = call(q, k, v)
                if name in want:
                    apply.store(name, attention_pattern(q, k, meta["scale"], meta.get("sliding_window"), rows=pos))
            return apply(f"{p}.attn.head_out", o)
        return wrapper

    def _scan_wrapper(self, L, p, has, fns, apply, pos, sdtype):
        """``sdtype``: the dtype cached states are written in. Hooked states are float32 (the
        hook sees and returns them so); only the cached copy is cast. Unhooked cached states are
        written in ``sdtype`` by the state kernel itself (no float32 copy of all of them)."""
        fam = L.rec_family
        sname = f"{p}.rec.state"
        inputs = [s for s in ("q", "k", "v", "decay", "beta") if has(f"rec.{s}")]
        # q, k are l2-normalised only if something reads them (states taken from the layer's own call do not)
        lazy_qk = not inputs and sname not in fns

        def wrapper(kw, call):
            c = R.canonical(fam, kw, lazy_qk=lazy_qk)
            modified = False
            for s in inputs:
                if s in c:
                    new = apply(f"{p}.rec.{s}", c[s])
                    # an identical replacement keeps the layer's own kernel (bit-exact clean runs);
                    # one that carries a gradient graph must be on the path that is differentiated
                    modified |= new is not c[s] and (new.requires_grad or not torch.equal(new, c[s]))
                    c[s] = new
            cached = None  # states to cache that the layer's own call produced along the way
            if modified:
                o, final = R.scan(fam, c, initial_state=c["initial_state"])
                final = final if kw.get("output_final_state") else None
            elif has("rec.state") and sname not in fns:
                o, final, cached = R.call_with_states(fam, call, kw, c, positions=pos, out_dtype=sdtype)
            else:
                o, final = call(**kw)
            if sname in fns:  # the hook sees every state; changed ones are continued from
                S = R.states(fam, c) if modified else R.family_states(fam, kw, c)
                S_new = apply.run_fns(sname, S)
                diff = (S_new != S).flatten(2).any(-1)  # [B, T]: which rows changed which states
                changed = diff.any(0).nonzero().flatten().tolist()
                if changed:
                    o, fin, S_new = R.continue_from(fam, c, o, {t: S_new[:, t] for t in changed}, S,
                                                    rows={t: diff[:, t] for t in changed})
                    if kw.get("output_final_state"):
                        final = fin
                apply.keep(sname, S_new, dtype=sdtype)
            elif has("rec.state"):
                apply.store(sname, R.states(fam, c, positions=pos, out_dtype=sdtype) if modified else cached)
            o = apply(f"{p}.rec.readout", o)
            return o, final
        # no hook function on this layer's rec names: adapters whose hooked forward is an equivalent of the
        # model's (not its own kernel) keep the model's own output and run the equivalent beside it
        wrapper.capture_only = not any(f"{p}.rec.{s}" in fns for s in N.REC)
        return wrapper
