"""One patched run (`run_patched`) and the answer metrics that every patching path measures."""
from __future__ import annotations

import torch

import hooks
from interp import InterpError
from interp.patching.sites import (HEAD_SITES, RESID_SITES, SITES, _check_choice, _n_heads, _write, check_layers,
                                   check_positions, plan_cells)


def run_patched(model, base_tokens, source_tokens, site: str, layer: int, position=None, head=None,
                attention_mask=None):
    """Logits of ``base_tokens`` with ``blocks.{layer}.{site}`` at ``position`` (None = all) and
    ``head`` (None = all) taken from the run on ``source_tokens`` (same shape [B, T]). ``attention_mask``
    [B, T] (1: a real token), shared by both runs, for padded prompts: ``position`` then counts each row's
    real tokens (a row without it is not patched)."""
    hm = model if isinstance(model, hooks.HookedModel) else hooks.wrap(model)
    _check_choice("site", site, SITES)
    check_layers([layer], hm.n_layers)
    base_tokens, source_tokens = _as_tokens(base_tokens, "base"), _as_tokens(source_tokens, "source")
    if tuple(base_tokens.shape) != tuple(source_tokens.shape) or base_tokens.dim() != 2:
        raise InterpError(f"base and source tokens must have the same shape [batch, positions]; got "
                          f"{list(base_tokens.shape)} and {list(source_tokens.shape)}")
    T = base_tokens.shape[1]
    if position is not None:
        check_positions([position], T)
    name = f"blocks.{layer}.{site}"
    plan_cells(hm, site, layer, [], False, T)  # validates site vs layer
    span = None
    if attention_mask is not None:
        from interp.tasks.padded import real_span
        attention_mask = torch.as_tensor(attention_mask)
        if tuple(attention_mask.shape) != tuple(base_tokens.shape):
            raise InterpError(f"attention_mask must have the tokens' shape {list(base_tokens.shape)}, got "
                              f"{list(attention_mask.shape)}")
        span = tuple(t.to(base_tokens.device) for t in real_span(attention_mask))
    if head is not None:
        if site in RESID_SITES:
            raise InterpError(f"site '{site}' has no heads; head={head} needs one of {', '.join(HEAD_SITES)}")
        H = _n_heads(hm.layers[layer], site)
        if not 0 <= int(head) < H:
            raise InterpError(f"head {head} out of range 0..{H - 1}")
    with torch.no_grad():
        _, src = hm.run_with_cache(source_tokens, names=[name], attention_mask=attention_mask)
        return hm.run_with_hooks(base_tokens, hooks=[(name, lambda x, _: _write(x, src[name], x.shape[0],
                                                                                [(position, head)], site, span))],
                                 attention_mask=attention_mask)


def _as_tokens(tokens, what: str) -> torch.Tensor:
    """``tokens`` (a tensor, numpy array or nested list of ids, as hooks' run_with_cache takes them) as an integer
    tensor; float, bool or complex ones are refused, as hooks refuses them."""
    if not isinstance(tokens, torch.Tensor):
        try:
            tokens = torch.as_tensor(tokens)
        except (TypeError, ValueError, RuntimeError) as e:
            raise InterpError(f"{what} tokens of type {type(tokens).__name__} are not valid ({e}); valid: a [batch, "
                              "positions] tensor, numpy array or list of lists of integer token ids") from None
    if tokens.dtype == torch.bool or tokens.is_floating_point() or tokens.is_complex():
        hint = " (tokens.long() if they are whole numbers)" if tokens.is_floating_point() else ""
        raise InterpError(f"{what} tokens must be integer token ids, got dtype {tokens.dtype}; valid: integer "
                          f"dtypes{hint}")
    return tokens


def _answer_metrics(logits, pairs_rows, clean_logp=None):
    """logits [R, 1, V] at the answer -> (logit diff [R], p(clean answer) [R], KL(clean||run) [R])."""
    lg = logits[:, 0].float()
    ca, xa = pairs_rows
    ld = lg.gather(1, ca[:, None])[:, 0] - lg.gather(1, xa[:, None])[:, 0]
    logp = lg.log_softmax(-1)
    prob = logp.gather(1, ca[:, None])[:, 0].exp()
    kl = torch.zeros_like(ld) if clean_logp is None else (clean_logp.exp() * (clean_logp - logp)).sum(-1)
    return ld, prob, kl


def _model_device(hm):
    for p in hm.model.parameters():
        return p.device
    return torch.device("cpu")
