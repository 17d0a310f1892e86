"""HookedModel: run any supported model with caches and interventions on the common hook names.

Mechanism: plain torch forward(-pre) hooks on the modules an adapter names (residual stream,
mixer and MLP outputs), plus temporary replacement of two core ops per layer: the attention call
(to read q/k/v after RoPE, recompute the pattern, patch heads) and the recurrent scan kernel call
(to read scan inputs, compute per-token states with `hooks.scan`, and continue the recurrence from
patched states). One `hooks.session.HookSession` holds what one ``hooks(...)`` call installs and
removes it all when the context exits, exceptions included.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager

import torch

from hooks import names as N
from hooks.adapters import find
from hooks.adapters.base import swap_attr
from hooks.cache import Cache
from hooks.session import STATE_DTYPES, HookSession, attention_pattern, resolve_state_dtype  # noqa: F401  (public here)


def _map_tensors(x, fn):
    """Apply fn to every tensor in x (a tensor, or a tuple/list of tensors and other things)."""
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, (tuple, list)):
        return type(x)(_map_tensors(v, fn) for v in x)
    return x


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
        with HookSession(self, hooks, cache_names=cache_names, positions=positions, cache=cache,
                         cache_device=cache_device, state_dtype=state_dtype):
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
