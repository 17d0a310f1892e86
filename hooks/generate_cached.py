"""Cached decoding under hooks: `hooks.generate` with hook functions, step hooks or a capture on an HF model's
own cache (prefill the prompt once under the hooks, then one forward of one token per step).

The model's ``generate`` runs inside one `HookSession` (our chooser is its last logits processor, our stopping
rule its stopping criterion), so every family's own cache handling (KV caches, sliding windows, GDN / Mamba /
short-conv states, position ids from a padding mask) is the model's. What the hooks see at a decode step:

* hook functions on a name see **the sequence so far** ``[B, T0 + s, ...]``, as on the recomputation path:
  the values at earlier positions are the ones kept from the forwards that computed them (before any hook),
  the newest one is this step's; only their output at the new position is used (the earlier positions' effect
  is already in the cache). Names the layer hands over whole at a decode step (``attn.k`` / ``attn.v``, read
  back from the KV cache) are passed as they come. So a hook function whose output at position p depends only
  on its input at positions <= p (position-wise edits, patches at fixed prompt positions) acts exactly as on
  the recomputation path; one that reads the length (``x[:, -1]``, whole-sequence means) does not: use
  ``use_cache=False`` there;
* step hooks see the positions the step adds (the prompt at step 0, the newest token after), and their edits
  stay in the model's cache (a ``rec.state`` edit is the state the next step continues from);
* a capture is recorded during the decode: every forward's values at its new positions, concatenated (one
  more one-token forward processes the last generated token, whose values no step computed otherwise).

What this path refuses (`reason`: ``use_cache="auto"`` then recomputes, ``use_cache=True`` raises): models
without an HF decode cache (the zoo, TransformerLens / nnsight wrappers, mamba-ssm; rwkv with several rows,
whose own one-token step mixes rows), hook functions on
``rec.write_k`` / ``rec.write_v`` and on patterns, patterns in the capture, step hooks on ``attn.k`` /
``attn.v`` (the KV cache keeps the keys before the hook), and rec.* names on layers whose adapter cannot
decode under rec hooks (zamba v1, fla, mamba-ssm). At run time, a hook function on
``rec.state`` that changes a decode position's state after an earlier change of that name (the recomputation
path shows it the unedited recurrence's states, a decode step the edited one's), a hooked name that holds
neither the new positions nor the whole sequence at a decode step (hook functions on ``attn.k`` / ``attn.v`` of
a sliding-window cache) and an adapter's NotImplementedError raise `CacheUnsupported`, which ``"auto"``
answers by recomputing from the start (hook functions may then have seen the prompt twice).

Step hooks on ``rec.write_k`` / ``rec.write_v`` of delta-rule layers (GDN, KDA) after an earlier write edit:
here they see the write computed from the edited past (a decode loop's); recomputation shows the write of
the unedited past (its step hooks on ``rec.state`` see the continued state, `hooks.generate._continue`).
"""
from __future__ import annotations

import torch

from hooks import names as N
from hooks.cache import Cache
from hooks.session import HookSession, check_return, positions_list

# adapters / HF model types whose decode step under rec.* hooks raises NotImplementedError (they need the whole
# sequence in one forward)
_NO_REC_DECODE = ("fla", "mamba_ssm", "zamba")


class CacheUnsupported(N.HookError):
    """The cached decode path cannot give what the recomputation path gives for this call."""


def reason(hm, hooks, step_names, cache_names, batch: int, own_cache_ok) -> str | None:
    """Why generation with these hooks cannot run on the model's own cache (None: it can)."""
    if not own_cache_ok(hm, batch):
        return (f"{hm.adapter.family}: this model has no decode cache hooks can use (cached decoding under hooks "
                "needs an HF / fla model decoded by transformers' generate; the zoo, TransformerLens / nnsight "
                "wrappers and mamba-ssm recompute)")
    fn_names = {n for n, _ in hooks}
    bad = sorted(n for n in fn_names if n.endswith(("rec.write_k", "rec.write_v", "pattern")))
    if bad:
        return (f"hook functions on {', '.join(bad)}: the recomputation path shows them every position of the "
                "unedited recurrence at every step, which a decode step does not have")
    bad = sorted(n for n in cache_names or () if n.endswith("pattern"))
    if bad:
        return f"capturing {', '.join(bad)}: a decode step computes one row of a pattern"
    bad = sorted(n for n in step_names if n.endswith(("attn.k", "attn.v")))
    if bad:
        return (f"step hooks on {', '.join(bad)}: the KV cache keeps the keys / values from before the hook, so "
                "the edit would not reach later steps")
    if {hm.adapter.family, getattr(getattr(hm.model, "config", None), "model_type", None)} & set(_NO_REC_DECODE):
        rec = sorted(n for n in fn_names | set(step_names) | set(cache_names or ()) if N.parse(n)
                     and N.parse(n)[1] == "rec")
        if rec:
            return (f"{hm.adapter.family}: rec.* names ({', '.join(rec[:3])}) on layers whose decode step cannot "
                    "run under rec hooks (they need the whole sequence in one forward)")
    return None


class Decode:
    """Where a cached decode stands: ``step`` (0: the prompt's forward; s: the forward of the token chosen at
    step s - 1), the pre-hook values of hooked names so far, the capture so far, and the names a hook
    function has changed."""

    def __init__(self, prompt_len: int):
        self.T0, self.step = prompt_len, 0
        self.hist, self.pieces, self.changed = {}, {}, set()

    @property
    def total(self) -> int:
        """Tokens in the sequence after this step's forward."""
        return self.T0 + self.step

    @property
    def new(self) -> int:
        """Positions this step's forward adds."""
        return self.T0 if self.step == 0 else 1

    def sequence_fn(self, name, fns):
        """One hook function for ``name`` that runs ``fns`` on the sequence so far (module docstring)."""
        def fn(x, hp):
            T, new = x.shape[1], self.new
            if T == self.total and self.step:      # handed over whole (keys / values read from the cache)
                full = orig = x
            elif T == new:
                prev = self.hist.get(name)
                full = x if prev is None else torch.cat([prev, x], 1)
                self.hist[name] = full.detach().clone()
                orig = self.hist[name][:, -T:]
            else:
                raise CacheUnsupported(f"'{name}' has {T} positions at decode step {self.step} (expected {new} or "
                                       f"{self.total}); generate with use_cache=False")
            out = full
            for f in fns:
                r = f(out, hp)
                if r is not None:
                    check_return(name, r, out)
                    out = r
            res = out if full is x else out[:, -T:]
            if name.endswith("rec.state") and not torch.equal(res, orig):
                self.note_change(name, decode=self.step > 0)
            return None if res is x else res
        return fn

    def note_change(self, name, decode: bool):
        """Record a change of ``name``; a decode-position change after an earlier one cannot match the
        recomputation path (module docstring)."""
        if decode and name in self.changed:
            raise CacheUnsupported(f"a hook function changes '{name}' at decode step {self.step} after an earlier "
                                   "change: recomputation shows it the unedited recurrence's state there, a decode "
                                   "step the edited one's; use step_hooks for decode-time state edits, or "
                                   "use_cache=False")
        self.changed.add(name)

    def collect(self, store: dict):
        """Move this forward's captured values (its new positions) into the capture."""
        new = self.new
        for name, v in store.items():
            self.pieces.setdefault(name, []).append(v if v.shape[1] == new else v[:, -new:])
        store.clear()

    def capture(self, hm, T, positions, mask) -> Cache:
        """The capture of the whole sequence of ``T`` tokens (``positions``: kept ones, as in `run_with_cache`)."""
        out = {k: torch.cat(v, 1) for k, v in self.pieces.items()}
        pos = positions_list(positions, T)
        if pos is not None:
            idx = torch.as_tensor(pos, dtype=torch.long)
            out = {k: v.index_select(1, idx.to(v.device)) for k, v in out.items()}
        cache = Cache(out, positions=pos, model=hm)
        cache.attention_mask = mask
        return cache


def decode(hm, tokens, n, pick, eos, mask, hooks, steps, cache_names, state_dtype):
    """Tokens [B, T0 + k], scores [B, k, V] and the `Decode` (its capture: `Decode.capture`; None without
    ``cache_names``) of a cached decode under ``hooks`` (name, fn) and ``steps`` (`hooks.generate._Steps`,
    switched to cached mode); ``pick(logits, step)`` chooses."""
    d, grouped = Decode(tokens.shape[1]), {}
    for name, fn in hooks:
        grouped.setdefault(name, []).append(fn)
    session_hooks = [(name, d.sequence_fn(name, fns)) for name, fns in grouped.items()]
    steps.cached, steps.decode = True, d
    store = {}
    capture = cache_names is not None
    with HookSession(hm, session_hooks + steps.hooks(), cache_names=list(cache_names or ()), cache=store,
                     state_dtype=state_dtype):
        seq, scores = _run_generate(hm, tokens, n, pick, eos, mask, d, store, capture)
    return seq, scores, d if capture else None


def _run_generate(hm, tokens, n, pick, eos, mask, d, store, capture):
    """``model.generate`` with our chooser, eos rule and stopping rule; with ``capture`` one more forward
    processes the last chosen token (its token is dropped)."""
    from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

    B, scores = tokens.shape[0], []
    done = torch.zeros(B, dtype=torch.bool, device=tokens.device)
    st = {"last": n}             # the number of real steps (fewer when every row has produced eos)

    class Chooser(LogitsProcessor):
        def __call__(self, input_ids, s):
            d.collect(store)
            k = d.step
            d.step += 1
            if k < st["last"]:
                scores.append(s.float().clone())
                nxt = pick(s.float(), k)
                if eos is not None:
                    nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
                    done.copy_(done | (nxt == eos))
                    if bool(done.all()):
                        st["last"] = k + 1
            else:                # the forward of the last token, for the capture only
                nxt = torch.zeros(B, dtype=torch.long, device=s.device)
            return torch.full_like(s, float("-inf")).scatter_(1, nxt.to(s.device)[:, None], 0.0)

    class Stop(StoppingCriteria):
        def __call__(self, input_ids, s, **kw):
            return torch.full((B,), d.step >= st["last"] + capture, dtype=torch.bool, device=input_ids.device)

    opts = dict(max_new_tokens=n + capture, min_new_tokens=0, do_sample=False, num_beams=1, repetition_penalty=1.0,
                no_repeat_ngram_size=0, bad_words_ids=None, suppress_tokens=None, begin_suppress_tokens=None,
                forced_bos_token_id=None, forced_eos_token_id=None, eos_token_id=None, pad_token_id=0)
    am = torch.ones_like(tokens) if mask is None else mask.long()
    with torch.no_grad():
        try:
            out = hm.model.generate(input_ids=tokens, attention_mask=am, use_cache=True,
                                    logits_processor=LogitsProcessorList([Chooser()]),
                                    stopping_criteria=StoppingCriteriaList([Stop()]), **opts)
        except NotImplementedError as e:
            raise CacheUnsupported(f"decode step {d.step}: {e}") from e
    k = st["last"]
    return out[:, :tokens.shape[1] + k], torch.stack(scores, 1)
