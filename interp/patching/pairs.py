"""Clean/corrupted pairs from real prompts (`prompt_pairs`): strings through the model's tokenizer, or
token-id lists, pairs of different lengths padded into one `tasks.PairBatch` that `sweep` takes."""
from __future__ import annotations

import hooks
from interp import InterpError


def prompt_pairs(model, clean, corrupted, clean_answers, corrupted_answers, side: str | None = None,
                 answer_pos=None, meta: dict | None = None):
    """A padded `tasks.PairBatch` of prompt pairs (`interp.tasks.pairs_from_ids`): ``clean`` / ``corrupted``
    lists of strings (through the tokenizer of ``model``, `hooks.HookedModel.tokenizer`) or of token-id
    lists; answers as single-token strings or token ids. The two prompts of a pair must give the same
    number of tokens (else an error names the pair); pairs may differ from each other, and are padded on
    ``side`` ('left' or 'right'; None: left, or right for a model that takes right padding only, e.g. HF
    rwkv, xlstm, recurrent_gemma, whose left padding is refused) with the tokenizer's pad id (else 0). The
    answer is read at each pair's last real token unless ``answer_pos`` (per pair, counted in real tokens)
    says otherwise."""
    from interp.tasks.padded import check_side, pairs_from_ids
    hm = model if isinstance(model, hooks.HookedModel) else hooks.wrap(model)
    right_only = getattr(hm.adapter, "padding", None) == "right"
    side = ("right" if right_only else "left") if side is None else side
    check_side(side)
    ids = [[_encode(hm, p) for p in prompts] for prompts in (clean, corrupted)]
    if right_only and side == "left" and len({len(p) for p in ids[0]}) > 1:
        why = getattr(hm.adapter, "padding_why", "")
        raise InterpError(f"{hm.adapter.family}: pairs of different lengths padded on the left, which this model "
                          f"does not take ({why}); valid: side='right' (interp patch --pad-side right) or pairs of "
                          "one length")
    ans = [[_answer(hm, a) for a in answers] for answers in (clean_answers, corrupted_answers)]
    pad = getattr(hm.tokenizer, "pad_token_id", None) or 0
    return pairs_from_ids(ids[0], ids[1], ans[0], ans[1], side, pad, answer_pos,
                          {"task": "prompts", **(meta or {})})


def _encode(hm, prompt) -> list:
    if isinstance(prompt, str):
        return hm._encode([prompt])[0].tolist()
    try:
        return [int(t) for t in prompt]
    except (TypeError, ValueError):
        raise InterpError(f"a prompt must be a string or a list of token ids, got {type(prompt).__name__}") from None


def _answer(hm, a) -> int:
    if isinstance(a, str):
        return hm.to_single_token(a)
    try:
        return int(a)
    except (TypeError, ValueError):
        raise InterpError(f"an answer must be a single-token string or a token id, got {type(a).__name__}") from None
