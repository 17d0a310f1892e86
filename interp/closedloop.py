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

import torch

from hooks.generate import choose
from interp.tasks.vocab import VOCAB

IS = VOCAB.id("is")


@torch.no_grad()
def sample_chains(model, batch, k: int = 1, sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                  seed: int = 0, chunk: int = 256, marker: int = IS) -> dict:
    """``k`` chains per example of ``batch`` (a task batch of one layout: every row has its markers at the
    same positions), each written by the model as the module docstring says. Returns ``answers`` [n, k]
    (the final answers chosen), ``right`` [n, k] bool (the answer is the gold one), ``steps_right`` [n, k]
    (fraction of the chain's intermediate values equal to the gold ones; NaN without markers) and
    ``tokens`` [n, k, T] (the written sequences up to the answer)."""
    toks = batch.tokens.to(model.device)
    pos = (toks[0] == marker).nonzero().flatten().tolist()      # one layout per batch
    ap = int(batch.answer_pos[0, 0])
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
