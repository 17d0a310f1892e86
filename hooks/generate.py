"""Generation under hooks: greedy or sampled continuations, hook functions on every step, step hooks on
the newest token that stay in effect, and a capture of the whole generated sequence.

    g = hm.generate(tokens, max_new_tokens=20)                          # greedy
    g = hm.generate(tokens, 20, sample=True, temperature=0.8, top_p=0.95, seed=1)
    g = hm.generate(tokens, 20, hooks=[("blocks.3.rec.state", fn)],     # on every position, every step
                    step_hooks=[("blocks.3.rec.state", step_fn)],       # on the newest token only
                    cache_names=["blocks.3.rec.state"])                 # capture of the final sequence
    g.tokens, g.new_tokens, g.scores, g.cache, g.text

Two decode paths choose the same tokens (tests/test_generate.py, tests/test_generate_cached.py):

* **the model's own cache** (``use_cache="auto"``, the default, or ``True``): an HF model with ``generate``
  runs ``model.generate`` (its KV / recurrent cache); our token chooser is its last logits processor, so
  greedy and sampled choices are made by the same code, from the same random stream, as on the other path.
  Without hooks that is all; with hook functions, step hooks or a capture it runs inside one hook session:
  the prompt's forward sees the whole prompt, each decode step one token (`hooks.generate_cached` says what
  the hooks see there and which calls it refuses: ``"auto"`` then recomputes, ``True`` raises why);
* **recomputation** (``use_cache=False``, or where the cached path refuses, e.g. the zoo, which has no decode
  cache): every step runs the hooked model over the sequence so far and reads the last position.

Hook functions (``hooks=``) are called as in `run_with_hooks`, on every position, at every step, so a
patch at a prompt position acts on the generation exactly as it acts on a prefill of the same tokens.
Step hooks (``step_hooks=``) are called as ``fn(x_new, name, step)`` on the positions a step adds:
step 0 is the prompt (``x[:, :T0]``), step s >= 1 the token chosen at step s - 1 (position T0 + s - 1),
and, with a capture, the last call covers the last generated token. A returned tensor replaces those
positions and the edit is kept: later steps see the edited values at those positions, as a decode loop
keeps an edited state or residual in its cache (a ``rec.state`` edit continues the recurrence from the
edited state, and a later step hook on ``rec.state`` sees the state continued from it: on recomputation
`_continue` computes it first; on the cached path the edit is in the model's cache). The models are causal, so
activations at position p do not depend on later tokens: the capture holds, at every position, what the
step that processed it computed (recomputation: one pass over the final sequence with the same hook
functions and the kept edits; cached path: recorded while decoding, plus one one-token forward of the
last generated token).

Sampling: softmax(logits / temperature) restricted to the top-p nucleus (the smallest set of most
likely tokens whose probability reaches top_p), drawn with a CPU ``torch.Generator`` seeded by
``seed`` (the same draws on CPU and GPU). ``eos_token_id``: rows that produce it are padded with it
from then on, and generation stops when every row has; None (default) never stops early (the model's
own generation config is not consulted, so both paths behave the same).
"""
from __future__ import annotations

from dataclasses import dataclass

import math

import torch

from hooks import names as N
from hooks.session import check_return, hook_pairs


@dataclass
class Generation:
    """What `generate` returns: ``tokens`` [B, T0 + n] (prompt and continuation), ``prompt_len`` T0,
    ``scores`` [B, n, vocab] float32 (the logits each new token was chosen from, before temperature),
    ``cache`` (a `hooks.Cache` of the final sequence, or None), ``path`` ('cache' or 'recompute')."""
    tokens: torch.Tensor
    prompt_len: int
    scores: torch.Tensor
    cache: object = None
    path: str = "recompute"
    tokenizer: object = None

    @property
    def new_tokens(self) -> torch.Tensor:
        return self.tokens[:, self.prompt_len:]

    @property
    def text(self) -> list[str] | None:
        """The continuations decoded by the model's tokenizer (None without one)."""
        tok = self.tokenizer
        if tok is None or not hasattr(tok, "decode"):
            return None
        return [tok.decode(row.tolist()) for row in self.new_tokens.cpu()]


def check_sampling(temperature: float, top_p: float):
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise N.HookError(f"temperature must be a finite number > 0, got {temperature!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise N.HookError(f"top_p must be in (0, 1], got {top_p!r}")


def choose(logits: torch.Tensor, sample: bool, temperature: float = 1.0, top_p: float = 1.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """The next token per row of ``logits`` [B, V]: the argmax, or a nucleus sample (module docstring)."""
    if not sample:
        return logits.argmax(-1)
    z = logits.detach().double().cpu()
    p = torch.softmax((z - z.amax(-1, keepdim=True)) / temperature, -1)   # (shifted: a tiny temperature is argmax)
    if top_p < 1:
        srt, idx = p.sort(-1, descending=True)
        drop = (srt.cumsum(-1) - srt) >= top_p       # tokens after the nucleus is already full
        p = p.scatter(-1, idx, srt.masked_fill(drop, 0.0))
    return torch.multinomial(p, 1, generator=generator)[:, 0].to(logits.device)


class _Steps:
    """Step hooks and the edits they made: one hook function per name that replays the kept edits and
    calls the step hooks on the positions of the current step."""

    def __init__(self, hm, step_hooks, prompt_len: int):
        self.fns = {}
        for name, fn in hook_pairs(step_hooks, hm.hook_names):
            self.fns.setdefault(name, []).append(fn)
        N.check(list(self.fns), hm.hook_names)
        bad = [n for n in self.fns if n.endswith("pattern")]
        if bad:
            raise N.HookError(f"step hooks cannot be put on {', '.join(bad)}: patterns are [B, H, T, T] and "
                              "cannot be changed; hook attn.q/k/v, rec.* inputs, rec.state or the residual stream")
        self.edits = {}  # name -> {position: tensor [B, ...]}
        self.T0, self.step = prompt_len, 0
        self.cached, self.decode = False, None   # cached decoding: `hooks.generate_cached.Decode`
        self.continued, self.silent = {}, False   # recomputation: `_continue`

    def span(self):
        return (0, self.T0) if self.step == 0 else (self.T0 + self.step - 1, self.T0 + self.step)

    def _cached_span(self, name, x):
        """On the cached path a forward holds only the positions its step adds (the edits are in the cache)."""
        from hooks.generate_cached import CacheUnsupported
        d = self.decode
        self.step = d.step
        if x.shape[1] != d.new:
            raise CacheUnsupported(f"step hook on '{name}': {x.shape[1]} positions at step {d.step}, expected "
                                   f"{d.new}; generate with use_cache=False")
        return 0, x.shape[1]

    def hooks(self) -> list:
        return [(name, self._fn(name)) for name in sorted(set(self.fns) | set(self.edits))]

    def _fn(self, name):
        def fn(x, hp):
            out, kept = x, ({} if self.cached else self.edits.get(name, {}))
            if kept:
                out = x.clone()
                for p, v in kept.items():
                    out[:, p] = v
            lo, hi = self._cached_span(name, x) if self.cached else self.span()
            if name in self.fns and hi <= x.shape[1] and not self.silent:
                old = self.continued.get(name, out[:, lo:hi])
                new = old.clone()   # an in-place edit by a step hook is seen (and kept) like a returned one
                for f in self.fns[name]:
                    r = f(new, hp, self.step)
                    if r is not None:
                        check_return(name, r, new, "step hook")
                        new = r
                if not torch.equal(new, old):
                    out = out.clone() if out is x else out
                    out[:, lo:hi] = new
                    if self.cached:
                        self.decode.changed.add(name)
                        return out
                    for j in range(hi - lo):
                        self.edits.setdefault(name, {})[lo + j] = new[:, j].detach().clone()
            return None if out is x else out
        return fn


def _check_force(force, tokens, n):
    if force is None:
        return None
    force = torch.as_tensor(force)
    if force.dtype not in (torch.long, torch.int32) or tuple(force.shape) != (tokens.shape[0], n):
        raise N.HookError(f"force must be an integer tensor of shape ({tokens.shape[0]}, {n}) (batch, "
                          f"max_new_tokens; -1 = choose), got {force.dtype} {tuple(force.shape)}")
    return force.long().cpu()


# model types whose own one-token step is wrong for batches of several rows (transformers 5.25's rwkv
# broadcasts its token-shift state across rows): they decode by recomputation when B > 1
_OWN_STEP_ONE_ROW = ("rwkv",)


def _own_cache_ok(hm, batch: int) -> bool:
    """Whether the model decodes with its own cache through transformers' ``generate`` (HF and fla
    models; not the zoo, mamba-ssm's own generation mixin, or a TransformerLens / nnsight wrapper)."""
    try:
        from transformers import GenerationMixin
    except ImportError:  # pragma: no cover
        return False
    if batch > 1 and getattr(getattr(hm.model, "config", None), "model_type", None) in _OWN_STEP_ONE_ROW:
        return False
    return isinstance(hm.model, GenerationMixin) and hm.adapter.family != "interop"


def _hf_generate(hm, tokens, n, pick, eos, mask=None):
    """``model.generate`` with the model's own cache; ``pick(scores) -> tokens`` chooses every token."""
    from transformers import LogitsProcessor, LogitsProcessorList

    scores = []

    class Chooser(LogitsProcessor):
        def __call__(self, input_ids, s):
            scores.append(s.float().clone())
            out = torch.full_like(s, float("-inf"))
            return out.scatter_(1, pick(s.float(), len(scores) - 1)[:, None], 0.0)

    # every option that could add a logits processor or stop early is set here: generate fills what is not
    # given from the model's generation config (a checkpoint's repetition penalty, eos, ...)
    opts = dict(max_new_tokens=n, min_new_tokens=0, do_sample=False, num_beams=1, repetition_penalty=1.0,
                no_repeat_ngram_size=0, bad_words_ids=None, suppress_tokens=None, begin_suppress_tokens=None,
                forced_bos_token_id=None, forced_eos_token_id=None, eos_token_id=eos,
                pad_token_id=0 if eos is None else eos)
    with torch.no_grad():
        out = hm.model.generate(input_ids=tokens, attention_mask=torch.ones_like(tokens) if mask is None else mask.long(),
                                logits_processor=LogitsProcessorList([Chooser()]), **opts)
    return out, torch.stack(scores, 1)


def _grown(mask, seq):
    """A prompt's padding mask extended over the tokens generated after it (all real), or None."""
    if mask is None:
        return None
    return torch.cat([mask, torch.ones_like(seq[:, mask.shape[1]:], dtype=torch.bool)], 1)


def _continue(hm, seq, hooks, steps, mask):
    """Step hooks on ``rec.state`` see the state the newest token leaves in the recurrence continued from the
    kept edits, as a decode loop (and the cached path) shows it, not the state of the unedited recurrence (what a
    forward shows hook functions there): where an earlier step edited that state, one capture pass with the
    kept edits (and no step hook calls) gives it first."""
    steps.continued = {}
    names = [n for n in steps.fns if n.endswith("rec.state") and steps.edits.get(n)]
    lo, hi = steps.span()
    if not names or hi > seq.shape[1]:
        return
    steps.silent = True
    try:
        with torch.no_grad():
            _, c = hm.run_with_cache(seq, names, hooks=list(hooks) + steps.hooks(), attention_mask=_grown(mask, seq))
    finally:
        steps.silent = False
    steps.continued = {n: c[n][:, lo:hi] for n in names}


def _recompute(hm, tokens, n, pick, eos, hooks, steps, mask=None):
    seq, scores = tokens, []
    done = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    for s in range(n):
        steps.step = s
        _continue(hm, seq, hooks, steps, mask)
        with torch.no_grad():
            logits = hm.run_with_hooks(seq, list(hooks) + steps.hooks(), attention_mask=_grown(mask, seq))
        last = logits[:, -1].float()
        scores.append(last)
        nxt = pick(last, s)
        if eos is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            done |= nxt == eos
        seq = torch.cat([seq, nxt[:, None].to(seq.dtype)], 1)
        if eos is not None and bool(done.all()):
            break
    return seq, torch.stack(scores, 1)


def _cached_or_none(kw, steps, cache_names, positions, state_dtype, use_cache, gen):
    """(tokens, scores, capture) of the cached decode under hooks, or (None, None, None) where it cannot give
    what recomputation gives (``use_cache="auto"``; ``True`` raises the reason instead)."""
    from hooks import generate_cached as C
    hm = kw["hm"]
    why = C.reason(hm, kw["hooks"], list(steps.fns), cache_names, kw["tokens"].shape[0], _own_cache_ok)
    if why is None:
        state = gen.get_state()
        try:
            seq, scores, d = C.decode(steps=steps, cache_names=cache_names, state_dtype=state_dtype, **kw)
            cache = None if d is None else d.capture(hm, seq.shape[1], positions, _grown(kw["mask"], seq))
            return seq, scores, cache
        except C.CacheUnsupported as e:
            why = str(e)
            gen.set_state(state)      # the recomputation draws the same random numbers from the start
    if use_cache is True:
        raise N.HookError(f"use_cache=True: cannot decode with the model's cache here: {why}")
    return None, None, None


def generate(hm, tokens, max_new_tokens: int = 16, *, sample: bool = False, temperature: float = 1.0,
             top_p: float = 1.0, seed: int = 0, hooks=(), step_hooks=(), cache_names=None, positions=None,
             state_dtype=None, eos_token_id: int | None = None, force=None, attention_mask=None,
             use_cache: bool | str = "auto") -> Generation:
    """Continue ``tokens`` (``[B, T]`` ids or prompts of one token length) by ``max_new_tokens`` tokens
    (module docstring). ``force``: ``[B, max_new_tokens]`` token ids that step s must take where
    ``force[:, s] >= 0`` (a template whose -1 entries are chosen: e.g. a task's fixed tokens around sampled
    chain-of-thought values; the scores are still those of the model). ``attention_mask``: left-padded
    prompts of different lengths (HF and zoo models; `HookedModel.pad`); the generated tokens are real ones.
    ``cache_names`` / ``positions`` / ``state_dtype``: a capture of the final sequence as in `run_with_cache`.
    ``use_cache``: "auto" (the model's cache where it gives what recomputation gives, else recomputation),
    True (the model's cache or an error saying why not), False (recomputation)."""
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise N.HookError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    check_sampling(temperature, top_p)
    if use_cache not in (True, False, "auto"):
        raise N.HookError(f"use_cache must be 'auto', True or False, got {use_cache!r}")
    tokens = hm.to_tokens(tokens)
    mask = hm._mask(tokens, attention_mask, generating=True)
    if mask is not None and not bool(mask[:, -1].all()):
        raise N.HookError("generation continues the last token of every row: pad prompts on the left (hm.pad(..., "
                          "side='left'))")
    V = hm.vocab_size
    if eos_token_id is not None and (not isinstance(eos_token_id, int) or not 0 <= eos_token_id < (V or 1 << 62)):
        raise N.HookError(f"eos_token_id must be a token id in 0..{(V or 0) - 1}, got {eos_token_id!r}")
    gen = torch.Generator().manual_seed(int(seed))

    force = _check_force(force, tokens, max_new_tokens)

    def pick(logits, step):
        nxt = choose(logits, sample, temperature, top_p, gen)
        if force is not None:
            f = force[:, step].to(nxt.device)
            nxt = torch.where(f >= 0, f, nxt)
        return nxt

    hooks = hook_pairs(hooks, hm.hook_names)
    N.check([n for n, _ in hooks], hm.hook_names)
    steps = _Steps(hm, step_hooks, tokens.shape[1])
    if cache_names is not None:
        cache_names = N.select(cache_names, hm.hook_names, [])
    kw = dict(hm=hm, tokens=tokens, n=max_new_tokens, pick=pick, eos=eos_token_id, mask=mask, hooks=hooks)
    seq = None
    if use_cache is not False and not hooks and not steps.fns and cache_names is None \
            and _own_cache_ok(hm, tokens.shape[0]):
        seq, scores = _hf_generate(hm, tokens, max_new_tokens, pick, eos_token_id, mask)
        return Generation(tokens=seq, prompt_len=tokens.shape[1], scores=scores, path="cache", tokenizer=hm.tokenizer)
    if use_cache is not False:
        seq, scores, cache = _cached_or_none(kw, steps, cache_names, positions, state_dtype, use_cache, gen)
        path = "cache"
    if seq is None:
        steps = _Steps(hm, step_hooks, tokens.shape[1])   # a fresh one (an abandoned cached attempt used the other)
        seq, scores = _recompute(hm, tokens, max_new_tokens, pick, eos_token_id, hooks, steps, mask)
        path = "recompute"
        cache = None
        if cache_names is not None:
            steps.step = seq.shape[1] - tokens.shape[1]   # the capture pass adds the last generated token
            _continue(hm, seq, hooks, steps, mask)
            with torch.no_grad():
                _, cache = hm.run_with_cache(seq, cache_names, positions=positions, hooks=list(hooks) + steps.hooks(),
                                             state_dtype=state_dtype, attention_mask=_grown(mask, seq))
    return Generation(tokens=seq, prompt_len=tokens.shape[1], scores=scores, cache=cache, path=path,
                      tokenizer=hm.tokenizer)
