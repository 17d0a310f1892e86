"""Chains of thought the model writes itself: closed-loop (greedy) accuracy and sampled chains for majority voting.

A chain-of-thought prompt of a task (``state_recall`` with ``cot=True``) has fixed tokens (the program)
and derived ones (the value after each ``is`` marker, then the final answer). Here every derived token
is the model's own choice, never the gold value: after each marker the chosen token is written into the
sequence before the model reads on, and the final answer is chosen at the last answer position. Choices
are the argmax (closed loop) or nucleus samples at a temperature (`hooks.generate.choose`, one seeded
CPU generator, so a seed gives the same chains on CPU and GPU), which `interp.voting.chain_vote_rows`
votes over. Only the derived positions are run (one forward per marker and one for the answer), so a
chain costs a few prefills, not one decode step per token. ``hooks.generate(..., force=template)`` gives
the same greedy chains through the general decoder (tests/test_generate.py checks that they agree).
"""
from __future__ import annotations

import math

import torch

from hooks.generate import choose
from interp import InterpError
from interp.checks import check_count
from interp.tasks.vocab import VOCAB

IS = VOCAB.id("is")
MIN_TEMPERATURE = 1e-6   # colder sampling is the argmax in effect, and far colder overflows logits / temperature


def check_sampling(temperature, top_p, names=("temperature", "top_p")):
    """An InterpError naming a temperature that is not a finite number >= `MIN_TEMPERATURE` or a top_p not in
    (0, 1] (`hooks.generate.check_sampling`'s rule, plus the lower bound that keeps softmax(logits / temperature)
    finite); ``names``: what the message calls them (the CLI's flags)."""
    from hooks.generate import check_sampling as hooks_check
    from hooks.names import HookError
    valid = (f"finite numbers >= {MIN_TEMPERATURE:g} (colder is greedy in effect: sample=False, --samples 1)",
             "numbers in (0, 1]")
    for i, v in enumerate((temperature, top_p)):
        try:
            hooks_check(*[v if j == i else 1.0 for j in range(2)])     # a number: > 0, top_p <= 1
            ok = not isinstance(v, bool) and math.isfinite(v) and (i == 1 or v >= MIN_TEMPERATURE)
        except HookError:
            ok = False
        if not ok:
            raise InterpError(f"{names[i]} {v!r} is out of range; valid: {valid[i]}")


def check_vocab(model, tokens, what="the task's tokens"):
    """An InterpError where ``tokens`` hold an id the model does not embed (a model with a smaller vocabulary than
    the task vocabulary), naming the id and the model's range; models whose embedding size is unknown pass."""
    import hooks
    from hooks.names import HookError
    try:
        V = hooks.wrap(model).vocab_size
    except (TypeError, HookError):   # not a model hooks can wrap (a stand-in module): nothing to check against
        V = None
    hi = int(tokens.max()) if tokens.numel() else 0
    if V and hi >= V:
        raise InterpError(f"token id {hi} of {what} out of range 0..{V - 1} (the model's vocabulary has {V} ids); "
                          f"valid: a model of the task vocabulary ({len(VOCAB)} ids, e.g. a zoo model)")


def _one_layout(batch, marker) -> tuple[list, int]:
    """(marker positions, answer position) shared by every row of ``batch``, else an InterpError."""
    at, ap = batch.tokens == marker, batch.answer_pos[:, 0]
    mask = getattr(batch, "attention_mask", None)
    padded = torch.zeros_like(ap, dtype=torch.bool) if mask is None else ~mask.bool().all(1)
    moved = (at != at[:1]).any(1) | (ap != ap[0])
    for bad, what in ((padded, "is padded (attention_mask)"),
                      (moved, "has its markers or answer elsewhere than row 0")):
        if bool(bad.any()):
            raise InterpError(f"batch row {int(bad.nonzero()[0])} {what}: sample_chains needs one layout; valid: a "
                              "batch of one layout (one T.generate call with fixed knobs; a padded mix of layouts "
                              "one layout at a time)")
    return at[0].nonzero().flatten().tolist(), int(ap[0])


@torch.no_grad()
def sample_chains(model, batch, k: int = 1, sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                  seed: int = 0, chunk: int = 256, marker: int = IS) -> dict:
    """``k`` chains per example of ``batch`` (a task batch of one layout: every row has its markers at the
    same positions), each written by the model as the module docstring says. Returns ``answers`` [n, k]
    (the final answers chosen), ``right`` [n, k] bool (the answer is the gold one), ``steps_right`` [n, k]
    (fraction of the chain's intermediate values equal to the gold ones; NaN without markers) and
    ``tokens`` [n, k, T] (the written sequences up to the answer). A batch of several layouts, a token the
    model does not embed, k < 1 or (``sample``) a bad temperature / top_p raise an InterpError."""
    check_count(k, "k")
    check_count(chunk, "chunk")
    if sample:
        check_sampling(temperature, top_p)
    pos, ap = _one_layout(batch, marker)
    check_vocab(model, batch.tokens)
    toks = batch.tokens.to(model.device)
    n = toks.shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    rows = toks.repeat_interleave(k, 0)                          # example i's chains are rows i*k .. i*k+k-1
    answers, written = [], []
    for s in range(0, rows.shape[0], chunk):
        t = rows[s:s + chunk, :ap + 1].clone()
        for p in pos:
            t[:, p + 1] = choose(model(t[:, :p + 1])[:, p].float(), sample, temperature, top_p, gen)
        answers.append(choose(model(t)[:, ap].float(), sample, temperature, top_p, gen).cpu())
        written.append(t.cpu())
    ans, written = torch.cat(answers).view(n, k), torch.cat(written).view(n, k, -1)
    gold = batch.answers[:, :1].cpu()
    if pos:
        idx = [p + 1 for p in pos]
        steps = (written[:, :, idx] == batch.tokens[:, None, idx].cpu()).float().mean(-1)
    else:
        steps = torch.full((n, k), float("nan"))
    return dict(answers=ans, right=ans == gold, steps_right=steps, tokens=written)


def closed_loop(model, batch, chunk: int = 256, marker: int = IS) -> tuple[float, float]:
    """Cot accuracy with the model's own intermediate values (greedy chains, `sample_chains`). Returns
    (final-answer accuracy, fraction of intermediate values right; NaN without markers)."""
    c = sample_chains(model, batch, 1, chunk=chunk, marker=marker)
    return c["right"].float().mean().item(), c["steps_right"].mean().item()
