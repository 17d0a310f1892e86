"""Closed-loop accuracy of chain-of-thought prompts: the model writes its own intermediate values before answering."""
from __future__ import annotations

import torch

from interp.tasks.vocab import VOCAB

IS = VOCAB.id("is")


@torch.no_grad()
def closed_loop(model, batch, chunk: int = 256, marker: int = IS) -> tuple[float, float]:
    """Cot accuracy with the model's own intermediate values: after every ``marker`` token (``is``) the
    model's argmax is written into the sequence before going on, never the gold value. ``batch``: a task
    batch of one layout (every row has its markers at the same positions). Returns (final-answer accuracy,
    fraction of intermediate values right; NaN without markers)."""
    toks = batch.tokens.to(model.device).clone()
    pos = (toks[0] == marker).nonzero().flatten().tolist()      # one layout per batch
    ap = int(batch.answer_pos[0, 0])
    right = steps = 0
    for s in range(0, toks.shape[0], chunk):
        t = toks[s:s + chunk]
        for p in pos:
            t[:, p + 1] = model(t[:, :p + 1])[:, p].argmax(-1)
        pred = model(t[:, :ap + 1])[:, ap].argmax(-1)
        right += (pred == batch.answers[s:s + chunk, 0].to(t.device)).sum().item()
        if pos:
            gold = batch.tokens[s:s + chunk][:, [p + 1 for p in pos]].to(t.device)
            steps += (t[:, [p + 1 for p in pos]] == gold).float().mean(1).sum().item()
    n = toks.shape[0]
    return right / n, (steps / n if pos else float("nan"))
