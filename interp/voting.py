"""Majority voting over sampled answers (parallel test-time scaling): the logits at the answer
position, top-p sampling at a temperature, the majority of N samples, and accuracy and pass@N against N;
the same over sampled multi-token chains of thought (`chain_vote_rows`); the gain from N=1 (`vote_gains`)."""
from __future__ import annotations

import pandas as pd
import torch

from interp import InterpError
from interp.checks import check_count
from interp.closedloop import check_sampling
from interp.tasks.vocab import VOCAB

VOTE_NS = (1, 2, 4, 8, 16, 32, 64)
TEMPERATURE, TOP_P = 0.8, 0.9


def check_ns(ns, K=None) -> list:
    """``ns`` as a list of distinct integers >= 1 (and <= ``K``, the samples per example, where given), else an
    InterpError naming the bad N."""
    ns = list(ns) if isinstance(ns, (list, tuple, range)) else [ns]
    hi = f" and <= {K} (the samples per example)" if K is not None else ""
    for N in ns:
        if not isinstance(N, int) or isinstance(N, bool) or N < 1 or (K is not None and N > K):
            raise InterpError(f"ns has N={N!r}; valid: integers >= 1{hi}")
    if not ns or len(set(ns)) < len(ns):
        raise InterpError(f"ns={ns!r} is empty or repeats an N; valid: distinct integers >= 1{hi}, e.g. (1, 2, 4)")
    return ns


def sample_answers(logits: torch.Tensor, k: int, temperature=TEMPERATURE, top_p=TOP_P, seed=0) -> torch.Tensor:
    """k samples per row from softmax(logits / temperature) restricted to the top-p nucleus
    (the smallest set of most likely tokens whose mass reaches top_p). logits [n, V] -> [n, k]."""
    check_count(k, "k")
    check_sampling(temperature, top_p)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or 0 in logits.shape:
        raise InterpError(f"logits of shape {tuple(getattr(logits, 'shape', ()))} are not valid; valid: a "
                          "non-empty [n, V] tensor")
    probs = (logits.float() / temperature).softmax(-1)
    sp, si = probs.sort(-1, descending=True)
    keep = sp.cumsum(-1) - sp < top_p          # a token is kept if the mass before it is < top_p
    sp = torch.where(keep, sp, torch.zeros_like(sp))
    g = torch.Generator(device="cpu").manual_seed(seed)
    draws = torch.multinomial(sp.cpu() / sp.sum(-1, keepdim=True).cpu(), k, replacement=True, generator=g)
    return si.cpu().gather(1, draws)


def majority(samples: torch.Tensor, n_vocab: int) -> torch.Tensor:
    """The most frequent token per row of samples [n, N]; ties go to the one sampled first."""
    n, N = samples.shape
    counts = torch.zeros(n, n_vocab).scatter_add_(1, samples, torch.ones(n, N))
    first = torch.full((n, n_vocab), float(N))
    first.scatter_reduce_(1, samples, torch.arange(N, dtype=torch.float).expand(n, N), reduce="amin")
    return (counts - first / (N + 1)).argmax(-1)


def vote_curve(samples: torch.Tensor, answers: torch.Tensor, ns=VOTE_NS, n_vocab=len(VOCAB)) -> list[dict]:
    """Majority-vote accuracy and pass@N for each N, averaged over the disjoint groups of N of
    the samples [n, K] (K // N groups); every N must be <= K."""
    K = samples.shape[1]
    rows = []
    for N in check_ns(ns, K):
        groups = samples[:, : (K // N) * N].reshape(samples.shape[0], K // N, N)
        maj = torch.stack([majority(groups[:, g], n_vocab) for g in range(groups.shape[1])], 1)
        acc = (maj == answers[:, None]).float().mean().item()
        cover = (groups == answers[:, None, None]).any(-1).float().mean().item()
        rows.append(dict(N=N, majority_acc=acc, pass_at_n=cover, groups=K // N))
    return rows


@torch.no_grad()
def answer_logits(model, batch, chunk: int = 256) -> torch.Tensor:
    """Logits at each example's last answer position [n, V]."""
    out = []
    ap = batch.answer_pos[:, -1]
    for s in range(0, batch.n, chunk):
        lg = model(batch.tokens[s:s + chunk].to(model.device))
        out.append(lg[torch.arange(lg.shape[0], device=lg.device), ap[s:s + chunk].to(lg.device)].float().cpu())
    return torch.cat(out)


def vote_rows(model, batch, ns=VOTE_NS, temperature=TEMPERATURE, top_p=TOP_P, seed=0) -> list[dict]:
    """``vote_curve`` of ``max(ns)`` answers sampled per example of ``batch`` (its last answer
    position), each row with ``greedy_acc``, the accuracy of the most likely answer."""
    ns = check_ns(ns)
    check_sampling(temperature, top_p)
    lg = answer_logits(model, batch)
    ans = batch.answers[:, -1]
    smp = sample_answers(lg, max(ns), temperature=temperature, top_p=top_p, seed=seed)
    greedy = (lg.argmax(-1) == ans).float().mean().item()
    return [dict(greedy_acc=greedy, **r) for r in vote_curve(smp, ans, ns)]


def chain_vote_rows(model, batch, ns=VOTE_NS, temperature=TEMPERATURE, top_p=TOP_P, seed=0) -> list[dict]:
    """``vote_curve`` over ``max(ns)`` sampled chains of thought per example of a chain-of-thought
    ``batch`` (`interp.closedloop.sample_chains`: every intermediate value and the answer sampled by the
    model, so the vote is over multi-token reasoning, not over one answer distribution); each row also
    has ``greedy_acc`` (the greedy chain's answer, closed loop) and ``chain_acc`` (the sampled chains'
    share of intermediate values right)."""
    from interp.closedloop import sample_chains
    ns = check_ns(ns)
    check_sampling(temperature, top_p)
    greedy = sample_chains(model, batch, 1)
    c = sample_chains(model, batch, max(ns), sample=True, temperature=temperature, top_p=top_p, seed=seed)
    extra = dict(greedy_acc=greedy["right"].float().mean().item(), chain_acc=c["steps_right"].mean().item())
    return [dict(**extra, **r) for r in vote_curve(c["answers"], batch.answers[:, 0].cpu(), ns)]


def vote_gains(votes: pd.DataFrame, keys: list) -> pd.DataFrame:
    """Per group of ``keys`` (one voting curve each, e.g. arm, kind, task, seed): ``gain``, the majority-vote
    accuracy at the largest N minus that at the smallest (N=1), with that ``N`` and the mean ``greedy_acc``."""
    rows = []
    for k, g in votes.groupby(keys, sort=False):
        g = g.sort_values("N")
        rows.append({**dict(zip(keys, k)), "gain": g.majority_acc.iloc[-1] - g.majority_acc.iloc[0],
                     "N": int(g.N.iloc[-1]), "greedy_acc": g.greedy_acc.mean()})
    return pd.DataFrame(rows)
