"""HookedModel: run any supported model with caches and interventions on the common hook names.

Mechanism: plain torch forward(-pre) hooks on the modules an adapter names (residual stream,
mixer and MLP outputs), plus temporary replacement of two core ops per layer: the attention call
(to read q/k/v after RoPE, recompute the pattern, patch heads) and the recurrent scan kernel call
(to read scan inputs, compute per-token states with `hooks.scan`, and continue the recurrence from
patched states). One `hooks.session.HookSession` holds what one ``hooks(...)`` call installs and
removes it all when the context exits, exceptions included.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager, nullcontext

import torch

from hooks import names as N
from hooks.adapters import find
from hooks.adapters.base import swap_attr
from hooks.cache import Cache
from hooks.session import STATE_DTYPES, HookSession, attention_pattern, resolve_state_dtype  # noqa: F401  (public here)
from hooks.session import positions_list


def _map_tensors(x, fn):
    """Apply fn to every tensor in x (a tensor, or a tuple/list of tensors and other things)."""
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, (tuple, list)):
        return type(x)(_map_tensors(v, fn) for v in x)
    return x


def pad_ids(ids: list, pad_id: int, side: str = "left"):
    """(tokens ``[B, T]``, attention_mask ``[B, T]``, both long) of token-id lists of different lengths,
    padded with ``pad_id`` on ``side`` ('left' or 'right') to the longest; the mask is 1 at real tokens."""
    T = max(len(e) for e in ids)
    fill = [[pad_id] * (T - len(e)) for e in ids]
    rows = [f + list(e) if side == "left" else list(e) + f for f, e in zip(fill, ids)]
    mask = [[0] * len(f) + [1] * len(e) if side == "left" else [1] * len(e) + [0] * len(f) for f, e in zip(fill, ids)]
    return torch.tensor(rows, dtype=torch.long), torch.tensor(mask, dtype=torch.long)


def _unknown_token(tok):
    """(text, id) of the token a tokenizer maps unknown text to (an HF tokenizer's ``unk_token``, or its
    backend model's), or None."""
    text = getattr(tok, "unk_token", None) or getattr(getattr(getattr(tok, "backend_tokenizer", None), "model", None),
                                                       "unk_token", None)
    if not text or not hasattr(tok, "convert_tokens_to_ids"):
        return None
    i = tok.convert_tokens_to_ids(str(text))
    return None if i is None else (str(text), i)


def _device(device):
    """``device`` (None, a torch.device or its name) checked: one torch cannot name, or a GPU this machine lacks, is a
    HookError naming it."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise N.HookError(f"device {device!r} is not valid ({str(e).splitlines()[0]}); valid: e.g. 'cpu', 'cuda', "
                          "'cuda:0'") from None
    if dev.type not in ("cpu", "cuda"):
        raise N.HookError(f"device {device!r} is not valid; valid: 'cpu', 'cuda' or 'cuda:N'")
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise N.HookError(f"device {device!r} is not available here ({torch.cuda.device_count()} CUDA devices); "
                          "valid: 'cpu'" + (", 'cuda:0'..." if torch.cuda.is_available() else ""))
    return device


class HookedModel:
    """Wrap a model: ``hm = HookedModel(model)`` or ``hooks.wrap(model, tokenizer=None)``.

    Hook functions are called as ``fn(tensor, name)``; returning a tensor (same shape and dtype)
    replaces the activation, returning None keeps it. The name is a `hooks.names.HookPoint`, a ``str``
    with ``.name`` and ``.layer()``, so TransformerLens-style ``fn(tensor, hook)`` functions work too.
    Tokens are ``[B, T]`` integer ids or, with a tokenizer (``tokenizer=``, else ``model.tokenizer``),
    a string or a list of strings."""

    def __init__(self, model, adapter=None, tokenizer=None):
        self.model = model
        self.adapter = adapter or find(model)
        self.layers = self.adapter.layers(model)
        self.hook_names = N.valid_names(self.layers)
        self._tokenizer = tokenizer

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def tokenizer(self):
        """The tokenizer string prompts go through: the one given to `hooks.wrap`, else the model's
        ``tokenizer`` attribute (zoo models from ``interp.zoo.load_model`` carry the task vocabulary's,
        ``interp.zoo.hf.attach_tokenizer`` sets it on others; a TransformerLens bridge or nnsight
        LanguageModel carries its own), else None."""
        return self._tokenizer if self._tokenizer is not None else getattr(self.model, "tokenizer", None)

    def name(self, site: str, layer=None):
        """The hook name of ``site`` at ``layer`` on this model (negative layers count from the end; a
        list of layers gives a list); an error if the layer has no such site."""
        if layer is not None and not isinstance(layer, int) and hasattr(layer, "__iter__"):
            return [self.name(site, i) for i in layer]
        if layer is not None:
            i = N.as_int(layer, "layer")
            if not -self.n_layers <= i < self.n_layers:
                raise N.HookError(f"layer {i} out of range for {self.n_layers} layers (valid: 0..{self.n_layers - 1}, "
                                  f"or -{self.n_layers}..-1 from the end)")
            layer = i % self.n_layers
        return N.check([N.name(site, layer)], self.hook_names)[0]

    def to_tokens(self, tokens) -> torch.Tensor:
        """``tokens`` as a checked ``[B, T]`` tensor of token ids: a string or a list of strings goes
        through `tokenizer` (each prompt must give the same number of tokens); ids must be integers
        within the model's vocabulary."""
        if isinstance(tokens, str) or (isinstance(tokens, (list, tuple)) and tokens
                                       and all(isinstance(t, str) for t in tokens)):
            return self._encode([tokens] if isinstance(tokens, str) else list(tokens))
        if not isinstance(tokens, torch.Tensor):
            try:
                tokens = torch.as_tensor(tokens)
            except (TypeError, ValueError, RuntimeError) as e:
                raise N.HookError(f"tokens must be a [batch, seq] tensor of token ids, a string or a list of "
                                  f"strings; got {type(tokens).__name__} ({e})") from None
        if tokens.dtype == torch.bool or tokens.is_floating_point() or tokens.is_complex():
            hint = "; use tokens.long() if they are whole numbers" if tokens.is_floating_point() else ""
            raise N.HookError(f"tokens must be integer token ids, got dtype {tokens.dtype}{hint}")
        if tokens.dim() != 2:
            hint = " (one sequence: tokens[None])" if tokens.dim() == 1 else ""
            raise N.HookError(f"tokens must be [batch, seq], got shape {tuple(tokens.shape)}{hint}")
        if 0 in tokens.shape:
            raise N.HookError(f"tokens of shape {tuple(tokens.shape)} are empty; valid: at least one sequence of at "
                              "least one token")
        if tokens.dtype not in (torch.long, torch.int32):
            tokens = tokens.long()
        V = self.vocab_size
        if tokens.numel() and V and not _capturing(tokens):   # no host sync inside a CUDA-graph capture
            lo, hi = (int(v) for v in torch.aminmax(tokens))
            if lo < 0 or hi >= V:
                raise N.HookError(f"token id {lo if lo < 0 else hi} out of range: the model's vocabulary has {V} "
                                  f"ids (valid: 0..{V - 1})")
        return tokens

    @property
    def vocab_size(self) -> int | None:
        """The number of token ids the model embeds (None where its embedding does not say)."""
        return getattr(self._embedding(), "num_embeddings", None)

    def _embedding(self):
        emb = self.adapter.embed(self.model)
        if not hasattr(emb, "num_embeddings") and hasattr(self.model, "get_input_embeddings"):
            emb = self.model.get_input_embeddings()
        return emb

    def _encode(self, prompts: list) -> torch.Tensor:
        tok = self.tokenizer
        if tok is None:
            raise N.HookError(
                "string prompts need a tokenizer and this model has none: hooks.wrap(model, tokenizer=...) "
                "(a zoo model built in code: interp.zoo.hf.attach_tokenizer(model)), or pass token ids [batch, seq]")
        ids, unk = [], _unknown_token(tok)
        for p in prompts:
            e = tok.encode(p) if hasattr(tok, "encode") else tok(p)["input_ids"]
            e = list(getattr(e, "ids", e))
            if unk is not None and unk[1] in e and unk[0] not in p:
                raise N.HookError(f"prompt {p!r} holds text the tokenizer does not know (it became the unknown "
                                  f"token {unk[0]!r})")
            ids.append(e)
        if len({len(e) for e in ids}) > 1:
            raise N.HookError(f"the prompts give different numbers of tokens ({', '.join(str(len(e)) for e in ids)}); "
                              "hooks runs them without padding: give prompts of one length, or token ids")
        w = getattr(self._embedding(), "weight", None)
        return self.to_tokens(torch.tensor(ids, dtype=torch.long, device=None if w is None else w.device))

    def to_single_token(self, word: str) -> int:
        """The id of ``word``, which the tokenizer must turn into exactly one token (no special tokens)."""
        tok = self.tokenizer
        if tok is None:
            raise N.HookError(f"{word!r}: strings need a tokenizer and this model has none: hooks.wrap(model, "
                              "tokenizer=...), or give the token id")
        e = tok.encode(word, add_special_tokens=False)
        ids = list(getattr(e, "ids", e))
        if len(ids) != 1:
            raise N.HookError(f"{word!r} is {len(ids)} tokens {ids}; an answer needs a single token")
        unk = _unknown_token(tok)
        if unk is not None and ids[0] == unk[1] and unk[0] not in word:
            raise N.HookError(f"{word!r} is not a word the tokenizer knows (it became the unknown token {unk[0]!r})")
        return ids[0]

    def __call__(self, tokens, attention_mask=None):
        tokens = self.to_tokens(tokens)
        return self._forward(tokens, self._mask(tokens, attention_mask))

    def pad(self, prompts, side: str = "left"):
        """(tokens ``[B, T]``, attention_mask ``[B, T]``) of string prompts of different token lengths, padded
        on ``side`` ('left', as for generation, or 'right') with the tokenizer's pad id (else 0). Pass the
        mask to `run_with_cache` / `run_with_hooks` as ``attention_mask=``."""
        if side not in ("left", "right"):
            raise N.HookError(f"side '{side}' is not valid; valid: left, right")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids = [self._encode([p])[0].tolist() for p in prompts]
        tokens, mask = pad_ids(ids, getattr(self.tokenizer, "pad_token_id", None) or 0, side)
        w = getattr(self._embedding(), "weight", None)
        return (tokens, mask) if w is None else (tokens.to(w.device), mask.to(w.device))

    def _mask(self, tokens, attention_mask, generating=False):
        """The checked padding mask as ``[B, T]`` bool (True: a real token), or None where there is no padding.
        An adapter whose ``padding`` is "right" takes right padding only (`hooks.adapters.hf_common.HFAdapter`):
        a row with a pad before its real tokens is refused (``generating``: any padding, as `generate` needs
        left padding)."""
        if attention_mask is None:
            return None
        m = torch.as_tensor(attention_mask)
        if tuple(m.shape) != tuple(tokens.shape):
            raise N.HookError(f"attention_mask must have the tokens' shape {tuple(tokens.shape)}, got {tuple(m.shape)}")
        if not bool(((m == 0) | (m == 1)).all()):
            raise N.HookError("attention_mask must hold 0 (padding) and 1 (a real token)")
        m = m.to(tokens.device).bool()
        if bool(m.all()):
            return None
        if not bool(m.any(-1).all()):
            raise N.HookError("a row of attention_mask has no real token")
        runs = m[:, 0].long() + (m[:, 1:] & ~m[:, :-1]).sum(-1)   # blocks of real tokens per row
        if bool((runs > 1).any()):
            raise N.HookError(f"row {int((runs > 1).nonzero()[0])} of attention_mask has padding between real tokens; "
                              "valid: padding on the left or the right only (`pad`)")
        if not self.adapter.padding:
            raise N.HookError(f"{self.adapter.family}: padded batches are supported for HF models (hf_* adapters) and "
                              "the zoo; this model runs prompts of one length (run them in groups of equal length)")
        if self.adapter.padding == "right" and (generating or not bool(m[:, 0].all())):
            why = getattr(self.adapter, "padding_why", "") or "its forward does not keep pads out of later tokens"
            if generating:
                raise N.HookError(f"{self.adapter.family}: generation from padded prompts needs left padding, which "
                                  f"this model does not take ({why}); valid: prompts of one length (generate each "
                                  "length group on its own)")
            raise N.HookError(f"{self.adapter.family}: row {int((~m[:, 0]).nonzero()[0])} of attention_mask is padded "
                              f"on the left, which this model does not take ({why}); valid: right padding "
                              "(pad(..., side='right')) or prompts of one length")
        return m

    def _forward(self, tokens, mask=None):
        if mask is None:
            return self.adapter.forward(self.model, tokens)
        return self.adapter.forward(self.model, tokens, attention_mask=mask)

    def run_with_hooks(self, tokens, hooks=(), positions=None, attention_mask=None):
        """Logits with ``hooks`` ([(name, fn), ...], one pair, or {name: fn}; a name may be a filter
        function) installed; ``attention_mask``: [B, T] 1 for real tokens, 0 for padding (HF and zoo models;
        `pad`). Hook functions see every position (one that patches position t indexes it); ``positions=``,
        which limits what a *cache* keeps (`run_with_cache`), is refused here, where nothing is cached."""
        if positions is not None:
            raise N.HookError(f"run_with_hooks(positions={positions!r}): positions= limits what a cache keeps and "
                              "hook functions see every position; valid: positions=None (index the position you "
                              "patch in the hook function), or run_with_cache(..., positions=...) to cache a few")
        tokens = self.to_tokens(tokens)
        mask = self._mask(tokens, attention_mask)
        with HookSession(self, hooks, positions=positions_list(positions, tokens.shape[1]), key_mask=mask):
            return self._forward(tokens, mask)

    def run_with_cache(self, tokens, names=None, positions=None, device=None, hooks=(), state_dtype=None,
                       heads=False, backward=None, attention_mask=None):
        """Returns (logits, Cache). names: a hook name, a list of them or a filter function (default: every
        ``resid_pre`` / ``resid_post``); positions: keep only these token positions in the cache (states are
        computed only there; negative ones count from the end; hook functions still see every position); device:
        move cached tensors there; state_dtype: the dtype of cached ``rec.state`` tensors (None = the working
        dtype, float32, float64 for a float64 model, exact; bfloat16 / float16 halve their bytes: the states are
        computed in float32 and rounded once where they are written). Hooks on ``rec.state`` still see the working
        dtype (`hooks.state_dtypes`). ``heads``: also cache what per-head results
        need (every ``attn.head_out`` / ``rec.readout`` and the out-projection inputs,
        `Cache.stack_head_results`). ``backward``: a function of the logits returning a scalar metric;
        ``cache.grad`` then holds d metric / d activation at the same names. The cache knows this model
        (``cache.model``) for its analysis methods. ``attention_mask``: [B, T], 1 for real tokens and 0 for
        padding (HF and zoo models; `pad` makes both): pads write nothing into recurrent states, patterns give
        them weight 0, positions count real tokens; the cache keeps the mask (``cache.attention_mask``, bool) so
        that results can leave pads out."""
        if backward is not None and not callable(backward):
            raise N.HookError(f"backward must be a function of the logits returning a scalar, got {backward!r}")
        tokens = self.to_tokens(tokens)
        mask = self._mask(tokens, attention_mask)
        default = [n for n in self.hook_names if n.endswith(("resid_pre", "resid_post"))]
        names = N.select(names, self.hook_names, default)
        if heads:
            names += [n for n in self._head_names() if n not in names]
        pos = positions_list(positions, tokens.shape[1])
        cache = Cache(positions=pos, model=self)
        cache.attention_mask = mask
        with HookSession(self, hooks, cache_names=names, positions=pos, cache=cache, cache_device=_device(device),
                         state_dtype=state_dtype, heads=heads, grad_names=() if backward is None else names,
                         key_mask=mask) as s, \
                (nullcontext() if backward is None else torch.enable_grad()):
            logits = self._forward(tokens, mask)
            if backward is not None:
                cache.grad = Cache(s.gradients(backward(logits)), positions=pos, model=self)
        return logits, cache

    def generate(self, tokens, max_new_tokens: int = 16, **kw):
        """Greedy or sampled continuation of ``tokens`` under hook functions and step hooks, with an
        optional capture of the generated sequence; returns a `hooks.generate.Generation`. Options and
        the two decode paths (the model's own cache; recomputation under hooks): `hooks.generate`."""
        from hooks.generate import generate
        return generate(self, tokens, max_new_tokens, **kw)

    def _head_names(self) -> list[str]:
        return [f"blocks.{L.index}.{k}" for L in self.layers
                for k, m in (("attn.head_out", L.attn), ("rec.readout", L.rec)) if m is not None]

    @contextmanager
    def hooks(self, hooks=(), cache_names=(), positions=None, cache=None, cache_device=None, state_dtype=None):
        """Context manager: install ``hooks`` [(name, fn), ...] and caching of ``cache_names``
        into ``cache``; remove everything on exit. ``positions``: the positions the cache keeps (hook functions
        see every position). ``state_dtype``: dtype of the *cached*
        ``rec.state`` tensors (see `run_with_cache`); a hook function on ``rec.state`` always
        receives (and may return) states in the working dtype (float32; float64 models: float64), whatever this
        is."""
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

    def block_outputs(self, tokens, attention_mask=None) -> list:
        """Run ``tokens`` once (``attention_mask``: of a padded batch) and return every block's raw output
        object (for `start_at`)."""
        outs, handles = [None] * self.n_layers, []
        try:
            for L in self.layers:
                handles.append(L.block.register_forward_hook(
                    lambda m, a, out, i=L.index: outs.__setitem__(i, out)))
            self(tokens, attention_mask)
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


def _capturing(t: torch.Tensor) -> bool:
    """Whether ``t`` lives on a CUDA device whose current stream is being captured into a CUDA graph."""
    return t.is_cuda and torch.cuda.is_current_stream_capturing()
